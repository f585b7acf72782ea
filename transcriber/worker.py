"""Worker: registers with LiveKit under the agent name and runs one job per room.

The job entrypoint checks that the room still needs a transcriber, joins hidden and
without media permissions, waits out the join race (see `room_claim`), then hands the
room to a `RoomManager` until the meeting ends, the room empties, or a backend removes
the transcriber.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobProcess, utils
from livekit.agents.worker import WorkerPermissions
from prometheus_client import CollectorRegistry, multiprocess

from . import metrics
from .caption_outputs import LegacyMode, LegacyOutput, TextStreamOutput
from .caption_stream import CaptionSink
from .languages import LanguagePolicy
from .room_claim import RoomClaims, alone, keep_room, transcriber_in_room
from .room_lease import LeaseIndex, RoomLease
from .room_manager import RoomManager, RoomOptions
from .settings import Settings
from .speech_gate import GateOptions
from .status_server import StatusServer
from .stt_providers import SAMPLE_RATE, build_stt, load_vad, traits
from .takeover import Takeover, remove_ghosts
from .track_admission import TrackCaps
from .track_pipeline import PipelineOptions
from .transcript_delivery import DeliveryOptions, TranscriptOutbox
from .transcript_journal import TranscriptLimits, TranscriptSink
from .translation import TranslationOptions, TranslationSink
from .translators import build_translator
from .vad_batcher import load_gate_vad

logger = logging.getLogger(__name__)


class TranscriberServer(AgentServer):
    """The worker's main process. It outlives its job processes, so it delivers the
    transcripts they journal (`transcript_delivery`), and flushes them before it exits."""

    outbox: TranscriptOutbox | None = None
    room_load: float = 0.0
    """What one room adds to `worker_load` before its tracks are known: 1 / max rooms."""

    def _get_effective_load(self) -> float:
        """The load an availability answer is judged on: the reported load plus the rooms
        said yes to and not started yet. livekit-agents counts each of those, while no
        room runs, as load_threshold / num_idle_processes (half the threshold on 2
        cores), so an idle worker refused the third of several rooms dispatched at once
        and LiveKit dropped it: no transcriber, no retry. A reserved room is counted as
        `worker_load` counts a room. The one override of a private method here;
        tests/test_livekit_internals.py fails if an upgrade stops calling it."""
        return self._worker_load + self._reserved_slots * self.room_load

    async def aclose(self) -> None:
        await super().aclose()
        if self.outbox is not None:
            await self.outbox.aclose()


def build_server(settings: Settings) -> AgentServer:
    server = TranscriberServer(
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
        load_fnc=lambda server: worker_load(server, settings),
        drain_timeout=math.ceil(settings.drain_timeout),  # 0: until every room has ended
        prometheus_multiproc_dir=_metrics_dir(),
        preload_modules=["transcriber.forkserver_signals"],
        max_retry=RECONNECTS_UNBOUNDED,  # an unreachable LiveKit may come back: keep trying
    )
    outages = OutageLogFilter()
    logging.getLogger("livekit.agents").addFilter(outages)
    if settings.metrics_port:
        StatusServer(server, port=settings.metrics_port, connected=outages.connected)
    if settings.transcript_enabled:
        outbox = TranscriptOutbox(
            DeliveryOptions(
                journal_dir=settings.journal_path,
                transcript_dir=Path(settings.transcript_dir) if settings.transcript_dir else None,
                webhook_url=settings.transcript_webhook_url or None,
                api_key=settings.livekit_api_key,
                api_secret=settings.livekit_api_secret,
                retry_timeout=settings.transcript_retry_timeout,
            )
        )
        server.outbox = outbox
        server.on("worker_started", outbox.start)
    server.room_load = 1 / settings.max_rooms
    api_args = {
        "url": settings.livekit_url,
        "api_key": settings.livekit_api_key,
        "api_secret": settings.livekit_api_secret,
    }
    claims = RoomClaims(
        agent_name=settings.agent_name,
        livekit_url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret,
        running_rooms=lambda: {job.job.room.name for job in server.active_jobs},
        lease_ttl=settings.lease_ttl,
    )
    Takeover(
        server,
        agent_name=settings.agent_name,
        api_args=api_args,
        lease_ttl=settings.lease_ttl,
        redis_url=settings.redis_url,
    )
    server.rtc_session(
        entrypoint,
        agent_name=settings.agent_name,
        on_request=claims.on_request,
        on_session_end=close_room,
    )
    return server


RECONNECTS_UNBOUNDED = 10**9
"""livekit-agents gives up after `max_retry` reconnects (16 by default, ~2 min) and exits
with code 0; a refused key is caught before start (`preflight`), so only an outage is
left to retry, every 10 s."""


class OutageLogFilter(logging.Filter):
    """One log line when LiveKit is lost, one when it is back, not one per retry; and
    whether the worker is connected now, for `/ready`.

    livekit-agents has no event for either: its log messages are matched here, the one
    place that relies on their wording (tests/test_worker_ops_e2e.py fails if it changes).
    """

    LOST = "failed to connect to livekit"
    BACK = "registered worker"

    def __init__(self) -> None:
        super().__init__()
        self._lost = False

    def connected(self) -> bool:
        """False from a lost connection until the worker is registered again."""
        return not self._lost

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.LOST):
            if self._lost:
                return False
            self._lost = True
        elif message == self.BACK:
            self._lost = False
        return True


def worker_load(server: AgentServer, settings: Settings) -> float:
    """An idle worker always takes a room: the CPU it sees is then other processes' work,
    and refusing would drop the dispatch. A busy one reports the highest of its CPU, its
    rooms and its captioned tracks against their caps."""
    rooms = len(server.active_jobs)
    if rooms == 0:
        return 0.0
    return max(
        cpu_load(server),
        rooms / settings.max_rooms,
        active_tracks_in_worker() / settings.max_tracks,
    )


def cpu_load(server: AgentServer) -> float:
    """livekit-agents' own CPU load (0-1, averaged over 2.5 s), as its default `load_fnc`
    reports it. It has no public name: this is the one place that reaches for it, and
    tests/test_livekit_internals.py fails if an upgrade moves it."""
    from livekit.agents.worker import _DefaultLoadCalc

    return float(_DefaultLoadCalc.get_load(server))


def _metrics_dir() -> str:
    """Job processes write their metrics here; the main process serves the sum. One
    directory per worker process, so two workers on one host never mix numbers; the
    worker removes the one it made when it exits."""
    if given := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return given
    path = tempfile.mkdtemp(prefix="transcriber-metrics-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def active_tracks_in_worker() -> int:
    """Tracks captioned by every job process of this worker (from their shared metrics)."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return 0
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    for family in registry.collect():
        if family.name == "transcriber_active_tracks":
            return round(sum(sample.value for sample in family.samples))
    return 0


