"""Job functions the tests send to worker processes (importable by name)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from genro_tasks_worker import report_progress


def simple_task(n: int) -> int:
    return n * 2


def slow_task(duration: float) -> str:
    time.sleep(duration)
    return "done"


def failing_task() -> None:
    raise ValueError("Task failed intentionally")


def echo(value: Any) -> Any:
    return value


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def sleep_forever() -> None:
    time.sleep(3600)


def getpid() -> int:
    return os.getpid()


def announce_and_sleep(seconds: float = 3600) -> None:
    """Report the worker pid as progress, then sleep (so tests can see it is running)."""
    report_progress(0.0, f"pid={os.getpid()}")
    time.sleep(seconds)


def spawn_child_and_sleep() -> None:
    """Start a grandchild process, report its pid, and sleep forever."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    report_progress(0.5, f"child={child.pid}")
    time.sleep(3600)


def chained_failure() -> None:
    try:
        empty: dict[str, int] = {}
        empty["missing"]
    except KeyError as exc:
        raise RuntimeError("outer failure") from exc


class CustomError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"code {code}: {reason}")
        self.code = code
        self.reason = reason


def raise_custom() -> None:
    raise CustomError(7, "custom init signature")


class UnpicklableError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()  # locks cannot be pickled

    def __reduce__(self) -> Any:
        raise TypeError("UnpicklableError refuses to be pickled")


def raise_unpicklable() -> None:
    raise UnpicklableError("this exception cannot cross processes")


def return_unpicklable() -> Any:
    return threading.Lock()


def exit_hard(code: int) -> None:
    os._exit(code)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(60)


def segfault() -> None:
    ctypes.string_at(0)


def trio_loaded() -> bool:
    return "trio" in sys.modules


def noisy(n: int) -> int:
    """Write protocol-looking garbage to stdout/stderr, then return normally."""
    for _ in range(n):
        print("\x0d\x00\x00\x00 not a frame \xff", flush=True)
        sys.stdout.buffer.write(bytes(range(256)))
        sys.stderr.write("stderr noise\n")
    sys.stdout.flush()
    os.write(1, b"\x0b" * 64)
    return n


def interrupt_self() -> str:
    """Send SIGINT to this worker's process group; a worker must ignore it."""
    os.killpg(os.getpgid(0), signal.SIGINT)
    time.sleep(0.2)
    return "survived"


def raise_system_exit() -> None:
    sys.exit(3)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def progress_steps(steps: int, delay: float) -> int:
    for i in range(steps):
        report_progress((i + 1) / steps, f"step {i + 1}/{steps}")
        time.sleep(delay)
    return steps


def progress_then_return() -> str:
    report_progress(0.25, "quarter")
    report_progress(None, "message only")  # keeps 0.25
    report_progress(0.5)  # keeps the message
    report_progress(1.0, "finished")  # last call, right before returning
    return "ok"


def progress_flood(n: int) -> int:
    for i in range(n):
        report_progress(i / n, "flooding")
    report_progress(1.0, "flood over")
    return n


def no_progress_loop(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return n


def progress_and_block(seconds: float) -> None:
    report_progress(0.1, "started")
    time.sleep(seconds)


def bad_progress(value: Any) -> None:
    report_progress(value)


_initialised: list[str] = []


def init_worker(tag: str) -> None:
    _initialised.append(tag)


def init_tag() -> list[str]:
    return list(_initialised)


def init_unless_marker(marker: str) -> None:
    if os.path.exists(marker):
        raise RuntimeError(f"refusing to start: {marker} exists")


def init_always_fails() -> None:
    raise ValueError("database unreachable")


def cleanup_on_cancel(path: str) -> str:
    """Create a temp file, and remove it however the job ends."""
    with open(path, "w") as f:
        f.write("partial")
    try:
        report_progress(0.0, "file created")
        time.sleep(3600)
        return "finished"
    finally:
        os.remove(path)


def ignore_cancel(seconds: float) -> str:
    from genro_tasks_worker import CancelRequested

    deadline = time.monotonic() + seconds
    while True:
        try:
            report_progress(0.0, "stubborn")
            while time.monotonic() < deadline:
                time.sleep(deadline - time.monotonic())
            return "ignored"
        except CancelRequested:
            continue


def return_on_cancel() -> str:
    from genro_tasks_worker import CancelRequested

    try:
        report_progress(0.0, "waiting")
        time.sleep(3600)
    except CancelRequested:
        return "partial result"
    return "full result"


def allocate(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    return len(block)


async def async_job(n: int, delay: float) -> int:
    import trio

    for i in range(n):
        await trio.sleep(delay)
        report_progress((i + 1) / n, f"async step {i + 1}")
    return n * 10


async def async_cleanup(path: str) -> str:
    import trio

    with open(path, "w") as f:
        f.write("partial")
    try:
        report_progress(0.0, "file created")
        await trio.sleep(3600)
        return "finished"
    finally:
        os.remove(path)


async def async_trio_loaded() -> bool:
    return "trio" in sys.modules


def _result_fd() -> int:
    from genro_tasks_worker import _loop

    assert _loop._SENDER is not None
    return _loop._SENDER.fd


def write_truncated_frame() -> None:
    """Die half way through sending a result frame."""
    from genro_tasks_worker import _progress
    from genro_tasks_worker._protocol import DONE_OK, pack_header

    assert _progress._channel is not None
    seq = _progress._channel.seq  # a frame about this very task (the parent refuses others at the header)
    os.write(_result_fd(), pack_header(DONE_OK, seq, 1 << 20) + b"x" * 100)
    os._exit(9)


def write_corrupt_frame() -> None:
    """Send a frame header no worker may send, then keep running."""
    from genro_tasks_worker._protocol import pack_header

    os.write(_result_fd(), pack_header(99, 0, 5) + b"hello")
    time.sleep(60)


def write_frame_for_other_task() -> None:
    from genro_tasks_worker._protocol import DONE_OK, pack_header

    os.write(_result_fd(), pack_header(DONE_OK, 123456789, 0))
    time.sleep(60)


def close_std_fds() -> str:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in (0, 1, 2):
        os.close(fd)
    return "closed"


def print_something() -> str:
    print("still printing")
    sys.stderr.write("still writing to stderr\n")
    return "printed"


def leave_children_behind() -> list[int]:
    """Start a child and a double-forked grandchild, then return without waiting."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # first fork: start a daemon-like grandchild and exit at once
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=False)
        os.write(w, str(grandchild.pid).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(w)
    grandchild_pid = int(os.read(r, 64))
    os.close(r)
    return [child.pid, grandchild_pid]


def exit_zero() -> None:
    sys.exit(0)


class CustomBaseException(BaseException):
    pass


def raise_base_exception() -> None:
    raise CustomBaseException("not an Exception")


def big_result(megabytes: int) -> bytes:
    return b"r" * (megabytes * 1024 * 1024)


def return_bytes() -> bytes:
    return b"\x00binary"


def hostile_progress(text: str, seconds: float) -> str:
    report_progress(0.5, text)
    time.sleep(seconds)
    return text


def write_huge_frame_header() -> None:
    """Claim a result body far larger than any memory, then keep running."""
    from genro_tasks_worker._protocol import DONE_OK, pack_header

    os.write(_result_fd(), pack_header(DONE_OK, 0, 1 << 39))
    time.sleep(60)


def slow_init(seconds: float) -> None:
    time.sleep(seconds)
