"""Delivers finished transcripts: files in `TRANSCRIBER_TRANSCRIPT_DIR` and/or a signed POST
to `TRANSCRIBER_TRANSCRIPT_WEBHOOK_URL`.

The outbox runs in the worker's main process, which outlives its job processes: it
delivers every journal nobody holds any more — a room that ended, a job process that was
killed, or, at start, whatever a previous worker on the same directory left behind — once,
then removes it. A failed delivery is retried with backoff for `retry_timeout`; then the
journal is kept as `*.undelivered` for the operator.

The webhook is signed as LiveKit signs its own: the `Authorization` header holds a JWT made
with the LiveKit API key and secret whose `sha256` claim is the body's hash, so a backend
verifies it with `livekit-api`'s `WebhookReceiver`/`TokenVerifier`, as it verifies LiveKit's.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
from livekit import api
from livekit.agents import utils

from .transcript import Transcript
from .transcript_journal import JOURNAL_SUFFIX, read_journal

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 425, 429}


@dataclass(frozen=True, kw_only=True)
class DeliveryOptions:
    journal_dir: Path
    transcript_dir: Path | None
    webhook_url: str | None
    api_key: str
    api_secret: str
    retry_timeout: float
    poll_interval: float = 1.0
    max_backoff: float = 30.0


class DeliveryError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class _Attempts:
    first_failure: float
    next_try: float
    backoff: float


class TranscriptOutbox:
    def __init__(self, options: DeliveryOptions) -> None:
        self._opts = options
        self._attempts: dict[Path, _Attempts] = {}
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="transcript-outbox")

    async def aclose(self, *, flush_timeout: float = 10.0) -> None:
        """Delivers what is ready (bounded), then stops; the rest waits for the next start."""
        if self._task is not None:
            await utils.aio.cancel_and_wait(self._task)
            self._task = None
        try:
            await asyncio.wait_for(self.deliver_ready(), flush_timeout)
        except asyncio.TimeoutError:
            logger.warning("transcripts left for the next start: delivery took too long")
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        while True:
            await self.deliver_ready()
            await asyncio.sleep(self._opts.poll_interval)

    async def deliver_ready(self) -> None:
        """One pass over the journal directory."""
        try:
            paths = sorted(self._opts.journal_dir.glob(f"*{JOURNAL_SUFFIX}"))
        except OSError as e:
            logger.warning("cannot list the transcript journals: %s", e)
            return
        now = time.monotonic()
        for path in paths:
            attempts = self._attempts.get(path)
            if attempts is None or attempts.next_try <= now:
                await self._deliver_if_free(path)

    async def _deliver_if_free(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return  # delivered by another worker on this directory meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # its room is still being captioned
            if not path.exists():
                return
            await self._deliver_locked(path)
        finally:
            os.close(fd)

    async def _deliver_locked(self, path: Path) -> None:
        try:
            transcript = await asyncio.to_thread(read_journal, path)
        except (OSError, ValueError) as e:
            logger.error("unreadable transcript journal %s, set aside: %s", path.name, e)
            self._set_aside(path)
            return
        try:
            await self._deliver(transcript)
        except DeliveryError as e:
            self._failed(path, str(e), retryable=e.retryable)
            return
        path.unlink(missing_ok=True)
        if self._attempts.pop(path, None) is not None:
            logger.info("transcript delivered after retries", extra={"room": transcript.room})
        logger.info(
            "transcript delivered",
            extra={"room": transcript.room, "segments": len(transcript.segments)},
        )

    async def _deliver(self, transcript: Transcript) -> None:
        if self._opts.transcript_dir is not None:
            try:
                await asyncio.to_thread(write_files, transcript, self._opts.transcript_dir)
            except OSError as e:
                raise DeliveryError(
                    f"cannot write to TRANSCRIBER_TRANSCRIPT_DIR: {e}", retryable=True
                ) from None
        if self._opts.webhook_url:
            await self._post(transcript)

    async def _post(self, transcript: Transcript) -> None:
        body = transcript.to_json_text()
        token = sign(body, api_key=self._opts.api_key, api_secret=self._opts.api_secret)
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        assert self._opts.webhook_url is not None
        try:
            async with self._http.post(
                self._opts.webhook_url,
                data=body.encode(),
                headers={"Authorization": token, "Content-Type": "application/webhook+json"},
            ) as response:
                if response.status < 300:
                    return
                retryable = response.status >= 500 or response.status in _RETRYABLE_STATUS
                raise DeliveryError(
                    f"TRANSCRIBER_TRANSCRIPT_WEBHOOK_URL answered HTTP {response.status}",
                    retryable=retryable,
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            reason = type(e).__name__ if isinstance(e, asyncio.TimeoutError) else str(e)
            raise DeliveryError(
                f"TRANSCRIBER_TRANSCRIPT_WEBHOOK_URL unreachable ({reason})", retryable=True
            ) from None

    def _failed(self, path: Path, reason: str, *, retryable: bool) -> None:
        now = time.monotonic()
        attempts = self._attempts.get(path)
        if attempts is None:
            attempts = self._attempts[path] = _Attempts(now, now, 1.0)
            logger.warning("transcript delivery failed, retrying: %s", reason)
        if not retryable or now - attempts.first_failure > self._opts.retry_timeout:
            logger.error(
                "transcript not delivered (%s); kept as %s",
                reason,
                path.with_suffix(".undelivered").name,
            )
            self._set_aside(path)
            return
        attempts.next_try = now + attempts.backoff
        attempts.backoff = min(attempts.backoff * 2, self._opts.max_backoff)

    def _set_aside(self, path: Path) -> None:
        self._attempts.pop(path, None)
        try:
            path.rename(path.with_suffix(".undelivered"))
        except OSError as e:
            logger.error("cannot set the journal %s aside: %s", path.name, e)


def sign(body: str, *, api_key: str, api_secret: str) -> str:
    """A LiveKit webhook-style JWT for `body`."""
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return (
        api.AccessToken(api_key, api_secret)
        .with_sha256(digest)
        .with_ttl(timedelta(minutes=5))
        .to_jwt()
    )


def write_files(transcript: Transcript, directory: Path) -> list[Path]:
    """`<room>-<started_at>.{vtt,txt,json}`, each written atomically (0600). A meeting
    whose transcriber was replaced ends in several parts with the same name: each part
    adds to the files the earlier ones wrote."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    earlier = directory / f"{transcript.file_stem}.json"
    if earlier.exists():
        try:
            transcript = transcript.including(json.loads(earlier.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as e:
            logger.warning("replacing an unreadable transcript %s (%s)", earlier.name, e)
    written = []
    for suffix, text in (
        (".vtt", transcript.to_webvtt()),
        (".txt", transcript.to_text()),
        (".json", transcript.to_json_text()),
    ):
        path = directory / f"{transcript.file_stem}{suffix}"
        temporary = directory / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        written.append(path)
    return written