def prewarm(proc: JobProcess) -> None:
    """Runs once per job process, before any room: loads the settings, the VAD and the STT
    models here so the first speaker is not kept waiting; every track shares them."""
    settings = Settings.from_env()
    vad = load_vad()
    stt = build_stt(settings, vad=vad)
    stt.prewarm()
    proc.userdata["settings"] = settings
    proc.userdata["gate_vad"] = load_gate_vad()
    proc.userdata["stt"] = stt


async def entrypoint(ctx: JobContext) -> None:
    settings: Settings = ctx.proc.userdata["settings"]
    room_name = ctx.job.room.name
    ctx.log_context_fields["room"] = room_name  # on every log line of this job
    if await transcriber_in_room(ctx.api, room_name, settings.agent_name):
        logger.info(
            "a transcriber joined this room meanwhile, not joining", extra={"room": room_name}
        )
        ctx.shutdown("duplicate transcriber")
        return

    await ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE)
    if not await keep_room(
        ctx.api, ctx.room, settings.agent_name, settle_time=settings.join_settle_time
    ):
        logger.info("another transcriber joined first, leaving", extra={"room": room_name})
        ctx.shutdown("duplicate transcriber")
        return

    lease = RoomLease(
        ctx.api,
        ctx.room,
        ttl=settings.lease_ttl,
        index=LeaseIndex(settings.redis_url, settings.agent_name) if settings.redis_url else None,
        alone=lambda: alone(ctx.api, ctx.room, settings.agent_name),
        on_lost=lambda: ctx.shutdown("lost the room"),
    )
    lease.start()
    ctx.proc.userdata["lease"] = lease
    # in the background: removing a ghost whose node died takes seconds to fail
    ctx.proc.userdata["ghosts"] = asyncio.create_task(
        remove_ghosts(
            ctx.api, room_name, settings.agent_name, me=ctx.room.local_participant.identity
        )
    )

    def leave_empty_room() -> None:
        lease.meeting_over()
        ctx.shutdown("room empty")

    manager = RoomManager(
        ctx.room,
        ctx.proc.userdata["stt"],
        ctx.proc.userdata["gate_vad"],
        room_options(settings),
        sinks=await caption_sinks(settings, ctx, may_publish=lease.still_held),
        may_publish=lease.still_held,
        on_empty=leave_empty_room,
        worker_tracks=active_tracks_in_worker,
    )
    ctx.proc.userdata["room_manager"] = manager
    ctx.proc.userdata["lag_watch"] = asyncio.create_task(metrics.watch_event_loop_lag())
    manager.start()
    metrics.ACTIVE_ROOMS.inc()
    logger.info("captioning room", extra={"room": room_name})


