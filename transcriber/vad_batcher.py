"""Silero VAD for many tracks at once: one ONNX call for every track with a window ready.

The silero plugin runs one inference per 32 ms window per track, each through the default
thread pool, and builds frames and events around it that the gate never reads: about
1.4 s of CPU per minute of audio per track, more than receiving the audio. The model
itself takes a batch (input [tracks, context + window], state [2, tracks, 128]) and costs
about 170 µs for one window but 75 µs per window for 4 to 8 of them; the rest of the
plugin's cost is Python around the call.

`BatchedSileroVAD` keeps the plugin's model, thresholds, exponential smoothing and event
timing (a gate sees the same START_OF_SPEECH / END_OF_SPEECH at the same track times),
with the model state per stream and one shared `_Batcher` per process: at most one batch
is in flight on its single inference thread, and every window that arrives meanwhile goes
into the next one. An idle process runs a batch of one as soon as a window is ready, so
batching adds no delay; a loaded one batches more.

INFERENCE_DONE events carry no frames (the gate needs only their timestamps).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import vad

RATE = 16000
WINDOW = 512
"""Samples per inference at 16 kHz (32 ms), as silero v5 requires."""
CONTEXT = 64
"""Samples of the previous window the model sees before each one."""
SMOOTHING = 0.35
"""Weight of the previous probability in the plugin's exponential filter."""


@dataclass(frozen=True, kw_only=True)
class SileroOptions:
    min_speech_duration: float = 0.05
    min_silence_duration: float = 0.55
    activation_threshold: float = 0.5
    deactivation_threshold: float | None = None
    """None: max(activation_threshold - 0.15, 0.01), as the plugin."""

    @property
    def release_threshold(self) -> float:
        if self.deactivation_threshold is not None:
            return self.deactivation_threshold
        return max(self.activation_threshold - 0.15, 0.01)


@dataclass(eq=False)
class _ModelState:
    """One stream's recurrent state and the tail of its previous window."""

    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))


class _Batcher:
    """Runs queued windows as one batch on one thread, one batch at a time."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._sr = np.array(RATE, dtype=np.int64)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vad")
        self._pending: list[tuple[_ModelState, np.ndarray, asyncio.Future[float]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy = False
        self.batches = 0
        self.windows = 0

    def infer(self, model: _ModelState, window: np.ndarray) -> asyncio.Future[float]:
        """The speech probability of `window` (WINDOW float32 samples); advances `model`."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests): nothing of the old one is left
            self._loop, self._busy, self._pending = loop, False, []
        future: asyncio.Future[float] = loop.create_future()
        self._pending.append((model, window, future))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._launch)
        return future

    def _launch(self) -> None:
        batch, self._pending = self._pending, []
        batch = [item for item in batch if not item[2].done()]  # cancelled: stream closed
        if not batch or self._loop is None or self._loop.is_closed():
            self._busy = False
            return
        done = asyncio.wrap_future(
            self._executor.submit(self._run, [(m, w) for m, w, _ in batch]), loop=self._loop
        )
        done.add_done_callback(lambda result: self._finish(batch, result))

    def _run(self, batch: list[tuple[_ModelState, np.ndarray]]) -> np.ndarray:
        inputs = np.empty((len(batch), CONTEXT + WINDOW), np.float32)
        state = np.empty((2, len(batch), 128), np.float32)
        for i, (model, window) in enumerate(batch):
            inputs[i, :CONTEXT] = model.context
            inputs[i, CONTEXT:] = window
            state[:, i] = model.state
        out, new_state = self._session.run(None, {"input": inputs, "state": state, "sr": self._sr})
        for i, (model, _) in enumerate(batch):
            model.state = new_state[:, i].copy()
            model.context = inputs[i, -CONTEXT:].copy()
        self.batches += 1
        self.windows += len(batch)
        return np.asarray(out, np.float32).reshape(-1)

    def _finish(
        self,
        batch: list[tuple[_ModelState, np.ndarray, asyncio.Future[float]]],
        result: asyncio.Future[np.ndarray],
    ) -> None:
        error = result.exception()
        for i, (_, _, future) in enumerate(batch):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(float(result.result()[i]))
        self._launch()


