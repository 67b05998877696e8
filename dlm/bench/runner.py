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
  (:func:`dlm.bench.tasks.completion_parses`), for information.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..errors import CheckpointError, ConfigError, RegistryError
from .presets import CODE, REFERENCE, Method, Suite
from .tasks import completion_parses, exact_match, get_task

#: metrics that get a ratio against the reference row of their group
RATIO_METRICS = ("accuracy", "nfe_per_token", "tokens_per_s", "wall_s", "ms_per_step", "peak_mem_mb",
                 "token_agreement", "exact_match_vs_reference", "code_exact_vs_reference", "code_token_agreement",
                 "code_parse_rate")
# errors that mean "this configuration does not apply to this model / machine": reported as skipped
NOT_APPLICABLE = (ConfigError, CheckpointError, RegistryError)
KINDS = ("task", CODE)


@dataclass(frozen=True)
class Item:
    """One example: its ``family`` (a synthetic family or ``"code"``), ``prompt`` text and exact ``answer``
    (``None`` for code, which is scored against the reference decode); ``name`` identifies code functions."""

    family: str
    prompt: str
    answer: str | None
    name: str = ""

    @property
    def kind(self) -> str:
        return CODE if self.family == CODE else "task"


def load_items(suite: Suite, tokenizer=None) -> list[Item]:
    """The suite's examples: ``n`` test-split examples per synthetic family, then ``code_n`` held-out functions
    whose prompt fits ``code_prompt_tokens`` and reference body fits ``code_gen_length - 1`` tokens."""
    items: list[Item] = []
    for fam in suite.tasks:
        if fam == CODE or suite.n == 0:
            continue
        items += [Item(e.family, e.prompt, e.answer) for e in get_task(fam).generate("test", suite.n, suite.seed)]
    if CODE in suite.tasks and suite.code_n > 0:
        from .tasks import stdlib_code_completion

        count = None
        if tokenizer is not None:
            count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        code = stdlib_code_completion("heldout", n=suite.code_n, seed=suite.seed, count_tokens=count,
                                      max_prompt_tokens=suite.code_prompt_tokens,
                                      max_body_tokens=suite.code_gen_length - 1)
        items += [Item(CODE, c.prompt, None, f"{c.path}:{c.name}") for c in code]
    if not items:
        raise ConfigError("the suite selects no examples; raise n / code_n or name more tasks")
    return items


# ------------------------------------------------------------------------------------------------ measurement
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a stretch of work: CUDA max allocated, or the CPU process's peak RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_peak"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # Linux >= 4.0: "5" resets the peak resident set size (VmHWM) of the process
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.kind = "cpu_rss_peak"
        except OSError:
            self.kind = "cpu_rss_peak_since_start"

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.kind = "cpu_rss_peak_since_start"
            return rss / 2**20 if sys.platform == "darwin" else rss / 1024
        except (ImportError, OSError):
            return None


def generated_length(row: Sequence[int], stop_ids: set[int]) -> int:
    """Generated tokens of one answer: up to and including its first stop token, else all of it."""
    return next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))


@dataclass
class Decoded:
    """One example's output: answer ``tokens`` (gen_length), ``text``, ``nfe``, generated length ``n_gen``,
    and whether a stop token ended it (``finished``)."""

    tokens: list[int]
    text: str
    nfe: int
    n_gen: int
    finished: bool


def agreement(a: Decoded, ref: Decoded) -> tuple[int, int, bool]:
    """(matching positions, compared positions, exact) of an answer against the reference's."""
    n = max(a.n_gen, ref.n_gen)
    same = sum(x == y for x, y in zip(a.tokens[:n], ref.tokens[:n]))
    exact = a.n_gen == ref.n_gen and a.tokens[: a.n_gen] == ref.tokens[: ref.n_gen]
    return same, n, exact


def _ratio(value: Any, ref: Any) -> float | None:
    if value is None or ref is None:
        return None
    try:
        if ref == 0:
            return 1.0 if value == 0 else None
        return float(value) / float(ref)
    except (TypeError, ValueError):
        return None


def compute_ratios(rows: list[dict[str, Any]]) -> None:
    """Set ``row["ratios"]`` of every measured row to its metrics over those of the reference row of the same
    group (``row["group"]``); the reference row's ratios are 1.0 (``None`` where a value is missing or the
    reference's is 0 and the row's is not). Rows of a group without a measured reference get no ratios."""
    refs = {r["group"]: r for r in rows if r.get("is_reference") and r.get("status") == "ok"}
    for r in rows:
        ref = refs.get(r["group"])
        if r.get("status") != "ok" or ref is None:
            r["ratios"] = {}
            continue
        r["ratios"] = {k: _ratio(r["metrics"].get(k), ref["metrics"].get(k)) for k in RATIO_METRICS}
        r["reference"] = ref["name"]


