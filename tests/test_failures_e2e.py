"""Captions come back after a transcriber dies or freezes: real LiveKit server, workers as
subprocesses, a speaker talking the whole time and a listener timing the gaps."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from livekit import api
from prometheus_client.mmap_dict import MmapedDict

from .conftest import WorkerProcess
from .livekit_server import LiveKitServer, RedisServer
from .participants import CaptionListener, Speaker
from .test_worker_e2e import dispatch, transcribers_in
from .tone_stt import script_words, utterance_audio, write_wav

GAPS: dict[str, list[float]] = {}
"""Seconds without captions per failure, for the closing numbers (printed with -s)."""


def _samples(path: Path, name: str) -> float:
    total = 0.0
    for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
        if json.loads(key)[0] == name:
            total += value
    return total


def captioning_pids(metrics_dir: Path) -> list[int]:
    """Job processes captioning a room, from the worker's multiprocess metrics files."""
    pids = []
    for path in metrics_dir.glob("gauge_livesum_*.db"):
        if _samples(path, "transcriber_active_rooms") >= 1:
            pids.append(int(path.stem.rsplit("_", 1)[1]))
    return pids


def published_by(metrics_dir: Path, pid: int) -> float:
    path = metrics_dir / f"counter_{pid}.db"
    return _samples(path, "transcriber_captions_published") if path.exists() else 0.0


@dataclass
class Utterance:
    words: list[str]
    start: float
    end: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass
class Talk:
    """A speaker saying distinct utterances back to back until stopped."""

    speaker: Speaker
    tmp_path: Path
    said: list[Utterance] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    def start(self, seed: int) -> None:
        self._task = asyncio.create_task(self._run(script_words(200, seed=seed)))

    async def _run(self, script: list[list[str]]) -> None:
        for i, words in enumerate(script):
            if self._stopping:
                return
            wav = write_wav(self.tmp_path / f"talk-{i}.wav", utterance_audio(words, pause=0.8))
            utterance = Utterance(words, start=time.monotonic())
            self.said.append(utterance)
            await self.speaker.play(wav)
            utterance.end = time.monotonic()

    async def stop(self) -> None:
        """After the utterance being said: every one listed has been said whole."""
        assert self._task is not None
        self._stopping = True
        await asyncio.wait_for(self._task, 10)


@dataclass
class Outage:
    at: float
    resumed: float = 0.0


KILLS = 5
"""Deaths per test, for a p95 of the time without captions."""

IN_FLIGHT = 0.3
"""Seconds after a death within which a caption received was sent before it."""


async def next_caption_after(listener: CaptionListener, speaker: str, after: float, timeout: float = 30) -> float:
    await listener.wait_for(
        lambda: any(c.received_at > after for c in listener.of(speaker)), timeout
    )
    return min(c.received_at for c in listener.of(speaker) if c.received_at > after)


def assert_words_outside_outages_arrive(
    listener: CaptionListener, speaker: str, said: list[Utterance], outages: list[Outage]
) -> None:
    """Every utterance said wholly while a transcriber captioned (its final had a second
    to go out before a death) is received exactly once."""
    finals = listener.finals(speaker)
    for u in said:
        if any(o.at < u.end + 1.0 and o.resumed > u.start for o in outages):
            continue
        assert finals.count(u.text) == 1, f"{u.text!r} received {finals.count(u.text)} times: {finals}"


def record(name: str, outages: list[Outage]) -> list[float]:
    gaps = [round(o.resumed - o.at, 2) for o in outages]
    GAPS.setdefault(name, []).extend(gaps)
    print(f"\n{name}: seconds without captions {gaps}")
    return gaps


def worker_with_metrics(start_worker, tmp_path: Path, name: str, **env: str) -> tuple[WorkerProcess, Path]:  # type: ignore[no-untyped-def]
    metrics_dir = tmp_path / f"metrics-{name}"
    metrics_dir.mkdir()
    return start_worker(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), **env), metrics_dir


