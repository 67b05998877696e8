"""dlm bench on a tiny random LLaDA checkpoint: report structure, ratio arithmetic, presets, grid files, CLI.

The model is random, so accuracies are meaningless; what is checked is that the pipeline runs, that every ratio
is taken against the reference row of the same run and group, and that configurations which cannot run are
reported as skipped. Nothing here asserts a wall-clock time.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from dlm.bench import cli as bench_cli
from dlm.bench import presets
from dlm.bench.presets import BEST, NAMED, REFERENCE, Method, Suite
from dlm.bench.report import environment, markdown, model_info, write_report
from dlm.bench.runner import RATIO_METRICS, Bench, Decoded, Item, agreement, compute_ratios, generated_length
from dlm.bench.tasks import get_task
from dlm.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_items() -> list[Item]:
    items = [Item(e.family, e.prompt, e.answer) for fam in ("copy", "add") for e in get_task(fam).generate("test", 2)]
    items.append(Item("code", "def double(x):\n", None, "handmade:double"))  # no stdlib scan in the fast test
    return items


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a machine shared with other jobs, spinning OpenMP threads on busy cores make a tiny
    model's steps up to 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(llada, tmp_path_factory):
    """One miniature run: reference + fast-dllm + best measured; learn2pd, lossless-causal and a broken
    configuration skipped (learn2pd may run once its scheduler is registered)."""
    broken = Method("broken", {"scheduler": "no_such_scheduler"}, source="grid")
    methods = (NAMED["fast-dllm"], NAMED["best"], NAMED["learn2pd"], NAMED["lossless-causal"], broken)
    suite = Suite(tasks=("copy", "add", "code"), n=2, code_n=1, gen_length=(8,), code_gen_length=8,
                  block_length=(8,), batch_size=(2,), repeats=2, warmup=1, methods=methods)
    logs: list[str] = []
    bench = Bench(llada, suite, items=tiny_items(), verifier=None, log=logs.append)
    results = bench.run()
    results = {"environment": environment(llada.device, "dlm bench --test"), "model": model_info(llada), **results}
    out = tmp_path_factory.mktemp("bench")
    files = write_report(results, out)
    return results, out, files, logs


def test_report_files_and_json_structure(run):
    results, out, files, logs = run
    data = json.loads((out / "results.json").read_text())
    assert {"environment", "model", "suite", "rows", "trajectories", "files", "examples"} <= set(data)
    env = data["environment"]
    assert {"date", "command", "torch", "dlm", "python", "device", "cpu", "platform"} <= set(env)
    assert env["command"] == "dlm bench --test"
    assert data["examples"]["per_family"] == {"copy": 2, "add": 2, "code": 1}
    for key in ("accuracy_vs_nfe", "tokens_per_s", "trajectory", "json", "markdown"):
        assert (out / data["files"][key]).is_file()
    for name in ("accuracy_vs_nfe.png", "tokens_per_s.png", "trajectory.png"):
        raw = (out / name).read_bytes()
        assert raw[:8] == PNG_MAGIC
        import matplotlib.image

        img = matplotlib.image.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert len(logs) == 2 * len(data["rows"])  # a line after the first pass, one with the results


def test_rows_metrics_and_reference_first(run):
    results, *_ = run
    rows = results["rows"]
    assert rows[0]["name"] == REFERENCE and rows[0]["is_reference"]
    status = {r["name"]: r["status"] for r in rows}
    assert status[REFERENCE] == status["fast-dllm"] == status["best"] == "ok"
    assert status["broken"] == "skipped"
    assert status["lossless-causal"] == "skipped"  # no verifier sharing the tiny tokenizer
    assert status["learn2pd"] in ("ok", "skipped")
    for r in rows:
        if r["status"] != "ok":
            assert r["note"] and r["metrics"] == {} and r["ratios"] == {}
            continue
        assert set(RATIO_METRICS) <= set(r["metrics"])
        c = r["counts"]
        # generated tokens: at least one per example, at most gen_length (8) each
        assert c["examples"] <= c["generated_tokens"] <= 8 * c["examples"]
        assert math.isclose(r["metrics"]["nfe_per_token"], c["nfe"] / c["generated_tokens"])
        assert math.isclose(r["metrics"]["tokens_per_s"], c["generated_tokens"] / r["metrics"]["wall_s"])
        assert len(r["timings"]["wall_s_repeats"]) == 2
        assert r["deterministic"] is True
        assert set(r["families"]) == {"copy", "add", "code"}
        assert r["families"]["code"]["accuracy"] is None and r["families"]["copy"]["accuracy"] is not None
    assert "no_such_scheduler" in next(r for r in rows if r["name"] == "broken")["note"]
    ref = rows[0]["metrics"]
    assert ref["token_agreement"] == ref["exact_match_vs_reference"] == ref["code_exact_vs_reference"] == 1.0


def test_every_ratio_is_against_the_reference_of_the_same_run(run):
    results, *_ = run
    rows = [r for r in results["rows"] if r["status"] == "ok"]
    ref = rows[0]
    for key in RATIO_METRICS:
        if ref["metrics"][key] is not None:
            assert ref["ratios"][key] == 1.0
    for r in rows:
        assert r["reference"] == REFERENCE
        for key in RATIO_METRICS:
            v, rv = r["metrics"][key], ref["metrics"][key]
            if v is None or rv is None or rv == 0:
                continue
            assert math.isclose(r["ratios"][key], v / rv, rel_tol=1e-12)


def test_markdown_table(run):
    results, out, *_ = run
    md = (out / "results.md").read_text()
    assert md == markdown(results)
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| configuration | method |"))
    table = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        table.append(line)
    ok = [r["name"] for r in results["rows"] if r["status"] == "ok"]
    assert [line.split("|")[1].strip() for line in table] == ok
    ncols = lines[header].count("|")
    assert all(line.count("|") == ncols for line in table)
    assert "(1.00x)" in table[0]
    assert "## Skipped and failed configurations" in md
    assert "`broken` (skipped)" in md and "`lossless-causal` (skipped)" in md
    assert "## Accuracy per task family" in md


def test_trajectory_holds_reference_and_fast_config(run):
    results, *_ = run
    trajs = results["trajectories"]
    assert [t["name"] for t in trajs] == [REFERENCE, "best"]
    for t in trajs:
        assert len(t["commit_step"]) == len(t["tokens"]) == len(t["token_strs"]) == 8
        assert max(t["commit_step"]) < t["steps"] or t["steps"] == 0
    assert trajs[0]["family"] == "add"  # a family whose answer tokens depend on each other


# ------------------------------------------------------------------------------------------------ arithmetic
def _row(name, group, is_ref, **metrics):
    m = {k: None for k in RATIO_METRICS}
    m.update(metrics)
    return {"name": name, "group": group, "is_reference": is_ref, "status": "ok", "metrics": m}


def test_compute_ratios_injected_values():
    rows = [
        _row(REFERENCE, "g1", True, wall_s=2.0, nfe_per_token=1.0, tokens_per_s=100.0, accuracy=0.5, peak_mem_mb=0.0),
        _row("fast", "g1", False, wall_s=0.5, nfe_per_token=0.25, tokens_per_s=400.0, accuracy=0.25, peak_mem_mb=3.0),
        _row(REFERENCE, "g2", True, wall_s=10.0, nfe_per_token=2.0, tokens_per_s=50.0, accuracy=0.0),
        _row("fast", "g2", False, wall_s=1.0, nfe_per_token=0.5, tokens_per_s=500.0, accuracy=0.0),
        {"name": "skipped", "group": "g1", "is_reference": False, "status": "skipped", "metrics": {}},
    ]
    compute_ratios(rows)
    assert rows[0]["ratios"]["wall_s"] == 1.0 and rows[0]["ratios"]["tokens_per_s"] == 1.0
    assert rows[1]["ratios"]["wall_s"] == 0.25
    assert rows[1]["ratios"]["nfe_per_token"] == 0.25
    assert rows[1]["ratios"]["tokens_per_s"] == 4.0
    assert rows[1]["ratios"]["accuracy"] == 0.5
    assert rows[1]["ratios"]["peak_mem_mb"] is None  # reference 0, row not: no finite ratio
    assert rows[1]["ratios"]["token_agreement"] is None  # missing values
    # the second group's rows are measured against the second group's reference only
    assert rows[3]["ratios"]["wall_s"] == 0.1 and rows[3]["ratios"]["tokens_per_s"] == 10.0
    assert rows[3]["ratios"]["accuracy"] == 1.0  # 0 / 0: equal
    assert rows[4]["ratios"] == {}


def test_generated_length_and_agreement():
    stops = {9}
    assert generated_length([1, 2, 9, 9], stops) == 3
    assert generated_length([1, 2, 3, 4], stops) == 4
    ref = Decoded([1, 2, 9, 9], "", 3, 3, True)
    same = Decoded([1, 2, 9, 9], "", 2, 3, True)
    longer = Decoded([1, 5, 3, 9], "", 2, 4, True)
    assert agreement(same, ref) == (3, 3, True)
    assert agreement(longer, ref) == (2, 4, False)  # compared up to the longer answer


# ------------------------------------------------------------------------------------------------ presets
def test_named_presets_resolve():
    assert set(NAMED) == {REFERENCE, "fast-dllm", "dkv", "prophet", "learn2pd", "lossless-stepwise",
                          "lossless-causal", "best"}
    assert dict(presets.named("best").fields) == BEST
    cfg = NAMED[REFERENCE].config(32, 32, 0)
    assert (cfg.scheduler, cfg.cache, cfg.effective_steps, cfg.verify) == ("low_confidence", "none", 32, None)
    cfg = NAMED["fast-dllm"].config(64, 32, 0)
    assert (cfg.scheduler, dict(cfg.scheduler_kwargs), cfg.cache) == ("threshold", {"threshold": 0.9}, "dual")
    assert NAMED["dkv"].config(32, 32, 0).cache == "delayed"
    assert NAMED["prophet"].config(32, 32, 0).scheduler == "early_commit"
    assert NAMED["lossless-stepwise"].fields["verify"] == "stepwise"
    assert NAMED["lossless-causal"].fields["verify"] == "causal"
    with pytest.raises(ConfigError, match="known: llada-reference"):
        presets.named("nope")


def test_method_fields_are_validated():
    with pytest.raises(ConfigError, match="gen_length"):
        Method("m", {"gen_length": 32})
    with pytest.raises(ConfigError, match="unknown field"):
        Method("m", {"schedular": "threshold"})
    m = Method("m", {"scheduler": "low_confidence", "tokens_per_step": 4})
    assert m.config(64, 32, 0).effective_steps == 16
    with pytest.raises(ConfigError, match="tokens_per_step"):
        m.config(30, None, 0)


def test_reference_always_first():
    s = Suite(methods=(NAMED["best"],))
    assert [m.name for m in s.with_reference()] == [REFERENCE, "best"]
    s = Suite(methods=(NAMED["best"], NAMED[REFERENCE]))
    assert [m.name for m in s.with_reference()] == [REFERENCE, "best"]
    assert set(presets.SUITES) == {"quick", "full"}
    assert {m.name for m in presets.SUITES["quick"].methods} == set(NAMED)


def test_component_specs():
    pc = presets.parse_component
    assert pc("threshold", "s") == ("threshold", {}, {})
    assert pc("threshold:threshold=0.8", "s") == ("threshold", {"threshold": 0.8}, {})
    assert pc('early_commit:{"inner": "threshold", "inner_kwargs": {"threshold": 0.9}}', "s") == (
        "early_commit", {"inner": "threshold", "inner_kwargs": {"threshold": 0.9}}, {})
    assert pc({"name": "low_confidence", "tokens_per_step": 2}, "s") == ("low_confidence", {}, {"tokens_per_step": 2})
    assert pc(None, "v") == (None, {}, {})
    with pytest.raises(ConfigError):
        pc("threshold:threshold", "s")


# ------------------------------------------------------------------------------------------------ grid files / CLI
GRID = {
    "tasks": ["copy", "code"], "n": 3, "code_n": 2, "gen_length": [16, 32], "batch_size": [4], "repeats": 2,
    "configs": ["fast-dllm", {"name": "mine", "scheduler": "factor", "scheduler_kwargs": {"factor": 1.5},
                              "eotp": True}],
    "grid": [{"scheduler": ["low_confidence", "threshold:threshold=0.8"], "cache": ["none", "dual"]},
             {"scheduler": [{"name": "low_confidence", "tokens_per_step": 2}], "cache": "prefix",
              "set": {"eotp": True}}],
}


def _check_grid_suite(s: Suite) -> None:
    assert s.tasks == ("copy", "code") and s.n == 3 and s.gen_length == (16, 32) and s.repeats == 2
    names = [m.name for m in s.methods]
    assert names[:2] == ["fast-dllm", "mine"]
    assert len(names) == 2 + 4 + 1
    grid = s.methods[2:6]
    assert {(m.fields["scheduler"], m.fields["cache"]) for m in grid} == {
        ("low_confidence", "none"), ("low_confidence", "dual"), ("threshold", "none"), ("threshold", "dual")}
    last = s.methods[-1]
    assert dict(last.fields) == {"scheduler": "low_confidence", "cache": "prefix", "tokens_per_step": 2, "eotp": True}
    assert [m.name for m in s.with_reference()][0] == REFERENCE
    assert len(s.shapes) == 2


def test_grid_file_json(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(GRID))
    args = bench_cli.build_parser().parse_args(["--grid", str(path)])
    _check_grid_suite(bench_cli.suite_from_args(args))
    # command-line options override the file
    args = bench_cli.build_parser().parse_args(["--grid", str(path), "--n", "5", "--configs", "best"])
    s = bench_cli.suite_from_args(args)
    assert s.n == 5 and s.methods[-1].name == "best"


def test_grid_file_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID))
    _check_grid_suite(presets.suite_from_mapping(presets.read_grid_file(path)))


def test_grid_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"gen_lenght": [32]}))
    with pytest.raises(ConfigError, match="gen_lenght"):
        presets.suite_from_mapping(presets.read_grid_file(bad))
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="JSON"):
        presets.read_grid_file(bad)
    with pytest.raises(ConfigError, match="shape axes"):
        presets.grid_methods({"scheduler": "threshold", "gen_length": [32]})


def test_cli_resolution():
    parse = bench_cli.build_parser().parse_args
    s = bench_cli.suite_from_args(parse([]))
    assert [m.name for m in s.methods] == [m.name for m in presets.SUITES["quick"].methods]
    s = bench_cli.suite_from_args(parse(["--configs", "best", "--gen-length", "32", "64", "--block-length", "auto"]))
    assert [m.name for m in s.methods] == ["best"] and s.gen_length == (32, 64) and s.block_length == (None,)
    s = bench_cli.suite_from_args(parse(["--schedulers", "low_confidence", "threshold:threshold=0.8",
                                         "--caches", "none", "dual", "--set", "eotp=true"]))
    assert len(s.methods) == 4 and all(m.fields["eotp"] is True for m in s.methods)
    s = bench_cli.suite_from_args(parse(["--preset", "full", "--n", "3"]))
    assert s.n == 3 and len(s.methods) == len(presets.SUITES["full"].methods)


def test_configuration_named_like_a_preset_overrides_it(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"preset": "quick", "configs": [
        {"name": "learn2pd", "scheduler": "learned_filter", "scheduler_kwargs": {"path": "filter.pt"}, "eotp": True}]}))
    s = bench_cli.suite_from_args(bench_cli.build_parser().parse_args(["--grid", str(path)]))
    names = [m.name for m in s.methods]
    assert names == [m.name for m in presets.SUITES["quick"].methods]  # same order, no duplicate
    assert s.methods[names.index("learn2pd")].fields["scheduler_kwargs"] == {"path": "filter.pt"}


def test_scale_is_forwarded(monkeypatch):
    import dlm.bench.scale as scale
    from dlm.cli import build_parser

    seen = []
    monkeypatch.setattr(scale, "main", lambda argv=None: seen.append(argv))
    args = build_parser().parse_args(["bench", "scale", "--arch", "llada-tiny", "--device", "cpu", "-h"])
    assert args.func(args) == 0
    assert seen == [["--arch", "llada-tiny", "--device", "cpu", "-h"]]


def test_cli_end_to_end(llada_path, tmp_path, capsys):
    out = tmp_path / "res"
    rc = bench_cli.main(["--model", str(llada_path), "--device", "cpu", "--tasks", "copy", "--n", "1",
                         "--gen-length", "8", "--block-length", "8", "--batch-size", "1", "--configs", "fast-dllm",
                         "--repeats", "1", "--warmup", "0", "--no-plots", "--threads", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in data["rows"]] == [REFERENCE, "fast-dllm"]
    assert data["environment"]["command"]
    assert "| fast-dllm |" in capsys.readouterr().out


def test_causal_verifier_path_is_filled_in(llada):
    bench = Bench(llada, Suite(methods=()), items=tiny_items()[:1], verifier="/some/causal-lm")
    method, why = bench.resolve(NAMED["lossless-causal"])
    assert why is None and method.fields["verify_kwargs"]["verifier"] == "/some/causal-lm"
    explicit = Method("mine", {"verify": "causal", "verify_kwargs": {"verifier": "/other"}})
    assert bench.resolve(explicit)[0].fields["verify_kwargs"]["verifier"] == "/other"
