"""History for late joiners, on the outputs: none when TRANSCRIBER_HISTORY_FINALS=0, and
none for agents (the room manager tells the stream of human joiners only)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc

from transcriber.caption_outputs import LegacyMode, LegacyOutput, TextStreamOutput
from transcriber.caption_stream import CaptionSink
from transcriber.captions import Caption, CaptionWord
from transcriber.languages import LanguagePolicy
from transcriber.room_manager import RoomManager, RoomOptions
from transcriber.track_admission import TrackCaps
from transcriber.track_pipeline import PipelineOptions

START = time.time() - 60


def final(i: int) -> Caption:
    words = (CaptionWord(f"word{i}", START + i, START + i + 0.5),)
    return Caption(
        segment_id=f"SG_{i}",
        speaker_identity="alice",
        speaker_name="Alice",
        track_sid="TR_1",
        language="en",
        final=True,
        start=START + i,
        end=START + i + 0.5,
        text=f"word{i}",
        stable=words,
    )


@dataclass
class Sent:
    text: str
    sender: str
    to: list[str] | None
    attributes: dict[str, str]


@dataclass
class LocalParticipant:
    identity: str = "transcriber"
    streams: list[Sent] = field(default_factory=list)
    legacy: list[rtc.Transcription] = field(default_factory=list)

    async def publish_transcription(self, transcription: rtc.Transcription) -> None:
        self.legacy.append(transcription)


@dataclass
class Room:
    name: str = "standup"
    local_participant: LocalParticipant = field(default_factory=LocalParticipant)
    remote_participants: dict[str, Any] = field(default_factory=dict)

    def isconnected(self) -> bool:
        return True

    def on(self, *args: Any) -> None:
        pass

    def off(self, *args: Any) -> None:
        pass


async def send(
    participant: LocalParticipant,
    text: str,
    *,
    sender_identity: str,
    attributes: dict[str, str],
    to: str | None,
) -> None:
    """`caption_outputs.send_text` as the room would see it."""
    participant.streams.append(Sent(text, sender_identity, [to] if to else None, attributes))


async def test_history_is_sent_only_to_the_joiner_and_not_at_all_when_off() -> None:
    for history in (2, 0):
        room = Room()
        outputs = [
            TextStreamOutput(room, history_finals=history, send=send),  # type: ignore[arg-type]
            LegacyOutput(
                room,  # type: ignore[arg-type]
                mode=LegacyMode.STABLE,
                history_finals=history,
                started_at=START,
            ),
        ]
        for i in range(3):
            for output in outputs:
                await output.on_caption(final(i))
        live = (list(room.local_participant.streams), list(room.local_participant.legacy))
        assert [s.text for s in live[0]] == ["word0", "word1", "word2"]
        assert all(s.to is None for s in live[0])
        assert len(live[1]) == 3

        for output in outputs:
            await output.on_participant_joined("carol")
        streams = room.local_participant.streams[len(live[0]) :]
        legacy = room.local_participant.legacy[len(live[1]) :]
        if history == 0:
            assert streams == [] and legacy == [], "TRANSCRIBER_HISTORY_FINALS=0 sent history"
        else:
            assert [(s.text, s.sender, s.to) for s in streams] == [
                ("word1", "alice", ["carol"]),
                ("word2", "alice", ["carol"]),
            ]
            assert all(s.attributes["transcriber.history"] == "true" for s in streams)
            assert [t.segments[0].text for t in legacy] == ["word1", "word2"]


class Joins(CaptionSink):
    name = "joins"

    def __init__(self) -> None:
        self.joined: list[str] = []

    async def on_caption(self, caption: Caption) -> None:
        pass

    async def on_participant_joined(self, identity: str) -> None:
        self.joined.append(identity)


@dataclass
class Participant:
    identity: str
    kind: int
    attributes: dict[str, str] = field(default_factory=dict)
    track_publications: dict[str, Any] = field(default_factory=dict)


async def test_agents_joining_get_no_history() -> None:
    room = Room()
    sink = Joins()
    manager = RoomManager(
        room,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        RoomOptions(
            pipeline=PipelineOptions(sample_rate=16000, language="en", drain_timeout=1, gate=None),
            transcribe_agents=False,
            empty_room_timeout=60,
            caps=TrackCaps(per_room=10, per_worker=10),
            languages=LanguagePolicy(),
        ),
        sinks=[sink],
        on_empty=lambda: None,
        worker_tracks=lambda: 0,
    )
    manager.start()
    for identity, kind in (
        ("agent-bot", rtc.ParticipantKind.PARTICIPANT_KIND_AGENT),
        ("carol", rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD),
        ("sip-caller", rtc.ParticipantKind.PARTICIPANT_KIND_SIP),
    ):
        participant = Participant(identity, kind)
        room.remote_participants[identity] = participant
        manager._on_participant_connected(participant)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    await manager.aclose()
    assert sink.joined == ["carol", "sip-caller"]
