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

Energy pre-check: silero runs on 32 ms windows, silence and room noise included. Frames
that cannot hold speech skip inference once `QUIET_BEFORE_SKIP` seconds of them have been
analyzed: those below `energy_floor` (default -90 dBFS: under one least-significant bit,
i.e. digital silence as sent by muted or noise-suppressed microphones), and those less
than `noise_margin` dB (default 6) above the track's own noise floor, the quietest 10 ms
frame of the last `NOISE_MEMORY` seconds (a fan, a quiet room). The VAD stream is ended
there, and a fresh one (the model state silero starts every track with) starts on the
next louder frame. Skipped frames still go to the ring, so they can be pre-roll. An
absolute floor cannot be raised to catch room noise (silero still finds speech in a voice
scaled down to -80 dBFS RMS); a floor relative to the track's noise can, since a voice
rises above the noise it is spoken over. Speech that never rises `noise_margin` above
the noise is not sent.

If the VAD fails, the gate logs it and lets all audio through from then on: it costs
money but loses no words.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc
from livekit.agents import utils, vad

logger = logging.getLogger(__name__)

DETECTION_ALLOWANCE = 1.0
"""Seconds the ring keeps beyond the pre-roll: how late a VAD may confirm speech."""

QUIET_BEFORE_SKIP = 1.0
"""Seconds of frames below the energy floor the VAD analyzes before inference is skipped;
longer than the VAD's end-of-speech silence, so a burst ends the usual way."""

NOISE_MEMORY = 10
"""Seconds (in 1 s blocks) over which a track's noise floor is its quietest frame: long
enough to hold a pause in any speech, short enough to follow a noise that gets louder."""

NOISE_CEILING = -40.0
"""dBFS: a track whose quietest frame is louder than this is not room noise but one steady
signal (music, a tone, synthetic test audio) that the VAD must hear."""


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
    noise_margin: float | None = 6.0
    """dB above the track's noise floor under which frames also skip inference (see
    `QuietCheck`); None: only the absolute `energy_floor`."""

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
        if self.noise_margin is not None and not self.noise_margin > 0:
            raise ValueError(
                f"noise_margin is in dB and must be more than 0 or None, got {self.noise_margin}"
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
    """A frame the VAD does not analyze (quiet, or the VAD failed)."""

    start: int
    frame: rtc.AudioFrame


class QuietCheck:
    """Which frames may skip inference: below the absolute `energy_floor`, or less than
    `noise_margin` dB above the track's noise floor (the quietest 10 ms frame of the last
    `NOISE_MEMORY` seconds, if under `NOISE_CEILING`). It depends on the audio alone, so
    the gate's decisions do too."""

    def __init__(self, options: GateOptions, rate: int) -> None:
        self._floor = None if options.energy_floor is None else _power_of(options.energy_floor)
        self._margin = None if options.noise_margin is None else 10 ** (options.noise_margin / 10)
        self._ceiling = _power_of(NOISE_CEILING)
        self._block = rate  # samples per noise-memory block (1 s)
        self._block_min = float("inf")
        self._block_fill = 0
        self._minima: deque[float] = deque(maxlen=NOISE_MEMORY)

    def __call__(self, frame: rtc.AudioFrame) -> bool:
        if self._floor is None:
            return False
        data = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32)
        power = float(np.dot(data, data)) / len(data)
        if power < self._floor:
            return True
        if self._margin is None:
            return False
        noise = min(self._block_min, min(self._minima, default=float("inf")))
        if noise == float("inf") or noise > self._ceiling:
            noise = 0.0  # no floor yet, or not noise
        self._block_min = min(self._block_min, power)
        self._block_fill += len(data)
        if self._block_fill >= self._block:
            self._minima.append(self._block_min)
            self._block_min, self._block_fill = float("inf"), 0
        return power < noise * self._margin


def _power_of(dbfs: float) -> float:
    return (32768 * 10 ** (dbfs / 20)) ** 2


