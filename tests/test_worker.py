"""The load a worker reports to LiveKit, which decides where rooms go: a job process that
was killed takes its tracks out of it at once (the end-to-end side, with a real worker and
server, is in test_failures_e2e)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from transcriber import metrics, worker
from transcriber.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def job_process_killed_while_captioning(metrics_dir: Path, tracks: int) -> int:
    """A process that counts `tracks` captioned tracks, then dies without decrementing
    them (as SIGKILL or the OOM killer leave it); returns its pid."""
    code = (
        "import os\n"
        "from transcriber import metrics\n"
        f"metrics.ACTIVE_TRACKS.inc({tracks})\n"
        "os._exit(0)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    assert child.wait(30) == 0
    return child.pid


@dataclass
class _Server:
    """What `worker_load` reads of the AgentServer: the jobs it runs."""

    active_jobs: list[object]


def test_a_killed_jobs_tracks_leave_the_reported_load_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(worker, "cpu_load", lambda server: 0.0)
    settings = Settings(
        livekit_url="ws://127.0.0.1:7880", livekit_api_key="k", livekit_api_secret="s",
        max_rooms=20, max_tracks=4,
    )
    killed = job_process_killed_while_captioning(tmp_path, tracks=3)
    job_process_killed_while_captioning(tmp_path, tracks=1)  # stands for the job still running
    server = _Server(active_jobs=[object()])

    assert worker.worker_load(server, settings) == 1.0  # type: ignore[arg-type]
    metrics.forget_process(killed)  # what Takeover does when a job process exits
    assert worker.active_tracks_in_worker() == 1
    assert worker.worker_load(server, settings) == 0.25  # type: ignore[arg-type]
