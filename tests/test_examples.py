"""The README's snippet and the main example run as a newcomer would run them (real processes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_readme_snippet_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None
    result = _run(["-c", block.group(1)])
    assert result.returncode == 0, result.stderr


def test_main_example_runs_and_shows_restart() -> None:
    result = _run(["examples/counter_tree.py"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "counter after ask: 3" in out
    assert "by endpoint name: Hello, Ada!" in out
    assert "'code': 409" in out
    assert "crash answered with: 500 RuntimeError: unlucky" in out
    assert "after restart the counter starts over: 1" in out


def test_config_example_merges_reloads_and_unseals() -> None:
    result = _run(["examples/config_demo.py"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "db.port = 5433 (from flags)" in out
    assert "db.host = db.internal (from env)" in out
    assert "actor saw db.pool_size: 10 -> 20" in out
    assert "broken file kept pool_size = 20; error: " in out
    assert "recovered: pool_size = 30" in out
    assert "password unsealed in memory only: True" in out
