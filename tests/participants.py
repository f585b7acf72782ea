"""Real meeting participants for end-to-end tests, built on the `livekit` SDK."""

from __future__ import annotations

import asyncio
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from livekit import rtc
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_TRANSCRIPTION,
)

from .livekit_server import LiveKitServer

_FRAME_MS = 20


class Speaker:
    """A participant publishing one microphone track, fed from WAV files in real time."""

    def __init__(
        self,
        server: LiveKitServer,
        room: str,
        identity: str,
        *,
        sample_rate: int = 48000,
        attributes: dict[str, str] | None = None,
        kind: str = "standard",
    ):
        self.server, self.room_name, self.identity = server, room, identity
        self.sample_rate = sample_rate
        self.attributes = attributes or {}
        self.kind = kind
        self.room = rtc.Room()
        self.source: rtc.AudioSource | None = None
        self.publication: rtc.LocalTrackPublication | None = None

    async def join(self, *, publish: bool = True) -> Speaker:
        # speakers do not listen to each other: only the transcriber subscribes to a track
        await self.room.connect(
            self.server.url,
            self.server.token(
                self.identity, self.room_name, kind=self.kind, attributes=self.attributes
            ),
            rtc.RoomOptions(auto_subscribe=False),
        )
        if publish:
            await self.publish()
        return self

    async def publish(self, source: rtc.TrackSource.ValueType = rtc.TrackSource.SOURCE_MICROPHONE) -> str:
        # half a second queued ahead: a stall of this process's event loop (a burst of API
        # calls, a busy machine) must not leave a hole in the speech on the wire
        self.source = rtc.AudioSource(self.sample_rate, 1, queue_size_ms=500)
        track = rtc.LocalAudioTrack.create_audio_track(f"{self.identity}-mic", self.source)
        options = rtc.TrackPublishOptions(source=source)
        self.publication = await self.room.local_participant.publish_track(track, options)
        return self.publication.sid

    async def unpublish(self) -> None:
        assert self.publication is not None
        await self.room.local_participant.unpublish_track(self.publication.sid)
        self.publication = None

    @property
    def track_sid(self) -> str:
        assert self.publication is not None
        return self.publication.sid

    async def play(self, wav: Path) -> None:
        """Sends the file at real-time pace; returns once its last sample is on the wire."""
        await self.play_samples(read_wav(wav, self.sample_rate))

    async def play_samples(self, samples: np.ndarray) -> None:
        assert self.source is not None
        per_frame = self.sample_rate * _FRAME_MS // 1000
        for i in range(0, len(samples) - per_frame + 1, per_frame):
            chunk = samples[i : i + per_frame]
            await self.source.capture_frame(
                rtc.AudioFrame(chunk.tobytes(), self.sample_rate, 1, per_frame)
            )
        await self.source.wait_for_playout()

    async def silence(self, seconds: float) -> None:
        await self.play_samples(np.zeros(int(seconds * self.sample_rate), dtype=np.int16))

    async def leave(self) -> None:
        await self.room.disconnect()


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    with wave.open(str(path), "rb") as f:
        if f.getframerate() != sample_rate or f.getnchannels() != 1 or f.getsampwidth() != 2:
            raise ValueError(f"{path}: expected {sample_rate} Hz mono 16-bit")
        return np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)


@dataclass(frozen=True)
class Caption:
    output: str  # "text_stream" or "legacy"
    speaker: str
    track_sid: str
    segment_id: str
    text: str
    final: bool
    received_at: float
    attributes: dict[str, str] = field(default_factory=dict)
    """Every text stream attribute (translations carry `translated`, ...)."""
    language: str = ""
    """The text stream's `language` attribute, or the legacy segment's language."""

    @property
    def history(self) -> bool:
        return self.attributes.get("transcriber.history") == "true"

    @property
    def translated(self) -> bool:
        return self.attributes.get("translated") == "true"


STREAM_ORDER_WAIT = 2.0
"""Seconds a finished caption stream waits for the one opened before it to finish."""


