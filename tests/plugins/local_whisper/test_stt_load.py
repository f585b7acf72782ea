"""Many streams on one model, with a scripted backend: batching, fairness, a loop that never
stalls, languages per stream. Speech clips go through the real Silero VAD, in real time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest
from livekit.agents import stt
from livekit.plugins import silero
from livekit.plugins.local_whisper import STT, Job, ModelLoadError, Scheduler, Transcript, Word

from tests.speech_clips import Clip, clip, long_speech

from .conftest import feed

Kind = stt.SpeechEventType


class ScriptedBackend:
    """Says "w0 w1 w2 ..." (a word per 0.3 s of audio), taking `delay` seconds per batch.

    Consecutive decodes of a growing utterance agree on their start, as a model would.
    A job in `auto` is heard as German.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript]:
        time.sleep(self.delay)  # in the scheduler's worker thread, like the model
        with self._lock:
            self.batches.append([job.language for job in jobs])
        return [self._hear(job) for job in jobs]

    @staticmethod
    def _hear(job: Job) -> Transcript:
        seconds = len(job.audio) / 16000
        words = [Word(f" w{i}", 0.3 * i, 0.3 * i + 0.2, 0.9) for i in range(int(seconds / 0.3))]
        return Transcript(words, "de" if job.language == "auto" else job.language)


def scripted_stt(vad: silero.VAD, backend: ScriptedBackend, **kwargs: object) -> STT:
    scheduler = Scheduler(lambda: backend, workers=1, max_batch=8)
    return STT(model="small", vad=vad, scheduler=scheduler, **kwargs)  # type: ignore[arg-type]


async def run_stream(
    speech: STT, c: Clip, *, language: str | None = None
) -> tuple[list[stt.SpeechEvent], float]:
    """Every event of one stream fed `c` in real time, and when its last final came."""
    stream = speech.stream(language=language) if language else speech.stream()
    feeder = asyncio.create_task(feed(stream, [c], real_time=True))
    events, last_final = [], 0.0
    try:
        async with asyncio.timeout(60):
            async for event in stream:
                events.append(event)
                if event.type == Kind.FINAL_TRANSCRIPT:
                    last_final = time.monotonic()
        await feeder
    finally:
        await stream.aclose()
    return events, last_final


class LoopWatch:
    """The longest time the event loop took to run a 10 ms timer, while it runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - before - 0.01)

    def __enter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


def finals(events: list[stt.SpeechEvent]) -> list[stt.SpeechData]:
    return [e.alternatives[0] for e in events if e.type == Kind.FINAL_TRANSCRIPT]


async def test_streams_due_together_share_model_calls_and_all_get_their_finals(
    vad: silero.VAD,
) -> None:
    backend = ScriptedBackend(delay=0.15)
    speech = scripted_stt(vad, backend)
    clips = [clip(name, 16000) for name in ("us-160", "gb-150", "rp-155", "us-m3-145")]

    results = await asyncio.gather(*(run_stream(speech, c) for c in clips))

    for c, (events, _) in zip(clips, results, strict=True):
        assert len(finals(events)) == len(c.sentences)
        assert Kind.INTERIM_TRANSCRIPT in [e.type for e in events]
    assert max(len(b) for b in backend.batches) >= 2, backend.batches


async def test_the_event_loop_keeps_running_while_decodes_take_a_second(
    vad: silero.VAD,
) -> None:
    backend = ScriptedBackend(delay=1.0)
    speech = scripted_stt(vad, backend)
    clips = [clip(name, 16000) for name in ("us-160", "gb-150")]

    with LoopWatch() as watch:
        results = await asyncio.gather(*(run_stream(speech, c) for c in clips))

    assert all(finals(events) for events, _ in results)
    # a decode run on the loop would hold every timer for a second
    assert watch.worst < 0.5


async def test_a_long_speaker_does_not_delay_the_others_finals(vad: silero.VAD) -> None:
    backend = ScriptedBackend(delay=0.3)
    speech = scripted_stt(vad, backend)
    talker = asyncio.create_task(run_stream(speech, long_speech(25)))
    await asyncio.sleep(2)
    short = clip("us-190", 16000)

    started = time.monotonic()
    events, last_final = await run_stream(speech, short)
    await talker

    assert len(finals(events)) == len(short.sentences)
    # the last final comes soon after the end of the last sentence, not after the talker's
    assert last_final - started < short.sentences[-1].end + 2.5


async def test_a_stream_that_falls_behind_real_time_is_counted_and_still_gets_its_finals(
    vad: silero.VAD,
) -> None:
    # up to two decodes' worth of speech waits (9 s): more than the stretched cadence
    # explains (4 intervals of at most 2 s)
    backend = ScriptedBackend(delay=4.5)
    speech = scripted_stt(vad, backend)
    c = long_speech(12)

    events, _ = await run_stream(speech, c)

    assert speech.streams_fell_behind >= 1
    assert finals(events)


async def test_each_stream_decodes_in_its_own_language_on_one_model(vad: silero.VAD) -> None:
    backend = ScriptedBackend(delay=0.05)
    speech = scripted_stt(vad, backend)
    c = clip("rp-155", 16000)

    (french, _), (detected, _), (default, _) = await asyncio.gather(
        run_stream(speech, c, language="fr"),
        run_stream(speech, c, language="auto"),
        run_stream(speech, c),
    )

    assert {f.language for f in finals(french)} == {"fr"}
    assert {f.language for f in finals(detected)} == {"de"}
    assert {f.language for f in finals(default)} == {"en"}
    languages = {language for batch in backend.batches for language in batch}
    assert languages == {"fr", "auto", "en", "de"} or languages == {"fr", "auto", "en"}


async def test_an_english_only_model_refuses_a_stream_in_another_language(
    model_path: str, vad: silero.VAD
) -> None:
    speech = STT(model=model_path, vad=vad)

    with pytest.raises(ModelLoadError, match="only understands English but language='fr'"):
        speech.stream(language="fr")
    await speech.stream(language="auto").aclose()  # English is all it detects


async def test_a_failing_model_ends_the_stream_with_its_error_while_audio_still_flows(
    vad: silero.VAD,
) -> None:
    class Broken(ScriptedBackend):
        def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript]:
            raise RuntimeError("the model broke")

    speech = scripted_stt(vad, Broken(delay=0.0))
    stream = speech.stream()
    feeder = asyncio.create_task(feed(stream, [long_speech(25)], real_time=True))
    try:
        with pytest.raises(RuntimeError, match="the model broke"):
            async with asyncio.timeout(10):  # long before the 25 s of audio end
                async for _ in stream:
                    pass
    finally:
        feeder.cancel()
        await stream.aclose()
