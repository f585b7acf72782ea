"""A real LiveKit server for tests: the pinned build, in dev mode, on 127.0.0.1 only."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from livekit import api

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "devkey"
API_SECRET = secrets.token_hex(24)
"""Made per run, so no secret lives in the repository; the log scan looks for this one."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    def start(cls, log_path: Path, attempts: int = 3) -> LiveKitServer:
        """Free ports are picked before the server binds them, so another process on the
        machine can take one meanwhile: then the server is started again on others."""
        for attempt in range(attempts):
            try:
                return cls._start(log_path)
            except PortTaken:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _start(cls, log_path: Path) -> LiveKitServer:
        port, tcp_port, udp_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
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
"""
        log = open(log_path, "wb")
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
