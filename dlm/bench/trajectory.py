"""The decoding trajectory of one example (which answer position was committed at which step) under the reference
and one fast configuration, for the trajectory picture of the report."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..config import GenerationConfig
from .items import Item
from .scoring import generated_length


def trajectory_item(items: Sequence[Item]) -> int:
    """The example drawn in the trajectory picture: the first of a family whose answer tokens depend on each
    other (add, then sort, cumsum, then their stress variants), else the first example."""
    for fam in ("add", "sort", "cumsum", "add-carry", "cumsum-long", "sort-long"):
        for i, it in enumerate(items):
            if it.family == fam:
                return i
    return 0


def fast_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fast configuration drawn beside the reference (of the first group): ``best`` when it ran, else the
    fastest measured configuration."""
    first_group = rows[0]["group"]
    ok = [r for r in rows if r["group"] == first_group and r["status"] == "ok" and not r["is_reference"]]
    if not ok:
        return None
    return next((r for r in ok if r["name"] == "best"), None) or max(
        ok, key=lambda r: r["metrics"].get("tokens_per_s") or 0.0)


def trajectories(lm, items: Sequence[Item], prompt_ids: Sequence[list[int]], rows: list[dict[str, Any]],
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Commit steps of :func:`trajectory_item` under the reference (``rows[0]``) and :func:`fast_row`."""
    fast = fast_row(rows)
    if fast is None:
        return []
    idx = trajectory_item(items)
    item = items[idx]
    out = []
    for r in (rows[0], fast):
        cfg = GenerationConfig.from_dict(r["config"][item.kind])
        try:
            o = lm.generate([prompt_ids[idx]], cfg.replace(return_trace=True), progress=False)
        except Exception as exc:  # noqa: BLE001 - a picture is not worth ending the run
            log(f"trajectory of {r['name']} failed: {type(exc).__name__}: {exc}")
            continue
        if o.trace is None:
            continue
        toks = o.sequences[0].tolist()
        stops = set(cfg.stop_token_ids or lm.ids.stop_ids)
        out.append({"name": r["name"], "label": r["label"], "family": item.family, "prompt": item.prompt,
                    "answer": item.answer, "text": o.texts[0] if o.texts else "", "tokens": toks,
                    "token_strs": [token_str(lm.tokenizer, t) for t in toks],
                    "commit_step": o.trace.commit_step[0].tolist(), "steps": int(o.steps),
                    "n_gen": generated_length(toks, stops)})
    return out


def token_str(tokenizer, token: int) -> str:
    """The text of one token; its vocabulary entry when the text alone is not readable (a partial UTF-8 byte)."""
    try:
        s = tokenizer.decode([token], skip_special_tokens=False)
        if not s or "\ufffd" in s:
            s = tokenizer.convert_ids_to_tokens(token) or s
    except Exception:  # noqa: BLE001 - a label is not worth failing for
        s = str(token)
    return s
