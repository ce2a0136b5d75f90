"""Turning a call into a job: check it and pickle it, before any record exists.

Used by the facade for every ``submit``, ``submit_wait`` and ``run`` (of the
manager and of its option views) and for the initializer. Nothing here
touches the manager's state.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from genro_tasks_worker._protocol import PICKLE_PROTOCOL

from ._errors import MessageTooLarge, UnpicklableJob
from ._launch import main_module_ref
from ._options import Call, TaskOptions
from ._validate import check_metadata

#: The RFC 4122 variant digit for each random hex digit (its two high bits become 10).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


#: Random hex for the next task ids (32 digits each), read from the OS 256 ids at a time.
#: Taken with list.pop(), which is atomic: two threads never get the same digits.
_random: list[str] = []


def _forget_random() -> None:
    """A forked child must never reuse its parent's pending random digits (the same ids)."""
    _random.clear()


os.register_at_fork(after_in_child=_forget_random)


def new_task_id() -> str:
    """A random (version 4) UUID as text, like ``str(uuid.uuid4())`` at a fraction of its cost.

    The randomness comes from ``os.urandom``, as uuid4's does, fetched 4 KiB
    at a time (one system call per 256 ids); each digit serves one id only.
    """
    try:
        h = _random.pop()
    except IndexError:
        digits = os.urandom(4096).hex()
        _random.extend([digits[i : i + 32] for i in range(32, len(digits), 32)])
        h = digits[:32]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class Job(NamedTuple):
    """A checked, pickled submission, not yet recorded."""

    task_id: str
    name: str
    payload: bytes
    metadata: dict[str, Any] | None
    options: TaskOptions
    #: The caller chose ``task_id`` (another process may choose the same one at the same time).
    chosen_id: bool = False


def prepare(call: Call, options: TaskOptions, is_taken: Callable[[str], bool], max_size: int) -> Job:
    """Check and pickle a submission; raise for any bad argument, whatever the queue holds."""
    func, args, kwargs, task_id, metadata = call
    chosen_id = task_id is not None
    if task_id is None:
        task_id = new_task_id()
    elif not isinstance(task_id, str) or not task_id:
        raise ValueError(f"task_id must be a non-empty str, not {task_id!r}")
    elif is_taken(task_id):
        raise id_in_use(task_id)
    if not isinstance(options, TaskOptions):  # pragma: no cover - views always hold one
        raise TypeError(f"options must be a TaskOptions, not {options!r}")
    meta = check_metadata(metadata, task_id=task_id)
    if not callable(func):
        raise TypeError(f"Task {task_id!r}: {func!r} is not callable")
    name = func_name(func)
    try:
        payload = pickle.dumps((func, args, kwargs, options.memory_limit), PICKLE_PROTOCOL)
    except Exception as exc:
        raise UnpicklableJob(
            f"Task {task_id!r} ({name}) cannot be sent to a worker process: {type(exc).__name__}: {exc}. "
            "The function must be importable by name (a module-level def, not a lambda, closure or "
            "local function) and every argument must be picklable."
        ) from exc
    if len(payload) > max_size:
        raise MessageTooLarge(task_id, f"job ({name} and its arguments, pickled)", len(payload), max_size)
    if b"__main__" in payload:
        refuse_unimportable_main(f"Task {task_id!r} ({name})", (func, args, kwargs))
    return Job(task_id, name, payload, meta, options, chosen_id)


def prepare_initializer(
    initializer: Callable[..., object] | None, initargs: Any
) -> tuple[tuple[Any, ...], bytes | None]:
    """Check the initializer and its arguments; return them as a tuple and pickled (None: no initializer)."""
    # A str, bytes or dict is iterable, but never meant as the arguments one by one (initargs="x" lacks a comma).
    args: tuple[Any, ...] | None = None
    if not isinstance(initargs, str | bytes | bytearray | Mapping):
        try:
            args = tuple(initargs)
        except TypeError:
            pass
    if args is None:
        raise TypeError(
            f"initargs must be a tuple of arguments for the initializer, not {initargs!r}; "
            "for a single argument write initargs=(value,)"
        )
    initargs = args
    if initializer is None:
        return initargs, None
    if not callable(initializer):
        raise TypeError(f"initializer must be callable, not {initializer!r}")
    try:
        payload = pickle.dumps((initializer, initargs), PICKLE_PROTOCOL)
    except Exception as exc:
        raise UnpicklableJob(
            f"initializer {func_name(initializer)} or its initargs cannot be sent to worker processes: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if b"__main__" in payload:
        refuse_unimportable_main(f"initializer {func_name(initializer)}", (initializer, initargs))
    return initargs, payload


def id_in_use(task_id: str) -> ValueError:
    return ValueError(f"Task id {task_id!r} is already in use; pass a different task_id, or omit it to get a fresh one")


def func_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a job function."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__qualname__
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else str(name)


class _MainFinder(pickle.Pickler):
    """Pickles into the void, noting the first function or class defined in ``__main__``."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), PICKLE_PROTOCOL)
        self.found: str | None = None

    def reducer_override(self, obj: Any) -> Any:
        if self.found is None and isinstance(obj, type | types.FunctionType) and obj.__module__ == "__main__":
            self.found = obj.__qualname__
        return NotImplemented


@functools.cache
def _main_is_importable() -> bool:
    """Whether workers can import this process's main module (asked once: it never changes).

    Jobs defined in a main script are the common case, so this must not cost a
    stat and multiprocessing's preparation data on every submit.
    """
    ref = main_module_ref()
    return ref is not None and (ref[0] == "name" or os.path.isfile(ref[1]))


def refuse_unimportable_main(what: str, obj: object) -> None:
    """Raise UnpicklableJob if ``obj`` needs ``__main__`` and worker processes cannot import it.

    A worker finds a function defined in the main script by importing that
    script again. A program run as ``python -c``, from stdin, or typed into an
    interactive session has no file to import, so the worker would fail later
    with a cryptic ``AttributeError``/``FileNotFoundError``: say so now.
    """
    if _main_is_importable():
        return
    finder = _MainFinder()
    finder.dump(obj)
    if finder.found is None:
        return
    raise UnpicklableJob(
        f"{what} refers to __main__.{finder.found}, but worker processes cannot import this program's main "
        "module: it runs from 'python -c', from stdin or in an interactive session, and has no file they could "
        "import. Define the function (or class) in a module file and import it from there."
    )
