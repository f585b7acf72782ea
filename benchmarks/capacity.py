"""Capacity of the transcriber against LiveKit's per-participant AgentSession pattern and
against the floor: what receiving the audio alone costs on the same SDK.

    python -m benchmarks.capacity --json capacity.json            # full run, ~40 min
    python -m benchmarks.capacity --quick --json capacity.json    # smoke run, ~10 min
    python -m benchmarks.capacity --designs ours,floor --rooms-ramp 0 --json c.json
    python -m benchmarks.capacity --from-json capacity.json --json again.json  # re-summarize

Everything runs on this machine against the real LiveKit server (tests/livekit_server.py):

- designs, each its own worker process tree, one after the other:
  `ours` = `python -m transcriber start` (TRANSCRIBER_VAD_GATING=false, so STT-for-STT);
  `ours_gated` = ours with TRANSCRIBER_VAD_GATING=true (the speech gate's VAD on every
  track); `baseline` = `python -m benchmarks.baseline_worker start` (LiveKit's multi-user
  transcriber: an AgentSession + RoomIO per participant, see that module); `floor` =
  `python -m benchmarks.floor_worker start` (subscribes and reads every track as we do,
  drops the frames: the SDK's receive path and nothing else).
  Ours and the baseline use `benchmarks.fast_stt`, a real `stt.STT` that costs next to
  nothing, so the numbers are the transcriber's, not a recognizer's.
- speakers: `benchmarks.opus_publisher` encodes the speech program once (every meeting
  sentence of tests/speech_clips.py, a 180 ms fast_stt timecode before each) to Ogg Opus
  and a Go program (benchmarks/publisher, server-sdk-go) publishes it looped, one
  participant per track, each from another sentence, at real-time pace without encoding:
  its CPU per track is reported (`publisher_cpu_per_track`). fast_stt tags every caption
  with the timecode and the audio offset it was emitted on, and a track's packets leave
  on a fixed 20 ms schedule, so the listener knows when the captioned audio was sent.
- this process: per room a listener (`bench-listener-*`, reads `lk.transcription` text
  streams like a web client) and an echo (`bench-echo-*`, below).

For each design the load ramps over --levels concurrent speaking tracks (4, 8, 16, ...),
spread over the rooms; at each level, after a warm-up, a window of --window seconds is
measured:

- latency: caption received by the listener - time the publisher sent the last audio the
  caption covers (interims and finals alike, every caption whose audio was sent in the
  window); p50 / p95 / p99.
- transport p95: the same latency through the echo, a bare participant in this process that
  subscribes to one speaker per room, runs fast_stt on it and sends each caption straight
  to the listener: audio transport + decode + the same STT + text-stream transport, no
  transcriber. latency_added_p95_ms = worker p95 - echo p95, both measured in the same
  window, so it is what the transcriber adds on the path; the median of it over the
  levels both designs held, up to the reference level (below).
  The echo shares this process's event loop with the load, so it is an upper bound of
  pure transport; the worker p95 also includes it.
- CPU per track: CPU seconds of the worker's whole process tree (psutil; the worker
  runs each room's job in a child process) per second of wall time, with the rate of the
  same worker idle in the same rooms (joined, no speaker) subtracted, per track. One
  track produces one second of audio per second, so this is CPU s per audio s per track.
- memory per track: growth of the USS (private memory) of the worker's main process and
  its job processes (the ones connected to the server) since the idle-in-rooms point; the
  table also shows the whole tree's PSS. Not PSS, nor the forkserver and idle processes:
  each new idle process forked changes how shared pages split, by more than a track costs.
  Per-track CPU is the worker's CPU at the reference level (below) minus idle, divided by
  the tracks: what a track costs at that load, start-up costs shared out (the baseline
  pays a large one with its first sessions, so a slope between levels understates it
  badly: 0.024 against 0.045 measured over idle in one run). Run to run it varies by
  about 15% on this shared machine, more than the designs differ in one window, so after
  the ramps each design is measured --repeat (2) more times at the reference level, a
  fresh worker each time, designs alternating, and the median is used. Per-track memory
  is the slope of a least-squares line through idle and the levels both designs held, up
  to the reference level.
- event-loop lag: fast_stt starts a probe in each job process (sleeps 50 ms, records how
  late it woke, BENCH_LAG_DIR); p95 and max over the window.
- frames dropped: for each sentence sent in the window, the 10 ms frames of its speech
  that no caption covered by the end of the window (+1.5 s grace), so audio lost anywhere
  between publisher and STT, or captioned too late.
- a level held when: latency p95 <= 500 ms on a quiet machine (worker p95 - echo p95 +
  the lowest echo p95 of the run, Window.corrected_p95_ms: other people's work on this
  machine swings the transport alone from under 200 ms to over 800 ms), latency grew by
  <= 250 ms from the first to the last third of the window (a worker behind real time
  falls further behind), every track was captioned, <= 2% of the sentences lacked
  a caption, and the load generator kept up (this process and the publisher each under
  0.85 core, loop lag p95 under 100 ms). The floor captions nothing: it holds while its
  frames keep to real time (frame delay p95 <= 500 ms, see floor_worker). The knee is the
  last level held; the ramp stops at the first level that did not hold in two windows
  in a row (the machine is shared, one bad window is not a knee). Every design ramps in
  one room, then again with the tracks spread over 4 rooms (--rooms-ramp), so several job
  processes share the cores: `knee_tracks_<design>` and `knee_tracks_<design>_4rooms`.

Where the CPU goes: each thread of the worker tree is put in a group, `loop` (the main
threads: the job's Python work), `sdk` (the rtc SDK's Rust runtime, which also runs the
Python callback that hands every audio frame to the loop) and `webrtc` (audio decoding,
driven every 10 ms by WebRTC's audio device thread, and networking); the per-track slope
of each is in the JSON (`*_cpu_per_track`) and in a table after the main one.

A contention-proof knee estimate: the event-loop thread of a job process (its Python
work) is single-threaded, so `est_tracks_per_job_process` = 0.8 core / that thread's CPU
per track, and `est_knee_ratio` = ours / baseline of it. Crowding swings latency far more
than CPU seconds.

The reference level for the ratios is the highest level both designs held (else the
first level). Ratios are ours / baseline, measured in the same run: the machine is
shared and small, so absolute numbers are noisy but ratios are comparable.

The listener narrows the FFI event subscription of its Room to that room's own events
(`_narrow_room_events`): the livekit rtc SDK delivers every room event to every Room of a
process.

Every process started here (LiveKit server, workers, publishers) is stopped on exit,
Ctrl-C included; a publisher also stops when this process's end closes its stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
from livekit import api, rtc
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_TRANSCRIPTION,
)

from benchmarks import fast_stt
from benchmarks.opus_publisher import PACKET, LoopedSpeaker, PublisherProcess, build_program
from benchmarks.process_tree import (
    cores_by_group,
    cpu_between,
    process_cpu,
    room_processes,
    tree_cpu,
    tree_memory,
    tree_thread_cpu,
)
from tests.conftest import WorkerProcess
from tests.livekit_server import ROOT, LiveKitServer, free_port
from tests.speech_clips import all_clips

SAMPLE_RATE = 48000
FRAME = SAMPLE_RATE // 10
"""Samples per captured frame (100 ms): fewer, larger captures keep the load generator
light; the receiving side gets 10 ms frames whatever the sender's size."""
PAUSE = 0.8
"""Silence before each sentence's timecode (fast_stt finalizes 0.4 s into it)."""
GAP = 0.06
"""Silence between the timecode and the sentence."""
GRACE = 1.5
"""Seconds after a window during which its captions may still arrive."""
P95_LIMIT = 0.5
LOADGEN_LIMIT = 0.85
"""Cores of this process past which its clock readings are not trusted (the echo's and
the listener's latencies grow with its own backlog)."""
LOOP_BUDGET = 0.8
CPU_ROUND_WINDOW = 30.0
"""Seconds measured in each extra CPU round (--repeat)."""
"""Event-loop cores a job process can spend before its captions queue up: with its
per-track cost this gives a knee estimate that the machine's other load cannot move."""
GROWTH_LIMIT = 0.25
MISSING_LIMIT = 0.02
ROOMS_SUFFIX = "_4rooms"
"""Results of the ramp spread over 4 rooms carry the design's name with this suffix."""
DESIGNS = ("ours", "ours_gated", "baseline", "floor")
SINK_DESIGNS = ("ours_plain", "ours_transcript")
"""Optional (`--designs`): ours with no history (`ours_plain`, the live outputs alone) and
ours with history and a transcript sink journaling every final (`ours_transcript`), for
`sinks_latency_added_ms`: what those sinks add to the captions' p95."""
DEFAULT_SERVER_BIN = Path.home() / ".cache" / "transcriber" / "livekit-server-v1.13.5"


