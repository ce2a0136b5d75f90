"""Starting a worker process through multiprocessing, without touching its global state.

Two things set our workers apart from ordinary ``multiprocessing.Process``
children, and both are done here with explicit classes instead of patching
multiprocessing for the duration of a start:

* **The main module is left to the worker.** multiprocessing tells every
  new process to import the parent's main module before anything else, which
  costs each worker the application's whole import time. Our launchers send
  the usual preparation data *without* the main module's entry; the worker
  imports it lazily, only if a job needs it (see
  ``genro_tasks_worker._main_module``), so a worker starts in milliseconds.
* **A daemonic process may start workers** (a hypercorn worker, for example).
  ``Process.start()`` refuses because a daemon is killed at exit without
  reaping its children, which would orphan them. Ours cannot be orphaned:
  each one watches a pipe only this process holds open and kills itself, and
  its process group, the moment this process is gone. For the same reason
  they are not registered in multiprocessing's list of children, so an
  interpreter exiting with a manager still running is never held up joining
  them.

:func:`start_process` blocks for a few milliseconds (longer for ``spawn``),
so the backend calls it in a thread.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from multiprocessing import forkserver, popen_forkserver, popen_spawn_posix, reduction, resource_tracker, spawn
from multiprocessing import util as _util
from multiprocessing.context import BaseContext, set_spawning_popen
from typing import Any

#: multiprocessing's helpers that its type stubs do not describe.
util: Any = _util

_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")


def main_module_ref() -> tuple[str, str] | None:
    """Where this process's main module is, as multiprocessing would tell a child."""
    data = spawn.get_preparation_data("genro-tasks-worker")
    if "init_main_from_path" in data:
        return ("path", data["init_main_from_path"])
    if "init_main_from_name" in data:
        return ("name", data["init_main_from_name"])
    return None


def _setup_bytes(popen: Any, process_obj: Any) -> io.BytesIO:
    """The bytes a new process reads first: preparation data without the main module, then the process."""
    data = spawn.get_preparation_data(process_obj._name)
    for key in _MAIN_KEYS:
        data.pop(key, None)
    out = io.BytesIO()
    set_spawning_popen(popen)  # lets pickled descriptors be handed to this child
    try:
        reduction.dump(data, out)
        reduction.dump(process_obj, out)
    finally:
        set_spawning_popen(None)
    return out


class _ForkserverPopen(popen_forkserver.Popen):
    _fds: list[int]

    def _launch(self, process_obj: Any) -> None:
        setup = _setup_bytes(self, process_obj)
        # The forkserver forks the child and hands us its status pipe and its setup pipe.
        self.sentinel, setup_w = forkserver.connect_to_new_process(self._fds)
        # A copy of the setup pipe stays open here: the child sees this process die through it.
        parent_end = os.dup(setup_w)
        self.finalizer = util.Finalize(self, util.close_fds, (parent_end, self.sentinel))
        with open(setup_w, "wb", closefd=True) as pipe:
            pipe.write(setup.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _SpawnPopen(popen_spawn_posix.Popen):
    _fds: list[int]

    def _launch(self, process_obj: Any) -> None:
        tracker_fd: Any = resource_tracker.getfd()
        self._fds.append(tracker_fd)
        setup = _setup_bytes(self, process_obj)
        status_r, status_w = os.pipe()  # the child holds status_w: EOF here means it exited
        setup_r, setup_w = os.pipe()
        try:
            self._fds.extend([setup_r, status_w])
            command = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=setup_r)
            self.pid = util.spawnv_passfds(spawn.get_executable(), command, self._fds)
            self.sentinel = status_r
            with open(setup_w, "wb", closefd=False) as pipe:
                pipe.write(setup.getbuffer())
        finally:
            self.finalizer = util.Finalize(self, util.close_fds, [status_r, setup_w])
            os.close(setup_r)
            os.close(status_w)


def start_process(ctx: BaseContext, target: Any, args: tuple[Any, ...], name: str) -> Any:
    """Start ``target(*args)`` in a new process of ``ctx``'s start method; return its Process.

    Blocks until the child exists (a few milliseconds with forkserver).
    Raises what starting a process raises (OSError, for example).
    """
    process: Any = ctx.Process(target=target, args=args, name=name, daemon=False)  # type: ignore[attr-defined]
    # What Process.start() does, minus its refusal in daemons and its registry of children (see above).
    # The Process itself stays multiprocessing's class: the child unpickles it without importing us.
    launcher = _ForkserverPopen if ctx.get_start_method() == "forkserver" else _SpawnPopen
    process._popen = launcher(process)
    process._sentinel = process._popen.sentinel
    del process._target, process._args, process._kwargs  # as start() does: no reference cycle
    return process


def default_context(start_method: str) -> BaseContext:
    """Return the multiprocessing context for ``start_method`` (forkserver or spawn)."""
    if start_method not in ("forkserver", "spawn"):
        raise ValueError(
            f"start_method must be 'forkserver' or 'spawn', not {start_method!r}: 'fork' would copy the "
            "parent's trio state into every worker"
        )
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(["__main__", "genro_tasks_worker._loop"])
    return ctx
