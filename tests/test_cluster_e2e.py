"""A two-node LiveKit cluster (two livekit-server processes sharing one redis-server):
dedup across nodes, speakers and listeners on different nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import WorkerProcess, worker_env
from .livekit_server import LiveKitServer, RedisServer
from .participants import CaptionListener, Speaker
from .test_failures_e2e import Talk, next_caption_after
from .test_worker_e2e import dispatch, transcribers_in


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[LiveKitServer]]:
    nodes = [
        LiveKitServer.start(tmp_path / f"node-{i}.log", redis=redis_server) for i in range(2)
    ]
    yield nodes
    for node in nodes:
        if node.process.poll() is None:
            node.stop()


def pool(nodes: list[LiveKitServer], redis: RedisServer, agent_name: str, tmp_path: Path) -> list[WorkerProcess]:
    """One worker per node, each with that node's URL."""
    workers = [
        WorkerProcess(
            worker_env(node, TRANSCRIBER_AGENT_NAME=agent_name, TRANSCRIBER_REDIS_URL=redis.url),
            tmp_path / f"worker-{i}.log",
        )
        for i, node in enumerate(nodes)
    ]
    for worker in workers:
        worker.wait_registered()
    return workers


async def test_ten_dispatches_over_both_nodes_give_one_transcriber_heard_across_nodes(
    cluster: list[LiveKitServer], redis_server: RedisServer, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    workers = pool(cluster, redis_server, agent_name, tmp_path)
    try:
        a, b = cluster
        alice = await Speaker(a, room_name, "alice").join()
        listener = await CaptionListener(b, room_name).join()
        await asyncio.gather(*(dispatch(cluster[i % 2], agent_name, room_name) for i in range(10)))
        talk = Talk(alice, tmp_path)
        talk.start(seed=21)
        await next_caption_after(listener, "alice", 0.0, timeout=40)
        await asyncio.sleep(4.0)  # every dispatched job has been decided and settled
        await talk.stop()
        await asyncio.sleep(2.0)
        for node in cluster:
            assert len(await transcribers_in(node, room_name)) == 1
        finals = listener.finals("alice")
        assert len(finals) == len(set(finals)), f"a caption came twice: {finals}"
        await alice.leave()
        await listener.leave()
    finally:
        for worker in workers:
            worker.stop()
