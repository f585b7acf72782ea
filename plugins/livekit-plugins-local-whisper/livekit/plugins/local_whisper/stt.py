"""LiveKit STT over a local Whisper model.

A stream's audio goes to Silero VAD, which scores it; a StreamProcessor (processor.py) turns
the scores into utterances and decides which decodes they need; the shared scheduler batches
the decodes of all streams onto the model. This module is the async glue between them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import stt
from livekit.agents import vad as agents_vad
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)
from livekit.agents.utils import AudioBuffer, aio, is_given

from .backend import (
    DEFAULT_MODEL,
    MAX_WINDOW,
    MODEL_ENV,
    SAMPLE_RATE,
    Job,
    ModelLoadError,
    Transcript,
    WhisperBackend,
    check_compute_type,
    check_device,
    check_languages,
    resolve_model,
    whisper_language,
)
from .log import logger
from .processor import Decode, ProcessorOptions, StreamProcessor, speech_data
from .scheduler import Priority, Scheduler, SchedulerFull

_FLUSH_WAIT = 0.2
_BEHIND = 3.0
"""Seconds of untranscribed speech after which a stream counts as behind real time."""


@dataclass(frozen=True, kw_only=True)
class STTOptions:
    model: str = DEFAULT_MODEL
    """A faster-whisper model name (tiny.en, base.en, small, ...) or a CTranslate2 model path."""
    language: str = "en"
    """A Whisper language code (en, fr, de, ...), or auto to detect it per utterance."""
    device: str = "cpu"
    """cpu, cuda, or auto (cuda when a GPU is visible)."""
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
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        beam_size: int = 1,
        interim_interval: float = 0.5,
        max_segment_duration: float = 15.0,
        min_silence_duration: float = 0.5,
        vad: agents_vad.VAD | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        """Captions from a Whisper model on this machine's CPU or GPU.

        `model` defaults to $LOCAL_WHISPER_MODEL, then tiny.en. The model and the Silero VAD
        are loaded once per process and shared by every STT and stream, whatever their
        language; pass `vad` or `scheduler` to use others. Raises ModelLoadError when the
        model cannot be used.
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
            language=whisper_language(language),
            device=device,
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
        self.streams_fell_behind = 0
        """How many times one of its streams fell behind real time (see SpeechStream.lag)."""

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
        """A stream in `language` (default: the STT's), or `auto` to detect it; every
        language shares the one model."""
        opts = self._opts
        if is_given(language) and language != opts.language:
            check_languages(opts.model, [language])
            opts = dataclasses.replace(opts, language=whisper_language(language))
        if self._vad is None:
            self._vad = _shared_vad()
        return SpeechStream(
            stt=self, opts=opts, scheduler=self._scheduler, vad=self._vad, conn_options=conn_options
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
        code = self._opts.language
        if is_given(language) and language != code:
            check_languages(self._opts.model, [language])
            code = whisper_language(language)
        job = Job(_to_float(frame), language=code)
        heard = await self._scheduler.submit(object(), job, priority=Priority.FINAL)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[speech_data(heard.words, heard.language, offset=0.0)]
            if heard.words
            else [],
        )


