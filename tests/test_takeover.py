"""The lease index sweep on a real redis-server: which rooms a worker claims, and which go
back in the index for another look while their participants may still come back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from .livekit_server import RedisServer
from transcriber.room_lease import LeaseIndex, now_ms
from transcriber.takeover import REJOIN_GRACE_MS, Takeover


class _Server:
    """Takeover only registers for `worker_started` on the server it watches."""

    def on(self, event: str, callback: Any) -> None:
        pass


@pytest.fixture
async def index(redis_server: RedisServer):  # type: ignore[no-untyped-def]
    index = LeaseIndex(redis_server.url, f"agent-{uuid.uuid4().hex[:8]}")
    yield index
    await index.aclose()


LEASE_TTL = 4.0


def takeover_whose_attempts_give(outcome: str) -> Takeover:
    takeover = Takeover(
        _Server(), agent_name="a", api_args={}, lease_ttl=LEASE_TTL  # type: ignore[arg-type]
    )

    async def attempt(room: str, dead: frozenset[str]) -> str:
        return outcome

    takeover._attempt = attempt  # type: ignore[method-assign]
    return takeover


async def test_each_lapsed_room_is_claimed_once_with_when_it_lapsed(index: LeaseIndex) -> None:
    now = now_ms()
    await index.renew("lapsed", now - 500)
    await index.renew("live", now + 4000)
    assert await index.claim_lapsed(now) == [("lapsed", now - 500)]
    assert await index.claim_lapsed(now) == []


@pytest.mark.parametrize("outcome", ["nobody", "not joined", "failed"])
async def test_a_room_that_still_needs_a_transcriber_is_looked_at_again(
    index: LeaseIndex, outcome: str
) -> None:
    lapsed_at = now_ms() - 2000
    await index.renew("room", lapsed_at)
    ((room, at),) = await index.claim_lapsed(now_ms())
    await takeover_whose_attempts_give(outcome)._rescue_lapsed(index, room, at)
    assert await index.claim_lapsed(now_ms()) == [("room", lapsed_at)]


@pytest.mark.parametrize("outcome", ["held", "joined"])
async def test_a_room_with_a_transcriber_is_looked_at_again_when_its_lease_would_lapse(
    index: LeaseIndex, outcome: str
) -> None:
    """Its transcriber may have died right after renewing the lease it is held by: a live
    one renews the entry itself before it is due."""
    await index.renew("room", now_ms() - 2000)
    ((room, at),) = await index.claim_lapsed(now_ms())
    await takeover_whose_attempts_give(outcome)._rescue_lapsed(index, room, at)
    assert await index.claim_lapsed(now_ms()) == []
    ((again, due),) = await index.claim_lapsed(now_ms() + int(LEASE_TTL * 1000) + 500)
    assert again == "room" and due > now_ms()


async def test_a_room_nobody_came_back_to_is_dropped_after_the_grace(index: LeaseIndex) -> None:
    await index.renew("room", now_ms() - REJOIN_GRACE_MS - 1000)
    ((room, at),) = await index.claim_lapsed(now_ms())
    await takeover_whose_attempts_give("nobody")._rescue_lapsed(index, room, at)
    assert await index.claim_lapsed(now_ms()) == []
