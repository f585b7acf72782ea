"""Journal and outbox: a transcript reaches the directory and the webhook once, signed,
whatever happened to the process that wrote it."""

from __future__ import annotations

import asyncio
import html
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import webvtt

from transcriber.captions import MAX_NAME_CHARS, Caption
from transcriber.transcript import TranscriptSegment
from transcriber.transcript_delivery import DeliveryOptions, TranscriptOutbox
from transcriber.transcript_journal import TranscriptJournal, TranscriptLimits, TranscriptSink

from .webhook_server import WebhookServer

KEY, SECRET = "test-key", "test-secret-that-is-long-enough-for-hs256"
START = 1_780_000_000.0


def segment(i: int) -> TranscriptSegment:
    return TranscriptSegment(
        id=f"SG_{i}",
        speaker_identity="alice",
        speaker_name="Alice",
        track_sid="TR_1",
        language="en",
        start=START + i,
        end=START + i + 0.5,
        text=f"sentence {i}",
    )


def outbox(tmp_path: Path, *, webhook: WebhookServer | None = None, files: bool = True) -> TranscriptOutbox:
    return TranscriptOutbox(
        DeliveryOptions(
            journal_dir=tmp_path / "journal",
            transcript_dir=tmp_path / "out" if files else None,
            webhook_url=webhook.url if webhook else None,
            api_key=KEY,
            api_secret=SECRET,
            retry_timeout=60,
            poll_interval=0.1,
            max_backoff=1.0,
        )
    )


def journal(tmp_path: Path, finals: int, *, end: bool = True) -> TranscriptJournal:
    j = TranscriptJournal.create(tmp_path / "journal", room="standup", room_sid="RM_1", started_at=START)
    for i in range(finals):
        j.append(segment(i))
    if end:
        j.end(START + 60)
    return j


async def test_a_finished_journal_becomes_files_and_a_signed_webhook_once(tmp_path: Path) -> None:
    webhook = await WebhookServer(KEY, SECRET).start()
    journal(tmp_path, 3)
    box = outbox(tmp_path, webhook=webhook)
    box.start()
    (received,) = await webhook.wait_received()
    await asyncio.sleep(0.5)
    await box.aclose()
    await webhook.stop()

    assert len(webhook.received) == 1
    webhook.verify(received)
    with pytest.raises(Exception):
        webhook.verify(received, received.body.replace("sentence 1", "sentence X"))
    data = received.json
    assert [s["text"] for s in data["segments"]] == ["sentence 0", "sentence 1", "sentence 2"]
    assert data["room"] == "standup" and data["room_sid"] == "RM_1"
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"standup-20260528T202640Z.{ext}" for ext in ("json", "txt", "vtt")]
    assert json.loads((tmp_path / "out" / names[0]).read_text()) == data
    assert not list((tmp_path / "journal").glob("*.journal"))


async def test_a_meeting_taken_over_midway_keeps_both_parts_in_its_files(tmp_path: Path) -> None:
    """The dead transcriber's journal and its successor's have the same room and start."""
    first = TranscriptJournal.create(tmp_path / "journal", room="standup", room_sid="RM_1", started_at=START)
    for i in (0, 1):
        first.append(segment(i))
    first.end(START + 30)
    box = outbox(tmp_path)
    await box.deliver_ready()
    second = TranscriptJournal.create(tmp_path / "journal", room="standup", room_sid="RM_1", started_at=START)
    for i in (2, 3):
        second.append(segment(i))
    second.end(START + 60)
    await box.deliver_ready()

    assert len(list((tmp_path / "out").iterdir())) == 3
    data = json.loads((tmp_path / "out" / "standup-20260528T202640Z.json").read_text())
    assert [s["text"] for s in data["segments"]] == [f"sentence {i}" for i in range(4)]
    text = (tmp_path / "out" / "standup-20260528T202640Z.txt").read_text()
    assert text.count("Alice: sentence") == 4
    vtt = (tmp_path / "out" / "standup-20260528T202640Z.vtt").read_text()
    assert vtt.count("-->") == 4


async def test_a_journal_still_being_written_is_not_delivered(tmp_path: Path) -> None:
    live = journal(tmp_path, 2, end=False)
    box = outbox(tmp_path)
    await box.deliver_ready()
    assert not (tmp_path / "out").exists()
    live.end(time.time())
    await box.deliver_ready()
    assert len(list((tmp_path / "out").iterdir())) == 3


async def test_journals_are_private_to_the_worker_user(tmp_path: Path) -> None:
    live = journal(tmp_path, 1, end=False)
    assert stat.S_IMODE(live.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "journal").stat().st_mode) == 0o700
    live.end(time.time())


