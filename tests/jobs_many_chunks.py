"""Jobs for the chunked tm.map tests: importable by the workers."""

from __future__ import annotations

import os
import threading
import time


def square(x: int) -> int:
    return x * x


def nap(x: int) -> int:
    """An item slower than a whole automatic chunk (about 5 ms)."""
    time.sleep(0.03)
    return x


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def lock_at(x: int, bad: int) -> object:
    """Return an unpicklable value for item ``bad``."""
    return threading.Lock() if x == bad else x


def sleep_from(x: int, start: int) -> int:
    """Items from ``start`` on sleep (until killed)."""
    if x >= start:
        time.sleep(3600)
    return x


async def async_square(x: int) -> int:
    return x * x


def crash_at(x: int, bad: int) -> int:
    """Kill the worker at item ``bad``."""
    if x == bad:
        os._exit(3)
    return x
