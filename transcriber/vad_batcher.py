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
is in flight on its single inference thread. A batch starts once every open stream has
windows waiting, or `GATHER` seconds after the first of them: a lone track never waits,
and at 12 tracks a batch holds about 9 windows (starting one whenever the thread was free
gave batches of 2, and cost more in thread hand-offs and GIL switches than in inference).

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
GATHER = 0.03
"""Seconds a batch may wait for the windows of other open streams (one window is 0.032)."""
MAX_JOB = 32
"""Windows (about 1 s) a stream sends to one batch at most, when it has fallen behind."""
_FULL_SCALE = np.float32(32767)


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


@dataclass(eq=False)
class _Job:
    """One stream's windows in order ([k, WINDOW]), waiting for their probabilities."""

    model: _ModelState
    windows: np.ndarray
    future: asyncio.Future[np.ndarray]


class _Batcher:
    """Runs the open streams' windows as one batch on one thread, one batch at a time
    (see the module docstring for when a batch starts)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._sr = np.array(RATE, dtype=np.int64)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vad")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open = 0
        self._pending: list[_Job] = []
        self._first_pending = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self.batches = 0
        self.windows = 0

    def open(self) -> None:
        """A stream started: batches wait (up to GATHER) for its windows too."""
        self._bind()
        self._open += 1

    def close(self) -> None:
        """A stream ended: batches no longer wait for it."""
        self._open = max(0, self._open - 1)
        self._consider()

    def infer(self, model: _ModelState, windows: np.ndarray) -> asyncio.Future[np.ndarray]:
        """The speech probabilities of `windows` ([k, WINDOW] float32), in order; advances
        `model`. A stream has at most one call in flight."""
        loop = self._bind()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if not self._pending:
            self._first_pending = loop.time()
        self._pending.append(_Job(model, windows, future))
        self._consider()
        return future

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests): nothing of the old one is left
            self._loop, self._open, self._pending, self._busy = loop, 0, [], False
            self._timer = None
        return loop

    def _consider(self) -> None:
        if self._busy or not self._pending or self._loop is None:
            return
        wait = self._first_pending + GATHER - self._loop.time()
        if len(self._pending) >= self._open or wait <= 0:
            self._launch()
        elif self._timer is None:
            self._timer = self._loop.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._consider()

    def _launch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [job for job in self._pending if not job.future.done()]  # done: stream closed
        self._pending = []
        if not batch or self._loop is None or self._loop.is_closed():
            return
        self._busy = True
        done = asyncio.wrap_future(self._executor.submit(self._run, batch), loop=self._loop)
        done.add_done_callback(lambda result: self._finish(batch, result))

    def _run(self, batch: list[_Job]) -> list[np.ndarray]:
        """In rounds: the first window of every job, then the second of those with two..."""
        probabilities = [np.empty(len(job.windows), np.float32) for job in batch]
        for r in range(max(len(job.windows) for job in batch)):
            rows = [i for i, job in enumerate(batch) if len(job.windows) > r]
            inputs = np.empty((len(rows), CONTEXT + WINDOW), np.float32)
            state = np.empty((2, len(rows), 128), np.float32)
            for n, i in enumerate(rows):
                model = batch[i].model
                inputs[n, :CONTEXT] = model.context
                inputs[n, CONTEXT:] = batch[i].windows[r]
                state[:, n] = model.state
            out, new_state = self._session.run(
                None, {"input": inputs, "state": state, "sr": self._sr}
            )
            out = np.asarray(out, np.float32).reshape(-1)
            for n, i in enumerate(rows):
                model = batch[i].model
                model.state = new_state[:, n].copy()
                model.context = inputs[n, -CONTEXT:].copy()
                probabilities[i][r] = out[n]
            self.batches += 1
            self.windows += len(rows)
        return probabilities

    def _finish(self, batch: list[_Job], result: asyncio.Future[list[np.ndarray]]) -> None:
        self._busy = False
        error = result.exception()
        for i, job in enumerate(batch):
            if job.future.done():
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result.result()[i])
        self._consider()


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
        self._batcher.open()
        try:
            await self._follow_input()
        finally:
            self._batcher.close()

    async def _follow_input(self) -> None:
        """Each time, everything already queued (up to MAX_JOB windows) goes to the batcher
        as one job: a stream that fell behind catches up in one thread hop per round."""
        detector, model = _Detector(self._opts), _ModelState()
        to_16k = _To16k()
        buffered = np.empty(0, np.float32)
        async for item in self._input_ch:
            while True:
                if isinstance(item, vad.VADStream._FlushSentinel):
                    await self._analyze(detector, model, buffered)
                    detector, model, buffered = _Detector(self._opts), _ModelState(), buffered[:0]
                else:
                    buffered = np.concatenate([buffered, *to_16k(item)])
                if len(buffered) >= MAX_JOB * WINDOW or self._input_ch.empty():
                    break
                item = self._input_ch.recv_nowait()
            buffered = await self._analyze(detector, model, buffered)

    async def _analyze(
        self, detector: _Detector, model: _ModelState, samples: np.ndarray
    ) -> np.ndarray:
        """Sends the events of every whole window in `samples`; returns the rest."""
        ready = len(samples) // WINDOW * WINDOW
        if ready:
            windows = samples[:ready].reshape(-1, WINDOW)
            for probability in await self._batcher.infer(model, windows):
                for event in detector.step(float(probability)):
                    self._event_ch.send_nowait(event)
        return samples[ready:]


class _To16k:
    """A stream's frames as float32 samples at 16 kHz (its first frame sets its rate)."""

    def __init__(self) -> None:
        self._rate = 0
        self._resampler: rtc.AudioResampler | None = None

    def __call__(self, frame: rtc.AudioFrame) -> list[np.ndarray]:
        if not self._rate:
            self._rate = frame.sample_rate
            if self._rate != RATE:
                self._resampler = rtc.AudioResampler(
                    self._rate, RATE, quality=rtc.AudioResamplerQuality.QUICK
                )
        elif frame.sample_rate != self._rate:
            raise ValueError(f"VAD got {frame.sample_rate} Hz after {self._rate} Hz")
        frames = self._resampler.push(frame) if self._resampler is not None else [frame]
        return [np.frombuffer(f.data, np.int16) / _FULL_SCALE for f in frames]


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