class SpeechStream(stt.RecognizeStream):
    """Thin async glue around a StreamProcessor: audio to it and to the VAD, its decodes to
    the scheduler, its events out. Everything it decides is in the processor."""

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
        self._owner = stt
        self._opts = opts
        self._scheduler = scheduler
        self._vad = vad
        self._processor = StreamProcessor(_processor_options(opts))
        self._settled = asyncio.Event()
        self._failure: BaseException | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._behind = False

    @property
    def lag(self) -> float:
        """Seconds of speech not yet transcribed: above a few, the stream is falling behind."""
        return self._processor.lag

    async def _run(self) -> None:
        self._processor = StreamProcessor(_processor_options(self._opts))
        self._settled, self._failure = asyncio.Event(), None
        vad_stream = self._vad.stream()
        tasks = [
            asyncio.create_task(self._forward_audio(vad_stream), name="local_whisper.audio"),
            asyncio.create_task(self._follow_vad(vad_stream), name="local_whisper.vad"),
        ]
        settled = asyncio.create_task(self._settled.wait(), name="local_whisper.settled")
        heard = asyncio.gather(*tasks)
        either: list[asyncio.Future[Any]] = [heard, settled]
        try:
            # until the input ends, or a failed decode ends the stream first
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not settled.done():
                await heard  # raises what failed in the audio or the VAD
                self._processor.finish()
                self._pump()
                await settled
            if self._failure is not None:
                raise self._failure
        finally:
            self._settled.set()  # decodes that come back now are dropped
            for timer in self._timers:
                timer.cancel()
            await aio.cancel_and_wait(*tasks, settled)
            heard.cancel()
            await vad_stream.aclose()
            self._scheduler.discard(self)

    async def _forward_audio(self, vad_stream: agents_vad.VADStream) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                self._settle_later(self._processor.flush())
                continue
            self._processor.insert_audio(_to_float(item))
            vad_stream.push_frame(item)
        vad_stream.end_input()

    async def _follow_vad(self, vad_stream: agents_vad.VADStream) -> None:
        async for event in vad_stream:
            if event.type == agents_vad.VADEventType.INFERENCE_DONE:
                self._processor.insert_vad(event.probability, event.samples_index)
                self._pump()

    def _settle_later(self, at: int) -> None:
        # the VAD scores whole windows only, so the audio just before a flush may wait for
        # more audio that never comes: don't let that hold up the final
        def check() -> None:
            if self._processor.settle_stalled(at):
                self._settle_later(at)
            self._pump()

        loop = asyncio.get_running_loop()
        self._timers = [t for t in self._timers if t.when() > loop.time()]
        self._timers.append(loop.call_later(_FLUSH_WAIT, check))

    def _pump(self) -> None:
        """Ask for the decodes the processor needs and send the events it has."""
        processor = self._processor
        processor.time_offset = self.start_time_offset
        while (decode := processor.process()) is not None:
            try:
                future = self._scheduler.submit(self, decode.job, priority=decode.priority)
            except SchedulerFull:
                logger.warning("whisper is overloaded: skipping an interim transcript")
                processor.skip(decode)
                continue
            asked = asyncio.get_running_loop().time()
            future.add_done_callback(functools.partial(self._decoded, decode, asked))
        for event in processor.take_events():
            self._event_ch.send_nowait(event)
        self._watch_lag()
        if processor.done:
            self._settled.set()

    def _decoded(self, decode: Decode, asked: float, future: asyncio.Future[Transcript]) -> None:
        if self._settled.is_set():
            return  # the stream ended meanwhile
        try:
            if future.cancelled():
                self._processor.skip(decode)
            elif (error := future.exception()) is not None:
                raise error
            else:
                if decode.kind == "interim":
                    self._processor.observe_latency(asyncio.get_running_loop().time() - asked)
                self._processor.take(decode, future.result())
            self._pump()
        except Exception as e:
            # a callback's exception would only be logged: end the stream with it instead
            self._failure = e
            self._settled.set()

    def _watch_lag(self) -> None:
        """Say so when the stream falls behind real time, and when it has caught up."""
        lag, limit = self._processor.lag, max(_BEHIND, 4 * self._processor.interval)
        if lag > limit and not self._behind:
            self._behind = True
            self._owner.streams_fell_behind += 1
            logger.warning(
                "whisper is falling behind real time on a stream: %.1f s of speech waiting "
                "(%d decodes queued); captions come late",
                lag,
                self._scheduler.waiting(),
            )
        elif self._behind and lag < limit / 2:
            self._behind = False
            logger.info("whisper caught up with a stream")


def _processor_options(opts: STTOptions) -> ProcessorOptions:
    return ProcessorOptions(
        language=opts.language,
        interim_interval=opts.interim_interval,
        max_segment_duration=opts.max_segment_duration,
        min_silence_duration=opts.min_silence_duration,
    )


def _to_float(frame: rtc.AudioFrame) -> np.ndarray:
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32) / 32768.0
    if frame.num_channels > 1:
        samples = samples.reshape(-1, frame.num_channels).mean(axis=1)
    return samples


_shared_lock = threading.Lock()
_schedulers: dict[tuple[str, str, str, int, int], Scheduler] = {}
"""One per model and way of running it, not per language: a model decodes them all."""
_vad: agents_vad.VAD | None = None


def _shared_scheduler(opts: STTOptions) -> Scheduler:
    """The process's scheduler for this model; checks the settings before anything loads."""
    device = check_device(opts.device)
    check_compute_type(opts.compute_type, device)
    check_languages(opts.model, [opts.language])
    path = resolve_model(opts.model)
    key = (path, device, opts.compute_type, opts.cpu_threads, opts.beam_size)
    with _shared_lock:
        if key not in _schedulers:
            _schedulers[key] = Scheduler(
                lambda: WhisperBackend(
                    opts.model,
                    device=device,
                    compute_type=opts.compute_type,
                    cpu_threads=opts.cpu_threads,
                    beam_size=opts.beam_size,
                ),
                # a GPU runs one batch at a time; a CPU one batch per core, a thread each
                workers=1 if device == "cuda" else opts.cpu_threads or os.cpu_count() or 1,
            )
        return _schedulers[key]


def _shared_vad() -> agents_vad.VAD:
    global _vad
    from livekit.plugins import silero

    with _shared_lock:
        if _vad is None:
            _vad = silero.VAD.load()
        return _vad


__all__ = ["STT", "SpeechStream", "STTOptions", "ModelLoadError", "Transcript"]