class BatchedSileroVAD(vad.VAD):
    """Silero with the plugin's decisions, inference batched across this process's tracks."""

    def __init__(self, session: Any, options: SileroOptions | None = None) -> None:
        super().__init__(capabilities=vad.VADCapabilities(update_interval=WINDOW / RATE))
        self._opts = options or SileroOptions()
        self._batcher = _Batcher(session)

    @classmethod
    def load(cls, options: SileroOptions | None = None) -> BatchedSileroVAD:
        """The model the silero plugin ships, on one CPU thread (blocking: load in prewarm)."""
        from livekit.plugins.silero import onnx_model

        return cls(onnx_model.new_inference_session(True), options)

    @property
    def model(self) -> str:
        return "silero"

    @property
    def provider(self) -> str:
        return "ONNX, batched"

    @property
    def windows_per_batch(self) -> float:
        """Mean batch size so far (how much the batching saved)."""
        b = self._batcher
        return b.windows / b.batches if b.batches else 0.0

    def stream(self) -> BatchedSileroStream:
        return BatchedSileroStream(self, self._opts, self._batcher)


class BatchedSileroStream(vad.VADStream):
    def __init__(self, vad_: BatchedSileroVAD, options: SileroOptions, batcher: _Batcher) -> None:
        self._opts = options
        self._batcher = batcher
        super().__init__(vad_)

    async def _main_task(self) -> None:
        detector = _Detector(self._opts)
        model = _ModelState()
        resampler: rtc.AudioResampler | None = None
        rate = 0
        buffered = np.empty(0, np.int16)
        async for item in self._input_ch:
            if isinstance(item, vad.VADStream._FlushSentinel):
                detector, model, buffered = _Detector(self._opts), _ModelState(), buffered[:0]
                continue
            if not rate:
                rate = item.sample_rate
                if rate != RATE:
                    resampler = rtc.AudioResampler(
                        rate, RATE, quality=rtc.AudioResamplerQuality.QUICK
                    )
            elif item.sample_rate != rate:
                raise ValueError(f"VAD got {item.sample_rate} Hz after {rate} Hz")
            frames = resampler.push(item) if resampler is not None else [item]
            for frame in frames:
                buffered = np.concatenate([buffered, np.frombuffer(frame.data, np.int16)])
            while len(buffered) >= WINDOW:
                window = buffered[:WINDOW].astype(np.float32) / np.float32(32767)
                buffered = buffered[WINDOW:]
                probability = await self._batcher.infer(model, window)
                for event in detector.step(probability):
                    self._event_ch.send_nowait(event)


class _Detector:
    """The plugin's decisions on one stream's probabilities: smoothing, thresholds with
    hysteresis, minimum speech and silence durations, and its event timing."""

    def __init__(self, options: SileroOptions) -> None:
        self._opts = options
        self._release = options.release_threshold
        self._filtered: float | None = None
        self._speaking = False
        self._windows = 0
        self._timestamp = 0.0
        self._pub_speech = 0.0
        self._pub_silence = 0.0
        self._speech_run = 0.0
        self._silence_run = 0.0

    def step(self, probability: float) -> list[vad.VADEvent]:
        f = self._filtered
        p = probability if f is None else SMOOTHING * f + (1 - SMOOTHING) * probability
        self._filtered = p
        duration = WINDOW / RATE
        self._windows += 1
        self._timestamp += duration
        if self._speaking:
            self._pub_speech += duration
        else:
            self._pub_silence += duration
        events = [self._event(vad.VADEventType.INFERENCE_DONE, probability=p)]
        if p >= self._opts.activation_threshold or (self._speaking and p > self._release):
            self._speech_run += duration
            self._silence_run = 0.0
            if not self._speaking and self._speech_run >= self._opts.min_speech_duration:
                self._speaking = True
                self._pub_silence = 0.0
                self._pub_speech = self._speech_run
                events.append(self._event(vad.VADEventType.START_OF_SPEECH))
        else:
            self._silence_run += duration
            self._speech_run = 0.0
            if self._speaking and self._silence_run >= self._opts.min_silence_duration:
                self._speaking = False
                self._pub_silence = self._silence_run
                events.append(
                    self._event(
                        vad.VADEventType.END_OF_SPEECH,
                        speech=max(0.0, self._pub_speech - self._silence_run),
                    )
                )
                self._pub_speech = 0.0
        return events

    def _event(
        self, kind: vad.VADEventType, *, probability: float = 0.0, speech: float | None = None
    ) -> vad.VADEvent:
        return vad.VADEvent(
            type=kind,
            samples_index=self._windows * WINDOW,
            timestamp=self._timestamp,
            speech_duration=self._pub_speech if speech is None else speech,
            silence_duration=self._pub_silence,
            probability=probability,
            speaking=self._speaking,
            raw_accumulated_silence=self._silence_run,
            raw_accumulated_speech=self._speech_run,
        )


def load_gate_vad() -> BatchedSileroVAD:
    """The speech gate's VAD: silero with the worker's end-of-speech silence, batched
    across the tracks of this process (blocking: call it in prewarm)."""
    from .stt_providers import VAD_MIN_SILENCE

    return BatchedSileroVAD.load(SileroOptions(min_silence_duration=VAD_MIN_SILENCE))
