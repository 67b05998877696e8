"""Evaluation of the shipped models on the held-out tasks.

* dlm-tiny decodes with dlm's engine, one token per step with LLaDA's ``low_confidence`` remasking
  (``GenerationConfig(gen_length=G, steps=G, scheduler="low_confidence")``, greedy, default blocks), the
  reference decode of the project.
* dlm-tiny-ar decodes greedily with transformers' ``model.generate(do_sample=False)`` (left-padded batches).

Synthetic tasks are scored by exact match after stripping (:func:`dlm.data.check_answer`; ``pick``, which has
several right answers, by its own check). Code completion
is scored by :func:`dlm.data.code.completion_parses`: the completion, cut at the first end-of-text token, is
taken up to the first non-indented line; if neither ended it (the generation ran out of positions) its last line
is dropped when it has no newline; the header + body must parse with :mod:`ast` as one function with at least one
statement besides the docstring.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import CodeExample, Example, check_answer, completion_parses

N_SAMPLES = 3  # examples of predictions kept in the report, per family


def _by_length(items: Sequence[Any], key) -> list[int]:
    """Indices sorted by prompt length (less padding per batch); results are put back in the original order."""
    return sorted(range(len(items)), key=lambda i: len(key(items[i])))


def in_batches(prompts: Sequence[str], batch_size: int, run) -> tuple[list[str], list[bool]]:
    """``run(prompts) -> (texts, finished)`` over batches of prompts of similar lengths; results in the order of
    ``prompts``."""
    order = _by_length(prompts, lambda p: p)
    texts: list[str] = [""] * len(prompts)
    finished: list[bool] = [False] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        got_texts, got_finished = run([prompts[i] for i in idx])
        for j, i in enumerate(idx):
            texts[i], finished[i] = got_texts[j], bool(got_finished[j])
    return texts, finished


def generate_diffusion(lm, prompts: Sequence[str], gen_length: int, batch_size: int) -> tuple[list[str], list[bool]]:
    """Texts (cut at the first stop token) and whether a stop token ended each, one token per step."""
    from ..config import GenerationConfig

    config = GenerationConfig(gen_length=gen_length, steps=gen_length, scheduler="low_confidence")
    stops = torch.tensor(lm.ids.stop_ids)

    def run(batch: list[str]) -> tuple[list[str], list[bool]]:
        out = lm.generate(batch, config)
        return out.texts, torch.isin(out.sequences, stops).any(1).tolist()

    return in_batches(prompts, batch_size, run)


@torch.no_grad()
def generate_causal(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int
                    ) -> tuple[list[str], list[bool]]:
    """Greedy continuations (cut at the first EOS) of a transformers causal LM and whether EOS ended each."""
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = _by_length(prompts, lambda p: p)
    texts: list[str] = [""] * len(prompts)
    finished: list[bool] = [False] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=eos)
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            for j, i in enumerate(idx):
                row = new[j]
                cut = row.index(eos) if eos in row else len(row)
                texts[i] = tokenizer.decode(row[:cut], skip_special_tokens=True)
                finished[i] = cut < len(row)
    finally:
        tokenizer.padding_side = side
    return texts, finished


def score_tasks(examples: Sequence[Example], texts: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for ex, text in zip(examples, texts):
        r = out.setdefault(ex.family, {"n": 0, "correct": 0, "samples": []})
        ok = check_answer(ex.family, ex.prompt, text, ex.answer)  # exact match, or pick's several right answers
        r["n"] += 1
        r["correct"] += int(ok)
        if len(r["samples"]) < N_SAMPLES:
            r["samples"].append({"prompt": ex.prompt, "answer": ex.answer, "prediction": text, "correct": ok})
    for r in out.values():
        r["accuracy"] = r["correct"] / r["n"]
    return out


def score_code(examples: Sequence[CodeExample], texts: Sequence[str], finished: Sequence[bool]) -> dict[str, Any]:
    ok = [completion_parses(ex.prompt, t, f) for ex, t, f in zip(examples, texts, finished)]
    samples = [{"name": f"{ex.path}:{ex.name}", "prompt": ex.prompt, "completion": t, "parses": o}
               for ex, t, o in list(zip(examples, texts, ok))[:N_SAMPLES]]
    n = len(examples)
    return {"n": n, "parsed": sum(ok), "parse_rate": sum(ok) / n if n else 0.0,
            "ended": sum(bool(f) for f in finished), "samples": samples}


def evaluate(generate_fn, examples: Sequence[Example], code: Sequence[CodeExample], gen_length: int,
             code_gen_length: int, name: str, decode: str) -> dict[str, Any]:
    """Run ``generate_fn(prompts, gen_length) -> (texts, finished)`` on the tasks and the code prompts."""
    t0 = time.perf_counter()
    result: dict[str, Any] = {"model": name, "decode": decode, "gen_length": gen_length,
                              "code_gen_length": code_gen_length}
    if examples:
        texts, _ = generate_fn([e.prompt for e in examples], gen_length)
        result["tasks"] = score_tasks(examples, texts)
    t1 = time.perf_counter()
    if code:
        texts, finished = generate_fn([c.prompt for c in code], code_gen_length)
        result["code"] = score_code(code, texts, finished)
    t2 = time.perf_counter()
    result["seconds"] = {"tasks": round(t1 - t0, 2), "code": round(t2 - t1, 2)}
    return result


def evaluate_diffusion(lm, examples: Sequence[Example], code: Sequence[CodeExample], gen_length: int = 32,
                       code_gen_length: int = 64, batch_size: int = 256, name: str = "dlm-tiny") -> dict[str, Any]:
    """Accuracy of a :class:`dlm.DiffusionLM` decoded one token per step (low_confidence, greedy)."""
    return evaluate(lambda prompts, g: generate_diffusion(lm, prompts, g, batch_size), examples, code, gen_length,
                    code_gen_length, name, "dlm engine, low_confidence, steps = gen_length (one token per step)")


def evaluate_causal(model, tokenizer, examples: Sequence[Example], code: Sequence[CodeExample], gen_length: int = 32,
                    code_gen_length: int = 64, batch_size: int = 256, name: str = "dlm-tiny-ar") -> dict[str, Any]:
    """Accuracy of a transformers causal LM decoded greedily (``generate(do_sample=False)``)."""
    model.eval()
    return evaluate(lambda prompts, g: generate_causal(model, tokenizer, prompts, g, batch_size), examples, code,
                    gen_length, code_gen_length, name, "transformers generate, greedy (do_sample=False)")


def load_causal(path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
    """dlm-tiny-ar and its tokenizer via ``AutoModelForCausalLM`` / ``AutoTokenizer`` (no remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=False).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    return model.eval(), tokenizer


def families_of(results: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results.values():
        for f in r.get("tasks", {}):
            seen.setdefault(f, None)
    return list(seen)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per task family (+ code), one column per model."""
    names = list(results)
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for fam in families_of(results):
        cells = []
        for n in names:
            r = results[n].get("tasks", {}).get(fam)
            cells.append(f"{100 * r['accuracy']:.1f}% ({r['correct']}/{r['n']})" if r else "-")
        lines.append(f"| {fam} (exact match) | " + " | ".join(cells) + " |")
    if any("code" in r for r in results.values()):
        cells = []
        for n in names:
            c = results[n].get("code")
            cells.append(f"{100 * c['parse_rate']:.1f}% ({c['parsed']}/{c['n']})" if c else "-")
        lines.append("| code completion (body parses) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: dict[str, dict[str, Any]], folder: str | Path) -> tuple[Path, Path]:
    """``eval.json`` and ``eval.md`` (the table) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    j = folder / "eval.json"
    j.write_text(json.dumps(results, indent=1))
    m = folder / "eval.md"
    m.write_text(format_table(results) + "\n")
    return j, m
