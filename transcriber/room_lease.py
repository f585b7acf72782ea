"""The room lease: tells a live transcriber from the ghost of a dead one.

LiveKit keeps listing a participant whose process was killed (SIGKILL, out of memory) for
about 20 s, and a listed transcriber blocks every new one. So the transcriber captioning a
room renews a lease, the participant attribute `transcriber.lease_until` (Unix time in
ms), through the server API every `ttl / 4`. A transcriber whose lease has lapsed is a
ghost: the claim checks ignore it, and a takeover removes it (see `takeover`).

The lease also gates publishing (`RoomLease.still_held`, checked by the room's caption
stream and the translation output): a process frozen past its lease (SIGSTOP,
a stalled VM) publishes nothing once it runs again until a renewal succeeds with no other
live transcriber in the room; if another took the room meanwhile, it leaves instead.

With `TRANSCRIBER_REDIS_URL` (the Redis the LiveKit cluster runs), each renewal also sets
the room's expiry in one sorted set, so any worker finds every lapsed lease with one query
whatever the number of rooms (`LeaseIndex`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
from livekit import api, rtc

logger = logging.getLogger(__name__)

LEASE_ATTRIBUTE = "transcriber.lease_until"
JOIN_ALLOWANCE = 15.0
"""Seconds the lease given at job accept adds for joining, before the job renews it."""


def now_ms() -> int:
    return int(time.time() * 1000)


def lease_lapsed(participant: api.ParticipantInfo, at_ms: int | None = None) -> bool:
    """A transcriber without a readable lease is taken as live: never remove what we
    cannot judge (only agents, whose attributes the server API sets, carry one)."""
    value = participant.attributes.get(LEASE_ATTRIBUTE, "")
    if not value.isdigit() or len(value) > 16:
        return False
    return int(value) < (now_ms() if at_ms is None else at_ms)


def first_lease(ttl: float) -> str:
    """The lease given in the job's token at accept: it covers the join."""
    return str(now_ms() + int((ttl + JOIN_ALLOWANCE) * 1000))


class LeaseIndex:
    """Rooms by lease expiry in Redis: lapsed leases found with one query, and each one
    claimed by exactly one worker (ZREM answers 1 to one caller)."""

    def __init__(self, url: str, agent_name: str) -> None:
        import redis.asyncio as redis  # only with TRANSCRIBER_REDIS_URL
        from redis.exceptions import RedisError

        self.errors: tuple[type[Exception], ...] = (RedisError, OSError)
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._key = f"transcriber:{agent_name}:leases"

    async def renew(self, room: str, until_ms: int) -> None:
        await self._redis.zadd(self._key, {room: until_ms})

    async def release(self, room: str) -> None:
        await self._redis.zrem(self._key, room)

    async def claim_lapsed(self, at_ms: int, *, limit: int = 20) -> list[tuple[str, int]]:
        """The rooms whose lease lapsed by `at_ms`, with when it lapsed, now this worker's."""
        rooms = await self._redis.zrangebyscore(
            self._key, "-inf", at_ms, start=0, num=limit, withscores=True
        )
        claimed = []
        for room, lapsed_at in cast(list[tuple[bytes, float]], rooms):
            name = room.decode() if isinstance(room, bytes) else str(room)
            if await self._redis.zrem(self._key, name):
                claimed.append((name, int(lapsed_at)))
        return claimed

    async def aclose(self) -> None:
        await self._redis.aclose()


_MEETING_OVER = frozenset(
    {
        rtc.DisconnectReason.ROOM_DELETED,
        rtc.DisconnectReason.ROOM_CLOSED,
        rtc.DisconnectReason.PARTICIPANT_REMOVED,
    }
)
"""Disconnections after which the room needs no transcriber from us (the backend ended the
meeting or removed us); any other (a dead node, a lost connection) leaves the index entry
to lapse, so another worker checks the room."""


