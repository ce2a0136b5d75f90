"""The trio run a manager belongs to: its clock, and the check that calls come from it."""

from __future__ import annotations

import trio


class RunOwner:
    """Remembers the trio run that started a manager (see :meth:`claim`)."""

    def __init__(self) -> None:
        #: The owning run's token (None before ``startup()``).
        self.token: trio.lowlevel.TrioToken | None = None
        self._clock: trio.abc.Clock | None = None

    def claim(self) -> None:
        """Belong to the current trio run (called by ``startup()``)."""
        self.token = trio.lowlevel.current_trio_token()
        self._clock = trio.lowlevel.current_clock()

    def now(self) -> float:
        """The time on the owning run's clock, readable without a running trio loop.

        It is the clock the scheduler's deadlines use; 0.0 before ``startup()``.
        """
        clock = self._clock
        return clock.current_time() if clock is not None else 0.0

    def refuse(self, call: str, *, stopped: bool) -> None:
        """Refuse ``call``, made outside the owning run (the caller checked :attr:`token`), unless ``stopped``.

        The registry and the scheduler belong to one trio run; another thread
        touching them would race with it. Once the scheduler has stopped
        (``stopped``) nothing changes any more, so any thread may call.

        Raises:
            RuntimeError: Called from another thread or another trio run.
        """
        if stopped:
            return
        name = call.rsplit(".", 1)[-1]
        raise RuntimeError(
            f"{call}() was called outside the trio run that owns this manager (from another thread "
            f"or another trio run); call it from that run's thread, e.g. from a worker thread: "
            f"'trio.from_thread.run_sync(functools.partial(tm.{name}, ...))'"
        )