class PrerollRing:
    """The latest frames not sent, up to `capacity` samples: what a burst's pre-roll is
    taken from."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._frames: deque[tuple[int, rtc.AudioFrame]] = deque()
        self._samples = 0

    def hold(self, start: int, frame: rtc.AudioFrame) -> None:
        self._frames.append((start, frame))
        self._samples += frame.samples_per_channel
        while self._samples - self._frames[0][1].samples_per_channel >= self._capacity:
            self._samples -= self._frames.popleft()[1].samples_per_channel

    def take(self, first: int | None) -> list[tuple[int, rtc.AudioFrame]]:
        """Empties the ring; returns its frames from track sample `first` on (all for None)."""
        taken = [
            (start, frame)
            for start, frame in self._frames
            if first is None or start + frame.samples_per_channel > first
        ]
        self._frames.clear()
        self._samples = 0
        return taken


class BurstDecider:
    """The gate's decisions, synchronous and in track samples: told where the VAD heard
    speech start and end, and given every frame (in track order) once the VAD has reported
    on it, it emits `GateEvent`s through `emit`."""

    def __init__(self, options: GateOptions, rate: int, emit: Callable[[GateEvent], None]) -> None:
        self._rate = rate
        self._emit = emit
        self._preroll = round(options.preroll * rate)
        self._hangover = round(options.hangover * rate)
        self._idle_close = None if options.idle_close is None else round(options.idle_close * rate)
        self._ring = PrerollRing(round((options.preroll + DETECTION_ALLOWANCE) * rate))
        self.sent = 0
        """Samples sent."""
        self.bursts = 0
        self.speaking = False
        self._in_burst = False
        self._hangover_end = 0
        self._sent_until = 0
        self._idle_reported = False

    def speech_start(self, onset: int | None) -> None:
        """Speech from track sample `onset` on; None sends all of the ring."""
        self.speaking = True
        if self._in_burst:
            # speech resumed before the burst was flushed: same burst, and the audio held
            # since the hangover goes out first, so the STT hears one contiguous utterance
            self._send_all(self._ring.take(None))
            return
        self._in_burst = True
        self.bursts += 1
        self._idle_reported = False
        self._send_all(self._ring.take(None if onset is None else onset - self._preroll))

    def speech_end(self, speech_end: int) -> None:
        self.speaking = False
        self._hangover_end = speech_end + self._hangover

    def frame(self, start: int, frame: rtc.AudioFrame) -> None:
        if self._in_burst and (self.speaking or start < self._hangover_end):
            self._send(start, frame)
            return
        self._hold(start, frame)
        # The flush waits one pre-roll past the hangover: speech resuming by then continues
        # the burst with the held audio, rather than starting a segment with too little
        # lead-in (the audio that would have been its pre-roll was already sent).
        end = start + frame.samples_per_channel
        if self._in_burst and end - self._sent_until >= self._preroll:
            self.end_burst()

    def end_burst(self) -> None:
        """Ends the burst in progress, if any."""
        if not self._in_burst:
            return
        self._in_burst = False
        self.speaking = False
        self._emit(GateBurstEnd(end=self._sent_until / self._rate))

    def _send_all(self, frames: list[tuple[int, rtc.AudioFrame]]) -> None:
        for start, frame in frames:
            self._send(start, frame)

    def _send(self, start: int, frame: rtc.AudioFrame) -> None:
        self._emit(GateAudio(frame=frame, start=start / self._rate))
        self.sent += frame.samples_per_channel
        self._sent_until = start + frame.samples_per_channel

    def _hold(self, start: int, frame: rtc.AudioFrame) -> None:
        self._ring.hold(start, frame)
        end = start + frame.samples_per_channel
        if (
            self._idle_close is not None
            and not self._idle_reported
            and end - self._sent_until >= self._idle_close
        ):
            self._idle_reported = True
            self._emit(GateIdle(silent_since=self._sent_until / self._rate))


class SpeechGate:
    """Gates one track's audio in front of its STT stream.

    Push every frame of the track (mono, one sample rate) with `push_frame`, call
    `end_input` when the track ends, and iterate the gate for `GateEvent`s in track
    order. `aclose()` releases everything and may be called any number of times.

    The gate feeds the VAD (skipping quiet frames, `QuietCheck`) and follows its reports;
    `BurstDecider` makes the decisions.
    """

    def __init__(self, vad: vad.VAD, options: GateOptions) -> None:
        self._vad = vad
        self._opts = options
        self._rate = 0
        self._received = 0
        self._analyzed = 0
        self._quiet_run = 0
        self._quiet: QuietCheck | None = None
        self._decider: BurstDecider | None = None
        self._live: _Span | None = None
        self._spans: list[_Span] = []
        self._items = utils.aio.Chan[_Span | _Skipped]()
        self._input_ended = False
        self._closed = False
        self._passthrough = False
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
        return self._seconds(self._decider.sent) if self._decider else 0.0

    @property
    def seconds_analyzed(self) -> float:
        """Seconds of audio the VAD ran on (the rest was skipped by the energy pre-check)."""
        return self._seconds(self._analyzed)

    @property
    def bursts(self) -> int:
        """Bursts of speech started (each ends with exactly one `GateBurstEnd`)."""
        return self._decider.bursts if self._decider else 0

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        if self._input_ended or self._closed:
            raise RuntimeError("SpeechGate input ended")
        if frame.num_channels != 1:
            raise ValueError(f"SpeechGate takes mono audio, got {frame.num_channels} channels")
        if not self._rate:
            self._rate = frame.sample_rate
            self._quiet = QuietCheck(self._opts, self._rate)
            self._decider = BurstDecider(self._opts, self._rate, self._out.send_nowait)
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
        assert self._quiet is not None
        quiet = self._quiet(frame)
        if quiet and self._quiet_run >= QUIET_BEFORE_SKIP * self._rate:
            if self._live is not None:
                self._end_span(self._live)
            self._items.send_nowait(_Skipped(start, frame))
        else:
            self._analyze(start, frame)
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

    def _analyze(self, start: int, frame: rtc.AudioFrame) -> None:
        span = self._live
        if span is None:
            span = _Span(stream=self._vad.stream(), offset=start)
            self._live = span
            self._spans.append(span)
            self._items.send_nowait(span)
        span.pending.append((start, frame))
        span.fed += frame.samples_per_channel
        self._analyzed += frame.samples_per_channel
        try:
            span.stream.push_frame(frame)
        except RuntimeError:
            pass  # the VAD failed; _run lets its pending frames through

    def _end_span(self, span: _Span) -> None:
        self._live = None
        try:
            span.stream.end_input()
        except RuntimeError:
            pass  # the VAD stream already failed or closed

    # following the VAD, in track order

    async def _run(self) -> None:
        async for item in self._items:
            assert self._decider is not None
            if isinstance(item, _Skipped):
                self._decider.frame(item.start, item.frame)
            else:
                await self._follow(item, self._decider)
        if self._decider is not None:
            self._decider.end_burst()

    async def _follow(self, span: _Span, decider: BurstDecider) -> None:
        try:
            if not self._passthrough:
                try:
                    async for event in span.stream:
                        self._on_vad_event(span, event, decider)
                except Exception:
                    logger.exception("VAD failed: sending all audio of this track from now on")
                    self._passthrough = True
                    decider.speech_start(None)
            # the tail the VAD never reported on (shorter than one inference window)
            while span.pending:
                decider.frame(*span.pending.popleft())
            if decider.speaking and not self._passthrough:
                decider.speech_end(span.offset + span.fed)  # analysis stopped mid-speech
        finally:
            self._spans.remove(span)
            await span.stream.aclose()

    def _on_vad_event(self, span: _Span, event: vad.VADEvent, decider: BurstDecider) -> None:
        reported = span.offset + self._samples(event.timestamp)
        while span.pending:
            start, frame = span.pending[0]
            if start + frame.samples_per_channel > reported:
                break
            span.pending.popleft()
            decider.frame(start, frame)
        if event.type == vad.VADEventType.START_OF_SPEECH:
            decider.speech_start(
                span.offset + self._samples(event.timestamp - event.speech_duration)
            )
        elif event.type == vad.VADEventType.END_OF_SPEECH:
            decider.speech_end(
                span.offset + self._samples(event.timestamp - event.silence_duration)
            )
