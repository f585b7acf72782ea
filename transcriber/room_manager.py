"""Room manager: follows participants and their audio tracks, one pipeline per track.

RoomIO-style, but for every participant at once: each subscribed audio track of every
eligible remote participant (microphone and screen-share audio) gets a `TrackPipeline`.
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
from .languages import LANGUAGE_ATTRIBUTE, LanguagePolicy, Targets, read_attribute
from .stt_failover import FailoverSTT
from .track_pipeline import PipelineOptions, TrackPipeline, TrackUsage

logger = logging.getLogger(__name__)

_AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


@dataclass(frozen=True, kw_only=True)
class RoomOptions:
    """Values come from `Settings` (see `worker.room_options`), except the participant cap."""

    pipeline: PipelineOptions
    transcribe_agents: bool
    empty_room_timeout: float
    max_tracks_per_room: int
    max_tracks_per_worker: int
    languages: LanguagePolicy
    max_tracks_per_participant: int = 4
    """Bounds what one participant can make us spend (mic + screen share need two)."""


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
        self._worker_tracks = worker_tracks
        self._opts = options
        self._on_empty = on_empty
        self._pipelines: dict[str, TrackPipeline] = {}
        self._owners: dict[str, str] = {}  # track sid → participant identity
        self._pending: dict[str, str] = {}
        """Tracks asked for and not subscribed yet (they count against the caps)."""
        self._waiting: dict[str, tuple[rtc.RemoteTrackPublication, rtc.RemoteParticipant]] = {}
        """Tracks a cap refused: left unsubscribed, picked up once the cap allows."""
        self._waiting_timer: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._empty_timer: asyncio.Task[None] | None = None
        self._closed = False
        self._readers: dict[str, str] = {}  # identity → the language it reads (and speaks)
        self._language_problems: dict[str, str] = {}  # identity → the value last ignored
        self._dropped_targets: tuple[str, ...] = ()
        self.usage = TrackUsage()

    @property
    def active_tracks(self) -> int:
        return len(self._pipelines)

    def start(self) -> None:
        room = self._room
        room.on("track_published", self._on_track_published)
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("track_unsubscribed", self._on_track_unsubscribed)
        room.on("track_unpublished", self._on_track_unpublished)
        room.on("track_muted", self._on_track_muted)
        room.on("participant_connected", self._on_participant_connected)
        room.on("participant_disconnected", self._on_participant_disconnected)
        room.on("participant_attributes_changed", self._on_attributes_changed)
        room.on("reconnected", self._on_reconnected)
        for participant in room.remote_participants.values():
            self._update_language(participant)
        self._check_targets()
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
        self._pending.clear()  # asked for while the connection was down: ask again
        self._scan()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for event, handler in (
            ("track_published", self._on_track_published),
            ("track_subscribed", self._on_track_subscribed),
            ("track_unsubscribed", self._on_track_unsubscribed),
            ("track_unpublished", self._on_track_unpublished),
            ("track_muted", self._on_track_muted),
            ("participant_connected", self._on_participant_connected),
            ("participant_disconnected", self._on_participant_disconnected),
            ("participant_attributes_changed", self._on_attributes_changed),
            ("reconnected", self._on_reconnected),
        ):
            self._room.off(event, handler)  # type: ignore[arg-type]
        if self._empty_timer is not None:
            await utils.aio.cancel_and_wait(self._empty_timer)
        if self._waiting_timer is not None:
            await utils.aio.cancel_and_wait(self._waiting_timer)
        self._waiting.clear()
        metrics.WAITING_TRACKS.set(0)
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
            self._request(publication, participant)

    def _request(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        """Subscribes to a track if the caps allow, else leaves it unsubscribed (its audio
        is not even received) until `_admit_waiting` finds room for it."""
        sid = publication.sid
        if self._closed or sid in self._pipelines:
            return
        if sid in self._pending:
            publication.set_subscribed(True)  # idempotent; a request may have been lost
            return
        if (cap := self._cap_reached(participant.identity)) is not None:
            self._wait(publication, participant, cap)
            return
        if self._waiting.pop(sid, None) is not None:
            metrics.WAITING_TRACKS.set(len(self._waiting))
        self._pending[sid] = participant.identity
        publication.set_subscribed(True)

    def _wait(
        self,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
        cap: tuple[str, str],
    ) -> None:
        if publication.subscribed:
            publication.set_subscribed(False)
        if publication.sid in self._waiting:
            return
        scope, limit = cap
        extra = {
            "room": self._room.name,
            "participant": participant.identity,
            "track": publication.sid,
        }
        logger.warning(
            "%s limit reached (%s), not captioning this track for now", scope, limit, extra=extra
        )
        metrics.LIMIT_REACHED.labels(cap=scope).inc()
        self._waiting[publication.sid] = (publication, participant)
        metrics.WAITING_TRACKS.set(len(self._waiting))
        if self._waiting_timer is None or self._waiting_timer.done():
            self._waiting_timer = asyncio.create_task(self._admit_waiting_while_any())

    def _admit_waiting(self) -> None:
        for sid, (publication, participant) in list(self._waiting.items()):
            if publication.sid not in participant.track_publications or (
                participant.identity not in self._room.remote_participants
            ):
                del self._waiting[sid]  # unpublished, or its participant left
                metrics.WAITING_TRACKS.set(len(self._waiting))
            elif self._cap_reached(participant.identity) is None:
                self._request(publication, participant)

    async def _admit_waiting_while_any(self, interval: float = 2.0) -> None:
        """The worker-wide cap frees up in other rooms, which send no event here."""
        while self._waiting:
            await asyncio.sleep(interval)
            self._admit_waiting()

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self._pending.pop(track.sid, None)
        if self._closed or track.kind != rtc.TrackKind.KIND_AUDIO or track.sid in self._pipelines:
            return
        if not self._eligible(participant):
            return
        if participant.identity not in self._room.remote_participants:
            return  # left while the subscription was completing
        extra = {"room": self._room.name, "participant": participant.identity, "track": track.sid}
        if (cap := self._cap_reached(participant.identity)) is not None:
            self._wait(publication, participant, cap)  # another room took the worker's last
            return
        logger.info("captioning track", extra=extra)
        self._owners[track.sid] = participant.identity
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
            language=self._spoken_language(participant.identity),
        )
        metrics.ACTIVE_TRACKS.inc()

    def _cap_reached(self, identity: str) -> tuple[str, str] | None:
        """The cap a new track of this participant would exceed: (scope, limit)."""
        opts = self._opts
        owners = [*self._owners.values(), *self._pending.values()]
        if owners.count(identity) >= opts.max_tracks_per_participant:
            return "participant", f"{opts.max_tracks_per_participant} tracks"
        if len(owners) >= opts.max_tracks_per_room:
            return "room", f"TRANSCRIBER_MAX_TRACKS_PER_ROOM={opts.max_tracks_per_room}"
        if self._worker_tracks() + len(self._pending) >= opts.max_tracks_per_worker:
            return "worker", f"TRANSCRIBER_MAX_TRACKS={opts.max_tracks_per_worker}"
        return None

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
        self._pending.pop(publication.sid, None)
        if self._waiting.pop(publication.sid, None) is not None:
            metrics.WAITING_TRACKS.set(len(self._waiting))
        self._close_pipeline(publication.sid)

    def _on_track_muted(
        self, participant: rtc.Participant, publication: rtc.TrackPublication
    ) -> None:
        if (pipeline := self._pipelines.get(publication.sid)) is not None:
            pipeline.flush()

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self._update_language(participant)
        self._check_targets()
        if participant.kind != _AGENT:
            self.captions.participant_joined(participant.identity)  # history, for (re)joiners
        self._check_empty()

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        for sid, owner in list(self._owners.items()):
            if owner == participant.identity:
                self._close_pipeline(sid)
        self._readers.pop(participant.identity, None)
        self._language_problems.pop(participant.identity, None)
        self._check_targets()
        self._check_empty()

    # languages

    def translation_targets(self) -> Targets:
        """The languages this room's captions are translated into, most-read first."""
        return self._opts.languages.targets(self._readers.values())

    def _spoken_language(self, identity: str) -> str:
        return self._opts.languages.spoken_language(self._readers.get(identity))

    def _on_attributes_changed(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if LANGUAGE_ATTRIBUTE in changed and isinstance(participant, rtc.RemoteParticipant):
            self._update_language(participant)
            self._check_targets()

    def _update_language(self, participant: rtc.RemoteParticipant) -> None:
        """Reads the participant's `language`; a change reaches its tracks at their next
        segment boundary (the caller then checks the room's translation targets)."""
        identity = participant.identity
        if identity == self._room.local_participant.identity:
            return
        reading = read_attribute(participant.attributes, is_agent=participant.kind == _AGENT)
        extra = {"room": self._room.name, "participant": identity}
        if reading.problem is not None:
            value = participant.attributes.get(LANGUAGE_ATTRIBUTE, "")
            if self._language_problems.get(identity) != value:
                self._language_problems[identity] = value
                logger.warning(
                    "ignoring the language attribute of participant %s: %s",
                    identity,
                    reading.problem,
                    extra=extra,
                )
        else:
            self._language_problems.pop(identity, None)
        before = self._spoken_language(identity)
        if reading.code is None:
            self._readers.pop(identity, None)
        else:
            self._readers[identity] = reading.code
        spoken = self._spoken_language(identity)
        if spoken != before:
            logger.info("participant now transcribed in %s", spoken, extra=extra)
            for sid, owner in self._owners.items():
                if owner == identity:
                    self._pipelines[sid].set_language(spoken)

    def _check_targets(self) -> None:
        targets = self.translation_targets()
        if targets.dropped != self._dropped_targets:
            self._dropped_targets = targets.dropped
            if targets.dropped:
                logger.warning(
                    "participants read more languages than TRANSCRIBER_MAX_TRANSLATION_LANGUAGES"
                    "=%d: translating into %s (the most read), not into %s",
                    self._opts.languages.max_targets,
                    ",".join(targets.languages),
                    ",".join(targets.dropped),
                    extra={"room": self._room.name},
                )

    def _close_pipeline(self, sid: str) -> None:
        pipeline = self._pipelines.pop(sid, None)
        self._owners.pop(sid, None)
        if pipeline is None:
            return
        metrics.ACTIVE_TRACKS.dec()
        task = asyncio.create_task(self._finish(sid, pipeline), name=f"close-track-{sid}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        if not self._closed:
            self._admit_waiting()

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
