"""Run as a script by test_lifecycle.py: its module body reports every process
that executes it, so the test can see that workers import the main module only
when a job defined here needs it."""

from __future__ import annotations

import json
import os
import sys

print(json.dumps({"module_body_ran_in": os.getpid()}), file=sys.stderr, flush=True)

_STATE: list[str] = []


def init_here(tag: str) -> None:
    _STATE.append(tag)


def job_defined_in_main(n: int) -> tuple[int, int, list[str]]:
    return os.getpid(), n * 3, list(_STATE)


async def main() -> None:
    import trio

    from genro_tasks import TaskManager

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from jobs import getpid, trio_loaded

    async with TaskManager(2) as tm:
        module_job = await tm.run(getpid)
        no_trio = not await tm.run(trio_loaded)
        print(json.dumps({"stage": "module jobs done", "worker": module_job, "no_trio": no_trio}), flush=True)
        pid, value, _ = await tm.run(job_defined_in_main, 14)
        print(json.dumps({"stage": "main job done", "worker": pid, "value": value}), flush=True)
    async with TaskManager(1, initializer=init_here, initargs=("from-main",)) as tm:
        _pid, _value, state = await tm.run(job_defined_in_main, 1)
        print(json.dumps({"stage": "initializer from main", "state": state}), flush=True)
    await trio.lowlevel.checkpoint()


if __name__ == "__main__":
    import trio

    trio.run(main)