# ---------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Heard:
    source: str  # "worker" or "echo"
    speaker: str
    final: bool
    tag: fast_stt.Tag
    arrival: float


def _narrow_room_events(room: rtc.Room) -> None:
    """Lets `room` receive only its own room events from the process-wide FFI queue."""
    from livekit.rtc._ffi_client import FfiClient

    handle = room._ffi_handle.handle
    subscribers = FfiClient.instance.queue._subscribers
    with FfiClient.instance.queue._lock:
        for i, (queue, loop, _) in enumerate(subscribers):
            if queue is room._ffi_queue:
                subscribers[i] = (
                    queue,
                    loop,
                    lambda e: (
                        e.WhichOneof("message") == "room_event"
                        and e.room_event.room_handle == handle
                    ),
                )


class Echo:
    """The transport-only path: subscribes to one speaker, runs fast_stt here, and sends
    every caption straight to the listener."""

    def __init__(self, server: LiveKitServer, room_name: str, identity: str, listener: str) -> None:
        self.server, self.room_name, self.identity, self.listener = (
            server,
            room_name,
            identity,
            listener,
        )
        self.room = rtc.Room()
        self.target: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def join(self) -> None:
        self.room.on("track_published", self._on_published)
        self.room.on("track_subscribed", self._on_subscribed)
        await self.room.connect(
            self.server.url,
            self.server.token(self.identity, self.room_name),
            rtc.RoomOptions(auto_subscribe=False),
        )

    def follow(self, speaker: str) -> None:
        self.target = speaker
        participant = self.room.remote_participants.get(speaker)
        if participant is not None:
            for publication in participant.track_publications.values():
                self._on_published(publication, participant)

    def _on_published(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if participant.identity == self.target and publication.kind == rtc.TrackKind.KIND_AUDIO:
            publication.set_subscribed(True)

    def _on_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        task = asyncio.create_task(self._caption(track, publication.sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _caption(self, track: rtc.Track, track_sid: str) -> None:
        audio = rtc.AudioStream.from_track(
            track=track, sample_rate=fast_stt.SAMPLE_RATE, num_channels=1
        )
        stream = fast_stt.build().stream()

        async def forward() -> None:
            async for event in audio:
                stream.push_frame(event.frame)

        forwarding = asyncio.create_task(forward())
        try:
            async for event in stream:
                if not event.alternatives or event.type not in (
                    fast_stt.stt.SpeechEventType.INTERIM_TRANSCRIPT,
                    fast_stt.stt.SpeechEventType.FINAL_TRANSCRIPT,
                ):
                    continue
                final = event.type == fast_stt.stt.SpeechEventType.FINAL_TRANSCRIPT
                writer = await self.room.local_participant.stream_text(
                    topic=TOPIC_TRANSCRIPTION,
                    destination_identities=[self.listener],
                    attributes={
                        ATTRIBUTE_TRANSCRIPTION_FINAL: "true" if final else "false",
                        ATTRIBUTE_TRANSCRIPTION_TRACK_ID: track_sid,
                    },
                )
                await writer.write(event.alternatives[0].text)
                await writer.aclose()
        finally:
            forwarding.cancel()
            await asyncio.gather(forwarding, return_exceptions=True)
            await stream.aclose()
            await audio.aclose()

    async def leave(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()


class RoomLoad:
    """One room: its listener, its echo and its speakers."""

    def __init__(self, server: LiveKitServer, name: str) -> None:
        self.server, self.name = server, name
        self.listener_identity = f"bench-listener-{name}"
        self.listener = rtc.Room()
        self.echo = Echo(server, name, f"bench-echo-{name}", self.listener_identity)
        self.speakers: list[LoopedSpeaker] = []
        self.heard: list[Heard] = []
        self._by_track: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def join(self) -> None:
        self.listener.register_text_stream_handler(TOPIC_TRANSCRIPTION, self._on_text_stream)
        await self.listener.connect(
            self.server.url,
            self.server.token(self.listener_identity, self.name),
            rtc.RoomOptions(auto_subscribe=False),
        )
        _narrow_room_events(self.listener)
        await self.echo.join()

    def add_speaker(self, speaker: LoopedSpeaker) -> None:
        """A speaker whose track is being published (by the Go publisher)."""
        self.speakers.append(speaker)
        self._by_track[speaker.track_sid] = speaker.identity
        if len(self.speakers) == 1:
            self.echo.follow(speaker.identity)

    def _on_text_stream(self, reader: rtc.TextStreamReader, sender: str) -> None:
        task = asyncio.create_task(self._read(reader, sender))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, reader: rtc.TextStreamReader, sender: str) -> None:
        try:
            text = await reader.read_all()
        except rtc.StreamError:  # the sender left mid-caption
            return
        arrival = time.monotonic()
        tag = fast_stt.parse_tag(text)
        if tag is None:
            return
        attributes = reader.info.attributes
        if sender.startswith("bench-echo"):
            source = "echo"
            speaker = self._by_track.get(attributes.get(ATTRIBUTE_TRANSCRIPTION_TRACK_ID, ""), "")
        else:
            source, speaker = "worker", sender
        final = attributes.get(ATTRIBUTE_TRANSCRIPTION_FINAL) == "true"
        self.heard.append(Heard(source, speaker, final, tag, arrival))

    async def leave(self) -> None:
        await self.echo.leave()
        await self.listener.disconnect()


# ----------------------------------------------------------------------- processes


_WORKERS: list[WorkerProcess] = []
_STOPPING: list[bool] = []
"""Non-empty once Ctrl-C or SIGTERM arrived (checked between levels and designs too, in
case a library swallows the cancellation)."""


# ------------------------------------------------------------------------ measures


@dataclass
class Window:
    tracks: int
    seconds: float = 0.0
    cpu_cores: float = 0.0
    """CPU seconds of the worker tree per wall second."""
    loop_cores: float = 0.0
    """Of cpu_cores, the main (event-loop) threads' share."""
    sdk_cores: float = 0.0
    """Of cpu_cores, the rtc SDK runtime threads' share (see _thread_group)."""
    webrtc_cores: float = 0.0
    """Of cpu_cores, WebRTC's own threads' share (audio decoding, networking)."""
    memory_mb: float = 0.0
    """PSS of the whole worker tree."""
    memory_growth_mb: float = 0.0
    """USS growth since idle of the main and job processes (see room_processes)."""
    server_cores: float = 0.0
    loadgen_cores: float = 0.0
    """This process: listeners and echoes (the speakers are the Go publisher's)."""
    publisher_cores: float = 0.0
    """The Go publishers of the speakers' pre-encoded tracks."""
    loadgen_lag_p95_ms: float | None = None
    captions: int = 0
    unanchored: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_growth_ms: float | None = None
    corrected_p95_ms: float | None = None
    """latency p95 - echo p95 + the lowest echo p95 of the run: the worker's p95 with the
    transport delay of a quiet machine (the machine is shared; its load swings the
    transport alone from under 200 ms to over 800 ms). The knee is judged on this."""
    echo_captions: int = 0
    echo_p50_ms: float | None = None
    echo_p95_ms: float | None = None
    lag_p95_ms: float | None = None
    lag_max_ms: float | None = None
    negative_latencies: int = 0
    """Captions that seem to arrive before their audio was sent: the receiver stretched
    the audio (NetEq concealment when packets come late), so offsets overcount."""
    stretch_p95_ms: float | None = None
    """|audio the worker received - audio sent| between consecutive timecodes."""
    tracks_captioned: int = 0
    sentences: int = 0
    sentences_missing: int = 0
    frames_published: int = 0
    frames_dropped: int = 0
    held: bool = False
    why_not: str = ""
    retried: bool = False
    """The level failed once and this is its second window."""
    frame_delay_p95_ms: float | None = None
    """The floor design only: how far its frames fell behind real time (floor_worker)."""
    machine_bound: bool = False
    """The echo (no transcriber) missed the latency target too, or the load generator lagged:
    the machine, not the worker, was the limit at this level."""


@dataclass
class DesignResult:
    name: str
    idle: Window | None = None
    levels: list[Window] = field(default_factory=list)
    stopped: str = ""
    worker_log: str = ""
    rounds: list[tuple[Window, Window]] = field(default_factory=list)
    """(idle, loaded) of each extra CPU round at the reference level (--repeat)."""

    @property
    def knee(self) -> int:
        held = 0
        for level in self.levels:
            if not level.held:
                break
            held = level.tracks
        return held


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.array(values), q)) * 1000, 1)


