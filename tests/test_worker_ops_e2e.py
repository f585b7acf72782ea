"""Operating the worker in a pool: metrics, graceful drain, load-based routing, caps."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from transcriber.worker import OutageLogFilter

from .livekit_server import LiveKitServer, free_port
from .participants import CaptionListener, Speaker
from .test_worker_e2e import dispatch, speak, wait_transcriber
from .tone_stt import script_words, utterance_audio


def scrape(port: int) -> dict[str, float]:
    """Prometheus text format → {'name{labels}': value}."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for key, value in samples.items():
        base = key.split("{")[0]
        if base == name and all(w in key for w in wanted):
            total += value
    return total


async def test_metrics_endpoint_shows_the_counters_moving(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    port = free_port()
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name, TRANSCRIBER_METRICS_PORT=str(port))
    before = scrape(port)
    assert metric(before, "transcriber_active_tracks") == 0

    listener = await CaptionListener(livekit_server, room_name).join()
    alice = await Speaker(livekit_server, room_name, "alice").join()
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await worker.wait_tracks(1)
    await speak(alice, script_words(2, seed=5), tmp_path)
    await listener.wait_for(lambda: len(listener.finals("alice")) >= 2)
    await asyncio.sleep(1.0)

    during = scrape(port)
    assert metric(during, "transcriber_active_rooms") == 1
    assert metric(during, "transcriber_active_tracks") == 1
    assert metric(during, "transcriber_captions_published_total", kind="final") >= 2
    assert metric(during, "transcriber_captions_published_total", kind="interim") >= 2
    assert metric(during, "transcriber_audio_received_seconds_total") > 3
    sent = metric(during, "transcriber_stt_audio_sent_seconds_total", provider="tests.tone_stt:build")
    assert sent > 3
    assert metric(during, "transcriber_caption_latency_seconds_count", kind="final") >= 2
    assert metric(during, "transcriber_event_loop_lag_seconds_count") > 0

    await alice.leave()
    await asyncio.sleep(2.0)
    after = scrape(port)
    assert metric(after, "transcriber_active_tracks") == 0
    await listener.leave()


async def test_sigterm_mid_sentence_publishes_that_sentence_before_exiting(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str
) -> None:
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name, TRANSCRIBER_DRAIN_TIMEOUT="3")
    listener = await CaptionListener(livekit_server, room_name).join()
    alice = await Speaker(livekit_server, room_name, "alice").join()
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await worker.wait_tracks(1)

    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    audio = utterance_audio(words, pause=0.0)
    speaking = asyncio.create_task(alice.play_samples(audio))
    await listener.wait_for(lambda: any(not c.final for c in listener.of("alice")))
    os.kill(worker.process.pid, signal.SIGTERM)  # what a container runtime sends to PID 1
    while worker.process.poll() is None:
        await asyncio.sleep(0.05)
    exited = time.monotonic()
    await asyncio.sleep(0.5)  # captions sent before the exit are in flight at most this long
    speaking.cancel()

    finals = [c for c in listener.of("alice") if c.final]
    assert len(finals) == 1, listener.of("alice")
    said = finals[0].text.split()
    assert said == words[: len(said)] and len(said) >= 2, finals[0].text
    assert finals[0].received_at <= exited + 0.5
    assert "drain" in worker.log()
    await alice.leave()
    await listener.leave()


async def test_a_new_room_goes_to_the_worker_with_capacity(
    livekit_server: LiveKitServer, start_worker, agent_name: str
) -> None:
    caps = dict(TRANSCRIBER_AGENT_NAME=agent_name, TRANSCRIBER_MAX_TRACKS="1")
    full = start_worker(**caps)
    busy_room = f"busy-{agent_name}"
    alice = await Speaker(livekit_server, busy_room, "alice").join()
    bob = await Speaker(livekit_server, busy_room, "bob").join()
    await dispatch(livekit_server, agent_name, busy_room)
    await wait_transcriber(livekit_server, busy_room)
    deadline = time.monotonic() + 20
    while full.metric("transcriber_limit_reached_total") < 1:
        assert time.monotonic() < deadline, "the second track did not hit the worker cap"
        await asyncio.sleep(0.2)
    # the cap is met when the second track is published, maybe before the first is captioned
    await full.wait_tracks(1)
    await asyncio.sleep(3.0)  # the next load report marks this worker full

    spare = start_worker(**caps)
    rooms = [f"new-{i}-{agent_name}" for i in range(3)]
    for room in rooms:
        await dispatch(livekit_server, agent_name, room)
        await wait_transcriber(livekit_server, room)
    deadline = time.monotonic() + 10  # each room's job counts itself once it captions
    while spare.metric("transcriber_active_rooms") < len(rooms):
        assert time.monotonic() < deadline, "not all sent to the spare"
        await asyncio.sleep(0.2)
    assert full.metric("transcriber_active_rooms") == 1
    for who in (alice, bob):
        await who.leave()


