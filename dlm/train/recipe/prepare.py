"""Steps 1-3 of the recipe: corpus, task splits, tokenizer, token pools and validation batches, shared by every
phase (:class:`Prepared`)."""

from __future__ import annotations

import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...data import CodeExample, Corpus, Example, code_completion, extract_functions, make_splits, stdlib_corpus
from ...errors import ConfigError
from ..data import Group, Mixture, PairPool, TextPool
from ..tokenizer import TokenIds, load_fast, save_tokenizer, token_ids, train_tokenizer
from .config import RecipeConfig

Texts = list[tuple[str, str]]  # (relative path, source text) of corpus files
Encode = Callable[[list[str]], list[list[int]]]


@dataclass
class Prepared:
    """Everything the trainings and the evaluations share."""

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


def prepare(cfg: RecipeConfig, out: Path, log: Callable[[str], None], device: torch.device) -> Prepared:
    """Corpus, task splits, tokenizer, token pools and validation batches (steps 1-3 of the recipe)."""
    workers = cfg.workers or min(16, os.cpu_count() or 1)
    corpus, train_texts, heldout_texts = read_corpus(cfg, out, log)
    splits, fn_train, fn_heldout = examples(cfg, train_texts, heldout_texts, workers, log)
    tok, tokenizer_dir, ids = tokenizer(cfg, splits, train_texts, out, log)

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    # held-out code completion set: functions of held-out files whose reference fits the generation length, the
    # same selection as dlm.data.stdlib_code_completion("heldout", ...) makes with this tokenizer
    code_eval = code_completion(heldout_texts, n=cfg.code_eval_n, seed=cfg.seed,
                                count_tokens=lambda text: len(tok.encode(text, add_special_tokens=False).ids),
                                max_prompt_tokens=cfg.code_prompt_tokens, max_body_tokens=cfg.code_body_tokens)
    mixture, stats = train_mixture(cfg, splits["train"], fn_train, train_texts, encode, ids, device)
    val = validation(cfg, splits, fn_heldout, heldout_texts, encode, ids, device)
    stats.update(code_eval_functions=len(code_eval), tokens_per_step=mixture.tokens_per_step(),
                 python=platform.python_version())
    log(f"data: {stats['task_pairs']} task pairs, {stats['function_pairs']} function pairs, "
        f"{stats['train_code_tokens'] / 1e6:.2f}M code tokens; {len(code_eval)} held-out functions to complete; "
        f"{stats['tokens_per_step']} tokens per step")
    val_weights = {g.name: g.weight for g in mixture.groups}
    return Prepared(corpus, splits, code_eval, tokenizer_dir, ids, tok.get_vocab_size(), mixture, val, val_weights,
                    stats)


def read_corpus(cfg: RecipeConfig, out: Path, log: Callable[[str], None]) -> tuple[Corpus, Texts, Texts]:
    """The standard library split by file (its manifest written to ``out``) and the texts of both splits."""
    corpus = stdlib_corpus(heldout_fraction=cfg.heldout_fraction, max_files=cfg.max_files,
                           max_file_bytes=cfg.max_file_bytes)
    corpus.write_manifest(out / "corpus_manifest.json")
    m = corpus.manifest()["counts"]
    log(f"corpus: {m['train_files']} training files ({m['train_bytes'] / 1e6:.1f} MB), {m['heldout_files']} held-out "
        f"files ({m['heldout_bytes'] / 1e6:.1f} MB) from {corpus.root}")
    if not corpus.train or not corpus.heldout:
        raise ConfigError(f"the corpus split left {len(corpus.train)} training and {len(corpus.heldout)} held-out "
                          f"files; change heldout_fraction ({cfg.heldout_fraction}) or max_files ({cfg.max_files})")
    return corpus, [(f.rel, f.read()) for f in corpus.train], [(f.rel, f.read()) for f in corpus.heldout]


def examples(cfg: RecipeConfig, train_texts: Texts, heldout_texts: Texts, workers: int, log: Callable[[str], None]
             ) -> tuple[dict[str, list[Example]], list[CodeExample], list[CodeExample]]:
    """Task splits of every family and the functions of both file splits; the task splits and the training
    functions are made in worker processes (pure Python, CPU-bound)."""
    jobs = [(fam, cfg.train_per_task, cfg.val_per_task, cfg.test_per_task, cfg.seed) for fam in cfg.family_list]
    per_family = _pmap(_task_splits, jobs, workers)
    splits = {s: [e for d in per_family for e in d[s]] for s in ("train", "val", "test")}
    fn_train = [e for part in _pmap(_functions, _chunks(train_texts, workers), workers) for e in part]
    fn_heldout = _functions(heldout_texts)
    log(f"tasks: {len(splits['train'])} train / {len(splits['val'])} val / {len(splits['test'])} test examples "
        f"({', '.join(cfg.family_list)}); functions: {len(fn_train)} train, {len(fn_heldout)} held-out candidates")
    return splits, fn_train, fn_heldout


