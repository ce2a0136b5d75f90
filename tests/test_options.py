"""Per-task options live in ``tm.options(...)``; every other keyword belongs to the job."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import trio

from genro_tasks import TaskManager, TaskOptions, TaskStatus, TaskSubmitter, TaskTimeout
from jobs import simple_task, slow_task
from jobs_api import own_keywords

JOB_KEYWORDS: dict[str, Any] = {"timeout": 5, "priority": "high", "memory_limit": 123, "func": "mine"}


async def test_job_gets_its_own_option_named_keywords(tasks: TaskManager) -> None:
    with trio.fail_after(30):
        assert await tasks.run(own_keywords, **JOB_KEYWORDS) == JOB_KEYWORDS
        tid = tasks.submit(own_keywords, **JOB_KEYWORDS)
        assert await tasks.result(tid) == JOB_KEYWORDS
        tid = await tasks.submit_wait(own_keywords, **JOB_KEYWORDS)
        assert await tasks.result(tid) == JOB_KEYWORDS
    info = await tasks.info(tid)
    assert info.timeout is None  # the job's timeout=5 is not the task's
    assert info.priority == 0


async def test_options_apply_through_the_view(tasks: TaskManager) -> None:
    view = tasks.options(timeout=0.3, priority=4)
    assert isinstance(view, TaskSubmitter)
    assert view.task_options == TaskOptions(timeout=0.3, priority=4)
    tid = view.submit(slow_task, 60)
    with trio.fail_after(30), pytest.raises(TaskTimeout, match=r"timeout of 0\.3s"):
        await tasks.result(tid)
    info = await tasks.info(tid)
    assert (info.status, info.timeout, info.priority) == (TaskStatus.FAILED, 0.3, 4)
    with trio.fail_after(30):
        # The view's options and the job's own keywords do not mix.
        assert await view.run(own_keywords, timeout=7) == {**dict.fromkeys(JOB_KEYWORDS), "timeout": 7}
        tid = await view.submit_wait(simple_task, 2, task_id="waited", metadata={"k": 1})
        assert await tasks.result(tid) == 4
    info = await tasks.info("waited")
    assert (info.timeout, info.priority, info.metadata) == (0.3, 4, {"k": 1})


async def test_refining_a_view_keeps_what_is_not_given(tasks: TaskManager) -> None:
    base = tasks.options(timeout=10, priority=2, memory_limit=2**30)
    assert base.options(priority=9).task_options == TaskOptions(10.0, 9, 2**30)
    assert base.options(timeout=None).task_options == TaskOptions(None, 2, 2**30)
    assert tasks.options(base.task_options, memory_limit=None).task_options == TaskOptions(10.0, 2, None)
    assert tasks.options().task_options == TaskOptions()
    with trio.fail_after(30):
        tid = base.options(timeout=20).submit(simple_task, 1)
        assert await tasks.result(tid) == 2
    assert (await tasks.info(tid)).timeout == 20.0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", math.nan),
        ("timeout", math.inf),
        ("timeout", True),
        ("timeout", "5"),
        ("timeout", 10**400),
        ("priority", True),
        ("priority", 1.5),
        ("priority", None),
        ("memory_limit", 0),
        ("memory_limit", True),
        ("memory_limit", 2**63),
        ("memory_limit", 1.0e9),
    ],
)
async def test_bad_options_are_refused_naming_them(tasks: TaskManager, option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        TaskOptions(**{option: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=option):
        tasks.options(**{option: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=option):
        tasks.options().options(**{option: value})  # type: ignore[arg-type]
    assert tasks.list_tasks() == []


def test_task_options_are_frozen_and_positional_base_is_checked() -> None:
    opts = TaskOptions(timeout=1)
    assert opts.timeout == 1.0
    assert isinstance(opts.timeout, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.timeout = 2  # type: ignore[misc]
    with pytest.raises(TypeError, match="TaskOptions"):
        TaskManager(1).options({"timeout": 1})  # type: ignore[arg-type]


async def test_func_is_positional_only(tasks: TaskManager) -> None:
    with pytest.raises(TypeError):
        tasks.submit(func=simple_task)  # type: ignore[call-arg]
    assert tasks.list_tasks() == []