class RoomLease:
    """Held by the job captioning a room: renews the lease until `aclose()`, and calls
    `on_lost` once the server says this transcriber is no longer in the room.

    `aclose()` takes the room out of the lease index only when the meeting is over for this
    transcriber (`meeting_over()`, or a disconnection in `_MEETING_OVER`). A job that ends
    because it was cut off or its worker stops leaves the entry to lapse: the sweep then
    gives the room a new transcriber if anyone is still, or soon again, there."""

    def __init__(
        self,
        lkapi: api.LiveKitAPI,
        room: rtc.Room,
        *,
        ttl: float,
        index: LeaseIndex | None,
        alone: Callable[[], Awaitable[bool]],
        on_lost: Callable[[], None],
    ) -> None:
        """`alone` asks the server whether no other live transcriber is in the room."""
        self._lkapi = lkapi
        self._alone_check = alone
        self._room = room
        self._ttl = ttl
        self._index = index
        self._on_lost = on_lost
        self._valid_until = time.monotonic() + ttl
        self._task: asyncio.Task[None] | None = None
        self._meeting_over = False
        room.on("disconnected", self._on_disconnected)

    def meeting_over(self) -> None:
        """The room needs no transcriber any more (it emptied)."""
        self._meeting_over = True

    def _on_disconnected(self, reason: rtc.DisconnectReason.ValueType) -> None:
        if reason in _MEETING_OVER:
            self._meeting_over = True

    def still_held(self) -> bool:
        """Monotonic time runs on while a process is stopped, so this turns False the
        moment a frozen process resumes past its lease."""
        return time.monotonic() < self._valid_until

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew_forever(), name="room-lease")

    async def aclose(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self._index is not None:
                if self._meeting_over and self.still_held():  # else it is not ours to end
                    try:
                        await self._index.release(self._room.name)
                    except self._index.errors as e:  # the sweep then finds a room to check
                        logger.warning("could not release the room's lease index entry (%s)", e)
                await self._index.aclose()

    async def _renew_forever(self) -> None:
        interval = self._ttl / 4
        missing = 0
        while True:
            started = time.monotonic()
            lapsed = not self.still_held()
            outcome = await self._renew(interval)
            if outcome == "missing" and self._connected():
                missing += 1
            elif outcome == "renewed":
                missing = 0
                if lapsed and not await self._alone():
                    missing = 2
                else:
                    self._valid_until = started + self._ttl
            if missing >= 2:  # twice: a restarted server may list the room before us
                logger.warning("lost the room to another transcriber, leaving")
                self._valid_until = 0.0
                self._on_lost()
                return
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    def _connected(self) -> bool:
        return self._room.connection_state == rtc.ConnectionState.CONN_CONNECTED

    async def _alone(self) -> bool:
        """After a lapse (frozen, or cut off) this transcriber gave up its claim: any other
        live one took over meanwhile and keeps the room, even if removing this one failed.
        (Should both step aside, the room's index entry lapses and the sweep dispatches.)"""
        try:
            return await self._alone_check()
        except (api.TwirpError, asyncio.TimeoutError, aiohttp.ClientError):
            return False  # not sure: stay silent and ask again at the next renewal

    async def _renew(self, timeout: float) -> str:
        until = now_ms() + int(self._ttl * 1000)
        request = api.UpdateParticipantRequest(
            room=self._room.name,
            identity=self._room.local_participant.identity,
            attributes={LEASE_ATTRIBUTE: str(until)},
        )
        try:
            await asyncio.wait_for(self._lkapi.room.update_participant(request), timeout)
        except api.TwirpError as e:
            if e.code == api.TwirpErrorCode.NOT_FOUND:
                return "missing"
            logger.warning("could not renew the room lease (%s)", e.message)
            return "failed"
        except (asyncio.TimeoutError, aiohttp.ClientError) as e:
            logger.warning("could not renew the room lease (%s)", type(e).__name__)
            return "failed"
        if self._index is not None:
            try:
                await self._index.renew(self._room.name, until)
            except self._index.errors as e:  # captions go on, a takeover may come later
                logger.warning("could not renew the room's lease index entry (%s)", e)
        return "renewed"
