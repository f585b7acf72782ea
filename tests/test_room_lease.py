"""A transcriber whose lease lapsed (frozen, cut off) and that comes back: it keeps the room
only while no other live transcriber is there, whoever joined first."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from livekit import api, rtc

from .test_room_claim import member
from transcriber.room_claim import alone
from transcriber.room_lease import LEASE_ATTRIBUTE, RoomLease, now_ms


@dataclass
class _Participant:
    identity: str


@dataclass
class _Room:
    """What the lease reads of an `rtc.Room`."""

    name: str = "room"
    local_participant: _Participant = field(default_factory=lambda: _Participant("agent-AJ_a"))
    connection_state: int = rtc.ConnectionState.CONN_CONNECTED

    def on(self, event: str, callback: object) -> None:
        pass


class _RoomService:
    """The server API's participant list and attribute updates."""

    def __init__(self, listed: list[api.ParticipantInfo]) -> None:
        self.listed = listed

    async def list_participants(
        self, request: api.ListParticipantsRequest
    ) -> api.ListParticipantsResponse:
        return api.ListParticipantsResponse(participants=self.listed)

    async def update_participant(self, request: api.UpdateParticipantRequest) -> None:
        for p in self.listed:
            if p.identity == request.identity:
                p.attributes.update(request.attributes)


@dataclass
class _API:
    room: _RoomService


def transcriber(identity: str, joined_ms: int, lease_ms: int) -> api.ParticipantInfo:
    p = member(identity, joined_ms)
    p.attributes[LEASE_ATTRIBUTE] = str(lease_ms)
    return p


async def returns_from_a_lapse(listed: list[api.ParticipantInfo]) -> tuple[bool, bool]:
    """Runs a lease that lapsed while frozen for half a second: whether it was lost, and
    whether it may publish at the end."""
    lkapi, room = _API(_RoomService(listed)), _Room()
    lost = asyncio.Event()
    lease = RoomLease(
        lkapi,  # type: ignore[arg-type]
        room,  # type: ignore[arg-type]
        ttl=0.4,
        index=None,
        alone=lambda: alone(lkapi, room, "transcriber"),  # type: ignore[arg-type]
        on_lost=lost.set,
    )
    lease._valid_until = time.monotonic() - 1.0  # frozen past its lease
    lease.start()
    try:
        await asyncio.wait_for(lost.wait(), 0.5)
    except asyncio.TimeoutError:
        pass
    held = lease.still_held()
    await lease.aclose()
    return lost.is_set(), held


async def test_a_transcriber_back_from_a_lapse_yields_to_one_that_took_over() -> None:
    """It joined first, and removing it failed (it is still listed): the one that took
    over keeps the room all the same, and the one back never publishes again."""
    listed = [
        transcriber("agent-AJ_a", 1_000, lease_ms=now_ms() - 2_000),  # this one, lapsed
        transcriber("agent-AJ_b", 9_000, lease_ms=now_ms() + 4_000),  # took over meanwhile
    ]
    assert await returns_from_a_lapse(listed) == (True, False)


async def test_a_transcriber_back_from_a_lapse_keeps_a_room_nobody_took_over() -> None:
    listed = [transcriber("agent-AJ_a", 1_000, lease_ms=now_ms() - 2_000)]
    assert await returns_from_a_lapse(listed) == (False, True)
