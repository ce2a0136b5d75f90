"""Child-side runtime of genro-tasks: what runs inside a worker process.

This package is stdlib-only on purpose and never imports trio, so worker
processes start light. It holds the worker loop (:mod:`._loop`), the wire
format the parent shares (:mod:`._protocol`: named messages, their encoding,
``max_message_size``; :mod:`._framing`: the one incremental frame parser) and
:func:`report_progress`, which jobs call.

Job modules that want to keep their workers free of trio can import
``report_progress`` from here; ``genro_tasks.report_progress`` is the same
function.
"""

from ._progress import report_progress as report_progress
from ._protocol import CancelRequested as CancelRequested

CancelRequested.__module__ = __name__  # its public home, in messages and pickles

__all__ = ("CancelRequested", "report_progress")
