"""Speech gate: one track's audio → only the audio a cloud STT needs to hear.

Cloud STT bills for every second it receives. The gate runs a VAD (silero in production)
on every frame of a track and lets audio through only while someone speaks:

- pre-roll: when the VAD reports the start of speech, the audio from `preroll` seconds
  before the VAD's estimate of where speech began comes out first, from a ring buffer;
- hangover: audio keeps flowing until `hangover` seconds after the VAD's estimate of where
  speech ended, then `GateBurstEnd` tells the pipeline to flush its STT stream;
- idle: after `idle_close` seconds with nothing sent, `GateIdle` tells the pipeline it may
  close its STT stream; the next `GateAudio` means "open one again". The STT base class
  buffers pushed frames while it connects, so nothing is lost while it reopens.

VAD latency cannot cut speech. Silero reports START_OF_SPEECH only once it has heard
`min_speech_duration` of speech (two 32 ms windows by default), 54-150 ms after the first
sound on our clips. Its event carries the speech it needed (`speech_duration`), so the
gate starts the pre-roll at `event time - speech_duration - preroll` rather than at the
event: that estimate of the onset was 10 ms early to 86 ms late on our clips, and the
required pre-roll of at least 0.3 s covers the remaining error many times over. The ring
keeps `preroll + DETECTION_ALLOWANCE` seconds, so a VAD may take up to a second to
confirm speech. The hangover is counted from `end event time - silence_duration` the
same way, so it means "audio after the speech", whatever silence the VAD waits for.

Every decision is made in track time (frame durations), never wall clock: a frame is let
through or held only once the VAD has reported on it, so the output depends on the audio
alone, and a frame reaches the STT about one VAD window (32 ms) after it arrived.

Energy pre-check: silero costs about 1.4 s of CPU per minute of audio per track, silence
included. Frames whose RMS is below `energy_floor` (default -90 dBFS: under one
least-significant bit, i.e. digital silence as sent by muted or noise-suppressed
microphones) skip inference once `QUIET_BEFORE_SKIP` seconds of them have been analyzed:
the VAD stream is ended there, and a fresh one (the model state silero starts every track
with) starts on the next louder frame. Skipped frames still go to the ring, so they can
be pre-roll. The floor cannot be raised to catch room noise: silero still finds speech
in a voice scaled down to -80 dBFS RMS.

If the VAD fails, the gate logs it and lets all audio through from then on: it costs
money but loses no words.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc
from livekit.agents import utils, vad

logger = logging.getLogger("transcriber.speech_gate")

DETECTION_ALLOWANCE = 1.0
"""Seconds the ring keeps beyond the pre-roll: how late a VAD may confirm speech."""

QUIET_BEFORE_SKIP = 1.0
"""Seconds of frames below the energy floor the VAD analyzes before inference is skipped;
longer than silero's end-of-speech silence (0.55 s), so a burst ends the usual way."""


MIN_PREROLL = 0.3
"""Seconds: a shorter pre-roll cuts first syllables."""


@dataclass(frozen=True, kw_only=True)
class GateOptions:
    """Values come from `Settings` (`gate_preroll`, `gate_hangover`, `stt_idle_close`)."""

    preroll: float
    """Seconds sent before the VAD's estimate of where speech began; at least 0.3."""
    hangover: float
    """Seconds sent after the VAD's estimate of where speech ended, so the STT can finish."""
    idle_close: float | None = None
    """Seconds with nothing sent after which `GateIdle` says the STT connection may close;
    None never says so (for providers that keep an idle connection alive for free)."""
    energy_floor: float | None = -90.0
    """dBFS RMS under which frames skip VAD inference after `QUIET_BEFORE_SKIP` seconds
    of them; None runs the VAD on every frame."""

    def __post_init__(self) -> None:
        if not self.preroll >= MIN_PREROLL:
            raise ValueError(
                f"preroll={self.preroll:g} s would cut first syllables: "
                f"use at least {MIN_PREROLL:g} seconds"
            )
        if not self.hangover >= 0:
            raise ValueError(f"hangover must be 0 or more seconds, got {self.hangover}")
        if self.idle_close is not None and not self.idle_close > 0:
            raise ValueError(
                f"idle_close must be more than 0 seconds or None, got {self.idle_close}"
            )
        if self.energy_floor is not None and not self.energy_floor <= 0:
            raise ValueError(
                f"energy_floor is in dBFS and must be 0 or less, got {self.energy_floor}"
            )


@dataclass(frozen=True)
class GateAudio:
    """Audio to push to the STT stream; reopen the stream first if `GateIdle` closed it."""

    frame: rtc.AudioFrame
    start: float
    """Track time of the frame's first sample, in seconds since the first pushed frame."""


@dataclass(frozen=True)
class GateBurstEnd:
    """The speech and its hangover were sent: call `stream.flush()` for a prompt final."""

    end: float
    """Track time where the sent audio ends."""


