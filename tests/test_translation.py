"""The translation lanes: what is translated into one language, in which order, how often."""

from __future__ import annotations

import asyncio
import time

from transcriber.captions import Caption
from transcriber.translation import TranslationLane, TranslationOptions, translated_segment_id

from .test_caption_stream import caption


class Recorder:
    """A translation job that takes `delay` seconds and records what it was given."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.done: list[tuple[float, str, bool]] = []

    async def __call__(self, target: str, item: Caption, lane: TranslationLane) -> None:
        await asyncio.sleep(self.delay)
        self.done.append((time.monotonic(), item.text, item.final))


async def settle(lane: TranslationLane, seconds: float = 0.1) -> None:
    await asyncio.sleep(seconds)
    await lane.drain(5)


async def test_every_final_is_translated_once_in_order() -> None:
    job = Recorder()
    lane = TranslationLane("fr", TranslationOptions(concurrency=1), job)
    for i in range(5):
        lane.put(caption(f"SG_{i}", f"final {i}", final=True))
    await settle(lane)
    assert [text for _, text, _ in job.done] == [f"final {i}" for i in range(5)]
    await lane.aclose()


async def test_interims_are_ignored_unless_the_sink_asks_and_then_throttled_per_segment() -> None:
    job = Recorder()
    options = TranslationOptions(interims=True, interim_interval=0.5, concurrency=1)
    lane = TranslationLane("fr", options, job)
    for i in range(10):  # ten interims in one second: at most one request per 0.5 s
        lane.put(caption("SG_a", f"interim {i}", final=False))
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.6)
    times = [t for t, _, final in job.done if not final]
    assert 2 <= len(times) <= 3, job.done
    assert all(b - a >= 0.45 for a, b in zip(times, times[1:], strict=False))
    assert job.done[-1][1] == "interim 9"  # the newest text, not a stale one
    await lane.aclose()


async def test_a_final_supersedes_its_waiting_interim_and_late_interims_are_dropped() -> None:
    job = Recorder(delay=0.2)
    lane = TranslationLane("fr", TranslationOptions(interims=True, concurrency=1), job)
    lane.put(caption("SG_a", "one", final=False))
    await asyncio.sleep(0.01)  # in flight
    lane.put(caption("SG_a", "one two", final=False))  # waits for its throttle
    lane.put(caption("SG_a", "one two three", final=True))
    lane.put(caption("SG_a", "one two three", final=False))  # a straggler after the final
    await settle(lane, 0.3)
    assert [(text, final) for _, text, final in job.done] == [
        ("one", False),
        ("one two three", True),
    ]
    assert lane.finalized("SG_a")
    await lane.aclose()


async def test_a_lane_far_behind_skips_its_oldest_finals() -> None:
    job = Recorder(delay=0.05)
    lane = TranslationLane("fr", TranslationOptions(concurrency=1, max_pending=3), job)
    lane.put(caption("SG_0", "final 0", final=True))
    await asyncio.sleep(0.01)  # in flight
    for i in range(1, 10):
        lane.put(caption(f"SG_{i}", f"final {i}", final=True))
    await settle(lane, 0.5)
    texts = [text for _, text, _ in job.done]
    assert texts[-3:] == ["final 7", "final 8", "final 9"]
    assert len(texts) == 4  # the one in flight, then the newest three
    await lane.aclose()


async def test_requests_into_one_language_run_concurrently() -> None:
    job = Recorder(delay=0.3)
    lane = TranslationLane("fr", TranslationOptions(concurrency=4), job)
    started = time.monotonic()
    for i in range(4):
        lane.put(caption(f"SG_{i}", f"final {i}", final=True))
    await settle(lane)
    assert len(job.done) == 4
    assert max(t for t, _, _ in job.done) - started < 0.6  # not one after another (1.2 s)
    await lane.aclose()


def test_a_translation_has_its_own_segment_id_per_language() -> None:
    assert translated_segment_id("SG_x", "fr") != translated_segment_id("SG_x", "de")
    assert translated_segment_id("SG_x", "fr") != "SG_x"
