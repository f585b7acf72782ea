"""Sampling a process and everything it started (livekit-agents runs jobs in children):
CPU per process and per thread group, memory, and which processes serve rooms. Shared by
the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from tests.livekit_server import LiveKitServer


def process_tree(pid: int) -> list[psutil.Process]:
    """The process first, then its descendants; empty once it has exited."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) so far, per process of the tree."""
    seconds = {}
    for p in process_tree(pid):
        try:
            t = p.cpu_times()
            seconds[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return seconds


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two `tree_cpu` readings, by processes alive at the second."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def process_cpu(process: psutil.Process) -> float:
    """CPU seconds of one process and its waited-for children."""
    try:
        t = process.cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except psutil.NoSuchProcess:
        return 0.0


THREAD_GROUPS = ("loop", "sdk", "webrtc")


def _thread_group(process: psutil.Process, thread_id: int) -> str:
    """`loop`: a process's main thread, its event loop (the job's Python work); `sdk`: the
    rtc SDK's Rust runtime (audio streams, resampling, and the FFI callback that hands
    each event to Python); `webrtc`: the rest (audio decoding driven every 10 ms by the
    audio device thread, networking)."""
    if thread_id == process.pid:
        return "loop"
    try:
        name = Path(f"/proc/{process.pid}/task/{thread_id}/comm").read_text().strip()
    except OSError:
        name = ""
    return "sdk" if name.startswith("tokio-rt") else "webrtc"


def tree_thread_cpu(pid: int) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, thread id) -> (group, CPU seconds so far) for every thread of the tree."""
    seconds = {}
    for p in process_tree(pid):
        try:
            for thread in p.threads():
                group = _thread_group(p, thread.id)
                seconds[(p.pid, thread.id)] = (group, thread.user_time + thread.system_time)
        except psutil.NoSuchProcess:
            pass
    return seconds


def cores_by_group(
    before: dict[tuple[int, int], tuple[str, float]],
    after: dict[tuple[int, int], tuple[str, float]],
    seconds: float,
) -> dict[str, float]:
    cores = dict.fromkeys(THREAD_GROUPS, 0.0)
    for key, (group, cpu) in after.items():
        cores[group] += cpu - before.get(key, (group, 0.0))[1]
    return {group: round(value / seconds, 4) for group, value in cores.items()}


def room_processes(pid: int, server: LiveKitServer) -> set[int]:
    """The worker's main process and its job processes (those connected to the server).
    Left out: the forkserver and idle processes, whose private memory shrinks whenever
    the forkserver forks a new idle process (pages become shared), whatever the tracks."""
    port = int(server.url.rsplit(":", 1)[1])
    counted = {pid}
    for p in process_tree(pid)[1:]:
        try:
            if any(c.raddr and c.raddr.port == port for c in p.net_connections(kind="tcp")):
                counted.add(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return counted


def tree_memory(pid: int) -> dict[int, tuple[float, float]]:
    """pid -> (PSS, USS) in MB for every process of the tree (RSS for both where the
    kernel does not give PSS)."""
    memory = {}
    for p in process_tree(pid):
        try:
            try:
                info = p.memory_full_info()
                memory[p.pid] = (info.pss / 2**20, info.uss / 2**20)
            except (psutil.AccessDenied, AttributeError):
                rss = p.memory_info().rss / 2**20
                memory[p.pid] = (rss, rss)
        except psutil.NoSuchProcess:
            pass
    return memory
