"""Graceful cancel: the job cleans up its temporary file before it ends.

Run: python examples/graceful_cancel.py
"""

from __future__ import annotations

import os
import tempfile
import time

import trio

from genro_tasks import TaskManager, TaskStatus, report_progress


def render_frame(i: int) -> bytes:
    time.sleep(0.05)  # pretend to render
    return bytes([i % 256]) * 1024


def render_video(frames: int, directory: str) -> str:
    fd, tmp = tempfile.mkstemp(suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            for i in range(frames):
                out.write(render_frame(i))
                report_progress((i + 1) / frames, f"frame {i + 1}/{frames}")
        final = tmp.removesuffix(".part") + ".mp4"
        os.rename(tmp, final)
        return final
    finally:
        if os.path.exists(tmp):  # cancelled (or failed) half way:
            os.remove(tmp)  # no half-written file is left behind


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with TaskManager(max_workers=1) as tm:
            task_id = tm.submit(render_video, 1000, directory)
            async for info in tm.watch(task_id):
                if (info.progress or 0) >= 0.02:
                    print("files while rendering:", sorted(os.listdir(directory)))
                    cancelled = await tm.cancel(task_id, grace=5.0)
                    break
            info = await tm.info(task_id)
            print("cancelled:", cancelled, info.status.value, "-", info.error)
            print("files after cancel:", sorted(os.listdir(directory)))
            assert info.status is TaskStatus.CANCELLED
            assert os.listdir(directory) == []


if __name__ == "__main__":
    trio.run(main)
