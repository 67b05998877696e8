"""Training of the learned unmasking filter of ``learned_filter`` (Learn2PD, arXiv:2509.25188).

Three stages, each usable alone:

1. :func:`collect`: decode every prompt with the reference, LLaDA's ``low_confidence`` one token per step at
   temperature 0, through dlm's engine, with a scheduler that *is* the reference plus a recorder
   (:class:`ReferenceRecorder`): at every step it keeps, for the active block of every row still decoding, each
   position's candidate token, its confidence, margin and entropy, and which positions are still masked. When the
   decode is over, every recorded masked position gets the label "its candidate at that step equals the final
   output". The paper decodes twice (once for the final output, once to record); at temperature 0 the recording
   run is the reference run itself (the recorder decides exactly what ``low_confidence`` decides), so one decode
   gives both and the labels are computed afterwards. Positions filled by the stop rule (EOS after the answer's
   end) are labelled against the EOS they finally hold.
2. :func:`train`: fit a :class:`~dlm.schedulers.learned_filter.FilterNet` (Learn2PD's two-layer MLP by default)
   with binary cross-entropy on the masked positions, AdamW (lr 3e-3), cosine decay; the epoch with the lowest
   validation loss is kept.
3. :func:`tune_threshold`: decode held-out prompts with the ``learned_filter`` scheduler at a grid of thresholds
   and keep the one with the fewest forward passes whose answers still equal the reference's for all but
   ``max_disagreement`` of the prompts.

:func:`run` chains them (``dlm train-filter``, see :mod:`dlm.train.filter_cli`) and writes the filter as
``FILE.safetensors`` + ``FILE.json``.

Metrics (:func:`filter_metrics`), over masked positions of the recorded steps: at threshold t, a position is
*accepted* when its accept probability exceeds t. False-positive rate = accepted wrong positions / wrong positions
(label 0); false-discovery rate = accepted wrong positions / accepted positions (the share of early commits that
change the output); acceptance = accepted / all; recall = accepted right / right.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..schedulers.base import SCHEDULERS
from ..schedulers.learned_filter import (FilterConfig, FilterNet, block_features, check_threshold, save_filter,
                                         to_windows)
from ..schedulers.low_confidence import LowConfidence

RAW = ("confidence", "margin", "neg_entropy")  # per-position measures recorded (float32)


# ------------------------------------------------------------------------------------------------ prompts
@dataclass(frozen=True)
class Prompt:
    """A prompt to decode: ``text`` or token ``ids``, its ``gen_length``, and a ``family`` label (for reports)."""

    text: str | None = None
    ids: tuple[int, ...] | None = None
    gen_length: int = 32
    family: str = ""
    answer: str | None = None


def task_prompts(split: str = "train", n_per_family: int = 100, seed: int = 0, families: Sequence[str] | None = None,
                 gen_length: int = 32) -> list[Prompt]:
    """Prompts (with answers) of the synthetic tasks' ``split``, as :mod:`dlm.train.evaluate` prompts them."""
    from ..bench.tasks import FAMILIES, get_task

    out = []
    for fam in families or FAMILIES:
        out += [Prompt(text=e.prompt, gen_length=gen_length, family=e.family, answer=e.answer)
                for e in get_task(fam).generate(split, n_per_family, seed)]
    return out


def code_prompts(n: int, seed: int = 0, gen_length: int = 64, tokenizer=None, max_prompt_tokens: int = 96,
                 split: str = "train") -> list[Prompt]:
    """``n`` function-completion prompts (``def`` line + docstring) from the standard library's files of
    ``split`` (:func:`dlm.bench.tasks.stdlib_code_completion`: ``train`` for training a filter, ``heldout`` to
    measure one)."""
    from ..bench.tasks import stdlib_code_completion

    count = None
    if tokenizer is not None:
        count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    code = stdlib_code_completion(split, n=n, seed=seed, count_tokens=count, max_prompt_tokens=max_prompt_tokens,
                                  max_body_tokens=gen_length - 1)
    return [Prompt(text=c.prompt, gen_length=gen_length, family="code") for c in code]


