"""Every participant transcribed in their own language, end to end: a real LiveKit server,
the worker as a subprocess, speakers whose `language` attribute says what they speak."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from livekit import api

from .livekit_server import LiveKitServer
from .participants import CaptionListener, Speaker
from .test_stt_providers_e2e import (  # noqa: F401  (module-scoped fixtures)
    FakeService,
    deepgram,
    provider_env,
    speechmatics,
)
from .test_worker_e2e import dispatch, wait_transcriber
from .tone_stt import utterance_audio, write_wav

THREE = {"fr-speaker": "fr", "de-speaker": "de", "en-speaker": "en"}


async def join_meeting(
    server: LiveKitServer, worker, agent_name: str, room: str, languages: dict[str, str]
) -> tuple[CaptionListener, list[Speaker]]:  # type: ignore[no-untyped-def]
    listener = await CaptionListener(server, room).join()
    speakers = [
        await Speaker(server, room, who, attributes={"language": lang} if lang else None).join()
        for who, lang in languages.items()
    ]
    await dispatch(server, worker.agent_name, room)
    await wait_transcriber(server, room)
    await asyncio.gather(*(worker.wait_captioning(s.track_sid) for s in speakers))
    return listener, speakers


async def say(speaker: Speaker, words: list[str], tmp_path: Path, pause: float = 0.8) -> None:
    wav = tmp_path / f"{speaker.identity}-{'-'.join(words)}-{pause}.wav"
    await speaker.play(write_wav(wav, utterance_audio(words, pause=pause)))


def start(start_worker, agent_name: str, **env: str):  # type: ignore[no-untyped-def]
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name, **env)
    worker.agent_name = agent_name
    return worker


async def wait_languages(service: FakeService, since: int, count: int) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        languages = [c["language"] for c in service.accepted()[since:] if c["language"]]
        if len(languages) >= count or time.monotonic() > deadline:
            return languages
        await asyncio.sleep(0.1)


async def test_each_track_streams_to_deepgram_and_speechmatics_in_its_speakers_language(
    livekit_server: LiveKitServer,
    start_worker,
    agent_name: str,
    room_name: str,
    deepgram: FakeService,  # noqa: F811
    speechmatics: FakeService,  # noqa: F811
) -> None:
    for service, provider in ((deepgram, "deepgram"), (speechmatics, "speechmatics")):
        since = len(service.accepted())
        env = provider_env(deepgram, speechmatics, provider)
        env.update(TRANSCRIBER_VAD_GATING="false", TRANSCRIBER_LANGUAGES="en,fr,de")
        worker = start(start_worker, f"{agent_name}-{provider}", **env)
        room = f"{room_name}-{provider}"
        listener, speakers = await join_meeting(
            livekit_server, worker, worker.agent_name, room, THREE
        )
        await asyncio.gather(*(s.silence(1.0) for s in speakers))
        languages = await wait_languages(service, since, 3)
        assert sorted(languages) == ["de", "en", "fr"], provider
        for who in (*speakers, listener):
            await who.leave()
        worker.stop()


async def test_deepgram_multi_stays_the_default_and_a_listed_language_is_asked_for(
    livekit_server: LiveKitServer,
    start_worker,
    agent_name: str,
    room_name: str,
    deepgram: FakeService,  # noqa: F811
    speechmatics: FakeService,  # noqa: F811
) -> None:
    since = len(deepgram.accepted())
    env = provider_env(deepgram, speechmatics, "deepgram")
    env.update(
        TRANSCRIBER_VAD_GATING="false",
        TRANSCRIBER_LANGUAGE="multi",
        TRANSCRIBER_LANGUAGES="multi,fr",
    )
    worker = start(start_worker, agent_name, **env)
    people = {"code-switcher": "", "fr-speaker": "fr", "es-speaker": "es"}
    listener, speakers = await join_meeting(livekit_server, worker, agent_name, room_name, people)
    await asyncio.gather(*(s.silence(1.0) for s in speakers))
    languages = await wait_languages(deepgram, since, 3)
    assert sorted(languages) == ["fr", "multi", "multi"]  # es is not in TRANSCRIBER_LANGUAGES
    for who in (*speakers, listener):
        await who.leave()


async def test_each_caption_says_the_language_its_speaker_speaks(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    worker = start(start_worker, agent_name, TRANSCRIBER_LANGUAGES="en,fr,de")
    listener, speakers = await join_meeting(livekit_server, worker, agent_name, room_name, THREE)
    words = {
        "fr-speaker": ["alpha", "bravo"],
        "de-speaker": ["charlie", "delta"],
        "en-speaker": ["echo", "golf"],
    }
    await asyncio.gather(*(say(s, words[s.identity], tmp_path) for s in speakers))
    await listener.wait_for(lambda: all(listener.finals(who, "legacy") for who in THREE))
    await listener.wait_for(lambda: all(listener.finals(who) for who in THREE))
    for who, language in THREE.items():
        for output in ("text_stream", "legacy"):
            captions = listener.of(who, output)
            # legacy finals are the stable runs of words of each segment
            assert " ".join(c.text for c in captions if c.final) == " ".join(words[who])
            assert {c.language for c in captions} == {language}, (who, output)
    for who in (*speakers, listener):
        await who.leave()


async def test_a_language_change_mid_sentence_takes_effect_at_the_next_sentence(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    worker = start(start_worker, agent_name, TRANSCRIBER_LANGUAGES="en,fr,de")
    listener, [alice] = await join_meeting(
        livekit_server, worker, agent_name, room_name, {"alice": "fr"}
    )
    first = ["alpha", "bravo", "charlie", "delta", "echo"]
    speaking = asyncio.create_task(say(alice, first, tmp_path))
    await listener.wait_for(lambda: any(not c.final for c in listener.of("alice")))
    async with livekit_server.api() as lkapi:  # a backend switches her to German
        await lkapi.room.update_participant(
            api.UpdateParticipantRequest(
                room=room_name, identity="alice", attributes={"language": "de"}
            )
        )
    await speaking
    second = ["foxtrot", "golf", "hotel"]
    await say(alice, second, tmp_path)
    await listener.wait_for(lambda: len(listener.finals("alice")) >= 2)
    await asyncio.sleep(0.5)
    finals = [c for c in listener.of("alice") if c.final]
    assert [c.text for c in finals] == [" ".join(first), " ".join(second)]
    assert [c.language for c in finals] == ["fr", "de"]
    for who in (alice, listener):
        await who.leave()


async def test_bad_language_attributes_fall_back_to_the_default_with_one_log_line(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    worker = start(
        start_worker,
        agent_name,
        TRANSCRIBER_LANGUAGES="en,fr",
        TRANSCRIBER_TRANSCRIBE_AGENTS="true",
    )
    listener = await CaptionListener(livekit_server, room_name).join()
    people = [
        Speaker(livekit_server, room_name, "upper", attributes={"language": "EN"}),
        Speaker(livekit_server, room_name, "unknown", attributes={"language": "xx"}),
        Speaker(livekit_server, room_name, "huge", attributes={"language": "fr" * 5000}),
        Speaker(livekit_server, room_name, "bot", attributes={"language": "fr"}, kind="agent"),
    ]
    for person in people:
        await person.join()
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await asyncio.gather(*(worker.wait_captioning(p.track_sid) for p in people))
    await asyncio.gather(*(say(p, ["kilo", "lima"], tmp_path) for p in people))
    for person in people:
        await say(person, ["mike", "oscar"], tmp_path)
    await listener.wait_for(lambda: all(len(listener.finals(p.identity)) == 2 for p in people))

    log = worker.log().splitlines()
    for person in people:
        assert {c.language for c in listener.of(person.identity)} == {"en"}, person.identity
        complaints = [
            line
            for line in log
            if f"ignoring the language attribute of participant {person.identity}" in line
        ]
        assert len(complaints) == 1, (person.identity, complaints)
    assert "frfrfrfrfrfrfrfrfrfrfrfr" not in worker.log()  # the 10 KB value is not logged
    for who in (*people, listener):
        await who.leave()
