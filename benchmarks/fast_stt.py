"""A near-free recognizer for capacity benchmarks, plus the in-band timecode it reads.

`FastSTT` is a real `stt.STT` (streaming, interim results) that costs a few microseconds
per 10 ms of audio, so a benchmark measures the transcriber around it, not a recognizer.
It hears two things in its input:

- voiced audio (energy above -40 dBFS): a segment opens; every `interim_every` seconds
  of voiced audio it emits an interim, and after `end_of_speech` seconds without voice a
  final (on `flush()` and at end of input too);
- timecodes: the load generator puts a 180 ms marker in the silence just before each
  sentence, three pure tones (a sync tone, then two hex digits) that name the sentence
  `code` (0-255). They survive Opus, resampling and AGC, whatever the worker does.

Each caption's text ends with a tag `#code:offset:position`: the latest timecode seen,
`offset` = 16 kHz samples from that timecode's first sample to the end of the audio the
event was emitted on, `position` = 16 kHz samples the stream has consumed. The load
generator, which knows when it sent each timecode, turns a tag into the time the captioned
audio left the publisher. `code` is -1 before the stream has seen a timecode.

`build(settings)` is the factory for `TRANSCRIBER_STT_PROVIDER=benchmarks.fast_stt:build`.
When `BENCH_LAG_DIR` is set, the first stream opened in a process starts an event-loop lag
probe there: every `LAG_INTERVAL` it sleeps and appends `monotonic_time lag_seconds`
lines to `lag-<pid>.txt` (CLOCK_MONOTONIC is shared by every process of the machine).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectOptions, stt, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

SAMPLE_RATE = 16000
HOP = 160  # 10 ms
WINDOW = 2 * HOP  # each hop is classified on the 20 ms ending with it (50 Hz bins)
_HANN = np.hanning(WINDOW).astype(np.float32)
_TONE_SECONDS = 0.06
_SYNC_HZ = 3400.0
_DIGIT_BASE_HZ, _DIGIT_STEP_HZ = 800.0, 150.0
_SYNC = 16  # symbol ids 0-15 are hex digits
_ENERGETIC_RMS = 0.003  # -50 dBFS
_VOICED_RMS = 0.01  # -40 dBFS
_TONALITY = 0.7
_MIN_RUN = 2  # hops a tone must hold to count
_SILENCE_BEFORE_MARKER = 15  # hops of silence before an energetic run worth decoding
_MARKER_SEARCH = 30  # hops of an energetic run searched for a marker
TAG = re.compile(r"#(-?\d+):(-?\d+):(\d+)$")

LAG_INTERVAL = 0.05
LAG_DIR_ENV = "BENCH_LAG_DIR"


def marker_audio(code: int, sample_rate: int, amplitude: float = 0.3) -> np.ndarray:
    """int16 samples of the timecode for `code` (0-255): sync, high digit, low digit."""
    n = int(_TONE_SECONDS * sample_rate)
    t = np.arange(n) / sample_rate
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)
    freqs = (_SYNC_HZ, _digit_hz(code >> 4 & 15), _digit_hz(code & 15))
    tones = [amplitude * ramp * np.sin(2 * np.pi * f * t) for f in freqs]
    return (np.concatenate(tones) * 32767).astype(np.int16)


def marker_seconds() -> float:
    return 3 * _TONE_SECONDS


@dataclass(frozen=True)
class Tag:
    code: int
    offset: int
    position: int


def parse_tag(text: str) -> Tag | None:
    match = TAG.search(text)
    if match is None:
        return None
    return Tag(int(match[1]), int(match[2]), int(match[3]))


def _digit_hz(digit: int) -> float:
    return _DIGIT_BASE_HZ + _DIGIT_STEP_HZ * digit


def _symbol_of_bin(peak: int) -> int | None:
    hz = peak * SAMPLE_RATE / WINDOW
    if abs(hz - _SYNC_HZ) <= 50:
        return _SYNC
    digit = round((hz - _DIGIT_BASE_HZ) / _DIGIT_STEP_HZ)
    if 0 <= digit < 16 and abs(hz - _digit_hz(digit)) <= 50:
        return digit
    return None


@dataclass(frozen=True, kw_only=True)
class FastSTTOptions:
    interim_every: float = 0.5
    """Seconds of voiced audio between interims."""
    end_of_speech: float = 0.4
    """Seconds without voice that end a segment with a final."""
    seconds_per_word: float = 0.4
    """Caption text grows by one word per this much voiced audio, like real captions."""


class FastSTT(stt.STT):
    def __init__(self, options: FastSTTOptions | None = None) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=True))
        self._opts = options or FastSTTOptions()

    @property
    def provider(self) -> str:
        return "bench-fast"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        raise NotImplementedError("FastSTT only streams")

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> FastStream:
        LagProbe.start_once()
        return FastStream(stt=self, options=self._opts, conn_options=conn_options)


class FastStream(stt.RecognizeStream):
    def __init__(
        self, *, stt: FastSTT, options: FastSTTOptions, conn_options: APIConnectOptions
    ) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=SAMPLE_RATE)
        self._interim_hops = max(1, round(options.interim_every * 100))
        self._eos_hops = max(1, round(options.end_of_speech * 100))
        self._word_hops = max(1, round(options.seconds_per_word * 100))
        self._pending = np.zeros(0, dtype=np.float32)
        self._previous = np.zeros(HOP, dtype=np.float32)
        self._hops = 0  # hops consumed; position = hops * HOP
        # speech
        self._voiced = 0  # voiced hops in the open segment, 0 = no segment
        self._unvoiced_run = 0
        self._start_hop = 0
        # timecodes
        self._code = -1
        self._anchor = 0  # stream sample where the latest timecode starts
        self._silent_run = _SILENCE_BEFORE_MARKER
        self._search_left = 0
        self._runs: list[list[int]] = []  # [symbol, first hop, length] of the tonal region

    # Frames at our rate are heard as they are pushed, not through the input channel: one
    # task wake-up less per frame, which costs more than hearing the frame.

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        if frame.sample_rate != SAMPLE_RATE:
            super().push_frame(frame)  # resampled, through the channel
            return
        self._check_input_not_ended()
        self._check_not_closed()
        self._push(np.frombuffer(frame.data, dtype=np.int16))

    def flush(self) -> None:
        self._check_input_not_ended()
        self._check_not_closed()
        if self._resampler is None:
            self._finalize()
        else:
            super().flush()

    async def _run(self) -> None:
        async for item in self._input_ch:
            if isinstance(item, rtc.AudioFrame):
                self._push(np.frombuffer(item.data, dtype=np.int16))
            else:
                self._finalize()
        self._finalize()

    def _push(self, samples: np.ndarray) -> None:
        audio = samples.astype(np.float32) / 32768.0
        if len(self._pending):
            audio = np.concatenate([self._pending, audio])
        count = len(audio) // HOP
        self._pending = audio[count * HOP :]
        if not count:
            return
        blocks = audio[: count * HOP].reshape(count, HOP)
        # einsum and a list of floats: np.mean and numpy scalars cost more than the audio
        levels = np.sqrt(np.einsum("ij,ij->i", blocks, blocks) / HOP).tolist()
        for i, level in enumerate(levels):
            self._on_hop(blocks, i, level)
        self._previous = blocks[-1]

    def _on_hop(self, blocks: np.ndarray, i: int, level: float) -> None:
        self._hops += 1
        symbol = None
        searching = False
        if level < _ENERGETIC_RMS:
            self._silent_run += 1
            self._search_left = 0
        else:
            if self._silent_run >= _SILENCE_BEFORE_MARKER:
                self._search_left = _MARKER_SEARCH
            self._silent_run = 0
            if self._search_left > 0:
                self._search_left -= 1
                searching = True
                symbol = self._tone(blocks[i - 1] if i else self._previous, blocks[i])
        if symbol is not None:
            self._on_symbol(symbol)
        elif not searching and self._runs:
            self._decode()
            self._runs = []
        # a marker hop is not speech; nor is a hop between two of its tones
        voiced = not searching and level >= _VOICED_RMS
        self._on_voice(voiced)

    def _tone(self, previous: np.ndarray, block: np.ndarray) -> int | None:
        window = np.concatenate([previous, block]) * _HANN
        power = np.abs(np.fft.rfft(window)) ** 2
        peak = int(np.argmax(power))
        total = float(power.sum())
        if total <= 0 or float(power[max(0, peak - 2) : peak + 3].sum()) < _TONALITY * total:
            return None
        return _symbol_of_bin(peak)

    def _on_symbol(self, symbol: int) -> None:
        if self._runs and self._runs[-1][0] == symbol:
            self._runs[-1][2] += 1
        else:
            self._runs.append([symbol, self._hops - 1, 1])

    def _decode(self) -> None:
        runs: list[list[int]] = []
        tone_hops = round(_TONE_SECONDS * 100)
        for symbol, first, length in self._runs:
            if length >= _MIN_RUN:
                runs.append([symbol, first, length])
            if length >= tone_hops + 3:  # the same digit twice in a row
                runs.append([symbol, first + tone_hops, length - tone_hops])
        for i in range(len(runs) - 2):
            if runs[i][0] == _SYNC and runs[i + 1][0] < 16 and runs[i + 2][0] < 16:
                self._code = runs[i + 1][0] * 16 + runs[i + 2][0]
                # the first window called the high digit ends 10-20 ms after the boundary
                first_digit_end = (runs[i + 1][1] + 1) * HOP
                tone = int(_TONE_SECONDS * SAMPLE_RATE)
                self._anchor = first_digit_end - int(0.015 * SAMPLE_RATE) - tone
                self._search_left = 0
                return

    def _on_voice(self, voiced: bool) -> None:
        if voiced:
            self._unvoiced_run = 0
            if self._voiced == 0:
                self._start_hop = self._hops - 1
                self._event_ch.send_nowait(
                    stt.SpeechEvent(type=stt.SpeechEventType.START_OF_SPEECH)
                )
            self._voiced += 1
            if self._voiced % self._interim_hops == 0:
                self._emit(stt.SpeechEventType.INTERIM_TRANSCRIPT)
        elif self._voiced:
            self._unvoiced_run += 1
            if self._unvoiced_run >= self._eos_hops:
                self._finalize()

    def _finalize(self) -> None:
        if not self._voiced:
            return
        self._emit(stt.SpeechEventType.FINAL_TRANSCRIPT)
        self._event_ch.send_nowait(stt.SpeechEvent(type=stt.SpeechEventType.END_OF_SPEECH))
        self._voiced = 0
        self._unvoiced_run = 0

    def _emit(self, kind: stt.SpeechEventType) -> None:
        position = self._hops * HOP
        words = " ".join(["word"] * (1 + self._voiced // self._word_hops))
        offset = position - self._anchor if self._code >= 0 else 0
        data = stt.SpeechData(
            language="en",
            text=f"{words} #{self._code}:{offset}:{position}",
            start_time=self._start_hop * HOP / SAMPLE_RATE + self.start_time_offset,
            end_time=position / SAMPLE_RATE + self.start_time_offset,
            confidence=1.0,
        )
        self._event_ch.send_nowait(stt.SpeechEvent(type=kind, alternatives=[data]))


class LagProbe:
    """Event-loop lag of the process it runs in, appended to a file for the benchmark."""

    _task: asyncio.Task[None] | None = None

    @classmethod
    def start_once(cls) -> None:
        directory = os.environ.get(LAG_DIR_ENV)
        if not directory or cls._task is not None:
            return
        path = Path(directory) / f"lag-{os.getpid()}.txt"
        cls._task = asyncio.get_running_loop().create_task(cls._probe(path), name="bench-lag-probe")

    @staticmethod
    async def _probe(path: Path) -> None:
        lines: list[str] = []
        last_write = time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_INTERVAL)
            now = time.monotonic()
            lines.append(f"{now:.4f} {now - before - LAG_INTERVAL:.5f}\n")
            if now - last_write >= 1.0:
                with open(path, "a") as f:
                    f.writelines(lines)
                lines.clear()
                last_write = now


def build(settings: object = None) -> FastSTT:
    """Factory for `TRANSCRIBER_STT_PROVIDER=benchmarks.fast_stt:build`."""
    return FastSTT()