def read_lag(directory: Path, t0: float, t1: float, pattern: str = "lag-*.txt") -> list[float]:
    lags = []
    for path in directory.glob(pattern):
        for line in path.read_text().splitlines():
            try:
                t, lag = (float(x) for x in line.split())
            except ValueError:
                continue
            if t0 <= t <= t1:
                lags.append(lag)
    return lags


_QUIET_ECHO_P95: list[float] = []
"""Echo p95 of every window of the run: the smallest is the transport on the quietest machine."""


def evaluate(window: Window, rooms: list[RoomLoad], t0: float, t1: float) -> None:
    speakers = {s.identity: s for room in rooms for s in room.speakers}
    latencies: list[tuple[float, float]] = []  # (sent, latency)
    echo: list[float] = []
    covered: dict[tuple[str, int], int] = {}  # (speaker, seq) -> furthest sample captioned
    anchors: dict[tuple[str, int], int] = {}  # (speaker, seq) -> stream sample of its timecode
    captioned_tracks: set[str] = set()
    for room in rooms:
        for heard in room.heard:
            if heard.arrival > t1 + GRACE:
                continue
            speaker = speakers.get(heard.speaker)
            if speaker is None:
                continue
            found = speaker.audio_sent_at(heard.tag, heard.arrival)
            if found is None:
                if heard.source == "worker" and t0 <= heard.arrival <= t1:
                    window.unanchored += 1
                continue
            sentence, sent = found
            if heard.source == "worker":
                # by position, not timecode: a caption after a missed timecode still counts
                end = sentence.marker + heard.tag.offset * SAMPLE_RATE // fast_stt.SAMPLE_RATE
                holder = speaker.sentence_at(end)
                if holder is not None:
                    key = (speaker.identity, holder.seq)
                    covered[key] = max(covered.get(key, 0), end)
                anchors[(speaker.identity, sentence.seq)] = heard.tag.position - heard.tag.offset
            if not t0 <= sent <= t1:
                continue
            if heard.source == "worker":
                latencies.append((sent, heard.arrival - sent))
                window.negative_latencies += heard.arrival < sent
                captioned_tracks.add(speaker.identity)
            else:
                echo.append(heard.arrival - sent)

    values = [lat for _, lat in latencies]
    window.captions = len(values)
    window.latency_p50_ms = _ms(values, 50)
    window.latency_p95_ms = _ms(values, 95)
    window.latency_p99_ms = _ms(values, 99)
    window.echo_captions = len(echo)
    window.echo_p50_ms = _ms(echo, 50)
    window.echo_p95_ms = _ms(echo, 95)
    third = (t1 - t0) / 3
    first = [lat for sent, lat in latencies if sent < t0 + third]
    last = [lat for sent, lat in latencies if sent >= t1 - third]
    if first and last:
        window.latency_growth_ms = round(
            (statistics.median(last) - statistics.median(first)) * 1000, 1
        )
    window.tracks_captioned = len(captioned_tracks)
    stretches = []
    scale = SAMPLE_RATE // fast_stt.SAMPLE_RATE
    for (identity, seq), anchor in anchors.items():
        later = anchors.get((identity, seq + 1))
        speaker = speakers[identity]
        if later is None or seq + 1 >= len(speaker.sent):
            continue
        sent_at = speaker.send_time(speaker.sent[seq].marker)
        if sent_at is None or not t0 <= sent_at <= t1:
            continue
        published = speaker.sent[seq + 1].marker - speaker.sent[seq].marker
        stretches.append(abs((later - anchor) * scale - published) / SAMPLE_RATE)
    window.stretch_p95_ms = _ms(stretches, 95)

    for speaker in speakers.values():
        for sentence in speaker.sent:
            start = speaker.send_time(sentence.marker)
            end = speaker.send_time(sentence.speech_end)
            if start is None or end is None or start < t0 or end > t1 - 1.0:
                continue
            window.sentences += 1
            speech = (sentence.speech_end - sentence.speech_start) // (SAMPLE_RATE // 100)
            window.frames_published += speech
            reached = covered.get((speaker.identity, sentence.seq))
            if reached is None:
                window.sentences_missing += 1
                window.frames_dropped += speech
            else:
                done = min(
                    max(reached - sentence.speech_start, 0),
                    sentence.speech_end - sentence.speech_start,
                )
                window.frames_dropped += speech - done // (SAMPLE_RATE // 100)

    reasons = []
    if window.echo_p95_ms is not None:
        _QUIET_ECHO_P95.append(window.echo_p95_ms)
    if window.latency_p95_ms is not None and window.echo_p95_ms is not None:
        window.corrected_p95_ms = round(
            window.latency_p95_ms - window.echo_p95_ms + min(_QUIET_ECHO_P95), 1
        )
    else:
        window.corrected_p95_ms = window.latency_p95_ms
    if window.corrected_p95_ms is None or window.corrected_p95_ms > P95_LIMIT * 1000:
        reasons.append(
            f"p95 {window.latency_p95_ms} ms, {window.corrected_p95_ms} ms on a quiet machine"
            f" > {P95_LIMIT * 1000:.0f}"
        )
    if window.latency_growth_ms is not None and window.latency_growth_ms > GROWTH_LIMIT * 1000:
        reasons.append(f"latency grew {window.latency_growth_ms} ms (behind real time)")
    if window.tracks_captioned < window.tracks:
        reasons.append(f"{window.tracks - window.tracks_captioned} tracks without captions")
    if window.sentences and window.sentences_missing > MISSING_LIMIT * window.sentences:
        reasons.append(f"{window.sentences_missing}/{window.sentences} sentences not captioned")
    window.held = not reasons
    window.why_not = "; ".join(reasons)