@dataclass
class CaptionListener:
    """A participant that reads both caption outputs, the way web clients do."""

    server: LiveKitServer
    room_name: str
    identity: str = "listener"
    attributes: dict[str, str] = field(default_factory=dict)
    """Given in the join token (e.g. `language`)."""
    room: rtc.Room = field(default_factory=rtc.Room)
    captions: list[Caption] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _last_read: asyncio.Task[None] | None = None

    async def join(self) -> CaptionListener:
        self.room.register_text_stream_handler(TOPIC_TRANSCRIPTION, self._on_text_stream)
        self.room.on("transcription_received", self._on_legacy)
        await self.room.connect(
            self.server.url,
            self.server.token(self.identity, self.room_name, attributes=self.attributes),
            rtc.RoomOptions(auto_subscribe=False),
        )
        return self

    def _on_text_stream(self, reader: rtc.TextStreamReader, participant_identity: str) -> None:
        task = asyncio.create_task(self._read(reader, participant_identity, self._last_read))
        self._last_read = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(
        self,
        reader: rtc.TextStreamReader,
        participant_identity: str,
        opened_before: asyncio.Task[None] | None,
    ) -> None:
        """Captions are kept in the order their streams opened (the order they were sent):
        two short streams sent back to back may finish reading in either order. A stream
        whose sender was killed mid-stream never ends, so it holds the next ones back only
        for `STREAM_ORDER_WAIT`."""
        text = await reader.read_all()
        received_at = time.monotonic()
        if opened_before is not None:
            await asyncio.wait([opened_before], timeout=STREAM_ORDER_WAIT)
        attributes = reader.info.attributes
        self.captions.append(
            Caption(
                output="text_stream",
                speaker=participant_identity,
                track_sid=attributes.get(ATTRIBUTE_TRANSCRIPTION_TRACK_ID, ""),
                segment_id=attributes.get(ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID, ""),
                text=text,
                final=attributes.get(ATTRIBUTE_TRANSCRIPTION_FINAL) == "true",
                received_at=received_at,
                language=attributes.get("language", ""),
                attributes=dict(attributes),
            )
        )

    def _on_legacy(
        self,
        segments: list[rtc.TranscriptionSegment],
        participant: rtc.Participant | None,
        publication: rtc.TrackPublication | None,
    ) -> None:
        for segment in segments:
            self.captions.append(
                Caption(
                    attributes={"segments_in_event": str(len(segments))},
                    output="legacy",
                    speaker=participant.identity if participant else "",
                    track_sid=publication.sid if publication else "",
                    segment_id=segment.id,
                    text=segment.text,
                    final=segment.final,
                    received_at=time.monotonic(),
                    language=segment.language,
                )
            )

    def meet_view(self, speaker: str) -> str:
        """What La Suite Meet's subtitles show for the speaker: its reducer drops events of
        more than one segment, keeps the first event of each segment id, ignores later
        ones, and joins the texts of a speaker's consecutive segments
        (`src/frontend/src/features/subtitle/component/Subtitles.tsx`)."""
        return " ".join(c.text for c in self.meet_events(speaker))

    def meet_events(self, speaker: str) -> list[Caption]:
        """The legacy events La Suite Meet's reducer keeps for the speaker, in order: of
        one segment each, the first of each segment id (see `meet_view`)."""
        seen: set[str] = set()
        kept: list[Caption] = []
        for caption in self.of(speaker, "legacy"):
            if caption.attributes.get("segments_in_event") != "1":
                continue
            if caption.segment_id not in seen:
                seen.add(caption.segment_id)
                kept.append(caption)
        return kept

    def by_id_view(self, output: str, speaker: str) -> list[Caption]:
        """What a reader that updates segments by id shows (components-react
        `useTrackTranscription`, `useTranscriptions`): the latest of each segment id, in
        the order the ids first arrived."""
        latest: dict[str, Caption] = {}
        for caption in self.of(speaker, output):
            latest[caption.segment_id] = caption
        return list(latest.values())

    def of(self, speaker: str, output: str = "text_stream") -> list[Caption]:
        return [c for c in self.captions if c.speaker == speaker and c.output == output]

    def finals(self, speaker: str, output: str = "text_stream") -> list[str]:
        return [c.text for c in self.of(speaker, output) if c.final and not c.translated]

    def translations(self, speaker: str, *, final: bool = True) -> list[Caption]:
        """The speaker's translated captions this listener received (finals, or interims)."""
        return [c for c in self.of(speaker) if c.translated and c.final == final]

    async def wait_heard(self, speaker: str, said: str, *, max_wer: float, timeout: float = 40.0) -> str:
        """The speaker's finals, once they match `said` within `max_wer` or `timeout`
        has passed (recognizers may split or merge sentences, so no count is assumed)."""
        from .speech_clips import word_error_rate

        deadline = time.monotonic() + timeout
        while word_error_rate(said, heard := " ".join(self.finals(speaker))) > max_wer:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        return heard

    async def wait_for(self, predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; captions so far: {self.captions}")
            await asyncio.sleep(0.05)

    async def leave(self) -> None:
        await self.room.disconnect()
