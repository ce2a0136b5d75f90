"""genro-tasks: long-running background jobs for trio, in worker processes,
with precise status, progress, and hard cancellation.

Layers, top to bottom:

* :mod:`._manager` — :class:`TaskManager`, the public facade: the registry of
  task records and every public call.
* :mod:`._supervisor` — the one trio task that owns the worker processes,
  the dispatch queue and every state transition (and the single kill path).
* :mod:`._worker_proc` — the parent's handle of one worker process: its
  framed, non-blocking pipes and its process sentinel.
* :mod:`genro_tasks_worker` — what runs *inside* a worker: a stdlib-only loop
  that never imports trio, plus :func:`report_progress`; and the wire format
  both sides share (``_protocol``: named messages; ``_framing``: the framer).
* :mod:`._task`, :mod:`._watch` and :mod:`._errors` — the records, live views
  (``watch``, ``open_change_stream``) and exceptions users see.
* :mod:`._options` and :mod:`._validate` — per-task options
  (``tm.options(...)``, kept apart from the job's own keywords) and the
  argument checks every public call shares.
* :mod:`genro_tasks.asgi` — lifespan integration, JSON/SSE API and dashboard
  for ASGI applications (imported separately; no web framework needed).
"""

import logging as _logging

from genro_tasks_worker import CancelRequested as CancelRequested
from genro_tasks_worker import report_progress as report_progress

from ._errors import ManagerClosed as ManagerClosed
from ._errors import MemoryLimitExceeded as MemoryLimitExceeded
from ._errors import MessageTooLarge as MessageTooLarge
from ._errors import QueueFull as QueueFull
from ._errors import RemoteError as RemoteError
from ._errors import SupervisorFailed as SupervisorFailed
from ._errors import TaskCancelled as TaskCancelled
from ._errors import TaskTimeout as TaskTimeout
from ._errors import UnpicklableJob as UnpicklableJob
from ._errors import UnpicklableResult as UnpicklableResult
from ._errors import WorkerCrashed as WorkerCrashed
from ._errors import WorkerInitError as WorkerInitError
from ._manager import TaskManager as TaskManager
from ._options import TaskOptions as TaskOptions
from ._options import TaskSubmitter as TaskSubmitter
from ._task import TaskInfo as TaskInfo
from ._task import TaskManagerStatistics as TaskManagerStatistics
from ._task import TaskStatus as TaskStatus
from ._watch import ChangeStream as ChangeStream
from ._watch import TaskWatcher as TaskWatcher

__version__ = "0.1.0"

# A library logs, the application decides where logs go.
_logging.getLogger("genro_tasks").addHandler(_logging.NullHandler())

__all__ = (
    "CancelRequested",
    "ChangeStream",
    "ManagerClosed",
    "MemoryLimitExceeded",
    "MessageTooLarge",
    "QueueFull",
    "RemoteError",
    "SupervisorFailed",
    "TaskCancelled",
    "TaskInfo",
    "TaskManager",
    "TaskManagerStatistics",
    "TaskOptions",
    "TaskStatus",
    "TaskSubmitter",
    "TaskTimeout",
    "TaskWatcher",
    "UnpicklableJob",
    "UnpicklableResult",
    "WorkerCrashed",
    "WorkerInitError",
    "report_progress",
)
