"""The fake Deepgram and Speechmatics servers, driven by the real LiveKit plugins.

They must hear what was said, answer the way the real services do, and refuse what the
real services refuse, or tests built on them prove nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError, stt
from livekit.plugins import deepgram, speechmatics
from speechmatics.agent_stt import (
    AgentSttAsyncClient,
    AudioEncoding,
    AudioFormat,
    TranscriptionError,
)

from .fake_deepgram import FakeDeepgram, FakeSttService
from .fake_speechmatics import FakeSpeechmatics
from .speech_clips import Clip, clip, silence, word_error_rate

MAX_WER = 0.25
"""tiny.en on one espeak clip of three sentences, through each plugin: measured 0.00-0.10
(Deepgram, us-160: "a quick update" heard as "a wake up date") and 0.00 (Speechmatics,
gb-150), idle or with both cores busy."""

SPEED = 4.0
"""Audio is pushed four times faster than real time, to keep the file quick: the servers
decode as fast as the CPU allows and the tests wait for them."""

QUICK_RETRIES = APIConnectOptions(max_retry=2, retry_interval=0.05, timeout=5.0)

ROOT = Path(__file__).resolve().parent.parent

DG_KEY = secrets.token_hex(16)
SM_KEY = secrets.token_hex(16)


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.05)


async def transcribe(
    stream: stt.RecognizeStream, audio: Clip, server: FakeSttService
) -> list[stt.SpeechEvent]:
    """Plays `audio` into the plugin's stream and returns every event it gave."""
    events: list[stt.SpeechEvent] = []

    async def collect() -> None:
        async for event in stream:
            events.append(event)

    collector = asyncio.create_task(collect())
    for i, frame in enumerate(audio.frames()):
        stream.push_frame(frame)
        if i % 5 == 4:
            await asyncio.sleep(0.05 / SPEED)
    # let the server finish decoding before ending the input: on a busy machine Whisper
    # can lag, and the Speechmatics SDK waits only 5 s for the last results after that
    await wait_until(
        lambda: len(server.accepted[-1].finals) >= len(audio.sentences), 60, "final per sentence"
    )
    stream.end_input()
    await server.wait_closed(len(server.accepted))
    # the Deepgram plugin only returns once its keepalive task wakes (up to 5 s): everything
    # the server sent has arrived by now, so close instead of waiting for it
    await asyncio.sleep(0.2)
    await stream.aclose()
    collector.cancel()
    return events


def texts(events: list[stt.SpeechEvent], kind: stt.SpeechEventType) -> list[str]:
    return [e.alternatives[0].text for e in events if e.type == kind and e.alternatives]


def assert_heard(audio: Clip, events: list[stt.SpeechEvent]) -> None:
    types = [e.type for e in events]
    heard = " ".join(texts(events, stt.SpeechEventType.FINAL_TRANSCRIPT))
    wer = word_error_rate(audio.text, heard)
    print(f"WER {wer:.3f}\n  said:  {audio.text}\n  heard: {heard}")
    assert wer <= MAX_WER, f"WER {wer:.2f}: {heard!r}"
    assert stt.SpeechEventType.INTERIM_TRANSCRIPT in types, "no interim transcripts"
    first_interim = types.index(stt.SpeechEventType.INTERIM_TRANSCRIPT)
    assert first_interim < types.index(stt.SpeechEventType.FINAL_TRANSCRIPT)
    assert types.count(stt.SpeechEventType.END_OF_SPEECH) == len(audio.sentences)


# ---------------------------------------------------------------------------------------
# Deepgram


async def test_deepgram_plugin_hears_the_words_and_the_server_records_the_session() -> None:
    audio = clip("us-160")
    async with FakeDeepgram(api_key=DG_KEY) as server, aiohttp.ClientSession() as http:
        plugin = deepgram.STT(api_key=DG_KEY, base_url=server.url, http_session=http)
        events = await transcribe(plugin.stream(), audio, server)

    assert_heard(audio, events)
    [connection] = server.connections
    assert connection.api_key == DG_KEY
    assert connection.query["encoding"] == ["linear16"]
    assert connection.query["sample_rate"] == ["16000"]
    assert connection.query["interim_results"] == ["true"]
    assert connection.query["language"] == ["en-US"]
    assert connection.received["CloseStream"] == 1
    assert connection.close_code == 1000
    assert connection.sent[-1]["type"] == "Metadata"
    assert connection.audio_seconds == pytest.approx(audio.duration, abs=0.06)
    assert server.billed_seconds == connection.audio_seconds
    assert any(m["type"] == "SpeechStarted" for m in connection.sent)


