"""dlm bench serve: a short sweep against a server it starts, the static baseline, and its three files."""

from __future__ import annotations

import json

import pytest

from dlm.serve.loadgen import LevelResult, RequestResult, percentile


def test_percentiles_and_level_summary():
    assert percentile([], 50) is None and percentile([2.0], 99) == 2.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    level = LevelResult(2, 2.0, [RequestResult(True, 1.0, 0.1, 10, 5, 4), RequestResult(True, 2.0, 0.3, 30, 15, 6),
                                 RequestResult(False, 0.5, error="HTTP 429: full")])
    s = level.summary()
    assert (s["requests"], s["errors"], s["output_tokens"], s["output_tokens_per_s"]) == (3, 1, 40, 20.0)
    assert s["nfe_per_token"] == 0.5 and s["requests_per_s"] == 1.0 and s["first_errors"] == ["HTTP 429: full"]


@pytest.mark.slow
def test_bench_serve_end_to_end(chat_path, tmp_path, capsys):
    from dlm.cli import main

    out = tmp_path / "bench"
    code = main(["bench", "serve", "--model", str(chat_path), "--device", "cpu", "--concurrency", "1", "3",
                 "--requests", "3", "--max-tokens", "16", "--threads", "1", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [s["concurrency"] for s in results["served"]] == [1, 3] == [s["concurrency"] for s in results["static"]]
    for served, static in zip(results["served"], results["static"]):
        assert served["errors"] == 0 and served["requests"] == 3
        # every answer is max_tokens long (logits_eos_inf), on both sides
        assert served["output_tokens"] == static["output_tokens"] == 3 * 16
        assert served["ttft_p50_s"] <= served["latency_p50_s"]
    table = (out / "results.md").read_text()
    assert "| 3 |" in table and "served / static" in table
    assert (out / "serve.png").stat().st_size > 10_000
    assert "served / static" in capsys.readouterr().out


def test_the_started_server_gets_the_model_options():
    """bench serve loads its static baseline and starts its server with the same model options."""
    import argparse

    from dlm.serve.bench import configure, server_command

    p = argparse.ArgumentParser()
    configure(p)
    args = p.parse_args(["--random-weights", "llada-tiny", "--dtype", "float32", "--cuda-graphs", "--quantize", "fp8"])
    cmd = server_command(args, port=1234, max_rows=8)
    for flag, value in (("--random-weights", "llada-tiny"), ("--dtype", "float32"), ("--quantize", "fp8")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--cuda-graphs" in cmd
    args = p.parse_args(["--no-fast", "--no-fused-kernels"])
    cmd = server_command(args, port=1234, max_rows=8)
    assert "--no-fast" in cmd and "--no-fused-kernels" in cmd and "--cuda-graphs" not in cmd
    from dlm.serve.cli import configure as serve_configure
    served = argparse.ArgumentParser()
    serve_configure(served)
    parsed = served.parse_args(cmd[cmd.index("dlm.serve") + 1:])
    assert (parsed.fast, parsed.cuda_graphs, parsed.fused_kernels) == (False, None, False)


def test_the_engine_process_flag_reaches_the_server():
    import argparse

    from dlm.cli import main as dlm_main
    from dlm.serve.bench import configure, server_command
    from dlm.serve.cli import configure as serve_configure

    p, served = argparse.ArgumentParser(), argparse.ArgumentParser()
    configure(p)
    serve_configure(served)
    for flags, expected in (([], True), (["--no-engine-process"], False), (["--engine-process"], True)):
        cmd = server_command(p.parse_args(flags), port=1234, max_rows=8)
        assert served.parse_args(cmd[cmd.index("dlm.serve") + 1:]).engine_process is expected
    assert dlm_main(["bench", "serve", "--url", "http://127.0.0.1:1", "--no-engine-process"]) == 2
