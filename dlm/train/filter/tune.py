"""Tuning: the threshold of a saved filter, chosen by decoding held-out prompts end to end (the fewest forward
passes whose answers still equal the reference decode's for all but ``max_disagreement`` of the prompts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ...config import GenerationConfig
from ...data import exact_match
from .prompts import Prompt, answer_tokens, batches, encode_prompts


def decode(lm, prompts: Sequence[Prompt], scheduler: str, scheduler_kwargs: dict | None = None,
           block_length: int = 32, batch_size: int = 64, ids: Sequence[Sequence[int]] | None = None,
           **config_fields: Any) -> tuple[list[list[int]], list[str], list[int]]:
    """Answers of ``prompts`` with a scheduler (steps = gen_length as budget, temperature 0): (answer tokens up to
    and including the first stop token, texts, NFE per prompt)."""
    ids = list(ids) if ids is not None else encode_prompts(lm, prompts)
    stop_ids = set(lm.ids.stop_ids)
    tokens: list[list[int]] = [[] for _ in prompts]
    texts: list[str] = [""] * len(prompts)
    nfe: list[int] = [0] * len(prompts)
    for g, batch in batches(prompts, ids, batch_size):
        config = GenerationConfig(gen_length=g, steps=g, block_length=block_length, scheduler=scheduler,
                                  scheduler_kwargs=scheduler_kwargs or {}, **config_fields)
        out = lm.generate([ids[j] for j in batch], config)
        for r, j in enumerate(batch):
            tokens[j] = answer_tokens(out.sequences[r].tolist(), stop_ids)
            texts[j] = out.texts[r] if out.texts is not None else ""
            nfe[j] = int(out.nfe[r])
    return tokens, texts, nfe


def decode_metrics(prompts: Sequence[Prompt], tokens: Sequence[Sequence[int]], texts: Sequence[str],
                   nfe: Sequence[int], references: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
    """NFE per generated token (tokens up to and including the first stop token), NFE per answer, accuracy over
    prompts with an answer (exact match), and agreement with ``references`` (answers identical)."""
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
    if not ok:  # none within the budget: the most cautious threshold
        return max(rows, key=lambda r: r["threshold"])["threshold"], rows
    best = min(ok, key=lambda r: (r["nfe_per_answer"], -r["threshold"]))
    return best["threshold"], rows
