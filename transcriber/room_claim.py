"""One transcriber per room, decided by the agent itself.

A backend may dispatch the transcriber to a room any number of times, from anywhere.
Three rules keep exactly one in the room and never interrupt the one already captioning:

1. Every transcriber joins a room under the same identity (`agent-<agent name>`), so
   LiveKit itself never holds two at once.
2. A job is refused when that identity is already in the room (checked through the
   server API at job request, and again just before joining), or when this worker is
   running, or has just accepted, a job for the same room.
3. Two jobs that pass those checks at the same instant on different workers both join;
   LiveKit keeps the later one. The transcriber waits `join_settle_time` after joining
   before it captions anything, so the one replaced in that race had not started.
   A transcriber that has been captioning for longer than that is visible to every
   later check and is never replaced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from livekit import api, rtc
from livekit.agents import JobRequest

logger = logging.getLogger("transcriber.claim")

_AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


async def transcriber_in_room(lkapi: api.LiveKitAPI, room: str, identity: str) -> bool:
    try:
        response = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    except api.TwirpError as e:
        if e.code == api.TwirpErrorCode.NOT_FOUND:
            return False
        raise
    return any(p.identity == identity and p.kind == _AGENT for p in response.participants)


class RoomClaims:
    """The worker's job-request handler (runs in the worker's main process)."""

    def __init__(
        self,
        *,
        identity: str,
        livekit_url: str,
        api_key: str,
        api_secret: str,
        running_rooms: Callable[[], set[str]],
        launch_window: float = 5.0,
    ) -> None:
        self._identity = identity
        self._running_rooms = running_rooms
        self._api_args = {"url": livekit_url, "api_key": api_key, "api_secret": api_secret}
        self._launch_window = launch_window
        self._accepted_at: dict[str, float] = {}
        """Rooms accepted but maybe not launched yet (a launched job is in running_rooms)."""

    async def on_request(self, request: JobRequest) -> None:
        room = request.room.name
        now = time.monotonic()
        self._accepted_at = {
            r: t for r, t in self._accepted_at.items() if now - t < self._launch_window
        }
        if room in self._accepted_at or room in self._running_rooms():
            logger.info("already in or joining this room, refusing", extra={"room": room})
            await request.reject()
            return
        self._accepted_at[room] = now

        try:
            async with api.LiveKitAPI(**self._api_args) as lkapi:
                present = await transcriber_in_room(lkapi, room, self._identity)
        except Exception as e:
            # LiveKit just dispatched this job, so it is reachable; a failed check must
            # not leave a meeting without captions
            logger.warning("could not check the room for a transcriber (%s), joining", e)
            present = False

        if present:
            logger.info("a transcriber is already in the room, refusing", extra={"room": room})
            await request.reject()
            return
        await request.accept(name="Transcriber", identity=self._identity)
