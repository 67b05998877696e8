"""End to end through lm-eval: ``lm_eval.simple_evaluate`` (via :func:`dlm.eval.evaluate`), ``dlm eval`` and
``python -m dlm.eval`` on the bundled dlm-tiny with the local tasks; accuracy against dlm's own scoring,
multiple-choice ranking against the exact likelihood bound, files written, entry point declared."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlm.config import GenerationConfig
from dlm.data import get_task, score
from dlm.eval import evaluate
from dlm.eval.likelihood import exact_elbo
from dlm.eval.tasks import DATA_DIR
from dlm.eval.tasks.data import choice_rows, family_rows, read_rows, write_data

from .conftest import write_jsonl

FAMILIES = ("add", "sort")
N = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, bundled):
    """A data folder with N items of two families and 3 multiple-choice items whose candidates are at most 5
    tokens (so the exact bound can enumerate them)."""
    d = tmp_path_factory.mktemp("eval-data")
    for f in FAMILIES:
        write_jsonl(d / f"{f}.jsonl", family_rows(f, N))
    tok = bundled.tokenizer
    short = [r for r in choice_rows(("add", "dedupe"), 8)
             if all(len(tok(c, add_special_tokens=False)["input_ids"]) <= 5 for c in r["choices"])]
    write_jsonl(d / "choice.jsonl", short[:3])
    return d


def _direct_accuracy(lm, config: GenerationConfig):
    """dlm bench's scoring (dlm.data.score: the families' exact match) of the same items decoded directly."""
    examples = [e for f in FAMILIES for e in get_task(f).generate("test", N, 0)]
    out = lm.generate([e.prompt for e in examples], config)
    return {f: v["accuracy"] for f, v in score(examples, out.texts).items()}, int(out.nfe.sum())


@pytest.mark.parametrize("model_args, config", [
    pytest.param({}, GenerationConfig(gen_length=32), marks=pytest.mark.slow),
    ({"scheduler": "threshold", "scheduler.threshold": 0.7, "cache": "dual", "eotp": True},
     GenerationConfig(gen_length=32, scheduler="threshold", scheduler_kwargs={"threshold": 0.7}, cache="dual",
                      eotp=True)),
])
def test_accuracy_equals_dlm_scoring_of_the_same_items(bundled, data_dir, model_args, config):
    results = evaluate(model_args, [f"dlm_{f}" for f in FAMILIES], lm=bundled, data_dir=data_dir,
                       bootstrap_iters=0)
    want, nfe = _direct_accuracy(bundled, config)
    got = {t.removeprefix("dlm_"): m["exact_match,none"] for t, m in results["results"].items()}
    assert got == want
    info = results["config"]["dlm"]
    assert info["speed"]["generate_until"]["nfe"] == nfe
    assert info["speed"]["generate_until"]["requests"] == N * len(FAMILIES)
    assert GenerationConfig.from_dict({**info["generation_config"], "gen_length": 32}) == config


@pytest.mark.slow
def test_multiple_choice_ranking_matches_the_exact_bound(bundled, data_dir):
    results = evaluate({"mc_num": 32, "mc_batch_size": 32}, ["dlm_choice"], lm=bundled, data_dir=data_dir,
                       log_samples=True, bootstrap_iters=0)
    samples = results["samples"]["dlm_choice"]
    rows = read_rows(Path(data_dir) / "choice.jsonl")
    correct = 0
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        row = rows[s["doc_id"]]
        estimates = [r[0][0] for r in s["resps"]]
        prefix = bundled.tokenizer(row["prompt"])["input_ids"]
        exact = [exact_elbo(bundled, prefix, bundled.tokenizer(c, add_special_tokens=False)["input_ids"])
                 for c in row["choices"]]
        assert max(range(4), key=estimates.__getitem__) == max(range(4), key=exact.__getitem__)
        correct += max(range(4), key=exact.__getitem__) == row["label"]
    assert results["results"]["dlm_choice"]["acc,none"] == correct / len(rows)


def _run(*args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, check=False, **kw)


@pytest.mark.slow
def test_dlm_eval_command_writes_results_speed_and_a_reusable_config(bundled, data_dir, tmp_path):
    out = tmp_path / "out"
    common = ["-m", "dlm", "eval", "--tasks", *(f"dlm_{f}" for f in FAMILIES), "--data-dir", str(data_dir),
              "--device", "cpu", "--bootstrap-iters", "0", "--output"]
    r = _run(*common, str(out), "--scheduler", "threshold", "--scheduler-arg", "threshold=0.7")
    assert r.returncode == 0, r.stderr
    folder = next(out.iterdir())
    report = json.loads(next(folder.glob("dlm_eval_*.json")).read_text())
    results = json.loads(next(folder.glob("results_*.json")).read_text())
    config = next(folder.glob("generation_config_*.json"))
    assert report["accuracy"]["dlm_add"]["exact_match,none"] == results["results"]["dlm_add"]["exact_match,none"]
    speed = report["speed"]["generate_until"]
    assert speed["requests"] == len(FAMILIES) * N and speed["nfe_per_token"] > 0 and speed["tokens_per_s"] > 0
    assert json.loads(config.read_text())["scheduler_kwargs"] == {"threshold": 0.7}
    # the saved config reproduces the run
    r2 = _run(*common, str(tmp_path / "again"), "--config", str(config))
    assert r2.returncode == 0, r2.stderr
    report2 = json.loads(next(next((tmp_path / "again").iterdir()).glob("dlm_eval_*.json")).read_text())
    assert report2["accuracy"] == report["accuracy"]
    assert report2["speed"]["generate_until"]["nfe"] == speed["nfe"]
    assert report2["generation_config"] == report["generation_config"]


@pytest.mark.slow
def test_dlm_eval_command_rejects_a_bad_model_arg(tmp_path):
    r = _run("-m", "dlm", "eval", "--tasks", "dlm_add", "--model-arg", "cach=dual", "--device", "cpu")
    assert r.returncode == 2
    assert "unknown model_arg 'cach'" in r.stderr and "allowed:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_lm_eval_command_line_with_the_dlm_model(data_dir, tmp_path):
    """``python -m dlm.eval`` is lm-eval's own command line with ``--model dlm`` registered."""
    from dlm.eval.tasks import TASK_DIR

    r = _run("-m", "dlm.eval", "run", "--model", "dlm", "--model_args", "device=cpu,gen_length=32,cache=prefix",
             "--tasks", "dlm_add", "--include_path", str(TASK_DIR), "--limit", "2", "--metadata",
             json.dumps({"dlm_data_dir": str(data_dir)}), "--output_path", str(tmp_path))
    assert r.returncode == 0, r.stderr
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert results["config"]["dlm"]["generation_config"]["cache"] == "prefix"
    assert results["config"]["dlm"]["speed"]["generate_until"]["requests"] == 2


def test_entry_point_names_the_model_class():
    """lm-eval releases that load plugins find ``--model dlm`` through this entry point."""
    eps = [ep for ep in importlib.metadata.entry_points(group="lm_eval.models") if ep.name == "dlm"]
    if not eps:
        pytest.skip("dlm's installed metadata predates the entry point; reinstall with pip install -e .")
    from dlm.eval.harness import DLMEvalLM

    assert eps[0].load() is DLMEvalLM


def test_shipped_task_data_equals_a_fresh_write(tmp_path):
    write_data(tmp_path)
    shipped = sorted(p.name for p in DATA_DIR.glob("*.jsonl"))
    assert shipped == sorted(p.name for p in tmp_path.glob("*.jsonl"))
    for name in shipped:
        assert (DATA_DIR / name).read_text() == (tmp_path / name).read_text(), name