async def test_rooms_dispatched_at_once_to_an_idle_worker_all_get_a_transcriber(
    livekit_server: LiveKitServer, start_worker, agent_name: str
) -> None:
    """As when several meetings start on the hour: LiveKit drops a dispatch the worker
    refuses when no other worker takes it."""
    start_worker(TRANSCRIBER_AGENT_NAME=agent_name)
    rooms = [f"on-the-hour-{i}-{agent_name}" for i in range(6)]
    speakers = [await Speaker(livekit_server, room, "alice").join() for room in rooms]
    await asyncio.gather(*(dispatch(livekit_server, agent_name, room) for room in rooms))
    await asyncio.gather(*(wait_transcriber(livekit_server, room) for room in rooms))
    for speaker in speakers:
        await speaker.leave()


def http_status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code


async def test_ready_only_once_registered_with_livekit(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    from .conftest import WorkerProcess, worker_env

    health, status = free_port(), free_port()
    unreachable = worker_env(
        livekit_server,
        LIVEKIT_URL=f"ws://127.0.0.1:{free_port()}",
        TRANSCRIBER_HTTP_PORT=str(health),
        TRANSCRIBER_METRICS_PORT=str(status),
    )
    worker = WorkerProcess(unreachable, tmp_path / "unreachable.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = http_status(f"http://127.0.0.1:{status}/ready")
                break
            except OSError:
                assert time.monotonic() < deadline, worker.log()[-2000:]
                await asyncio.sleep(0.2)
        assert http_status(f"http://127.0.0.1:{health}/") == 200  # alive, but:
        assert ready == 503
        await asyncio.sleep(2.0)
        assert http_status(f"http://127.0.0.1:{status}/ready") == 503
    finally:
        worker.stop()

    reachable = worker_env(livekit_server, TRANSCRIBER_METRICS_PORT=str(status))
    worker = WorkerProcess(reachable, tmp_path / "reachable.log")
    try:
        worker.wait_registered()
        assert http_status(f"http://127.0.0.1:{status}/ready") == 200
    finally:
        worker.stop()


async def test_an_unreachable_livekit_is_retried_with_one_line_until_it_answers(
    tmp_path: Path,
) -> None:
    from .conftest import WorkerProcess

    port = free_port()  # nothing listens there
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "LIVEKIT_URL": f"ws://127.0.0.1:{port}",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "not-used-while-unreachable-not-used",
        "TRANSCRIBER_STT_PROVIDER": "tests.tone_stt:build",
        "TRANSCRIBER_HTTP_PORT": "0",
        "TRANSCRIBER_METRICS_PORT": str(free_port()),
    }
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 60
        while worker.status("/ready") is None:  # up, and trying LiveKit
            assert worker.process.poll() is None, worker.log()[-2000:]
            assert time.monotonic() < deadline, worker.log()[-2000:]
            await asyncio.sleep(0.2)
        await asyncio.sleep(10.0)  # livekit-agents retries after 0, 2, 4 and 6 s
        assert worker.process.poll() is None  # still trying
        assert worker.log().count(OutageLogFilter.LOST) == 1, "one line per outage, not per retry"
        assert worker.status("/ready") == (503, "not registered with LiveKit yet")
    finally:
        worker.stop()


async def test_a_normal_stop_logs_no_error_and_leaves_no_temporary_directory(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    from .conftest import WorkerProcess, worker_env

    temp = tmp_path / "tmp"
    temp.mkdir()
    worker = WorkerProcess(worker_env(livekit_server, TMPDIR=str(temp)), tmp_path / "w.log")
    try:
        worker.wait_registered()
        await asyncio.sleep(2.0)  # the idle job processes are up
        os.killpg(worker.process.pid, signal.SIGTERM)  # systemd's default: the whole group
        worker.process.wait(30)
    finally:
        worker.stop()
    assert worker.process.returncode == 0
    errors = [line for line in worker.log().splitlines() if '"level": "ERROR"' in line]
    assert errors == []
    assert list(temp.glob("transcriber-metrics-*")) == []
