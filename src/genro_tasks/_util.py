"""Small helpers shared by the scheduler and the backends."""

from __future__ import annotations

import trio


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception raised by user code, even if its ``__str__`` raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except BaseException:
        return f"{type(exc).__name__} (its message could not be formatted)"


def root_cause(exc: BaseException) -> BaseException:
    """The interesting exception inside trio's nursery groups."""
    while isinstance(exc, BaseExceptionGroup):
        rest = exc.split(trio.Cancelled)[1]
        if rest is None or len(rest.exceptions) != 1:
            return exc
        exc = rest.exceptions[0]
    return exc


def only_cancelled(exc: BaseException) -> bool:
    """True if ``exc`` is trio.Cancelled, or a group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)
