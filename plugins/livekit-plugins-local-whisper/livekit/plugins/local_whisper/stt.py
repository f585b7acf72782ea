"""LiveKit STT over a local Whisper model.

A stream's audio goes to Silero VAD, which scores it; the segmenter turns the scores into
utterances; each utterance is decoded again every `interim_interval` seconds while it grows,
and LocalAgreement turns those decodes into interim transcripts and, at the pause, a final.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents import vad as agents_vad
from livekit.agents.language import LanguageCode
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
    TimedString,
)
from livekit.agents.utils import AudioBuffer, aio, is_given

from .backend import (
    DEFAULT_MODEL,
    MAX_WINDOW,
    MODEL_ENV,
    SAMPLE_RATE,
    Lead,
    ModelLoadError,
    WhisperBackend,
    Word,
    check_compute_type,
    check_language,
    join_words,
    resolve_model,
)
from .log import logger
from .policy import LocalAgreement
from .scheduler import Scheduler, SchedulerFull
from .segmenter import Segmenter

_PREFIX_PADDING = int(0.3 * SAMPLE_RATE)
"""Audio kept before the detected start of speech, so the first sound is not clipped."""
_SUFFIX_PADDING = int(0.2 * SAMPLE_RATE)
"""Audio kept after the detected end of speech, for the same reason at the other end."""
_PAUSE_HINT = int(0.2 * SAMPLE_RATE)
"""A pause this long starts the final decode, in case the pause lasts."""
_VAD_MAX_WINDOW = int(0.1 * SAMPLE_RATE)
"""Longer than any VAD's window (Silero's is 32 ms)."""
_FLUSH_WAIT = 0.2
_IDLE_HISTORY = 1.0
"""Audio kept before what the VAD has scored, since it decides a little after the fact."""
_LEAD_SECONDS = 4.0
"""How much of the previous final leads each decode of the next utterance."""


@dataclass(frozen=True, kw_only=True)
class STTOptions:
    model: str = DEFAULT_MODEL
    """A faster-whisper model name (tiny.en, base.en, small, ...) or a CTranslate2 model path."""
    language: str = "en"
    compute_type: str = "int8"
    cpu_threads: int = 0
    """Decoding threads, each decoding one stream at a time; 0 is one per core."""
    beam_size: int = 1
    interim_interval: float = 0.5
    """Seconds of new speech between two interim decodes."""
    max_segment_duration: float = 15.0
    """Unbroken speech gets a final after this many seconds."""
    min_silence_duration: float = 0.5
    """A pause this long ends the utterance with a final."""

    def __post_init__(self) -> None:
        _check_range("interim_interval", self.interim_interval, 0.1, 10.0)
        _check_range("max_segment_duration", self.max_segment_duration, 2.0, MAX_WINDOW - 2.0)
        _check_range("min_silence_duration", self.min_silence_duration, 0.1, 5.0)
        _check_range("cpu_threads", self.cpu_threads, 0, 256)
        _check_range("beam_size", self.beam_size, 1, 10)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name}={value!r} is out of range: use a value from {low:g} to {high:g}")


class STT(stt.STT[None]):
    def __init__(
        self,
        *,
        model: str | None = None,
        language: str = "en",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        beam_size: int = 1,
        interim_interval: float = 0.5,
        max_segment_duration: float = 15.0,
        min_silence_duration: float = 0.5,
        vad: agents_vad.VAD | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        """Captions from a Whisper model on this machine's CPU.

        `model` defaults to $LOCAL_WHISPER_MODEL, then tiny.en. The model and the Silero VAD
        are loaded once per process and shared by every STT and stream; pass `vad` or
        `scheduler` to use others. Raises ModelLoadError when the model cannot be used.
        """
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True,
                interim_results=True,
                aligned_transcript="word",
                offline_recognize=True,
                manual_flush=True,
            )
        )
        self._opts = STTOptions(
            model=model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL,
            language=language,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            beam_size=beam_size,
            interim_interval=interim_interval,
            max_segment_duration=max_segment_duration,
            min_silence_duration=min_silence_duration,
        )
        if scheduler is None:
            scheduler = _shared_scheduler(self._opts)
        self._scheduler = scheduler
        self._vad = vad

    @property
    def model(self) -> str:
        return self._opts.model

    @property
    def provider(self) -> str:
        return "faster-whisper"

    @property
    def options(self) -> STTOptions:
        return self._opts

    def prewarm(self) -> None:
        """Load the model and the VAD now (blocking), rather than on the first utterance."""
        self._scheduler.warm()
        if self._vad is None:
            self._vad = _shared_vad()

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> SpeechStream:
        opts, scheduler = self._opts, self._scheduler
        if is_given(language) and language != opts.language:
            opts = dataclasses.replace(opts, language=language)
            scheduler = _shared_scheduler(opts)
        if self._vad is None:
            self._vad = _shared_vad()
        return SpeechStream(
            stt=self, opts=opts, scheduler=scheduler, vad=self._vad, conn_options=conn_options
        )

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        if frame.sample_rate != SAMPLE_RATE:
            resampler = rtc.AudioResampler(frame.sample_rate, SAMPLE_RATE)
            frame = rtc.combine_audio_frames(resampler.push(frame) + resampler.flush())
        if frame.duration > MAX_WINDOW:
            raise ValueError(
                f"recognize() takes at most {MAX_WINDOW:g} s of audio, got {frame.duration:.1f} s:"
                " use stream() for longer audio"
            )
        words = await self._scheduler.submit(object(), _to_float(frame), urgent=True)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[_speech_data(words, self._opts.language, offset=0.0)] if words else [],
        )


class SpeechStream(stt.RecognizeStream):
    def __init__(
        self,
        *,
        stt: STT,
        opts: STTOptions,
        scheduler: Scheduler,
        vad: agents_vad.VAD,
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self._opts = opts
        self._scheduler = scheduler
        self._vad = vad
        self._audio = _AudioLog()
        self._open: _Segment | None = None
        self._live: list[_Segment] = []
        self._wakeup: tuple[int, asyncio.Future[None]] | None = None
        self._scored = 0
        """Audio up to this sample has been scored by the VAD; decodes look no further."""
        self._lead: Lead | None = None
        """The end of the last final, heard before each decode of the next utterance."""

    async def _run(self) -> None:
        self._audio = _AudioLog()
        self._open, self._live = None, []
        segments = aio.Chan[_Segment]()
        vad_stream = self._vad.stream()
        segmenter = Segmenter(
            sample_rate=SAMPLE_RATE, min_silence_duration=self._opts.min_silence_duration
        )
        settled_until = 0
        """Audio before this sample was ended by a flush; the VAD's late opinions don't count."""
        flushes: deque[int] = deque()
        """Flushes not applied yet: they wait for the VAD to score the audio before them."""
        self._scored = 0
        loop = asyncio.get_running_loop()

        def open_segment(start: int) -> None:
            segment = _Segment(start=start, needed_from=start)
            self._open = segment
            self._live.append(segment)
            segments.send_nowait(segment)

        def close_segment(end: int) -> None:
            if self._open is not None:
                self._open.end = max(end, self._open.start)
                self._open = None
                self._wake(force=True)

        def settle(until: int) -> None:
            """Apply the flushes up to `until`: the open segment ends at the flush point."""
            nonlocal settled_until
            while flushes and flushes[0] <= until:
                settled_until = flushes.popleft()
                close_segment(settled_until)
                segmenter.reset()

        def settle_if_stalled(at: int) -> None:
            # the VAD scores whole windows only, so the audio just before a flush may wait
            # for more audio that never comes: don't let that hold up the final
            if at not in flushes:
                return
            if at - self._scored <= _VAD_MAX_WINDOW:
                settle(at)
            else:
                loop.call_later(_FLUSH_WAIT, settle_if_stalled, at)

        async def forward_audio() -> None:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    flushes.append(self._audio.end)
                    loop.call_later(_FLUSH_WAIT, settle_if_stalled, self._audio.end)
                    continue
                self._audio.append(item)
                vad_stream.push_frame(item)
                # the VAD may lag: keep what it has yet to score, and a little before
                history = self._scored - int(_IDLE_HISTORY * SAMPLE_RATE)
                self._audio.forget_before(min([s.needed_from for s in self._live] + [history]))
            vad_stream.end_input()

        async def follow_vad() -> None:
            async for event in vad_stream:
                if event.type != agents_vad.VADEventType.INFERENCE_DONE:
                    continue
                window_start, window_end = self._scored, event.samples_index
                self._scored = window_end
                self._wake()
                settle(window_end)
                if window_end <= settled_until:
                    continue
                boundary = segmenter.push(event.probability, start=window_start, end=window_end)
                if boundary is not None and boundary.kind == "start":
                    start = boundary.sample - _PREFIX_PADDING
                    open_segment(max(start, settled_until, self._audio.first))
                elif boundary is not None:
                    close_segment(boundary.sample + _SUFFIX_PADDING)
                elif self._open is not None:
                    pause = segmenter.pause_start
                    if pause is not None and window_end - pause < _PAUSE_HINT:
                        pause = None
                    if pause != self._open.pause:
                        self._open.pause = pause
                        self._wake(force=True)
            settle(self._audio.end)
            segments.close()

        async def transcribe() -> None:
            async for segment in segments:
                try:
                    await self._transcribe(segment)
                finally:
                    self._live.remove(segment)

        tasks = [
            asyncio.create_task(forward_audio(), name="local_whisper.forward_audio"),
            asyncio.create_task(follow_vad(), name="local_whisper.follow_vad"),
            asyncio.create_task(transcribe(), name="local_whisper.transcribe"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            flushes.clear()  # stops settle_if_stalled
            await aio.cancel_and_wait(*tasks)
            await vad_stream.aclose()
            self._scheduler.discard(self)

    async def _transcribe(self, segment: _Segment) -> None:
        """Interims while the segment grows, finals at its end and whenever it runs too long."""
        interval = int(self._opts.interim_interval * SAMPLE_RATE)
        max_samples = int(self._opts.max_segment_duration * SAMPLE_RATE)
        utterance = self._new_utterance(segment.start)
        started = False
        # the first interim comes `interim_interval` after speech starts, not after the padding
        decoded_until = segment.start + _PREFIX_PADDING

        def emit(kind: stt.SpeechEventType, words: list[Word]) -> None:
            nonlocal started
            if not started:
                started = True
                self._event_ch.send_nowait(stt.SpeechEvent(stt.SpeechEventType.START_OF_SPEECH))
            offset = self.start_time_offset + utterance.start / SAMPLE_RATE
            self._event_ch.send_nowait(
                stt.SpeechEvent(
                    type=kind,
                    request_id=utterance.id,
                    alternatives=[_speech_data(words, self._opts.language, offset=offset)],
                )
            )

        def finalize(words: list[Word]) -> None:
            if words:
                emit(stt.SpeechEventType.FINAL_TRANSCRIPT, words)
                self._lead = self._lead_after(utterance, words)

        pause_seen: int | None = None
        candidate: tuple[int, asyncio.Future[list[Word]], float] | None = None
        """A decode up to where the speaker paused: the final, if the pause lasts."""

        while True:
            limit = utterance.start + max_samples
            await self._wait_for(
                segment, min(decoded_until + interval, limit), pause_seen=pause_seen
            )
            segment.needed_from = utterance.start
            available = segment.end if segment.end is not None else self._scored

            if available >= limit:
                # no pause for max_segment_duration: finalize what was said and go on after it
                request, window_start = self._decode(utterance, limit, whole=True)
                final, cut = utterance.policy.cut(
                    await request,
                    window_start=window_start,
                    window_end=(limit - utterance.start) / SAMPLE_RATE,
                )
                finalize(final)
                next_start = utterance.start + max(int(cut * SAMPLE_RATE), SAMPLE_RATE)
                utterance = self._new_utterance(next_start)
                decoded_until = next_start
                candidate = None
                continue

            if segment.end is not None:
                if candidate is not None and candidate[0] == segment.end:
                    _, request, window_start = candidate
                else:
                    request, window_start = self._decode(utterance, segment.end, whole=True)
                finalize(utterance.policy.finish(await request, window_start=window_start))
                if started:
                    self._event_ch.send_nowait(stt.SpeechEvent(stt.SpeechEventType.END_OF_SPEECH))
                return

            try:
                if segment.pause is not None and segment.pause != pause_seen:
                    # the speaker may be done: start on the final now, not when the pause ends
                    pause_seen = segment.pause
                    until = segment.pause + _SUFFIX_PADDING
                    request, window_start = self._decode(utterance, until, whole=True)
                    candidate = (until, request, window_start)
                else:
                    until = self._scored
                    request, window_start = self._decode(utterance, until, whole=False)
            except SchedulerFull:
                logger.warning("whisper is overloaded: skipping an interim transcript")
                decoded_until = self._scored
                continue
            await self._wait_for(segment, limit, request=request, pause_seen=pause_seen)
            if not request.done() or request.cancelled():
                # the segment ended, ran too long or paused meanwhile: a newer decode follows
                continue
            before = utterance.policy.text
            confirmed_before = len(utterance.policy.confirmed)
            utterance.policy.update(request.result(), window_start=window_start)
            decoded_until = until
            if len(utterance.policy.confirmed) > confirmed_before:
                # the words two decodes agreed on: readers that cannot take back text show them
                emit(stt.SpeechEventType.PREFLIGHT_TRANSCRIPT, list(utterance.policy.confirmed))
            if utterance.policy.text and utterance.policy.text != before:
                words = list(utterance.policy.confirmed + utterance.policy.tentative)
                emit(stt.SpeechEventType.INTERIM_TRANSCRIPT, words)

    def _new_utterance(self, start: int) -> _Utterance:
        return _Utterance(start, LocalAgreement(prompt=self._lead.text if self._lead else ""))

    def _decode(
        self, utterance: _Utterance, until: int, *, whole: bool
    ) -> tuple[asyncio.Future[list[Word]], float]:
        """Ask for a decode up to `until`: of the whole utterance (a final) or of its window.

        Returns the request and where its words' times start, in seconds of the utterance.
        Decodes from the start of the utterance hear the end of the previous final first.
        """
        policy = utterance.policy
        if whole or policy.window_start == 0.0:
            audio = self._audio.slice(utterance.start, until)
            return self._scheduler.submit(self, audio, lead=self._lead, urgent=whole), 0.0
        audio = self._audio.slice(utterance.window_start, until)
        return self._scheduler.submit(self, audio, policy.prompt()), policy.window_start

    def _lead_after(self, utterance: _Utterance, final: list[Word]) -> Lead:
        """The last few seconds of a final, to lead the next utterance's decodes."""
        tail = [w for w in final if w.start >= final[-1].end - _LEAD_SECONDS] or final[-1:]
        start = utterance.start + int(max(tail[0].start - 0.1, 0.0) * SAMPLE_RATE)
        end = utterance.start + int((tail[-1].end + 0.1) * SAMPLE_RATE)
        return Lead(self._audio.slice(start, end), join_words(tail))

    async def _wait_for(
        self,
        segment: _Segment,
        sample: int,
        *,
        request: asyncio.Future[list[Word]] | None = None,
        pause_seen: int | None = None,
    ) -> None:
        """Until the segment ends, its audio reaches `sample`, `request` is done, or the
        speaker makes a pause other than `pause_seen`."""

        def ready() -> bool:
            return (
                segment.end is not None
                or self._scored >= sample
                or (request is not None and request.done())
                or segment.pause not in (None, pause_seen)
            )

        while not ready():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            wake = functools.partial(_release, waiter)
            self._wakeup = (sample, waiter)
            if request is not None:
                request.add_done_callback(wake)
            try:
                await waiter
            finally:
                self._wakeup = None
                if request is not None:
                    request.remove_done_callback(wake)

    def _wake(self, *, force: bool = False) -> None:
        if self._wakeup is None:
            return
        sample, waiter = self._wakeup
        if force or self._scored >= sample:
            _release(waiter)