def evaluate_floor(window: Window, delays: list[float], t0: float, t1: float) -> None:
    """The floor publishes nothing: it holds a level while its frames keep to real time
    (frame delay p95 <= P95_LIMIT) and none of its tracks stalls (a delay report at least
    every second of the window)."""
    window.frame_delay_p95_ms = _ms(delays, 95)
    reasons = []
    if window.frame_delay_p95_ms is None or window.frame_delay_p95_ms > P95_LIMIT * 1000:
        reasons.append(f"frame delay p95 {window.frame_delay_p95_ms} ms > {P95_LIMIT * 1000:.0f}")
    elif len(delays) < (t1 - t0) * 0.5:
        reasons.append(f"{len(delays)} frame reports in {t1 - t0:.0f} s: frames stalled")
    window.tracks_captioned = window.tracks  # every track is read; nothing to caption
    window.held = not reasons
    window.why_not = "; ".join(reasons)


class LoopLag:
    """Lag of this process's own event loop (the load generator's)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.05)
            now = time.monotonic()
            self.samples.append((now, now - before - 0.05))

    def between(self, t0: float, t1: float) -> list[float]:
        return [lag for t, lag in self.samples if t0 <= t <= t1]

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# ------------------------------------------------------------------------- a design


@dataclass(frozen=True)
class Plan:
    rooms: int
    levels: tuple[int, ...]
    window: float
    idle_window: float
    warmup_max: float


class DesignRun:
    def __init__(
        self, name: str, server: LiveKitServer, plan: Plan, workdir: Path, deadline: float
    ) -> None:
        self.name, self.server, self.plan, self.deadline = name, server, plan, deadline
        self.design = name.removesuffix(ROOMS_SUFFIX)
        """The worker design: the name without the room layout."""
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lag_dir = self.workdir / "lag"
        self.lag_dir.mkdir(exist_ok=True)
        self.agent_name = f"bench-{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        self.result = DesignResult(name)
        self.rooms: list[RoomLoad] = []
        self.worker: WorkerProcess | None = None
        self.program = build_program(_sentences(), PAUSE, GAP)
        self.publishers: list[PublisherProcess] = []
        self.loadgen = psutil.Process()
        self.server_proc = psutil.Process(server.process.pid)
        self.loop_lag: LoopLag | None = None
        self._idle_memory: dict[int, tuple[float, float]] | None = None
        self._counted: set[int] = set()

    def _worker_command_env(self) -> tuple[list[str], dict[str, str]]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                ("LIVEKIT_", "TRANSCRIBER_", "DEEPGRAM_", "SPEECHMATICS_", "BENCH_")
            )
        }
        env.update(
            LIVEKIT_URL=self.server.url,
            LIVEKIT_API_KEY=self.server.api_key,
            LIVEKIT_API_SECRET=self.server.api_secret,
            PYTHONPATH=str(ROOT),
            BENCH_LAG_DIR=str(self.lag_dir),
        )
        if self.design in ("baseline", "floor"):
            env["BENCH_AGENT_NAME"] = self.agent_name
            return [sys.executable, "-m", f"benchmarks.{self.design}_worker", "start"], env
        env.update(
            TRANSCRIBER_AGENT_NAME=self.agent_name,
            TRANSCRIBER_STT_PROVIDER="benchmarks.fast_stt:build",
            TRANSCRIBER_HTTP_PORT="0",
            TRANSCRIBER_METRICS_PORT=str(free_port()),
            TRANSCRIBER_LOAD_THRESHOLD="1",
            TRANSCRIBER_MAX_ROOMS="10000",
            TRANSCRIBER_VAD_GATING="true" if self.design == "ours_gated" else "false",
        )
        if self.design == "ours_plain":
            env["TRANSCRIBER_HISTORY_FINALS"] = "0"
        if self.design == "ours_transcript":
            journal = self.workdir / "transcripts"
            journal.mkdir(mode=0o700, exist_ok=True)
            env["TRANSCRIBER_TRANSCRIPT_DIR"] = str(journal)
        return [sys.executable, "-m", "transcriber", "start"], env

    async def run(self) -> DesignResult:
        command, env = self._worker_command_env()
        self.worker = WorkerProcess(env, self.workdir / "worker.log", command)
        _WORKERS.append(self.worker)
        self.result.worker_log = str(self.worker.log_path)
        self.loop_lag = LoopLag()
        try:
            await asyncio.to_thread(self.worker.wait_registered, 90.0)
            await self._open_rooms()
            self.result.idle = await self._measure(0, self.plan.idle_window)
            print(
                f"  [{self.name}] idle in rooms: {self.result.idle.cpu_cores:.3f} cores, "
                f"{self.result.idle.memory_mb:.0f} MB",
                flush=True,
            )
            for tracks in self.plan.levels:
                if _STOPPING:
                    break
                needed = 10 + self.plan.warmup_max / 2 + self.plan.window + GRACE
                if time.monotonic() + needed > self.deadline:
                    self.result.stopped = f"time budget reached before {tracks} tracks"
                    break
                await self._ramp_to(tracks)
                window = await self._measure(tracks, self.plan.window)
                _print_level(self.name, window)
                if not window.held and time.monotonic() + self.plan.window + GRACE < self.deadline:
                    # the machine is shared: one bad window is not a knee, a second one is
                    window = await self._measure(tracks, self.plan.window)
                    window.retried = True
                    _print_level(self.name, window)
                self.result.levels.append(window)
                if not window.held:
                    break
        finally:
            await self._close()
        return self.result

    async def _open_rooms(self) -> None:
        prefix = f"bench-{uuid.uuid4().hex[:6]}"
        self.rooms = [RoomLoad(self.server, f"{prefix}-{i}") for i in range(self.plan.rooms)]
        await asyncio.gather(*(room.join() for room in self.rooms))
        async with self.server.api() as lkapi:
            # one at a time: a plain livekit-agents worker (baseline, floor) refuses rooms
            # dispatched at once past its idle processes, and LiveKit drops them
            for room in self.rooms:
                await lkapi.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name=self.agent_name, room=room.name)
                )
                # a crowded machine starts job processes slowly
                deadline = time.monotonic() + 90
                while not await self._agent_in(lkapi, room.name):
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the worker did not join {room.name}:\n{self.worker.log()[-3000:]}"
                        )
                    await asyncio.sleep(0.3)
        await asyncio.sleep(3.0)  # join settle time, first idle process replaced

    @staticmethod
    async def _agent_in(lkapi: api.LiveKitAPI, room: str) -> bool:
        response = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        return any(p.kind == api.ParticipantInfo.Kind.AGENT for p in response.participants)

    async def _ramp_to(self, tracks: int) -> None:
        current = sum(len(room.speakers) for room in self.rooms)
        added = []
        for i in range(current, tracks):
            room = self.rooms[i % len(self.rooms)]
            offset = self.program.sentences[i * 5 % len(self.program.sentences)][0] // PACKET
            speaker = LoopedSpeaker(f"spk-{i:03d}", room.name, self.program, offset)
            added.append((room, speaker))
        if added:
            publisher = PublisherProcess(self.workdir / "publisher.log")
            self.publishers.append(publisher)
            await publisher.start(
                self.server.url,
                [(s, self.server.token(s.identity, s.room_name)) for _, s in added],
            )
            for room, speaker in added:
                room.add_speaker(speaker)
        if self.design == "floor":  # no captions to wait for: frames flow within a second
            await asyncio.sleep(4.0)
            return
        # warm up: every track captioned at least once (with a timecode), then settle
        deadline = time.monotonic() + self.plan.warmup_max
        while time.monotonic() < deadline:
            heard = {
                h.speaker
                for room in self.rooms
                for h in room.heard
                if h.source == "worker" and h.tag.code >= 0
            }
            if len(heard) >= tracks:
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(2.0)

    async def _measure(self, tracks: int, seconds: float) -> Window:
        assert self.worker is not None and self.loop_lag is not None
        window = Window(tracks=tracks)
        pid = self.worker.process.pid
        t0 = time.monotonic()
        cpu0, server0, loadgen0 = (
            tree_cpu(pid),
            process_cpu(self.server_proc),
            process_cpu(self.loadgen),
        )
        publishers0 = {id(p): p.cpu_seconds() for p in self.publishers}
        threads0 = tree_thread_cpu(pid)
        await asyncio.sleep(seconds)
        cpu1, server1, loadgen1 = (
            tree_cpu(pid),
            process_cpu(self.server_proc),
            process_cpu(self.loadgen),
        )
        publishers1 = {id(p): p.cpu_seconds() for p in self.publishers}
        threads1 = tree_thread_cpu(pid)
        t1 = time.monotonic()
        window.seconds = round(t1 - t0, 2)
        window.cpu_cores = round(cpu_between(cpu0, cpu1) / (t1 - t0), 4)
        groups = cores_by_group(threads0, threads1, t1 - t0)
        window.loop_cores, window.sdk_cores = groups["loop"], groups["sdk"]
        window.webrtc_cores = groups["webrtc"]
        window.server_cores = round((server1 - server0) / (t1 - t0), 3)
        window.loadgen_cores = round((loadgen1 - loadgen0) / (t1 - t0), 3)
        window.publisher_cores = round(
            sum(publishers1[k] - publishers0.get(k, 0.0) for k in publishers1) / (t1 - t0), 4
        )
        window.loadgen_lag_p95_ms = _ms(self.loop_lag.between(t0, t1), 95)
        memory = await asyncio.to_thread(tree_memory, pid)
        window.memory_mb = round(sum(pss for pss, _ in memory.values()), 1)
        if self._idle_memory is None:
            self._idle_memory = memory
            self._counted = await asyncio.to_thread(room_processes, pid, self.server)
        window.memory_growth_mb = round(
            sum(
                uss - self._idle_memory[p][1]
                for p, (_, uss) in memory.items()
                if p in self._idle_memory and p in self._counted
            ),
            2,
        )
        lags = read_lag(self.lag_dir, t0, t1)
        window.lag_p95_ms = _ms(lags, 95)
        window.lag_max_ms = _ms(lags, 100)
        if tracks and self.design == "floor":
            evaluate_floor(window, read_lag(self.lag_dir, t0, t1, "frames-*.txt"), t0, t1)
        elif tracks:
            await asyncio.sleep(GRACE)
            evaluate(window, self.rooms, t0, t1)
            lagging = window.loadgen_lag_p95_ms is not None and window.loadgen_lag_p95_ms > 100
            saturated = max(window.loadgen_cores, window.publisher_cores) > LOADGEN_LIMIT
            if lagging or saturated:
                # the load generator can no longer say when audio left or captions came
                window.held = False
                window.why_not = "; ".join(
                    r for r in (window.why_not, "load generator saturated") if r
                )
            slow_echo = window.echo_p95_ms is None or window.echo_p95_ms > P95_LIMIT * 1000
            window.machine_bound = not window.held and (lagging or slow_echo or saturated)
        return window

    async def _close(self) -> None:
        for publisher in self.publishers:
            await publisher.stop()
        for room in self.rooms:
            try:
                await asyncio.wait_for(room.leave(), 15)
            except Exception as e:  # never keep the worker running because of a room
                print(f"  [{self.name}] leaving {room.name}: {e!r}", flush=True)
        if self.loop_lag is not None:
            await self.loop_lag.aclose()
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)


def _sentences() -> list[np.ndarray]:
    """Every sentence of the synthetic meeting clips, as 48 kHz int16 samples."""
    sentences = []
    for clip in all_clips(SAMPLE_RATE):
        samples = clip.samples()
        for s in clip.sentences:
            sentences.append(samples[int(s.start * SAMPLE_RATE) : int(s.end * SAMPLE_RATE)].copy())
    return sentences


# ------------------------------------------------------------------------- summary


def cpu_per_track(design: DesignResult, window: Window | None, attribute: str) -> float | None:
    """Median over the ramp's reference window and the CPU rounds of
    (value loaded - value idle) / tracks."""
    pairs = list(design.rounds)
    if design.idle is not None and window is not None and window.tracks:
        pairs.append((design.idle, window))
    values = [
        (getattr(loaded, attribute) - getattr(idle, attribute)) / loaded.tracks
        for idle, loaded in pairs
    ]
    return float(statistics.median(values)) if values else None


def per_track(
    design: DesignResult, levels: set[int], attribute: str, *, through_idle: bool = False
) -> float | None:
    """Slope of a least-squares line through the given levels, and through the idle point
    if `through_idle` or if there is only one level."""
    if design.idle is None:
        return None
    points = [(w.tracks, getattr(w, attribute)) for w in design.levels if w.tracks in levels]
    if through_idle or len(points) < 2:
        points.append((0, getattr(design.idle, attribute)))
    if len(points) < 2:
        return None
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    slope = float(np.polyfit(x, y, 1)[0])
    return slope


def _levels_held(design: DesignResult) -> set[int]:
    return {w.tracks for w in design.levels if w.held}


def reference_level(results: dict[str, DesignResult], plan: Plan) -> int:
    """The highest level both designs held, else the first level."""
    ours, base = results.get("ours"), results.get("baseline")
    common = _levels_held(ours) & _levels_held(base) if ours and base else set()
    return max(common) if common else plan.levels[0]


def summarize(results: dict[str, DesignResult], plan: Plan) -> dict[str, object]:
    ours, base = results.get("ours"), results.get("baseline")
    summary: dict[str, object] = {}
    if ours is None or base is None:
        return summary

    common = _levels_held(ours) & _levels_held(base)
    reference = reference_level(results, plan)
    used = {t for t in common if t <= reference} or {plan.levels[0]}

    def level(design: DesignResult, tracks: int) -> Window | None:
        """The window measured at `tracks`: the one that held, if it was measured twice."""
        windows = [w for w in design.levels if w.tracks == tracks]
        return next((w for w in windows if w.held), windows[-1] if windows else None)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b not in (None, 0) else None

    for name, design in results.items():
        ref = level(design, reference)
        cpu, loop, sdk, webrtc = (
            cpu_per_track(design, ref, f"{part}_cores") for part in ("cpu", "loop", "sdk", "webrtc")
        )
        mem = per_track(design, used, "memory_growth_mb", through_idle=True)
        summary[name] = {
            "knee_tracks": design.knee,
            "cpu_samples": len(design.rounds) + (ref is not None),
            "cpu_per_track": None if cpu is None else round(cpu, 5),
            "loop_cpu_per_track": None if loop is None else round(loop, 5),
            "sdk_cpu_per_track": None if sdk is None else round(sdk, 5),
            "webrtc_cpu_per_track": None if webrtc is None else round(webrtc, 5),
            "est_tracks_per_job_process": (
                round(LOOP_BUDGET / loop, 1) if loop is not None and loop > 0 else None
            ),
            "memory_mb_per_track": None if mem is None else round(mem, 2),
            "reference_latency_p95_ms": ref.latency_p95_ms if ref else None,
            "reference_echo_p95_ms": ref.echo_p95_ms if ref else None,
            "reference_lag_p95_ms": ref.lag_p95_ms if ref else None,
        }
    o, b = summary["ours"], summary["baseline"]
    assert isinstance(o, dict) and isinstance(b, dict)

    def latency_added(design: DesignResult) -> tuple[float | None, list[float]]:
        """Median over the levels used of the worker's p95 minus the echo's."""
        differences = [
            w.latency_p95_ms - w.echo_p95_ms
            for w in design.levels
            if w.tracks in used and w.latency_p95_ms is not None and w.echo_p95_ms is not None
        ]
        return (round(statistics.median(differences), 1) if differences else None), differences

    added, differences = latency_added(ours)
    result: dict[str, object] = {
        "reference_tracks": reference,
        "latency_added_p95_ms_per_level": [round(d, 1) for d in differences],
        "levels_used_for_per_track": sorted(used),
        "cpu_ratio": ratio(o["cpu_per_track"], b["cpu_per_track"]),
        "mem_ratio": ratio(o["memory_mb_per_track"], b["memory_mb_per_track"]),
        "latency_added_p95_ms": added,
        "knee_tracks_ours": ours.knee,
        "est_knee_ratio": ratio(o["est_tracks_per_job_process"], b["est_tracks_per_job_process"]),
        "knee_tracks_baseline": base.knee,
        "knee_ours_limited_by": _limit(ours),
        "knee_baseline_limited_by": _limit(base),
    }
    result.update(floor_and_knees(results, summary))
    plain, journaled = (
        latency_added(results[n])[0] if n in results else None for n in SINK_DESIGNS
    )
    if plain is not None or journaled is not None:
        result["latency_added_p95_ms_plain"] = plain
        result["latency_added_p95_ms_transcript"] = journaled
        result["sinks_latency_added_ms"] = (
            round(journaled - plain, 1) if plain is not None and journaled is not None else None
        )
    knee_floor = results["floor"].knee if "floor" in results else None
    four = {
        n: results[n + ROOMS_SUFFIX].knee
        for n in DESIGNS
        if n + ROOMS_SUFFIX in results and results[n + ROOMS_SUFFIX].levels
    }
    cpu_over_floor = result["cpu_over_floor"]
    cpu_over_floor_gated = result["cpu_over_floor_gated"]
    mem_ratio = result["mem_ratio"]
    result["targets"] = {
        "mem_ratio<=0.5": mem_ratio is not None and mem_ratio <= 0.5,  # type: ignore[operator]
        "latency_added_p95_ms<=50": added is not None and added <= 50,
        "cpu_over_floor<=1.2": (
            cpu_over_floor is not None and cpu_over_floor <= 1.2  # type: ignore[operator]
        ),
        "cpu_over_floor_gated<=1.4": (
            cpu_over_floor_gated is not None and cpu_over_floor_gated <= 1.4  # type: ignore[operator]
        ),
        "knee_ours>=0.9x_floor": knee_floor is not None and ours.knee >= 0.9 * knee_floor,
        "knee_ours>=1.25x_baseline": ours.knee >= 1.25 * base.knee and ours.knee > 0,
        "knee_ours_4rooms>=0.9x_floor_4rooms": (
            "ours" in four
            and "floor" in four
            and four["ours"] >= 0.9 * four["floor"]
            and four["ours"] > 0
        ),
        "knee_ours_4rooms>=1.25x_baseline_4rooms": (
            "ours" in four
            and "baseline" in four
            and four["ours"] >= 1.25 * four["baseline"]
            and four["ours"] > 0
        ),
    }
    result["designs"] = summary
    return result


def floor_and_knees(
    results: dict[str, DesignResult], summary: dict[str, object]
) -> dict[str, object]:
    """The keys against the floor, the gated variant's ratios and every ramp's knee."""
    b = summary["baseline"]
    assert isinstance(b, dict)
    o = summary["ours"]
    assert isinstance(o, dict)
    result: dict[str, object] = {}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b not in (None, 0) else None

    floor = summary.get("floor")
    floor_cpu = floor["cpu_per_track"] if isinstance(floor, dict) else None
    gated = summary.get("ours_gated")
    gated_cpu = gated["cpu_per_track"] if isinstance(gated, dict) else None
    result["floor_cpu_per_track"] = floor_cpu
    result["cpu_over_floor"] = ratio(o["cpu_per_track"], floor_cpu)
    result["cpu_over_floor_gated"] = ratio(gated_cpu, floor_cpu)
    result["publisher_cpu_per_track"] = publisher_per_track(results)
    for name, design in results.items():
        if name not in ("ours", "baseline"):  # None: the ramp measured no level at all
            result[f"knee_tracks_{name}"] = design.knee if design.levels else None
    if "ours_gated" in summary:
        variant = summary["ours_gated"]
        assert isinstance(variant, dict)
        result["cpu_ratio_gated"] = ratio(variant["cpu_per_track"], b["cpu_per_track"])
        result["mem_ratio_gated"] = ratio(variant["memory_mb_per_track"], b["memory_mb_per_track"])
    return result


def publisher_per_track(results: dict[str, DesignResult]) -> float | None:
    """The Go publisher's cores per track, median over every loaded window."""
    values = [
        w.publisher_cores / w.tracks
        for design in results.values()
        for w in design.levels
        if w.tracks and w.publisher_cores
    ]
    return round(float(statistics.median(values)), 5) if values else None


