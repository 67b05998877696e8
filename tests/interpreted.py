"""Running a test script in a new Python process under Triton's CPU interpreter (``TRITON_INTERPRET=1``, which
Triton reads when it is imported, so it cannot be switched on inside the test process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_interpreted(script: str, *args: str, timeout: int = 600):
    """``script`` run with ``args`` from the repository's root; its last line of output, parsed as JSON."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                         timeout=timeout, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
