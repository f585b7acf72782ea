"""The legacy caption output: what it publishes for a segment's interims and final, per mode.

A fake room records each `publish_transcription` call the output makes; the captions are
built as `SegmentTracker` builds them (interims carry the stable words so far, a final
carries all its words), with word times in wall-clock seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from livekit import rtc

from transcriber.caption_outputs import LegacyMode, LegacyOutput
from transcriber.captions import Caption, CaptionWord

STARTED_AT = 1_700_000_000.0
"""The meeting's start (wall clock); legacy times are milliseconds from it."""
WORD, GAP = 0.24, 0.06


@dataclass
class FakeLocalParticipant:
    published: list[rtc.Transcription] = field(default_factory=list)

    async def publish_transcription(self, transcription: rtc.Transcription) -> None:
        self.published.append(transcription)


@dataclass
class FakeRoom:
    local_participant: FakeLocalParticipant = field(default_factory=FakeLocalParticipant)
    connected: bool = True

    def isconnected(self) -> bool:
        return self.connected

    @property
    def segments(self) -> list[rtc.TranscriptionSegment]:
        """Every published segment, in order; each event must carry exactly one."""
        for event in self.local_participant.published:
            assert len(event.segments) == 1, event
        return [event.segments[0] for event in self.local_participant.published]


def output(mode: LegacyMode = LegacyMode.STABLE) -> tuple[LegacyOutput, FakeRoom]:
    room = FakeRoom()
    legacy = LegacyOutput(room, mode=mode, history_finals=20, started_at=STARTED_AT)  # type: ignore[arg-type]
    return legacy, room


def timed(text: str, at: float = 2.0) -> tuple[CaptionWord, ...]:
    """Words spoken one after another from `at` seconds into the meeting."""
    start = STARTED_AT + at
    return tuple(
        CaptionWord(w, start + i * (WORD + GAP), start + i * (WORD + GAP) + WORD)
        for i, w in enumerate(text.split())
    )


def caption(
    segment: str,
    text: str,
    *,
    stable: tuple[CaptionWord, ...],
    final: bool = False,
    speaker: str = "alice",
    at: float = 2.0,
) -> Caption:
    """A caption of `segment` whose words start `at` seconds into the meeting. Its
    start/end are those of all its text (an interim's run past its stable words), as
    `SegmentTracker` sets them; a final's are those of its words."""
    words = stable if final else timed(text, at)
    return Caption(
        segment_id=segment,
        speaker_identity=speaker,
        speaker_name=speaker.title(),
        track_sid=f"TR_{speaker}",
        language="en",
        final=final,
        start=words[0].start,
        end=words[-1].end,
        text=text,
        stable=stable,
    )


def ms(wall: float) -> int:
    return round((wall - STARTED_AT) * 1000)


async def speak(legacy: LegacyOutput, segment: str, said: str, *, speaker: str = "alice") -> None:
    """A streaming STT on `said`: an interim per word, the words before the last one
    stable (as `tests/tone_stt.py` reports them), then the final."""
    words = timed(said)
    for n in range(1, len(words) + 1):
        text = " ".join(w.text for w in words[:n])
        await legacy.on_caption(caption(segment, text, stable=words[: n - 1], speaker=speaker))
    await legacy.on_caption(caption(segment, said, stable=words, final=True, speaker=speaker))


async def test_stable_mode_sends_each_newly_stable_run_once_as_its_own_numbered_final() -> None:
    legacy, room = output()
    words = timed("alpha bravo charlie delta echo")
    await legacy.on_caption(caption("SG_a", "alpha", stable=()))
    await legacy.on_caption(caption("SG_a", "alpha bravo charlie", stable=words[:2]))
    await legacy.on_caption(caption("SG_a", "alpha bravo charlie", stable=words[:2]))  # again
    await legacy.on_caption(caption("SG_a", "alpha bravo charlie delta", stable=words[:3]))
    await legacy.on_caption(
        caption("SG_a", "alpha bravo charlie delta echo", stable=words, final=True)
    )

    assert [(s.id, s.text, s.final) for s in room.segments] == [
        ("SG_a_0", "alpha bravo", True),
        ("SG_a_1", "charlie", True),
        ("SG_a_2", "delta echo", True),
    ]


async def test_interims_without_stable_words_publish_nothing_in_stable_mode() -> None:
    legacy, room = output()
    await legacy.on_caption(caption("SG_a", "alpha", stable=()))
    await legacy.on_caption(caption("SG_a", "alpha bravo", stable=()))
    assert room.local_participant.published == []


async def test_a_final_correcting_the_unconfirmed_tail_sends_only_the_words_not_yet_sent() -> None:
    legacy, room = output()
    stable = timed("the harbor master")
    await legacy.on_caption(caption("SG_a", "the harbor master closes thee", stable=stable))
    # the final's decode re-times the words a little: "master" ends 40 ms after the end
    # sent, "closed" starts 100 ms before it
    shifts = (0.04, -0.04, 0.04, -0.1, 0.04, -0.04)
    final_words = tuple(
        CaptionWord(w.text, w.start + shift, w.end + shift)
        for w, shift in zip(timed("the harbor master closed the gate"), shifts, strict=True)
    )
    await legacy.on_caption(
        caption("SG_a", "the harbor master closed the gate", stable=final_words, final=True)
    )

    pieces = room.segments
    assert [(p.id, p.text) for p in pieces] == [
        ("SG_a_0", "the harbor master"),
        ("SG_a_1", "closed the gate"),  # nothing twice; the withdrawn "closes thee" never sent
    ]
    assert all(p.final for p in pieces)  # nothing a reader would have to withdraw
    assert (pieces[1].start_time, pieces[1].end_time) == (
        ms(final_words[3].start),
        ms(final_words[5].end),
    )
    assert pieces[1].start_time >= pieces[0].start_time
    assert pieces[1].end_time >= pieces[0].end_time


