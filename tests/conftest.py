from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .livekit_server import API_SECRET, ROOT, LiveKitServer, RedisServer


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    log = tmp_path_factory.mktemp("livekit") / "livekit-server.log"
    server = LiveKitServer.start(log)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    redis = RedisServer.start(tmp_path_factory.mktemp("redis") / "redis-server.log")
    yield redis
    redis.stop()


@pytest.fixture
def room_name() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


_WORKER_LOGS: list[Path] = []
"""Every worker log of the run, checked for secrets when the run ends."""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No configured secret may appear in any worker log of a full test run."""
    secrets = {API_SECRET, *_TEST_SECRETS}
    leaks = [
        f"{path}: contains a configured secret"
        for path in _WORKER_LOGS
        if path.exists() and any(secret in path.read_text(errors="replace") for secret in secrets)
    ]
    if leaks:
        print("\n".join(["", "SECRET LEAKED IN LOGS:", *leaks]), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_TEST_SECRETS: set[str] = set()


class WorkerProcess:
    """`python -m transcriber start` (or another agent worker `command`) as a real
    subprocess in its own session, so its whole tree can be signalled; logs kept."""

    def __init__(
        self, env: dict[str, str], log_path: Path, command: list[str] | None = None
    ) -> None:
        self.log_path = log_path
        _WORKER_LOGS.append(log_path)
        _TEST_SECRETS.update(
            v for k, v in env.items() if k.endswith(("_API_KEY", "_API_SECRET")) and len(v) >= 8
        )
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "transcriber", "start"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_registered(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while "registered worker" not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not register:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def captioning(self, track_sid: str) -> int:
        """How many times this worker started captioning the track."""
        return sum(
            1 for line in self.log().splitlines() if "captioning track" in line and track_sid in line
        )

    async def wait_captioning(self, track_sid: str, *, times: int = 1, timeout: float = 30) -> None:
        """Until the worker captions the track: words said before are heard by no one (the
        transcriber joins hidden, so the speaker's SDK is not told of its subscription)."""
        deadline = time.monotonic() + timeout
        while self.captioning(track_sid) < times:
            if time.monotonic() > deadline:
                raise AssertionError(f"track {track_sid} not captioned:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)  # its audio stream opens right after the log line

    def stop(self) -> None:
        if self._log.closed:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the tree (job processes, forkserver)
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self._log.close()


def worker_env(server: LiveKitServer, **overrides: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LIVEKIT_", "TRANSCRIBER_", "DEEPGRAM_", "SPEECHMATICS_"))
    }
    env.update(
        LIVEKIT_URL=server.url,
        LIVEKIT_API_KEY=server.api_key,
        LIVEKIT_API_SECRET=server.api_secret,
        TRANSCRIBER_STT_PROVIDER="tests.tone_stt:build",
        TRANSCRIBER_HTTP_PORT="0",
        TRANSCRIBER_LOAD_THRESHOLD="1",
        # tone speech is not speech to a VAD; gating is tested on real speech
        TRANSCRIBER_VAD_GATING="false",
        TRANSCRIBER_METRICS_PORT="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(overrides)
    return env


@pytest.fixture
def start_worker(
    livekit_server: LiveKitServer, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        worker = WorkerProcess(
            worker_env(livekit_server, **overrides), tmp_path / f"worker-{len(workers)}.log"
        )
        workers.append(worker)
        worker.wait_registered()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def agent_name() -> str:
    """A fresh agent name per test, so workers of other tests never take its jobs."""
    return f"transcriber-{uuid.uuid4().hex[:6]}"
