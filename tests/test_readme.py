"""The README's quickstart must run as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import trio

README = Path(__file__).parent.parent / "README.md"


async def test_quickstart_runs(tmp_path: Path) -> None:
    text = README.read_text()
    start = text.index("Save as `quickstart.py`")
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match is not None
    script = tmp_path / "quickstart.py"
    script.write_text(match.group(1))
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, str(script)], capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL
        )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "completed 100% resized 20/20" in out
    assert "result: 20" in out
    assert "cancelled: True cancelled" in out
    assert "run: 3" in out


async def test_graceful_cancel_example_runs() -> None:
    example = README.parent / "examples" / "graceful_cancel.py"
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, str(example)], capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL
        )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "files while rendering: ['tmp" in out
    assert "cancelled: True cancelled" in out
    assert "files after cancel: []" in out
