"""Job functions for the wire-format tests (importable by name by the workers)."""

from __future__ import annotations

import os
import time

from genro_tasks_worker import report_progress


def _own_seq() -> int:
    """The sequence number of the task this worker runs (what its frames must name)."""
    from genro_tasks_worker import _progress

    assert _progress._channel is not None
    return _progress._channel.seq


def _raw_write(data: bytes) -> None:
    from genro_tasks_worker import _loop

    assert _loop._SENDER is not None
    os.write(_loop._SENDER.fd, data)


def claim_huge_result(claim: int, then_exit: bool) -> None:
    """Send a result header for this task claiming ``claim`` bytes, then only 100 of them.

    Then either keep running (the parent must not wait for the rest) or exit
    with code 9 half way through the frame.
    """
    from genro_tasks_worker._protocol import DONE_OK, pack_header

    _raw_write(pack_header(DONE_OK, _own_seq(), claim) + b"x" * 100)
    if then_exit:
        os._exit(9)
    time.sleep(60)


def claim_frame_for_other_task(claim: int) -> None:
    """Send a result header about a task this worker does not run, claiming ``claim`` bytes."""
    from genro_tasks_worker._protocol import DONE_OK, pack_header

    _raw_write(pack_header(DONE_OK, _own_seq() + 1000, claim) + b"x" * 100)
    time.sleep(60)


def return_bytes(size: int) -> bytes:
    return b"x" * size


def raise_huge_error(size: int) -> None:
    raise ValueError("x" * size)


def report_huge_progress(size: int) -> str:
    """Report a progress message of ``size`` characters; return the error it raised."""
    try:
        report_progress(0.5, "x" * size)
    except ValueError as exc:
        return str(exc)
    return "accepted"


def worker_pid() -> int:
    return os.getpid()


def blob_size(blob: bytes) -> int:
    return len(blob)
