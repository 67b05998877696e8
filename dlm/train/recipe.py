"""The one-command recipe that builds the project's models: tokenizer, corpus, dlm-tiny, dlm-tiny-ar, evaluation.

    PYTHONPATH=. python3 -m dlm.train recipe --out /tmp/dlm-run --pack-dir $OUT      # one GPU, ~9 minutes
    PYTHONPATH=. python3 -m dlm.train recipe --preset smoke --out /tmp/dlm-smoke     # CPU, seconds

Steps, each written to ``--out`` as soon as it is done (a run killed at any point leaves what it finished):

1. corpus: the standard library's ``.py`` files split by file (``corpus_manifest.json`` with SHA-256 of each);
   the synthetic tasks' train/val/test splits (disjoint seeds, test prompts removed from train).
2. tokenizer: byte-level BPE on the training files + a sample of training task texts (``tokenizer/``).
3. data: task pairs, function-completion pairs from the training files (prompt = header + docstring, answer =
   body) and the training files as plain text, tokenised into pools on the device.
4. dlm-tiny: masked-diffusion training within ``--minutes-diffusion``; exported every few minutes and at the end
   to ``dlm-tiny/`` (LLaDA format) with its model card; then evaluated (one token per step).
5. dlm-tiny-ar: next-token training within ``--minutes-ar`` on the same data; exported to ``dlm-tiny-ar/``
   (transformers Llama format); then evaluated (greedy).
6. ``eval.json`` / ``eval.md`` and the final model cards; with ``--pack-dir``, tar parts of at most 15 MiB of
   each model folder and of the logs are (re)written there after every export.

``--deadline-minutes`` bounds the whole run: the training budgets shrink when data preparation took longer than
planned, so that evaluation and packing still finish inside it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import platform
import random
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..bench.tasks import FAMILIES, CodeExample, Example, code_completion, extract_functions, make_splits
from ..errors import ConfigError
from . import builders
from .builders import ModelSize
from .corpus import Corpus, stdlib_corpus
from .data import Group, Mixture, PairPool, TextPool
from .tokenizer import TokenIds, load_fast, save_tokenizer, token_ids, train_tokenizer
from .trainer import TrainConfig, Trainer, TrainResult

PART_BYTES = 15 * 2**20 - 64 * 1024


@dataclass(frozen=True)
class RecipeConfig:
    """Every setting of the recipe (each is a command-line option: ``--field-name``)."""

    out: str = "out/dlm-train"
    device: str = "auto"
    seed: int = 0
    deadline_minutes: float | None = 9.2
    eval_reserve_minutes: float = 0.4
    resume: bool = False
    pack_dir: str | None = None
    keep_state: bool = False
    workers: int = 0
    cpu_threads: int = 0
    # corpus
    heldout_fraction: float = 0.08
    max_files: int | None = None
    max_file_bytes: int = 300_000
    # tokenizer
    vocab_size: int = 8192
    tokenizer_task_examples: int = 3000
    # synthetic tasks
    families: str = ",".join(FAMILIES)
    family_weights: str = "add=3,cumsum=3"
    train_per_task: int = 100_000
    val_per_task: int = 256
    test_per_task: int = 500
    # code completion
    code_prompt_tokens: int = 96
    code_body_tokens: int = 63
    code_eval_n: int = 300
    # batches
    task_len: int = 64
    code_len: int = 192
    task_batch: int = 512
    code_batch: int = 64
    code_fn_fraction: float = 0.5
    code_task_fraction: float = 0.2
    long_task_pairs: int = 200_000
    task_weight: float = 1.0
    code_weight: float = 0.5
    val_batches: int = 2
    # model (both)
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 4
    mlp_hidden: int = 704
    max_seq_len: int = 1024
    # optimisation (both)
    minutes_diffusion: float | None = 5.7
    steps_diffusion: int | None = None
    lr_diffusion: float = 1.5e-3
    minutes_ar: float | None = 2.1
    steps_ar: int | None = None
    lr_ar: float = 2e-3
    warmup_steps: int = 300
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    mask_eps: float = 1e-3
    compile_diffusion: bool = True
    compile_ar: bool = False
    val_every: int = 500
    log_every: int = 50
    export_every_minutes: float = 2.0
    state_every_minutes: float = 0.0
    progress: bool = True
    # evaluation
    eval_gen_length: int = 32
    eval_batch: int = 512
    skip_eval: bool = False

    def __post_init__(self) -> None:
        unknown = [f for f in self.family_list if f not in FAMILIES]
        if unknown:
            raise ConfigError(f"unknown task families {unknown} in families={self.families!r}; "
                             f"known: {', '.join(FAMILIES)}")
        if not self.family_list:
            raise ConfigError("families must name at least one task family")
        self.family_weight  # validates family_weights
        if self.minutes_diffusion is None and self.steps_diffusion is None:
            raise ConfigError("give --minutes-diffusion or --steps-diffusion")
        if self.minutes_ar is None and self.steps_ar is None:
            raise ConfigError("give --minutes-ar or --steps-ar")
        for name in ("code_fn_fraction", "code_task_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.code_body_tokens + 1 > self.eval_code_gen_length:
            raise ConfigError("code_body_tokens + 1 must fit the code generation length")
        for name in ("task_len", "code_len", "task_batch", "code_batch", "eval_gen_length", "eval_batch", "val_batches",
                     "train_per_task", "test_per_task"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        ModelSize(self.d_model, self.n_layers, self.n_heads, self.mlp_hidden, self.max_seq_len)

    @property
    def family_list(self) -> list[str]:
        return [f.strip() for f in self.families.split(",") if f.strip()]

    @property
    def family_weight(self) -> dict[str, float]:
        """Sampling weight of each family in the task batch (``family_weights``; unnamed families weigh 1)."""
        weights = {f: 1.0 for f in self.family_list}
        for item in filter(None, (x.strip() for x in self.family_weights.split(","))):
            name, sep, value = item.partition("=")
            try:
                w = float(value)
            except ValueError:
                w = -1.0
            if not sep or name.strip() not in FAMILIES or w < 0:
                raise ConfigError(f"family_weights must be 'family=weight,...' with known families and weights >= 0, "
                                 f"got {item!r} in {self.family_weights!r}")
            if name.strip() in weights:
                weights[name.strip()] = w
        if sum(weights.values()) <= 0:
            raise ConfigError(f"family_weights {self.family_weights!r} leave every family at weight 0")
        return weights

    @property
    def eval_code_gen_length(self) -> int:
        """Generation length of code completion: the body limit + 1, rounded up to a multiple of 32."""
        return -(-(self.code_body_tokens + 1) // 32) * 32

    @property
    def size(self) -> ModelSize:
        return ModelSize(self.d_model, self.n_layers, self.n_heads, self.mlp_hidden, self.max_seq_len)

    def replace(self, **changes: Any) -> "RecipeConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: the CPU smoke configuration: tiny everything, a few steps (tests and local dry runs)
SMOKE = dict(
    deadline_minutes=None, heldout_fraction=0.25, max_files=24, vocab_size=512, tokenizer_task_examples=300,
    train_per_task=300, val_per_task=8, test_per_task=6, code_prompt_tokens=64, code_body_tokens=31, code_eval_n=4,
    task_len=48, code_len=96, task_batch=16, code_batch=8, val_batches=1, d_model=64, n_layers=2, n_heads=4,
    mlp_hidden=160, max_seq_len=256, minutes_diffusion=None, steps_diffusion=30, minutes_ar=None, steps_ar=30,
    lr_diffusion=3e-3, lr_ar=3e-3, warmup_steps=5, val_every=15, log_every=5, export_every_minutes=0.0,
    progress=False, eval_gen_length=16, eval_batch=64, compile_diffusion=False, cpu_threads=1,
)
PRESETS: dict[str, dict[str, Any]] = {"gpu": {}, "smoke": SMOKE}


def preset(name: str, **overrides: Any) -> RecipeConfig:
    """The settings of preset ``name`` ("gpu", the default of every option, or "smoke") with ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return RecipeConfig(**{**PRESETS[name], **overrides})


