"""``dlm generate``: answers written batch by batch, interrupts that keep them, one-line errors, threads, imports."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dlm
from dlm import cli
from dlm.api.lm import DiffusionLM

GEN = ["--gen-length", "8", "--block-length", "8"]


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _prompt_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt_ids": [1, 2 + i], "tag": i % 2}) + "\n"
                            for i in range(n)))
    return path


def _interrupt_after(monkeypatch, calls: int) -> list:
    """DiffusionLM.generate raises KeyboardInterrupt (what Ctrl-C raises) on call number ``calls + 1``."""
    seen: list = []
    original = DiffusionLM.generate

    def generate(self, prompts, *a, **k):
        if len(seen) == calls:
            raise KeyboardInterrupt
        seen.append(len(prompts))
        return original(self, prompts, *a, **k)

    monkeypatch.setattr(DiffusionLM, "generate", generate)
    return seen


def test_interrupt_keeps_every_finished_batch(llada_path, tmp_path, monkeypatch, capsys):
    inp, out = _prompt_file(tmp_path / "in.jsonl", 9), tmp_path / "out.jsonl"
    seen = _interrupt_after(monkeypatch, 2)
    rc = cli.main(["generate", "--model", str(llada_path), "--input", str(inp), "--output", str(out),
                   "--batch-size", "2", *GEN])
    assert rc == 130 and seen == [2, 2]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"dlm: interrupted; 4 of 9 answers saved to {out}"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3"]  # input fields kept, in input order
    assert [r["tag"] for r in rows] == [0, 1, 0, 1] and rows[1]["prompt_ids"] == [1, 3]
    assert all(len(r["tokens"]) == 8 for r in rows) and not (tmp_path / "out.jsonl.partial").exists()


def test_complete_run_and_nothing_done(llada_path, tmp_path, monkeypatch, capsys):
    inp, out = _prompt_file(tmp_path / "in.jsonl", 5), tmp_path / "deep" / "out.jsonl"
    assert cli.main(["generate", "--model", str(llada_path), "--input", str(inp), "--output", str(out),
                     "--batch-size", "2", *GEN]) == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [f"q{i}" for i in range(5)]
    assert "wrote 5 of 5 answers" in capsys.readouterr().err
    _interrupt_after(monkeypatch, 0)  # interrupted before the first batch: the old file stays as it was
    assert cli.main(["generate", "--model", str(llada_path), "--input", str(inp), "--output", str(out),
                     *GEN]) == 130
    assert len(out.read_text().splitlines()) == 5 and not (out.parent / "out.jsonl.partial").exists()


def test_an_error_mid_run_saves_what_is_done(llada_path, tmp_path, monkeypatch, capsys):
    inp, out = _prompt_file(tmp_path / "in.jsonl", 5), tmp_path / "out.jsonl"
    original = DiffusionLM.generate
    calls = []

    def generate(self, prompts, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise dlm.GenerationError("NaN logits")
        return original(self, prompts, *a, **k)

    monkeypatch.setattr(DiffusionLM, "generate", generate)
    args = ["generate", "--model", str(llada_path), "--input", str(inp), "--output", str(out), *GEN]
    assert cli.main([*args, "--batch-size", "2"]) == 2
    assert f"dlm: error: NaN logits (2 of 5 answers saved to {out})" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 2
    calls.clear()
    calls.append(1)  # the first call fails: nothing saved, nothing claimed, the old file kept
    assert cli.main(args) == 2
    assert capsys.readouterr().err.strip() == "dlm: error: NaN logits" and len(out.read_text().splitlines()) == 2


def test_batches_are_printed_as_they_finish(llada_path, monkeypatch, capsys):
    _interrupt_after(monkeypatch, 1)
    assert cli.main(["generate", "--model", str(llada_path), "a", "b", "c", "--batch-size", "2", "--json",
                     *GEN]) == 130
    cap = capsys.readouterr()
    assert len(cap.out.splitlines()) == 2 and "2 of 3 answers saved to standard output" in cap.err


def test_output_path_is_checked_before_loading(llada_path, tmp_path, monkeypatch, capsys):
    def never(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(dlm.api, "load", never)
    (tmp_path / "afile").write_text("x")
    for target, message in ((tmp_path, "is a folder"), (tmp_path / "afile" / "out.jsonl", "cannot write --output")):
        assert cli.main(["generate", "--model", str(llada_path), "hi", "--output", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_ctrl_c_in_a_real_process(llada_path, tmp_path):
    """SIGINT to a running ``dlm generate``: exit 130, one line, the finished answers in the output file."""
    n = 120  # about 20 s of work: the loop below must see the first answers while the process still runs
    inp, out = _prompt_file(tmp_path / "in.jsonl", n), tmp_path / "out.jsonl"
    # a suite started in the background by a shell inherits an ignored SIGINT, and Python then installs no
    # KeyboardInterrupt handler: the child installs it, as it has from a terminal, then runs `python -m dlm`
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "sys.argv[0] = 'dlm'; runpy.run_module('dlm', run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", start, "generate", "--model", str(llada_path), "--input",
                             str(inp), "--output", str(out), "--batch-size", "1", "--threads", "1", "--gen-length",
                             "32", "--block-length", "8"], stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "out.jsonl.partial"
    deadline = time.time() + 120
    while time.time() < deadline and not (partial.exists() and len(partial.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, "the process ended before two answers were seen in the partial file"
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    done = len(out.read_text().splitlines())
    assert 2 <= done < n and f"dlm: interrupted; {done} of {n} answers saved to {out}" in err


def _one_line_error(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlm: error: ") and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("extra, message", [
    (["hi", "--device", "nonsense"], "--device 'nonsense' is not a device"),
    (["a", "b", "--stream"], "--stream prints one answer as it is decoded: give exactly one prompt"),
    (["a", "--stream", "--json"], "and --json"),
    (["a", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["a", "--gen-lenght", "8"], "unrecognized"),  # argparse's own error (exit 2) is covered below
])
def test_bad_options_are_one_line(llada_path, capsys, extra, message):
    if "--gen-lenght" in extra:
        with pytest.raises(SystemExit) as exc:
            cli.main(["generate", "--model", str(llada_path), *extra])
        assert exc.value.code == 2 and message in capsys.readouterr().err
        return
    _one_line_error(capsys, ["generate", "--model", str(llada_path), *extra, *GEN], message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda(llada_path, capsys):
    _one_line_error(capsys, ["generate", "--model", str(llada_path), "hi", "--device", "cuda"],
                    "--device cuda but CUDA is not available here")


def test_bad_files_are_one_line(llada_path, tmp_path, capsys):
    model = ["generate", "--model", str(llada_path)]
    bad_ids = tmp_path / "ids.jsonl"
    bad_ids.write_text('{"prompt_ids": ["a"]}\n')
    _one_line_error(capsys, [*model, "--input", str(bad_ids)], "ids.jsonl:1: 'prompt_ids' must be a list of integer")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'"add\xff"\n')
    _one_line_error(capsys, [*model, "--input", str(binary)], "bin.jsonl is not UTF-8 text (byte 4)")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    _one_line_error(capsys, [*model, "hi", "--config", str(listed)], "must hold a JSON object of GenerationConfig")
    binary_cfg = tmp_path / "cfg.json"
    binary_cfg.write_bytes(b"\xff\xfe{}")
    _one_line_error(capsys, [*model, "hi", "--config", str(binary_cfg)], "cannot read --config")
    misspelt = tmp_path / "typo.json"
    misspelt.write_text('{"gen_lenght": 8}')
    _one_line_error(capsys, [*model, "hi", "--config", str(misspelt)], "did you mean 'gen_length'?")


def test_stream_prints_the_single_answer(llada_path, capsys):
    assert cli.main(["generate", "--model", str(llada_path), "hi", "--stream", "--no-stop-at-eos", *GEN]) == 0
    streamed = capsys.readouterr().out
    assert cli.main(["generate", "--model", str(llada_path), "hi", "--no-stop-at-eos", *GEN]) == 0
    assert streamed == capsys.readouterr().out  # the same text, printed once


def test_threads(llada_path, monkeypatch, capsys):
    assert cli.main(["generate", "--model", str(llada_path), "hi", "--threads", "1", "--device", "cpu", *GEN]) == 0
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for load, threads in ((0.1, 2), (0.9, 1), (2.2, 1), (9.0, 1)):
        monkeypatch.setattr(cli.os, "getloadavg", lambda load=load: (load, load, load))
        assert cli.default_threads() == threads, load
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (3.4, 0.0, 0.0))
    assert cli.default_threads() == 13


def test_generate_imports_only_what_it_uses(llada_path):
    """``dlm generate`` never imports the training, benchmark or eval code, nor transformers' AutoTokenizer
    machinery (seconds of start-up on a small machine)."""
    code = ("import sys; from dlm.cli import main; rc = main(['generate', '--model', sys.argv[1], 'hi', "
            "'--gen-length', '8', '--threads', '1']); "
            "heavy = [m for m in sys.modules if m.startswith(('dlm.train', 'dlm.bench', 'dlm.eval')) "
            "or m == 'transformers.models.auto.tokenization_auto']; print(rc, sorted(heavy))")
    r = subprocess.run([sys.executable, "-c", code, str(llada_path)], capture_output=True, text=True)
    assert r.stdout.strip().splitlines()[-1] == "0 []", r.stdout + r.stderr
