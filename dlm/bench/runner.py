"""Run a :class:`~dlm.bench.presets.Suite` on a model: every configuration at every shape, measured and scored.

Per shape (gen_length, block_length, batch size) the reference configuration (``llada-reference``) runs first;
every other configuration of the shape is compared with it: its outputs token by token, and each metric as a
ratio ``value / reference value`` measured in the same run, on the same examples, the same batches and the
same machine.

Measurement of one configuration:

1. Warm-up: ``warmup`` untimed passes over the first batch of each kind of example (synthetic tasks, code),
   ``warmup_rows`` rows of it (default a full batch).
2. ``repeats`` timed passes over all examples (batches of ``batch_size`` prompts sorted by prompt length, so
   padding is small), synchronising CUDA before and after each; the reported wall time is the median. The first
   timed pass follows the warm-up; the further repeats go round-robin over the configurations of the shape.
3. Outputs of the first timed pass are scored; later passes must give the same tokens (``deterministic``).

Metrics (``rows[i]["metrics"]``):

* ``accuracy``: exact match of the answer text (cut at the first stop token) with the task's answer, over the
  synthetic examples (``None`` when the suite has none). Per family in ``rows[i]["families"]``.
* ``nfe_per_token``: forward passes (``GenerationOutput.nfe``, summed over rows) per generated token. A row's
  generated tokens are its answer positions up to and including the first stop token (EOS or end of turn), or
  ``gen_length`` when it has none: the EOS padding after the answer is not counted as output. With
  ``verify="causal"`` NFE counts the diffusion drafter's forwards; the causal model's are in
  ``rows[i]["stats"]["causal_forwards"]``. With ``verify="stepwise"`` a forward evaluates several drafts at once
  (``stats["draft_rows"]`` counts them).
* ``tokens_per_s``: generated tokens (as above) of all examples / median wall time.
* ``wall_s``: median seconds of one pass over all examples (tokenisation excluded: prompts are encoded once).
* ``ms_per_step``: wall time / forward passes of the batches (``GenerationOutput.steps`` summed over batches).
* ``peak_mem_mb``: CUDA: ``torch.cuda.max_memory_allocated`` during the timed passes; CPU: the process's peak
  resident set (VmHWM, reset before the timed passes where Linux allows it; see ``peak_mem_kind``).
* ``token_agreement``: answer positions holding the reference's token, over positions up to the longer of the
  two answers' lengths (as counted above), summed over examples.
* ``exact_match_vs_reference``: fraction of examples whose answer (tokens up to and including the first stop
  token) equals the reference's.
* ``code_exact_vs_reference``, ``code_token_agreement``: the same two on code completion only: the code task's
  score, agreement with the one-token-per-step decode. ``code_parse_rate``: completions whose body parses
  (:func:`dlm.data.code.completion_parses`), for information.
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..errors import CheckpointError, ConfigError, RegistryError
from ..data import CODE, check_answer
from .breakdown import breakdown, measures
from .items import KINDS, Item, count_families, load_items
from .measure import PeakMemory, load_average, sync
from .methods import REFERENCE, Method
from .presets import Suite
from .scoring import Decoded, compute_ratios, generated_length, score
from .trajectory import trajectories

# errors that mean "this configuration does not apply to this model / machine": reported as skipped
NOT_APPLICABLE = (ConfigError, CheckpointError, RegistryError)


# ------------------------------------------------------------------------------------------------ the run
class Bench:
    """Runs a suite on a loaded model. ``run()`` returns the results mapping that :mod:`dlm.bench.report` writes.

    Args:
        lm: a :class:`~dlm.models.DiffusionLM` with a tokenizer.
        suite: what to run.
        items: the examples (default: :func:`load_items`).
        verifier: folder of the causal verifier for ``verify="causal"`` configurations that name none
            (default: the bundled dlm-tiny-ar when present; otherwise they are skipped).
        log: called with progress lines.
        clock: the timer (``time.perf_counter``).
    """

    def __init__(self, lm, suite: Suite, items: Sequence[Item] | None = None, verifier: str | None = None,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        if lm.tokenizer is None:
            raise ConfigError("dlm bench scores answer texts; load the model with its tokenizer")
        self.lm = lm
        self.suite = suite
        self.items = list(items) if items is not None else load_items(suite, lm.tokenizer)
        self.verifier = verifier
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.clock = clock
        self.device = lm.device
        ids = lm.encode([it.prompt for it in self.items])
        self.prompt_ids = ids
        # per kind: item indices in generation order (shortest prompt first: less padding per batch)
        self.order = {k: sorted((i for i, it in enumerate(self.items) if it.kind == k), key=lambda i: len(ids[i]))
                      for k in KINDS}
        self.order = {k: v for k, v in self.order.items() if v}
        self.measures = measures(self.items)  # answer length and dependency of every example

    # ----------------------------------------------------------------- one configuration
    def resolve(self, method: Method) -> tuple[Method | None, str | None]:
        """The method ready to run (a causal verifier filled in), or (None, why it is skipped)."""
        f = dict(method.fields)
        if f.get("verify") == "causal" and not (f.get("verify_kwargs") or {}).get("verifier"):
            path = self.verifier
            if path is None:
                from ..assets import default_verifier_path

                try:
                    path = str(default_verifier_path())
                except CheckpointError as exc:
                    return None, (f"no causal verifier model: {exc}. Pass --verifier PATH (a transformers causal "
                                  "LM sharing the model's tokenizer)")
            f["verify_kwargs"] = {**(f.get("verify_kwargs") or {}), "verifier": str(path)}
            method = Method(method.name, f, method.description, method.source)
        return method, None

    def configs(self, method: Method, gen_length: int, block_length: int | None):
        """GenerationConfig per kind of example."""
        lengths = {"task": gen_length, CODE: self.suite.code_gen_length}
        return {k: method.config(lengths[k], block_length, self.suite.seed) for k in self.order}

    def decode(self, outs: dict[str, Any], configs) -> list[Decoded | None]:
        decoded: list[Decoded | None] = [None] * len(self.items)
        for k, out in outs.items():
            stops = set(configs[k].stop_token_ids or self.lm.ids.stop_ids)
            seqs, nfe = out.sequences.tolist(), out.nfe.tolist()
            for j, i in enumerate(self.order[k]):
                n = generated_length(seqs[j], stops)
                decoded[i] = Decoded(seqs[j], out.texts[j], int(nfe[j]), n, any(t in stops for t in seqs[j]))
        return decoded

    def one_pass(self, configs, batch_size: int, limit: int | None = None) -> dict[str, Any]:
        outs = {}
        for k, idx in self.order.items():
            ids = [self.prompt_ids[i] for i in (idx[:limit] if limit else idx)]
            outs[k] = self.lm.generate(ids, configs[k], batch_size=batch_size, progress=False)
        return outs

    def start(self, method: Method, shape: tuple[int, int | None, int],
              group: str) -> tuple[dict[str, Any], "_Run | None"]:
        """A row for ``method`` at ``shape``: resolved, warmed up and timed once (``None`` run when skipped or
        failed; the row says why)."""
        gen_length, block_length, bs = shape
        row: dict[str, Any] = {
            "name": method.name, "group": group, "is_reference": method.name == REFERENCE, "method": method.to_dict(),
            "label": method.label(), "description": method.description,
            "shape": {"gen_length": gen_length, "code_gen_length": self.suite.code_gen_length if CODE in self.order
                      else None, "block_length": block_length, "batch_size": bs},
            "status": "ok", "note": "", "metrics": {}, "ratios": {},
        }
        resolved, why = self.resolve(method)
        if resolved is None:
            row.update(status="skipped", note=why)
            return row, None
        try:
            configs = self.configs(resolved, gen_length, block_length)
        except NOT_APPLICABLE as exc:
            row.update(status="skipped", note=f"{type(exc).__name__}: {exc}")
            return row, None
        row["config"] = {k: c.to_dict() for k, c in configs.items()}
        run = _Run(row, configs, bs, PeakMemory(self.device), {k: [] for k in self.order})
        rows = self.suite.warmup_rows or bs

        def warm_and_time():
            torch.manual_seed(self.suite.seed)
            for _ in range(self.suite.warmup):
                self.one_pass(configs, min(bs, rows), limit=min(bs, rows))
            self.timed_pass(run)

        return row, (run if self._guard(run, warm_and_time) else None)

    def _guard(self, run: "_Run", fn: Callable[[], None]) -> bool:
        """Run ``fn``; on failure mark the row skipped (not applicable) or failed and return False."""
        try:
            fn()
            return True
        except NOT_APPLICABLE as exc:
            run.row.update(status="skipped", note=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one broken configuration must not end a long run
            if run.row["is_reference"]:
                raise
            run.row.update(status="error", note=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        return False

    def timed_pass(self, run: "_Run") -> None:
        """One timed pass over every example (CUDA synchronised around each kind)."""
        torch.manual_seed(self.suite.seed)
        sync(self.device)
        run.peak.reset()
        outs, total = {}, 0.0
        for k in self.order:
            sync(self.device)
            t0 = self.clock()
            outs[k] = self.lm.generate([self.prompt_ids[i] for i in self.order[k]], run.configs[k],
                                       batch_size=run.batch_size, progress=False)
            sync(self.device)
            dt = self.clock() - t0
            run.kind_walls[k].append(dt)
            total += dt
        run.walls.append(total)
        peak = run.peak.peak_mb()
        if peak is not None:
            run.peak_mb = peak if run.peak_mb is None else max(run.peak_mb, peak)
        if run.first is None:
            run.first = outs
        else:
            run.deterministic &= all(torch.equal(run.first[k].sequences, outs[k].sequences) for k in outs)

    def finish(self, run: "_Run", ref: list[Decoded] | None) -> list[Decoded]:
        """Score the first pass's outputs (against ``ref``; the reference row against itself) and fill the row."""
        row, first = run.row, run.first
        decoded = self.decode(first, run.configs)
        scored = score(self.items, decoded, decoded if row["is_reference"] else ref)
        n_gen = sum(d.n_gen for d in decoded)
        nfe = sum(d.nfe for d in decoded)
        steps = sum(first[k].steps for k in first)
        wall = statistics.median(run.walls)
        stats: dict[str, float] = {}
        for out in first.values():
            for key, v in out.stats.items():
                stats[key] = stats.get(key, 0.0) + float(v)
        row["metrics"] = {
            "accuracy": scored["accuracy"],
            "nfe_per_token": nfe / n_gen if n_gen else None,
            "tokens_per_s": n_gen / wall if wall > 0 else None,
            "wall_s": wall,
            "ms_per_step": 1e3 * wall / steps if steps else None,
            "peak_mem_mb": run.peak_mb,
            "token_agreement": scored["token_agreement"],
            "exact_match_vs_reference": scored["exact_match_vs_reference"],
            "code_exact_vs_reference": scored["code_exact_vs_reference"],
            "code_token_agreement": scored["code_token_agreement"],
            "code_parse_rate": scored["code_parse_rate"],
        }
        row["families"] = scored["families"]
        row["breakdown"] = breakdown(self.items, decoded, decoded if row["is_reference"] else ref, self.measures)
        row["counts"] = {"examples": len(decoded), "generated_tokens": n_gen, "nfe": nfe, "steps": steps}
        row["timings"] = {"wall_s_repeats": list(run.walls),
                          **{f"{k}_wall_s": statistics.median(v) for k, v in run.kind_walls.items()}}
        row["peak_mem_kind"] = run.peak.kind
        row["deterministic"] = run.deterministic
        row["stats"] = stats
        row["samples"] = self.samples(decoded)
        return decoded

    def samples(self, decoded: Sequence[Decoded], per_family: int = 2) -> list[dict[str, Any]]:
        out, seen = [], {}
        for it, d in zip(self.items, decoded):
            if seen.get(it.family, 0) >= per_family:
                continue
            seen[it.family] = seen.get(it.family, 0) + 1
            rec = {"family": it.family, "prompt": it.prompt, "prediction": d.text}
            if it.answer is not None:
                rec.update(answer=it.answer, correct=check_answer(it.family, it.prompt, d.text, it.answer))
            else:
                rec["name"] = it.name
            out.append(rec)
        return out

    # ----------------------------------------------------------------- the whole suite
    def run(self) -> dict[str, Any]:
        """Every method at every shape. Within a shape the reference runs first; the timed repeats after the first
        go round-robin over the configurations, so a slow drift of the machine (other load, clocks, heat) spreads
        over all of them instead of favouring whichever ran in a quiet moment."""
        rows: list[dict[str, Any]] = []
        load_start = load_average()
        methods = self.suite.with_reference()
        shapes = self.suite.shapes
        total = len(methods) * len(shapes)
        k = 0
        t_start = time.perf_counter()
        for shape in shapes:
            group = group_name(shape)
            runs: list[tuple[dict[str, Any], _Run | None]] = []
            for method in methods:
                k += 1
                row, run = self.start(method, shape, group)
                if row["is_reference"] and run is None:
                    raise ConfigError(f"the reference configuration {REFERENCE!r} cannot run at {group}: "
                                      f"{row['note']}")
                runs.append((row, run))
                first = f"first pass {run.walls[0]:.2f} s" if run is not None else f"{row['status']}: {row['note']}"
                self.log(f"[{k}/{total}] {group} {method.name}: {first}")
            for _ in range(1, self.suite.repeats):
                for i, (row, run) in enumerate(runs):
                    if run is not None and not self._guard(run, lambda: self.timed_pass(run)):
                        runs[i] = (row, None)
            ref = self.finish(runs[0][1], None)
            for row, run in runs[1:]:
                if run is not None:
                    self.finish(run, ref)
            group_rows = [row for row, _ in runs]
            compute_ratios(group_rows)
            for row in group_rows:
                self.log(f"  {progress_line(row)}")
            rows += group_rows
        compute_ratios(rows)
        pictures = trajectories(self.lm, self.items, self.prompt_ids, rows, self.log)
        return {"suite": self.suite.to_dict(), "rows": rows, "trajectories": pictures,
                "examples": {"n": len(self.items), "per_family": count_families(self.items),
                             "code_functions": [it.name for it in self.items if it.kind == CODE]},
                "seconds": time.perf_counter() - t_start,
                "load_average": {"start": load_start, "end": load_average()}}


@dataclass
class _Run:
    """The measurement of one row in progress."""

    row: dict[str, Any]
    configs: dict[str, Any]
    batch_size: int
    peak: PeakMemory
    kind_walls: dict[str, list[float]]
    walls: list[float] = field(default_factory=list)
    first: dict[str, Any] | None = None
    deterministic: bool = True
    peak_mb: float | None = None


def group_name(shape: tuple[int, int | None, int]) -> str:
    g, b, bs = shape
    return f"gen{g}-block{b if b is not None else 'auto'}-batch{bs}"


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def progress_line(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['name']}: {row['status'].upper()} ({row['note']})"
    m, r = row["metrics"], row["ratios"]
    return (f"{row['name']}: accuracy {_fmt(m['accuracy'])}, NFE/token {_fmt(m['nfe_per_token'])}, "
            f"{_fmt(m['tokens_per_s'], '.1f')} tokens/s (x{_fmt(r.get('tokens_per_s'), '.2f')}), "
            f"wall {_fmt(m['wall_s'], '.2f')} s, exact vs reference {_fmt(m['exact_match_vs_reference'])}")
