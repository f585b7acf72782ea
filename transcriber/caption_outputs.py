"""The caption outputs clients read, as sinks on the room's caption stream.

- `TextStreamOutput`: `lk.transcription` text streams (livekit-client
  `registerTextStreamHandler`, components-react `useTranscriptions`): per segment, interims
  then one final, each carrying the segment's full text so far.
- `LegacyOutput`: legacy transcription events (`RoomEvent.TranscriptionReceived`). Their
  readers differ: La Suite Meet keeps the first event of each segment id and ignores later
  ones, components-react's `useTrackTranscription` updates a segment by id. So by default
  (`stable`) a legacy segment carries only words that will not change — each newly stable
  run of words is its own final segment — which both kinds show in full, live, once.

Both replay the last finals to a participant who joins (history), with the same segment
ids, so a client that already had them shows each once.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from livekit import rtc
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_TRANSCRIPTION,
)

from .caption_stream import CaptionSink
from .captions import Caption

logger = logging.getLogger(__name__)

ATTRIBUTE_LANGUAGE = "language"
ATTRIBUTE_HISTORY = "transcriber.history"


class LegacyMode(str, enum.Enum):
    STABLE = "stable"
    """Each newly stable run of words as its own final segment: live, and right in every
    known reader."""
    FINAL = "final"
    """One final segment per caption segment: right everywhere, but only after the words."""
    UPDATES = "updates"
    """Interims then the final under one segment id: for readers that update by id only
    (La Suite Meet shows just the first interim)."""


class TextSender(Protocol):
    async def __call__(
        self,
        participant: rtc.LocalParticipant,
        text: str,
        *,
        sender_identity: str,
        attributes: dict[str, str],
        to: str | None,
    ) -> None: ...


async def send_text(
    participant: rtc.LocalParticipant,
    text: str,
    *,
    sender_identity: str,
    attributes: dict[str, str],
    to: str | None,
) -> None:
    """One `lk.transcription` text stream, on behalf of the speaker, in one SDK request.

    `LocalParticipant.stream_text` takes three (open, write, close), and `send_text` sends
    as the transcriber only. The SDK hands a request waiting for its answer every event of
    the process, each audio frame of every track included, unless it subscribes with a
    filter: captions sent with `stream_text` were 12% of a job process's samples in the
    capacity benchmark (py-spy, 12 tracks), this 5%. tests/test_livekit_internals.py fails
    if an SDK upgrade changes what this relies on.
    """
    from livekit.rtc._ffi_client import FfiClient
    from livekit.rtc._proto import ffi_pb2

    request = ffi_pb2.FfiRequest()
    request.send_text.local_participant_handle = participant._ffi_handle.handle
    request.send_text.text = text
    options = request.send_text.options
    options.topic = TOPIC_TRANSCRIPTION
    options.attributes.update(attributes)
    options.sender_identity = sender_identity
    if to is not None:
        options.destination_identities.append(to)
    queue = FfiClient.instance.queue.subscribe(
        filter_fn=lambda event: event.WhichOneof("message") == "send_text"
    )
    try:
        sent = FfiClient.instance.request(request).send_text.async_id
        answer = await queue.wait_for(lambda event: event.send_text.async_id == sent)
    finally:
        FfiClient.instance.queue.unsubscribe(queue)
    if answer.send_text.HasField("error"):
        raise rtc.StreamError(answer.send_text.error.description)


class TextStreamOutput(CaptionSink):
    name = "text_streams"

    def __init__(
        self, room: rtc.Room, *, history_finals: int, send: TextSender = send_text
    ) -> None:
        self._room = room
        self._send_text = send
        self._history: deque[Caption] = deque(maxlen=history_finals)
        self._shown: dict[str, str] = {}  # open segment id → text last sent

    async def on_caption(self, caption: Caption) -> None:
        if not caption.final:
            if self._shown.get(caption.segment_id) == caption.text:
                return  # only its stable words changed: nothing new for this output
            self._shown[caption.segment_id] = caption.text
        else:
            self._shown.pop(caption.segment_id, None)
            if self._history.maxlen:
                self._history.append(caption)
        await self._send(caption)

    async def on_participant_joined(self, identity: str) -> None:
        for caption in list(self._history):
            await self._send(caption, to=identity)

    async def _send(self, caption: Caption, *, to: str | None = None) -> None:
        attributes = {
            ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: caption.segment_id,
            ATTRIBUTE_TRANSCRIPTION_FINAL: "true" if caption.final else "false",
            ATTRIBUTE_TRANSCRIPTION_TRACK_ID: caption.track_sid,
            ATTRIBUTE_LANGUAGE: caption.language,
        }
        if to is not None:
            attributes[ATTRIBUTE_HISTORY] = "true"
        if not self._room.isconnected():
            return
        try:
            await self._send_text(
                self._room.local_participant,
                caption.text,
                sender_identity=caption.speaker_identity,
                attributes=attributes,
                to=to,
            )
        except Exception as e:  # the room may be going away; never fail the stream
            if self._room.isconnected():
                logger.warning("failed to publish caption text stream: %s", e)


@dataclass
class _Progress:
    """What the legacy output has published of one caption segment."""

    pieces: list[rtc.TranscriptionSegment]
    published_until: float = 0.0
    """Wall-clock end of the last published word."""
    speaker: str = ""
    track_sid: str = ""


class LegacyOutput(CaptionSink):
    name = "legacy_transcriptions"

    def __init__(
        self, room: rtc.Room, *, mode: LegacyMode, history_finals: int, started_at: float
    ) -> None:
        self._room = room
        self._mode = mode
        self._started_at = started_at
        self._history_segments = history_finals
        self._segments: dict[str, _Progress] = {}
        """Open segments and the last `history_finals` closed ones, oldest first."""
        self._done: deque[str] = deque()

    async def on_caption(self, caption: Caption) -> None:
        progress = self._segments.get(caption.segment_id)
        if progress is None:
            progress = _Progress([], speaker=caption.speaker_identity, track_sid=caption.track_sid)
            self._segments[caption.segment_id] = progress
        piece = self._next_piece(caption, progress)
        if caption.final:
            self._forget_old(caption.segment_id)
        if piece is not None:
            await self._publish(progress, piece)

    def _next_piece(self, caption: Caption, progress: _Progress) -> rtc.TranscriptionSegment | None:
        if self._mode is LegacyMode.UPDATES:
            if progress.pieces and progress.pieces[0].text == caption.text and not caption.final:
                return None  # only its stable words changed
            progress.pieces[:] = [self._segment(caption.segment_id, caption, caption.text)]
            return progress.pieces[0]
        if self._mode is LegacyMode.FINAL:
            if not caption.final:
                return None
            progress.pieces.append(self._segment(caption.segment_id, caption, caption.text))
            return progress.pieces[-1]
        words = [w for w in caption.stable if (w.start + w.end) / 2 > progress.published_until]
        if not words:
            return None
        progress.published_until = words[-1].end
        piece_id = f"{caption.segment_id}_{len(progress.pieces)}"
        text = " ".join(w.text for w in words)
        piece = self._segment(piece_id, caption, text, words[0].start, words[-1].end, final=True)
        progress.pieces.append(piece)
        return piece

    def _segment(
        self,
        segment_id: str,
        caption: Caption,
        text: str,
        start: float | None = None,
        end: float | None = None,
        *,
        final: bool | None = None,
    ) -> rtc.TranscriptionSegment:
        return rtc.TranscriptionSegment(
            id=segment_id,
            text=text,
            start_time=self._ms(caption.start if start is None else start),
            end_time=self._ms(caption.end if end is None else end),
            language=caption.language,
            final=caption.final if final is None else final,
        )

    def _ms(self, wall: float) -> int:
        """Milliseconds from the meeting's start, as in the transcript."""
        return max(0, round((wall - self._started_at) * 1000))

    def _forget_old(self, segment_id: str) -> None:
        self._done.append(segment_id)
        while len(self._done) > self._history_segments:
            self._segments.pop(self._done.popleft(), None)

    async def on_participant_joined(self, identity: str) -> None:
        """Legacy events cannot be sent to one participant: the history goes to everyone,
        under the ids they already have (readers keep the first, or update in place)."""
        for progress in list(self._segments.values()):
            for piece in [p for p in progress.pieces if p.final]:
                await self._publish(progress, piece)

    async def _publish(self, progress: _Progress, piece: rtc.TranscriptionSegment) -> None:
        """One segment per event: La Suite Meet drops events that carry more."""
        if not self._room.isconnected():
            return
        try:
            await self._room.local_participant.publish_transcription(
                rtc.Transcription(
                    participant_identity=progress.speaker,
                    track_sid=progress.track_sid,
                    segments=[piece],
                )
            )
        except Exception as e:
            if self._room.isconnected():
                logger.warning("failed to publish legacy transcription: %s", e)
