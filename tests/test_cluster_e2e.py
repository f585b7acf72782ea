"""A two-node LiveKit cluster (two livekit-server processes sharing one redis-server):
dedup across nodes, speakers and listeners on different nodes, and the node hosting a
meeting dying under it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import WorkerProcess, worker_env
from .livekit_server import LiveKitServer, LoadBalancer, RedisServer
from .participants import CaptionListener, Speaker
from .test_failures_e2e import (
    GAPS,
    Outage,
    Talk,
    assert_words_outside_outages_arrive,
    next_caption_after,
)
from .test_worker_e2e import dispatch, transcribers_in
from transcriber.room_lease import lease_lapsed


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[LiveKitServer]]:
    nodes = [
        LiveKitServer.start(tmp_path / f"node-{i}.log", redis=redis_server) for i in range(2)
    ]
    for i, node in enumerate(nodes):
        node.log_path = tmp_path / f"node-{i}.log"  # type: ignore[attr-defined]
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


def hosting_node(cluster: list[LiveKitServer], room: str) -> LiveKitServer:
    """The node running the room (its media and participants): only it logs their
    sessions. Used to choose which node to kill, never to wait on."""
    for node in cluster:
        log = node.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
        if "participant active" in log and room in log:
            return node
    raise AssertionError("no node hosts the room")


async def rejoin(
    survivor: LiveKitServer, room: str, timeout: float = 60
) -> tuple[Speaker, CaptionListener, float]:
    """The participants come back through the live node, as their clients do through a
    load balancer; the cluster routes the room to the dead node for a few seconds.
    Returns them and when the first of them was back in the room."""
    deadline = time.monotonic() + timeout
    while True:
        alice, listener = Speaker(survivor, room, "alice"), CaptionListener(survivor, room)
        try:
            await listener.join()
            first_back = time.monotonic()
            await alice.join()
            return alice, listener, first_back
        except Exception:
            assert time.monotonic() < deadline, "could not rejoin the room"
            await asyncio.sleep(1.0)


async def test_the_node_hosting_a_meeting_dies_and_captions_resume_on_the_other(
    cluster: list[LiveKitServer], redis_server: RedisServer, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    workers = pool(cluster, redis_server, agent_name, tmp_path)
    try:
        alice = await Speaker(cluster[0], room_name, "alice").join()
        listener = await CaptionListener(cluster[1], room_name).join()
        await dispatch(cluster[0], agent_name, room_name)
        talk = Talk(alice, tmp_path)
        talk.start(seed=22)
        await next_caption_after(listener, "alice", 0.0, timeout=40)
        doomed = hosting_node(cluster, room_name)
        survivor = next(node for node in cluster if node is not doomed)
        await talk.stop()

        killed = time.monotonic()
        doomed.kill()
        for who in (alice, listener):
            await asyncio.wait_for(who.room.disconnect(), 10)
        alice, listener, back = await rejoin(survivor, room_name)
        (tmp_path / "after").mkdir()
        talk = Talk(alice, tmp_path / "after")
        talk.start(seed=23)
        resumed = await next_caption_after(listener, "alice", back, timeout=40)
        GAPS.setdefault("node death, from the first participant's return", []).append(
            round(resumed - back, 2)
        )
        print(
            f"\nnode death: rejoined {back - killed:.1f} s after the kill, "
            f"captions {resumed - back:.2f} s after that"
        )
        assert resumed - back <= 15.0
        await listener.wait_for(lambda: sum(u.start > resumed for u in talk.said) >= 2, 20)
        await talk.stop()
        await asyncio.sleep(2.0)
        live = [p for p in await transcribers_in(survivor, room_name) if not lease_lapsed(p)]
        assert len(live) == 1, live
        outage = Outage(at=killed, resumed=resumed)
        assert_words_outside_outages_arrive(listener, "alice", talk.said, [outage])
        await alice.leave()
        await listener.leave()
    finally:
        for worker in workers:
            worker.stop()


async def test_a_worker_behind_a_load_balancer_comes_back_through_the_live_node(
    cluster: list[LiveKitServer], redis_server: RedisServer, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    doomed, survivor = cluster
    balancer = LoadBalancer([doomed.port, survivor.port]).start()
    env = worker_env(
        doomed,
        LIVEKIT_URL=balancer.url,
        TRANSCRIBER_AGENT_NAME=agent_name,
        TRANSCRIBER_REDIS_URL=redis_server.url,
    )
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.wait_registered()  # through the first node
        killed = time.monotonic()
        doomed.kill()
        await asyncio.sleep(1.0)
        deadline = time.monotonic() + 30
        while not worker.registered():  # again, through the balancer, now to the live node
            assert time.monotonic() < deadline, worker.log()[-3000:]
            await asyncio.sleep(0.1)
        print(f"\nworker registered again {time.monotonic() - killed:.1f} s after its node died")

        alice = await Speaker(survivor, room_name, "alice").join()
        listener = await CaptionListener(survivor, room_name).join()
        await dispatch(survivor, agent_name, room_name)
        talk = Talk(alice, tmp_path)
        talk.start(seed=24)
        await next_caption_after(listener, "alice", 0.0, timeout=40)
        await talk.stop()
        await alice.leave()
        await listener.leave()
    finally:
        worker.stop()
        balancer.stop()
