"""A local Deepgram: the `/v1/listen` streaming websocket, answered by real Whisper.

It speaks the protocol the way livekit-plugins-deepgram uses it (`deepgram.STT(...)`,
`stt.py` in the plugin) and as Deepgram documents it:

- in: query parameters (encoding, sample_rate, channels, language, interim_results,
  endpointing, utterance_end_ms, vad_events, punctuate, smart_format, keyterm, keywords,
  ...), the key as `Authorization: Token <key>` (or `Bearer`, or the `token, <key>`
  websocket subprotocol), binary audio, and the JSON messages KeepAlive, Finalize and
  CloseStream;
- out: `Results` (transcript, words with start/end/confidence, is_final, speech_final,
  from_finalize, start, duration), `SpeechStarted` (vad_events=true), `UtteranceEnd`
  (utterance_end_ms set and interim_results=true), and `Metadata` before closing on
  CloseStream;
- refusals: a missing or wrong key is HTTP 401 on the upgrade, bad query parameters HTTP
  400, audio that is not a whole number of samples closes the socket with 1008
  "DATA-0000", ten seconds without any message closes it with 1011 "NET-0001".

Limits of the fake: it decodes raw linear16 and linear32 only (anything else is refused
with HTTP 400, which the real service would accept), transcribes every language as
English, and ends an utterance after at least 0.5 s of silence whatever `endpointing` says.

In a test (same event loop):

    async with FakeDeepgram(api_key=key) as server:
        stt = deepgram.STT(api_key=key, base_url=server.url)
        ...
        server.connections[0].api_key, server.connections[0].query["sample_rate"]
        server.billed_seconds

For a worker in another process: `python -m tests.fake_deepgram --port 0 --api-key K`
prints the port, then serves until SIGTERM; the faults are steered over HTTP (see
`FakeSttService`).

The service shell (`Connection`, `FakeSttService`, `serve_cli`) lives here and the fake
Speechmatics reuses it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np
from aiohttp import WSMsgType, web

from .fake_stt_recognizer import (
    SpeechStarted,
    StreamRecognizer,
    Transcript,
    UtteranceEnd,
    load_model,
)

# ---------------------------------------------------------------------------------------
# the service shell, shared with tests.fake_speechmatics


@dataclass
class Connection:
    """What one connection attempt brought and got, for tests to assert on."""

    id: str
    path: str
    query: dict[str, list[str]]
    """Every query parameter with all its values: {"keyterm": ["a", "b"], ...}."""
    headers: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)
    """Speechmatics: the StartRecognition message. (Deepgram is configured by `query`.)"""
    api_key: str | None = None
    """The key the client presented, right or wrong; None when it sent none."""
    language: str | None = None
    """The language the stream asked for: Deepgram's `language` query parameter,
    Speechmatics' transcription_config.language; None until the fake has read it."""
    status: int = 101
    """The HTTP answer to the upgrade: 101 when accepted, else 401, 400, 503..."""
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    audio_bytes: int = 0
    audio_seconds: float = 0.0
    received: Counter[str] = field(default_factory=Counter)
    """JSON messages received, by type: {"KeepAlive": 3, "Finalize": 1, ...}."""
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every JSON message sent, in order."""
    interims: list[str] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    """Transcripts sent, as text."""
    close_code: int | None = None
    """The code the server closed with; None if the client closed first or it was dropped."""
    close_reason: str = ""
    dropped: bool = False
    """Cut by a fault (drop_connections, drop_after_seconds, set_available(False))."""
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def accepted(self) -> bool:
        return self.status == 101

    @property
    def duration(self) -> float:
        """Seconds the connection was (or has been) open."""
        return (self.closed_at or time.monotonic()) - self.opened_at

    @property
    def transcript(self) -> str:
        return " ".join(t for t in self.finals if t)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "query": self.query,
            "config": self.config,
            "api_key": self.api_key,
            "language": self.language,
            "status": self.status,
            "accepted": self.accepted,
            "duration": round(self.duration, 3),
            "open": self.closed_at is None,
            "audio_bytes": self.audio_bytes,
            "audio_seconds": round(self.audio_seconds, 3),
            "received": dict(self.received),
            "interims": self.interims,
            "finals": self.finals,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "dropped": self.dropped,
        }


class CloseWith(Exception):
    """Ends a session: the server closes the websocket with this code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class FakeSttService:
    """An aiohttp server on 127.0.0.1 with the faults tests need.

    Faults, in process or over HTTP (`POST /_fake/faults` with a JSON object of the same
    names, `POST /_fake/drop`, `GET /_fake/state` for the connections):

    - `refuse_connections = True`: every new upgrade is answered `refuse_status` (503).
    - `drop_after_seconds = N`: a connection is cut (TCP abort, no close frame) once it
      has sent N seconds of audio.
    - `drop_connections()`: cuts every live connection now.
    - `set_available(False)`: both of the above at once, until `set_available(True)`.
    """

    route: ClassVar[str]

    def __init__(self, *, api_key: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.host = host
        self.connections: list[Connection] = []
        self.refuse_connections = False
        self.refuse_status = 503
        self.drop_after_seconds: float | None = None
        self._requested_port = port
        self._live: dict[str, web.Request] = {}
        self._runner: web.AppRunner | None = None
        self._port = 0

    # lifecycle

    async def start(self, *, preload: bool = True) -> None:
        if preload:
            await load_model()
        app = web.Application()
        app.router.add_get(self.route, self._handle)
        app.router.add_get("/_fake/state", self._state)
        app.router.add_post("/_fake/faults", self._faults)
        app.router.add_post("/_fake/drop", self._drop)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            self.drop_connections()
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSttService:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        raise NotImplementedError

    # what tests read

    @property
    def accepted(self) -> list[Connection]:
        return [c for c in self.connections if c.accepted]

    @property
    def billed_seconds(self) -> float:
        """Seconds of audio received on every connection: what the service charges for."""
        return sum(c.audio_seconds for c in self.connections)

    async def wait_closed(self, count: int = 1, timeout: float = 30.0) -> list[Connection]:
        """Waits until `count` accepted connections have closed; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            done = [c for c in self.accepted if c.closed.is_set()]
            if len(done) >= count:
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(done)} of {count} connections closed in {timeout}s")
            await asyncio.sleep(0.05)

    # faults

    def set_available(self, available: bool) -> None:
        self.refuse_connections = not available
        if not available:
            self.drop_connections()

    def drop_connections(self) -> int:
        """Cuts every live connection as a network failure would; returns how many."""
        dropped = 0
        for connection_id, request in list(self._live.items()):
            connection = next(c for c in self.connections if c.id == connection_id)
            self._abort(connection, request)
            dropped += 1
        return dropped

    def _abort(self, connection: Connection, request: web.Request) -> None:
        connection.dropped = True
        self._live.pop(connection.id, None)
        if request.transport is not None:
            request.transport.abort()

    def apply_drop_after(self, connection: Connection) -> bool:
        """Applies drop_after_seconds; True when the connection was just cut."""
        limit = self.drop_after_seconds
        request = self._live.get(connection.id)
        if limit is not None and connection.audio_seconds >= limit and request is not None:
            self._abort(connection, request)
            return True
        return False

    # HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        connection = Connection(
            id=str(uuid.uuid4()),
            path=request.path,
            query={k: request.query.getall(k) for k in request.query},
            headers=dict(request.headers),
        )
        self.connections.append(connection)
        try:
            if self.refuse_connections:
                connection.status = self.refuse_status
                return web.Response(
                    status=self.refuse_status, text="service unavailable (fake fault)"
                )
            rejection = self._check_upgrade(request, connection)
            if rejection is not None:
                connection.status = rejection.status
                return rejection
            self._live[connection.id] = request
            try:
                return await self._session(request, connection)
            finally:
                self._live.pop(connection.id, None)
        finally:
            connection.closed_at = time.monotonic()
            connection.closed.set()

    def _check_upgrade(self, request: web.Request, connection: Connection) -> web.Response | None:
        """Reads the key and the parameters into `connection`; a response refuses."""
        raise NotImplementedError

    async def _session(self, request: web.Request, connection: Connection) -> web.StreamResponse:
        """Upgrades, speaks the protocol until the end, returns the websocket."""
        raise NotImplementedError

    async def _state(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "url": self.url,
                "refuse_connections": self.refuse_connections,
                "refuse_status": self.refuse_status,
                "drop_after_seconds": self.drop_after_seconds,
                "billed_seconds": round(self.billed_seconds, 3),
                "connections": [c.to_dict() for c in self.connections],
            }
        )

    async def _faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "available" in body:
            self.set_available(bool(body["available"]))
        if "refuse_connections" in body:
            self.refuse_connections = bool(body["refuse_connections"])
        if "refuse_status" in body:
            self.refuse_status = int(body["refuse_status"])
        if "drop_after_seconds" in body:
            value = body["drop_after_seconds"]
            self.drop_after_seconds = None if value is None else float(value)
        return await self._state(request)

    async def _drop(self, request: web.Request) -> web.Response:
        """Cuts every live connection, or only the one whose `id` the JSON body names."""
        body = await request.json() if request.can_read_body else {}
        if (connection_id := body.get("id")) is None:
            return web.json_response({"dropped": self.drop_connections()})
        live = self._live.get(connection_id)
        if live is not None:
            self._abort(next(c for c in self.connections if c.id == connection_id), live)
        return web.json_response({"dropped": int(live is not None)})


async def send_json(
    ws: web.WebSocketResponse, connection: Connection, message: dict[str, Any]
) -> None:
    connection.sent.append(message)
    await ws.send_str(json.dumps(message))


def serve_cli(service: type[FakeSttService], argv: Sequence[str] | None = None) -> None:
    """`python -m tests.fake_<service> --port N --api-key K`: prints the port once ready
    (Whisper loaded), serves until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=service.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", required=True, help="the key clients must present")
    args = parser.parse_args(argv)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = service(api_key=args.api_key, host=args.host, port=args.port)
        await server.start()
        print(server.port, flush=True)
        await stop.wait()
        await server.stop()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# Deepgram


ENCODINGS = {
    "linear16": 2,
    "linear32": 4,
    "flac": 0,
    "alaw": 1,
    "mulaw": 1,
    "amr-nb": 0,
    "amr-wb": 0,
    "opus": 0,
    "ogg-opus": 0,
    "speex": 0,
    "g729": 0,
}
"""What Deepgram accepts for raw audio, with bytes per sample for those the fake decodes."""

MIN_SILENCE = 0.5
"""The fake's shortest pause that ends an utterance, whatever `endpointing` asks for: an
energy detector splitting at every 25 ms gap between words would feed Whisper fragments."""


@dataclass(frozen=True)
class ListenOptions:
    encoding: str
    sample_rate: int
    channels: int
    model: str
    language: str
    interim_results: bool
    punctuate: bool
    endpointing_ms: int | None
    """None when endpointing=false: finals still come, speech_final never does."""
    utterance_end_ms: int | None
    vad_events: bool
    keyterms: tuple[str, ...]

    @property
    def bytes_per_frame(self) -> int:
        return ENCODINGS[self.encoding] * self.channels

    @classmethod
    def parse(cls, query: dict[str, list[str]]) -> ListenOptions:
        """Raises ValueError with the message Deepgram-like 400s carry."""

        def one(name: str, default: str | None = None) -> str | None:
            values = query.get(name)
            return values[-1] if values else default

        def flag(name: str, default: bool) -> bool:
            value = one(name)
            if value is None:
                return default
            if value.lower() not in ("true", "false"):
                raise ValueError(f"Invalid query string. {name} must be true or false")
            return value.lower() == "true"

        def integer(name: str, value: str) -> int:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"Invalid query string. {name} must be an integer") from None

        encoding = one("encoding")
        if encoding is None:
            raise ValueError(
                "fake_deepgram decodes raw audio only: set encoding=linear16 and sample_rate"
            )
        if encoding not in ENCODINGS:
            raise ValueError(f"Invalid query string. Unknown encoding: {encoding}")
        if not ENCODINGS[encoding]:
            raise ValueError(f"fake_deepgram does not decode {encoding}: use linear16")
        rate = one("sample_rate")
        if rate is None:
            raise ValueError("Invalid query string. sample_rate is required with encoding")
        sample_rate = integer("sample_rate", rate)
        if not 0 < sample_rate <= 192000:
            raise ValueError(f"Invalid query string. sample_rate {sample_rate} is out of range")
        channels = integer("channels", one("channels", "1") or "1")
        if not 0 < channels <= 16:
            raise ValueError(f"Invalid query string. channels {channels} is out of range")
        endpointing = one("endpointing", "10")
        assert endpointing is not None
        endpointing_ms = (
            None if endpointing.lower() == "false" else integer("endpointing", endpointing)
        )
        utterance_end = one("utterance_end_ms")
        keywords = [k.rsplit(":", 1)[0] for k in query.get("keywords", [])]
        return cls(
            encoding=encoding,
            sample_rate=sample_rate,
            channels=channels,
            model=one("model", "base-general") or "base-general",
            language=one("language", "en") or "en",
            interim_results=flag("interim_results", False),
            punctuate=flag("punctuate", False) or flag("smart_format", False),
            endpointing_ms=endpointing_ms,
            utterance_end_ms=(
                None if utterance_end is None else integer("utterance_end_ms", utterance_end)
            ),
            vad_events=flag("vad_events", False),
            keyterms=tuple(query.get("keyterm", [])) + tuple(keywords),
        )


