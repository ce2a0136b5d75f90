"""The benchmark runner must not rot, and must only publish what a commit measured.

The runner runs from a throwaway git copy of ``benchmarks/`` (so nothing here can dirty
the checkout or depend on it being clean); no timing is asserted anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).parent.parent
BENCH = ROOT / "benchmarks"

pytest.importorskip("trio_parallel", reason="benchmark peers not installed (pip install -e '.[bench]')")
pytest.importorskip("pebble", reason="benchmark peers not installed (pip install -e '.[bench]')")
pytest.importorskip("matplotlib", reason="benchmark peers not installed (pip install -e '.[bench]')")


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def _repo_copy(tmp_path: Path, dirty: bool) -> Path:
    """A committed copy of benchmarks/ in a git repository of its own (plus an untracked file if dirty)."""
    repo = tmp_path / "repo"
    shutil.copytree(BENCH, repo / "benchmarks", ignore=shutil.ignore_patterns("out", "__pycache__"))
    (repo / ".gitignore").write_text("benchmarks/out/\n__pycache__/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "copy")
    if dirty:
        (repo / "scratch.py").write_text("x = 1\n")
    return repo


async def _run(repo: Path, *args: str, timeout: float = 300) -> tuple[int, str, str]:
    with trio.fail_after(timeout):
        done = await trio.run_process(
            [sys.executable, str(repo / "benchmarks" / "run.py"), *args],
            capture_stdout=True,
            capture_stderr=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_runner_tiny_allow_dirty(tmp_path: Path) -> None:
    repo = _repo_copy(tmp_path, dirty=True)
    published = (repo / "benchmarks" / "RESULTS.md").read_bytes()
    code, out, err = await _run(repo, "--tiny", "--allow-dirty")
    assert code == 0, out + err
    # --tiny writes beside the published results, never over them.
    assert (repo / "benchmarks" / "RESULTS.md").read_bytes() == published
    out_dir = repo / "benchmarks" / "out"
    report = (out_dir / "RESULTS.md").read_text()
    data = json.loads((out_dir / "results.json").read_text())
    assert (out_dir / "results.png").stat().st_size > 1000

    for heading in ("Throughput", "Sequential round trip", "Cancel latency", "Capacity restore", "Targets"):
        assert heading in report
    # Marked as not publishable, saying why, with the commit it is (not) from.
    assert "**Not publishable**" in report
    assert "uncommitted changes (scratch.py)" in report
    assert data["meta"]["publishable"] is False
    assert data["meta"]["commit"] == _git(repo, "rev-parse", "HEAD")
    assert data["meta"]["commit"] in report
    # Each peer with its default and its best start method, in labelled rows, and how it is driven.
    for row in (
        "| trio_parallel (spawn, its default) |",
        "| trio_parallel (forkserver) |",
        "| ppe (forkserver) |",
        "| pebble (forkserver) |",
        "| anyio (`python -m` subprocess, no start-method option) |",
        "| genro_tasks (spawn) |",
    ):
        assert row in report, row
    assert "how it is driven" in report
    assert "consumer task per worker" in report
    assert "best peer**" in report
    # The round-trip floor is measured, not quoted.
    assert data["summary"]["roundtrip"]["raw"]["median_us"]["n"] == 1
    # The worker exit is observed for every library that can cancel.
    for lib in ("genro_tasks", "trio_parallel+forkserver", "anyio", "pebble"):
        assert data["summary"]["cancel"][lib]["worker_gone_ms"]["n"] == 1, lib
    # Rows for capabilities not there yet are skipped, saying why, not failed.
    if "store_throughput" in data["meta"]["skipped"]:
        assert "`store_throughput`: genro_tasks has no shared store" in report
    # No machine paths anywhere in what could be published.
    for text in (report, (out_dir / "results.json").read_text()):
        for path in (str(ROOT), str(tmp_path), sys.prefix, os.path.expanduser("~") + "/"):
            assert path not in text, path


def test_notes_carry_no_figures() -> None:
    """The hand-written notes refer to the generated tables; they quote no measured figure."""
    notes = (BENCH / "NOTES.md").read_text()
    figures = re.findall(r"\d[\d.,]*\s*(?:ms|µs|us|s|x|%|tasks/s|KiB|MiB|bytes)\b", notes)
    assert figures == []


async def test_runner_refuses_a_dirty_tree(tmp_path: Path) -> None:
    repo = _repo_copy(tmp_path, dirty=True)
    code, _, err = await _run(repo, "--tiny", timeout=60)
    assert code == 2
    assert "uncommitted changes (scratch.py)" in err
    assert "--allow-dirty" in err
    assert not (repo / "benchmarks" / "out").exists()


async def test_runner_refuses_a_genro_tasks_from_elsewhere(tmp_path: Path) -> None:
    """A clean checkout is not enough: the genro_tasks measured must be that checkout's."""
    repo = _repo_copy(tmp_path, dirty=False)
    code, _, err = await _run(repo, "--tiny", timeout=60)
    assert code == 2
    assert "genro_tasks is not imported from this checkout" in err
    assert "uncommitted" not in err


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds (Linux >= 5.3)")
async def test_worker_exit_is_observed_by_the_kernel_not_by_polling() -> None:
    """wait_gone() sleeps until the process exits: its task runs a handful of steps, not one per poll."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    from _common import open_pidfd, wait_gone

    steps = 0

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            nonlocal steps
            if task.name == "watcher":
                steps += 1

    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    assert proc.stdin is not None
    pidfd = open_pidfd(proc.pid)
    assert pidfd is not None
    gone = trio.Event()

    async def watcher() -> None:
        await wait_gone(pidfd)
        gone.set()

    trio.lowlevel.add_instrument(Steps())
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watcher, name="watcher")
                await trio.sleep(0.2)  # the child is still alive: it waits for its stdin to close
                assert not gone.is_set()
                await proc.stdin.aclose()  # now it exits
                await gone.wait()
            assert await proc.wait() == 0
        assert steps <= 3
    finally:
        os.close(pidfd)
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
