"""Running an example app's one command as a newcomer would, for tests/test_example_*.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_app(script: str, expected: Sequence[str]) -> str:
    """Run ``python <script>`` from the repository's root (a real process); check that it exited
    0, printed every line of ``expected`` and ended with all its own checks passed. Returns
    what it printed."""
    result = subprocess.run(
        [sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in expected:
        assert line in out, f"{line!r} not in:\n{out}"
    assert "FAILED" not in out and out.rstrip().endswith("all checks passed"), out
    return out