def read_prompts(path: str | Path, gen_length: int = 32) -> list[Prompt]:
    """A JSONL prompt file as ``dlm generate --input`` reads it (:func:`dlm.cli.read_prompt_lines`): each line a
    JSON string, or an object with ``prompt`` (text) or ``prompt_ids`` (token ids); objects may also give
    ``gen_length``, ``family`` and ``answer``."""
    from ..cli import read_prompt_lines

    out = []
    for n, prompt, item in read_prompt_lines(Path(path)):
        g = item.get("gen_length", gen_length)
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ConfigError(f"{path}:{n}: gen_length must be a positive integer, got {g!r}")
        fam = str(item.get("family", ""))
        ans = item.get("answer") if isinstance(item.get("answer"), str) else None
        if isinstance(prompt, str):
            out.append(Prompt(text=prompt, gen_length=g, family=fam, answer=ans))
        else:
            out.append(Prompt(ids=tuple(prompt), gen_length=g, family=fam, answer=ans))
    return out


def encode_prompts(lm, prompts: Sequence[Prompt]) -> list[list[int]]:
    ids = []
    for p in prompts:
        if p.ids is not None:
            ids.append(list(p.ids))
        else:
            ids.append(lm.encode([p.text])[0])
    return ids


# ------------------------------------------------------------------------------------------------ recording
@dataclass
class StepRecord:
    """What the recorder saw at one step of one batch (tensors (B, n) over the active block, on the CPU)."""

    block: int
    start: int  # answer position of the block's first column
    step: int
    active: torch.Tensor  # (B,) bool
    masked: torch.Tensor  # (B, n) bool
    tokens: torch.Tensor  # (B, n) long
    confidence: torch.Tensor
    margin: torch.Tensor
    neg_entropy: torch.Tensor


class ReferenceRecorder(LowConfidence):
    """The reference scheduler (``low_confidence``) that also records every step into ``sink``.

    Used through :func:`recording_scheduler`, which registers a subclass bound to a fresh sink under a private name
    for the duration of a collection (the engine builds schedulers by name) and removes it afterwards.
    """

    measures = frozenset({"margin", "entropy"})  # computed for the record; they do not change the decision
    sink: list[StepRecord] | None = None

    def step(self, cand, view, state):
        decision, state = super().step(cand, view, state)
        if self.sink is not None:
            cols = view.block.in_block
            cpu = lambda t: t[:, cols].detach().to("cpu", copy=True)  # noqa: E731
            self.sink.append(StepRecord(
                block=view.block.index, start=view.block.start - view.block.answer_start, step=view.step,
                active=view.active.detach().to("cpu", copy=True), masked=cpu(view.masked),
                tokens=cpu(cand.tokens), confidence=cpu(cand.confidence).float(), margin=cpu(cand.margin).float(),
                neg_entropy=cpu(cand.neg_entropy).float()))
        return decision, state


@contextlib.contextmanager
def recording_scheduler() -> Iterator[tuple[str, list[StepRecord]]]:
    """Register a :class:`ReferenceRecorder` bound to a new sink; yield (its name, the sink); unregister it."""
    sink: list[StepRecord] = []
    cls = type("ReferenceRecorder", (ReferenceRecorder,), {"sink": sink, "__doc__": ReferenceRecorder.__doc__})
    name = f"_filter_recorder_{id(sink)}"
    SCHEDULERS.register(name, cls)
    try:
        yield name, sink
    finally:
        SCHEDULERS.unregister(name)