def score(items: Sequence[Item], decoded: Sequence[Decoded], ref: Sequence[Decoded] | None) -> dict[str, Any]:
    """Accuracy, agreement with ``ref`` and code parse rate, overall and per family."""
    fams: dict[str, dict[str, Any]] = {}
    tot = {"correct": 0, "n_task": 0, "same": 0, "compared": 0, "exact": 0, "n": 0}
    code = {"same": 0, "compared": 0, "exact": 0, "n": 0, "parses": 0}
    for i, (it, d) in enumerate(zip(items, decoded)):
        f = fams.setdefault(it.family, {"n": 0, "correct": 0 if it.answer is not None else None,
                                        "same": 0, "compared": 0, "exact": 0})
        f["n"] += 1
        if it.answer is not None:
            ok = exact_match(d.text, it.answer)
            f["correct"] += ok
            tot["correct"] += ok
            tot["n_task"] += 1
        if ref is not None:
            same, n, exact = agreement(d, ref[i])
            for acc in (f, tot) + ((code,) if it.kind == CODE else ()):
                acc["same"] += same
                acc["compared"] += n
                acc["exact"] += exact
        tot["n"] += 1
        if it.kind == CODE:
            code["n"] += 1
            code["parses"] += completion_parses(it.prompt, d.text, d.finished)
    per_family = {}
    for name, f in fams.items():
        per_family[name] = {
            "n": f["n"], "correct": f["correct"],
            "accuracy": None if f["correct"] is None else f["correct"] / f["n"],
            "token_agreement": f["same"] / f["compared"] if ref is not None and f["compared"] else None,
            "exact_match_vs_reference": f["exact"] / f["n"] if ref is not None else None,
        }
    if code["n"]:
        per_family[CODE]["parse_rate"] = code["parses"] / code["n"]
    return {
        "accuracy": tot["correct"] / tot["n_task"] if tot["n_task"] else None,
        "token_agreement": tot["same"] / tot["compared"] if ref is not None and tot["compared"] else None,
        "exact_match_vs_reference": tot["exact"] / tot["n"] if ref is not None else None,
        "code_exact_vs_reference": code["exact"] / code["n"] if ref is not None and code["n"] else None,
        "code_token_agreement": code["same"] / code["compared"] if ref is not None and code["compared"] else None,
        "code_parse_rate": code["parses"] / code["n"] if code["n"] else None,
        "families": per_family,
    }


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
        _sync(self.device)
        run.peak.reset()
        outs, total = {}, 0.0
        for k in self.order:
            _sync(self.device)
            t0 = self.clock()
            outs[k] = self.lm.generate([self.prompt_ids[i] for i in self.order[k]], run.configs[k],
                                       batch_size=run.batch_size, progress=False)
            _sync(self.device)
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
                rec.update(answer=it.answer, correct=exact_match(d.text, it.answer))
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
        load_start = _load_average()
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
        trajectories = self.trajectories(rows)
        return {"suite": self.suite.to_dict(), "rows": rows, "trajectories": trajectories,
                "examples": {"n": len(self.items), "per_family": _count_families(self.items),
                             "code_functions": [it.name for it in self.items if it.kind == CODE]},
                "seconds": time.perf_counter() - t_start,
                "load_average": {"start": load_start, "end": _load_average()}}

    def trajectories(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Commit steps of one example under the reference and one fast configuration (of the first group):
        ``best`` when it ran, else the fastest measured configuration."""
        first_group = rows[0]["group"]
        ok = [r for r in rows if r["group"] == first_group and r["status"] == "ok" and not r["is_reference"]]
        if not ok:
            return []
        fast = next((r for r in ok if r["name"] == "best"), None) or max(
            ok, key=lambda r: r["metrics"].get("tokens_per_s") or 0.0)
        idx = self.trajectory_item()
        kind = self.items[idx].kind
        out = []
        for r in (rows[0], fast):
            cfg = _config_from_row(r, kind)
            try:
                o = self.lm.generate([self.prompt_ids[idx]], cfg.replace(return_trace=True), progress=False)
            except Exception as exc:  # noqa: BLE001 - a picture is not worth ending the run
                self.log(f"trajectory of {r['name']} failed: {type(exc).__name__}: {exc}")
                continue
            if o.trace is None:
                continue
            toks = o.sequences[0].tolist()
            stops = set(cfg.stop_token_ids or self.lm.ids.stop_ids)
            out.append({"name": r["name"], "label": r["label"], "family": self.items[idx].family,
                        "prompt": self.items[idx].prompt, "answer": self.items[idx].answer,
                        "text": o.texts[0] if o.texts else "", "tokens": toks,
                        "token_strs": [_token_str(self.lm.tokenizer, t) for t in toks],
                        "commit_step": o.trace.commit_step[0].tolist(), "steps": int(o.steps),
                        "n_gen": generated_length(toks, stops)})
        return out

    def trajectory_item(self) -> int:
        """The example drawn in the trajectory picture: the first of a family whose answer tokens depend on each
        other (add, then sort, cumsum), else the first example."""
        for fam in ("add", "sort", "cumsum"):
            for i, it in enumerate(self.items):
                if it.family == fam:
                    return i
        return 0


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


def _load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages (other jobs competing for the CPU), where the OS tells."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _config_from_row(row: dict[str, Any], kind: str):
    from ..config import GenerationConfig

    return GenerationConfig.from_dict(row["config"][kind])


def _token_str(tokenizer, token: int) -> str:
    """The text of one token; its vocabulary entry when the text alone is not readable (a partial UTF-8 byte)."""
    try:
        s = tokenizer.decode([token], skip_special_tokens=False)
        if not s or "\ufffd" in s:
            s = tokenizer.convert_ids_to_tokens(token) or s
    except Exception:  # noqa: BLE001 - a label is not worth failing for
        s = str(token)
    return s


def _count_families(items: Sequence[Item]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it.family] = out.get(it.family, 0) + 1
    return out


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


__all__ = ["Bench", "Decoded", "Item", "PeakMemory", "RATIO_METRICS", "agreement", "compute_ratios",
           "generated_length", "group_name", "load_items", "score"]
