"""``examples/scheduler_bench.py`` runs and prints one Markdown row per scheduler (no timing asserted)."""

from __future__ import annotations

import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "scheduler_bench.py"


def test_scheduler_bench_prints_a_table(peaky_llada_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["--model", str(peaky_llada_path), "--schedulers", "low_confidence,threshold,early_commit",
          "--gen-length", "16", "--block-length", "8", "--prompts", "2"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| scheduler |") and len(lines) == 4  # header + 3 rows
    ref = lines[1].split("|")
    assert ref[1].strip() == "low_confidence" and ref[6].strip() == "1.000" and ref[7].strip() == "1.00"
