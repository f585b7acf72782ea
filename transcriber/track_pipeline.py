"""Track pipeline: one subscribed audio track → speech gate → STT stream → captions.

With gating on, audio reaches the STT only around speech (see `speech_gate`); the STT
stream is opened on the first speech, flushed at the end of each burst and closed after a
long silence. Without gating every frame is streamed.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.types import NOT_GIVEN
from livekit.agents.vad import VAD

from . import metrics
from .captions import Caption, SegmentTracker, Speaker
from .speech_gate import GateAudio, GateBurstEnd, GateIdle, GateOptions, SpeechGate
from .stt_failover import FailoverStream, FailoverSTT, ProviderUsage

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PipelineOptions:
    """Values come from `Settings` (see `worker.room_options`); only the frame size is ours."""

    sample_rate: int
    language: str
    """Captions say this language when the STT does not."""
    drain_timeout: float
    """How long closing waits for the STT to deliver the last final."""
    gate: GateOptions | None
    """None streams every frame to the STT (no VAD gating)."""
    frame_size_ms: int = 50
    """Audio per frame from the track: every frame costs Python work on the event loop, and
    50 ms frames cost a quarter of the SDK's default 10 ms (capacity benchmark) for at most
    50 ms of added latency."""


@dataclass
class TrackUsage:
    """What one track cost: logged when it closes, summed per room."""

    seconds_received: float = 0.0
    stt: dict[str, ProviderUsage] = field(default_factory=dict)

    def add(self, other: TrackUsage) -> None:
        self.seconds_received += other.seconds_received
        for name, usage in other.stt.items():
            self.add_stt(name, usage)

    def add_stt(self, name: str, usage: ProviderUsage) -> None:
        total = self.stt.setdefault(name, ProviderUsage())
        total.seconds_sent += usage.seconds_sent
        total.connected_seconds += usage.connected_seconds
        total.failures += usage.failures

    def log_fields(self) -> dict[str, float]:
        fields = {"audio_received_s": round(self.seconds_received, 2)}
        for name, usage in self.stt.items():
            fields[f"stt_{name}_sent_s"] = round(usage.seconds_sent, 2)
            fields[f"stt_{name}_connected_s"] = round(usage.connected_seconds, 2)
            fields[f"stt_{name}_failures"] = usage.failures
        return fields


def own_frames_only(stream: rtc.AudioStream) -> rtc.AudioStream:
    """Has the rtc SDK hand `stream` its own frames only.

    The SDK puts every audio frame of the process in the queue of every `AudioStream`, one
    event-loop wake-up each, and each stream drops the others' frames: N tracks cost N²
    wake-ups. In the capacity benchmark at 8 tracks that delivery was a fifth of a job
    process's samples (py-spy). This narrows the stream's subscription to its own handle;
    tests/test_livekit_internals.py fails if an SDK upgrade changes what it relies on.
    """
    from livekit.rtc._ffi_client import FfiClient

    handle = stream._ffi_handle.handle

    def own(event: Any) -> bool:
        return bool(
            event.WhichOneof("message") == "audio_stream_event"
            and event.audio_stream_event.stream_handle == handle
        )

    queue = FfiClient.instance.queue
    with queue._lock:
        for i, (subscriber, loop, _) in enumerate(queue._subscribers):
            if subscriber is stream._ffi_queue:
                queue._subscribers[i] = (subscriber, loop, own)
    return stream


class TrackPipeline:
    """Runs while its track is subscribed; `aclose()` ends the input, lets the STT publish
    its last final (bounded by `drain_timeout`), then releases everything.

    STT failures are handled below (reconnects, failover, replay), so one track's trouble
    never reaches the others.
    """

    def __init__(
        self,
        *,
        room: rtc.Room,
        track: rtc.Track,
        speaker: Speaker,
        captions: Callable[[Caption], None],
        stt: FailoverSTT,
        vad: VAD,
        options: PipelineOptions,
        language: str | None = None,
    ) -> None:
        """`language`: what the speaker speaks (None: the STT's default)."""
        self._stt = stt
        self._language = language
        self._opts = options
        self._log_extra = {
            "room": room.name,
            "participant": speaker.identity,
            "track": track.sid,
        }
        self._speaker = speaker
        self._captions = captions
        self.finals = 0
        self.usage = TrackUsage()
        self._audio = own_frames_only(
            rtc.AudioStream.from_track(
                track=track,
                sample_rate=options.sample_rate,
                num_channels=1,
                frame_size_ms=options.frame_size_ms,
            )
        )
        self._gate = SpeechGate(vad, options.gate) if options.gate is not None else None
        self._track_clock = _ArrivalClock()
        self._received_metric = metrics.SecondsTally(metrics.AUDIO_RECEIVED)
        self._stream: FailoverStream | None = None
        self._segments: dict[FailoverStream, SegmentTracker] = {}  # per open stream
        self._stream_clock = _ArrivalClock()
        self._consumers: set[asyncio.Task[None]] = set()
        self._failed = False
        self._closing: asyncio.Task[None] | None = None
        self._forward = asyncio.create_task(self._forward_audio(), name="track-audio")
        self._task = asyncio.create_task(self._run(), name=f"track-pipeline-{track.sid}")

    def flush(self) -> None:
        """Marks a segment boundary (the track was muted): the STT finalizes what it has."""
        if self._stream is not None:
            with contextlib.suppress(RuntimeError):
                self._stream.flush()

    def set_language(self, language: str) -> None:
        """The speaker changed language. The segment in progress finishes in the old one
        and the next opens a stream in the new one: right away when none is in progress,
        else at that segment's final (`_consume`)."""
        self._language = language
        stream = self._stream
        if stream is not None:
            tracker = self._segments.get(stream)
            if tracker is None or not tracker.segment_open:
                self._end_stream_if_language_changed(stream)

    def _end_stream_if_language_changed(self, stream: FailoverStream) -> None:
        if stream is self._stream and (stream.language or None) != self._language:
            self._end_stream()  # its last words still publish; new audio opens a new stream

    async def aclose(self) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._forward.cancel()  # no more track audio; what was received still goes out
        if self._gate is not None:
            self._gate.end_input()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._opts.drain_timeout)
        except asyncio.TimeoutError:
            logger.warning("STT did not finish in time, closing the track", extra=self._log_extra)
        except Exception:
            logger.exception("track pipeline failed", extra=self._log_extra)
        await utils.aio.cancel_and_wait(self._task, self._forward, *self._consumers)
        await self._audio.aclose()
        if self._gate is not None:
            await self._gate.aclose()

    async def _run(self) -> None:
        if self._gate is not None:
            await self._follow_gate(self._gate)
        else:
            await asyncio.wait([self._forward])
        self._end_stream()
        while self._consumers:
            await asyncio.wait(list(self._consumers))

    async def _forward_audio(self) -> None:
        """Track audio into the gate (or straight to the STT) until the track ends."""
        try:
            async for event in self._audio:
                frame, arrived = event.frame, time.monotonic()
                self.usage.seconds_received += frame.duration
                self._received_metric.add(frame.duration)
                if self._gate is not None:
                    self._track_clock.record(self.usage.seconds_received, arrived)
                    self._gate.push_frame(frame)
                else:
                    self._send(frame, arrived=arrived)
        finally:
            self._received_metric.flush()  # cancelled when the track closes
        if self._gate is not None:
            self._gate.end_input()

    async def _follow_gate(self, gate: SpeechGate) -> None:
        async for event in gate:
            if isinstance(event, GateAudio):
                arrived = self._track_clock.at(event.start + event.frame.duration)
                self._send(event.frame, arrived=arrived)
            elif isinstance(event, GateBurstEnd):
                self.flush()
            elif isinstance(event, GateIdle):
                self._end_stream()

    def _send(self, frame: rtc.AudioFrame, *, arrived: float | None) -> None:
        if self._failed:
            return
        if self._stream is None:
            self._open_stream()
        assert self._stream is not None
        try:
            self._stream.push_frame(frame)
        except RuntimeError:
            return  # the stream ended with an error; its consumer reports it
        self._stream_clock.record(self._stream_clock.end + frame.duration, arrived)

    def _open_stream(self) -> None:
        stream = self._stt.stream(language=self._language or NOT_GIVEN, log_extra=self._log_extra)
        self._stream = stream
        self._stream_clock = _ArrivalClock()
        task = asyncio.create_task(self._consume(stream, self._stream_clock), name="track-stt")
        self._consumers.add(task)
        task.add_done_callback(self._consumers.discard)

    def _end_stream(self) -> None:
        """Ends the open STT stream's input; its consumer publishes what is left."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(RuntimeError):
                stream.end_input()

    async def _consume(self, stream: FailoverStream, clock: _ArrivalClock) -> None:
        segments = SegmentTracker(
            speaker=self._speaker,
            emit=self._captions,
            wall_time=clock.wall_time,
            language=stream.language or self._opts.language,
        )
        self._segments[stream] = segments
        try:
            async for event in stream:
                segments.on_speech_event(event)
                if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                    self._end_stream_if_language_changed(stream)
                if event.alternatives and event.type in _CAPTIONS:
                    arrived = clock.at(event.alternatives[0].end_time)
                    if arrived is not None:
                        metrics.CAPTION_LATENCY.labels(kind=_CAPTIONS[event.type]).observe(
                            time.monotonic() - arrived
                        )
        except Exception:
            # provider failures are handled below (retries, failover); this is a bug: this
            # track stops being captioned, every other track goes on
            logger.exception("captioning this track failed, stopping it", extra=self._log_extra)
            self._failed = True
            self._forward.cancel()
            if self._gate is not None:
                self._gate.end_input()
        finally:
            self._segments.pop(stream, None)
            segments.close_open_segment()
            self.finals += segments.finals
            if self._stream is stream:
                self._stream = None
            await stream.aclose()
            for name, usage in stream.usage.items():
                self.usage.add_stt(name, usage)


_CAPTIONS = {
    stt.SpeechEventType.INTERIM_TRANSCRIPT: "interim",
    stt.SpeechEventType.FINAL_TRANSCRIPT: "final",
}


class _ArrivalClock:
    """When the audio up to a given position (seconds) arrived, for caption latency."""

    def __init__(self, keep: float = 30.0) -> None:
        self._keep = keep
        self._ends: deque[float] = deque()
        self._times: deque[float | None] = deque()

    @property
    def end(self) -> float:
        return self._ends[-1] if self._ends else 0.0

    def record(self, end: float, arrived: float | None) -> None:
        self._ends.append(end)
        self._times.append(arrived)
        while self._ends and end - self._ends[0] > self._keep:
            self._ends.popleft()
            self._times.popleft()

    def wall_time(self, position: float) -> float:
        """Wall-clock time the audio up to `position` arrived (now, if not recorded)."""
        arrived = self.at(position)
        now = time.monotonic()
        return time.time() - (now - arrived if arrived is not None else 0.0)

    def at(self, position: float) -> float | None:
        if position <= 0 or not self._ends:
            return None
        i = bisect.bisect_left(self._ends, position - 1e-6)
        return self._times[min(i, len(self._times) - 1)]
