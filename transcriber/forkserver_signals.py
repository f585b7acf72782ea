"""Keeps the job processes' forkserver alive through a SIGTERM sent to the whole group.

livekit-agents starts job processes from a multiprocessing forkserver, which ignores
SIGINT but not SIGTERM. A stop that signals every process of the worker (systemd's
default `KillMode=control-group`, `kill -TERM -<pgid>`) killed the forkserver first; the
worker then cannot read its idle job processes' exit codes and logs each as an ERROR
"exit code 255". Ignored here, the forkserver exits as usual once the worker has closed
its job processes (it stops when the worker's end of its pipe closes).

Imported in the forkserver only, as one of `AgentServer(preload_modules=...)`.
"""

from __future__ import annotations

import signal
import sys

if sys.argv == ["-c"] and "multiprocessing.forkserver" in sys.modules:  # in the forkserver
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