async def test_a_webhook_that_is_down_gets_the_transcript_once_it_is_back(tmp_path: Path) -> None:
    webhook = WebhookServer(KEY, SECRET)  # not listening yet
    journal(tmp_path, 2)
    box = outbox(tmp_path, webhook=webhook, files=False)
    box.start()
    await asyncio.sleep(2.0)
    assert list((tmp_path / "journal").glob("*.journal")), "journal removed while undelivered"
    await webhook.start()
    await webhook.wait_received()
    await asyncio.sleep(1.5)
    await box.aclose()
    await webhook.stop()
    assert len(webhook.received) == 1


async def test_a_webhook_refusing_for_good_sets_the_transcript_aside(tmp_path: Path) -> None:
    webhook = await WebhookServer(KEY, SECRET, status=403).start()
    journal(tmp_path, 1)
    box = outbox(tmp_path, webhook=webhook, files=False)
    await box.deliver_ready()
    await box.deliver_ready()
    await webhook.stop()
    assert len(webhook.received) == 1  # 403 is not retried
    assert len(list((tmp_path / "journal").glob("*.undelivered"))) == 1


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from transcriber.transcript_journal import TranscriptJournal
from tests.test_transcript_delivery import segment, START
j = TranscriptJournal.create(Path(sys.argv[1]), room="standup", room_sid="RM_1", started_at=START)
for i in range(4):
    j.append(segment(i))
os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_the_finals_of_a_killed_writer_are_delivered_once(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "journal")],
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert result.returncode == -signal.SIGKILL
    webhook = await WebhookServer(KEY, SECRET).start()
    first, second = outbox(tmp_path, webhook=webhook), outbox(tmp_path, webhook=webhook)
    await asyncio.gather(first.deliver_ready(), second.deliver_ready())
    await first.aclose()
    await second.aclose()
    await webhook.stop()
    assert len(webhook.received) == 1
    assert [s["text"] for s in webhook.received[0].json["segments"]] == [
        f"sentence {i}" for i in range(4)
    ]


async def test_translations_published_for_a_room_land_in_its_transcript_per_language(
    tmp_path: Path,
) -> None:
    from transcriber.captions import Caption
    from transcriber.transcript_journal import TranscriptLimits, TranscriptSink

    sink = TranscriptSink(
        tmp_path / "journal",
        room="standup",
        room_sid="RM_1",
        started_at=START,
        limits=TranscriptLimits(max_finals=100, max_bytes=10_000),
    )
    original = Caption(
        segment_id="SG_1", speaker_identity="alice", speaker_name="Alice", track_sid="TR_1",
        language="en", final=True, start=START + 1, end=START + 2, text="alpha bravo",
    )
    await sink.on_caption(original)
    await asyncio.gather(
        sink.add_translation("fr", original, "un deux"),
        sink.add_translation("de", original, "eins zwei"),
    )
    await sink.aclose()
    webhook = await WebhookServer(KEY, SECRET).start()
    box = outbox(tmp_path, webhook=webhook, files=False)
    await box.deliver_ready()
    await box.aclose()
    await webhook.stop()
    data = webhook.received[0].json
    assert [s["text"] for s in data["segments"]] == ["alpha bravo"]
    assert {lang: [(t["source_id"], t["language"], t["text"]) for t in items]
            for lang, items in data["translations"].items()} == {
        "fr": [("SG_1", "fr", "un deux")],
        "de": [("SG_1", "de", "eins zwei")],
    }


def final(i: int, text: str, *, name: str = "Alice", identity: str = "alice") -> Caption:
    return Caption(
        segment_id=f"SG_{i}",
        speaker_identity=identity,
        speaker_name=name,
        track_sid="TR_1",
        language="en",
        final=True,
        start=START + 2 * i,
        end=START + 2 * i + 1,
        text=text,
    )


async def delivered_files(tmp_path: Path, sink: TranscriptSink) -> tuple[Any, str, str]:
    """What the room's sink leaves, once delivered: the JSON, the WebVTT and the text."""
    await sink.aclose()
    await outbox(tmp_path).deliver_ready()
    (json_file,) = (tmp_path / "out").glob("*.json")
    stem = json_file.with_suffix("")
    return (
        json.loads(json_file.read_text()),
        stem.with_suffix(".vtt").read_text(),
        stem.with_suffix(".txt").read_text(),
    )


