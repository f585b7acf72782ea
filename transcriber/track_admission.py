"""Which audio tracks of a room are captioned: the caps per participant, per room and per
worker.

A track a cap refuses is left unsubscribed (its audio is not even received) and admitted
once the cap allows: when a track of this room closes, and every few seconds while any
waits, since the worker-wide cap frees up in other rooms, which send no event here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import utils

from . import metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrackCaps:
    per_room: int
    per_worker: int
    per_participant: int = 4
    """Bounds what one participant can make us spend (mic + screen share need two)."""


class TrackAdmission:
    """The room's captioned tracks (`owners`), the ones asked for and not subscribed yet
    (they count against the caps), and the ones a cap keeps waiting."""

    def __init__(
        self, room: rtc.Room, caps: TrackCaps, *, worker_tracks: Callable[[], int]
    ) -> None:
        """`worker_tracks` counts the tracks captioned by every room of this worker."""
        self._room = room
        self._caps = caps
        self._worker_tracks = worker_tracks
        self.owners: dict[str, str] = {}
        """Captioned track sid → its participant's identity."""
        self._pending: dict[str, str] = {}
        self._waiting: dict[str, tuple[rtc.RemoteTrackPublication, rtc.RemoteParticipant]] = {}
        self._timer: asyncio.Task[None] | None = None
        self._closed = False

    def request(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        """Subscribes to the track if the caps allow, else leaves it waiting."""
        sid = publication.sid
        if self._closed or sid in self.owners:
            return
        if sid in self._pending:
            publication.set_subscribed(True)  # idempotent; a request may have been lost
            return
        if (cap := self._cap_reached(participant.identity)) is not None:
            self._wait(publication, participant, cap)
            return
        self._unwait(sid)
        self._pending[sid] = participant.identity
        publication.set_subscribed(True)

    def admit(
        self, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> bool:
        """On subscription: whether the track is captioned now (it is then owned), or
        waits because another room took the worker's last track meanwhile."""
        self._pending.pop(publication.sid, None)
        if (cap := self._cap_reached(participant.identity)) is not None:
            self._wait(publication, participant, cap)
            return False
        self.owners[publication.sid] = participant.identity
        return True

    def drop_request(self, sid: str) -> None:
        """A subscription that will not be captioned (closed, not eligible, gone)."""
        self._pending.pop(sid, None)

    def release(self, sid: str) -> None:
        """The track's pipeline closed: its place goes to a waiting track."""
        self.owners.pop(sid, None)
        if not self._closed:
            self._admit_waiting()

    def forget(self, sid: str) -> None:
        """The track was unpublished."""
        self._pending.pop(sid, None)
        self._unwait(sid)

    def ask_again(self) -> None:
        """After a reconnection: requests made while the connection was down were lost."""
        self._pending.clear()

    def tracks_of(self, identity: str) -> list[str]:
        return [sid for sid, owner in self.owners.items() if owner == identity]

    async def aclose(self) -> None:
        self._closed = True
        if self._timer is not None:
            await utils.aio.cancel_and_wait(self._timer)
        self._waiting.clear()
        metrics.WAITING_TRACKS.set(0)

    def _cap_reached(self, identity: str) -> tuple[str, str] | None:
        """The cap a new track of this participant would exceed: (scope, limit)."""
        caps = self._caps
        owners = [*self.owners.values(), *self._pending.values()]
        if owners.count(identity) >= caps.per_participant:
            return "participant", f"{caps.per_participant} tracks"
        if len(owners) >= caps.per_room:
            return "room", f"TRANSCRIBER_MAX_TRACKS_PER_ROOM={caps.per_room}"
        if self._worker_tracks() + len(self._pending) >= caps.per_worker:
            return "worker", f"TRANSCRIBER_MAX_TRACKS={caps.per_worker}"
        return None

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
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._admit_waiting_while_any())

    def _unwait(self, sid: str) -> None:
        if self._waiting.pop(sid, None) is not None:
            metrics.WAITING_TRACKS.set(len(self._waiting))

    def _admit_waiting(self) -> None:
        for sid, (publication, participant) in list(self._waiting.items()):
            if publication.sid not in participant.track_publications or (
                participant.identity not in self._room.remote_participants
            ):
                self._unwait(sid)  # unpublished, or its participant left
            elif self._cap_reached(participant.identity) is None:
                self.request(publication, participant)

    async def _admit_waiting_while_any(self, interval: float = 2.0) -> None:
        while self._waiting:
            await asyncio.sleep(interval)
            self._admit_waiting()
