from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .livekit_server import API_SECRET, ROOT, LiveKitServer, RedisServer, free_port


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
    _FINISHED.append(session)


_FINISHED: list[pytest.Session] = []


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with the run's status before the interpreter finalizes. The rtc SDK's native
    runtime lives in this process (the test participants) and its threads can still call
    back into Python while the interpreter shuts down, which aborts it (SIGABRT, exit 134)
    after every test has passed. By now every fixture is torn down and the report written;
    a crash during the run still shows, with pytest's faulthandler stacks."""
    if _FINISHED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(_FINISHED[0].exitstatus))


_TEST_SECRETS: set[str] = set()


class WorkerProcess:
    """`python -m transcriber start` (or another agent worker `command`) as a real
    subprocess in its own session, so its whole tree can be signalled; logs kept."""

    def __init__(
        self, env: dict[str, str], log_path: Path, command: list[str] | None = None
    ) -> None:
        self.log_path = log_path
        self.metrics_port = int(env.get("TRANSCRIBER_METRICS_PORT") or 0)
        """Where an operator sees the worker: `/ready` and `/metrics` (0: not served)."""
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

    def status(self, path: str) -> tuple[int, str] | None:
        """(HTTP status, body) of the worker's status server, None while it is not up."""
        assert self.metrics_port, "set TRANSCRIBER_METRICS_PORT to watch the worker"
        try:
            url = f"http://127.0.0.1:{self.metrics_port}{path}"
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return None

    def registered(self) -> bool:
        if not self.metrics_port:  # another agent (the benchmarks' baseline): its log is all
            return "registered worker" in self.log()
        return (answer := self.status("/ready")) is not None and answer[0] == 200

    def wait_registered(self, timeout: float = 60.0) -> None:
        """Until `/ready` says the worker is registered with LiveKit."""
        deadline = time.monotonic() + timeout
        while not self.registered():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not register:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def metric(self, name: str) -> float:
        """A metric on `/metrics`, summed over its labels and the job processes."""
        answer = self.status("/metrics")
        assert answer is not None and answer[0] == 200, "no /metrics"
        return _metric_in(answer[1], name)

    async def wait_tracks(self, count: int, *, timeout: float = 30) -> None:
        """Until the worker captions `count` tracks (`transcriber_active_tracks`): words
        said before are heard by no one (the transcriber joins hidden, so the speaker's
        SDK is not told of its subscription)."""
        deadline = time.monotonic() + timeout
        while (
            (answer := self.status("/metrics")) is None  # not up yet, or a scrape that failed
            or answer[0] != 200
            or _metric_in(answer[1], "transcriber_active_tracks") != count
        ):
            if time.monotonic() > deadline:
                raise AssertionError(f"not captioning {count} tracks:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)  # its audio stream opens right after the count goes up

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


def _metric_in(exposition: str, name: str) -> float:
    """A metric in a Prometheus text exposition, summed over its labels."""
    return sum(
        float(line.rpartition(" ")[2])
        for line in exposition.splitlines()
        if line.split("{")[0].split(" ")[0] == name
    )


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
        TRANSCRIBER_METRICS_PORT=str(free_port()),
        PYTHONPATH=str(ROOT),
        PYTHONFAULTHANDLER="1",  # a crash leaves every thread's stack in the worker's log
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