def transcript_sink(
    tmp_path: Path, *, max_finals: int = 1000, max_bytes: int = 10**6
) -> TranscriptSink:
    return TranscriptSink(
        tmp_path / "journal",
        room="standup",
        room_sid="RM_1",
        started_at=START,
        limits=TranscriptLimits(max_finals=max_finals, max_bytes=max_bytes),
    )


async def test_a_transcript_at_its_finals_limit_keeps_the_first_finals_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TRANSCRIBER_TRANSCRIPT_MAX_FINALS: the meeting's first finals, whole, and none after."""
    sink = transcript_sink(tmp_path, max_finals=3)
    for i in range(6):
        await sink.on_caption(final(i, f"sentence {i}"))
    data, vtt, text = await delivered_files(tmp_path, sink)

    assert [s["text"] for s in data["segments"]] == ["sentence 0", "sentence 1", "sentence 2"]
    assert [c.text for c in webvtt.from_buffer(io.StringIO(vtt)).captions] == [
        "sentence 0", "sentence 1", "sentence 2"
    ]
    assert text.splitlines() == [f"[00:00:0{2 * i}] Alice: sentence {i}" for i in range(3)]
    warnings = [r for r in caplog.records if "TRANSCRIBER_TRANSCRIPT_MAX_FINALS=3" in r.message]
    assert len(warnings) == 1  # once per room, not once per final left out


async def test_a_transcript_at_its_bytes_limit_counts_utf8_bytes_and_takes_nothing_after(
    tmp_path: Path,
) -> None:
    """TRANSCRIBER_TRANSCRIPT_MAX_BYTES: bytes of caption text (UTF-8), not characters;
    once a final does not fit, later ones are left out too, even a short one, so the
    transcript never has a hole in the middle."""
    sink = transcript_sink(tmp_path, max_bytes=25)
    for i, words in enumerate(["ééééé", "ééééé", "ééééé", "ok"]):  # 10 bytes, 5 characters
        await sink.on_caption(final(i, words))
    data, vtt, text = await delivered_files(tmp_path, sink)

    assert [s["text"] for s in data["segments"]] == ["ééééé", "ééééé"]
    assert len(webvtt.from_buffer(io.StringIO(vtt)).captions) == 2
    assert len(text.splitlines()) == 2


async def test_names_are_cleaned_and_bounded_and_text_stays_literal_in_the_delivered_files(
    tmp_path: Path,
) -> None:
    """A participant's name and identity are theirs to choose: a huge one with control
    characters, a line break and `-->` is one bounded line in every file; a caption with
    `-->`, blank lines and markup shows literally and breaks no cue."""
    name = "Eve\x1b[31m -->\r\n\x00<v Bob>" + "é" * 10_000
    identity = "eve\n\n00:00:00.000 --> 00:00:09.000\t" + "x" * 10_000
    said = "a --> b\n\nWEBVTT\n00:00:00.000 --> 00:00:05.000\n<script>alert(1)</script> & c"
    sink = transcript_sink(tmp_path)
    await sink.on_caption(final(1, said, name=name, identity=identity))
    await sink.on_caption(final(2, "fine", name="Bob", identity="bob"))
    data, vtt, text = await delivered_files(tmp_path, sink)

    shown_name = ("Eve [31m --> <v Bob>" + "é" * 10_000)[:MAX_NAME_CHARS]
    shown_identity = ("eve 00:00:00.000 --> 00:00:09.000 " + "x" * 10_000)[:MAX_NAME_CHARS]
    shown_text = "a --> b WEBVTT 00:00:00.000 --> 00:00:05.000 <script>alert(1)</script> & c"
    assert len(shown_name) == len(shown_identity) == MAX_NAME_CHARS

    cues = webvtt.from_buffer(io.StringIO(vtt)).captions
    assert [c.identifier for c in cues] == ["SG_1", "SG_2"]
    assert [(c.start, c.end) for c in cues] == [
        ("00:00:02.000", "00:00:03.000"), ("00:00:04.000", "00:00:05.000")
    ]
    assert html.unescape(cues[0].voice) == shown_name  # as a player shows it
    assert html.unescape(cues[0].text) == shown_text
    assert "<script>" not in cues[0].raw_text and "\x1b" not in vtt and "\x00" not in vtt
    assert (cues[1].voice, cues[1].text) == ("Bob", "fine")

    assert text.splitlines() == [
        f"[00:00:02] {shown_name}: {shown_text}",
        "[00:00:04] Bob: fine",
    ]
    first = data["segments"][0]
    assert (first["speaker_name"], first["speaker_identity"]) == (shown_name, shown_identity)
    assert first["text"] == said  # JSON keeps the text exactly; json escapes it