def _limit(design: DesignResult) -> str:
    """What ended the ramp: the worker, the machine (see Window.machine_bound), or the
    level list / time budget (the knee is then a lower bound)."""
    failed = next((w for w in design.levels if not w.held), None)
    if design.stopped.startswith("error"):
        return design.stopped
    if failed is None:
        return "levels or time budget (knee is a lower bound)"
    return "machine (knee is a lower bound)" if failed.machine_bound else "worker"


def _print_level(name: str, w: Window) -> None:
    state = "held" if w.held else f"FAILED: {w.why_not}"
    print(
        f"  [{name}] {w.tracks:3d} tracks: cpu {w.cpu_cores:.3f} cores, mem {w.memory_mb:.0f} MB, "
        f"p50/p95/p99 {w.latency_p50_ms}/{w.latency_p95_ms}/{w.latency_p99_ms} ms "
        f"(echo p95 {w.echo_p95_ms}), lag p95 {w.lag_p95_ms} ms, dropped {w.frames_dropped}/"
        f"{w.frames_published} frames, frame delay p95 {w.frame_delay_p95_ms} ms, "
        f"loadgen {w.loadgen_cores} + publisher {w.publisher_cores} cores: {state}",
        flush=True,
    )


def table(results: dict[str, DesignResult]) -> str:
    head = (
        f"{'design':<11}{'tracks':>7}{'cpu':>8}{'cpu/trk':>9}{'mem MB':>8}{'MB/trk':>8}"
        f"{'p50':>7}{'p95':>7}{'p99':>7}{'echo95':>8}{'q95':>6}{'lag95':>7}{'lagmax':>8}"
        f"{'drop':>10}{'srv':>6}{'lgen':>6}  held"
    )
    legend = (
        "cpu: worker tree cores; cpu/trk, MB/trk: per track over idle (MB = USS growth); "
        "p50-p99, echo95, q95 (p95 on a quiet machine): caption latency ms; lag: job event "
        "loop ms; drop: 10 ms speech frames not captioned / sent; srv, lgen: server, load "
        "generator cores"
    )
    lines = [legend, head, "-" * len(head)]
    for name, design in results.items():
        idle = design.idle
        if idle is None:
            continue
        lines.append(
            f"{name:<11}{'idle':>7}{idle.cpu_cores:>8.3f}{'':>9}{idle.memory_mb:>8.0f}{'':>8}"
            f"{'':>7}{'':>7}{'':>7}{'':>8}{'':>6}{_f(idle.lag_p95_ms):>7}{_f(idle.lag_max_ms):>8}"
            f"{'':>10}{idle.server_cores:>6.2f}{idle.loadgen_cores:>6.2f}"
        )
        for w in design.levels:
            cpu_track = (w.cpu_cores - idle.cpu_cores) / w.tracks
            mem_track = w.memory_growth_mb / w.tracks
            lines.append(
                f"{name:<11}{w.tracks:>7}{w.cpu_cores:>8.3f}{cpu_track:>9.4f}{w.memory_mb:>8.0f}"
                f"{mem_track:>8.2f}{_f(w.latency_p50_ms):>7}{_f(w.latency_p95_ms):>7}"
                f"{_f(w.latency_p99_ms):>7}{_f(w.echo_p95_ms):>8}{_f(w.corrected_p95_ms):>6}{_f(w.lag_p95_ms):>7}"
                f"{_f(w.lag_max_ms):>8}{f'{w.frames_dropped}/{w.frames_published}':>10}"
                f"{w.server_cores:>6.2f}{w.loadgen_cores:>6.2f}  {_held(w)}"
            )
        if design.stopped:
            lines.append(f"{name:<11}  stopped: {design.stopped}")
    return "\n".join(lines)


