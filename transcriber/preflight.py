"""Start-up check of the LiveKit credentials, before the worker registers.

livekit-agents retries every failed connection, a refused key included (16 times over
about two minutes, then it exits with code 0). A refused key never heals: one request
here finds it and stops the start with one line naming the variables. An unreachable
server may come up later, so the worker starts anyway (alive, not ready) and keeps
trying (see `worker.OutageLogFilter`).
"""

from __future__ import annotations

import asyncio

import aiohttp
from livekit import api

from .settings import Settings, SettingsError

PROBE_TIMEOUT = 5.0
"""Seconds the check may take; a server that does not answer by then is retried later."""
_PROBE_ROOM = "transcriber-start-up-probe"
"""ListRooms is filtered to this (absent) room, so the check costs LiveKit nothing."""


async def check_livekit_credentials(settings: Settings) -> None:
    """Raises `SettingsError` if LiveKit refuses the key and secret, or is not LiveKit."""
    try:
        async with api.LiveKitAPI(
            settings.livekit_url,
            settings.livekit_api_key,
            settings.livekit_api_secret,
            timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
            failover=False,
        ) as lkapi:
            await lkapi.room.list_rooms(api.ListRoomsRequest(names=[_PROBE_ROOM]))
    except api.TwirpError as e:
        if e.status in (401, 403):
            raise SettingsError(
                f"LiveKit at LIVEKIT_URL={settings.livekit_url} refused LIVEKIT_API_KEY/"
                f"LIVEKIT_API_SECRET (HTTP {e.status}): set the key and secret of that server"
            ) from None
        if e.status < 500:
            raise SettingsError(
                f"LIVEKIT_URL={settings.livekit_url} answered HTTP {e.status}: "
                "point it at a LiveKit server (e.g. wss://your-project.livekit.cloud)"
            ) from None
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        pass  # unreachable for now: the worker keeps trying
