"""The baseline for `benchmarks.capacity`: LiveKit's multi-user transcriber pattern.

    python -m benchmarks.baseline_worker start

What livekit-agents documents for captioning several participants (its
`examples/other/transcription/multi-user-transcriber.py`): one `AgentSession` per
participant, each with its own `RoomIO` linked to that participant
(`RoomOptions(participant_identity=...)`, the 1.8.9 form of
`RoomInputOptions(participant_identity=...)`), audio input only,
`RoomOutputOptions(transcription_enabled=True, audio_enabled=False)`, an `Agent` whose STT
does the captioning and whose `on_user_turn_completed` raises `StopResponse`.

Kept STT-for-STT with our worker: the Agent's STT is `benchmarks.fast_stt`, and the
session's model defaults are switched off (`vad=None`, turn detection `"stt"`): in 1.8.9
a bare `AgentSession()` also runs a Silero VAD per participant and the local end-of-turn
model per turn, which would measure models rather than the session machinery. Everything
else (RoomIO's 24 kHz / 50 ms audio input with AGC, both transcription outputs, the
session's turn handling) is the framework default.

Participants whose identity starts with `bench-` (the benchmark's listener and echo) are
not captioned. Settings come from the environment: LIVEKIT_URL, LIVEKIT_API_KEY,
LIVEKIT_API_SECRET, BENCH_AGENT_NAME.
"""

from __future__ import annotations

import asyncio
import logging
import os

from livekit import rtc
from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    AutoSubscribe,
    JobContext,
    StopResponse,
    cli,
    llm,
    room_io,
    utils,
)

from benchmarks import fast_stt

logger = logging.getLogger("baseline")
IGNORED_PREFIX = "bench-"


class Transcriber(Agent):
    def __init__(self, *, participant_identity: str) -> None:
        super().__init__(instructions="not-needed", stt=fast_stt.build())
        self.participant_identity = participant_identity

    async def on_user_turn_completed(
        self, turn_ctx: llm.ChatContext, new_message: llm.ChatMessage
    ) -> None:
        raise StopResponse()


class MultiUserTranscriber:
    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self._sessions: dict[str, AgentSession] = {}
        self._tasks: set[asyncio.Task[AgentSession | None]] = set()

    def start(self) -> None:
        self.ctx.room.on("participant_connected", self.on_participant_connected)
        self.ctx.room.on("participant_disconnected", self.on_participant_disconnected)

    async def aclose(self) -> None:
        await utils.aio.cancel_and_wait(*self._tasks)
        await asyncio.gather(*[self._close_session(s) for s in self._sessions.values()])
        self.ctx.room.off("participant_connected", self.on_participant_connected)
        self.ctx.room.off("participant_disconnected", self.on_participant_disconnected)

    def on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity in self._sessions or participant.identity.startswith(
            IGNORED_PREFIX
        ):
            return
        task = asyncio.create_task(self._start_session(participant))
        self._tasks.add(task)

        def on_done(task: asyncio.Task[AgentSession | None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is None:
                if (session := task.result()) is not None:
                    self._sessions[participant.identity] = session

        task.add_done_callback(on_done)

    def on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if (session := self._sessions.pop(participant.identity, None)) is None:
            return
        task = asyncio.create_task(self._close_session(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_session(self, participant: rtc.RemoteParticipant) -> AgentSession | None:
        if participant.identity in self._sessions:
            return self._sessions[participant.identity]
        session: AgentSession = AgentSession(vad=None, turn_handling={"turn_detection": "stt"})
        await session.start(
            agent=Transcriber(participant_identity=participant.identity),
            room=self.ctx.room,
            room_options=room_io.RoomOptions(
                audio_input=True,
                text_output=True,
                audio_output=False,
                participant_identity=participant.identity,
                text_input=False,
            ),
        )
        return session

    async def _close_session(self, session: AgentSession) -> None:
        await session.drain()
        await session.aclose()


async def entrypoint(ctx: JobContext) -> None:
    transcriber = MultiUserTranscriber(ctx)
    transcriber.start()
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    for participant in ctx.room.remote_participants.values():
        transcriber.on_participant_connected(participant)

    async def cleanup() -> None:
        await transcriber.aclose()

    ctx.add_shutdown_callback(cleanup)


def build_server() -> AgentServer:
    server = AgentServer(
        ws_url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
        port=0,
        load_threshold=1.0,
    )
    server.rtc_session(entrypoint, agent_name=os.environ.get("BENCH_AGENT_NAME", "baseline"))
    return server


if __name__ == "__main__":
    cli.run_app(build_server())
