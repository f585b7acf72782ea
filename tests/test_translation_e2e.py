"""Captions translated for those who read another language, end to end: a real LiveKit
server, the worker as a subprocess with the tone STT, and local translation servers
(`tests/fake_translators.py`) whose "translation" is exact."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from .fake_translators import (
    FakeChatCompletions,
    FakeDeepL,
    FakeLibreTranslate,
    FakeTranslationService,
    translation,
)
from .livekit_server import LiveKitServer
from .participants import Caption, CaptionListener, Speaker
from .test_worker_e2e import dispatch, wait_transcriber
from .tone_stt import script_words, utterance_audio, write_wav

KEY = "fake-translation-key-5f2a9c1e"


def provider_env(provider: str, server: FakeTranslationService) -> dict[str, str]:
    env = {"TRANSCRIBER_TRANSLATION_PROVIDER": provider}
    if provider == "deepl":
        env.update(DEEPL_API_KEY=KEY, DEEPL_URL=server.url)
    elif provider == "libretranslate":
        env.update(LIBRETRANSLATE_URL=server.url, LIBRETRANSLATE_API_KEY=KEY)
    else:
        env.update(
            TRANSLATION_LLM_URL=server.url,
            TRANSLATION_LLM_MODEL="translate-model",
            TRANSLATION_LLM_API_KEY=KEY,
        )
    return env


FAKES = {"deepl": FakeDeepL, "libretranslate": FakeLibreTranslate, "openai": FakeChatCompletions}


class Meeting:
    """Speakers, readers by language, a dispatched transcriber that translates."""

    def __init__(self, server: LiveKitServer, room: str, tmp_path: Path) -> None:
        self.server, self.room, self.tmp_path = server, room, tmp_path
        self.readers: dict[str, CaptionListener] = {}
        self.speakers: dict[str, Speaker] = {}

    async def reader(self, identity: str, language: str | None) -> CaptionListener:
        attributes = {"language": language} if language else {}
        listener = await CaptionListener(self.server, self.room, identity, attributes).join()
        self.readers[identity] = listener
        return listener

    async def speaker(self, identity: str, language: str | None = None) -> Speaker:
        attributes = {"language": language} if language else None
        speaker = await Speaker(self.server, self.room, identity, attributes=attributes).join()
        self.speakers[identity] = speaker
        return speaker

    async def start(self, worker, agent_name: str) -> None:  # type: ignore[no-untyped-def]
        await dispatch(self.server, agent_name, self.room)
        await wait_transcriber(self.server, self.room)
        await asyncio.gather(*(worker.wait_captioning(s.track_sid) for s in self.speakers.values()))

    async def say(self, speaker: Speaker, words: list[str], pause: float = 0.8) -> None:
        wav = self.tmp_path / f"{speaker.identity}-{'-'.join(words)}-{pause}.wav"
        await speaker.play(write_wav(wav, utterance_audio(words, pause=pause)))

    async def leave(self) -> None:
        for who in [*self.speakers.values(), *self.readers.values()]:
            if who.room.isconnected():
                await who.leave()


@asynccontextmanager
async def meeting(server: LiveKitServer, room: str, tmp_path: Path) -> AsyncIterator[Meeting]:
    m = Meeting(server, room, tmp_path)
    try:
        yield m
    finally:
        await m.leave()


def originals(listener: CaptionListener, speaker: str) -> list[Caption]:
    return [c for c in listener.of(speaker) if c.final and not c.translated]


async def test_each_reader_gets_the_finals_in_their_language_translated_once_per_language(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    async with FakeDeepL(api_key=KEY) as deepl, meeting(livekit_server, room_name, tmp_path) as m:
        worker = start_worker(
            TRANSCRIBER_AGENT_NAME=agent_name,
            TRANSCRIBER_LANGUAGES="en",
            TRANSCRIBER_TRANSLATION_LANGUAGES="fr,de",
            **provider_env("deepl", deepl),
        )
        english = await m.reader("english-reader", None)
        french = [await m.reader(f"french-{i}", "fr") for i in range(2)]
        german = await m.reader("german-reader", "de")
        spanish = await m.reader("spanish-reader", "es")  # es is not translated into
        await m.speaker("alice", "en")
        await m.speaker("bob")
        await m.start(worker, agent_name)

        script = {"alice": script_words(2, seed=21), "bob": script_words(2, seed=22)}
        await asyncio.gather(*(_say_all(m, m.speakers[w], lines) for w, lines in script.items()))
        for who in script:
            await english.wait_for(lambda w=who: len(originals(english, w)) >= 2)
            for reader in (*french, german):
                await reader.wait_for(lambda r=reader, w=who: len(r.translations(w)) >= 2)
        await asyncio.sleep(1.0)  # nothing more is on its way

        for who, lines in script.items():
            sources = originals(english, who)
            assert [c.text for c in sources] == [" ".join(words) for words in lines]
            for reader, lang in [(french[0], "fr"), (french[1], "fr"), (german, "de")]:
                got = reader.translations(who)
                assert [c.text for c in got] == [translation(c.text, lang) for c in sources]
                assert [c.attributes["transcriber.source_segment_id"] for c in got] == [
                    c.segment_id for c in sources
                ]
                assert {c.language for c in got} == {lang}
                assert {c.segment_id for c in got}.isdisjoint(c.segment_id for c in sources)
                assert [c.text for c in originals(reader, who)] == [c.text for c in sources]
            for reader in (english, spanish):
                assert reader.translations(who) == [], f"{reader.identity} got translations"

        finals = sum(len(lines) for lines in script.values())
        assert len(deepl.translations_into("fr")) == finals  # once per language, not per reader
        assert len(deepl.translations_into("de")) == finals
        assert len(deepl.answered) == 2 * finals  # nothing into en (their own) or es


async def test_a_caption_is_never_translated_into_its_own_language(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    async with FakeDeepL(api_key=KEY) as deepl, meeting(livekit_server, room_name, tmp_path) as m:
        worker = start_worker(
            TRANSCRIBER_AGENT_NAME=agent_name,
            TRANSCRIBER_LANGUAGES="en,fr",
            TRANSCRIBER_TRANSLATION_LANGUAGES="fr,en",
            **provider_env("deepl", deepl),
        )
        french = await m.reader("french-reader", "fr")
        english = await m.reader("english-reader", "en")
        marie = await m.speaker("marie", "fr")
        john = await m.speaker("john", "en")
        await m.start(worker, agent_name)
        await asyncio.gather(m.say(marie, ["alpha", "bravo"]), m.say(john, ["charlie", "delta"]))
        await english.wait_for(lambda: len(english.translations("marie")) >= 1)
        await french.wait_for(lambda: len(french.translations("john")) >= 1)
        await asyncio.sleep(1.0)

        assert [c.text for c in english.translations("marie")] == ["one two [en]"]
        assert [c.text for c in french.translations("john")] == ["trois quatre [fr]"]
        assert french.translations("marie") == [] and english.translations("john") == []
        assert sorted(deepl.target_of(r) or "" for r in deepl.answered) == ["en", "fr"]
        marie_request = next(r for r in deepl.answered if deepl.target_of(r) == "en")
        assert marie_request.body["source_lang"] == "FR"


async def _say_all(m: Meeting, speaker: Speaker, lines: list[list[str]]) -> None:
    for words in lines:
        await m.say(speaker, words)


async def test_more_target_languages_than_the_cap_translates_into_the_most_read(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    async with FakeDeepL(api_key=KEY) as deepl, meeting(livekit_server, room_name, tmp_path) as m:
        worker = start_worker(
            TRANSCRIBER_AGENT_NAME=agent_name,
            TRANSCRIBER_TRANSLATION_LANGUAGES="fr,de,es",
            TRANSCRIBER_MAX_TRANSLATION_LANGUAGES="2",
            **provider_env("deepl", deepl),
        )
        readers = {
            "de-1": "de",
            "de-2": "de",
            "es-1": "es",
            "es-2": "es",
            "es-3": "es",
            "fr-1": "fr",
        }
        for identity, lang in readers.items():
            await m.reader(identity, lang)
        alice = await m.speaker("alice")
        await m.start(worker, agent_name)
        await m.say(alice, ["alpha", "bravo", "charlie"])
        for identity in ("de-1", "es-1"):
            reader = m.readers[identity]
            await reader.wait_for(lambda r=reader: len(r.translations("alice")) >= 1)
        await asyncio.sleep(1.0)

        assert {deepl.target_of(r) for r in deepl.answered} == {"es", "de"}
        assert m.readers["fr-1"].translations("alice") == []
        log = worker.log().splitlines()
        capped = [line for line in log if "MAX_TRANSLATION_LANGUAGES" in line]
        assert len(capped) == 1 and "not into fr" in capped[0]


async def test_a_slow_failing_or_rate_limiting_translator_never_delays_the_originals(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    async with FakeDeepL(api_key=KEY) as deepl, meeting(livekit_server, room_name, tmp_path) as m:
        worker = start_worker(
            TRANSCRIBER_AGENT_NAME=agent_name,
            TRANSCRIBER_TRANSLATION_LANGUAGES="fr",
            TRANSCRIBER_TRANSLATION_TIMEOUT="3",
            **provider_env("deepl", deepl),
        )
        reader = await m.reader("french-reader", "fr")
        alice = await m.speaker("alice")
        await m.start(worker, agent_name)
        script = script_words(12, seed=31)
        phases = {
            "healthy": {},
            "slow": {"delay": 5.0},  # past TRANSCRIBER_TRANSLATION_TIMEOUT
            "down": {"fail_status": 503},
            "rate limited": {"rate_limited": 1000, "retry_after": 30},
            "recovered": {},
        }
        latencies: dict[str, list[float]] = {}
        for i, (phase, faults) in enumerate(phases.items()):
            deepl.delay, deepl.fail_status, deepl.rate_limited = 0.0, None, 0
            for name, value in faults.items():
                setattr(deepl, name, value)
            latencies[phase] = []
            for words in script[i * 2 : i * 2 + 2]:
                count = len(originals(reader, "alice"))
                await m.say(alice, words, pause=0.0)
                said_at = time.monotonic()
                await m.say(alice, [], pause=0.8)
                await reader.wait_for(lambda c=count: len(originals(reader, "alice")) > c)
                latencies[phase].append(originals(reader, "alice")[-1].received_at - said_at)
        await reader.wait_for(lambda: len(reader.translations("alice")) >= 4, timeout=20)

        said = [" ".join(words) for words in script[: 2 * len(phases)]]
        assert [c.text for c in originals(reader, "alice")] == said  # every original arrived
        healthy = statistics.median(latencies["healthy"])
        for phase in ("slow", "down", "rate limited"):
            # the originals do not wait for a translator: same latency as when it is healthy
            assert max(latencies[phase]) < healthy + 0.5, (phase, latencies)
        translated = [
            c.attributes["transcriber.source_segment_id"] for c in reader.translations("alice")
        ]
        sources = {c.text: c.segment_id for c in originals(reader, "alice")}
        assert sources[said[0]] in translated and sources[said[1]] in translated
        assert sources[said[-1]] in translated and sources[said[-2]] in translated  # resumed
        for faulty in said[2:8]:
            assert sources[faulty] not in translated  # skipped, not delivered late


@pytest.mark.parametrize("provider", ["deepl", "libretranslate", "openai"])
async def test_each_provider_translates_a_meeting_with_its_real_request_shape(
    provider: str,
    livekit_server: LiveKitServer,
    start_worker,
    agent_name: str,
    room_name: str,
    tmp_path: Path,
) -> None:
    async with (
        FAKES[provider](api_key=KEY) as server,
        meeting(livekit_server, room_name, tmp_path) as m,
    ):
        worker = start_worker(
            TRANSCRIBER_AGENT_NAME=agent_name,
            TRANSCRIBER_TRANSLATION_LANGUAGES="de,it",
            **provider_env(provider, server),
        )
        german = await m.reader("german-reader", "de")
        italian = await m.reader("italian-reader", "it")
        alice = await m.speaker("alice")
        await m.start(worker, agent_name)
        script = script_words(2, seed=41)
        await _say_all(m, alice, script)
        for reader in (german, italian):
            await reader.wait_for(lambda r=reader: len(r.translations("alice")) >= 2)
        for reader, lang in ((german, "de"), (italian, "it")):
            got = [c.text for c in reader.translations("alice")]
            assert got == [translation(" ".join(words), lang) for words in script]
        assert all(r.status == 200 for r in server.requests)
        assert len(server.requests) == 4


async def test_interims_are_translated_when_asked_at_most_once_a_second_per_segment(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    async with FakeDeepL(api_key=KEY) as deepl, meeting(livekit_server, room_name, tmp_path) as m:
        worker = start_worker(
            TRANSCRIBER_AGENT_NAME=agent_name,
            TRANSCRIBER_TRANSLATION_LANGUAGES="fr",
            TRANSCRIBER_TRANSLATE_INTERIMS="true",
            **provider_env("deepl", deepl),
        )
        reader = await m.reader("french-reader", "fr")
        alice = await m.speaker("alice")
        await m.start(worker, agent_name)
        words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
        started = time.monotonic()
        await m.say(alice, words)
        spoken = time.monotonic() - started
        await reader.wait_for(lambda: len(reader.translations("alice")) >= 1)
        await asyncio.sleep(1.0)

        interims = reader.translations("alice", final=False)
        [final] = reader.translations("alice")
        assert final.text == translation(" ".join(words), "fr")
        assert interims, "no interim was translated"
        assert {c.segment_id for c in interims} == {final.segment_id}  # one segment, updated
        assert all(c.received_at <= final.received_at for c in interims)
        # 8 interims from the STT; at most one request per second of the segment, plus the final
        assert len(deepl.requests) <= int(spoken) + 2, len(deepl.requests)
        assert len(deepl.requests) < len(words) + 1
