"""The report: files, JSON structure, the Markdown tables, the PNG plots."""

from __future__ import annotations

import json

from dlm.bench.report import markdown


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
