"""One task, many items: how ``tm.map(..., chunksize=N)`` runs a chunk in a worker (stdlib only).

A :class:`MapChunk` wraps the mapped function; called with a tuple of items,
it calls the function on each in turn and returns the pickled outcomes, so
the parent still gets one result (or one exception, with its remote
traceback) per item, in input order. Only :class:`Exception` is caught per
item: a graceful cancel (:class:`~._protocol.CancelRequested`), ``SystemExit``
and ``KeyboardInterrupt`` end the whole chunk, as they end a task.
"""

from __future__ import annotations

import inspect
import pickle
import time
from collections.abc import Callable
from typing import Any

from ._progress import report_progress
from ._protocol import PICKLE_PROTOCOL, Failure

#: Seconds between two progress reports of a chunk (the fraction of its items done).
_PROGRESS_EVERY = 0.05

#: What a chunk returns, pickled: (seconds spent in the items, values, errors by index or None).
#: An error is a :class:`Failure` (the item raised) or a ``(type name, reason)`` pair (its value
#: could not be pickled); the value at that index is None.
Outcomes = tuple[float, list[Any], dict[int, Failure | tuple[str, str]] | None]


def _type_name(obj: object) -> str:
    cls = type(obj)
    module = getattr(cls, "__module__", None)
    return cls.__qualname__ if module in (None, "builtins") else f"{module}.{cls.__qualname__}"


class MapChunk:
    """``func`` applied to a chunk of items, one outcome per item (see the module docstring).

    Its ``__qualname__`` and ``__module__`` are the function's, so the task
    is named after ``func`` (with ``[chunk]``) in listings and the dashboard.
    """

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__qualname__
        self.__qualname__ = f"{name}[chunk]"
        self.__module__ = getattr(func, "__module__", None) or "builtins"

    def __reduce__(self) -> tuple[Any, ...]:
        return (MapChunk, (self.func,))

    def __call__(self, items: tuple[Any, ...]) -> bytes:
        """Run ``func`` on every item; return the pickled :data:`Outcomes`."""
        func = self.func
        count = len(items)
        values: list[Any] = []
        errors: dict[int, Failure | tuple[str, str]] = {}
        clock = time.perf_counter
        start = clock()
        next_report = start  # the first item done is reported, then at most every _PROGRESS_EVERY
        for index, item in enumerate(items):
            try:
                value = func(item)
                if inspect.iscoroutine(value):
                    value.close()
                    raise TypeError(
                        f"{self.__qualname__} returned a coroutine: a chunk runs plain functions only; "
                        "pass chunksize=1 to map an async function"
                    )
            except Exception as exc:
                errors[index] = _failure(exc)
                values.append(None)
                del exc
                continue
            values.append(value)
            if count > 1:
                now = clock()
                if now >= next_report:
                    next_report = now + _PROGRESS_EVERY
                    report_progress((index + 1) / count)
        elapsed = clock() - start
        return _pack(elapsed, values, errors)


def _failure(exc: BaseException) -> Failure:
    from ._loop import _failure as describe  # the worker's own description of a job's exception

    return describe(exc)


def _pack(elapsed: float, values: list[Any], errors: dict[int, Failure | tuple[str, str]]) -> bytes:
    """Pickle the outcomes; a value that cannot be pickled becomes that item's error alone."""
    try:
        return pickle.dumps((elapsed, values, errors or None), PICKLE_PROTOCOL)
    except Exception:
        pass
    for index, value in enumerate(values):
        if index in errors:
            continue
        try:
            pickle.dumps(value, PICKLE_PROTOCOL)
        except Exception as exc:
            errors[index] = (_type_name(value), f"{_type_name(exc)}: {exc}")
            values[index] = None
    return pickle.dumps((elapsed, values, errors or None), PICKLE_PROTOCOL)