async def wait_pid(metrics_dirs: list[Path], timeout: float = 20) -> tuple[Path, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in metrics_dirs:
            if pids := captioning_pids(d):
                return d, pids[0]
        await asyncio.sleep(0.1)
    raise AssertionError("no job process is captioning")


async def meeting(
    server: LiveKitServer, room: str, agent_name: str, tmp_path: Path
) -> tuple[CaptionListener, Talk, Outage]:
    """A listener, a speaker who talks from the start, a transcriber; the returned outage
    is the time before its first caption (words said then are heard by no one)."""
    listener = await CaptionListener(server, room).join()
    alice = await Speaker(server, room, "alice").join()
    await dispatch(server, agent_name, room)
    talk = Talk(alice, tmp_path)
    talk.start(seed=random.randrange(1000))
    first = await next_caption_after(listener, "alice", 0.0, timeout=40)
    return listener, talk, Outage(at=0.0, resumed=first)


async def test_a_killed_job_process_is_replaced_and_captions_resume(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    _, metrics_dir = worker_with_metrics(start_worker, tmp_path, "w", TRANSCRIBER_AGENT_NAME=agent_name)
    listener, talk, joining = await meeting(livekit_server, room_name, agent_name, tmp_path)
    outages: list[Outage] = []
    for _ in range(KILLS):
        _, pid = await wait_pid([metrics_dir])
        await asyncio.sleep(random.uniform(1.0, 2.5))  # anywhere in a sentence
        outage = Outage(at=time.monotonic())
        os.kill(pid, signal.SIGKILL)
        outage.resumed = await next_caption_after(listener, "alice", outage.at + IN_FLIGHT)
        outages.append(outage)
        assert len(await transcribers_in(livekit_server, room_name)) == 1
    await asyncio.sleep(4.0)
    await talk.stop()
    await asyncio.sleep(2.0)

    gaps = record("job process SIGKILL", outages)
    assert float(np.percentile(gaps, 95)) <= 10.0, gaps
    assert_words_outside_outages_arrive(listener, "alice", talk.said, [joining, *outages])
    assert len(await transcribers_in(livekit_server, room_name)) == 1
    await talk.speaker.leave()
    await listener.leave()


async def test_a_killed_worker_is_replaced_by_another_worker(
    livekit_server: LiveKitServer,
    redis_server: RedisServer,
    start_worker,
    agent_name: str,
    room_name: str,
    tmp_path: Path,
) -> None:
    env = {"TRANSCRIBER_AGENT_NAME": agent_name, "TRANSCRIBER_REDIS_URL": redis_server.url}
    workers = dict(worker_with_metrics(start_worker, tmp_path, f"w{i}", **env)[::-1] for i in range(2))
    listener, talk, joining = await meeting(livekit_server, room_name, agent_name, tmp_path)
    outages: list[Outage] = []
    for round_ in range(KILLS):
        metrics_dir, _ = await wait_pid(list(workers))
        doomed = workers.pop(metrics_dir)
        await asyncio.sleep(random.uniform(1.0, 2.5))
        outage = Outage(at=time.monotonic())
        os.killpg(doomed.process.pid, signal.SIGKILL)  # the whole pod
        outage.resumed = await next_caption_after(listener, "alice", outage.at + IN_FLIGHT)
        outages.append(outage)
        await wait_pid(list(workers), timeout=1)  # served by a worker still alive
        assert len(await transcribers_in(livekit_server, room_name)) == 1
        if round_ < KILLS - 1:  # a new pod comes up, for the next round to kill
            new, new_dir = await asyncio.to_thread(  # the meeting goes on meanwhile
                worker_with_metrics, start_worker, tmp_path, f"n{round_}", **env
            )
            workers[new_dir] = new
    await asyncio.sleep(4.0)
    await talk.stop()
    await asyncio.sleep(2.0)

    gaps = record("whole worker SIGKILL", outages)
    assert float(np.percentile(gaps, 95)) <= 10.0, gaps
    assert_words_outside_outages_arrive(listener, "alice", talk.said, [joining, *outages])
    assert len(await transcribers_in(livekit_server, room_name)) == 1
    await talk.speaker.leave()
    await listener.leave()


async def test_a_frozen_transcriber_that_resumes_steps_aside_without_publishing(
    livekit_server: LiveKitServer,
    redis_server: RedisServer,
    start_worker,
    agent_name: str,
    room_name: str,
    tmp_path: Path,
) -> None:
    env = {"TRANSCRIBER_AGENT_NAME": agent_name, "TRANSCRIBER_REDIS_URL": redis_server.url}
    dirs = [worker_with_metrics(start_worker, tmp_path, f"w{i}", **env)[1] for i in range(2)]
    listener, talk, joining = await meeting(livekit_server, room_name, agent_name, tmp_path)
    metrics_dir, frozen = await wait_pid(dirs)
    (before,) = await transcribers_in(livekit_server, room_name)
    await asyncio.sleep(random.uniform(1.0, 2.5))
    outage = Outage(at=time.monotonic())
    os.kill(frozen, signal.SIGSTOP)
    try:
        outage.resumed = await next_caption_after(listener, "alice", outage.at + IN_FLIGHT)
        await asyncio.sleep(3.0)  # well past the takeover; the frozen one still holds audio
        published_while_frozen = published_by(metrics_dir, frozen)
    finally:
        os.kill(frozen, signal.SIGCONT)
    await asyncio.sleep(6.0)

    assert published_by(metrics_dir, frozen) == published_while_frozen, "published after resuming"
    transcribers = await transcribers_in(livekit_server, room_name)
    assert [t.identity for t in transcribers] != [before.identity] and len(transcribers) == 1
    assert frozen not in captioning_pids(metrics_dir), "the frozen transcriber did not leave"
    await talk.stop()
    await asyncio.sleep(2.0)
    record("job process SIGSTOP", [outage])
    assert_words_outside_outages_arrive(listener, "alice", talk.said, [joining, outage])
    # one transcriber at a time: no segment received from two of them
    finals = listener.finals("alice")
    assert len(finals) == len(set(finals)), finals
    await talk.speaker.leave()
    await listener.leave()


async def test_a_restarted_livekit_server_gets_its_live_meeting_captioned_again(
    tmp_path: Path, agent_name: str, room_name: str
) -> None:
    from .conftest import worker_env
    from .test_worker_ops_e2e import free_port, metric, scrape

    log = tmp_path / "livekit-server.log"
    server = LiveKitServer.start(log)
    ports = [free_port(), free_port()]
    workers = [  # a pool: a worker captioning a room reports the shared machine's CPU
        WorkerProcess(
            worker_env(server, TRANSCRIBER_AGENT_NAME=agent_name, TRANSCRIBER_METRICS_PORT=str(port)),
            tmp_path / f"worker-{port}.log",
        )
        for port in ports
    ]
    try:
        for worker in workers:
            worker.wait_registered()
        listener, talk, _ = await meeting(server, room_name, agent_name, tmp_path)
        await asyncio.sleep(2.0)
        outage = Outage(at=time.monotonic())
        server.kill()
        await asyncio.sleep(2.0)
        for worker in workers:  # an operator sees which workers cannot take rooms
            assert worker.status("/ready") == (503, "lost LiveKit, reconnecting")
        server = LiveKitServer.start(log, port=server.port)
        back = await participant_back(server, room_name, "alice")
        outage.resumed = await next_caption_after(listener, "alice", back, timeout=30)
        print(f"\nserver restart: captions back {outage.resumed - back:.2f} s after alice's return")
        GAPS.setdefault("LiveKit restart, from the speaker's return", []).append(
            round(outage.resumed - back, 2)
        )
        record("LiveKit restart, from the kill", [outage])
        assert outage.resumed - back <= 10.0

        bob = await Speaker(server, "other-" + room_name, "bob").join()
        other = await CaptionListener(server, "other-" + room_name).join()
        await dispatch_until_joined(server, agent_name, "other-" + room_name)
        bob_talk = Talk(bob, tmp_path / "bob")
        (tmp_path / "bob").mkdir()
        bob_talk.start(seed=7)
        await next_caption_after(other, "bob", 0.0, timeout=30)
        await bob_talk.stop()
        await talk.stop()
        await asyncio.sleep(2.0)
        samples = [scrape(port) for port in ports]
        assert sum(metric(s, "transcriber_active_rooms") for s in samples) == 2
        assert sum(metric(s, "transcriber_active_tracks") for s in samples) == 2
        for who in (talk.speaker, bob, listener, other):
            await who.leave()
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


async def participant_back(server: LiveKitServer, room: str, identity: str, timeout: float = 30) -> float:
    """When the server lists the participant again, with a track."""
    deadline = time.monotonic() + timeout
    async with server.api() as lkapi:
        while time.monotonic() < deadline:
            try:
                listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
                if any(p.identity == identity and p.tracks for p in listing.participants):
                    return time.monotonic()
            except api.TwirpError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{identity} did not come back to {room}")


async def dispatch_until_joined(server: LiveKitServer, agent_name: str, room: str) -> None:
    """LiveKit drops a dispatch made before any worker re-registered with it; a backend
    dispatches again then, as this does."""
    for _ in range(6):
        await dispatch(server, agent_name, room)
        for _ in range(25):
            if await transcribers_in(server, room):
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"no transcriber joined {room}")


async def test_a_killed_jobs_tracks_leave_the_metrics_and_the_cap_at_once(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    from .test_worker_ops_e2e import free_port, metric

    port = free_port()
    _, metrics_dir = worker_with_metrics(
        start_worker, tmp_path, "w", TRANSCRIBER_AGENT_NAME=agent_name,
        TRANSCRIBER_METRICS_PORT=str(port), TRANSCRIBER_MAX_TRACKS="1",
    )
    listener, talk, _ = await meeting(livekit_server, room_name, agent_name, tmp_path)
    _, pid = await wait_pid([metrics_dir])
    assert metric(scrape(port), "transcriber_active_tracks") == 1
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while metric(scrape(port), "transcriber_active_tracks") != 0:
        assert time.monotonic() - killed_at < 1.5, "the dead job's track is still counted"
        await asyncio.sleep(0.05)
    # the replacement gets the only track the cap allows: the dead job holds none of it
    await next_caption_after(listener, "alice", time.monotonic())
    assert metric(scrape(port), "transcriber_active_tracks") == 1
    await talk.stop()
    await talk.speaker.leave()
    await listener.leave()


def scrape(port: int) -> dict[str, float]:
    """A scrape at the instant a job process's files are removed can fail (HTTP 500):
    Prometheus would retry at its next scrape, this retries at once."""
    import urllib.error

    from .test_worker_ops_e2e import scrape as scrape_once

    try:
        return scrape_once(port)
    except urllib.error.HTTPError:
        time.sleep(0.05)
        return scrape_once(port)


async def test_tracks_over_the_cap_wait_unsubscribed_and_are_captioned_when_one_ends(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    from livekit import rtc

    from .test_worker_ops_e2e import free_port, metric, scrape

    port = free_port()
    start_worker(TRANSCRIBER_AGENT_NAME=agent_name, TRANSCRIBER_METRICS_PORT=str(port))
    listener = await CaptionListener(livekit_server, room_name).join()
    carol = Speaker(livekit_server, room_name, "carol")
    await carol.join(publish=False)
    sources, sids = [], []
    for i in range(6):  # one participant, six audio tracks: 4 is the per-participant cap
        source = rtc.AudioSource(48000, 1, queue_size_ms=500)
        track = rtc.LocalAudioTrack.create_audio_track(f"carol-{i}", source)
        publication = await carol.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        sources.append(source)
        sids.append(publication.sid)
    await dispatch(livekit_server, agent_name, room_name)
    deadline = time.monotonic() + 30
    while metric(samples := scrape(port), "transcriber_active_tracks") < 4:
        assert time.monotonic() < deadline, "four tracks were not captioned"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    samples = scrape(port)
    assert metric(samples, "transcriber_active_tracks") == 4
    assert metric(samples, "transcriber_waiting_tracks") == 2

    async def say_on_all(seed: int) -> dict[str, str]:
        words = script_words(6, seed=seed)
        await asyncio.gather(
            *(play_on(source, utterance_audio(w)) for source, w in zip(sources, words))
        )
        return {sid: " ".join(w) for sid, w in zip(sids, words)}

    said = await say_on_all(seed=11)
    await asyncio.sleep(2.5)
    heard = {c.track_sid for c in listener.captions if c.final and c.text == said.get(c.track_sid)}
    assert len(heard) == 4, heard
    waiting = [sid for sid in sids if sid not in heard]
    captioned = next(sid for sid in sids if sid in heard)

    await carol.room.local_participant.unpublish_track(captioned)
    sources.pop(sids.index(captioned))
    sids.remove(captioned)
    deadline = time.monotonic() + 10
    while metric(scrape(port), "transcriber_waiting_tracks") != 1:
        assert time.monotonic() < deadline, "no waiting track was picked up"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    listener.captions.clear()
    said = await say_on_all(seed=12)
    await asyncio.sleep(2.5)
    heard_now = {c.track_sid for c in listener.captions if c.final and c.text == said.get(c.track_sid)}
    assert len(heard_now) == 4 and len(set(waiting) & heard_now) == 1, (waiting, heard_now)
    await carol.leave()
    await listener.leave()


async def play_on(source, samples: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    from livekit import rtc

    per_frame = 960  # 20 ms at 48 kHz
    for i in range(0, len(samples) - per_frame + 1, per_frame):
        chunk = samples[i : i + per_frame]
        await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), 48000, 1, per_frame))
    await source.wait_for_playout()
