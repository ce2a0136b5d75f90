"""The benchmark runner must not rot: run it with tiny sizes (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).parent.parent

pytest.importorskip("trio_parallel", reason="benchmark peers not installed (pip install -e '.[bench]')")
pytest.importorskip("pebble", reason="benchmark peers not installed (pip install -e '.[bench]')")
pytest.importorskip("matplotlib", reason="benchmark peers not installed (pip install -e '.[bench]')")


async def test_runner_tiny(tmp_path: Path) -> None:
    with trio.fail_after(300):
        result = await trio.run_process(
            [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--out", str(tmp_path)],
            capture_stdout=True,
            capture_stderr=True,
            stdin=subprocess.DEVNULL,
        )
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, out
    report = (tmp_path / "RESULTS.md").read_text()
    for heading in ("Throughput", "Sequential round trip", "Cancel latency", "Capacity restore", "Targets"):
        assert heading in report
    data = json.loads((tmp_path / "results.json").read_text())
    assert data
    assert (tmp_path / "results.png").stat().st_size > 1000