def _release(waiter: asyncio.Future[None], *_: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(eq=False)
class _Segment:
    """A stretch of speech between pauses, in samples since the stream started."""

    start: int
    needed_from: int
    """Audio before this sample is no longer needed for the segment."""
    end: int | None = None
    """Set when the speaker pauses or the stream is flushed."""
    pause: int | None = None
    """Where the speaker paused, once the pause lasted `_PAUSE_HINT`; None while speaking."""


class _Utterance:
    """The part of a segment that will become one final transcript."""

    def __init__(self, start: int, policy: LocalAgreement) -> None:
        self.start = start
        self.policy = policy
        self.id = utils.shortuuid("LW_")

    @property
    def window_start(self) -> int:
        return self.start + int(self.policy.window_start * SAMPLE_RATE)


class _AudioLog:
    """The stream's 16 kHz audio as float32, addressed by sample index since the stream began."""

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE * 20, dtype=np.float32)
        self._size = 0
        self.first = 0
        """Index of the oldest sample still kept."""

    @property
    def end(self) -> int:
        return self.first + self._size

    def append(self, frame: rtc.AudioFrame) -> None:
        samples = _to_float(frame)
        if self._size + len(samples) > len(self._data):
            grown = np.zeros(max(2 * len(self._data), self._size + len(samples)), np.float32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : self._size + len(samples)] = samples
        self._size += len(samples)

    def slice(self, start: int, end: int) -> np.ndarray:
        start = max(start, self.first)
        return self._data[start - self.first : max(end, start) - self.first].copy()

    def forget_before(self, index: int) -> None:
        drop = min(index, self.end) - self.first
        # moving memory for every frame would cost more than keeping a few seconds extra
        if drop < SAMPLE_RATE * 5:
            return
        self._data[: self._size - drop] = self._data[drop : self._size]
        self._size -= drop
        self.first += drop


