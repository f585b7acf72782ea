"""One model, many streams: decode requests queued fairly and run off the event loop.

Each stream has at most one request waiting; a newer one from the same stream takes the
older one's place in the queue (and its turn), because only the freshest audio matters.
Streams are served in turn, so a busy speaker cannot starve a quiet one, and requests
marked urgent (a final at the end of an utterance) go before interim ones.

Decoding runs in worker threads, as many as the backend can decode at once; CTranslate2
releases the GIL while it computes, so the event loops that submit requests keep running.
The queue is guarded by a lock rather than tied to an event loop, because agent jobs may
run in threads with loops of their own.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .backend import Lead, Word
from .log import logger


class Backend(Protocol):
    def transcribe(
        self, audio: np.ndarray, prompt: str = "", *, lead: Lead | None = None
    ) -> list[Word]: ...


class SchedulerFull(Exception):
    """Too many streams are waiting for the model: this process is past its capacity.

    Only interim requests are refused: a final is worth the wait, and each stream has at
    most one waiting anyway.
    """


@dataclass(eq=False)
class _Request:
    audio: np.ndarray
    prompt: str
    lead: Lead | None
    urgent: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Word]]


class Scheduler:
    def __init__(
        self, load: Callable[[], Backend], *, workers: int = 1, max_waiting: int = 32
    ) -> None:
        """`load` builds the backend, in a worker thread; `workers` decodes run at once."""
        self._load = load
        self._workers = workers
        self._max_waiting = max_waiting
        self._queue: OrderedDict[Hashable, _Request] = OrderedDict()
        self._lock = threading.Condition()
        self._backend: Backend | None = None
        self._load_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(
        self,
        stream: Hashable,
        audio: np.ndarray,
        prompt: str = "",
        *,
        lead: Lead | None = None,
        urgent: bool = False,
    ) -> asyncio.Future[list[Word]]:
        """Queue a decode for `stream`; a request it still has waiting is cancelled.

        `prompt` and `lead` are passed to the backend's transcribe().
        """
        loop = asyncio.get_running_loop()
        request = _Request(audio, prompt, lead, urgent, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            replaced = self._queue.get(stream)
            if replaced is None and not urgent and len(self._queue) >= self._max_waiting:
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

    def _next(self) -> _Request | None:
        with self._lock:
            while not self._queue and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            stream = next((k for k, r in self._queue.items() if r.urgent), None)
            if stream is None:
                stream = next(iter(self._queue))
            return self._queue.pop(stream)

    def _work(self) -> None:
        while (request := self._next()) is not None:
            outcome: list[Word] | Exception
            try:
                backend = self.warm()
                outcome = backend.transcribe(request.audio, request.prompt, lead=request.lead)
            except Exception as e:
                logger.exception("whisper decode failed")
                outcome = e
            _settle(request, outcome)


def _settle(request: _Request, outcome: list[Word] | Exception | None) -> None:
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
