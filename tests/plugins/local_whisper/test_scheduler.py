"""The shared model's queue, with a scripted backend the test can hold and release."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from livekit.plugins.local_whisper import Job, Priority, Scheduler, SchedulerFull, Transcript, Word


class GatedBackend:
    """Records what it decodes, batch by batch; each batch waits for the test's gate.

    A job's prompt names it; the prompt "fail" makes the batch holding it fail.
    """

    def __init__(self) -> None:
        self.decoded: list[str] = []
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript]:
        self.started.set()
        self.gate.wait(timeout=10)
        if any(job.prompt == "fail" for job in jobs):
            raise RuntimeError("the model broke")
        self.batches.append([job.prompt for job in jobs])
        self.decoded += [job.prompt for job in jobs]
        return [Transcript([Word(" " + job.prompt, 0.0, 0.5, 1.0)], job.language) for job in jobs]


@pytest.fixture
def backend() -> GatedBackend:
    return GatedBackend()


@pytest.fixture
def scheduler(backend: GatedBackend):  # type: ignore[no-untyped-def]
    scheduler = Scheduler(lambda: backend, max_waiting=3, max_batch=1)
    yield scheduler
    backend.gate.set()
    scheduler.close()


AUDIO = np.zeros(1600, np.float32)


def job(name: str = "") -> Job:
    return Job(AUDIO, name)


async def started(backend: GatedBackend) -> None:
    """Until the worker has picked up a request and is holding it at the gate."""
    await asyncio.to_thread(backend.started.wait, 10)
    backend.started.clear()


async def test_a_newer_request_from_a_stream_replaces_its_waiting_one(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    busy = scheduler.submit("a", job("a1"))
    await started(backend)
    older = scheduler.submit("b", job("b1"))
    newer = scheduler.submit("b", job("b2"))
    backend.gate.set()

    assert (await busy).words[0].text == " a1"
    assert (await newer).words[0].text == " b2"
    assert older.cancelled()
    assert backend.decoded == ["a1", "b2"]


async def test_streams_are_served_in_turn(scheduler: Scheduler, backend: GatedBackend) -> None:
    first = scheduler.submit("a", job("a1"))
    await started(backend)
    others = [scheduler.submit("b", job("b1")), scheduler.submit("c", job("c1"))]
    backend.gate.set()
    await first
    # "a" asks again right away, but "b" and "c" were waiting before it
    again = scheduler.submit("a", job("a2"))
    await asyncio.gather(again, *others)

    assert backend.decoded == ["a1", "b1", "c1", "a2"]


async def test_a_final_goes_before_waiting_interims(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    busy = scheduler.submit("a", job("a1"))
    await started(backend)
    interim = scheduler.submit("b", job("b-interim"))
    final = scheduler.submit("c", job("c-final"), priority=Priority.FINAL)
    backend.gate.set()
    await asyncio.gather(busy, interim, final)

    assert backend.decoded == ["a1", "c-final", "b-interim"]


async def test_an_utterance_that_shows_nothing_yet_goes_before_those_already_shown(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    busy = scheduler.submit("a", job("a1"))
    await started(backend)
    shown = scheduler.submit("b", job("b-interim"))
    opening = scheduler.submit("c", job("c-opening"), priority=Priority.OPENING)
    final = scheduler.submit("d", job("d-final"), priority=Priority.FINAL)
    backend.gate.set()
    await asyncio.gather(busy, shown, opening, final)

    assert backend.decoded == ["a1", "d-final", "c-opening", "b-interim"]


async def test_the_queue_refuses_streams_beyond_its_bound(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    busy = scheduler.submit("a", job("a1"))
    await started(backend)
    waiting = [scheduler.submit(name, job(name)) for name in ("b", "c", "d")]

    with pytest.raises(SchedulerFull):
        scheduler.submit("e", job("e"))
    # a stream that already waits may still replace its request, and finals always queue
    waiting.append(scheduler.submit("b", job("b2")))
    waiting.append(scheduler.submit("f", job("f-final"), priority=Priority.FINAL))

    backend.gate.set()
    await asyncio.gather(busy, *waiting[1:])
    assert "f-final" in backend.decoded


async def test_a_failed_decode_reaches_the_caller(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    backend.gate.set()
    with pytest.raises(RuntimeError, match="the model broke"):
        await scheduler.submit("a", job("fail"))
    assert (await scheduler.submit("a", job("ok"))).words[0].text == " ok"


async def test_the_event_loop_runs_while_the_model_decodes(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    decoding = scheduler.submit("a", job("a1"))
    await started(backend)
    ticked = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, ticked.set)

    await asyncio.wait_for(ticked.wait(), timeout=5)
    assert not decoding.done()  # the timer ran while the model was still busy

    backend.gate.set()
    await decoding


async def test_a_closed_stream_leaves_nothing_behind_in_the_queue(
    scheduler: Scheduler, backend: GatedBackend
) -> None:
    busy = scheduler.submit("a", job("a1"))
    await started(backend)
    dropped = scheduler.submit("b", job("b1"))
    scheduler.discard("b")
    backend.gate.set()
    await busy

    assert dropped.cancelled()
    assert scheduler.waiting() == 0
    assert backend.decoded == ["a1"]


def test_several_workers_decode_at_once() -> None:
    both_running = threading.Barrier(2, timeout=10)

    class Together(GatedBackend):
        def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript]:
            both_running.wait()  # only passes when two decodes run at the same time
            return [Transcript([], "en") for _ in jobs]

    scheduler = Scheduler(Together, workers=2)

    async def main() -> None:
        await asyncio.gather(scheduler.submit("a", job()), scheduler.submit("b", job()))

    try:
        asyncio.run(main())
    finally:
        scheduler.close()


@pytest.fixture
def batching(backend: GatedBackend):  # type: ignore[no-untyped-def]
    scheduler = Scheduler(lambda: backend, max_waiting=32, max_batch=4)
    yield scheduler
    backend.gate.set()
    scheduler.close()


async def test_streams_that_are_due_together_are_decoded_in_one_batch(
    batching: Scheduler, backend: GatedBackend
) -> None:
    busy = batching.submit("a", job("a1"))
    await started(backend)
    due = [batching.submit(name, job(name)) for name in ("b", "c", "d", "e", "f")]
    backend.gate.set()
    await asyncio.gather(busy, *due)

    # at most max_batch at once, in the order they asked
    assert backend.batches == [["a1"], ["b", "c", "d", "e"], ["f"]]


async def test_a_final_leads_its_batch(batching: Scheduler, backend: GatedBackend) -> None:
    busy = batching.submit("a", job("a1"))
    await started(backend)
    interims = [batching.submit(name, job(name)) for name in ("b", "c", "d", "e")]
    final = batching.submit("f", job("f-final"), priority=Priority.FINAL)
    backend.gate.set()
    await asyncio.gather(busy, final, *interims)

    assert backend.batches[1] == ["f-final", "b", "c", "d"]


async def test_a_long_speaker_never_starves_the_others(backend: GatedBackend) -> None:
    scheduler = Scheduler(lambda: backend, max_batch=2)
    backend.gate.set()
    try:

        async def long_speaker() -> None:
            # asks again the moment each decode comes back, for ever
            for i in range(40):
                await scheduler.submit("long", job(f"long{i}"))

        talking = asyncio.create_task(long_speaker())
        await asyncio.sleep(0)
        others = [scheduler.submit(name, job(name)) for name in ("b", "c", "d", "e")]
        await asyncio.wait_for(asyncio.gather(*others), timeout=10)
        served_long = sum(1 for p in backend.decoded if p.startswith("long"))
        await talking
    finally:
        scheduler.close()

    # each of the others waited for at most one turn of the long speaker's per batch
    assert served_long <= 4, backend.batches
    assert all(len(batch) <= 2 for batch in backend.batches)


async def test_a_bad_request_fails_alone_not_the_batch_it_was_in(
    batching: Scheduler, backend: GatedBackend
) -> None:
    busy = batching.submit("a", job("a1"))
    await started(backend)
    bad, good = batching.submit("b", job("fail")), batching.submit("c", job("c1"))
    backend.gate.set()
    await busy

    assert (await good).words[0].text == " c1"
    with pytest.raises(RuntimeError, match="the model broke"):
        await bad
