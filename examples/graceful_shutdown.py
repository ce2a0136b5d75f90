"""Shut down in order on SIGTERM or Ctrl-C: running jobs get a deadline, queued ones are dropped.

Run ``python examples/graceful_shutdown.py`` and press Ctrl-C (or ``kill -TERM <pid>``):
the short job finishes, the long one is killed when the deadline passes, the queued one
is cancelled at once, and no worker process is left.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import trio

from genro_tasks import TaskManager, TaskStatus, report_progress


def render(steps: int, seconds: float) -> int:
    """A job: pretends to render ``steps`` frames in ``seconds``."""
    for i in range(steps):
        time.sleep(seconds / steps)
        report_progress((i + 1) / steps, f"frame {i + 1}/{steps}")
    return steps


async def main(deadline: float) -> None:
    async with TaskManager(max_workers=2) as tm:
        # While this receiver is open, SIGTERM and SIGINT are queued here instead of
        # ending the program (SIGTERM) or raising KeyboardInterrupt (SIGINT).
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            short = tm.submit(render, 4, 0.4, task_id="short")
            tm.submit(render, 100, 600.0, task_id="long")
            tm.submit(render, 4, 0.4, task_id="queued")  # waits: both workers are busy
            async for info in tm.watch(short):  # wait until it really runs
                if info.status is TaskStatus.RUNNING:
                    break
            print(f"pid {os.getpid()}: jobs running; press Ctrl-C or send SIGTERM", flush=True)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: shutting down, {deadline:g}s for running jobs", flush=True)
                break
        with trio.move_on_after(deadline):
            await tm.shutdown(wait=True, cancel_pending=True)  # queued tasks: CANCELLED at once
        # Past the deadline, shutdown() was cancelled: it killed the remaining workers
        # and recorded their tasks CANCELLED before returning.
        for info in tm.list_tasks():
            print(f"{info.task_id}: {info.status.value} ({info.error or 'finished'})")


if __name__ == "__main__":  # required: worker processes import this module
    trio.run(main, float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
