"""Collection: decode prompts with the reference and record, at every step, what a filter will see and whether
each candidate was already final (:func:`collect`, :func:`collect_parallel`)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ...api import Engine
from ...config import GenerationConfig
from ...errors import ConfigError
from ...schedulers.base import SCHEDULERS
from ...schedulers.low_confidence import LowConfidence
from .dataset import FilterData
from .prompts import Prompt, answer_tokens, batches, encode_prompts


@dataclass
class StepRecord:
    """What the recorder saw in one call: per row (B,) its request, block, step and the answer position of the
    block's first column; (B, n) tensors over the active block. On the CPU."""

    request: torch.Tensor
    block: torch.Tensor
    start: torch.Tensor
    step: torch.Tensor
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
            b = view.block
            cols = slice(0, int(b.width.max()))
            cpu = lambda t: t[:, cols].detach().to("cpu", copy=True)  # noqa: E731
            row = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
            self.sink.append(StepRecord(
                request=row(view.request_ids), block=row(b.index), start=row(b.start - b.answer_start),
                step=row(view.step), active=row(view.active), masked=cpu(view.masked_in_block),
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


def collect(lm, prompts: Sequence[Prompt], block_length: int = 32, batch_size: int = 64,
            log: Callable[[str], None] | None = None) -> FilterData:
    """Decode ``prompts`` with the reference (``low_confidence``, steps = gen_length, temperature 0) through
    ``lm.generate`` and record every step's candidates with labels (see :mod:`dlm.train.filter`). Prompts are
    batched by generation length and prompt length; rows do not influence each other (padding is masked), so
    batching does not change what is recorded."""
    if not prompts:
        raise ConfigError("no prompts to collect filter training data from")
    ids = encode_prompts(lm, prompts)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in FilterData.TENSORS}
    references: list[list[int]] = [[] for _ in prompts]
    stop_ids = set(lm.ids.stop_ids)
    t0 = time.perf_counter()
    done = 0
    with recording_scheduler() as (name, sink):
        for g, batch in batches(prompts, ids, batch_size):
            if g % block_length:
                raise ConfigError(f"gen_length {g} of a prompt is not a multiple of block_length {block_length}")
            config = GenerationConfig(gen_length=g, steps=g, block_length=block_length, scheduler=name,
                                      temperature=0.0)
            sink.clear()
            engine = Engine(lm, max_rows=len(batch))
            reqs = [engine.submit(ids[j], config) for j in batch]
            engine.run()
            final = torch.cat([r.output.sequences for r in reqs]).cpu()
            row_of = {r.id: i for i, r in enumerate(reqs)}
            index = torch.tensor(batch, dtype=torch.long)
            for rec in sink:
                add_labelled(parts, rec, final, index, row_of)
            for r, j in enumerate(batch):
                references[j] = answer_tokens(final[r].tolist(), stop_ids)
            done += len(batch)
            if log is not None:
                log(f"collected {done}/{len(prompts)} prompts ({time.perf_counter() - t0:.0f} s)")
    data = FilterData(**{k: torch.cat(v) for k, v in parts.items()}, families=[p.family for p in prompts],
                      references=references, block_length=block_length)
    return data.canonical()


def add_labelled(parts: dict[str, list[torch.Tensor]], rec: StepRecord, final: torch.Tensor,
                 index: torch.Tensor, row_of: dict[int, int]) -> None:
    """Append the rows of one recorded call that still had masks, each position labelled "its candidate equals
    the final output" (``final``: (B, gen_length) answers of the batch; ``index``: (B,) prompt index of each
    answer row; ``row_of``: request id -> answer row)."""
    n = rec.masked.shape[1]
    rows = torch.tensor([row_of[int(i)] for i in rec.request], dtype=torch.long)
    cols = rec.start.unsqueeze(1) + torch.arange(n).unsqueeze(0)
    label = rec.tokens == final[rows.unsqueeze(1), cols.clamp(max=final.shape[1] - 1)]
    keep = (rec.masked & rec.active.unsqueeze(1)).any(1)
    if not bool(keep.any()):
        return
    for k, v in (("confidence", rec.confidence), ("margin", rec.margin), ("neg_entropy", rec.neg_entropy),
                 ("masked", rec.masked), ("label", label)):
        parts[k].append(v[keep])
    parts["prompt"].append(index[rows][keep])
    parts["step"].append(rec.step[keep])
    parts["block"].append(rec.block[keep])


def _collect_shard(model: str | None, device: str, prompts: Sequence[Prompt], block_length: int, batch_size: int,
                   out: str) -> None:
    """Worker of :func:`collect_parallel`: collect ``prompts`` in a fresh process, save the data to ``out``."""
    from ...api import load

    torch.set_num_threads(1)
    collect(load(model, device=device), prompts, block_length=block_length, batch_size=batch_size).save(out)


def collect_parallel(model: str | None, prompts: Sequence[Prompt], workers: int, block_length: int = 32,
                     batch_size: int = 64, device: str = "cpu", log: Callable[[str], None] | None = None
                     ) -> FilterData:
    """:func:`collect` split over ``workers`` processes (one CPU thread each), each loading the model ``model``
    (a checkpoint folder; ``None``: the bundled dlm-tiny) and decoding a contiguous share of the prompts. The
    result is the same data as one process collects, up to floating-point rounding in batched matrix products."""
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


def data_fingerprint(lm, prompts: Sequence[Prompt], block_length: int) -> str:
    """A hash of what collected data depends on: the model (its config and weight files' names and sizes), every
    prompt's token ids and generation length, and the block length. ``--data-dir`` reuses data only on a match."""
    files = sorted((f.name, f.stat().st_size) for f in lm.path.glob("*.safetensors")) if lm.path else []
    ids = encode_prompts(lm, prompts)
    key = {"model": [lm.hf_config, files, lm.model_type], "block_length": block_length,
           "prompts": [[list(i), p.gen_length] for i, p in zip(ids, prompts)]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
