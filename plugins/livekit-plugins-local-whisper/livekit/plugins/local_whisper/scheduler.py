"""One model, many streams: decode requests queued fairly and run off the event loop.

Each stream has at most one request waiting; a newer one from the same stream takes the
older one's place in the queue (and its turn), because only the freshest audio matters.
Streams are served in turn within a priority, so a busy speaker cannot starve a quiet one:
finals go first, then the first interims of utterances that show nothing yet, then the rest.

A worker takes the requests that are due as one batch (its share of the queue, at most
`max_batch`): the model encodes and decodes a batch in one call, which costs much less
than one call per stream. Decoding runs in worker threads, as many as the backend can run
at once; CTranslate2 releases the GIL while it computes, so the event loops that submit
requests keep running.
The queue is guarded by a lock rather than tied to an event loop, because agent jobs may
run in threads with loops of their own.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from .backend import Job, Transcript
from .log import logger


class Backend(Protocol):
    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript]: ...


class Priority(IntEnum):
    """Which waiting requests go first: the lowest, in turn within each."""

    FINAL = 0
    """The end of an utterance (or a final at a pause): what readers keep."""
    OPENING = 1
    """An interim of an utterance that shows nothing yet: its reader waits the most."""
    INTERIM = 2


class SchedulerFull(Exception):
    """Too many streams are waiting for the model: this process is past its capacity.

    Only interim requests are refused: a final is worth the wait, and each stream has at
    most one waiting anyway.
    """


@dataclass(eq=False)
class _Request:
    job: Job
    priority: Priority
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Transcript]


class Scheduler:
    def __init__(
        self,
        load: Callable[[], Backend],
        *,
        workers: int = 1,
        max_waiting: int = 32,
        max_batch: int = 8,
    ) -> None:
        """`load` builds the backend, in a worker thread; `workers` batches run at once."""
        self._load = load
        self._workers = workers
        self._max_waiting = max_waiting
        self._max_batch = max_batch
        self._queue: OrderedDict[Hashable, _Request] = OrderedDict()
        self._lock = threading.Condition()
        self._backend: Backend | None = None
        self._load_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._busy = 0
        """Workers decoding a batch now."""

    def submit(
        self,
        stream: Hashable,
        job: Job,
        *,
        priority: Priority = Priority.INTERIM,
    ) -> asyncio.Future[Transcript]:
        """Queue a decode for `stream`; a request it still has waiting is cancelled."""
        loop = asyncio.get_running_loop()
        request = _Request(job, priority, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            replaced = self._queue.get(stream)
            full = len(self._queue) >= self._max_waiting
            if replaced is None and priority != Priority.FINAL and full:
                raise SchedulerFull(f"{len(self._queue)} streams are already waiting")
            self._queue[stream] = request
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._work, name=f"local-whisper-{i}", daemon=True)
                    for i in range(self._workers)
                ]
                for thread in self._threads:
                    thread.start()
            self._lock.notify()
        if replaced is not None:
            _settle(replaced, None)
        return request.future

    def discard(self, stream: Hashable) -> None:
        """Drop the request `stream` has waiting, if any, as when the stream closes."""
        with self._lock:
            request = self._queue.pop(stream, None)
        if request is not None:
            _settle(request, None)

    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)

    def warm(self) -> Backend:
        """Load the model now, in the calling thread, instead of on the first request."""
        with self._load_lock:
            if self._backend is None:
                self._backend = self._load()
            return self._backend

    def close(self) -> None:
        """Stop the workers once their running decodes are done; waiting ones are cancelled."""
        with self._lock:
            self._closed = True
            waiting = list(self._queue.values())
            self._queue.clear()
            self._lock.notify_all()
        for request in waiting:
            _settle(request, None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def _next(self) -> list[_Request]:
        """The next batch: by priority, in turn within each; this worker's share."""
        with self._lock:
            while not self._queue and not self._closed:
                self._lock.wait()
            if self._closed:
                return []
            # share the queue with the other idle workers, rather than one taking it all
            idle = self._workers - self._busy
            size = min(self._max_batch, -(-len(self._queue) // max(idle, 1)))
            self._busy += 1
            streams = sorted(self._queue, key=lambda k: self._queue[k].priority)[:size]
            return [self._queue.pop(stream) for stream in streams]

    def _work(self) -> None:
        while batch := self._next():
            try:
                outcomes: Sequence[Transcript | Exception] = self._decode(batch)
            except Exception:
                # one stream's bad request must not fail the others: decode them one by one
                outcomes = [self._decode_alone(request) for request in batch]
            with self._lock:
                self._busy -= 1
            for request, outcome in zip(batch, outcomes, strict=True):
                _settle(request, outcome)

    def _decode(self, batch: list[_Request]) -> list[Transcript]:
        return self.warm().transcribe_batch([r.job for r in batch])

    def _decode_alone(self, request: _Request) -> Transcript | Exception:
        try:
            return self._decode([request])[0]
        except Exception as e:
            logger.exception("whisper decode failed")
            return e


def _settle(request: _Request, outcome: Transcript | Exception | None) -> None:
    """Give the request its words or error, or cancel it (None), on its own event loop."""

    def apply() -> None:
        future = request.future
        if future.done():
            return
        if outcome is None:
            future.cancel()
        elif isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    try:
        on_its_loop = asyncio.get_running_loop() is request.loop
    except RuntimeError:
        on_its_loop = False
    if on_its_loop:
        apply()
        return
    try:
        request.loop.call_soon_threadsafe(apply)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more
