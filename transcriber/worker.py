"""Worker: registers with LiveKit under the agent name and runs one job per room.

The job entrypoint checks that the room still needs a transcriber, joins hidden and
without media permissions, waits out the join race (see `room_claim`), then hands the
room to a `RoomManager` until the meeting ends, the room empties, or a backend removes
the transcriber.
"""

from __future__ import annotations

import asyncio
import logging

from livekit import rtc
from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobProcess
from livekit.agents.worker import WorkerPermissions, _DefaultLoadCalc

from .captions import CaptionOutputs
from .room_claim import RoomClaims, transcriber_in_room
from .room_manager import RoomManager, RoomOptions
from .settings import Settings
from .stt_providers import SAMPLE_RATE, build_stt, load_vad
from .track_pipeline import PipelineOptions

logger = logging.getLogger("transcriber.worker")


def build_server(settings: Settings) -> AgentServer:
    server = AgentServer(
        ws_url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret,
        permissions=WorkerPermissions(
            can_publish=False,
            can_subscribe=True,
            can_publish_data=True,
            can_update_metadata=False,
            hidden=True,
        ),
        setup_fnc=prewarm,
        port=settings.http_port,
        load_threshold=settings.load_threshold,
        load_fnc=lambda server: worker_load(server, max_rooms=settings.max_rooms),
    )
    claims = RoomClaims(
        identity=settings.transcriber_identity,
        livekit_url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret,
        running_rooms=lambda: {job.job.room.name for job in server.active_jobs},
    )
    server.rtc_session(
        entrypoint,
        agent_name=settings.agent_name,
        on_request=claims.on_request,
        on_session_end=close_room,
    )
    return server


def worker_load(server: AgentServer, *, max_rooms: int) -> float:
    """An idle worker always takes a room: the CPU it sees is then other processes' work,
    and refusing would drop the dispatch. A busy one reports CPU or its room count."""
    rooms = len(server.active_jobs)
    if rooms == 0:
        return 0.0
    return max(_DefaultLoadCalc.get_load(server), rooms / max_rooms)


def prewarm(proc: JobProcess) -> None:
    """Runs once per job process, before any room: loads the settings, the VAD and the STT
    models here so the first speaker is not kept waiting; every track shares them."""
    settings = Settings.from_env()
    vad = load_vad()
    stt = build_stt(settings, vad=vad)
    stt.prewarm()
    proc.userdata["settings"] = settings
    proc.userdata["vad"] = vad
    proc.userdata["stt"] = stt


async def entrypoint(ctx: JobContext) -> None:
    settings: Settings = ctx.proc.userdata["settings"]
    room_name = ctx.job.room.name
    if await transcriber_in_room(ctx.api, room_name, settings.transcriber_identity):
        logger.info("a transcriber joined this room meanwhile, not joining", extra={"room": room_name})
        ctx.shutdown("duplicate transcriber")
        return

    await ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)
    await asyncio.sleep(settings.join_settle_time)
    if ctx.room.connection_state != rtc.ConnectionState.CONN_CONNECTED:
        return  # replaced by a concurrent job before captioning anything

    manager = RoomManager(
        ctx.room,
        ctx.proc.userdata["stt"],
        RoomOptions(
            pipeline=PipelineOptions(
                sample_rate=SAMPLE_RATE,
                outputs=CaptionOutputs(
                    text_streams=settings.text_streams,
                    legacy_transcriptions=settings.legacy_transcriptions,
                ),
                drain_timeout=settings.track_drain_timeout,
            ),
            transcribe_agents=settings.transcribe_agents,
            empty_room_timeout=settings.empty_room_timeout,
        ),
        on_empty=lambda: ctx.shutdown("room empty"),
    )
    ctx.proc.userdata["room_manager"] = manager
    manager.start()
    logger.info("captioning room", extra={"room": room_name})


async def close_room(ctx: JobContext) -> None:
    """Runs at job shutdown while the room is still connected, so every open segment
    gets its final before the transcriber leaves."""
    manager: RoomManager | None = ctx.proc.userdata.pop("room_manager", None)
    if manager is not None:
        await manager.aclose()