def cpu_breakdown(summary: dict[str, object]) -> str:
    """Where each design's CPU per track goes, by thread group (see _thread_group)."""
    designs = summary.get("designs")
    if not isinstance(designs, dict):
        return ""
    lines = [f"{'CPU per track':<14}{'total':>8}{'loop':>8}{'sdk':>8}{'webrtc':>8}"]
    for name, d in designs.items():
        values = [d.get(f"{k}cpu_per_track") for k in ("", "loop_", "sdk_", "webrtc_")]
        lines.append(f"{name:<14}" + "".join(f"{_f(v, 4):>8}" for v in values))
    return "\n".join(lines)


def _held(w: Window) -> str:
    if w.held:
        return "yes"
    return f"no{' (machine-bound)' if w.machine_bound else ''}: {w.why_not}"


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.capacity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: two small levels, short windows"
    )
    parser.add_argument(
        "--gating", action="store_true", help="(ours_gated is now one of the default designs)"
    )
    parser.add_argument("--rooms", type=int, default=1, help="rooms the tracks are spread over (1)")
    parser.add_argument(
        "--rooms-ramp",
        type=int,
        default=None,
        help="then ramp again over this many rooms, knees only (4; --quick 0: none)",
    )
    parser.add_argument(
        "--levels", type=str, default="", help="concurrent tracks per level, e.g. 4,8,16"
    )
    parser.add_argument("--window", type=float, default=0.0, help="seconds measured per level")
    parser.add_argument(
        "--budget", type=float, default=0.0, help="seconds per ramp (240; --quick 150)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="extra alternated CPU rounds per design at the reference level (2; --quick 0)",
    )
    parser.add_argument(
        "--designs",
        type=str,
        default="",
        help="subset, e.g. ours,baseline; also ours_plain,ours_transcript",
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep worker logs and lag files here"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="measure nothing: summarize the windows of an earlier --json again",
    )
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 0 if args.quick else 2
    if args.rooms_ramp is None:
        args.rooms_ramp = 0 if args.quick else 4
    return args


