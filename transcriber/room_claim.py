"""One transcriber per room, decided by the agents themselves.

A backend may dispatch the transcriber to a room any number of times, from anywhere.
Three rules keep exactly one in the room and never interrupt the one already captioning:

1. Every transcriber joins under its own identity (`agent-<job id>`) and carries the
   attribute `transcriber.agent` = its agent name. A late join therefore never replaces
   anyone: LiveKit would disconnect a participant whose identity is taken over, and a
   join can take seconds (WebRTC connection retries), long after any check.
2. A job is refused when a transcriber is already in the room (checked through the
   server API at job request and again just before joining), or when this worker is
   running, or has just accepted, a job for the same room.
3. Jobs that pass those checks anyway all join; the one that joined first (server
   timestamps) keeps the room and the others leave before captioning anything. Each
   asks the server at once on joining and again `join_settle_time` later, so joins
   that happened at the same moment are all listed.

Every check counts only live transcribers: one whose lease lapsed is the ghost of a dead
process (see `room_lease`), and a takeover dispatch may replace it on any worker. One whose
lease lapsed and that comes back (frozen, cut off) keeps the room only while no other live
transcriber is there.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from livekit import api, rtc
from livekit.agents import JobRequest

from .room_lease import LEASE_ATTRIBUTE, first_lease, lease_lapsed

logger = logging.getLogger(__name__)

AGENT_ATTRIBUTE = "transcriber.agent"
"""Participant attribute naming the transcriber's agent; `kind` AGENT makes it trustworthy
(only tokens with the agent grant can join as agents)."""

TAKEOVER_METADATA = "transcriber.takeover"
"""Dispatch metadata of a takeover (`takeover.rescue`): the worker that ran the dead job
may take the room again, so only the server's list decides."""


def is_transcriber(participant: api.ParticipantInfo, agent_name: str) -> bool:
    return (
        participant.kind == api.ParticipantInfo.Kind.AGENT
        and participant.attributes.get(AGENT_ATTRIBUTE) == agent_name
    )


async def live_transcribers(
    lkapi: api.LiveKitAPI, room: str, agent_name: str
) -> list[api.ParticipantInfo]:
    """The live transcribers, through the server API (they join hidden, so rooms do not
    show them)."""
    try:
        response = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    except api.TwirpError as e:
        if e.code == api.TwirpErrorCode.NOT_FOUND:
            return []
        raise
    return [
        p for p in response.participants if is_transcriber(p, agent_name) and not lease_lapsed(p)
    ]


async def transcriber_in_room(lkapi: api.LiveKitAPI, room: str, agent_name: str) -> bool:
    return bool(await live_transcribers(lkapi, room, agent_name))


def joined_first(transcribers: list[api.ParticipantInfo], identity: str) -> bool:
    """Whether `identity` joined before every other transcriber listed (ties: identity)."""
    order = {p.identity: (p.joined_at_ms or p.joined_at * 1000, p.identity) for p in transcribers}
    me = order.get(identity, (math.inf, identity))  # not listed yet: every listed one is earlier
    return all(me <= other for other in order.values())


async def alone(lkapi: api.LiveKitAPI, room: rtc.Room, agent_name: str) -> bool:
    """Whether no live transcriber but this one is in the room."""
    me = room.local_participant.identity
    return all(p.identity == me for p in await live_transcribers(lkapi, room.name, agent_name))


async def keep_room(
    lkapi: api.LiveKitAPI, room: rtc.Room, agent_name: str, *, settle_time: float
) -> bool:
    """Called right after joining: True when this transcriber is the room's one."""
    for wait in (0.0, settle_time):
        await asyncio.sleep(wait)
        if room.connection_state != rtc.ConnectionState.CONN_CONNECTED:
            return False
        identity = room.local_participant.identity
        try:
            transcribers = await live_transcribers(lkapi, room.name, agent_name)
        except Exception as e:
            # the check can fail, captioning must not: keep the room (rule 2 still holds)
            logger.warning("could not check the room for other transcribers (%s)", e)
            continue
        if not joined_first(transcribers, identity):
            return False
    return True


class RoomClaims:
    """The worker's job-request handler (runs in the worker's main process)."""

    def __init__(
        self,
        *,
        agent_name: str,
        livekit_url: str,
        api_key: str,
        api_secret: str,
        running_rooms: Callable[[], set[str]],
        lease_ttl: float,
        launch_window: float = 5.0,
    ) -> None:
        self._agent_name = agent_name
        self._running_rooms = running_rooms
        self._api_args: dict[str, Any] = {
            "url": livekit_url,
            "api_key": api_key,
            "api_secret": api_secret,
        }
        self._launch_window = launch_window
        self._lease_ttl = lease_ttl
        self._accepted_at: dict[str, float] = {}
        """Rooms accepted but maybe not launched yet (a launched job is in running_rooms)."""

    async def on_request(self, request: JobRequest) -> None:
        room = request.room.name
        now = time.monotonic()
        self._accepted_at = {
            r: t for r, t in self._accepted_at.items() if now - t < self._launch_window
        }
        takeover = request.job.metadata == TAKEOVER_METADATA
        if not takeover and (room in self._accepted_at or room in self._running_rooms()):
            logger.info("already in or joining this room, refusing", extra={"room": room})
            await request.reject()
            return
        self._accepted_at[room] = now

        try:
            async with api.LiveKitAPI(**self._api_args) as lkapi:
                present = await transcriber_in_room(lkapi, room, self._agent_name)
        except Exception as e:
            # LiveKit just dispatched this job, so it is reachable; a failed check must
            # not leave a meeting without captions (rule 3 still holds)
            logger.warning("could not check the room for a transcriber (%s), joining", e)
            present = False

        if present:
            logger.info("a transcriber is already in the room, refusing", extra={"room": room})
            await request.reject()
            return
        await request.accept(
            name="Transcriber",
            identity=f"agent-{request.job.id}",
            attributes={
                AGENT_ATTRIBUTE: self._agent_name,
                LEASE_ATTRIBUTE: first_lease(self._lease_ttl),
            },
        )
