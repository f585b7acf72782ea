"""LiveKit STT over a local Whisper model.

A stream's audio goes to Silero VAD, which scores it; the segmenter turns the scores into
utterances; each utterance is decoded again every `interim_interval` seconds while it grows,
and LocalAgreement turns those decodes into interim transcripts and, at the pause, a final.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from dataclasses import dataclass

import numpy as np

from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents import vad as agents_vad
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

_PREFIX_PADDING = 0.3
"""Audio kept before the detected start of speech, so the first sound is not clipped."""
_SUFFIX_PADDING = 0.2
"""Audio kept after the detected end of speech, for the same reason at the other end."""
_IDLE_HISTORY = 1.0
"""Audio kept while nobody speaks: the VAD decides a little after the fact."""
_CONTEXT_CHARS = 200


@dataclass(frozen=True, kw_only=True)
class STTOptions:
    model: str = DEFAULT_MODEL
    """A faster-whisper model name (tiny.en, base.en, small, ...) or a CTranslate2 model path."""
    language: str = "en"
    compute_type: str = "int8"
    cpu_threads: int = 0
    """Threads for one decode; 0 uses every core."""
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


class STT(stt.STT):
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
        self._context = ""
        """The last final's text, the prompt for the next utterance."""

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

        def open_segment(start: int) -> None:
            segment = _Segment(start=start)
            self._open = segment
            self._live.append(segment)
            segments.send_nowait(segment)

        def close_segment(end: int) -> None:
            if self._open is not None:
                self._open.end = max(end, self._open.start)
                self._open = None
                self._wake(force=True)

        async def forward_audio() -> None:
            nonlocal settled_until
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    close_segment(self._audio.end)
                    settled_until = self._audio.end
                    segmenter.reset()
                    continue
                self._audio.append(item)
                vad_stream.push_frame(item)
                self._wake()
                history = self._audio.end - int(_IDLE_HISTORY * SAMPLE_RATE)
                self._audio.forget_before(min([s.needed_from for s in self._live] + [history]))
            vad_stream.end_input()

        async def follow_vad() -> None:
            window_end = 0
            async for event in vad_stream:
                if event.type != agents_vad.VADEventType.INFERENCE_DONE:
                    continue
                window_start, window_end = window_end, event.samples_index
                if window_end <= settled_until:
                    continue
                boundary = segmenter.push(event.probability, start=window_start, end=window_end)
                if boundary is None:
                    continue
                if boundary.kind == "start":
                    padding = int(_PREFIX_PADDING * SAMPLE_RATE)
                    start = max(boundary.sample - padding, settled_until, self._audio.first)
                    open_segment(start)
                else:
                    padding = int(_SUFFIX_PADDING * SAMPLE_RATE)
                    close_segment(min(boundary.sample + padding, self._audio.end))
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
            await aio.cancel_and_wait(*tasks)
            await vad_stream.aclose()
            self._scheduler.discard(self)

    async def _transcribe(self, segment: _Segment) -> None:
        """Interims while the segment grows, finals at its end and whenever it runs too long."""
        interval = int(self._opts.interim_interval * SAMPLE_RATE)
        max_samples = int(self._opts.max_segment_duration * SAMPLE_RATE)
        utterance = _Utterance(segment.start, LocalAgreement(prompt=self._context))
        started = False
        # the first interim comes `interim_interval` after speech starts, not after the padding
        decoded_until = segment.start + int(_PREFIX_PADDING * SAMPLE_RATE)

        def emit(kind: stt.SpeechEventType, words: list[Word], request_id: str) -> None:
            nonlocal started
            if not started:
                started = True
                self._event_ch.send_nowait(stt.SpeechEvent(stt.SpeechEventType.START_OF_SPEECH))
            offset = self.start_time_offset + utterance.start / SAMPLE_RATE
            self._event_ch.send_nowait(
                stt.SpeechEvent(
                    type=kind,
                    request_id=request_id,
                    alternatives=[_speech_data(words, self._opts.language, offset=offset)],
                )
            )

        while True:
            limit = utterance.start + max_samples
            await self._wait_for(segment, min(decoded_until + interval, limit))
            segment.needed_from = utterance.window_start
            available = segment.end if segment.end is not None else self._audio.end

            if available >= limit:
                # no pause for max_segment_duration: finalize what was said and go on after it
                words = await self._decode(utterance, limit, urgent=True)
                final, cut = utterance.policy.cut(
                    words,
                    window_start=utterance.policy.window_start,
                    window_end=(limit - utterance.start) / SAMPLE_RATE,
                )
                if final:
                    emit(stt.SpeechEventType.FINAL_TRANSCRIPT, final, utterance.id)
                    self._context = join_words(final)[-_CONTEXT_CHARS:]
                next_start = utterance.start + max(int(cut * SAMPLE_RATE), SAMPLE_RATE)
                utterance = _Utterance(next_start, LocalAgreement(prompt=self._context))
                decoded_until = next_start
                continue

            if segment.end is not None:
                words = await self._decode(utterance, segment.end, urgent=True)
                final = utterance.policy.finish(words, window_start=utterance.policy.window_start)
                if final:
                    emit(stt.SpeechEventType.FINAL_TRANSCRIPT, final, utterance.id)
                    self._context = join_words(final)[-_CONTEXT_CHARS:]
                if started:
                    self._event_ch.send_nowait(stt.SpeechEvent(stt.SpeechEventType.END_OF_SPEECH))
                return

            until = self._audio.end
            window_start = utterance.policy.window_start
            try:
                request = self._submit(utterance, until)
            except SchedulerFull:
                logger.warning("whisper is overloaded: skipping an interim transcript")
                decoded_until = until
                continue
            await self._wait_for(segment, limit, request=request)
            if not request.done() or request.cancelled():
                # the segment ended or ran too long meanwhile: the final decode supersedes it
                continue
            before = utterance.policy.text
            utterance.policy.update(request.result(), window_start=window_start)
            decoded_until = until
            if utterance.policy.text and utterance.policy.text != before:
                words = list(utterance.policy.confirmed + utterance.policy.tentative)
                emit(stt.SpeechEventType.INTERIM_TRANSCRIPT, words, utterance.id)

    def _submit(self, utterance: _Utterance, until: int) -> asyncio.Future[list[Word]]:
        audio = self._audio.slice(utterance.window_start, until)
        return self._scheduler.submit(self, audio, utterance.policy.prompt())

    async def _decode(self, utterance: _Utterance, until: int, *, urgent: bool) -> list[Word]:
        audio = self._audio.slice(utterance.window_start, until)
        try:
            return await self._scheduler.submit(
                self, audio, utterance.policy.prompt(), urgent=urgent
            )
        except SchedulerFull:
            logger.warning("whisper is overloaded: finalizing the last interim transcript")
            return list(utterance.policy.tentative)

    async def _wait_for(
        self,
        segment: _Segment,
        sample: int,
        *,
        request: asyncio.Future[list[Word]] | None = None,
    ) -> None:
        """Until the segment ends, its audio reaches `sample`, or `request` is done."""

        def ready() -> bool:
            return (
                segment.end is not None
                or self._audio.end >= sample
                or (request is not None and request.done())
            )

        while not ready():
            waiter = asyncio.get_running_loop().create_future()
            self._wakeup = (sample, waiter)
            if request is not None:
                request.add_done_callback(lambda _: waiter.done() or waiter.set_result(None))
            try:
                await waiter
            finally:
                self._wakeup = None

    def _wake(self, *, force: bool = False) -> None:
        if self._wakeup is None:
            return
        sample, waiter = self._wakeup
        if (force or self._audio.end >= sample) and not waiter.done():
            waiter.set_result(None)


@dataclass(eq=False)
class _Segment:
    """A stretch of speech between pauses, in samples since the stream started."""

    start: int
    end: int | None = None
    """Set when the speaker pauses or the stream is flushed."""
    needed_from: int = -1
    """Audio before this sample is no longer needed for the segment."""

    def __post_init__(self) -> None:
        if self.needed_from < 0:
            self.needed_from = self.start


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
        language=language,
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
                )
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