def _to_float(frame: rtc.AudioFrame) -> np.ndarray:
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32) / 32768.0
    if frame.num_channels > 1:
        samples = samples.reshape(-1, frame.num_channels).mean(axis=1)
    return samples


def _speech_data(words: list[Word], language: str, *, offset: float) -> stt.SpeechData:
    return stt.SpeechData(
        language=LanguageCode(language),
        text=join_words(words),
        start_time=offset + words[0].start,
        end_time=offset + words[-1].end,
        confidence=float(np.mean([w.probability for w in words])),
        words=[
            TimedString(
                w.text.strip(),
                start_time=offset + w.start,
                end_time=offset + w.end,
                confidence=w.probability,
                start_time_offset=offset,
            )
            for w in words
        ],
    )


_shared_lock = threading.Lock()
_schedulers: dict[tuple[str, str, str, int, int], Scheduler] = {}
_vad: agents_vad.VAD | None = None


def _shared_scheduler(opts: STTOptions) -> Scheduler:
    """The process's scheduler for this model; checks the settings before anything loads."""
    check_compute_type(opts.compute_type)
    check_language(opts.model, opts.language)
    path = resolve_model(opts.model)
    key = (path, opts.language, opts.compute_type, opts.cpu_threads, opts.beam_size)
    with _shared_lock:
        if key not in _schedulers:
            _schedulers[key] = Scheduler(
                lambda: WhisperBackend(
                    opts.model,
                    compute_type=opts.compute_type,
                    cpu_threads=opts.cpu_threads,
                    language=opts.language,
                    beam_size=opts.beam_size,
                ),
                workers=opts.cpu_threads or os.cpu_count() or 1,
            )
        return _schedulers[key]


def _shared_vad() -> agents_vad.VAD:
    global _vad
    from livekit.plugins import silero

    with _shared_lock:
        if _vad is None:
            _vad = silero.VAD.load()
        return _vad


__all__ = ["STT", "SpeechStream", "STTOptions", "ModelLoadError"]