async def test_each_piece_spans_the_times_of_its_words_from_the_meeting_start() -> None:
    legacy, room = output()
    words = timed("alpha bravo charlie delta echo foxtrot", at=12.5)
    await legacy.on_caption(caption("SG_a", "alpha bravo", stable=(), at=12.5))
    await legacy.on_caption(caption("SG_a", "alpha bravo charlie", stable=words[:2], at=12.5))
    await legacy.on_caption(caption("SG_a", "alpha bravo charlie delta", stable=words[:3], at=12.5))
    await legacy.on_caption(
        caption("SG_a", " ".join(w.text for w in words), stable=words, final=True)
    )

    pieces = room.segments
    runs = [words[0:2], words[2:3], words[3:6]]
    assert [p.text for p in pieces] == [" ".join(w.text for w in run) for run in runs]
    for piece, run in zip(pieces, runs, strict=True):
        assert (piece.start_time, piece.end_time) == (ms(run[0].start), ms(run[-1].end))
        assert piece.end_time >= piece.start_time
    assert pieces[0].start_time == 12_500  # milliseconds from the meeting's start
    assert pieces[-1].end_time == 12_500 + round(5 * (WORD + GAP) * 1000) + round(WORD * 1000)
    for before, after in zip(pieces, pieces[1:], strict=False):
        assert after.start_time >= before.end_time  # no piece goes back in time


async def test_pieces_of_a_streamed_segment_are_in_order_and_cover_every_word_once() -> None:
    legacy, room = output()
    said = "alpha bravo charlie delta echo foxtrot golf"
    await speak(legacy, "SG_a", said)

    pieces = room.segments
    assert [p.id for p in pieces] == [f"SG_a_{n}" for n in range(len(pieces))]
    assert " ".join(p.text for p in pieces) == said
    assert len(pieces) == 7  # a word is stable once the next is heard; the last, at the final
    starts = [p.start_time for p in pieces]
    ends = [p.end_time for p in pieces]
    assert starts == sorted(starts) and ends == sorted(ends)
    assert all(p.end_time >= p.start_time for p in pieces)


async def test_speakers_segments_are_numbered_and_timed_on_their_own() -> None:
    legacy, room = output()
    await speak(legacy, "SG_a", "alpha bravo charlie", speaker="alice")
    await speak(legacy, "SG_b", "delta echo", speaker="bob")
    await speak(legacy, "SG_c", "foxtrot golf", speaker="alice")

    events = room.local_participant.published
    by_speaker = {
        who: [e.segments[0].text for e in events if e.participant_identity == who]
        for who in ("alice", "bob")
    }
    assert by_speaker == {
        "alice": ["alpha", "bravo", "charlie", "foxtrot", "golf"],
        "bob": ["delta", "echo"],
    }
    assert {e.participant_identity: e.track_sid for e in events} == {
        "alice": "TR_alice",
        "bob": "TR_bob",
    }
    assert [s.id for s in room.segments] == [
        "SG_a_0",
        "SG_a_1",
        "SG_a_2",
        "SG_b_0",
        "SG_b_1",
        "SG_c_0",
        "SG_c_1",
    ]


async def test_final_mode_sends_one_final_per_segment_under_the_segments_id() -> None:
    legacy, room = output(LegacyMode.FINAL)
    await speak(legacy, "SG_a", "alpha bravo charlie")
    await speak(legacy, "SG_b", "delta echo")

    assert [(s.id, s.text, s.final) for s in room.segments] == [
        ("SG_a", "alpha bravo charlie", True),
        ("SG_b", "delta echo", True),
    ]
    words = timed("alpha bravo charlie")
    first = room.segments[0]
    assert (first.start_time, first.end_time) == (ms(words[0].start), ms(words[-1].end))


async def test_updates_mode_sends_interims_then_the_final_under_the_segments_id() -> None:
    legacy, room = output(LegacyMode.UPDATES)
    await speak(legacy, "SG_a", "alpha bravo")

    assert [(s.id, s.text, s.final) for s in room.segments] == [
        ("SG_a", "alpha", False),
        ("SG_a", "alpha bravo", False),
        ("SG_a", "alpha bravo", True),
    ]


@pytest.mark.parametrize("mode", list(LegacyMode))
async def test_every_event_carries_exactly_one_segment_of_the_speakers_track(
    mode: LegacyMode,
) -> None:
    legacy, room = output(mode)
    await speak(legacy, "SG_a", "alpha bravo charlie", speaker="alice")
    await speak(legacy, "SG_b", "delta echo", speaker="bob")

    events = room.local_participant.published
    assert events
    assert all(len(e.segments) == 1 for e in events)
    assert all(e.track_sid == f"TR_{e.participant_identity}" for e in events)


async def test_a_joining_participant_gets_the_same_pieces_again_under_the_same_ids() -> None:
    legacy, room = output()
    await speak(legacy, "SG_a", "alpha bravo charlie")
    sent = list(room.segments)
    await legacy.on_participant_joined("carol")
    assert room.segments == sent + sent


async def test_nothing_is_published_when_the_room_is_gone() -> None:
    legacy, room = output()
    room.connected = False
    await speak(legacy, "SG_a", "alpha bravo")
    assert room.local_participant.published == []
