"""The worker end to end: a real LiveKit server, the worker as a subprocess, real clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from livekit import api

from .livekit_server import LiveKitServer
from .participants import Caption, CaptionListener, Speaker
from .tone_stt import script_words, utterance_audio, write_wav

pytestmark = pytest.mark.timeout(180) if hasattr(pytest.mark, "timeout") else []


async def dispatch(server: LiveKitServer, agent_name: str, room: str) -> None:
    async with server.api() as lkapi:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
        )


async def transcribers_in(server: LiveKitServer, room: str) -> list[api.ParticipantInfo]:
    async with server.api() as lkapi:
        response = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return [p for p in response.participants if p.kind == api.ParticipantInfo.Kind.AGENT]


async def wait_transcriber(server: LiveKitServer, room: str, timeout: float = 30) -> api.ParticipantInfo:
    for _ in range(int(timeout / 0.2)):
        if agents := await transcribers_in(server, room):
            return agents[0]
        await asyncio.sleep(0.2)
    raise AssertionError("no transcriber joined the room")


def segments(captions: list[Caption]) -> dict[str, list[Caption]]:
    by_id: dict[str, list[Caption]] = {}
    for caption in captions:
        by_id.setdefault(caption.segment_id, []).append(caption)
    return by_id


def assert_well_formed(captions: list[Caption]) -> None:
    """Interims then exactly one final per segment, the final last."""
    for segment_id, updates in segments(captions).items():
        finals = [c for c in updates if c.final]
        assert len(finals) == 1, f"segment {segment_id} has {len(finals)} finals: {updates}"
        assert updates[-1].final, f"segment {segment_id} got an update after its final"


async def speak(speaker: Speaker, script: list[list[str]], tmp_path: Path) -> None:
    for i, words in enumerate(script):
        wav = write_wav(tmp_path / f"{speaker.identity}-{i}.wav", utterance_audio(words))
        await speaker.play(wav)


async def test_two_participants_speaking_at_once_get_their_own_captions(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    start_worker(TRANSCRIBER_AGENT_NAME=agent_name)
    listener = await CaptionListener(livekit_server, room_name).join()
    alice = await Speaker(livekit_server, room_name, "alice").join()
    bob = await Speaker(livekit_server, room_name, "bob").join()
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await asyncio.sleep(2.0)  # the transcriber's join settle time and subscriptions

    alice_script = script_words(3, seed=1)
    bob_script = script_words(3, seed=2)
    await asyncio.gather(speak(alice, alice_script, tmp_path), speak(bob, bob_script, tmp_path))
    await listener.wait_for(
        lambda: len(listener.finals("alice")) >= 3 and len(listener.finals("bob")) >= 3
    )

    for speaker, script in ((alice, alice_script), (bob, bob_script)):
        for output in ("text_stream", "legacy"):
            captions = listener.of(speaker.identity, output)
            assert listener.finals(speaker.identity, output) == [" ".join(w) for w in script]
            assert {c.track_sid for c in captions} == {speaker.track_sid}
            assert any(not c.final for c in captions), "no interim captions"
            assert_well_formed(captions)

    for who in (alice, bob, listener):
        await who.leave()
