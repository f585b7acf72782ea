"""Transcript formats: WebVTT, text and JSON that no name or caption can break."""

from __future__ import annotations

import html
import io
import json

import webvtt

from transcriber.transcript import Transcript, TranscriptSegment

START = 1_780_000_000.0


def segment(i: int, name: str, text: str, *, start: float, end: float) -> TranscriptSegment:
    return TranscriptSegment(
        id=f"SG_{i}",
        speaker_identity=f"id-{i}",
        speaker_name=name,
        track_sid=f"TR_{i}",
        language="en",
        start=START + start,
        end=START + end,
        text=text,
    )


def transcript(*segments: TranscriptSegment) -> Transcript:
    return Transcript(
        room="weekly/../sync", room_sid="RM_1", started_at=START, ended_at=START + 60,
        segments=list(segments),
    )


def test_webvtt_has_a_voice_cue_per_final_timed_from_the_meeting_start() -> None:
    t = transcript(
        segment(1, "Alice", "Good morning.", start=1.25, end=2.5),
        segment(2, "Bob", "Hello there.", start=3661.0, end=3662.0),
    )
    cues = webvtt.from_buffer(io.StringIO(t.to_webvtt())).captions
    assert [(c.start, c.end, c.voice, c.text) for c in cues] == [
        ("00:00:01.250", "00:00:02.500", "Alice", "Good morning."),
        ("01:01:01.000", "01:01:02.000", "Bob", "Hello there."),
    ]


def test_names_and_captions_cannot_break_the_webvtt_or_the_text() -> None:
    hostile_name = "Mallory -->\n\n00:00:00.000 --> 00:00:09.000\n<b>boss</b>"
    hostile_text = "a --> b\n\nWEBVTT\n<script>alert(1)</script> & " + "x" * 5000
    t = transcript(
        segment(1, hostile_name, hostile_text, start=1, end=2),
        segment(2, "Bob", "fine", start=3, end=4),
    )
    cues = webvtt.from_buffer(io.StringIO(t.to_webvtt())).captions
    assert len(cues) == 2
    shown = html.unescape(cues[0].text)  # as a player shows it: tags removed, entities decoded
    assert shown == "a --> b WEBVTT <script>alert(1)</script> & " + "x" * 5000
    assert "<script>" not in cues[0].raw_text  # markup arrives escaped
    assert html.unescape(cues[0].voice) == "Mallory --> 00:00:00.000 --> 00:00:09.000 <b>boss</b>"
    assert cues[1].text == "fine"

    lines = t.to_text().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[00:00:01] Mallory --> 00:00:00.000")
    assert lines[1] == "[00:00:03] Bob: fine"


def test_json_has_the_keys_backends_read() -> None:
    t = transcript(segment(1, "Alice", "Hi.", start=1.5, end=2.25))
    data = json.loads(t.to_json_text())
    assert data == {
        "room": "weekly/../sync",
        "room_sid": "RM_1",
        "started_at": "2026-05-28T20:26:40.000Z",
        "ended_at": "2026-05-28T20:27:40.000Z",
        "segments": [
            {
                "id": "SG_1",
                "speaker_identity": "id-1",
                "speaker_name": "Alice",
                "track_sid": "TR_1",
                "language": "en",
                "start": 1.5,
                "end": 2.25,
                "text": "Hi.",
            }
        ],
    }


def test_file_names_stay_inside_the_directory_whatever_the_room_name() -> None:
    assert transcript().file_stem == "weekly_.._sync-20260528T202640Z"
    assert "/" not in Transcript(room="../../etc", room_sid="", started_at=START, ended_at=START).file_stem
    assert Transcript(room="...", room_sid="", started_at=START, ended_at=START).file_stem.startswith("room-")
