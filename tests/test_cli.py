"""`python -m transcriber`: livekit-agents' commands and flags, and a start that fails fast."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from .conftest import WorkerProcess, worker_env
from .livekit_server import ROOT, LiveKitServer
from .participants import CaptionListener, Speaker
from .test_worker_e2e import dispatch, wait_transcriber
from .tone_stt import utterance_audio, write_wav

NO_SETTINGS = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}


def transcriber(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "transcriber", *args],
        cwd=cwd,  # no .env there
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_the_commands_and_options_without_any_settings(tmp_path: Path) -> None:
    top = transcriber("--help", env=NO_SETTINGS, cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    for command in ("start", "dev", "connect", "download-files"):
        assert command in top.stdout
    start = transcriber("start", "--help", env=NO_SETTINGS, cwd=tmp_path)
    assert start.returncode == 0, start.stderr
    for flag in ("--url", "--api-key", "--api-secret", "--log-level"):
        assert flag in start.stdout
    assert "--room" in transcriber("connect", "--help", env=NO_SETTINGS, cwd=tmp_path).stdout


def test_an_unknown_command_prints_the_usage_and_exits_2(tmp_path: Path) -> None:
    result = transcriber("serve", env=NO_SETTINGS, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m transcriber")
    assert "serve" in result.stderr


def test_a_wrong_secret_stops_the_start_at_once_with_one_line(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    wrong = "a-wrong-secret-of-more-than-32-bytes-0123456789"
    env = worker_env(livekit_server, LIVEKIT_API_SECRET=wrong)
    started = time.monotonic()
    result = transcriber("start", env=env, cwd=tmp_path)
    took = time.monotonic() - started
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "LIVEKIT_API_KEY" in lines[0] and "LIVEKIT_API_SECRET" in lines[0]
    assert wrong not in result.stderr + result.stdout
    # livekit-agents alone retried a refused key for 135 s and then exited 0
    assert took < 60, f"took {took:.0f} s"


async def test_flags_win_over_the_environment_in_every_process(
    livekit_server: LiveKitServer, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    """The job processes use the flags' credentials too: the transcriber joins and captions."""
    env = worker_env(
        livekit_server,
        LIVEKIT_URL="ws://127.0.0.1:9",
        LIVEKIT_API_KEY="not-the-key",
        LIVEKIT_API_SECRET=f"not-the-secret-{uuid.uuid4().hex}",
        TRANSCRIBER_AGENT_NAME=agent_name,
    )
    flags = ["--url", livekit_server.url, "--api-key", livekit_server.api_key]
    flags += ["--api-secret", livekit_server.api_secret, "--log-level", "info"]
    command = [sys.executable, "-m", "transcriber", "start", *flags]
    worker = WorkerProcess(env, tmp_path / "worker.log", command=command)
    try:
        worker.wait_registered()
        listener = await CaptionListener(livekit_server, room_name).join()
        alice = await Speaker(livekit_server, room_name, "alice").join()
        await dispatch(livekit_server, agent_name, room_name)
        await wait_transcriber(livekit_server, room_name)
        await worker.wait_tracks(1)
        await alice.play(write_wav(tmp_path / "a.wav", utterance_audio(["lima", "mike"])))
        await listener.wait_for(lambda: listener.finals("alice") == ["lima mike"])
        for who in (alice, listener):
            await who.leave()
    finally:
        worker.stop()


async def test_connect_joins_one_room_without_a_dispatch(
    livekit_server: LiveKitServer, room_name: str, tmp_path: Path
) -> None:
    listener = await CaptionListener(livekit_server, room_name).join()
    alice = await Speaker(livekit_server, room_name, "alice").join()
    command = [sys.executable, "-m", "transcriber", "connect", "--room", room_name]
    worker = WorkerProcess(worker_env(livekit_server), tmp_path / "connect.log", command=command)
    try:
        await wait_transcriber(livekit_server, room_name, timeout=60)
        await worker.wait_tracks(1)
        await alice.play(write_wav(tmp_path / "a.wav", utterance_audio(["kilo", "papa"])))
        await listener.wait_for(lambda: listener.finals("alice") == ["kilo papa"])
        for who in (alice, listener):
            await who.leave()
    finally:
        worker.stop()
