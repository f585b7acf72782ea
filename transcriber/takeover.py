"""Takeover: a room whose transcriber died gets a new one, without the backend.

LiveKit does not dispatch a job again when its process dies. Two watchers, both in the
worker's main process, notice a death and `rescue` the room (remove the ghost through the
server API, dispatch the agent again):

- its own job processes: a job process that exits with a failure (SIGKILL, out of memory)
  is known dead at once, so its room is rescued within a second or two;
- with `TRANSCRIBER_REDIS_URL`, the lease index: every `sweep_interval` one Redis query
  returns the rooms whose lease lapsed (a whole worker died, a process froze), each claimed
  by one worker. Its cost is one query per worker per interval, whatever the rooms.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from livekit import api
from livekit.agents import AgentServer

from . import metrics
from .room_claim import TAKEOVER_METADATA, is_transcriber
from .room_lease import LeaseIndex, lease_lapsed, now_ms

logger = logging.getLogger(__name__)

_API_ERRORS = (api.TwirpError, aiohttp.ClientError, asyncio.TimeoutError)


async def rescue(
    lkapi: api.LiveKitAPI, room: str, agent_name: str, *, dead: frozenset[str] = frozenset()
) -> bool:
    """Gives `room` a new transcriber unless a live one is there or nobody is left to
    caption; `dead` names identities known dead whatever their lease says. True when
    dispatched."""
    participants = await _participants(lkapi, room)
    transcribers = [p for p in participants if is_transcriber(p, agent_name)]
    lapsed = [p for p in transcribers if lease_lapsed(p)]
    known_dead = [p for p in transcribers if p.identity in dead and p not in lapsed]
    if len(lapsed) + len(known_dead) < len(transcribers):
        return False  # a live one holds the room
    await _remove(lkapi, room, known_dead)  # its lease still looks valid to the claim checks
    if not any(p.kind != api.ParticipantInfo.Kind.AGENT for p in participants):
        return False
    await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=TAKEOVER_METADATA)
    )
    logger.info("transcriber gone, dispatched a new one", extra={"room": room})
    await _remove(lkapi, room, lapsed)  # after: one on a dead node takes seconds to fail
    return True


async def remove_ghosts(lkapi: api.LiveKitAPI, room: str, agent_name: str, *, me: str) -> None:
    """Called by a transcriber that now holds the room: ghosts go now, not ~20 s later.
    `me` is never one, even if a slow join outlasted the lease its token carries."""
    try:
        participants = await _participants(lkapi, room)
        ghosts = [
            p
            for p in participants
            if is_transcriber(p, agent_name) and lease_lapsed(p) and p.identity != me
        ]
        await _remove(lkapi, room, ghosts)
    except _API_ERRORS as e:  # harmless: every check ignores them
        logger.warning("could not remove ghost transcribers (%s)", e, extra={"room": room})


async def _participants(lkapi: api.LiveKitAPI, room: str) -> list[api.ParticipantInfo]:
    try:
        listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    except api.TwirpError as e:
        if e.code == api.TwirpErrorCode.NOT_FOUND:
            return []  # the meeting ended
        raise
    return list(listing.participants)


async def _remove(lkapi: api.LiveKitAPI, room: str, ghosts: list[api.ParticipantInfo]) -> None:
    """Best effort: a ghost whose node died cannot be reached to be removed, and needs
    not be, as every claim check ignores a lapsed lease."""
    for ghost in ghosts:
        extra = {"room": room, "participant": ghost.identity}
        try:
            await lkapi.room.remove_participant(
                api.RoomParticipantIdentity(room=room, identity=ghost.identity)
            )
        except api.TwirpError as e:
            if e.code != api.TwirpErrorCode.NOT_FOUND:
                logger.warning("could not remove a dead transcriber (%s)", e.message, extra=extra)
            continue
        logger.info("removed a dead transcriber", extra=extra)


class Takeover:
    """The worker's main-process watchers (see the module docstring)."""

    def __init__(
        self,
        server: AgentServer,
        *,
        agent_name: str,
        api_args: dict[str, Any],
        redis_url: str = "",
        sweep_interval: float = 1.0,
    ) -> None:
        self._server = server
        self._agent_name = agent_name
        self._api_args = api_args
        self._redis_url = redis_url
        self._sweep_interval = sweep_interval
        self._tasks: set[asyncio.Task[Any]] = set()
        server.on("worker_started", self._start)

    def _start(self) -> None:
        # livekit-agents has no public hook for a job process's exit
        self._server._proc_pool.on("process_closed", self._on_process_closed)
        if self._redis_url:
            self._spawn(self._sweep_forever(), "lease-sweep")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_process_closed(self, proc: Any) -> None:
        if proc.pid is not None:
            metrics.forget_process(proc.pid)
        job = proc.running_job
        if job is None or proc.exitcode == 0:
            return
        room, identity = job.job.room.name, job.accept_arguments.identity
        logger.warning(
            "job process died (exit code %s)",
            proc.exitcode,
            extra={"room": room, "job_id": job.job.id},
        )
        self._spawn(self._rescue(room, frozenset({identity})), f"rescue-{room}")

    async def _rescue(
        self, room: str, dead: frozenset[str] = frozenset(), index: LeaseIndex | None = None
    ) -> None:
        """Bounded retries: a dispatch LiveKit could not place (every worker reported a
        load at its target) is made again once a transcriber failed to show up. A room
        from the lease index that still fails (its node died and the cluster has not moved
        it yet) goes back into the index, for any worker to try again shortly."""
        await self._report_load()
        for attempt in range(4):
            try:
                async with api.LiveKitAPI(**self._api_args) as lkapi:
                    if not await rescue(lkapi, room, self._agent_name, dead=dead):
                        return
                    if await self._joined(lkapi, room, timeout=4.0):
                        return
            except _API_ERRORS as e:
                logger.warning("could not rescue the room (%s), retrying", e, extra={"room": room})
                await asyncio.sleep(1.0 + attempt)
        if index is not None:
            try:
                await index.renew(room, now_ms() + 2000)
                return
            except index.errors as e:
                logger.warning("could not put the room back in the lease index (%s)", e)
        logger.error("no transcriber took over the room", extra={"room": room})

    async def _joined(self, lkapi: api.LiveKitAPI, room: str, *, timeout: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.5)
            participants = await _participants(lkapi, room)
            if any(
                is_transcriber(p, self._agent_name) and not lease_lapsed(p) for p in participants
            ):
                return True
        return False

    async def _report_load(self) -> None:
        """LiveKit places a job by the load workers last reported; this one's still counts
        the dead job for up to 2.5 s, which could turn the rescue dispatch away."""
        server = self._server
        server._worker_load = await server._invoke_load_fnc()
        await server._update_worker_status()

    async def _sweep_forever(self) -> None:
        index = LeaseIndex(self._redis_url, self._agent_name)
        try:
            while True:
                await asyncio.sleep(self._sweep_interval)
                try:
                    rooms = await index.claim_lapsed(now_ms())
                except index.errors as e:
                    logger.warning("could not read the lease index (%s)", e)
                    continue
                for room in rooms:
                    self._spawn(self._rescue(room, index=index), f"rescue-{room}")
        finally:
            await index.aclose()