# ------------------------------------------------------------------------------------------------ helpers
class RunLog:
    """Prints progress lines to stderr and appends them to ``logs/recipe.log``; keeps the clock of the run."""

    def __init__(self, path: Path, deadline_minutes: float | None):
        self.path = path
        self.t0 = time.perf_counter()
        self.deadline = deadline_minutes * 60 if deadline_minutes else None
        path.parent.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        return math.inf if self.deadline is None else self.deadline - self.elapsed()

    def __call__(self, msg: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def _pmap(fn: Callable, items: Sequence, workers: int) -> list:
    """``[fn(x) for x in items]``, in worker processes (fork) when there is more than one worker."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        return [fn(x) for x in items]
    with mp.get_context("fork").Pool(min(workers, len(items))) as pool:
        return pool.map(fn, items, chunksize=1)


def _task_splits(args: tuple[str, int, int, int, int]) -> dict[str, list[Example]]:
    family, n_train, n_val, n_test, seed = args
    return make_splits([family], n_train, n_val, n_test, seed)


def _functions(files: list[tuple[str, str]]) -> list[CodeExample]:
    return [ex for rel, text in files for ex in extract_functions(text, rel, max_prompt_chars=800, max_body_chars=1200)]


def _chunks(items: list, n: int) -> list[list]:
    n = max(1, min(n, len(items)))
    return [items[i::n] for i in range(n)]


def pack_folder(src: Path, dest_dir: Path, name: str, part_bytes: int = PART_BYTES) -> list[Path]:
    """Tar ``src`` (uncompressed) and write it as ``{name}.tar.partNN`` files of at most ``part_bytes`` in
    ``dest_dir`` (old parts of ``name`` are removed). Join with ``cat {name}.tar.part* | tar x``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(src), arcname=src.name)
    data = buf.getvalue()
    dest_dir.mkdir(parents=True, exist_ok=True)
    for old in dest_dir.glob(f"{name}.tar.part*"):
        old.unlink()
    parts = []
    for i in range(0, max(1, len(data)), part_bytes):
        p = dest_dir / f"{name}.tar.part{i // part_bytes:02d}"
        p.write_bytes(data[i : i + part_bytes])
        parts.append(p)
    return parts


