"""The worker end to end: a real LiveKit server, the worker as a subprocess, real clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from livekit import api

from .conftest import WorkerProcess
from .livekit_server import LiveKitServer
from .participants import Caption, CaptionListener, Speaker
from .tone_stt import script_words, utterance_audio, write_wav




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
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name)
    listener = await CaptionListener(livekit_server, room_name).join()
    alice = await Speaker(livekit_server, room_name, "alice").join()
    bob = await Speaker(livekit_server, room_name, "bob").join()
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await worker.wait_tracks(2)

    alice_script = script_words(3, seed=1)
    bob_script = script_words(3, seed=2)
    await asyncio.gather(speak(alice, alice_script, tmp_path), speak(bob, bob_script, tmp_path))
    await listener.wait_for(
        lambda: len(listener.finals("alice")) >= 3 and len(listener.finals("bob")) >= 3
    )

    for speaker, script in ((alice, alice_script), (bob, bob_script)):
        said = " ".join(" ".join(words) for words in script)
        captions = listener.of(speaker.identity)
        assert listener.finals(speaker.identity) == [" ".join(w) for w in script]
        assert {c.track_sid for c in captions} == {speaker.track_sid}
        assert any(not c.final for c in captions), "no interim captions"
        assert_well_formed(captions)
        await listener.wait_for(lambda s=speaker.identity: listener.meet_view(s) == said)
        legacy = listener.of(speaker.identity, "legacy")
        assert {c.track_sid for c in legacy} == {speaker.track_sid}
        assert_well_formed(legacy)

    for who in (alice, bob, listener):
        await who.leave()


class Meeting:
    """A room with a listener, a dispatched transcriber, and helpers to drive speakers."""

    def __init__(self, server: LiveKitServer, room: str, agent_name: str, tmp_path: Path) -> None:
        self.server, self.room, self.agent_name, self.tmp_path = server, room, agent_name, tmp_path
        self.listener = CaptionListener(server, room)
        self.people: list[Speaker] = []
        self.worker: WorkerProcess  # set by the fixture

    async def __aenter__(self) -> Meeting:
        await self.listener.join()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for who in [*self.people, self.listener]:
            if who.room.isconnected():
                await who.leave()

    async def speaker(self, identity: str, *, publish: bool = True) -> Speaker:
        speaker = await Speaker(self.server, self.room, identity).join(publish=publish)
        self.people.append(speaker)
        return speaker

    async def start_transcriber(self) -> api.ParticipantInfo:
        publishing = [p for p in self.people if p.publication and p.room.isconnected()]
        await self.worker.wait_tracks(0)  # a removed transcriber's tracks are closed
        await dispatch(self.server, self.agent_name, self.room)
        transcriber = await wait_transcriber(self.server, self.room)
        await self.worker.wait_tracks(len(publishing))
        if not publishing:
            await asyncio.sleep(1.5)  # join settle time
        return transcriber

    async def say(self, speaker: Speaker, words: list[str], *, pause: float = 0.8) -> None:
        wav = self.tmp_path / f"{speaker.identity}-{'-'.join(words)}-{pause}.wav"
        await speaker.play(write_wav(wav, utterance_audio(words, pause=pause)))

    async def wait_finals(self, speaker: Speaker, count: int, timeout: float = 20) -> list[str]:
        await self.listener.wait_for(lambda: len(self.listener.finals(speaker.identity)) >= count, timeout)
        return self.listener.finals(speaker.identity)


@pytest.fixture
async def meeting(livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path):
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name)
    async with Meeting(livekit_server, room_name, agent_name, tmp_path) as m:
        m.worker = worker
        yield m


async def test_participant_joining_after_the_transcriber_is_captioned(meeting: Meeting) -> None:
    await meeting.start_transcriber()
    carol = await meeting.speaker("carol")
    await meeting.worker.wait_tracks(1)
    await meeting.say(carol, ["golf", "hotel", "india"])
    assert await meeting.wait_finals(carol, 1) == ["golf hotel india"]


async def test_mute_then_unmute_keeps_captioning(meeting: Meeting) -> None:
    alice = await meeting.speaker("alice")
    await meeting.start_transcriber()
    await meeting.say(alice, ["alpha", "bravo"])
    assert alice.publication is not None and alice.publication.track is not None
    alice.publication.track.mute()
    await asyncio.sleep(1.5)
    alice.publication.track.unmute()
    await asyncio.sleep(0.5)
    await meeting.say(alice, ["charlie", "delta"])
    assert await meeting.wait_finals(alice, 2) == ["alpha bravo", "charlie delta"]
    assert_well_formed(meeting.listener.of("alice"))


async def test_unpublish_and_republish_captions_the_new_track(meeting: Meeting) -> None:
    alice = await meeting.speaker("alice")
    await meeting.start_transcriber()
    await meeting.say(alice, ["echo", "foxtrot"])
    first_sid = alice.track_sid
    await meeting.wait_finals(alice, 1)
    await alice.unpublish()
    await meeting.worker.wait_tracks(0)
    second_sid = await alice.publish()
    await meeting.worker.wait_tracks(1)
    await meeting.say(alice, ["kilo", "lima"])
    assert await meeting.wait_finals(alice, 2) == ["echo foxtrot", "kilo lima"]
    finals = [c for c in meeting.listener.of("alice") if c.final]
    assert [c.track_sid for c in finals] == [first_sid, second_sid]


async def test_participant_leaving_mid_sentence_still_gets_the_final(meeting: Meeting) -> None:
    alice = await meeting.speaker("alice")
    await meeting.start_transcriber()
    await meeting.say(alice, ["mike", "november", "oscar"], pause=0.0)
    # leave once the last word has reached the server (say() returns when it left the
    # sender), still well before the 0.4 s pause that would end the sentence
    await asyncio.sleep(0.15)
    await alice.leave()
    assert await meeting.wait_finals(alice, 1) == ["mike november oscar"]
    assert_well_formed(meeting.listener.of("alice"))


async def test_participants_leaving_while_their_pipeline_starts_leave_nothing_behind(
    meeting: Meeting,
) -> None:
    await meeting.start_transcriber()
    for i in range(8):
        quick = await meeting.speaker(f"quick-{i}")
        await asyncio.sleep(0.05 * i)  # leave at different points of the pipeline's start
        await quick.leave()
    await meeting.worker.wait_tracks(0)  # every quick one's pipeline is closed
    stayer = await meeting.speaker("stayer")
    await meeting.worker.wait_tracks(1)
    await meeting.say(stayer, ["papa", "alpha"])
    assert await meeting.wait_finals(stayer, 1) == ["papa alpha"]
    await stayer.leave()
    await meeting.worker.wait_tracks(0, timeout=10)
    await asyncio.sleep(1.0)  # a pipeline left behind would count again, or log its failure

    assert meeting.worker.metric("transcriber_active_tracks") == 0
    log = meeting.worker.log()
    assert "Traceback" not in log and "Task was destroyed" not in log
    job_lines = [line for line in log.splitlines() if '"job_id"' in line]
    assert job_lines and all('"room": "' in line for line in job_lines)  # every job line


async def test_a_bug_on_one_track_stops_that_tracks_captions_and_no_other(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    # were the bug taken for an outage, alice's track would fail over to the second provider
    worker = start_worker(
        TRANSCRIBER_AGENT_NAME=agent_name,
        TRANSCRIBER_STT_PROVIDER="tests.tone_stt:build_buggy,tests.tone_stt:build",
    )
    async with Meeting(livekit_server, room_name, agent_name, tmp_path) as meeting:
        meeting.worker = worker
        alice, bob = await meeting.speaker("alice"), await meeting.speaker("bob")
        await meeting.start_transcriber()
        await meeting.say(alice, ["alpha", "bravo"])
        assert await meeting.wait_finals(alice, 1) == ["alpha bravo"]
        await meeting.say(alice, ["papa", "charlie"])  # the recognizer's bug
        await meeting.say(bob, ["delta", "echo"])
        await meeting.say(alice, ["foxtrot", "golf"])
        await meeting.say(bob, ["hotel", "india"])
        assert await meeting.wait_finals(bob, 2) == ["delta echo", "hotel india"]
        await asyncio.sleep(1.0)
        assert meeting.listener.finals("alice") == ["alpha bravo"]
        assert worker.process.poll() is None
    assert "TypeError: a bug in the recognizer" in worker.log()  # with its traceback


async def test_the_transcriber_leaves_a_room_that_stays_empty(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    start_worker(TRANSCRIBER_AGENT_NAME=agent_name, TRANSCRIBER_EMPTY_ROOM_TIMEOUT="4")
    alice = await Speaker(livekit_server, room_name, "alice").join()
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await alice.leave()
    await asyncio.sleep(2.0)
    assert await transcribers_in(livekit_server, room_name), "left before the timeout"
    for _ in range(40):
        if not await transcribers_in(livekit_server, room_name):
            return
        await asyncio.sleep(0.25)
    raise AssertionError("the transcriber stayed in the empty room")


async def test_removing_the_transcriber_stops_captions_cleanly_and_it_can_return(meeting: Meeting) -> None:
    alice = await meeting.speaker("alice")
    transcriber = await meeting.start_transcriber()
    async with meeting.server.api() as lkapi:
        await lkapi.room.remove_participant(
            api.RoomParticipantIdentity(room=meeting.room, identity=transcriber.identity)
        )
    await asyncio.sleep(2.0)
    await meeting.say(alice, ["bravo", "bravo"])
    await asyncio.sleep(1.5)
    assert meeting.listener.finals("alice") == []

    await meeting.start_transcriber()
    await meeting.say(alice, ["delta", "echo"])
    assert await meeting.wait_finals(alice, 1) == ["delta echo"]
    log = meeting.worker.log()
    assert "Traceback" not in log


async def test_ten_concurrent_dispatches_on_two_workers_give_one_uninterrupted_transcriber(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    workers = [start_worker(TRANSCRIBER_AGENT_NAME=agent_name) for _ in range(2)]
    async with Meeting(livekit_server, room_name, agent_name, tmp_path) as meeting:
        alice = await meeting.speaker("alice")
        await asyncio.gather(*(dispatch(livekit_server, agent_name, room_name) for _ in range(10)))
        await wait_transcriber(livekit_server, room_name)
        await asyncio.sleep(4.0)  # every job has been decided and settled
        for _ in range(300):
            if sum(w.metric("transcriber_active_tracks") for w in workers):
                break
            await asyncio.sleep(0.1)
        transcribers = await transcribers_in(livekit_server, room_name)
        assert len(transcribers) == 1
        captioning_sid = transcribers[0].sid

        # while it captions, a burst of dispatches must neither replace nor duplicate it
        script = script_words(8, seed=3)
        burst_at = 2
        for i, words in enumerate(script):
            if i == burst_at:
                burst = asyncio.gather(
                    *(dispatch(livekit_server, agent_name, room_name) for _ in range(10))
                )
            await meeting.say(alice, words)
        await burst
        finals = await meeting.wait_finals(alice, len(script))
        await asyncio.sleep(1.0)
        assert meeting.listener.finals("alice") == [" ".join(w) for w in script]
        assert_well_formed(meeting.listener.of("alice"))
        transcribers = await transcribers_in(livekit_server, room_name)
        assert [t.sid for t in transcribers] == [captioning_sid]
        assert finals
