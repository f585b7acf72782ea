"""The captions page and its development token endpoint, for `scripts/run-local`.

Development only: it mints room tokens with whatever key `LIVEKIT_API_KEY` /
`LIVEKIT_API_SECRET` hold (the dev key in `scripts/run-local`), so it listens on
127.0.0.1 alone and answers no client but loopback. The worker never starts it.

    python -m web.serve [--port 8090]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from aiohttp import web
from livekit import api

HOST = "127.0.0.1"
DEFAULT_PORT = 8090
WEB_DIR = Path(__file__).resolve().parent
STATIC_FILES = {
    "/": WEB_DIR / "index.html",
    "/captions.js": WEB_DIR / "captions.js",
    "/captions.css": WEB_DIR / "captions.css",
    "/livekit-client.js": WEB_DIR
    / "node_modules"
    / "livekit-client"
    / "dist"
    / "livekit-client.umd.js",
}
_ROOM_OR_IDENTITY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_NAME = 64
TOKEN_TTL = timedelta(hours=2)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, kw_only=True)
class DevServer:
    """Where the browser connects and the key its tokens are signed with."""

    livekit_url: str
    api_key: str
    api_secret: str

    @classmethod
    def from_env(cls) -> DevServer:
        missing = [
            k
            for k in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
            if not os.environ.get(k)
        ]
        if missing:
            raise SystemExit(
                f"captions page: {', '.join(missing)} not set: set them in the environment or .env "
                "(scripts/run-local sets the local dev server's)"
            )
        return cls(
            livekit_url=os.environ["LIVEKIT_URL"],
            api_key=os.environ["LIVEKIT_API_KEY"],
            api_secret=os.environ["LIVEKIT_API_SECRET"],
        )


DEV_SERVER = web.AppKey("dev_server", DevServer)


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuses every client not on this machine, and pages reached through another host
    name (a DNS-rebinding page in the user's browser would send its own)."""
    if not is_loopback(request.remote):
        raise web.HTTPForbidden(text="the captions page answers loopback clients only\n")
    if request.url.host not in (HOST, "localhost"):
        raise web.HTTPForbidden(text=f"open the captions page as http://{HOST}:<port>/\n")
    return await handler(request)


def mint_token(server: DevServer, *, room: str, identity: str, name: str) -> str:
    return (
        api.AccessToken(server.api_key, server.api_secret)
        .with_identity(identity)
        .with_name(name)
        .with_ttl(TOKEN_TTL)
        .with_grants(
            # the language picker sets the participant's own `language` attribute
            api.VideoGrants(room_join=True, room=room, can_update_own_metadata=True)
        )
        .to_jwt()
    )


async def token(request: web.Request) -> web.Response:
    server: DevServer = request.app[DEV_SERVER]
    room = request.query.get("room", "")
    identity = request.query.get("identity", "")
    name = request.query.get("name", "") or identity
    for field, value in (("room", room), ("identity", identity)):
        if not _ROOM_OR_IDENTITY.fullmatch(value):
            raise web.HTTPBadRequest(text=f"{field}: 1-64 letters, digits, '_', '.' or '-'\n")
    if len(name) > _MAX_NAME or not name.isprintable():
        raise web.HTTPBadRequest(text=f"name: at most {_MAX_NAME} printable characters\n")
    jwt = mint_token(server, room=room, identity=identity, name=name)
    return web.json_response({"url": server.livekit_url, "token": jwt})


def static_file(path: Path) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        if not path.exists():
            raise web.HTTPNotFound(text=f"{path.name} is missing: run scripts/setup\n")
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    return serve


def build_app(server: DevServer) -> web.Application:
    app = web.Application(middlewares=[loopback_only])
    app[DEV_SERVER] = server
    app.router.add_get("/token", token)
    for route, path in STATIC_FILES.items():
        app.router.add_get(route, static_file(path))
    return app


async def start(server: DevServer, port: int = DEFAULT_PORT) -> web.AppRunner:
    """Serves on 127.0.0.1 only (there is no option for another address); port 0 picks one."""
    runner = web.AppRunner(build_app(server), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


async def _main(port: int) -> None:
    runner = await start(DevServer.from_env(), port)
    print(f"captions page: http://{HOST}:{bound_port(runner)}/", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    from dotenv import load_dotenv

    load_dotenv()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    try:
        asyncio.run(_main(parser.parse_args().port))
    except KeyboardInterrupt:
        sys.exit(0)
    except OSError as e:
        sys.exit(f"captions page: cannot listen on {HOST}: {e}: choose another --port")