# ------------------------------------------------------------------------------------------------ data
@dataclass
class FilterData:
    """Recorded steps, one sample per (prompt, step, block): tensors (N, n) over the n positions of the block.

    Attributes:
        confidence, margin, neg_entropy: float32 candidate measures.
        masked: bool, still-masked positions (the samples; committed positions are context).
        label: bool, the candidate equals the final output.
        prompt: (N,) long, index of the prompt in ``families`` / ``references``.
        step: (N,) long, step within the block; block: (N,) long, block index.
        families: family label of each prompt.
        references: each prompt's final answer tokens (the reference decode's output).
        block_length: n.
    """

    confidence: torch.Tensor
    margin: torch.Tensor
    neg_entropy: torch.Tensor
    masked: torch.Tensor
    label: torch.Tensor
    prompt: torch.Tensor
    step: torch.Tensor
    block: torch.Tensor
    families: list[str] = field(default_factory=list)
    references: list[list[int]] = field(default_factory=list)
    block_length: int = 32
    fingerprint: str = ""  # of the model, prompts and block length it was collected with (see data_fingerprint)

    TENSORS = ("confidence", "margin", "neg_entropy", "masked", "label", "prompt", "step", "block")

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def positions(self) -> int:
        """Masked positions recorded (training samples)."""
        return int(self.masked.sum())

    def features(self, names: Sequence[str]) -> torch.Tensor:
        """(N, C, n) input channels ``names`` (see :func:`dlm.schedulers.learned_filter.block_features`)."""
        return block_features(names, self.confidence, self.masked, self.margin, self.neg_entropy)

    def select(self, rows: torch.Tensor) -> "FilterData":
        return dataclasses.replace(self, **{k: getattr(self, k)[rows] for k in self.TENSORS})

    def canonical(self) -> "FilterData":
        """Samples sorted by (prompt, block, step): the order does not depend on how prompts were batched."""
        key = (self.prompt * (self.block.max().clamp(min=0) + 1) + self.block) * (self.step.max().clamp(min=0) + 1) \
            + self.step
        return self.select(torch.argsort(key, stable=True))

    def without_families(self, families: Sequence[str]) -> "FilterData":
        """The samples of prompts whose family is not in ``families`` (prompt indices unchanged)."""
        drop = torch.tensor([f in set(families) for f in self.families], dtype=torch.bool)
        return self.select(~drop[self.prompt]) if len(self) else self

    @classmethod
    def concat(cls, parts: Sequence["FilterData"]) -> "FilterData":
        """One dataset of ``parts`` (prompt indices renumbered in order)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len({p.block_length for p in parts}) != 1:
            raise ValueError(f"parts have different block lengths: {[p.block_length for p in parts]}")
        offsets, total = [], 0
        for p in parts:
            offsets.append(total)
            total += len(p.families)
        tensors = {k: torch.cat([getattr(p, k) for p in parts]) for k in cls.TENSORS}
        tensors["prompt"] = torch.cat([p.prompt + o for p, o in zip(parts, offsets)])
        return cls(**tensors, families=[f for p in parts for f in p.families],
                   references=[r for p in parts for r in p.references], block_length=parts[0].block_length)

    def save(self, path: str | Path) -> None:
        """``path`` (.safetensors: the tensors) + ``path`` with .json (prompt families, references)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: getattr(self, k).contiguous() for k in self.TENSORS}, str(path))
        path.with_suffix(".json").write_text(json.dumps({"families": self.families, "references": self.references,
                                                         "block_length": self.block_length,
                                                         "fingerprint": self.fingerprint}))

    @classmethod
    def load(cls, path: str | Path) -> "FilterData":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        try:
            t = load_file(str(path))
            meta = json.loads(path.with_suffix(".json").read_text())
            return cls(**{k: t[k] for k in cls.TENSORS}, families=meta["families"], references=meta["references"],
                       block_length=meta["block_length"], fingerprint=meta.get("fingerprint", ""))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            raise ConfigError(f"{path} (+ {path.with_suffix('.json').name}) is not filter data saved by "
                              f"FilterData.save / `dlm train-filter --data-dir`: {exc!r}") from exc


