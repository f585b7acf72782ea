"""The room's caption stream: every sink gets every final in order; none slows another."""

from __future__ import annotations

import asyncio
import time

from transcriber.caption_stream import CaptionSink, CaptionStream, SinkQueue, StreamOptions
from transcriber.captions import Caption


def caption(segment: str, text: str, *, final: bool = False) -> Caption:
    now = time.time()
    return Caption(
        segment_id=segment,
        speaker_identity="alice",
        speaker_name="Alice",
        track_sid="TR_1",
        language="en",
        final=final,
        start=now,
        end=now,
        text=text,
    )


class RecordingSink(CaptionSink):
    name = "recording"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.captions: list[tuple[Caption, float]] = []
        self.joined: list[str] = []
        self.closed = False

    async def on_caption(self, c: Caption) -> None:
        await asyncio.sleep(self.delay)
        self.captions.append((c, time.monotonic()))

    async def on_participant_joined(self, identity: str) -> None:
        self.joined.append(identity)

    async def aclose(self) -> None:
        self.closed = True


class BlockedSink(CaptionSink):
    """A sink that never returns: a webhook that hangs, a full disk."""

    name = "blocked"

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def on_caption(self, c: Caption) -> None:
        self.started.set()
        await asyncio.Event().wait()


async def test_waiting_interims_of_a_segment_are_replaced_by_the_newest() -> None:
    queue = SinkQueue(max_pending=100)
    for text in ("a", "a b", "a b c"):
        queue.put(caption("S1", text))
    queue.put(caption("S2", "x"))
    queue.put(caption("S1", "a b c d"))
    queue.put(None)
    taken = []
    while (item := await queue.get()) is not None:
        assert isinstance(item, Caption)
        taken.append((item.segment_id, item.text))
    assert taken == [("S1", "a b c d"), ("S2", "x")]


async def test_a_final_supersedes_its_waiting_interim_and_finals_are_all_kept() -> None:
    queue = SinkQueue(max_pending=100)
    queue.put(caption("S1", "a"))
    queue.put(caption("S1", "a b", final=True))
    queue.put(caption("S2", "c", final=True))
    queue.put(caption("S3", "d", final=True))
    queue.put(None)
    taken = []
    while (item := await queue.get()) is not None:
        assert isinstance(item, Caption)
        taken.append((item.text, item.final))
    assert taken == [("a b", True), ("c", True), ("d", True)]


async def test_a_broken_sink_past_its_bound_loses_its_oldest() -> None:
    queue = SinkQueue(max_pending=3)
    for i in range(5):
        queue.put(caption(f"S{i}", str(i), final=True))
    assert len(queue) == 3 and queue.dropped == 2


async def test_a_blocked_sink_delays_no_other_sink_and_the_others_get_every_final() -> None:
    blocked, fast = BlockedSink(), RecordingSink()
    stream = CaptionStream(
        [blocked, fast], StreamOptions(stall_after=0.2, drain_timeout=0.5)
    )
    published = {}
    for i in range(50):
        c = caption(f"S{i}", f"final {i}", final=True)
        published[c.segment_id] = time.monotonic()
        stream.publish(c)
        await asyncio.sleep(0.005)
    await asyncio.wait_for(blocked.started.wait(), 1)
    await asyncio.sleep(0.1)
    assert [c.text for c, _ in fast.captions] == [f"final {i}" for i in range(50)]
    delays = [at - published[c.segment_id] for c, at in fast.captions]
    assert max(delays) < 0.05, f"a blocked sink delayed another by {max(delays):.3f} s"
    await stream.aclose()  # bounded, although one sink never returns
    assert fast.closed


async def test_joins_reach_sinks_in_order_with_captions() -> None:
    sink = RecordingSink()
    order: list[str] = []

    class Ordered(RecordingSink):
        async def on_caption(self, c: Caption) -> None:
            order.append(c.text)

        async def on_participant_joined(self, identity: str) -> None:
            order.append(f"joined {identity}")

    stream = CaptionStream([sink, Ordered()])
    stream.publish(caption("S1", "one", final=True))
    stream.participant_joined("bob")
    stream.publish(caption("S2", "two", final=True))
    await stream.aclose()
    assert order == ["one", "joined bob", "two"]
    assert sink.joined == ["bob"]


async def test_a_sink_that_fails_on_one_caption_goes_on_with_the_next() -> None:
    class Flaky(RecordingSink):
        async def on_caption(self, c: Caption) -> None:
            if c.text == "bad":
                raise RuntimeError("bug in one sink")
            await super().on_caption(c)

    flaky = Flaky()
    stream = CaptionStream([flaky])
    for text in ("one", "bad", "two"):
        stream.publish(caption(text, text, final=True))
    await stream.aclose()
    assert [c.text for c, _ in flaky.captions] == ["one", "two"]
