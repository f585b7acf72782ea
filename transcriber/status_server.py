"""Operations endpoints on `TRANSCRIBER_METRICS_PORT`, beside the worker's own health port.

- `/metrics`: Prometheus, summed over every job process (livekit-agents' handler);
- `/ready`: 200 once the worker is registered with LiveKit and not draining, else 503 —
  the worker's own `GET /` answers 200 from the moment it starts, before it can take rooms.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from livekit.agents import AgentServer
from livekit.agents.telemetry.http_server import metrics as serve_metrics
from livekit.agents.utils.http_server import HttpServer

logger = logging.getLogger("transcriber.worker")


class StatusServer:
    def __init__(self, server: AgentServer, *, port: int, host: str = "0.0.0.0") -> None:
        self._server = server
        self._registered = False
        self._http = HttpServer(host, port)
        self._http.app.add_routes([web.get("/metrics", serve_metrics), web.get("/ready", self._ready)])
        self._starting: asyncio.Task[None] | None = None
        server.on("worker_started", self._start)
        server.on("worker_registered", self._on_registered)

    def _start(self) -> None:
        self._starting = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        try:
            await self._http.start()
        except OSError as e:  # captions go on without metrics; say how to fix it
            logger.error(
                "cannot serve metrics on port %d (%s): set TRANSCRIBER_METRICS_PORT to a free "
                "port, or 0 to turn metrics off",
                self._http.port,
                e.strerror,
            )

    def _on_registered(self, *_: object) -> None:
        self._registered = True

    async def _ready(self, _: web.Request) -> web.Response:
        if not self._registered:
            return web.Response(status=503, text="not registered with LiveKit yet")
        if self._server.draining:
            return web.Response(status=503, text="draining")
        return web.Response(text="ready")
