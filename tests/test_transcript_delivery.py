"""Journal and outbox: a transcript reaches the directory and the webhook once, signed,
whatever happened to the process that wrote it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transcriber.transcript import TranscriptSegment
from transcriber.transcript_delivery import DeliveryOptions, TranscriptOutbox
from transcriber.transcript_journal import TranscriptJournal

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
