"""Operations endpoints on `TRANSCRIBER_METRICS_PORT`, beside the worker's own health port.

- `/metrics`: Prometheus, summed over every job process (livekit-agents' handler);
- `/ready`: 200 while the worker is registered with LiveKit and not draining, else 503
  (also while it reconnects after losing LiveKit) — the worker's own `GET /` answers 200
  from the moment it starts, before it can take rooms.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from aiohttp import web
from livekit.agents import AgentServer
from livekit.agents.utils.http_server import HttpServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

logger = logging.getLogger(__name__)


class StatusServer:
    def __init__(
        self,
        server: AgentServer,
        *,
        port: int,
        connected: Callable[[], bool],
        host: str = "0.0.0.0",
    ) -> None:
        self._server = server
        self._connected = connected
        self._registered = False
        self._http = HttpServer(host, port)
        self._http.app.add_routes([web.get("/metrics", _metrics), web.get("/ready", self._ready)])
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
        if not self._connected():
            return web.Response(status=503, text="lost LiveKit, reconnecting")
        if self._server.draining:
            return web.Response(status=503, text="draining")
        return web.Response(text="ready")


async def _metrics(_: web.Request) -> web.Response:
    """Every process's metrics, summed (job processes write them to the multiprocess
    directory); collected off the event loop, as reading the files is blocking I/O."""
    body = await asyncio.get_running_loop().run_in_executor(None, _collect)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _collect() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