@pytest.mark.parametrize("language", ["fr", "de", "multi"])
async def test_deepgram_records_the_language_each_stream_asked_for(language: str) -> None:
    async with FakeDeepgram(api_key=DG_KEY) as server, aiohttp.ClientSession() as http:
        plugin = deepgram.STT(api_key=DG_KEY, base_url=server.url, http_session=http)
        stream = plugin.stream(language=language)
        stream.push_frame(next(silence(1).frames()))
        await wait_until(lambda: bool(server.accepted), 10, "connection")
        await stream.aclose()
    assert server.connections[0].language == language


async def test_deepgram_refuses_a_wrong_key_and_the_plugin_fails_at_once() -> None:
    async with FakeDeepgram(api_key=DG_KEY) as server, aiohttp.ClientSession() as http:
        plugin = deepgram.STT(api_key="not-the-key", base_url=server.url, http_session=http)
        stream = plugin.stream()
        stream.push_frame(next(silence(1).frames()))
        started = time.monotonic()
        with pytest.raises(APIStatusError) as raised:
            async for _ in stream:
                pass
        assert time.monotonic() - started < 2.0
    assert raised.value.status_code == 401
    assert [(c.status, c.api_key) for c in server.connections] == [(401, "not-the-key")]


async def test_deepgram_refuses_audio_it_cannot_decode() -> None:
    async with FakeDeepgram(api_key=DG_KEY) as server, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Token {DG_KEY}"}
        for query in ("encoding=wav&sample_rate=16000", "encoding=linear16"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
                await http.ws_connect(f"{server.url}?{query}", headers=headers)
            assert raised.value.status == 400

        url = f"{server.url}?encoding=linear16&sample_rate=16000"
        ws = await http.ws_connect(url, headers=headers)
        await ws.send_bytes(b"\x00\x01\x02")  # a sample and a half
        message = await ws.receive()
        assert (message.type, message.data, message.extra) == (
            aiohttp.WSMsgType.CLOSE,
            1008,
            "DATA-0000",
        )
    assert [c.status for c in server.connections] == [400, 400, 101]


# ---------------------------------------------------------------------------------------
# Speechmatics


async def test_speechmatics_plugin_hears_the_words_and_the_server_records_the_session() -> None:
    audio = clip("gb-150")
    async with FakeSpeechmatics(api_key=SM_KEY) as server:
        # the worker's configuration (turns closed by a local Silero VAD) with partials asked for
        plugin = speechmatics.STT(api_key=SM_KEY, base_url=server.url, include_partials=True)
        events = await transcribe(plugin.stream(), audio, server)

    assert_heard(audio, events)
    [connection] = server.connections
    assert connection.api_key == SM_KEY
    assert connection.config["audio_format"] == {
        "type": "raw",
        "encoding": "pcm_s16le",
        "sample_rate": 16000,
    }
    assert connection.config["turn_config"] == {"turn_detection_mode": "external"}
    assert connection.received["ForceEndOfUtterance"] >= len(audio.sentences)
    assert connection.received["EndOfStream"] == 1
    assert connection.sent[-1]["message"] == "EndOfTranscript"
    assert connection.audio_seconds == pytest.approx(audio.duration, abs=0.11)


async def test_speechmatics_plugin_by_default_asks_for_no_partials() -> None:
    async with FakeSpeechmatics(api_key=SM_KEY) as server:
        plugin = speechmatics.STT(api_key=SM_KEY, base_url=server.url, vad=None)
        stream = plugin.stream()
        stream.push_frame(next(silence(1).frames()))
        await wait_until(lambda: bool(server.accepted and server.accepted[0].config), 10, "start")
        await stream.aclose()
    assert "enable_partials" not in server.connections[0].config["transcription_config"]


async def test_speechmatics_records_the_language_each_stream_asked_for() -> None:
    async with FakeSpeechmatics(api_key=SM_KEY) as server:
        plugin = speechmatics.STT(api_key=SM_KEY, base_url=server.url, vad=None)
        streams = [plugin.stream(language="de"), plugin.stream(language="fr")]
        for stream in streams:
            stream.push_frame(next(silence(1).frames()))
        await wait_until(lambda: sum(bool(c.language) for c in server.accepted) == 2, 10, "starts")
        for stream in streams:
            await stream.aclose()
    assert sorted(c.language or "" for c in server.connections) == ["de", "fr"]


async def test_speechmatics_refuses_a_wrong_key_and_the_plugin_retries_then_fails() -> None:
    async with FakeSpeechmatics(api_key=SM_KEY) as server:
        plugin = speechmatics.STT(api_key="not-the-key", base_url=server.url, vad=None)
        stream = plugin.stream(conn_options=QUICK_RETRIES)
        stream.push_frame(next(silence(1).frames()))
        with pytest.raises(APIConnectionError, match="HTTP 401"):
            async for _ in stream:
                pass
    # the plugin reads a 401 as a connection error, so it retries a wrong key
    assert [(c.status, c.api_key) for c in server.connections] == [(401, "not-the-key")] * 3


async def test_speechmatics_refuses_audio_that_is_not_16_khz_pcm() -> None:
    with pytest.raises(ValueError, match="16000"):
        speechmatics.STT(api_key=SM_KEY, base_url="ws://127.0.0.1:1/v2/agent", sample_rate=8000)

    async with FakeSpeechmatics(api_key=SM_KEY) as server:
        client = AgentSttAsyncClient(
            api_key=SM_KEY,
            url=server.url,
            audio_format=AudioFormat(encoding=AudioEncoding.PCM_S16LE, sample_rate=8000),
        )
        with pytest.raises(TranscriptionError, match="16000 Hz"):
            await client.connect()
    [connection] = server.connections
    assert connection.sent[-1]["type"] == "invalid_audio_type"
    assert connection.close_code == 1008


# ---------------------------------------------------------------------------------------
# faults, for both


def make_plugin(
    server: FakeSttService, http: aiohttp.ClientSession
) -> deepgram.STT | speechmatics.STT:
    if isinstance(server, FakeDeepgram):
        return deepgram.STT(api_key=server.api_key, base_url=server.url, http_session=http)
    return speechmatics.STT(
        api_key=server.api_key,
        base_url=server.url,
        vad=None,
        turn_detection_mode=speechmatics.TurnDetectionMode.VAD,
    )


@pytest.mark.parametrize("service", [FakeDeepgram, FakeSpeechmatics])
async def test_a_refused_service_makes_the_plugin_retry_then_fail(
    service: type[FakeSttService],
) -> None:
    async with service(api_key=secrets.token_hex(16)) as server, aiohttp.ClientSession() as http:
        server.set_available(False)
        stream = make_plugin(server, http).stream(conn_options=QUICK_RETRIES)
        stream.push_frame(next(silence(1).frames()))
        with pytest.raises(APIConnectionError, match="after 2 attempts"):
            async for _ in stream:
                pass
    assert [c.status for c in server.connections] == [503] * 3


@pytest.mark.parametrize("service", [FakeDeepgram, FakeSpeechmatics])
async def test_a_dropped_connection_makes_the_plugin_reconnect(
    service: type[FakeSttService],
) -> None:
    async with service(api_key=secrets.token_hex(16)) as server, aiohttp.ClientSession() as http:
        server.drop_after_seconds = 1.0
        stream = make_plugin(server, http).stream(conn_options=QUICK_RETRIES)
        for frame in silence(3).frames():
            stream.push_frame(frame)
            await asyncio.sleep(0.0025)
            if server.connections and server.connections[0].dropped:
                server.drop_after_seconds = None
        await wait_until(lambda: len(server.accepted) == 2, 10, "reconnection")
        await stream.aclose()
    first, second = server.accepted
    assert first.dropped and first.audio_seconds == pytest.approx(1.0, abs=0.11)
    assert not second.dropped and second.audio_seconds > 0


async def test_runs_as_a_subprocess_steered_over_http() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_deepgram", "--port", "0", "--api-key", DG_KEY],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.to_thread(process.stdout.readline))
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/_fake/faults", json={"available": False}) as response:
                assert (await response.json())["refuse_connections"] is True
            with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
                await http.ws_connect(
                    f"{base}/v1/listen?encoding=linear16&sample_rate=16000",
                    headers={"Authorization": f"Token {DG_KEY}"},
                )
            assert raised.value.status == 503
            async with http.get(f"{base}/_fake/state") as response:
                state = await response.json()
        assert [c["status"] for c in state["connections"]] == [503]
    finally:
        process.terminate()
        process.wait(10)
