"""The Ray backend across machines, simulated: a head node and a second node on this machine.

Each node has one CPU, so two jobs at once land one on each node. The module
shares one cluster; the test that kills the second node runs last, and the
module ends by checking that no Ray process is left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio

from conftest import pid_gone, wait_status
from genro_tasks import TaskManager, TaskStatus, WorkerCrashed
from jobs import simple_task
from jobs_ray import announce_then_sleep
from ray_helpers import ray_manager

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (.ci/run does)")


class TwoNodes:
    def __init__(self, cluster: Any, second: Any) -> None:
        self.cluster = cluster
        self.second = second

    @property
    def second_id(self) -> str:
        node_id: str = self.second.node_id
        return node_id


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    import ray
    from ray.cluster_utils import Cluster

    from ray_helpers import assert_no_ray_left, ray_env

    temp_dir = str(tmp_path_factory.mktemp("ray"))
    with ray_env(temp_dir):
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "temp_dir": temp_dir, "include_dashboard": False},
        )
        try:
            second = cluster.add_node(num_cpus=1, temp_dir=temp_dir)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False)
            yield TwoNodes(cluster, second)
        finally:
            ray.shutdown()
            cluster.shutdown()  # type: ignore[no-untyped-call]
            assert_no_ray_left(temp_dir)


@pytest.fixture
async def cluster_tm(two_nodes: TwoNodes) -> AsyncIterator[TaskManager]:
    async with ray_manager() as tm:
        yield tm


async def one_per_node(tm: TaskManager) -> dict[str, tuple[str, int]]:
    """Start two sleeping jobs; return {node id: (task id, worker pid)} once both are RUNNING there."""
    ids = [tm.submit(announce_then_sleep, 60) for _ in range(2)]
    placed = {}
    for task_id in ids:
        await wait_status(tm, task_id, TaskStatus.RUNNING)
        with trio.fail_after(20):
            async for info in tm.watch(task_id):
                if info.progress_message:
                    break
        assert info.progress_message is not None
        assert info.worker_pid is not None
        placed[info.progress_message] = (task_id, info.worker_pid)
    return placed


async def test_jobs_land_on_both_nodes_and_cancel_works_on_either(cluster_tm: TaskManager, two_nodes: TwoNodes) -> None:
    assert cluster_tm.max_workers == 2  # the cluster's CPUs
    with trio.fail_after(60):
        placed = await one_per_node(cluster_tm)
        assert len(placed) == 2
        assert two_nodes.second_id in placed
        for task_id, pid in placed.values():
            assert await cluster_tm.cancel(task_id)
            assert pid_gone(pid)
            assert (await cluster_tm.info(task_id)).status is TaskStatus.CANCELLED
        assert await cluster_tm.run(simple_task, 4) == 8


async def test_a_node_killed_mid_job_fails_only_its_tasks(cluster_tm: TaskManager, two_nodes: TwoNodes) -> None:
    # Runs last in this module: the second node does not come back.
    with trio.fail_after(60):
        placed = await one_per_node(cluster_tm)
        on_second, _ = placed.pop(two_nodes.second_id)
        [(on_head, _)] = placed.values()
        await trio.to_thread.run_sync(lambda: two_nodes.cluster.remove_node(two_nodes.second, allow_graceful=False))
        with pytest.raises(WorkerCrashed):
            await cluster_tm.result(on_second)
        assert (await cluster_tm.info(on_head)).status is TaskStatus.RUNNING
        assert await cluster_tm.cancel(on_head)
        assert await cluster_tm.run(simple_task, 5) == 10  # the head still takes work