def make_plan(args: argparse.Namespace) -> tuple[Plan, float]:
    if args.quick:
        levels, window, budget = (2, 4), 8.0, 150.0
    else:
        levels, window, budget = (2, 4, 6, 8, 10, 12, 16, 20, 24), 15.0, 240.0
    if args.levels:
        levels = tuple(int(x) for x in args.levels.split(","))
    plan = Plan(
        rooms=args.rooms,
        levels=levels,
        window=args.window or window,
        idle_window=4.0 if args.quick else 6.0,
        warmup_max=10.0 if args.quick else 14.0,
    )
    return plan, args.budget or budget


async def run(
    args: argparse.Namespace, server: LiveKitServer, workdir: Path
) -> dict[str, DesignResult]:
    plan, budget = make_plan(args)
    designs = [d for d in args.designs.split(",") if d] if args.designs else list(DESIGNS)
    ramps = [(name, plan) for name in designs]
    if args.rooms_ramp > 1:  # then the same ramps with the tracks spread over more rooms
        spread = Plan(**{**asdict(plan), "rooms": args.rooms_ramp})
        ramps += [(name + ROOMS_SUFFIX, spread) for name in designs]
    budget *= len(ramps)
    start = time.monotonic()
    results: dict[str, DesignResult] = {}
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def stop() -> None:  # Ctrl-C or SIGTERM: unwind, every design's finally cleans up
        if not _STOPPING:
            _STOPPING.append(True)
            print("interrupted, stopping everything", file=sys.stderr, flush=True)
            if main_task is not None:
                main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    for i, (name, ramp) in enumerate(ramps):
        if _STOPPING:
            break
        left = budget - (time.monotonic() - start)
        deadline = time.monotonic() + left / (len(ramps) - i)
        print(
            f"== {name}: levels {ramp.levels}, {ramp.rooms} rooms, {ramp.window:.0f} s windows, "
            f"{left / (len(ramps) - i):.0f} s budget",
            flush=True,
        )
        design = DesignRun(name, server, ramp, workdir, deadline)
        try:
            results[name] = await design.run()
        except asyncio.CancelledError:
            if _STOPPING:
                break
            raise
        except Exception as e:  # keep what the other designs measured
            print(f"  [{name}] failed: {str(e)[:300]}", flush=True)
            design.result.stopped = f"error: {str(e)[:200]}"
            results[name] = design.result
    await run_cpu_rounds(results, server, plan, workdir, args.repeat)
    return results


