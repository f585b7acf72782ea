"""Room manager: follows participants and their audio tracks, one pipeline per track.

RoomIO-style, but for every participant at once: each audio track (microphone and
screen-share audio) of every eligible remote participant that the caps admit
(`TrackAdmission`) gets a `TrackPipeline`, in the language its participant speaks
(`RoomLanguages`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import utils
from livekit.agents.vad import VAD

from . import metrics
from .caption_stream import CaptionSink, CaptionStream
from .captions import Speaker, clean_label
from .languages import LANGUAGE_ATTRIBUTE, LanguagePolicy
from .room_languages import RoomLanguages
from .stt_failover import FailoverSTT
from .track_admission import TrackAdmission, TrackCaps
from .track_pipeline import PipelineOptions, TrackPipeline, TrackUsage

logger = logging.getLogger(__name__)

_AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


@dataclass(frozen=True, kw_only=True)
class RoomOptions:
    """Values come from `Settings` (see `worker.room_options`)."""

    pipeline: PipelineOptions
    transcribe_agents: bool
    empty_room_timeout: float
    caps: TrackCaps
    languages: LanguagePolicy


class RoomManager:
    """Owns every track pipeline of one room and the room's caption stream, into which
    every pipeline publishes and from which every output (`sinks`) reads; `aclose()`
    closes the pipelines, each publishing its last final, then lets the outputs finish,
    while the room is still connected."""

    def __init__(
        self,
        room: rtc.Room,
        stt: FailoverSTT,
        vad: VAD,
        options: RoomOptions,
        *,
        sinks: list[CaptionSink],
        may_publish: Callable[[], bool] = lambda: True,
        on_empty: Callable[[], None],
        worker_tracks: Callable[[], int],
    ) -> None:
        """`worker_tracks` counts the tracks captioned by every room of this worker."""
        self._room = room
        self.captions = CaptionStream(sinks, log_extra={"room": room.name}, may_publish=may_publish)
        self._stt = stt
        self._vad = vad
        self._opts = options
        self._on_empty = on_empty
        self._admission = TrackAdmission(room, options.caps, worker_tracks=worker_tracks)
        self._languages = RoomLanguages(options.languages, room=room.name)
        self._pipelines: dict[str, TrackPipeline] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._empty_timer: asyncio.Task[None] | None = None
        self._closed = False
        self.usage = TrackUsage()

    def _handlers(self) -> dict[str, Callable[..., None]]:
        return {
            "track_published": self._on_track_published,
            "track_subscribed": self._on_track_subscribed,
            "track_unsubscribed": self._on_track_unsubscribed,
            "track_unpublished": self._on_track_unpublished,
            "track_muted": self._on_track_muted,
            "participant_connected": self._on_participant_connected,
            "participant_disconnected": self._on_participant_disconnected,
            "participant_attributes_changed": self._on_attributes_changed,
            "reconnected": self._on_reconnected,
        }

    def start(self) -> None:
        for event, handler in self._handlers().items():
            self._room.on(event, handler)  # type: ignore[arg-type]
        self._languages.update_all(self._room.remote_participants.values())
        self._scan()

    def _scan(self) -> None:
        """Follows every audio track the room has now (at start, after a reconnection)."""
        for participant in self._room.remote_participants.values():
            for publication in participant.track_publications.values():
                self._on_track_published(publication, participant)
                if publication.track is not None and publication.subscribed:
                    self._on_track_subscribed(publication.track, publication, participant)
        self._check_empty()

    def _on_reconnected(self) -> None:
        """After the server came back (restart, node change) tracks may have new ids and
        participants may be gone without an event: close what is no longer published,
        follow what is."""
        published = {
            sid
            for participant in self._room.remote_participants.values()
            for sid in participant.track_publications
        }
        logger.info(
            "reconnected, following the room's tracks again",
            extra={"room": self._room.name, "tracks": sorted(published)},
        )
        for sid in list(self._pipelines):
            if sid not in published:
                self._close_pipeline(sid)
        self._admission.ask_again()
        self._scan()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for event, handler in self._handlers().items():
            self._room.off(event, handler)  # type: ignore[arg-type]
        if self._empty_timer is not None:
            await utils.aio.cancel_and_wait(self._empty_timer)
        await self._admission.aclose()
        for sid in list(self._pipelines):
            self._close_pipeline(sid)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.captions.aclose()
        logger.info("room closed", extra={"room": self._room.name, **self.usage.log_fields()})

    def _eligible(self, participant: rtc.RemoteParticipant) -> bool:
        if participant.identity == self._room.local_participant.identity:
            return False
        return self._opts.transcribe_agents or participant.kind != _AGENT

    def _on_track_published(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if publication.kind == rtc.TrackKind.KIND_AUDIO and self._eligible(participant):
            self._admission.request(publication, participant)

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if (
            self._closed
            or track.kind != rtc.TrackKind.KIND_AUDIO
            or track.sid in self._pipelines
            or not self._eligible(participant)
            or participant.identity not in self._room.remote_participants  # left meanwhile
        ):
            self._admission.drop_request(track.sid)
            return
        if not self._admission.admit(publication, participant):
            return
        extra = {"room": self._room.name, "participant": participant.identity, "track": track.sid}
        logger.info("captioning track", extra=extra)
        speaker = Speaker(
            identity=participant.identity,
            name=clean_label(participant.name or participant.identity),
            track_sid=track.sid,
        )
        self._pipelines[track.sid] = TrackPipeline(
            room=self._room,
            track=track,
            speaker=speaker,
            captions=self.captions.publish,
            stt=self._stt,
            vad=self._vad,
            options=self._opts.pipeline,
            language=self._languages.spoken_language(participant.identity),
        )
        metrics.ACTIVE_TRACKS.inc()

    def _on_track_unsubscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self._close_pipeline(publication.sid)

    def _on_track_unpublished(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        self._admission.forget(publication.sid)
        self._close_pipeline(publication.sid)

    def _on_track_muted(
        self, participant: rtc.Participant, publication: rtc.TrackPublication
    ) -> None:
        if (pipeline := self._pipelines.get(publication.sid)) is not None:
            pipeline.flush()

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self._languages.update(participant)
        if participant.kind != _AGENT:
            self.captions.participant_joined(participant.identity)  # history, for (re)joiners
        self._check_empty()

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        for sid in self._admission.tracks_of(participant.identity):
            self._close_pipeline(sid)
        self._languages.forget(participant.identity)
        self._check_empty()

    def _on_attributes_changed(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        """A new language reaches the participant's tracks at their next segment boundary."""
        if LANGUAGE_ATTRIBUTE not in changed or not isinstance(participant, rtc.RemoteParticipant):
            return
        if (spoken := self._languages.update(participant)) is not None:
            for sid in self._admission.tracks_of(participant.identity):
                self._pipelines[sid].set_language(spoken)

    def _close_pipeline(self, sid: str) -> None:
        pipeline = self._pipelines.pop(sid, None)
        if pipeline is None:
            return
        metrics.ACTIVE_TRACKS.dec()
        task = asyncio.create_task(self._finish(sid, pipeline), name=f"close-track-{sid}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self._admission.release(sid)

    async def _finish(self, sid: str, pipeline: TrackPipeline) -> None:
        await pipeline.aclose()
        self.usage.add(pipeline.usage)
        logger.info(
            "track closed",
            extra={
                "room": self._room.name,
                "track": sid,
                "finals": pipeline.finals,
                "active_tracks": len(self._pipelines),
                "closing_tracks": len(self._closing) - 1,
                **pipeline.usage.log_fields(),
            },
        )

    def _check_empty(self) -> None:
        humans = [p for p in self._room.remote_participants.values() if p.kind != _AGENT]
        if humans:
            if self._empty_timer is not None:
                self._empty_timer.cancel()
                self._empty_timer = None
        elif self._empty_timer is None and not self._closed:
            self._empty_timer = asyncio.create_task(self._leave_when_still_empty())

    async def _leave_when_still_empty(self) -> None:
        await asyncio.sleep(self._opts.empty_room_timeout)
        logger.info("no participant for %.0f s, leaving the room", self._opts.empty_room_timeout)
        self._on_empty()
