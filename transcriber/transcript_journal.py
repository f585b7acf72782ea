"""The transcript's journal: a room's finals on disk as they are published.

The job process captioning a room appends one JSON line per final and fsyncs it before
taking the next, so a SIGKILL loses nothing already shown to users. While it lives, it
holds an exclusive lock on the file (the OS releases it however the process ends); the
outbox (`transcript_delivery`) delivers a journal once nobody holds it. Files are created
0600 in a 0700 directory: transcripts are never readable by other local users.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .caption_stream import CaptionSink
from .captions import Caption
from .transcript import Transcript, TranscriptSegment
from .translation import translated_segment_id

logger = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal"


@dataclass(frozen=True, kw_only=True)
class TranscriptLimits:
    max_finals: int
    max_bytes: int
    """Of caption text, per room."""


class TranscriptJournal:
    """The writing side, in the job process. Blocking: call it off the event loop."""

    def __init__(self, file: IO[str], path: Path) -> None:
        self._file = file
        self.path = path

    @classmethod
    def create(
        cls, directory: Path, *, room: str, room_sid: str, started_at: float
    ) -> TranscriptJournal:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        stem = Transcript(room=room, room_sid=room_sid, started_at=started_at, ended_at=0).file_stem
        path = directory / f"{stem}-{uuid.uuid4().hex[:8]}{JOURNAL_SUFFIX}"
        # locked before it has the name the outbox looks for, so it never sees it unlocked
        partial = path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        journal = cls(os.fdopen(fd, "w", encoding="utf-8"), path)
        journal._write(
            {"type": "start", "room": room, "room_sid": room_sid, "started_at": started_at}
        )
        os.rename(partial, path)
        return journal

    def append(self, segment: TranscriptSegment) -> None:
        self._write({"type": "final", **segment.to_dict()})

    def append_translation(self, segment: TranscriptSegment) -> None:
        self._write({"type": "translation", **segment.to_dict()})

    def end(self, ended_at: float) -> None:
        """The meeting is over for this transcriber: the outbox may deliver it now."""
        self._write({"type": "end", "ended_at": ended_at})
        self._file.close()  # releases the lock

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def read_journal(path: Path) -> Transcript:
    """The transcript a journal holds. A process killed mid-write leaves at most a partial
    last line, which is skipped; without an end record, the meeting ended at its last
    final. Raises ValueError for a file that is no journal."""
    transcript: Transcript | None = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = record.pop("type", None)
            if kind == "start" and transcript is None:
                transcript = Transcript(
                    room=str(record["room"]),
                    room_sid=str(record["room_sid"]),
                    started_at=float(record["started_at"]),
                    ended_at=0.0,
                )
            elif kind == "final" and transcript is not None:
                transcript.segments.append(TranscriptSegment(**record))
            elif kind == "translation" and transcript is not None:
                segment = TranscriptSegment(**record)
                transcript.translations.setdefault(segment.language, []).append(segment)
            elif kind == "end" and transcript is not None:
                transcript.ended_at = float(record["ended_at"])
    if transcript is None:
        raise ValueError(f"{path} is not a transcript journal")
    if not transcript.ended_at:
        last = max((s.end for s in transcript.segments), default=transcript.started_at)
        transcript.ended_at = last
    return transcript


class TranscriptSink(CaptionSink):
    """Journals the room's finals (bounded); the journal is delivered after the room."""

    name = "transcript"

    def __init__(
        self,
        directory: Path,
        *,
        room: str,
        room_sid: str,
        started_at: float,
        limits: TranscriptLimits,
    ) -> None:
        self._directory = directory
        self._room, self._room_sid, self._started_at = room, room_sid, started_at
        self._limits = limits
        self._journal: TranscriptJournal | None = None
        self._finals = 0
        self._bytes = 0
        self._full = False
        self._lock = asyncio.Lock()

    async def on_caption(self, caption: Caption) -> None:
        if caption.final and self._fits(caption.text):
            await self._write(TranscriptSegment.from_caption(caption), translation=False)

    async def add_translation(self, target: str, original: Caption, text: str) -> None:
        """A final's translation, as the translation output published it."""
        if self._fits(text):
            segment = dataclasses.replace(
                TranscriptSegment.from_caption(original),
                id=translated_segment_id(original.segment_id, target),
                source_id=original.segment_id,
                language=target,
                text=text,
            )
            await self._write(segment, translation=True)

    def _fits(self, text: str) -> bool:
        if self._full:
            return False
        size = len(text.encode())
        if self._finals >= self._limits.max_finals or self._bytes + size > self._limits.max_bytes:
            self._full = True
            logger.warning(
                "the transcript reached its limit (TRANSCRIBER_TRANSCRIPT_MAX_FINALS=%d, "
                "TRANSCRIBER_TRANSCRIPT_MAX_BYTES=%d): later finals are left out of it",
                self._limits.max_finals,
                self._limits.max_bytes,
                extra={"room": self._room},
            )
            return False
        self._finals += 1
        self._bytes += size
        return True

    async def _write(self, segment: TranscriptSegment, *, translation: bool) -> None:
        async with self._lock:  # originals and translations come from two tasks
            await asyncio.to_thread(self._append, segment, translation)

    def _append(self, segment: TranscriptSegment, translation: bool) -> None:
        if self._journal is None:
            self._journal = TranscriptJournal.create(
                self._directory,
                room=self._room,
                room_sid=self._room_sid,
                started_at=self._started_at,
            )
        if translation:
            self._journal.append_translation(segment)
        else:
            self._journal.append(segment)

    async def aclose(self) -> None:
        async with self._lock:
            if self._journal is not None:
                await asyncio.to_thread(self._journal.end, time.time())
                self._journal = None
