"""The room's caption stream: every caption of every track, in order, into every output.

Everything that consumes captions (the text-stream and legacy outputs with their history,
the transcript, translation) is a `CaptionSink`. Each sink reads through its own bounded
queue on its own task, so publishing a caption never waits for any sink, and a slow or
stalled sink never delays the others: while a sink is behind, a newer interim replaces the
waiting interim of its segment (the newest text is kept) and finals are never dropped —
up to `max_pending` of them waiting, past which a sink is broken and loses its oldest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from livekit.agents import utils

from . import metrics
from .captions import Caption

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParticipantJoined:
    """A participant joined (or rejoined): outputs with history send it to them, in order
    with the captions around it."""

    identity: str


StreamItem = Caption | ParticipantJoined


class CaptionSink:
    """One consumer of the room's captions. Methods run on the sink's own task, one at a
    time, in stream order; an exception is logged and the sink goes on with the next."""

    name = "sink"

    async def on_caption(self, caption: Caption) -> None:
        raise NotImplementedError

    async def on_participant_joined(self, identity: str) -> None:
        """Default: nothing to replay."""

    async def aclose(self) -> None:
        """After the last caption of the room: deliver or release what the sink holds."""


@dataclass(frozen=True, kw_only=True)
class StreamOptions:
    max_pending: int = 10_000
    """Items one sink may have waiting; only a broken sink gets there."""
    stall_after: float = 5.0
    """A sink busy with one item this long is reported stalled (once)."""
    drain_timeout: float = 10.0
    """At close, how long each sink gets to take what is waiting."""


class _Entry:
    __slots__ = ("item", "end")

    def __init__(self, item: StreamItem | None, *, end: bool = False) -> None:
        self.item = item
        """None once superseded."""
        self.end = end


class SinkQueue:
    """Bounded, order-keeping queue that coalesces a segment's waiting interims."""

    def __init__(self, max_pending: int) -> None:
        self._max = max_pending
        self._entries: deque[_Entry] = deque()
        self._interims: dict[str, _Entry] = {}
        self._ready = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, item: StreamItem | None) -> None:
        """`None` ends the queue."""
        if isinstance(item, Caption):
            waiting = self._interims.pop(item.segment_id, None)
            if waiting is not None:
                if not item.final:
                    waiting.item = item  # superseded: keep its place, take the newest text
                    self._interims[item.segment_id] = waiting
                    return
                waiting.item = None  # the final supersedes it
        entry = _Entry(item, end=item is None)
        self._entries.append(entry)
        if isinstance(item, Caption) and not item.final:
            self._interims[item.segment_id] = entry
        if len(self._entries) > self._max:
            self._drop_oldest()
        self._ready.set()

    def _drop_oldest(self) -> None:
        entry = self._entries.popleft()
        if isinstance(entry.item, Caption) and not entry.item.final:
            self._interims.pop(entry.item.segment_id, None)
        self.dropped += 1

    async def get(self) -> StreamItem | None:
        while True:
            while not self._entries:
                self._ready.clear()
                await self._ready.wait()
            entry = self._entries.popleft()
            item = entry.item
            if entry.end:
                return None
            if isinstance(item, Caption) and self._interims.get(item.segment_id) is entry:
                del self._interims[item.segment_id]
            if item is not None:
                return item


class _SinkRunner:
    def __init__(
        self,
        sink: CaptionSink,
        options: StreamOptions,
        log_extra: dict[str, str],
        may_publish: Callable[[], bool],
    ):
        self.sink = sink
        self._may_publish = may_publish
        self.queue = SinkQueue(options.max_pending)
        self.busy_since: float | None = None
        self.stalled = False
        self._log_extra = {**log_extra, "sink": sink.name}
        self._reported_drops = 0
        self.task = asyncio.create_task(self._run(), name=f"caption-sink-{sink.name}")

    async def _run(self) -> None:
        while (item := await self.queue.get()) is not None:
            if not self._may_publish():
                continue  # queued before this process froze and lost the room: never sent
            self.busy_since = time.monotonic()
            try:
                if isinstance(item, Caption):
                    await self.sink.on_caption(item)
                else:
                    await self.sink.on_participant_joined(item.identity)
            except Exception:
                logger.exception("caption output failed on one item", extra=self._log_extra)
            self.busy_since = None

    def check(self, now: float, stall_after: float) -> None:
        """Reports a stall once when it starts and once when it ends (log and gauge);
        counts drops."""
        stalled = self.busy_since is not None and now - self.busy_since > stall_after
        if stalled and not self.stalled:
            metrics.OUTPUTS_STALLED.labels(sink=self.sink.name).inc()
            logger.warning(
                "caption output %s is stalled; live captions go on without it (%d waiting)",
                self.sink.name,
                len(self.queue),
                extra=self._log_extra,
            )
        elif self.stalled and not stalled:
            metrics.OUTPUTS_STALLED.labels(sink=self.sink.name).dec()
            logger.info("caption output %s recovered", self.sink.name, extra=self._log_extra)
        self.stalled = stalled
        if self.queue.dropped > self._reported_drops:
            metrics.CAPTIONS_DROPPED.labels(sink=self.sink.name).inc(
                self.queue.dropped - self._reported_drops
            )
            if self._reported_drops == 0:
                logger.error(
                    "caption output %s is too far behind: dropping its oldest captions",
                    self.sink.name,
                    extra=self._log_extra,
                )
            self._reported_drops = self.queue.dropped


class CaptionStream:
    """The room-level stream; owned by the room manager. `publish` never blocks."""

    def __init__(
        self,
        sinks: list[CaptionSink],
        options: StreamOptions | None = None,
        *,
        log_extra: dict[str, str] | None = None,
        may_publish: Callable[[], bool] = lambda: True,
    ) -> None:
        """`may_publish` says whether this process still holds the room (`room_lease`):
        captions are checked on entry and again right before each sink takes them."""
        self._opts = options or StreamOptions()
        self._may_publish = may_publish
        self._runners = [_SinkRunner(s, self._opts, log_extra or {}, may_publish) for s in sinks]
        self._closed = False
        self._watch = asyncio.create_task(self._watch_sinks(), name="caption-sinks-watch")

    @property
    def sinks(self) -> list[CaptionSink]:
        return [runner.sink for runner in self._runners]

    def publish(self, caption: Caption) -> None:
        if self._closed or not self._may_publish():
            return
        metrics.CAPTIONS_PUBLISHED.labels(kind="final" if caption.final else "interim").inc()
        for runner in self._runners:
            runner.queue.put(caption)

    def participant_joined(self, identity: str) -> None:
        if self._closed:
            return
        for runner in self._runners:
            runner.queue.put(ParticipantJoined(identity))

    async def aclose(self) -> None:
        """Lets every sink take what is waiting (bounded), then closes each."""
        if self._closed:
            return
        self._closed = True
        for runner in self._runners:
            runner.queue.put(None)
        tasks = [runner.task for runner in self._runners]
        _, late = await asyncio.wait(tasks, timeout=self._opts.drain_timeout)
        for runner in self._runners:
            if runner.task in late:
                logger.warning(
                    "caption output %s did not finish in time, closing it",
                    runner.sink.name,
                    extra=runner._log_extra,
                )
        await utils.aio.cancel_and_wait(self._watch, *late)
        for runner in self._runners:
            try:
                await runner.sink.aclose()
            except Exception:
                logger.exception("caption output failed to close", extra=runner._log_extra)

    async def _watch_sinks(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for runner in self._runners:
                runner.check(now, self._opts.stall_after)
