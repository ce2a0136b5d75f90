"""The parent's main module, imported in a worker only when a job needs it.

``multiprocessing`` re-runs the parent's main module in every child it starts
(the forkserver does not preload it), which costs every worker start the
application's own imports (trio, web frameworks, ...). genro-tasks keeps those
keys out of the child's preparation data and installs this lazy stand-in
instead: the real main module is imported the first time something looks a
name up in it, typically when a job defined in the main script is unpickled.
"""

from __future__ import annotations

import runpy
import sys
import types
from typing import Any

#: How the parent's main module can be found: ("path", file) or ("name", module).
MainRef = tuple[str, str]


class LazyMain(types.ModuleType):
    """Stands in for ``__main__`` until one of its names is needed."""

    def __init__(self, ref: MainRef) -> None:
        super().__init__("__mp_main__")
        self._genro_ref = ref

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(load(self._genro_ref), name)


def load(ref: MainRef) -> types.ModuleType:
    """Import the parent's main module as ``__mp_main__`` (once) and return it."""
    current = sys.modules.get("__mp_main__")
    if current is not None and not isinstance(current, LazyMain):
        return current
    kind, where = ref
    module = types.ModuleType("__mp_main__")
    if kind == "path":
        namespace = runpy.run_path(where, run_name="__mp_main__")
    else:
        namespace = runpy.run_module(where, run_name="__mp_main__", alter_sys=True)
    module.__dict__.update(namespace)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module
    return module


def install(ref: MainRef | None) -> None:
    """Make ``__main__`` resolve lazily to the parent's main module."""
    if ref is None:
        return
    stand_in = LazyMain(ref)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = stand_in
