"""The floor for `benchmarks.capacity`: receiving the audio and nothing else.

    python -m benchmarks.floor_worker start

An agent worker on the same SDK as the transcriber that subscribes to every audio track
of its room and reads it as the transcriber does (`rtc.AudioStream` at 16 kHz mono, 50 ms
frames: `PipelineOptions`' defaults; each stream handed its own frames only, as
`own_frames_only` does for the transcriber), then drops every frame: no STT, no captions,
nothing published. What it costs per track is what any transcriber on this SDK pays before doing
any work; `cpu_over_floor` in the capacity benchmark is ours over it.

Frame delay, its knee signal: per track, how far each frame arrives behind the track's
best arrival so far on a real-time schedule (frames × 50 ms); a receiver that falls behind
real time sees it grow. The worst delay of each half second goes to
`$BENCH_LAG_DIR/frames-<pid>.txt` (`monotonic delay` lines), with fast_stt's event-loop
lag probe next to it. Settings: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET,
BENCH_AGENT_NAME; participants whose identity starts with `bench-` are ignored.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from livekit import rtc
from livekit.agents import AgentServer, AutoSubscribe, JobContext, cli, utils

from benchmarks.fast_stt import LAG_DIR_ENV, LagProbe
from transcriber.stt_providers import SAMPLE_RATE
from transcriber.track_pipeline import PipelineOptions, own_frames_only

FRAME_MS = PipelineOptions.frame_size_ms
REPORT_EVERY = 0.5
IGNORED_PREFIX = "bench-"


class FrameDelay:
    """The worst frame delay of each `REPORT_EVERY` seconds, over all tracks of a process."""

    def __init__(self) -> None:
        directory = os.environ.get(LAG_DIR_ENV)
        self._path = Path(directory) / f"frames-{os.getpid()}.txt" if directory else None
        self._worst = 0.0
        self._since = time.monotonic()

    def record(self, delay: float) -> None:
        self._worst = max(self._worst, delay)
        now = time.monotonic()
        if now - self._since >= REPORT_EVERY:
            if self._path is not None:
                with open(self._path, "a") as f:
                    f.write(f"{now:.4f} {self._worst:.5f}\n")
            self._worst, self._since = 0.0, now


async def drain(track: rtc.Track, delays: FrameDelay) -> None:
    """Reads the track like the transcriber does, keeps nothing."""
    stream = own_frames_only(  # the cheapest way this SDK receives, as the transcriber does
        rtc.AudioStream.from_track(
            track=track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS
        )
    )
    best: float | None = None
    position = 0.0
    try:
        async for event in stream:
            lateness = time.monotonic() - position
            best = lateness if best is None else min(best, lateness)
            delays.record(lateness - best)
            position += event.frame.duration
    finally:
        await stream.aclose()


async def entrypoint(ctx: JobContext) -> None:
    LagProbe.start_once()
    delays = FrameDelay()
    tasks: set[asyncio.Task[None]] = set()

    def on_subscribed(
        track: rtc.Track, _: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO or participant.identity.startswith(
            IGNORED_PREFIX
        ):
            return
        task = asyncio.create_task(drain(track, delays))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    ctx.room.on("track_subscribed", on_subscribed)
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)

    async def cleanup() -> None:
        await utils.aio.cancel_and_wait(*tasks)

    ctx.add_shutdown_callback(cleanup)


def build_server() -> AgentServer:
    server = AgentServer(
        ws_url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
        port=0,
        load_threshold=1.0,
    )
    server.rtc_session(entrypoint, agent_name=os.environ.get("BENCH_AGENT_NAME", "floor"))
    return server


if __name__ == "__main__":
    cli.run_app(build_server())