def data_fingerprint(lm, prompts: Sequence[Prompt], block_length: int) -> str:
    """A hash of what collected data depends on: the model (its config and weight files' names and sizes), every
    prompt's token ids and generation length, and the block length. ``--data-dir`` reuses data only on a match."""
    import hashlib

    files = sorted((f.name, f.stat().st_size) for f in lm.path.glob("*.safetensors")) if lm.path else []
    ids = encode_prompts(lm, prompts)
    key = {"model": [lm.hf_config, files, lm.model_type], "block_length": block_length,
           "prompts": [[list(i), p.gen_length] for i, p in zip(ids, prompts)]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def collect(lm, prompts: Sequence[Prompt], block_length: int = 32, batch_size: int = 64,
            log: Callable[[str], None] | None = None) -> FilterData:
    """Decode ``prompts`` with the reference (``low_confidence``, steps = gen_length, temperature 0) and record
    every step's candidates with labels (see the module doc). Prompts are batched by generation length and prompt
    length; rows do not influence each other (padding is masked), so batching does not change what is recorded."""
    from ..config import GenerationConfig
    from ..engine import generate

    if not prompts:
        raise ConfigError("no prompts to collect filter training data from")
    ids = encode_prompts(lm, prompts)
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i].gen_length, len(ids[i])))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in FilterData.TENSORS}
    references: list[list[int]] = [[] for _ in prompts]
    stop_ids = set(lm.ids.stop_ids)
    t0 = time.perf_counter()
    done = 0
    with recording_scheduler() as (name, sink):
        i = 0
        while i < len(order):
            g = prompts[order[i]].gen_length
            batch = [order[i]]
            while len(batch) < batch_size and i + len(batch) < len(order) \
                    and prompts[order[i + len(batch)]].gen_length == g:
                batch.append(order[i + len(batch)])
            i += len(batch)
            if g % block_length:
                raise ConfigError(f"gen_length {g} of a prompt is not a multiple of block_length {block_length}")
            config = GenerationConfig(gen_length=g, steps=g, block_length=block_length, scheduler=name,
                                      temperature=0.0)
            sink.clear()
            out = generate(lm, [ids[j] for j in batch], config)
            final = out.sequences.cpu()
            index = torch.tensor(batch, dtype=torch.long)
            for rec in sink:
                n = rec.masked.shape[1]
                label = rec.tokens == final[:, rec.start : rec.start + n]
                keep = (rec.masked & rec.active.unsqueeze(1)).any(1)
                if not bool(keep.any()):
                    continue
                for k, v in (("confidence", rec.confidence), ("margin", rec.margin),
                             ("neg_entropy", rec.neg_entropy), ("masked", rec.masked), ("label", label)):
                    parts[k].append(v[keep])
                m = int(keep.sum())
                parts["prompt"].append(index[keep])
                parts["step"].append(torch.full((m,), rec.step, dtype=torch.long))
                parts["block"].append(torch.full((m,), rec.block, dtype=torch.long))
            for r, j in enumerate(batch):
                row = final[r].tolist()
                cut = next((p for p, t in enumerate(row) if t in stop_ids), len(row) - 1)
                references[j] = row[: cut + 1]
            done += len(batch)
            if log is not None:
                log(f"collected {done}/{len(prompts)} prompts ({time.perf_counter() - t0:.0f} s)")
    data = FilterData(**{k: torch.cat(v) for k, v in parts.items()}, families=[p.family for p in prompts],
                      references=references, block_length=block_length)
    return data.canonical()


def _collect_shard(model: str | None, device: str, prompts: Sequence[Prompt], block_length: int, batch_size: int,
                   out: str) -> None:
    """Worker of :func:`collect_parallel`: collect ``prompts`` in a fresh process, save the data to ``out``."""
    torch.set_num_threads(1)
    from ..api import load

    collect(load(model, device=device), prompts, block_length=block_length, batch_size=batch_size).save(out)


