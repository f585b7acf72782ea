"""A backend's webhook endpoint for tests: a real HTTP server on 127.0.0.1 that records
what it is sent, verifies LiveKit-style signatures, and can be down, hang, or refuse."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from livekit import api


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    body: str
    authorization: str
    content_type: str

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookServer:
    api_key: str
    api_secret: str
    port: int = field(default_factory=free_port)
    status: int = 200
    hang: bool = False
    """Accept each request and never answer it (until `release()`)."""
    hung: int = 0
    """Requests held by `hang` so far."""
    received: list[Received] = field(default_factory=list)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/transcripts"

    async def start(self) -> WebhookServer:
        app = web.Application()
        app.router.add_post("/transcripts", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        if self.hang:
            self.hung += 1
            await self._released.wait()
            if request.transport is None or request.transport.is_closing():
                raise web.HTTPRequestTimeout()  # the sender gave up on this one: not received
        self.received.append(
            Received(
                body=await request.text(),
                authorization=request.headers.get("Authorization", ""),
                content_type=request.headers.get("Content-Type", ""),
            )
        )
        return web.Response(status=self.status)

    def release(self) -> None:
        """Stops hanging: held requests still awaited by their sender are answered."""
        self.hang = False
        self._released.set()

    def verify(self, received: Received, body: str | None = None) -> None:
        """What a backend does, as for LiveKit's own webhooks: raises unless the token is
        signed with the API secret and carries the body's hash."""
        claims = api.TokenVerifier(self.api_key, self.api_secret).verify(received.authorization)
        digest = hashlib.sha256((received.body if body is None else body).encode()).digest()
        if base64.b64decode(claims.sha256) != digest:
            raise ValueError("body hash mismatch")

    async def wait_received(self, count: int = 1, timeout: float = 30.0) -> list[Received]:
        for _ in range(int(timeout / 0.1)):
            if len(self.received) >= count:
                return self.received
            await asyncio.sleep(0.1)
        raise AssertionError(f"webhook got {len(self.received)} of {count} deliveries")