async def run_cpu_rounds(
    results: dict[str, DesignResult], server: LiveKitServer, plan: Plan, workdir: Path, repeat: int
) -> None:
    """Per-track CPU swings by about 15% between runs on a shared machine: measure each
    design `repeat` more times at the reference level, alternating designs, so the ratio
    rests on medians of runs made at nearly the same time."""
    if repeat <= 0 or "ours" not in results or "baseline" not in results:
        return
    tracks = reference_level(results, plan)
    rounds = Plan(
        rooms=plan.rooms,
        levels=(tracks,),
        window=CPU_ROUND_WINDOW,
        idle_window=plan.idle_window,
        warmup_max=plan.warmup_max,
    )
    for r in range(repeat):
        for name in [n for n in results if not n.endswith(ROOMS_SUFFIX)]:
            if _STOPPING:
                return
            print(f"== {name}: CPU round {r + 1}/{repeat} at {tracks} tracks", flush=True)
            run = DesignRun(
                name, server, rounds, workdir / f"round-{r + 1}", time.monotonic() + 240
            )
            try:
                measured = await run.run()
            except Exception as e:
                print(f"  [{name}] round failed: {str(e)[:300]}", flush=True)
                continue
            loaded = [w for w in measured.levels if w.tracks == tracks]
            if measured.idle is not None and loaded:
                results[name].rounds.append((measured.idle, loaded[-1]))


def load_results(path: Path) -> tuple[dict[str, DesignResult], Plan]:
    body = json.loads(path.read_text())
    plan = Plan(**{f: body["config"][f] for f in Plan.__dataclass_fields__})
    plan = Plan(**{**asdict(plan), "levels": tuple(plan.levels)})
    results = {}
    for name, design in body["designs"].items():
        result = DesignResult(name, stopped=design["stopped"])
        result.idle = Window(**design["idle"]) if design["idle"] else None
        result.levels = [Window(**w) for w in design["levels"]]
        result.rounds = [
            (Window(**r["idle"]), Window(**r["loaded"])) for r in design.get("rounds", [])
        ]
        results[name] = result
    return results, plan


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    os.environ.setdefault("LIVEKIT_SERVER_BIN", str(DEFAULT_SERVER_BIN))
    workdir = Path(tempfile.mkdtemp(prefix="capacity-"))
    server: LiveKitServer | None = None

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    try:
        if args.from_json is not None:
            results, plan = load_results(args.from_json)
        else:
            server = LiveKitServer.start(workdir / "livekit-server.log")
            results = asyncio.run(run(args, server, workdir))
            if _STOPPING:
                return 130
            plan, _ = make_plan(args)
        summary = summarize(results, plan)
        print()
        print(table(results))
        print()
        print(cpu_breakdown(summary))
        print()
        print(json.dumps({k: v for k, v in summary.items() if k != "designs"}, indent=2))
        body = {
            "summary": summary,
            "config": {
                **asdict(plan),
                "quick": args.quick,
                "gating": args.gating,
                "cpu_count": os.cpu_count(),
                "seconds": round(time.monotonic() - started),
            },
            "designs": {
                name: {
                    "idle": asdict(d.idle) if d.idle else None,
                    "levels": [asdict(w) for w in d.levels],
                    "rounds": [{"idle": asdict(i), "loaded": asdict(w)} for i, w in d.rounds],
                    "knee_tracks": d.knee,
                    "stopped": d.stopped,
                }
                for name, d in results.items()
            },
        }
        flat = {k: v for k, v in summary.items() if k not in ("designs",)}
        args.json.write_text(json.dumps({**flat, **body}, indent=2))
        print(f"\nwrote {args.json} ({time.monotonic() - started:.0f} s)")
        return 0
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted, stopping everything", file=sys.stderr)
        return 130
    finally:
        for worker in _WORKERS:
            worker.stop()
        if server is not None:
            server.stop()
        if args.keep is not None:
            shutil.copytree(workdir, args.keep, dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