class FakeDeepgram(FakeSttService):
    """A local Deepgram streaming endpoint: `base_url=server.url`."""

    route = "/v1/listen"

    def __init__(
        self,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout: float = 10.0,
    ) -> None:
        super().__init__(api_key=api_key, host=host, port=port)
        self.idle_timeout = idle_timeout
        """Seconds without any message before closing with 1011 NET-0001, as Deepgram does."""
        self._options: dict[str, ListenOptions] = {}

    @property
    def url(self) -> str:
        """What to pass as `deepgram.STT(base_url=...)`."""
        return f"http://{self.host}:{self.port}{self.route}"

    def _check_upgrade(self, request: web.Request, connection: Connection) -> web.Response | None:
        connection.api_key = _deepgram_key(request)
        if connection.api_key != self.api_key:
            return _deepgram_error(401, "INVALID_AUTH", "Invalid credentials.", connection)
        try:
            options = ListenOptions.parse(connection.query)
        except ValueError as e:
            return _deepgram_error(400, "Bad Request", str(e), connection)
        self._options[connection.id] = options
        connection.language = options.language
        return None

    async def _session(self, request: web.Request, connection: Connection) -> web.StreamResponse:
        options = self._options.pop(connection.id)
        ws = web.WebSocketResponse(protocols=("token",))
        ws.headers["dg-request-id"] = connection.id
        await ws.prepare(request)
        await _DeepgramSession(self, connection, ws, options).run()
        return ws