def collect_parallel(model: str | None, prompts: Sequence[Prompt], workers: int, block_length: int = 32,
                     batch_size: int = 64, device: str = "cpu", log: Callable[[str], None] | None = None
                     ) -> FilterData:
    """:func:`collect` split over ``workers`` processes (one CPU thread each), each loading the model ``model``
    (a checkpoint folder; ``None``: the bundled dlm-tiny) and decoding a contiguous share of the prompts. The
    result is the same data as one process collects, up to floating-point rounding in batched matrix products."""
    import concurrent.futures as cf
    import multiprocessing
    import tempfile

    k = max(1, min(workers, len(prompts)))
    bounds = [round(i * len(prompts) / k) for i in range(k + 1)]
    with tempfile.TemporaryDirectory(prefix="dlm-filter-") as tmp:
        files = [str(Path(tmp) / f"shard{i}.safetensors") for i in range(k)]
        ctx = multiprocessing.get_context("spawn")
        t0 = time.perf_counter()
        with cf.ProcessPoolExecutor(max_workers=k, mp_context=ctx) as pool:
            futures = [pool.submit(_collect_shard, model, device, list(prompts[bounds[i] : bounds[i + 1]]),
                                   block_length, batch_size, files[i]) for i in range(k)]
            for n, fut in enumerate(cf.as_completed(futures), 1):
                fut.result()
                if log is not None:
                    log(f"collected shard {n}/{k} ({time.perf_counter() - t0:.0f} s)")
        return FilterData.concat([FilterData.load(f) for f in files]).canonical()


# ------------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class TrainSettings:
    """Optimisation of the filter (Learn2PD: BCE, AdamW lr 3e-3)."""

    epochs: int = 40
    lr: float = 3e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    seed: int = 0
    max_minutes: float | None = None
    wrong_weight: float = 1.0  # loss weight of positions labelled 0 (rare: the ones a filter must catch)


def windows(data: FilterData, config: FilterConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs (M, C, W), labels (M, W) float, weights (M, W) float: 1 on masked real positions). An ``mlp``
    filter sees windows of ``width`` positions, a ``local`` one whole blocks (W = block length)."""
    feats = data.features(config.features)
    if config.arch == "local":
        return feats, data.label.float(), data.masked.float()
    x, _ = to_windows(feats, config)
    one = FilterConfig(features=("masked",), width=config.width)  # masked padding = 0: padding is never a sample
    w, _ = to_windows(data.masked.float().unsqueeze(1), one)
    y, _ = to_windows(data.label.float().unsqueeze(1), one)
    return x, y.squeeze(1), w.squeeze(1)


def bce(net: FilterNet, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.binary_cross_entropy_with_logits(net(x), y, reduction="none")
    return (loss * w).sum() / w.sum().clamp(min=1)


def train(data: FilterData, config: FilterConfig, val: FilterData | None = None,
          settings: TrainSettings = TrainSettings(), log: Callable[[str], None] | None = None
          ) -> tuple[FilterNet, list[dict[str, float]]]:
    """Fit a filter on ``data``; returns (the net of the best validation epoch, per-epoch history)."""
    torch.manual_seed(settings.seed)
    net = FilterNet(config)
    x, y, w = windows(data, config)
    keep = w.sum(1) > 0
    x, y, w = x[keep], y[keep], w[keep]
    if settings.wrong_weight != 1.0:
        w = w * torch.where(y > 0.5, 1.0, settings.wrong_weight)
    vx = vy = vw = None
    if val is not None:
        vx, vy, vw = windows(val, config)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, math.ceil(x.shape[0] / settings.batch_size))
    total = steps_per_epoch * settings.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    gen = torch.Generator().manual_seed(settings.seed)
    history: list[dict[str, float]] = []
    best, best_state = float("inf"), None
    t0 = time.perf_counter()
    for epoch in range(settings.epochs):
        net.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        total_loss = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * settings.batch_size : (s + 1) * settings.batch_size]
            loss = bce(net, x[idx], y[idx], w[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
        net.eval()
        rec = {"epoch": epoch + 1, "train_loss": total_loss / x.shape[0]}
        with torch.no_grad():
            rec["train_loss_eval"] = float(bce(net, x, y, w))
            if vx is not None:
                rec["val_loss"] = float(bce(net, vx, vy, vw))
        history.append(rec)
        score = rec.get("val_loss", rec["train_loss_eval"])
        if score < best:
            best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
        if log is not None:
            log("epoch {epoch}: train loss {train_loss:.4f}".format(**rec)
                + (f", val loss {rec['val_loss']:.4f}" if "val_loss" in rec else ""))
        if settings.max_minutes is not None and time.perf_counter() - t0 > 60 * settings.max_minutes:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval(), history


@torch.no_grad()
def accept_probabilities(net: FilterNet, data: FilterData) -> torch.Tensor:
    """(N, n) the filter's accept probabilities of every recorded position."""
    return net.accept_probability(data.features(net.config.features))


