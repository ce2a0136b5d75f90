"""Job functions for the API and validation tests (importable by worker processes)."""

from __future__ import annotations

from typing import Any


def own_keywords(
    *,
    timeout: Any = None,
    priority: Any = None,
    memory_limit: Any = None,
    func: Any = None,
) -> dict[str, Any]:
    """Return the keywords named like the manager's options, as the job received them."""
    return {"timeout": timeout, "priority": priority, "memory_limit": memory_limit, "func": func}


def triple(n: int) -> int:
    return 3 * n


def many_numbers(n: int) -> list[int]:
    """A large JSON-serialisable result: ``[0, 1, ..., n - 1]``."""
    return list(range(n))
