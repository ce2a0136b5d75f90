"""genro-tasks: long-running background jobs for trio, in worker processes,
with precise status, progress, and hard cancellation.

Layers, top to bottom (docs/architecture.md draws the data flow):

* :mod:`._manager` — :class:`TaskManager`, the thin public facade: it checks
  every call (:mod:`._validate`, :mod:`._submission`, :mod:`._options` for
  ``tm.options(...)``), then delegates. It never changes a task's status.
* :mod:`._registry` — the task records, retention and counters
  (:class:`~._registry.TaskRegistry`, the seam a persistent store implements)
  and the change hub that feeds ``watch``, ``open_change_stream``,
  ``submit_wait`` and :mod:`genro_tasks.testing`.
* :mod:`._scheduler` — the queue (priority, then FIFO), deadlines, the task
  state machine and the scheduler's lifecycle. No processes, pids or pipes.
* :mod:`._backend` — the seam between the scheduler and what runs jobs
  (:class:`~._backend.ExecutionBackend` and the events it reports).
* :mod:`._process_backend` — the first backend: a pool of worker processes
  (:mod:`._worker_proc` is one worker's pipes, pidfd and kill;
  :mod:`._launch` starts one), the only decoder of worker messages, and the
  one kill path.
* :mod:`genro_tasks_worker` — what runs *inside* a worker: a stdlib-only loop
  that never imports trio, :func:`report_progress`, and the wire format both
  sides share (``_protocol``: named messages; ``_framing``: the one framer).
* :mod:`._many` — ``tm.map`` and ``tm.as_completed``: many tasks at once,
  lazily submitted, cancelled together.
* :mod:`._task`, :mod:`._watch` and :mod:`._errors` — the records, live views
  and exceptions users see.
* :mod:`genro_tasks.testing` — waits, process pids and a fake backend for tests.
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
from ._errors import TaskLost as TaskLost
from ._errors import TaskTimeout as TaskTimeout
from ._errors import UnpicklableJob as UnpicklableJob
from ._errors import UnpicklableResult as UnpicklableResult
from ._errors import WorkerCrashed as WorkerCrashed
from ._errors import WorkerInitError as WorkerInitError
from ._manager import TaskManager as TaskManager
from ._many import AsCompleted as AsCompleted
from ._many import TaskMap as TaskMap
from ._options import TaskOptions as TaskOptions
from ._options import TaskSubmitter as TaskSubmitter
from ._store import SQLiteStore as SQLiteStore
from ._task import GroupInfo as GroupInfo
from ._task import TaskInfo as TaskInfo
from ._task import TaskManagerStatistics as TaskManagerStatistics
from ._task import TaskStatus as TaskStatus
from ._watch import ChangeStream as ChangeStream
from ._watch import TaskWatcher as TaskWatcher

__version__ = "0.1.0"

# A library logs, the application decides where logs go.
_logging.getLogger("genro_tasks").addHandler(_logging.NullHandler())

__all__ = (
    "AsCompleted",
    "CancelRequested",
    "ChangeStream",
    "GroupInfo",
    "ManagerClosed",
    "MemoryLimitExceeded",
    "MessageTooLarge",
    "QueueFull",
    "RemoteError",
    "SQLiteStore",
    "SupervisorFailed",
    "TaskCancelled",
    "TaskInfo",
    "TaskLost",
    "TaskManager",
    "TaskManagerStatistics",
    "TaskMap",
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
