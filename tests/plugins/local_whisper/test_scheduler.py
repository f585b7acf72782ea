"""The shared model's queue, with a stand-in backend the test can hold and release."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from livekit.plugins.local_whisper import Lead, Scheduler, SchedulerFull, Word


class GatedBackend:
    """Records what it decodes; each decode waits until the test opens the gate."""

    def __init__(self) -> None:
        self.decoded: list[str] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def transcribe(
        self, audio: np.ndarray, prompt: str = "", *, lead: Lead | None = None
    ) -> list[Word]:
        self.started.set()
        self.gate.wait(timeout=10)
        if prompt == "fail":
            raise RuntimeError("the model broke")
        self.decoded.append(prompt)
        return [Word(" " + prompt, 0.0, 0.5, 1.0)]


@pytest.fixture
def backend() -> GatedBackend:
    return GatedBackend()


@pytest.fixture
def scheduler(backend: GatedBackend):  # type: ignore[no-untyped-def]
    scheduler = Scheduler(lambda: backend, max_waiting=3)
    yield scheduler
    backend.gate.set()
    scheduler.close()


AUDIO = np.zeros(1600, np.float32)


async def started(backend: GatedBackend) -> None:
    """Until the worker has picked up a request and is holding it at the gate."""
    await asyncio.to_thread(backend.started.wait, 10)
    backend.started.clear()


async def test_a_newer_request_from_a_stream_replaces_its_waiting_one(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    busy = scheduler.submit("a", AUDIO, "a1")
    await started(backend)
    older = scheduler.submit("b", AUDIO, "b1")
    newer = scheduler.submit("b", AUDIO, "b2")
    backend.gate.set()

    assert (await busy)[0].text == " a1"
    assert (await newer)[0].text == " b2"
    assert older.cancelled()
    assert backend.decoded == ["a1", "b2"]


async def test_streams_are_served_in_turn(scheduler: Scheduler, backend: GatedBackend) -> None:
    first = scheduler.submit("a", AUDIO, "a1")
    await started(backend)
    others = [scheduler.submit("b", AUDIO, "b1"), scheduler.submit("c", AUDIO, "c1")]
    backend.gate.set()
    await first
    # "a" asks again right away, but "b" and "c" were waiting before it
    again = scheduler.submit("a", AUDIO, "a2")
    await asyncio.gather(again, *others)

    assert backend.decoded == ["a1", "b1", "c1", "a2"]


async def test_a_final_goes_before_waiting_interims(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    busy = scheduler.submit("a", AUDIO, "a1")
    await started(backend)
    interim = scheduler.submit("b", AUDIO, "b-interim")
    final = scheduler.submit("c", AUDIO, "c-final", urgent=True)
    backend.gate.set()
    await asyncio.gather(busy, interim, final)

    assert backend.decoded == ["a1", "c-final", "b-interim"]


async def test_the_queue_refuses_streams_beyond_its_bound(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    busy = scheduler.submit("a", AUDIO, "a1")
    await started(backend)
    waiting = [scheduler.submit(name, AUDIO, name) for name in ("b", "c", "d")]

    with pytest.raises(SchedulerFull):
        scheduler.submit("e", AUDIO, "e")
    # a stream that already waits may still replace its request, and finals always queue
    waiting.append(scheduler.submit("b", AUDIO, "b2"))
    waiting.append(scheduler.submit("f", AUDIO, "f-final", urgent=True))

    backend.gate.set()
    await asyncio.gather(busy, *waiting[1:])
    assert "f-final" in backend.decoded


async def test_a_failed_decode_reaches_the_caller(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    backend.gate.set()
    with pytest.raises(RuntimeError, match="the model broke"):
        await scheduler.submit("a", AUDIO, "fail")
    assert (await scheduler.submit("a", AUDIO, "ok"))[0].text == " ok"


async def test_the_event_loop_runs_while_the_model_decodes(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    decoding = scheduler.submit("a", AUDIO, "a1")
    await started(backend)
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 5 and not decoding.done()

    backend.gate.set()
    await decoding


async def test_a_closed_stream_leaves_nothing_behind_in_the_queue(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    busy = scheduler.submit("a", AUDIO, "a1")
    await started(backend)
    dropped = scheduler.submit("b", AUDIO, "b1")
    scheduler.discard("b")
    backend.gate.set()
    await busy

    assert dropped.cancelled()
    assert scheduler.waiting() == 0
    assert backend.decoded == ["a1"]


def test_several_workers_decode_at_once() -> None:
    both_running = threading.Barrier(2, timeout=10)

    class Together(GatedBackend):
        def transcribe(
            self, audio: np.ndarray, prompt: str = "", *, lead: Lead | None = None
        ) -> list[Word]:
            both_running.wait()  # only passes when two decodes run at the same time
            return []

    scheduler = Scheduler(Together, workers=2)

    async def main() -> None:
        await asyncio.gather(scheduler.submit("a", AUDIO), scheduler.submit("b", AUDIO))

    try:
        asyncio.run(main())
    finally:
        scheduler.close()
