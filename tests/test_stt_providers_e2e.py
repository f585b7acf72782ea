"""Cloud STT providers end to end, against local servers speaking their real protocols.

`tests/fake_deepgram.py` and `tests/fake_speechmatics.py` run as their own processes,
recognize with local Whisper, and can refuse or drop connections on request. The worker
uses the real `livekit-plugins-deepgram` / `-speechmatics` through its settings.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from . import speech_clips
from .livekit_server import ROOT, LiveKitServer
from .participants import CaptionListener, Speaker
from .test_worker_e2e import dispatch, wait_transcriber

DEEPGRAM_KEY = secrets.token_hex(20)
SPEECHMATICS_KEY = secrets.token_hex(20)
MAX_WER = 0.25
"""The fakes decode with tiny.en: 0.00-0.10 measured on these clips when idle."""
FAILOVER_BOUND = 8.0
"""Seconds from the first word to the first caption when the preferred provider refuses:
two refused connects (0.5 s apart), then the next provider connects and replays."""


class FakeService:
    def __init__(self, module: str, key: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", "--api-key", key],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def call(self, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/_fake/{path}",
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "POST",
        )
        return json.loads(urllib.request.urlopen(request, timeout=5).read())

    def accepted(self) -> list[dict]:
        return [c for c in self.call("state")["connections"] if c["status"] == 101]

    def reset(self) -> None:
        self.call("faults", {"available": True, "drop_after_seconds": None})

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def deepgram() -> Iterator[FakeService]:
    service = FakeService("tests.fake_deepgram", DEEPGRAM_KEY)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def speechmatics() -> Iterator[FakeService]:
    service = FakeService("tests.fake_speechmatics", SPEECHMATICS_KEY)
    yield service
    service.stop()


def provider_env(deepgram: FakeService, speechmatics: FakeService, providers: str) -> dict[str, str]:
    deepgram.reset()
    speechmatics.reset()
    return dict(
        TRANSCRIBER_STT_PROVIDER=providers,
        TRANSCRIBER_VAD_GATING="true",
        TRANSCRIBER_FAILOVER_COOLDOWN="2",
        DEEPGRAM_API_KEY=DEEPGRAM_KEY,
        DEEPGRAM_URL=f"http://127.0.0.1:{deepgram.port}/v1/listen",
        SPEECHMATICS_API_KEY=SPEECHMATICS_KEY,
        SPEECHMATICS_URL=f"ws://127.0.0.1:{speechmatics.port}/v2/agent",
    )


async def meeting(server: LiveKitServer, worker, agent_name: str, room: str, *who: str):  # type: ignore[no-untyped-def]
    listener = await CaptionListener(server, room).join()
    speakers = [await Speaker(server, room, name).join() for name in who]
    await dispatch(server, agent_name, room)
    await wait_transcriber(server, room)
    await worker.wait_tracks(len(speakers))
    return listener, speakers


async def assert_heard(listener: CaptionListener, who: str, clip: speech_clips.Clip) -> None:
    heard = await listener.wait_heard(who, clip.text, max_wer=MAX_WER)
    wer = speech_clips.word_error_rate(clip.text, heard)
    assert wer <= MAX_WER, f"{who}: WER {wer:.2f}: {heard!r}"


@pytest.mark.parametrize("provider", ["deepgram", "speechmatics"])
async def test_captions_come_from_the_chosen_provider_with_the_configured_key(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str,
    deepgram: FakeService, speechmatics: FakeService, provider: str,
) -> None:
    service, key = (deepgram, DEEPGRAM_KEY) if provider == "deepgram" else (speechmatics, SPEECHMATICS_KEY)
    before = len(service.accepted())
    worker = start_worker(
        TRANSCRIBER_AGENT_NAME=agent_name, **provider_env(deepgram, speechmatics, provider)
    )
    clip = speech_clips.clip("us-160", 48000)
    listener, [alice] = await meeting(livekit_server, worker, agent_name, room_name, "alice")
    await alice.play(clip.path)

    await assert_heard(listener, "alice", clip)
    connections = service.accepted()[before:]
    assert connections and {c["api_key"] for c in connections} == {key}
    assert key not in worker.log()
    await alice.leave()
    await listener.leave()


async def test_a_dropped_connection_mid_sentence_resumes_without_touching_other_tracks(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str,
    deepgram: FakeService, speechmatics: FakeService,
) -> None:
    worker = start_worker(
        TRANSCRIBER_AGENT_NAME=agent_name, **provider_env(deepgram, speechmatics, "deepgram")
    )
    clips = {"alice": speech_clips.clip("us-160", 48000), "bob": speech_clips.clip("gb-150", 48000)}
    listener, [alice, bob] = await meeting(livekit_server, worker, agent_name, room_name, "alice", "bob")
    before = len(deepgram.accepted())
    alice_speaks = asyncio.create_task(alice.play(clips["alice"].path))
    while len(deepgram.accepted()) < before + 1:
        await asyncio.sleep(0.05)
    alice_connection = deepgram.accepted()[before]["id"]
    bob_speaks = asyncio.create_task(bob.play(clips["bob"].path))
    await asyncio.sleep(1.5)  # alice is mid-sentence
    assert deepgram.call("drop", {"id": alice_connection})["dropped"] == 1
    await asyncio.gather(alice_speaks, bob_speaks)

    for who, clip in clips.items():
        await assert_heard(listener, who, clip)
    assert len(deepgram.accepted()) - before == 3  # alice twice, bob once
    for who in (alice, bob, listener):
        await who.leave()


async def test_a_provider_refusing_at_start_fails_over_to_the_next_within_the_bound(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str,
    deepgram: FakeService, speechmatics: FakeService,
) -> None:
    env = provider_env(deepgram, speechmatics, "deepgram,speechmatics")
    deepgram.call("faults", {"refuse_connections": True})
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name, **env)
    clip = speech_clips.clip("gb-150", 48000)
    listener, [alice] = await meeting(livekit_server, worker, agent_name, room_name, "alice")
    started = time.monotonic()
    speaking = asyncio.create_task(alice.play(clip.path))
    await listener.wait_for(lambda: bool(listener.of("alice")), FAILOVER_BOUND + 5)
    first_caption = listener.of("alice")[0].received_at - started
    await speaking

    assert first_caption <= FAILOVER_BOUND
    await assert_heard(listener, "alice", clip)
    await alice.leave()
    await listener.leave()


async def test_all_providers_down_then_one_returns_captions_resume(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str,
    deepgram: FakeService, speechmatics: FakeService,
) -> None:
    env = provider_env(deepgram, speechmatics, "deepgram,speechmatics")
    deepgram.call("faults", {"refuse_connections": True})
    speechmatics.call("faults", {"refuse_connections": True})
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name, **env)
    clip = speech_clips.clip("us-160", 48000)
    listener, [alice] = await meeting(livekit_server, worker, agent_name, room_name, "alice")
    speaking = asyncio.create_task(alice.play(clip.path))
    await asyncio.sleep(4.0)
    assert not listener.of("alice")
    assert "all STT providers down" in worker.log()
    speechmatics.call("faults", {"refuse_connections": False})
    await speaking

    await assert_heard(listener, "alice", clip)  # the audio from the outage was replayed
    await alice.leave()
    await listener.leave()
