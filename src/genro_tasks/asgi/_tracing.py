"""OpenTelemetry tracing of tasks (optional: ``pip install 'genro-tasks[otel]'``, the API only).

One span per task, from submit to its end, with the queue wait and the run
as events, parented on the trace that submitted it: :func:`trace_metadata`
puts the current trace context (W3C ``traceparent``) into the task's
metadata, and :class:`TaskTracer` reads it back when the task ends. Spans are
built from the task's own timestamps when its terminal state is observed
(through ``open_change_stream``), so nothing is held open meanwhile.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Status, StatusCode

from .._manager import TaskManager
from .._task import TaskInfo, TaskStatus
from ._outcome import outcome

_CARRIER_KEYS = ("traceparent", "tracestate")


def trace_metadata(metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``metadata`` carrying the current trace context (pass it to ``submit``)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {**(metadata or {}), **carrier}


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


class TaskTracer:
    """Turns each finished task into one span.

    Args:
        manager: The TaskManager to observe.
        tracer_provider: Where spans go (default: the global provider).
    """

    def __init__(self, manager: TaskManager, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.manager = manager
        self.tracer = trace.get_tracer("genro_tasks", tracer_provider=tracer_provider)

    def record(self, info: TaskInfo) -> None:
        """Emit the span of a terminal task (other snapshots are ignored)."""
        if not info.status.is_terminal or info.completed_at is None:
            return
        carrier = {k: str(info.metadata[k]) for k in _CARRIER_KEYS if isinstance(info.metadata.get(k), str)}
        parent = propagate.extract(carrier) if carrier else None
        kind = outcome(info)
        span = self.tracer.start_span(
            f"task {info.name}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            start_time=_ns(info.created_at),
            attributes={
                "genro_tasks.task_id": info.task_id,
                "genro_tasks.job": info.name,
                "genro_tasks.priority": info.priority,
                "genro_tasks.outcome": kind,
            },
        )
        if info.started_at is not None:
            wait = (info.started_at - info.created_at).total_seconds()
            span.add_event("started", {"genro_tasks.queue_wait_s": wait}, timestamp=_ns(info.started_at))
            run = (info.completed_at - info.started_at).total_seconds()
            span.add_event(kind, {"genro_tasks.run_s": run}, timestamp=_ns(info.completed_at))
        else:
            span.add_event(kind, timestamp=_ns(info.completed_at))
        if info.worker_pid is not None:
            span.set_attribute("genro_tasks.worker_pid", info.worker_pid)
        if info.status is TaskStatus.FAILED:
            span.set_status(Status(StatusCode.ERROR, (info.error or "").split("\n", 1)[0]))
        span.end(end_time=_ns(info.completed_at))

    async def run(self) -> None:
        """Trace every task that ends until the manager shuts down.

        **Cancellation:** Stops tracing; nothing else is affected.
        """
        async with self.manager.open_change_stream(max_pending=1_000_000) as changes:
            async for info in changes:
                self.record(info)
