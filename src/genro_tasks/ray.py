"""Run a TaskManager's jobs on a Ray cluster (the optional extra ``genro-tasks[ray]``).

Example::

    from genro_tasks import TaskManager
    from genro_tasks.ray import RayBackend

    async with TaskManager(backend=RayBackend(address="auto")) as tm:
        task_id = tm.submit(export_report, 123)

Importing this module imports ray; ``import genro_tasks`` never does.
"""

from ._ray_backend import RayBackend as RayBackend

RayBackend.__module__ = __name__

__all__ = ("RayBackend",)
