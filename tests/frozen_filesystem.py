"""A filesystem a test can freeze: a small ext4 image on a loop device, mounted in the
test's directory. Frozen (`fsfreeze`), every write to it blocks in the kernel until it is
thawed, as on a hung network mount or a stuck disk; reads still work.

Needs root and loop devices (the test is skipped without them). A watchdog thaws it after
`max_frozen` seconds whatever happens to the test process, so no process stays stuck."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

_TOOLS = ("mkfs.ext4", "mount", "umount", "fsfreeze")


class FrozenFilesystem:
    def __init__(self, mountpoint: Path) -> None:
        self.path = mountpoint
        self._watchdog: subprocess.Popen[bytes] | None = None

    @classmethod
    def mount(cls, directory: Path, *, size_mb: int = 32) -> FrozenFilesystem:
        if os.geteuid() != 0 or not all(shutil.which(tool) for tool in _TOOLS):
            pytest.skip("freezing a filesystem needs root, mkfs.ext4, mount and fsfreeze")
        image, mountpoint = directory / "fs.img", directory / "fs"
        with open(image, "wb") as f:
            f.truncate(size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        mountpoint.mkdir()
        done = subprocess.run(
            ["mount", "-o", "loop,noatime", str(image), str(mountpoint)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a loop filesystem: {done.stderr.decode().strip()}")
        return cls(mountpoint)

    def freeze(self, *, max_frozen: float = 120.0) -> None:
        self._watchdog = subprocess.Popen(
            ["sh", "-c", f"sleep {max_frozen}; fsfreeze --unfreeze '{self.path}'"],
            start_new_session=True,
        )
        subprocess.run(["fsfreeze", "--freeze", str(self.path)], check=True)

    def thaw(self) -> None:
        if self._watchdog is None:
            return
        subprocess.run(["fsfreeze", "--unfreeze", str(self.path)], capture_output=True)
        os.killpg(self._watchdog.pid, signal.SIGKILL)
        self._watchdog.wait()
        self._watchdog = None

    def unmount(self) -> None:
        self.thaw()
        subprocess.run(["umount", "--lazy", str(self.path)], capture_output=True)
