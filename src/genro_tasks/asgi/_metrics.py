"""Prometheus metrics for a TaskManager (optional: ``pip install 'genro-tasks[metrics]'``).

Live values (queue depth by priority, running tasks, workers, restarts,
crashes, backpressure rejections, tasks retained) are read from the manager
at scrape time. Outcomes by kind and the run-time and queue-wait histograms
are derived from each task's terminal :class:`TaskInfo`, observed through
``open_change_stream`` by :meth:`TaskMetrics.run` (which
:class:`TaskManagerLifespan` runs for you with ``metrics=True``). Queue wait
(``started_at - created_at``) means something only because RUNNING is set
when a worker really starts the job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._manager import TaskManager
from .._task import TaskInfo, TaskStatus
from ._outcome import OUTCOMES, outcome

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class TaskMetrics(Collector):
    """Prometheus metrics of one manager, in a registry of their own.

    Args:
        manager: The TaskManager to observe.
    """

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager
        self.registry = CollectorRegistry(auto_describe=False)
        self._outcomes: Counter[str] = Counter()
        self._queue_wait_seen: set[str] = set()
        self.run_seconds = Histogram(
            "genro_tasks_run_seconds",
            "Seconds from RUNNING to the end, per finished task that ran",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "genro_tasks_queue_wait_seconds",
            "Seconds from submit to RUNNING (a worker really started the job)",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)

    def observe(self, info: TaskInfo) -> None:
        """Account for one change of one task (each task's queue wait and end once)."""
        if info.started_at is not None and info.task_id not in self._queue_wait_seen:
            self._queue_wait_seen.add(info.task_id)
            self.queue_wait_seconds.observe((info.started_at - info.created_at).total_seconds())
        if info.status.is_terminal:
            self._queue_wait_seen.discard(info.task_id)
            self._outcomes[outcome(info)] += 1
            if info.started_at is not None and info.completed_at is not None:
                self.run_seconds.observe((info.completed_at - info.started_at).total_seconds())

    async def run(self) -> None:
        """Observe every task's changes until the manager shuts down.

        **Cancellation:** Stops observing; nothing else is affected.
        """
        async with self.manager.open_change_stream(max_pending=1_000_000) as changes:
            async for info in changes:
                self.observe(info)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return bytes(generate_latest(self.registry))

    def collect(self) -> Iterator[Metric]:
        """The live values (prometheus_client calls this at each scrape)."""
        tm = self.manager
        stats = tm.statistics()
        depth = GaugeMetricFamily(
            "genro_tasks_queue_depth", "Tasks PENDING (queued or handed to a worker), by priority", labels=["priority"]
        )
        pending = TaskStatus.PENDING  # from the records: no snapshot of every queued task per scrape
        by_priority = Counter(rec.priority for rec in tm._kept_records() if rec.status is pending)
        for priority, count in sorted(by_priority.items()):
            depth.add_metric([str(priority)], count)
        yield depth
        yield GaugeMetricFamily("genro_tasks_running", "Tasks RUNNING now", value=stats.tasks_running)
        yield GaugeMetricFamily(
            "genro_tasks_retained", "Task records kept (retention limits)", value=stats.tasks_tracked
        )
        workers = GaugeMetricFamily("genro_tasks_workers", "Worker processes by state", labels=["state"])
        workers.add_metric(["idle"], stats.workers_idle)
        workers.add_metric(["busy"], stats.workers_busy)
        yield workers
        finished = CounterMetricFamily("genro_tasks_finished", "Tasks finished, by outcome", labels=["outcome"])
        for kind in OUTCOMES:
            finished.add_metric([kind], self._outcomes[kind])
        yield finished
        yield CounterMetricFamily(
            "genro_tasks_worker_restarts", "Workers started to replace one that exited", value=stats.worker_restarts
        )
        yield CounterMetricFamily(
            "genro_tasks_worker_crashes", "Workers that died without being asked to", value=stats.worker_crashes
        )
        yield CounterMetricFamily(
            "genro_tasks_rejected", "Submits refused because max_queued tasks were waiting", value=stats.tasks_rejected
        )
