"""Takeover: a room whose transcriber died gets a new one, without the backend.

LiveKit does not dispatch a job again when its process dies. Two watchers, both in the
worker's main process, notice a death and `rescue` the room (remove the ghost through the
server API, dispatch the agent again):

- its own job processes: a job process that exits with a failure (SIGKILL, out of memory)
  is known dead at once, so its room is rescued within a second or two;
- with `TRANSCRIBER_REDIS_URL`, the lease index: every `sweep_interval` one Redis query
  returns the rooms whose lease lapsed (a whole worker died, a process froze, a LiveKit
  node died under the room), each claimed by one worker. Its cost is one query per worker
  per interval, whatever the rooms. A claimed room that cannot be given a transcriber yet
  (its participants are still coming back from a dead node, or this worker cannot reach
  LiveKit) goes back in the index, for any worker's next sweep, until `REJOIN_GRACE_MS`
  after its lapse: one server call per second for each such room, and only for that long.
  A claimed room that has a transcriber goes back in the index too, due when that one's
  lease would lapse: a live one renews the entry itself, and one that died just after
  renewing its lease (or whose host's clock runs ahead) is looked at again then.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import aiohttp
from livekit import api
from livekit.agents import AgentServer

from . import metrics
from .room_claim import TAKEOVER_METADATA, is_transcriber
from .room_lease import LeaseIndex, lease_lapsed, now_ms

logger = logging.getLogger(__name__)

_API_ERRORS = (api.TwirpError, aiohttp.ClientError, asyncio.TimeoutError)

REJOIN_GRACE_MS = 60_000
"""How long after its lease lapsed a room is still watched for participants to caption:
clients whose node died take several seconds to reconnect, and livekit-client gives up
after about 50 s."""

Outcome = Literal["held", "nobody", "dispatched"]
Attempt = Literal["held", "nobody", "joined", "not joined", "failed"]
"""A rescue attempt's outcome, with whether the dispatched transcriber showed up."""


async def rescue(
    lkapi: api.LiveKitAPI, room: str, agent_name: str, *, dead: frozenset[str] = frozenset()
) -> Outcome:
    """Gives `room` a new transcriber unless a live one is there ("held") or nobody is
    there to caption ("nobody"); `dead` names identities known dead whatever their lease
    says."""
    participants = await _participants(lkapi, room)
    transcribers = [p for p in participants if is_transcriber(p, agent_name)]
    lapsed = [p for p in transcribers if lease_lapsed(p)]
    known_dead = [p for p in transcribers if p.identity in dead and p not in lapsed]
    if len(lapsed) + len(known_dead) < len(transcribers):
        return "held"
    await _remove(lkapi, room, known_dead)  # its lease still looks valid to the claim checks
    if not any(p.kind != api.ParticipantInfo.Kind.AGENT for p in participants):
        return "nobody"
    await lkapi.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=TAKEOVER_METADATA)
    )
    logger.info("transcriber gone, dispatched a new one", extra={"room": room})
    await _remove(lkapi, room, lapsed)  # after: one on a dead node takes seconds to fail
    return "dispatched"


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
        lease_ttl: float,
        redis_url: str = "",
        sweep_interval: float = 1.0,
    ) -> None:
        self._server = server
        self._agent_name = agent_name
        self._api_args = api_args
        self._lease_ms = int(lease_ttl * 1000)
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
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        """A watcher that fails is a bug, never silent: a room may be left uncaptioned."""
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("takeover task %s failed", task.get_name(), exc_info=error)

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

    async def _rescue(self, room: str, dead: frozenset[str]) -> None:
        """A job process of ours died: bounded retries, as a dispatch LiveKit could not
        place (every worker reported a load at its target) is made again once a
        transcriber failed to show up."""
        await self._report_load()
        for attempt in range(4):
            try:
                if await self._attempt(room, dead) != "not joined":
                    return
            except _API_ERRORS as e:
                logger.warning("could not rescue the room (%s), retrying", e, extra={"room": room})
                await asyncio.sleep(1.0 + attempt)
        logger.error("no transcriber took over the room", extra={"room": room})

    async def _rescue_lapsed(self, index: LeaseIndex, room: str, lapsed_at: int) -> None:
        """A room from the lease index: one attempt. One that still needs a transcriber
        goes back in the index (with its lapse time) until `REJOIN_GRACE_MS` after it; one
        that has a transcriber, due when that one's lease would lapse."""
        try:
            outcome: Attempt = await self._attempt(room, frozenset())
        except _API_ERRORS as e:  # this worker cannot reach LiveKit: another may
            logger.warning("could not rescue the room (%s)", e, extra={"room": room})
            outcome = "failed"
        if outcome in ("held", "joined"):
            due = now_ms() + self._lease_ms
        elif now_ms() - lapsed_at > REJOIN_GRACE_MS:
            if outcome != "nobody":
                logger.error("no transcriber took over the room", extra={"room": room})
            return
        else:
            due = lapsed_at
        try:
            await index.renew(room, due)
        except index.errors as e:
            logger.warning("could not put the room back in the lease index (%s)", e)

    async def _attempt(self, room: str, dead: frozenset[str]) -> Attempt:
        """`rescue` once; a dispatch is "joined" once its transcriber shows up."""
        async with api.LiveKitAPI(**self._api_args) as lkapi:
            outcome = await rescue(lkapi, room, self._agent_name, dead=dead)
            if outcome != "dispatched":
                return outcome
            joined = await self._joined(lkapi, room, timeout=4.0)
            return "joined" if joined else "not joined"

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
        the dead job for up to 2.5 s, which could turn the rescue dispatch away. Best
        effort: the rescue goes on without it."""
        server = self._server
        try:
            server._worker_load = await server._invoke_load_fnc()
            await server._update_worker_status()
        except Exception:
            logger.exception("could not report the load before a rescue")

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
                if rooms:
                    await self._report_load()
                for room, lapsed_at in rooms:
                    self._spawn(self._rescue_lapsed(index, room, lapsed_at), f"rescue-{room}")
        finally:
            await index.aclose()
