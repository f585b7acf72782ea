"""Caption publisher: turns one track's STT events into captions in the room.

Each STT segment becomes interim captions then exactly one final, all under one segment
id, sent on behalf of the speaker through both outputs clients listen to:
- `lk.transcription` text streams (livekit-client `registerTextStreamHandler`,
  components-react `useTranscriptions`), one short stream per update carrying the full text;
- legacy transcription events (`RoomEvent.TranscriptionReceived`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_TRANSCRIPTION,
)

from . import metrics, room_lease

logger = logging.getLogger("transcriber.captions")


@dataclass(frozen=True, kw_only=True)
class CaptionOutputs:
    text_streams: bool = True
    legacy_transcriptions: bool = True


@dataclass(frozen=True, kw_only=True)
class Caption:
    segment_id: str
    text: str
    final: bool
    language: str
    start_time: float
    end_time: float


class CaptionPublisher:
    """Publishes the captions of one speaker's track.

    Not thread-safe and not re-entrant: the track pipeline feeds it events in order.
    """

    def __init__(
        self,
        room: rtc.Room,
        *,
        speaker_identity: str,
        track_sid: str,
        outputs: CaptionOutputs,
    ) -> None:
        self._room = room
        self._speaker = speaker_identity
        self._track_sid = track_sid
        self._outputs = outputs
        self._segment_id: str | None = None
        self._last_interim: Caption | None = None
        self.interims_published = 0
        self.finals_published = 0

    @property
    def segment_open(self) -> bool:
        return self._segment_id is not None

    async def on_speech_event(self, event: stt.SpeechEvent) -> None:
        if event.type == stt.SpeechEventType.INTERIM_TRANSCRIPT and event.alternatives:
            await self._interim(event.alternatives[0])
        elif event.type == stt.SpeechEventType.FINAL_TRANSCRIPT and event.alternatives:
            await self._final(event.alternatives[0])
        elif event.type == stt.SpeechEventType.END_OF_SPEECH:
            # STTs that drop an empty final (the words were withdrawn) end speech without one
            await self.close_open_segment()

    async def close_open_segment(self) -> None:
        """Closes a segment the STT left without a final (its input ended mid-sentence),
        so clients never keep a caption that is still 'in progress' forever."""
        if self._segment_id is not None and self._last_interim is not None:
            last = self._last_interim
            await self._publish(
                Caption(
                    segment_id=self._segment_id,
                    text=last.text,
                    final=True,
                    language=last.language,
                    start_time=last.start_time,
                    end_time=last.end_time,
                )
            )
        self._segment_id = None
        self._last_interim = None

    async def _interim(self, data: stt.SpeechData) -> None:
        text = data.text.strip()
        if not text:
            return
        if self._segment_id is None:
            self._segment_id = utils.shortuuid("SG_")
        caption = _caption(self._segment_id, text, data, final=False)
        self._last_interim = caption
        await self._publish(caption)

    async def _final(self, data: stt.SpeechData) -> None:
        text = data.text.strip()
        if not text and self._segment_id is None:
            return
        if not text and self._last_interim is not None:
            # the STT withdrew what it showed; close the segment with what users saw
            text = self._last_interim.text
        segment_id = self._segment_id or utils.shortuuid("SG_")
        self._segment_id = None
        self._last_interim = None
        await self._publish(_caption(segment_id, text, data, final=True))

    async def _publish(self, caption: Caption) -> None:
        if not self._room.isconnected() or not room_lease.may_publish(self._room.name):
            return
        if caption.final:
            self.finals_published += 1
        else:
            self.interims_published += 1
        metrics.CAPTIONS_PUBLISHED.labels(kind="final" if caption.final else "interim").inc()
        if self._outputs.text_streams:
            await self._publish_text_stream(caption)
        if self._outputs.legacy_transcriptions:
            await self._publish_legacy(caption)

    async def _publish_text_stream(self, caption: Caption) -> None:
        attributes = {
            ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: caption.segment_id,
            ATTRIBUTE_TRANSCRIPTION_FINAL: "true" if caption.final else "false",
            ATTRIBUTE_TRANSCRIPTION_TRACK_ID: self._track_sid,
        }
        try:
            writer = await self._room.local_participant.stream_text(
                topic=TOPIC_TRANSCRIPTION,
                sender_identity=self._speaker,
                attributes=attributes,
            )
            await writer.write(caption.text)
            await writer.aclose()
        except Exception as e:  # the room may be going away; never fail the pipeline
            if self._room.isconnected():
                logger.warning("failed to publish caption text stream: %s", e)

    async def _publish_legacy(self, caption: Caption) -> None:
        segment = rtc.TranscriptionSegment(
            id=caption.segment_id,
            text=caption.text,
            start_time=int(caption.start_time * 1000),
            end_time=int(caption.end_time * 1000),
            language=caption.language,
            final=caption.final,
        )
        try:
            await self._room.local_participant.publish_transcription(
                rtc.Transcription(
                    participant_identity=self._speaker,
                    track_sid=self._track_sid,
                    segments=[segment],
                )
            )
        except Exception as e:
            if self._room.isconnected():
                logger.warning("failed to publish legacy transcription: %s", e)


def _caption(segment_id: str, text: str, data: stt.SpeechData, *, final: bool) -> Caption:
    return Caption(
        segment_id=segment_id,
        text=text,
        final=final,
        language=str(data.language or ""),
        start_time=data.start_time,
        end_time=data.end_time,
    )