class _DeepgramSession:
    def __init__(
        self,
        server: FakeDeepgram,
        connection: Connection,
        ws: web.WebSocketResponse,
        options: ListenOptions,
    ) -> None:
        self._server = server
        self._connection = connection
        self._ws = ws
        self._options = options
        endpointing = options.endpointing_ms or 0
        self._recognizer = StreamRecognizer(
            sample_rate=options.sample_rate,
            min_silence=max(endpointing / 1000, MIN_SILENCE),
            interim_every=1.0 if options.interim_results else None,
            utterance_end_after=(
                options.utterance_end_ms / 1000
                if options.utterance_end_ms and options.interim_results
                else None
            ),
            hotwords=" ".join(options.keyterms) or None,
        )
        self._sha256 = hashlib.sha256()
        self._created = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_events())
        try:
            if await self._receive() == "CloseStream":
                self._recognizer.end()
                await sender
                await send_json(self._ws, self._connection, self._metadata())
                await self._close(1000, "")
        except CloseWith as e:
            await self._close(e.code, e.reason)
        except ConnectionError:
            pass  # the client went while we were answering
        finally:
            sender.cancel()
            await self._recognizer.aclose()
            if not self._connection.dropped:
                await self._ws.close()

    async def _close(self, code: int, reason: str) -> None:
        self._connection.close_code = code
        self._connection.close_reason = reason
        await self._ws.close(code=code, message=reason.encode())

    async def _receive(self) -> str:
        """Reads until CloseStream or the client goes; returns what ended it."""
        connection, options = self._connection, self._options
        while True:
            try:
                msg = await self._ws.receive(timeout=self._server.idle_timeout)
            except asyncio.TimeoutError:
                raise CloseWith(1011, "NET-0001") from None
            if msg.type == WSMsgType.BINARY:
                data: bytes = msg.data
                if not data:
                    return "CloseStream"  # the legacy way: an empty binary message
                if len(data) % options.bytes_per_frame:
                    raise CloseWith(1008, "DATA-0000")
                self._sha256.update(data)
                connection.audio_bytes += len(data)
                connection.audio_seconds = connection.audio_bytes / (
                    options.bytes_per_frame * options.sample_rate
                )
                self._recognizer.push(_decode(data, options))
                if self._server.apply_drop_after(connection):
                    return "dropped"
            elif msg.type == WSMsgType.TEXT:
                try:
                    kind = str(json.loads(msg.data).get("type"))
                except (ValueError, AttributeError):
                    kind = "invalid"
                connection.received[kind] += 1
                if kind == "Finalize":
                    self._recognizer.finalize()
                elif kind == "CloseStream":
                    return kind
            else:
                return "client closed"

    async def _send_events(self) -> None:
        try:
            await self._send_events_until_end()
        except ConnectionError:
            pass  # the client is gone; _receive notices too

    async def _send_events_until_end(self) -> None:
        options, connection = self._options, self._connection
        async for event in self._recognizer.events():
            if isinstance(event, SpeechStarted):
                if options.vad_events:
                    message = {"type": "SpeechStarted", "channel": [0], "timestamp": event.time}
                    await send_json(self._ws, connection, message)
            elif isinstance(event, UtteranceEnd):
                message = {
                    "type": "UtteranceEnd",
                    "channel": [0, options.channels],
                    "last_word_end": event.last_speech_end,
                }
                await send_json(self._ws, connection, message)
            elif isinstance(event, Transcript):
                results = self._results(event)
                (connection.finals if event.is_final else connection.interims).append(
                    results["channel"]["alternatives"][0]["transcript"]
                )
                await send_json(self._ws, connection, results)

    def _results(self, t: Transcript) -> dict[str, Any]:
        options = self._options
        words = [
            {
                "word": w.bare,
                "start": w.start,
                "end": w.end,
                "confidence": w.confidence,
                **({"punctuated_word": w.text} if options.punctuate else {}),
            }
            for w in t.words
        ]
        transcript = " ".join(w.text if options.punctuate else w.bare for w in t.words)
        confidence = round(float(np.mean([w.confidence for w in t.words])), 3) if t.words else 0.0
        return {
            "type": "Results",
            "channel_index": [0, options.channels],
            "duration": round(t.end - t.start, 3),
            "start": t.start,
            "is_final": t.is_final,
            "speech_final": t.reason == "pause" and options.endpointing_ms is not None,
            "from_finalize": t.reason == "finalize",
            "channel": {
                "alternatives": [
                    {"transcript": transcript, "confidence": confidence, "words": words}
                ]
            },
            "metadata": {
                "request_id": self._connection.id,
                "model_info": {"name": options.model, "version": "fake", "arch": options.model},
                "model_uuid": _MODEL_UUID,
            },
        }

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self._connection.id,
            "sha256": self._sha256.hexdigest(),
            "created": self._created,
            "duration": round(self._connection.audio_seconds, 3),
            "channels": self._options.channels,
            "models": [_MODEL_UUID],
            "model_info": {
                _MODEL_UUID: {"name": self._options.model, "version": "fake", "arch": "whisper"}
            },
        }


_MODEL_UUID = "00000000-0000-4000-8000-000000000000"


def _deepgram_key(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(protocols) == 2 and protocols[0].lower() == "token":
        return protocols[1]
    return None


def _deepgram_error(status: int, code: str, message: str, connection: Connection) -> web.Response:
    body = {"err_code": code, "err_msg": message, "request_id": connection.id}
    return web.json_response(body, status=status, headers={"dg-request-id": connection.id})


def _decode(data: bytes, options: ListenOptions) -> np.ndarray:
    """Raw audio to float32 mono."""
    if options.encoding == "linear16":
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    else:
        samples = np.frombuffer(data, "<f4").astype(np.float32)
    if options.channels > 1:
        samples = samples.reshape(-1, options.channels).mean(axis=1)
    return samples


if __name__ == "__main__":
    serve_cli(FakeDeepgram)
