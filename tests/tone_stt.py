"""A deterministic recognizer for end-to-end tests of the worker.

Test speakers publish "tone speech": each word is a short sine whose pitch names it, words
are separated by short gaps, utterances by longer silence. `ToneSTT` hears those words
exactly, whatever the codec does to the waveform, so a test can check that every word
a participant said arrives once, in order, under the right speaker and track.

It is a real `stt.STT`: one interim per recognized word, a final per utterance (on a
pause, on `flush()`, or when the input ends), and, like a streaming STT that knows which
words will not change, a preflight transcript of the words before the last one.
"""

from __future__ import annotations

import asyncio
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectOptions, stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr, TimedString

VOCABULARY = (
    "alpha bravo charlie delta echo foxtrot golf hotel "
    "india juliet kilo lima mike november oscar papa"
).split()
SAMPLE_RATE = 16000
_BLOCK = 320  # 20 ms at 16 kHz
_BASE_HZ, _STEP_HZ = 400.0, 100.0
WORD_SECONDS, GAP_SECONDS = 0.24, 0.06
_MIN_WORD_BLOCKS = 5
_VOICED_RMS = 0.02


def word_frequency(word: str) -> float:
    return _BASE_HZ + _STEP_HZ * VOCABULARY.index(word)


def utterance_audio(words: list[str], *, sample_rate: int = 48000, pause: float = 0.8) -> np.ndarray:
    """int16 mono samples: the words, then `pause` seconds of silence."""
    t = np.arange(int(WORD_SECONDS * sample_rate)) / sample_rate
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades, no clicks
    gap = np.zeros(int(GAP_SECONDS * sample_rate))
    parts = []
    for word in words:
        parts += [0.3 * ramp * np.sin(2 * np.pi * word_frequency(word) * t), gap]
    parts.append(np.zeros(int(pause * sample_rate)))
    return (np.concatenate(parts) * 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, *, sample_rate: int = 48000) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(samples.tobytes())
    return path


def script_words(n_utterances: int, words_per_utterance: int = 3, *, seed: int = 0) -> list[list[str]]:
    """Distinct, reproducible utterances: no two share their word sequence."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[str, ...]] = set()
    script: list[list[str]] = []
    while len(script) < n_utterances:
        words = tuple(rng.choice(VOCABULARY, size=words_per_utterance))
        if words not in seen:
            seen.add(words)
            script.append(list(words))
    return script


@dataclass
class _Word:
    text: str
    start: float
    end: float


class ToneSTT(stt.STT):
    def __init__(self, *, end_of_utterance: float = 0.4) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=True))
        self._end_of_utterance = end_of_utterance

    @property
    def provider(self) -> str:
        return "tone"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        stream = self.stream()
        for frame in buffer if isinstance(buffer, list) else [buffer]:
            stream.push_frame(frame)
        stream.end_input()
        final = stt.SpeechEvent(type=stt.SpeechEventType.FINAL_TRANSCRIPT)
        async for event in stream:
            if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                final = event
        await stream.aclose()
        return final

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> ToneStream:
        return ToneStream(
            stt=self, conn_options=conn_options, language=language if language else "en"
        )


class ToneStream(stt.RecognizeStream):
    def __init__(
        self, *, stt: ToneSTT, conn_options: APIConnectOptions, language: str = "en"
    ) -> None:
        """Tones are every language's words: `language` is only what the captions say."""
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self.language = language
        self._eou_blocks = int(stt._end_of_utterance / 0.02)
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = 0  # blocks seen
        self._words: list[_Word] = []
        self._run_word: str | None = None
        self._run_start = 0
        self._run_len = 0
        self._silent_blocks = 0

    async def _run(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, rtc.AudioFrame):
                samples = np.frombuffer(item.data, dtype=np.int16).astype(np.float32) / 32768
                self._pending = np.concatenate([self._pending, samples])
                while len(self._pending) >= _BLOCK:
                    block, self._pending = self._pending[:_BLOCK], self._pending[_BLOCK:]
                    self._on_block(block)
            else:
                self._end_word()
                self._finalize()
            await asyncio.sleep(0)
        self._end_word()
        self._finalize()

    def _on_block(self, block: np.ndarray) -> None:
        self._position += 1
        word = _classify(block)
        if word != self._run_word:
            self._end_word()
            self._run_word, self._run_start, self._run_len = word, self._position - 1, 0
        self._run_len += 1
        self._silent_blocks = self._silent_blocks + 1 if word is None else 0
        if self._silent_blocks == self._eou_blocks:
            self._finalize()

    def _end_word(self) -> None:
        if self._run_word is not None and self._run_len >= _MIN_WORD_BLOCKS:
            start = self._run_start * 0.02
            self._words.append(_Word(self._run_word, start, start + self._run_len * 0.02))
            if len(self._words) == 1:
                self._event_ch.send_nowait(stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH))
            if len(self._words) > 1:
                self._emit(stt.SpeechEventType.PREFLIGHT_TRANSCRIPT, self._words[:-1])
            self._emit(stt.SpeechEventType.INTERIM_TRANSCRIPT)
        self._run_word, self._run_len = None, 0

    def _finalize(self) -> None:
        if not self._words:
            return
        self._emit(stt.SpeechEventType.FINAL_TRANSCRIPT)
        self._event_ch.send_nowait(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH))
        self._words = []

    def _emit(self, kind: stt.SpeechEventType, words: list[_Word] | None = None) -> None:
        words = self._words if words is None else words
        offset = self.start_time_offset
        data = stt.SpeechData(
            language=LanguageCode(self.language),
            text=" ".join(w.text for w in words),
            start_time=words[0].start + offset,
            end_time=words[-1].end + offset,
            confidence=1.0,
            words=[
                TimedString(w.text, start_time=w.start + offset, end_time=w.end + offset)
                for w in words
            ],
        )
        self._event_ch.send_nowait(stt.SpeechEvent(type=kind, alternatives=[data]))


def _classify(block: np.ndarray) -> str | None:
    if float(np.sqrt(np.mean(block**2))) < _VOICED_RMS:
        return None
    spectrum = np.abs(np.fft.rfft(block * np.hanning(len(block))))
    peak_hz = float(np.argmax(spectrum)) * SAMPLE_RATE / len(block)
    index = round((peak_hz - _BASE_HZ) / _STEP_HZ)
    return VOCABULARY[index] if 0 <= index < len(VOCABULARY) else None


def build(settings: object) -> ToneSTT:
    """Factory for `TRANSCRIBER_STT_PROVIDER=tests.tone_stt:build`."""
    return ToneSTT()


class _BuggyToneStream(ToneStream):
    def _end_word(self) -> None:
        if self._run_word == "papa" and self._run_len >= _MIN_WORD_BLOCKS:
            raise TypeError("a bug in the recognizer: it cannot take papa")
        super()._end_word()


class BuggyToneSTT(ToneSTT):
    """Hits a bug (not an outage) on the word "papa": that track's captions end there."""

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> ToneStream:
        return _BuggyToneStream(stt=self, conn_options=conn_options)


def build_buggy(settings: object) -> ToneSTT:
    """Factory for `TRANSCRIBER_STT_PROVIDER=tests.tone_stt:build_buggy`."""
    return BuggyToneSTT()