def tokenizer(cfg: RecipeConfig, splits: dict[str, list[Example]], train_texts: Texts, out: Path,
              log: Callable[[str], None]):
    """Byte-level BPE on the training files + a sample of training task texts (never held-out data), or the one of
    ``cfg.tokenizer_from``, saved to ``out/tokenizer``; returns (the fast tokenizer as saved, its folder, its
    special ids)."""
    if cfg.tokenizer_from is not None:
        tok = reused_tokenizer(cfg.tokenizer_from)
    else:
        sample = splits["train"][:: max(1, len(splits["train"]) // max(1, cfg.tokenizer_task_examples))]
        tok = train_tokenizer([t for _, t in train_texts] + [f"{e.prompt} {e.answer}" for e in sample],
                              cfg.vocab_size)
    tokenizer_dir = save_tokenizer(tok, out / "tokenizer", model_max_length=cfg.max_seq_len)
    ids = token_ids(tok)
    tok = load_fast(tokenizer_dir)
    log(f"tokenizer: byte-level BPE, {tok.get_vocab_size()} tokens (bos {ids.bos}, eos/pad {ids.eos}, eot {ids.eot}, "
        f"mask {ids.mask}) -> {tokenizer_dir}")
    return tok, tokenizer_dir, ids


def reused_tokenizer(folder: str):
    """The ``tokenizers.Tokenizer`` of ``folder``/tokenizer.json, checked to hold the recipe's special tokens."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"tokenizer_from={folder!r}: no tokenizer.json there (give a model folder such as "
                          f"dlm/assets/dlm-tiny)")
    tok = load_fast(path.parent)
    try:
        token_ids(tok)
    except ValueError as exc:
        raise ConfigError(f"tokenizer_from={folder!r}: {exc}") from None
    return tok


def train_mixture(cfg: RecipeConfig, tr: list[Example], fn_train: list[CodeExample], train_texts: Texts,
                  encode: Encode, ids: TokenIds, device: torch.device) -> tuple[Mixture, dict[str, Any]]:
    """The training data on the device: task pairs per family (the task group) and function-completion pairs,
    plain code and task pairs in code-length rows (the code group); and counts for the summary."""
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
    weights = cfg.family_weight
    groups = [Group("tasks", list(family_pools.values()), [weights[f] for f in family_pools], cfg.task_batch,
                    cfg.task_weight)]
    if cfg.code_weight > 0:
        rest = 1 - cfg.code_task_fraction
        groups.append(Group("code", [fn_pool, text_pool, long_pool],
                            [rest * cfg.code_fn_fraction, rest * (1 - cfg.code_fn_fraction), cfg.code_task_fraction],
                            cfg.code_batch, cfg.code_weight))
    stats = {
        "train_code_tokens": len(text_pool), "task_pairs": sum(len(p) for p in family_pools.values()),
        "task_pairs_dropped": sum(p.dropped for p in family_pools.values()),
        "function_pairs": len(fn_pool), "function_pairs_dropped": fn_pool.dropped + len(fn_train) - len(keep),
    }
    return Mixture(groups), stats


def validation(cfg: RecipeConfig, splits: dict[str, list[Example]], fn_heldout: list[CodeExample],
               heldout_texts: Texts, encode: Encode, ids: TokenIds, device: torch.device) -> dict[str, list]:
    """Fixed validation batches of the val split's tasks and of held-out code, shaped like the training batches:
    ``{"tasks": [...], "tasks:FAMILY": [...], "code": [...]}``. The total weighs families equally; per-family
    losses are reported as val_tasks:FAMILY, outside the total."""
    gen = torch.Generator(device=device).manual_seed(4321)

    def pair_pool(prompts: list[str], answers: list[str], row_len: int) -> PairPool:
        return PairPool(encode(prompts), encode(answers), row_len, ids.bos, ids.eos, device=device)

    va = splits["val"] or splits["test"]  # val_per_task 0: monitor on the test prompts (no selection is made)
    val_pools = {f: pair_pool([e.prompt for e in va if e.family == f], [e.answer for e in va if e.family == f],
                              cfg.task_len) for f in cfg.family_list}
    val = {"tasks": [Group("tasks", list(val_pools.values()), [1.0] * len(val_pools), cfg.task_batch).sample(gen)
                     for _ in range(cfg.val_batches)]}
    for f, pool in val_pools.items():
        val[f"tasks:{f}"] = [Group(f, [pool], [1.0], cfg.task_batch).sample(gen)]
    if cfg.code_weight > 0:
        hp = encode([e.prompt for e in fn_heldout])
        hkeep = [i for i in range(len(fn_heldout)) if len(hp[i]) <= cfg.code_prompt_tokens]
        val_fn = pair_pool([fn_heldout[i].prompt for i in hkeep], [fn_heldout[i].reference for i in hkeep],
                           cfg.code_len)
        val_text = TextPool.from_documents(encode([t for _, t in heldout_texts]), ids.eos, cfg.code_len, device=device)
        vgroup = Group("code", [val_fn, val_text], [cfg.code_fn_fraction, 1 - cfg.code_fn_fraction], cfg.code_batch)
        val["code"] = [vgroup.sample(gen) for _ in range(cfg.val_batches)]
    return val


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


def _functions(files: Texts) -> list[CodeExample]:
    return [ex for rel, text in files for ex in extract_functions(text, rel, max_prompt_chars=800, max_body_chars=1200)]


def _chunks(items: list, n: int) -> list[list]:
    n = max(1, min(n, len(items)))
    return [items[i::n] for i in range(n)]