def filter_metrics(prob: torch.Tensor, data: FilterData, threshold: float) -> dict[str, float]:
    """False-positive rate, false-discovery rate, acceptance and recall at ``threshold`` over the masked
    positions of ``data`` (see the module doc); ``prob`` (N, n)."""
    m = data.masked
    acc = (prob > threshold) & m
    right, wrong = data.label & m, ~data.label & m
    tp, fp = int((acc & right).sum()), int((acc & wrong).sum())
    n_right, n_wrong, n = int(right.sum()), int(wrong.sum()), int(m.sum())
    return {"threshold": threshold, "positions": n, "wrong": n_wrong, "false_positive_rate": fp / max(1, n_wrong),
            "false_discovery_rate": fp / max(1, tp + fp), "acceptance": (tp + fp) / max(1, n),
            "recall": tp / max(1, n_right)}


def confidence_metrics(data: FilterData, threshold: float) -> dict[str, float]:
    """:func:`filter_metrics` of Fast-dLLM's rule (accept when confidence >= threshold), for comparison."""
    return filter_metrics(torch.nan_to_num(data.confidence, neginf=0.0) + 1e-12, data, threshold)


# ------------------------------------------------------------------------------------------------ decoding
def decode(lm, prompts: Sequence[Prompt], scheduler: str, scheduler_kwargs: dict | None = None,
           block_length: int = 32, batch_size: int = 64, ids: Sequence[Sequence[int]] | None = None,
           **config_fields: Any) -> tuple[list[list[int]], list[str], list[int]]:
    """Answers of ``prompts`` with a scheduler (steps = gen_length as budget, temperature 0): (answer tokens up to
    and including the first stop token, texts, NFE per prompt)."""
    from ..config import GenerationConfig

    ids = list(ids) if ids is not None else encode_prompts(lm, prompts)
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i].gen_length, len(ids[i])))
    stop_ids = set(lm.ids.stop_ids)
    tokens: list[list[int]] = [[] for _ in prompts]
    texts: list[str] = [""] * len(prompts)
    nfe: list[int] = [0] * len(prompts)
    i = 0
    while i < len(order):
        g = prompts[order[i]].gen_length
        batch = [order[i]]
        while len(batch) < batch_size and i + len(batch) < len(order) and prompts[order[i + len(batch)]].gen_length == g:
            batch.append(order[i + len(batch)])
        i += len(batch)
        config = GenerationConfig(gen_length=g, steps=g, block_length=block_length, scheduler=scheduler,
                                  scheduler_kwargs=scheduler_kwargs or {}, **config_fields)
        out = lm.generate([ids[j] for j in batch], config)
        for r, j in enumerate(batch):
            row = out.sequences[r].tolist()
            cut = next((p for p, t in enumerate(row) if t in stop_ids), len(row) - 1)
            tokens[j] = row[: cut + 1]
            texts[j] = out.texts[r] if out.texts is not None else ""
            nfe[j] = int(out.nfe[r])
    return tokens, texts, nfe