def _git_commit() -> str | None:
    try:
        import subprocess

        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Prepared:
    """Everything the two trainings and the evaluation share."""

    corpus: Corpus
    splits: dict[str, list[Example]]
    code_eval: list[CodeExample]
    tokenizer_dir: Path
    ids: TokenIds
    n_tokens: int
    mixture: Mixture
    val: dict[str, list]
    val_weights: dict[str, float]
    stats: dict[str, Any]


def prepare(cfg: RecipeConfig, out: Path, log: RunLog, device: torch.device) -> Prepared:
    """Corpus, task splits, tokenizer, token pools and validation batches (steps 1-3 of the recipe)."""
    workers = cfg.workers or min(16, os.cpu_count() or 1)
    corpus = stdlib_corpus(heldout_fraction=cfg.heldout_fraction, max_files=cfg.max_files,
                           max_file_bytes=cfg.max_file_bytes)
    corpus.write_manifest(out / "corpus_manifest.json")
    m = corpus.manifest()["counts"]
    log(f"corpus: {m['train_files']} training files ({m['train_bytes'] / 1e6:.1f} MB), {m['heldout_files']} held-out "
        f"files ({m['heldout_bytes'] / 1e6:.1f} MB) from {corpus.root}")
    if not corpus.train or not corpus.heldout:
        raise ValueError(f"the corpus split left {len(corpus.train)} training and {len(corpus.heldout)} held-out "
                         f"files; change heldout_fraction ({cfg.heldout_fraction}) or max_files ({cfg.max_files})")
    train_texts = [(f.rel, f.read()) for f in corpus.train]
    heldout_texts = [(f.rel, f.read()) for f in corpus.heldout]

    # task splits and function extraction run in worker processes (pure Python, CPU-bound)
    jobs = [(fam, cfg.train_per_task, cfg.val_per_task, cfg.test_per_task, cfg.seed) for fam in cfg.family_list]
    per_family = _pmap(_task_splits, jobs, workers)
    splits = {s: [e for d in per_family for e in d[s]] for s in ("train", "val", "test")}
    fn_train = [e for part in _pmap(_functions, _chunks(train_texts, workers), workers) for e in part]
    fn_heldout = _functions(heldout_texts)
    log(f"tasks: {len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} test examples "
        f"({', '.join(cfg.family_list)}); functions: {len(fn_train)} train, {len(fn_heldout)} held-out candidates")

    # tokenizer: training files + a sample of training task texts (never held-out data)
    sample = splits["train"][:: max(1, len(splits["train"]) // max(1, cfg.tokenizer_task_examples))]
    tok = train_tokenizer([t for _, t in train_texts] + [f"{e.prompt} {e.answer}" for e in sample], cfg.vocab_size)
    tokenizer_dir = save_tokenizer(tok, out / "tokenizer", model_max_length=cfg.max_seq_len)
    ids = token_ids(tok)
    tok = load_fast(tokenizer_dir)
    n_tokens = tok.get_vocab_size()
    log(f"tokenizer: byte-level BPE, {n_tokens} tokens (bos {ids.bos}, eos/pad {ids.eos}, eot {ids.eot}, "
        f"mask {ids.mask}) -> {tokenizer_dir}")

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    # held-out code completion set: functions of held-out files whose reference fits the generation length, the
    # same selection as dlm.bench.tasks.stdlib_code_completion("heldout", ...) makes with this tokenizer
    code_eval = code_completion(heldout_texts, n=cfg.code_eval_n, seed=cfg.seed,
                                count_tokens=lambda text: len(tok.encode(text, add_special_tokens=False).ids),
                                max_prompt_tokens=cfg.code_prompt_tokens, max_body_tokens=cfg.code_body_tokens)
    hp, hb = encode([e.prompt for e in fn_heldout]), encode([e.reference for e in fn_heldout])

    # pools on the device
    def pair_pool(examples: list[Example], row_len: int) -> PairPool:
        return PairPool(encode([e.prompt for e in examples]), encode([e.answer for e in examples]), row_len, ids.bos,
                        ids.eos, device=device)

    weights = cfg.family_weight
    tr = splits["train"]
    tp, ta = encode([e.prompt for e in tr]), encode([e.answer for e in tr])
    by_family = {f: [i for i, e in enumerate(tr) if e.family == f] for f in cfg.family_list}
    family_pools = {f: PairPool([tp[i] for i in idx], [ta[i] for i in idx], cfg.task_len, ids.bos, ids.eos,
                                device=device) for f, idx in by_family.items()}
    # the same pairs in code-length rows: their canvases reach code_len, so long generations end cleanly too
    n_long = min(len(tr), cfg.long_task_pairs)
    long_idx = sorted(random.Random(f"dlm.train.long/{cfg.seed}").sample(range(len(tr)), n_long))
    long_pool = PairPool([tp[i] for i in long_idx], [ta[i] for i in long_idx], cfg.code_len, ids.bos, ids.eos,
                         device=device)
    fp, fb = encode([e.prompt for e in fn_train]), encode([e.reference for e in fn_train])
    keep = [i for i in range(len(fn_train)) if len(fp[i]) <= cfg.code_prompt_tokens]
    fn_pool = PairPool([fp[i] for i in keep], [fb[i] for i in keep], cfg.code_len, ids.bos, ids.eos, device=device)
    text_pool = TextPool.from_documents(encode([t for _, t in train_texts]), ids.eos, cfg.code_len, device=device)
    groups = [Group("tasks", list(family_pools.values()), [weights[f] for f in family_pools], cfg.task_batch,
                    cfg.task_weight)]
    if cfg.code_weight > 0:
        rest = 1 - cfg.code_task_fraction
        groups.append(Group("code", [fn_pool, text_pool, long_pool],
                            [rest * cfg.code_fn_fraction, rest * (1 - cfg.code_fn_fraction), cfg.code_task_fraction],
                            cfg.code_batch, cfg.code_weight))
    mixture = Mixture(groups)

    # validation: val split tasks and held-out code, same shapes as training batches, fixed draws
    gen = torch.Generator(device=device).manual_seed(4321)
    # (the total weighs families equally; per-family losses are reported as val_tasks:FAMILY, outside the total)
    va = splits["val"] or splits["test"]  # val_per_task 0: monitor on the test prompts (no selection is made)
    val_pools = {f: pair_pool([e for e in va if e.family == f], cfg.task_len) for f in cfg.family_list}
    val = {"tasks": [Group("tasks", list(val_pools.values()), [1.0] * len(val_pools), cfg.task_batch).sample(gen)
                     for _ in range(cfg.val_batches)]}
    for f, pool in val_pools.items():
        val[f"tasks:{f}"] = [Group(f, [pool], [1.0], cfg.task_batch).sample(gen)]
    if cfg.code_weight > 0:
        hkeep = [i for i in range(len(fn_heldout)) if len(hp[i]) <= cfg.code_prompt_tokens]
        val_fn = PairPool([hp[i] for i in hkeep], [hb[i] for i in hkeep], cfg.code_len, ids.bos, ids.eos, device=device)
        val_text = TextPool.from_documents(encode([t for _, t in heldout_texts]), ids.eos, cfg.code_len, device=device)
        vgroup = Group("code", [val_fn, val_text], [cfg.code_fn_fraction, 1 - cfg.code_fn_fraction], cfg.code_batch)
        val["code"] = [vgroup.sample(gen) for _ in range(cfg.val_batches)]

    stats = {
        "train_code_tokens": len(text_pool), "task_pairs": sum(len(p) for p in family_pools.values()),
        "task_pairs_dropped": sum(p.dropped for p in family_pools.values()),
        "function_pairs": len(fn_pool), "function_pairs_dropped": fn_pool.dropped + len(fn_train) - len(keep),
        "code_eval_functions": len(code_eval), "tokens_per_step": mixture.tokens_per_step(),
        "python": platform.python_version(),
    }
    log(f"data: {stats['task_pairs']} task pairs, {stats['function_pairs']} function pairs, "
        f"{stats['train_code_tokens'] / 1e6:.2f}M code tokens; {len(code_eval)} held-out functions to complete; "
        f"{stats['tokens_per_step']} tokens per step")
    val_weights = {g.name: g.weight for g in groups}
    return Prepared(corpus, splits, code_eval, tokenizer_dir, ids, n_tokens, mixture, val, val_weights, stats)


# ------------------------------------------------------------------------------------------------ model cards
def _mixture_text(cfg: RecipeConfig) -> str:
    fw = ", ".join(f"{f} {w:g}" for f, w in cfg.family_weight.items())
    lines = [f"- tasks: {cfg.task_batch} rows x {cfg.task_len} tokens per step, loss weight {cfg.task_weight}; "
             f"families sampled in proportion {fw}"]
    if cfg.code_weight > 0:
        lines.append(f"- code: {cfg.code_batch} rows x {cfg.code_len} tokens per step, loss weight {cfg.code_weight}; "
                     f"{100 * cfg.code_task_fraction:.0f}% task pairs with canvases up to {cfg.code_len} tokens; of "
                     f"the rest, {100 * cfg.code_fn_fraction:.0f}% function-completion pairs and "
                     f"{100 * (1 - cfg.code_fn_fraction):.0f}% windows of plain code")
    return "\n".join(lines)


def model_card(kind: str, cfg: RecipeConfig, prep: Prepared, result: TrainResult | None, params: int,
               evals: dict[str, Any] | None, command: str, device_name: str) -> str:
    """The MODEL_CARD.md of ``kind`` ("dlm-tiny" or "dlm-tiny-ar")."""
    diffusion = kind == "dlm-tiny"
    m = prep.corpus.manifest()["counts"]
    s = prep.stats
    if diffusion:
        head = ("A small masked-diffusion language model (LLaDA / MDLM objective) in the genuine LLaDA checkpoint "
                "format: `config.json` with `model_type: \"llada\"` and OLMo-style fields, LLaDA weight names "
                "(`model.transformer.blocks.N.q_proj.weight`, ...), bf16 safetensors shards with an index.")
        usage = ("```python\nimport dlm\nlm = dlm.load(\"dlm-tiny\")\n"
                 "out = lm.generate([\"reverse: c a f b =\"], dlm.GenerationConfig(gen_length=32, steps=32))\n"
                 "print(out.texts[0])   # b f a c\n```")
        objective = (f"masked diffusion: t ~ U({cfg.mask_eps}, 1) per row (stratified over the batch), each answer "
                     "token (EOS padding included) or plain-text token masked with probability t, cross-entropy on the "
                     "masked positions weighted by 1/t and divided by the row's number of maskable tokens; prompt "
                     "tokens never masked. Each prompt/answer row has a random canvas length between the answer + one "
                     "EOS and the row length, so answers are followed by varying amounts of EOS padding.")
        lr = cfg.lr_diffusion
    else:
        head = ("A small causal language model (`LlamaForCausalLM`) with the same tokenizer and data as dlm-tiny, "
                "in the standard transformers format (no remote code): the verifier of dlm's causal lossless mode.")
        usage = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                 "model = AutoModelForCausalLM.from_pretrained(\"dlm-tiny-ar\")\n"
                 "tok = AutoTokenizer.from_pretrained(\"dlm-tiny-ar\")\n"
                 "ids = tok(\"reverse: c a f b =\", return_tensors=\"pt\")\n"
                 "out = model.generate(**ids, max_new_tokens=32, do_sample=False)\n"
                 "print(tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True))\n```")
        objective = ("next-token cross-entropy on the answer and its EOS for prompt/answer rows, on every token for "
                     "plain code")
        lr = cfg.lr_ar
    size = cfg.size
    lines = [
        f"# {kind}", "", head, "",
        "Trained from scratch by `dlm.train` (the project's own code) on the Python standard library and the "
        "synthetic tasks of `dlm.bench.tasks`.", "", "## Use", "", usage, "",
        "## Model", "",
        "| | |", "|---|---|",
        f"| parameters | {params:,} ({params / 1e6:.1f}M) |",
        f"| layers / d_model / heads / MLP | {size.n_layers} / {size.d_model} / {size.n_heads} / "
        f"{size.mlp_hidden} (SwiGLU) |",
        f"| vocabulary | {prep.n_tokens} tokens (embedding rows {builders.padded_vocab(prep.n_tokens)}) |",
        f"| attention | {'bidirectional' if diffusion else 'causal'}, RoPE theta {size.rope_theta:g}, RMSNorm |",
        f"| trained row lengths | tasks {cfg.task_len}, code {cfg.code_len} tokens "
        f"(config allows {size.max_seq_len}) |",
        "| weights | bf16 safetensors, shards < 15 MiB |", "",
        "## Tokenizer", "",
        f"Byte-level BPE trained with the `tokenizers` library on the training files and {cfg.tokenizer_task_examples} "
        f"training task texts; {prep.n_tokens} tokens; digits are split one per token. Special tokens: "
        f"`<|startoftext|>` {prep.ids.bos} (BOS, prepended to every encoded text), `<|endoftext|>` {prep.ids.eos} "
        f"(EOS = padding), `<|eot_id|>` {prep.ids.eot}, `<|mdm_mask|>` {prep.ids.mask} (mask). Loads with "
        "`AutoTokenizer` (`PreTrainedTokenizerFast`).", "",
        "## Data", "",
        f"- Python {s['python']} standard library, split by file (SHA-256 of the path): {m['train_files']} training "
        f"files ({m['train_bytes'] / 1e6:.1f} MB, {s['train_code_tokens'] / 1e6:.2f}M tokens), {m['heldout_files']} "
        "held-out files; `corpus_manifest.json` of the run lists every file with its SHA-256.",
        f"- {s['function_pairs']} function-completion pairs from the training files (prompt: `def` line(s) + "
        "docstring; answer: the body, then EOS).",
        f"- synthetic tasks ({', '.join(cfg.family_list)}): {cfg.train_per_task} training examples per family from "
        "the training seed range, with every test and validation prompt removed.",
        "", "Per step:", _mixture_text(cfg), "",
        "## Training", "",
        f"- objective: {objective}",
        f"- AdamW lr {lr:g}, betas ({cfg.beta1}, {cfg.beta2}), weight decay {cfg.weight_decay} on matrices, "
        f"{cfg.warmup_steps} warm-up steps then cosine to {cfg.min_lr_ratio:g} x lr over the budget, gradient clip "
        f"{cfg.grad_clip}, bf16 autocast on {device_name}",
    ]
    if result is not None:
        val = ", ".join(f"{k} {v:.4f}" for k, v in result.val_loss.items())
        lines += [
            f"- {result.steps} steps, {result.tokens / 1e6:.1f}M tokens seen ({result.targets / 1e6:.1f}M loss "
            f"targets), {result.seconds / 60:.2f} minutes (stopped by {result.stopped_by})",
            f"- final train loss (weighted total, mean of the last {cfg.log_every} steps) {_num(result.train_loss)}"
            + (f"; {result.skipped_steps} steps skipped for non-finite gradients" if result.skipped_steps else ""),
            f"- validation loss: {val}",
            "", "![loss curve](loss_curve.png)",
        ]
    lines += ["", "## Evaluation", ""]
    if evals:
        from .evaluate import format_table

        lines += [
            "Held-out test split of each task family (exact match) and held-out standard-library functions "
            f"({len(prep.code_eval)}, from files never trained on): a completion counts when header + body parses "
            "with `ast` as one function with at least one statement besides its docstring (body = generated text up "
            "to EOS or the first non-indented line; a body cut off by the generation length loses its last "
            "unfinished line). dlm-tiny: dlm engine, `low_confidence`, one token per step (steps = gen_length "
            f"= {cfg.eval_gen_length}, code {cfg.eval_code_gen_length}). dlm-tiny-ar: greedy `generate`.", "",
            format_table(evals), "",
        ]
    else:
        lines += ["Not evaluated yet (the run was still going when this card was written).", ""]
    lines += ["## Reproduce", "", "```", command, "```", "",
              "The training budget is wall-clock time, so the number of steps (and the exact weights) depend on the "
              "machine; `--steps-diffusion` / `--steps-ar` without minutes make a run deterministic.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the recipe
def run_recipe(cfg: RecipeConfig, command: str | None = None) -> dict[str, Any]:
    """Run every step of the recipe; returns the evaluation results (and writes everything under ``cfg.out``)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # shard writing/loading bars would drown the run's own log
    threads = torch.get_num_threads()
    if cfg.cpu_threads > 0:
        # tiny models gain nothing from more threads, and spinning threads on a busy machine can stall for seconds
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _run(cfg, command)
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()


def _run(cfg: RecipeConfig, command: str | None) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    if not cfg.resume and (logs / "recipe.log").exists():
        (logs / "recipe.log").unlink()
    log = RunLog(logs / "recipe.log", cfg.deadline_minutes)
    command = command or f"PYTHONPATH=. python3 -m dlm.train recipe --out {cfg.out}"
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    (out / "recipe.json").write_text(json.dumps({"config": cfg.to_dict(), "command": command, "git": _git_commit(),
                                                 "torch": torch.__version__, "device": device_name}, indent=1))
    log(f"recipe on {device_name}: torch {torch.__version__}, out {out}")
    pack_dir = Path(cfg.pack_dir) if cfg.pack_dir else None

    def pack(folder: Path, name: str) -> None:
        if pack_dir is not None and folder.exists():
            parts = pack_folder(folder, pack_dir, name)
            log(f"packed {folder.name} into {len(parts)} part(s) in {pack_dir}")

    def pack_logs() -> None:
        if pack_dir is None:
            return
        bundle = out / "report"
        if bundle.exists():
            shutil.rmtree(bundle)
        bundle.mkdir()
        names = ("recipe.json", "summary.json", "corpus_manifest.json", "eval.json", "eval.md")
        for p in [*(out / n for n in names), *sorted(logs.glob("*.jsonl")), *sorted(logs.glob("*.png")),
                  logs / "recipe.log"]:
            if p.is_file():
                shutil.copyfile(p, bundle / p.name)
        pack_folder(bundle, pack_dir, "report")
        for p in (out / "eval.md", logs / "recipe.log"):
            if p.is_file():
                shutil.copyfile(p, pack_dir / p.name)

    prep = prepare(cfg, out, log, device)
    pack_logs()
    size = cfg.size
    evals: dict[str, Any] = {}
    results: dict[str, TrainResult] = {}
    params: dict[str, int] = {}

    def train_config(minutes: float | None, steps: int | None, lr: float, reserve_s: float,
                     compile: bool) -> TrainConfig:
        if minutes is not None:
            left = (log.remaining() - reserve_s) / 60
            if left < minutes:
                log(f"only {max(left, 0):.2f} minutes left for this model (asked {minutes}); shortening the budget")
                minutes = max(left, 0.25)
        return TrainConfig(lr=lr, min_lr_ratio=cfg.min_lr_ratio, warmup_steps=cfg.warmup_steps,
                           weight_decay=cfg.weight_decay, beta1=cfg.beta1, beta2=cfg.beta2, grad_clip=cfg.grad_clip,
                           max_steps=steps, max_minutes=minutes, val_every=cfg.val_every, log_every=cfg.log_every,
                           export_every_minutes=cfg.export_every_minutes,
                           state_every_minutes=cfg.state_every_minutes, seed=cfg.seed, compile=compile,
                           progress=cfg.progress)

    def card_files(kind: str, result: TrainResult | None) -> dict[str, str | bytes]:
        files: dict[str, str | bytes] = {"MODEL_CARD.md": model_card(kind, cfg, prep, result, params[kind],
                                                                     evals or None, command, device_name)}
        if result is not None and result.curve and Path(result.curve).is_file():
            files["loss_curve.png"] = Path(result.curve).read_bytes()
        return files

    from .objectives import CausalObjective, DiffusionObjective
    from .trainer import plot_curve

    # ---------------------------------------------------------------- dlm-tiny
    reserve = 2 * cfg.eval_reserve_minutes * 60 + (cfg.minutes_ar * 60 if cfg.minutes_ar else 0)
    dcfg = train_config(cfg.minutes_diffusion, cfg.steps_diffusion, cfg.lr_diffusion, reserve, cfg.compile_diffusion)
    model = builders.build_diffusion(size, prep.n_tokens, seed=cfg.seed).to(device)
    params["dlm-tiny"] = builders.count_parameters(model)
    bounds = [f"{dcfg.max_minutes:.2f} min" if dcfg.max_minutes else "",
              f"{dcfg.max_steps} steps" if dcfg.max_steps else ""]
    log(f"dlm-tiny: {params['dlm-tiny']:,} parameters; training for {' / '.join(b for b in bounds if b)}")

    def export_diffusion(m, result: TrainResult) -> None:
        if result.stopped_by == "running":
            result.curve = str(plot_curve(result.history, logs / "dlm-tiny_loss.png", "dlm-tiny"))
        results["dlm-tiny"] = result
        builders.save_diffusion(m, prep.ids, prep.tokenizer_dir, out / "dlm-tiny", card_files("dlm-tiny", result))
        pack(out / "dlm-tiny", "dlm-tiny")
        log(f"exported dlm-tiny at step {result.steps} ({result.stopped_by})")

    trainer = Trainer("dlm-tiny", model, DiffusionObjective(prep.ids.mask, eps=cfg.mask_eps), prep.mixture, prep.val,
                      dcfg, logs, export=export_diffusion, device=device, val_weights=prep.val_weights)
    results["dlm-tiny"] = trainer.fit(resume=cfg.resume)
    log(f"dlm-tiny: {results['dlm-tiny'].steps} steps, {results['dlm-tiny'].tokens / 1e6:.1f}M tokens, "
        f"train loss {_num(results['dlm-tiny'].train_loss)}, val {_fmt(results['dlm-tiny'].val_loss)}")
    del model, trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not cfg.skip_eval:
        evals["dlm-tiny"] = _eval_diffusion(cfg, prep, out / "dlm-tiny", device, log)
        _write_evals(evals, out, log)
        _rewrite_cards(out, cfg, prep, results, params, evals, command, device_name, ["dlm-tiny"])
        pack(out / "dlm-tiny", "dlm-tiny")
    pack_logs()

    # ---------------------------------------------------------------- dlm-tiny-ar
    acfg = train_config(cfg.minutes_ar, cfg.steps_ar, cfg.lr_ar, cfg.eval_reserve_minutes * 60, cfg.compile_ar)
    model = builders.build_causal(size, prep.n_tokens, prep.ids, seed=cfg.seed).to(device)
    params["dlm-tiny-ar"] = builders.count_parameters(model)
    log(f"dlm-tiny-ar: {params['dlm-tiny-ar']:,} parameters")

    def export_causal(m, result: TrainResult) -> None:
        if result.stopped_by == "running":
            result.curve = str(plot_curve(result.history, logs / "dlm-tiny-ar_loss.png", "dlm-tiny-ar"))
        results["dlm-tiny-ar"] = result
        builders.save_causal(m, prep.tokenizer_dir, out / "dlm-tiny-ar", card_files("dlm-tiny-ar", result))
        pack(out / "dlm-tiny-ar", "dlm-tiny-ar")
        log(f"exported dlm-tiny-ar at step {result.steps} ({result.stopped_by})")

    trainer = Trainer("dlm-tiny-ar", model, CausalObjective(), prep.mixture, prep.val, acfg, logs,
                      export=export_causal, device=device, val_weights=prep.val_weights)
    results["dlm-tiny-ar"] = trainer.fit(resume=cfg.resume)
    log(f"dlm-tiny-ar: {results['dlm-tiny-ar'].steps} steps, {results['dlm-tiny-ar'].tokens / 1e6:.1f}M tokens, "
        f"train loss {_num(results['dlm-tiny-ar'].train_loss)}, val {_fmt(results['dlm-tiny-ar'].val_loss)}")
    del model, trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not cfg.skip_eval:
        evals["dlm-tiny-ar"] = _eval_causal(cfg, prep, out / "dlm-tiny-ar", device, log)
        _write_evals(evals, out, log)
        _rewrite_cards(out, cfg, prep, results, params, evals, command, device_name, ["dlm-tiny", "dlm-tiny-ar"])
        pack(out / "dlm-tiny", "dlm-tiny")
        pack(out / "dlm-tiny-ar", "dlm-tiny-ar")
    summary = {"params": params, "train": {k: r.summary() for k, r in results.items()}, "data": prep.stats}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if not cfg.keep_state:
        for name in ("dlm-tiny", "dlm-tiny-ar"):
            shutil.rmtree(logs / f"{name}_state", ignore_errors=True)
    log(f"done in {log.elapsed() / 60:.2f} minutes")
    pack_logs()
    return evals


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _fmt(losses: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in losses.items())


def _eval_diffusion(cfg: RecipeConfig, prep: Prepared, folder: Path, device: torch.device, log: RunLog) -> dict:
    from ..api import load
    from .evaluate import evaluate_diffusion

    lm = load(folder, device=device)  # the exported checkpoint, through the public loader
    r = evaluate_diffusion(lm, prep.splits["test"], prep.code_eval, gen_length=cfg.eval_gen_length,
                           code_gen_length=cfg.eval_code_gen_length, batch_size=cfg.eval_batch)
    log(f"evaluated dlm-tiny in {sum(r['seconds'].values()):.1f} s")
    return r


def _eval_causal(cfg: RecipeConfig, prep: Prepared, folder: Path, device: torch.device, log: RunLog) -> dict:
    from .evaluate import evaluate_causal, load_causal

    model, tok = load_causal(folder, device=device)
    r = evaluate_causal(model, tok, prep.splits["test"], prep.code_eval, gen_length=cfg.eval_gen_length,
                        code_gen_length=cfg.eval_code_gen_length, batch_size=cfg.eval_batch)
    log(f"evaluated dlm-tiny-ar in {sum(r['seconds'].values()):.1f} s")
    return r


def _write_evals(evals: dict[str, Any], out: Path, log: RunLog) -> None:
    from .evaluate import format_table, write_results

    write_results(evals, out)
    table = format_table(evals)
    print(table, flush=True)
    log("evaluation table:\n" + table)


def _rewrite_cards(out: Path, cfg: RecipeConfig, prep: Prepared, results: dict[str, TrainResult],
                   params: dict[str, int], evals: dict[str, Any], command: str, device_name: str,
                   kinds: list[str]) -> None:
    for kind in kinds:
        folder = out / kind
        if folder.is_dir():
            (folder / "MODEL_CARD.md").write_text(model_card(kind, cfg, prep, results.get(kind), params[kind], evals,
                                                             command, device_name))
