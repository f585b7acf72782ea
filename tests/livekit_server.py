"""A real LiveKit server for tests: the pinned build, in dev mode, on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from livekit import api

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "devkey"
API_SECRET = secrets.token_hex(24)
"""Made per run, so no secret lives in the repository; the log scan looks for this one."""


_LISTEN_PORTS = range(20000, 32768)
"""Below Linux's ephemeral range (32768-60999): a port the kernel hands to some outgoing
connection between our check and the server's bind would make the bind fail."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on, bound to nowhere yet (callers pass it to a server)."""
    for port in random.sample(_LISTEN_PORTS, 200):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_LISTEN_PORTS}")


def server_binary() -> str:
    if path := os.environ.get("LIVEKIT_SERVER_BIN"):
        return path
    out = subprocess.run(
        [str(ROOT / "scripts" / "build-livekit-server")], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


class PortTaken(RuntimeError):
    pass


@dataclass
class LiveKitServer:
    url: str
    http_url: str
    api_key: str
    api_secret: str
    process: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls,
        log_path: Path,
        *,
        redis: RedisServer | None = None,
        port: int | None = None,
        attempts: int = 3,
    ) -> LiveKitServer:
        """`redis` makes it a node of the cluster sharing that Redis; `port` reuses an
        address (a restart). Free ports are picked before the server binds them, so another
        process on the machine can take one meanwhile: then it is started again on others."""
        for attempt in range(attempts):
            try:
                return cls._start(log_path, redis=redis, port=port)
            except PortTaken:
                if attempt == attempts - 1 or port is not None:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _start(
        cls, log_path: Path, *, redis: RedisServer | None, port: int | None
    ) -> LiveKitServer:
        port = port or free_port()
        tcp_port, udp_port = free_port(), free_port(socket.SOCK_DGRAM)
        cluster = f"redis:\n  address: {redis.address}\n" if redis else ""
        # target_load: LiveKit sends no room to a node whose workers all report a load
        # at or above it (0.7 by default), whatever their own threshold; tests and
        # benchmarks run workers with TRANSCRIBER_LOAD_THRESHOLD=1 on a busy machine
        config = f"""
port: {port}
bind_addresses: ["127.0.0.1"]
rtc:
  tcp_port: {tcp_port}
  udp_port: {udp_port}
  use_external_ip: false
  enable_loopback_candidate: true
keys:
  {API_KEY}: {API_SECRET}
logging:
  level: info
agents:
  target_load: 1
{cluster}"""
        log = open(log_path, "ab")
        process = subprocess.Popen(
            [server_binary(), "--dev", "--node-ip", "127.0.0.1", "--config-body", config],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = cls(
            url=f"ws://127.0.0.1:{port}",
            http_url=f"http://127.0.0.1:{port}",
            api_key=API_KEY,
            api_secret=API_SECRET,
            process=process,
        )
        server._wait_ready(log_path)
        return server

    def _wait_ready(self, log_path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = log_path.read_text()[-2000:]
                if "address already in use" in log:
                    raise PortTaken(log)
                raise RuntimeError(f"livekit-server exited: {log}")
            try:
                with urllib.request.urlopen(self.http_url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"livekit-server did not start in {timeout:.0f} s")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """As when a node dies: no goodbye to anyone."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def api(self) -> api.LiveKitAPI:
        return api.LiveKitAPI(self.http_url, self.api_key, self.api_secret)

    def token(
        self,
        identity: str,
        room: str,
        *,
        kind: str = "standard",
        attributes: dict[str, str] | None = None,
    ) -> str:
        return (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_name(identity)
            .with_kind(kind)
            .with_attributes(attributes or {})
            .with_grants(api.VideoGrants(room_join=True, room=room))
            .to_jwt()
        )


@dataclass
class RedisServer:
    """Debian's redis-server (installed by scripts/setup), in memory only, on 127.0.0.1."""

    address: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"

    @classmethod
    def start(cls, log_path: Path) -> RedisServer:
        port = free_port()
        process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no"],
            stdout=open(log_path, "wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log_path.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return cls(address=f"127.0.0.1:{port}", process=process)
            except OSError:
                time.sleep(0.1)
        process.kill()
        raise RuntimeError("redis-server did not start in 10 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class LoadBalancer:
    """A TCP load balancer in front of the cluster's nodes, as a cluster's clients and
    workers reach it: each connection goes to the first node, in order, that accepts one.
    Signalling (HTTP, WebSocket) goes through it; media goes to the nodes directly. Runs
    its own event loop in a thread, so a test blocking its own loop does not stall it."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = ports
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> LoadBalancer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self._loop
        ).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self._ports:
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
                break
            except OSError:
                continue
        else:
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
