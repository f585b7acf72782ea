"""Batched silero: the plugin's speech starts and ends, for many tracks at once."""

from __future__ import annotations

import asyncio

import numpy as np
from livekit import rtc
from livekit.agents import vad

from tests.speech_clips import clip, noise
from transcriber.stt_providers import VAD_MIN_SILENCE
from transcriber.vad_batcher import BatchedSileroVAD, SileroOptions

RATE = 16000
FRAME = 160

Report = tuple[str, int, float, float]


async def reports(vad_: vad.VAD, tracks: list[np.ndarray]) -> list[list[Report]]:
    """Every track pushed frame by frame through its own stream, all at once; the
    START/END events of each, with their timing."""
    streams = [vad_.stream() for _ in tracks]

    async def collect(stream: vad.VADStream) -> list[Report]:
        return [
            (
                e.type.value,
                e.samples_index,
                round(e.speech_duration, 6),
                round(e.silence_duration, 6),
            )
            async for e in stream
            if e.type != vad.VADEventType.INFERENCE_DONE
        ]

    collectors = [asyncio.create_task(collect(s)) for s in streams]
    longest = max(len(t) for t in tracks)
    for i in range(0, longest, FRAME):
        for stream, track in zip(streams, tracks, strict=True):
            chunk = track[i : i + FRAME]
            if len(chunk) == FRAME:
                stream.push_frame(rtc.AudioFrame(chunk.tobytes(), RATE, 1, FRAME))
        if i % (FRAME * 10) == 0:
            await asyncio.sleep(0)
    for stream in streams:
        stream.end_input()
    found = await asyncio.gather(*collectors)
    for stream in streams:
        await stream.aclose()
    return list(found)


async def test_many_tracks_get_the_plugins_speech_starts_and_ends_in_shared_batches() -> None:
    from livekit.plugins import silero

    tracks = [clip(name, RATE).samples() for name in ("us-160", "gb-150", "rp-155")]
    tracks.append(noise(8, RATE, level_dbfs=-50).samples())
    plugin = silero.VAD.load(min_silence_duration=VAD_MIN_SILENCE)
    batched = BatchedSileroVAD.load(SileroOptions(min_silence_duration=VAD_MIN_SILENCE))

    expected = [(await reports(plugin, [track]))[0] for track in tracks]
    found = await reports(batched, tracks)

    assert found == expected
    assert all(expected[:3]) and not expected[3]  # speech in each clip, none in the noise
    assert batched.windows_per_batch > 1.5  # the tracks' windows shared inference calls


async def test_a_track_that_sends_nothing_does_not_hold_back_the_others() -> None:
    """Batches wait for every open stream's windows, but not for a stream whose track has
    gone quiet without ending (a muted microphone, a stalled connection)."""
    batched = BatchedSileroVAD.load(SileroOptions(min_silence_duration=VAD_MIN_SILENCE))
    speech = clip("us-160", RATE).samples()
    stalled = batched.stream()
    stalled.push_frame(rtc.AudioFrame(speech[:FRAME].tobytes(), RATE, 1, FRAME))  # < 1 window
    speaking = batched.stream()
    for i in range(0, len(speech) - FRAME + 1, FRAME):
        speaking.push_frame(rtc.AudioFrame(speech[i : i + FRAME].tobytes(), RATE, 1, FRAME))
    speaking.end_input()

    events = await asyncio.wait_for(_events(speaking), timeout=10)

    windows = len(speech) // FRAME * FRAME // 512
    assert sum(e.type == vad.VADEventType.INFERENCE_DONE for e in events) == windows
    assert any(e.type == vad.VADEventType.START_OF_SPEECH for e in events)
    await speaking.aclose()
    await stalled.aclose()


async def _events(stream: vad.VADStream) -> list[vad.VADEvent]:
    return [e async for e in stream]