def decode_metrics(prompts: Sequence[Prompt], tokens: Sequence[Sequence[int]], texts: Sequence[str],
                   nfe: Sequence[int], references: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
    """NFE per generated token (tokens up to and including the first stop token), NFE per answer, accuracy over
    prompts with an answer (exact match), and agreement with ``references`` (answers identical)."""
    from ..bench.tasks import exact_match

    gen = sum(len(t) for t in tokens)
    out: dict[str, float] = {"prompts": len(prompts), "nfe_per_token": sum(nfe) / max(1, gen),
                             "nfe_per_answer": sum(nfe) / max(1, len(prompts))}
    scored = [(p, t) for p, t in zip(prompts, texts) if p.answer is not None]
    if scored:
        out["accuracy"] = sum(exact_match(t, p.answer) for p, t in scored) / len(scored)
    if references is not None:
        out["agreement"] = sum(list(a) == list(b) for a, b in zip(tokens, references)) / max(1, len(prompts))
    return out


def within_disagreement(row: dict[str, float], max_disagreement: float) -> bool:
    """Whether a :func:`decode_metrics` row's answers differ from the reference's on at most ``max_disagreement``
    of its prompts (counted in prompts, so 3 of 300 is within 1% despite floating-point rounding)."""
    differ = round((1 - row["agreement"]) * row["prompts"])
    return differ <= max_disagreement * row["prompts"] + 1e-9


def tune_threshold(lm, path: str | Path, prompts: Sequence[Prompt], references: Sequence[Sequence[int]],
                   grid: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.96, 0.98, 0.99),
                   max_disagreement: float = 0.01, block_length: int = 32, batch_size: int = 64,
                   log: Callable[[str], None] | None = None) -> tuple[float, list[dict[str, float]]]:
    """The threshold of the saved filter ``path`` with the fewest forward passes per answer on ``prompts`` among
    those whose answers differ from ``references`` (the reference decode's) on at most ``max_disagreement`` of
    them (the highest threshold of the grid when none qualifies). Returns (threshold, one metrics row each)."""
    ids = encode_prompts(lm, prompts)
    rows = []
    for t in sorted(grid):
        tokens, texts, nfe = decode(lm, prompts, "learned_filter", {"path": str(path), "threshold": float(t)},
                                    block_length=block_length, batch_size=batch_size, ids=ids)
        row = {"threshold": float(t), **decode_metrics(prompts, tokens, texts, nfe, references)}
        rows.append(row)
        if log is not None:
            log(f"threshold {t}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "threshold"))
    ok = [r for r in rows if within_disagreement(r, max_disagreement)]
    best = min(ok, key=lambda r: (r["nfe_per_answer"], -r["threshold"])) if ok else max(rows, key=lambda r: r["threshold"])
    return best["threshold"], rows


# ------------------------------------------------------------------------------------------------ pipeline
def run(lm, train_prompts: Sequence[Prompt], val_prompts: Sequence[Prompt], out: str | Path,
        features: Sequence[str] = ("confidence", "masked"), hidden: Sequence[int] = (32,), width: int = 32,
        block_length: int = 32, settings: TrainSettings = TrainSettings(), threshold: float | None = None,
        grid: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.96, 0.98, 0.99), max_disagreement: float = 0.01,
        batch_size: int = 64, data_dir: str | Path | None = None, model_name: str = "",
        workers: int = 1, model_path: str | None = None, arch: str = "local", context: int = 4,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Collect, train, tune and save a filter at ``out`` (.safetensors + .json). With ``data_dir`` the collected
    data is saved there (and reused when already there). ``threshold`` set: no tuning. Returns a summary."""
    log = log or (lambda s: None)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must name a .safetensors file (its .json config is written beside it), got {out}")
    # every setting is checked before the (long) collection starts
    try:
        config = FilterConfig(features=tuple(features), arch=arch, width=width, context=context,
                              hidden=tuple(hidden), threshold=threshold if threshold is not None else 0.96)
        for t in grid:
            check_threshold(t)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if settings.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {settings.epochs}")
    if not 0 <= max_disagreement <= 1:
        raise ConfigError(f"max_disagreement must be a share in [0, 1], got {max_disagreement}")
    t0 = time.perf_counter()

    def data_for(kind: str, prompts: Sequence[Prompt]) -> FilterData:
        cached = Path(data_dir) / f"{kind}.safetensors" if data_dir is not None else None
        fingerprint = data_fingerprint(lm, prompts, block_length)
        if cached is not None and cached.is_file():
            data = FilterData.load(cached)
            if data.fingerprint == fingerprint:
                log(f"{kind} data: reusing {cached}")
                return data
            log(f"{kind} data: {cached} was collected for another model, prompts or block length; collecting anew")
        log(f"{kind} data: decoding {len(prompts)} prompts with the reference")
        if workers > 1:
            data = collect_parallel(model_path, prompts, workers, block_length=block_length,
                                    batch_size=batch_size, device=str(lm.device), log=log)
        else:
            data = collect(lm, prompts, block_length=block_length, batch_size=batch_size, log=log)
        data.fingerprint = fingerprint
        if cached is not None:
            data.save(cached)
        return data

    train_data = data_for("train", train_prompts)
    val_data = data_for("val", val_prompts)
    t_data = time.perf_counter()
    log(f"train: {len(train_data)} block states, {train_data.positions} masked positions "
        f"({int((~train_data.label & train_data.masked).sum())} wrong); val: {len(val_data)} / {val_data.positions}")
    net, history = train(train_data, config, val_data, settings, log=log)
    t_train = time.perf_counter()
    save_filter(net, out, config)
    tuning: list[dict[str, float]] = []
    if threshold is None:
        threshold, tuning = tune_threshold(lm, out, val_prompts, val_data.references, grid=grid,
                                           max_disagreement=max_disagreement, block_length=block_length,
                                           batch_size=batch_size, log=log)
        log(f"tuned threshold: {threshold}")
    prob = accept_probabilities(net, val_data)
    metrics = filter_metrics(prob, val_data, threshold)
    metrics_096 = filter_metrics(prob, val_data, 0.96)
    info = {
        "model": model_name,
        "method": "Learn2PD (arXiv:2509.25188): MLP over the block's per-position features -> accept logits; "
                  "labels from the one-token-per-step low_confidence decode (temperature 0)",
        "train_prompts": len(train_prompts), "val_prompts": len(val_prompts),
        "train_families": sorted(set(p.family for p in train_prompts)),
        "train_positions": train_data.positions, "val_positions": val_data.positions,
        "parameters": net.num_parameters, "settings": dataclasses.asdict(settings),
        "epochs_run": len(history), "best_val_loss": min(h.get("val_loss", float("inf")) for h in history),
        "val_metrics": metrics, "val_metrics_at_0.96": metrics_096, "threshold_tuning": tuning,
        "max_disagreement": max_disagreement,
        "seconds": {"data": round(t_data - t0, 1), "train": round(t_train - t_data, 1),
                    "tune": round(time.perf_counter() - t_train, 1)},
    }
    config = dataclasses.replace(config, threshold=float(threshold), info=info)
    save_filter(net, out, config)
    log(f"wrote {out} and {out.with_suffix('.json')} (threshold {threshold}, val false-positive rate "
        f"{metrics['false_positive_rate']:.4f}, false-discovery rate {metrics['false_discovery_rate']:.4f})")
    return {"path": str(out), "threshold": threshold, "history": history, **info}