@dataclass(frozen=True)
class GateIdle:
    """Nothing was sent for `idle_close` seconds: the STT stream may be closed."""

    silent_since: float
    """Track time since which nothing was sent."""


GateEvent = GateAudio | GateBurstEnd | GateIdle


@dataclass(eq=False)
class _Span:
    """Frames analyzed by one VAD stream, and the ones it has not reported on yet."""

    stream: vad.VADStream
    offset: int
    """Track sample of the stream's first sample."""
    fed: int = 0
    pending: deque[tuple[int, rtc.AudioFrame]] = field(default_factory=deque)


@dataclass(frozen=True)
class _Skipped:
    """A frame below the energy floor that the VAD does not analyze."""

    start: int
    frame: rtc.AudioFrame


class SpeechGate:
    """Gates one track's audio in front of its STT stream.

    Push every frame of the track (mono, one sample rate) with `push_frame`, call
    `end_input` when the track ends, and iterate the gate for `GateEvent`s in track
    order. `aclose()` releases everything and may be called any number of times.
    """

    def __init__(self, vad: vad.VAD, options: GateOptions) -> None:
        self._vad = vad
        self._opts = options
        self._floor_power = (
            None
            if self._opts.energy_floor is None
            else (32768 * 10 ** (self._opts.energy_floor / 20)) ** 2
        )

        # input side (push_frame)
        self._rate = 0
        self._received = 0
        self._analyzed = 0
        self._quiet_run = 0
        self._live: _Span | None = None
        self._spans: list[_Span] = []
        self._items = utils.aio.Chan[_Span | _Skipped]()
        self._input_ended = False
        self._closed = False

        # decision side (_run), all positions in track samples
        self._sent = 0
        self._bursts = 0
        self._speaking = False
        self._in_burst = False
        self._hangover_end = 0
        self._sent_until = 0
        self._idle_reported = False
        self._passthrough = False
        self._ring: deque[tuple[int, rtc.AudioFrame]] = deque()
        self._ring_samples = 0

        self._out = utils.aio.Chan[GateEvent]()
        self._task = asyncio.create_task(self._run(), name="speech-gate")
        self._task.add_done_callback(lambda _: self._out.close())

    @property
    def seconds_received(self) -> float:
        """Seconds of audio pushed into the gate."""
        return self._seconds(self._received)

    @property
    def seconds_sent(self) -> float:
        """Seconds of audio that came out as `GateAudio`."""
        return self._seconds(self._sent)

    @property
    def seconds_analyzed(self) -> float:
        """Seconds of audio the VAD ran on (the rest was skipped by the energy pre-check)."""
        return self._seconds(self._analyzed)

    @property
    def bursts(self) -> int:
        """Bursts of speech started (each ends with exactly one `GateBurstEnd`)."""
        return self._bursts

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        if self._input_ended or self._closed:
            raise RuntimeError("SpeechGate input ended")
        if frame.num_channels != 1:
            raise ValueError(f"SpeechGate takes mono audio, got {frame.num_channels} channels")
        if not self._rate:
            self._rate = frame.sample_rate
        elif frame.sample_rate != self._rate:
            raise ValueError(
                f"SpeechGate got {frame.sample_rate} Hz after {self._rate} Hz: resample first"
            )
        samples = frame.samples_per_channel
        if samples == 0:
            return
        start = self._received
        self._received += samples

        if self._passthrough:
            self._items.send_nowait(_Skipped(start, frame))
            return

        quiet = self._is_quiet(frame)
        if quiet and self._quiet_run >= QUIET_BEFORE_SKIP * self._rate:
            if self._live is not None:
                self._end_span(self._live)
            self._items.send_nowait(_Skipped(start, frame))
        else:
            span = self._live
            if span is None:
                span = _Span(stream=self._vad.stream(), offset=start)
                self._live = span
                self._spans.append(span)
                self._items.send_nowait(span)
            span.pending.append((start, frame))
            span.fed += samples
            self._analyzed += samples
            try:
                span.stream.push_frame(frame)
            except RuntimeError:
                pass  # the VAD failed; _run lets its pending frames through
        self._quiet_run = self._quiet_run + samples if quiet else 0

    def end_input(self) -> None:
        """No more frames: the gate reports on what it has, then its iterator ends."""
        if self._input_ended or self._closed:
            return
        self._input_ended = True
        if self._live is not None:
            self._end_span(self._live)
        self._items.close()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._items.close()
        await utils.aio.cancel_and_wait(self._task)
        for span in self._spans:
            await span.stream.aclose()
        self._spans.clear()
        self._out.close()

    def __aiter__(self) -> AsyncIterator[GateEvent]:
        return self

    async def __anext__(self) -> GateEvent:
        try:
            return await self._out.recv()
        except utils.aio.ChanClosed:
            if self._task.done() and not self._task.cancelled():
                if (exc := self._task.exception()) is not None:
                    raise exc from None
            raise StopAsyncIteration from None

    def _seconds(self, samples: int) -> float:
        return samples / self._rate if self._rate else 0.0

    def _samples(self, seconds: float) -> int:
        return round(seconds * self._rate)

    def _is_quiet(self, frame: rtc.AudioFrame) -> bool:
        if self._floor_power is None:
            return False
        data = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32)
        return float(np.dot(data, data)) / len(data) < self._floor_power

    def _end_span(self, span: _Span) -> None:
        self._live = None
        try:
            span.stream.end_input()
        except RuntimeError:
            pass  # the VAD stream already failed or closed

    # decisions, in track order

    async def _run(self) -> None:
        async for item in self._items:
            if isinstance(item, _Skipped):
                self._decide(item.start, item.frame)
            else:
                await self._follow(item)
        if self._in_burst:
            self._end_burst()

    async def _follow(self, span: _Span) -> None:
        try:
            if not self._passthrough:
                try:
                    async for event in span.stream:
                        self._on_vad_event(span, event)
                except Exception:
                    logger.exception("VAD failed: sending all audio of this track from now on")
                    self._start_passthrough()
            # the tail the VAD never reported on (shorter than one inference window)
            while span.pending:
                self._decide(*span.pending.popleft())
            if self._speaking and not self._passthrough:
                self._on_speech_end(span.offset + span.fed)  # analysis stopped mid-speech
        finally:
            self._spans.remove(span)
            await span.stream.aclose()

    def _on_vad_event(self, span: _Span, event: vad.VADEvent) -> None:
        reported = span.offset + self._samples(event.timestamp)
        while span.pending:
            start, frame = span.pending[0]
            if start + frame.samples_per_channel > reported:
                break
            span.pending.popleft()
            self._decide(start, frame)
        if event.type == vad.VADEventType.START_OF_SPEECH:
            self._on_speech_start(
                span.offset + self._samples(event.timestamp - event.speech_duration)
            )
        elif event.type == vad.VADEventType.END_OF_SPEECH:
            self._on_speech_end(
                span.offset + self._samples(event.timestamp - event.silence_duration)
            )

    def _on_speech_start(self, onset: int | None) -> None:
        """`onset` None sends all of the ring."""
        self._speaking = True
        if self._in_burst:
            # speech resumed before the burst was flushed: same burst, and the audio held
            # since the hangover goes out first, so the STT hears one contiguous utterance
            self._send_ring(None)
            return
        self._in_burst = True
        self._bursts += 1
        self._idle_reported = False
        self._send_ring(None if onset is None else onset - self._samples(self._opts.preroll))

    def _send_ring(self, first: int | None) -> None:
        """Sends the held frames from track sample `first` on (all of them for None)."""
        for start, frame in self._ring:
            if first is None or start + frame.samples_per_channel > first:
                self._send(start, frame)
        self._ring.clear()
        self._ring_samples = 0

    def _on_speech_end(self, speech_end: int) -> None:
        self._speaking = False
        self._hangover_end = speech_end + self._samples(self._opts.hangover)

    def _start_passthrough(self) -> None:
        self._passthrough = True
        self._on_speech_start(None)

    def _decide(self, start: int, frame: rtc.AudioFrame) -> None:
        if self._in_burst and (self._speaking or start < self._hangover_end):
            self._send(start, frame)
            return
        self._hold(start, frame)
        # The flush waits one pre-roll past the hangover: speech resuming by then continues
        # the burst with the held audio, rather than starting a segment with too little
        # lead-in (the audio that would have been its pre-roll was already sent).
        end = start + frame.samples_per_channel
        if self._in_burst and end - self._sent_until >= self._samples(self._opts.preroll):
            self._end_burst()

    def _send(self, start: int, frame: rtc.AudioFrame) -> None:
        self._out.send_nowait(GateAudio(frame=frame, start=self._seconds(start)))
        self._sent += frame.samples_per_channel
        self._sent_until = start + frame.samples_per_channel

    def _end_burst(self) -> None:
        self._in_burst = False
        self._speaking = False
        self._out.send_nowait(GateBurstEnd(end=self._seconds(self._sent_until)))

    def _hold(self, start: int, frame: rtc.AudioFrame) -> None:
        self._ring.append((start, frame))
        self._ring_samples += frame.samples_per_channel
        capacity = self._samples(self._opts.preroll + DETECTION_ALLOWANCE)
        while self._ring_samples - self._ring[0][1].samples_per_channel >= capacity:
            self._ring_samples -= self._ring.popleft()[1].samples_per_channel
        end = start + frame.samples_per_channel
        idle_close = self._opts.idle_close
        if (
            idle_close is not None
            and not self._idle_reported
            and end - self._sent_until >= self._samples(idle_close)
        ):
            self._idle_reported = True
            self._out.send_nowait(GateIdle(silent_since=self._seconds(self._sent_until)))