async def caption_sinks(
    settings: Settings, ctx: JobContext, *, may_publish: Callable[[], bool]
) -> list[CaptionSink]:
    """The outputs on the room's caption stream, from the settings."""
    room = ctx.room
    created = room.creation_time.timestamp()
    started_at = created if 0 < created <= time.time() else time.time()
    sinks: list[CaptionSink] = []
    if settings.text_streams:
        sinks.append(TextStreamOutput(room, history_finals=settings.history_finals))
    if settings.legacy_transcriptions:
        sinks.append(
            LegacyOutput(
                room,
                mode=LegacyMode(settings.legacy_mode),
                history_finals=settings.history_finals,
                started_at=started_at,
            )
        )
    transcript: TranscriptSink | None = None
    if settings.transcript_enabled:
        transcript = TranscriptSink(
            settings.journal_path,
            room=room.name,
            room_sid=await room.sid,
            started_at=started_at,
            limits=TranscriptLimits(
                max_finals=settings.transcript_max_finals,
                max_bytes=settings.transcript_max_bytes,
            ),
        )
        sinks.append(transcript)
    if (translator := build_translator(settings.translation)) is not None:
        sinks.append(
            TranslationSink(
                room,
                translator,
                policy=language_policy(settings),
                options=TranslationOptions(interims=settings.translation.interims),
                on_translated=transcript.add_translation if transcript is not None else None,
                may_publish=may_publish,
            )
        )
    return sinks


def room_options(settings: Settings) -> RoomOptions:
    gate = None
    if settings.vad_gating:
        keep_alive = traits(settings.stt_providers[0]).keep_alive or not settings.stt_idle_close
        gate = GateOptions(
            preroll=settings.gate_preroll,
            hangover=settings.gate_hangover,
            idle_close=None if keep_alive else settings.stt_idle_close,
        )
    return RoomOptions(
        pipeline=PipelineOptions(
            sample_rate=SAMPLE_RATE,
            language=settings.language,
            drain_timeout=settings.track_drain_timeout,
            gate=gate,
        ),
        transcribe_agents=settings.transcribe_agents,
        empty_room_timeout=settings.empty_room_timeout,
        caps=TrackCaps(per_room=settings.max_tracks_per_room, per_worker=settings.max_tracks),
        languages=language_policy(settings),
    )


def language_policy(settings: Settings) -> LanguagePolicy:
    return LanguagePolicy(
        default=settings.language,
        spoken=settings.languages,
        translation=settings.translation.languages,
        max_targets=settings.translation.max_languages,
    )


async def close_room(ctx: JobContext) -> None:
    """Runs at job shutdown while the room is still connected, so every open segment
    gets its final before the transcriber leaves."""
    manager: RoomManager | None = ctx.proc.userdata.pop("room_manager", None)
    if manager is not None:
        await manager.aclose()
        metrics.ACTIVE_ROOMS.dec()
    for task_name in ("lag_watch", "ghosts"):
        if (task := ctx.proc.userdata.pop(task_name, None)) is not None:
            await utils.aio.cancel_and_wait(task)
    lease: RoomLease | None = ctx.proc.userdata.pop("lease", None)
    if lease is not None:
        await lease.aclose()
