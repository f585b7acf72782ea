"""Failover across STT providers, on tone speech whose words are known exactly.

The providers are real `stt.STT`s (`tests.tone_stt`) with injected outages: refusing
new connections, or dropping a stream after some seconds of audio.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIConnectionError, APIStatusError, stt
from prometheus_client import REGISTRY

from tests.tone_stt import SAMPLE_RATE, ToneSTT, ToneStream, utterance_audio
from transcriber.stt_failover import FailoverOptions, FailoverSTT, FailoverStream

FAST = FailoverOptions(retries_per_provider=1, retry_interval=0.05, cooldown=0.3, max_cooldown=1)


@dataclass
class Outage:
    refuse: bool = False
    drop_after: float | None = None
    """Seconds of audio after which the next stream fails (once)."""
    bug_after: float | None = None
    """Seconds of audio after which the next stream hits a bug of ours (once): TypeError."""
    refusal: Exception = field(default_factory=lambda: APIConnectionError("connection refused"))
    attempts: int = 0
    connections: int = 0
    finals: list[str] = field(default_factory=list)
    languages: list[str | None] = field(default_factory=list)
    """The language each stream was asked for (None: not given)."""


class FlakySTT(ToneSTT):
    def __init__(self, outage: Outage) -> None:
        super().__init__()
        self.outage = outage

    def stream(self, **kwargs) -> ToneStream:  # type: ignore[no-untyped-def]
        self.outage.languages.append(kwargs.get("language") or None)
        return FlakyStream(
            stt=self,
            conn_options=kwargs["conn_options"],
            language=kwargs.get("language") or "en",
        )


class FlakyStream(ToneStream):
    async def _run(self) -> None:
        outage: Outage = self._stt.outage  # type: ignore[attr-defined]
        outage.attempts += 1
        if outage.refuse:
            raise outage.refusal
        outage.connections += 1
        await super()._run()

    def _on_block(self, block: np.ndarray) -> None:
        outage: Outage = self._stt.outage  # type: ignore[attr-defined]
        if outage.drop_after is not None and self._position * 0.02 >= outage.drop_after:
            outage.drop_after = None
            raise APIStatusError("connection closed unexpectedly", status_code=1011)
        if outage.bug_after is not None and self._position * 0.02 >= outage.bug_after:
            outage.bug_after = None
            raise TypeError("a bug in our own code, not an outage")
        super()._on_block(block)

    def _finalize(self) -> None:
        if self._words:
            self._stt.outage.finals.append(" ".join(w.text for w in self._words))  # type: ignore[attr-defined]
        super()._finalize()


def frames(words: list[str]) -> list[rtc.AudioFrame]:
    samples = utterance_audio(words, sample_rate=SAMPLE_RATE)
    block = SAMPLE_RATE // 50
    return [
        rtc.AudioFrame(samples[i : i + block].tobytes(), SAMPLE_RATE, 1, block)
        for i in range(0, len(samples) - block + 1, block)
    ]


async def speak(stream: FailoverStream, words: list[str], *, realtime: float = 0.0) -> None:
    for frame in frames(words):
        stream.push_frame(frame)
        await asyncio.sleep(frame.duration * realtime)


async def finals_of(stream: FailoverStream) -> list[str]:
    return [
        event.alternatives[0].text
        async for event in stream
        if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    ]


def failover(**outages: Outage) -> FailoverSTT:
    return FailoverSTT({name: functools.partial(FlakySTT, o) for name, o in outages.items()}, FAST)


async def test_dropped_stream_mid_sentence_reconnects_and_loses_no_word() -> None:
    primary = Outage(drop_after=2.5)
    stream = failover(primary=primary).stream()
    collected = asyncio.create_task(finals_of(stream))
    await speak(stream, ["alpha", "bravo", "charlie"])
    await speak(stream, ["delta", "echo", "foxtrot"])
    stream.end_input()
    assert await collected == ["alpha bravo charlie", "delta echo foxtrot"]
    assert primary.connections == 2
    assert stream.usage["primary"].failures == 1
    await stream.aclose()


async def test_provider_refusing_at_start_fails_over_to_the_next() -> None:
    first, second = Outage(refuse=True), Outage()
    stream = failover(first=first, second=second).stream()
    collected = asyncio.create_task(finals_of(stream))
    await speak(stream, ["golf", "hotel"])
    stream.end_input()
    assert await asyncio.wait_for(collected, 5) == ["golf hotel"]
    assert second.finals == ["golf hotel"]
    assert stream.usage["first"].failures == 2  # the first try and one retry
    await stream.aclose()


async def test_provider_failing_mid_stream_fails_over_with_the_audio_it_had() -> None:
    first, second = Outage(drop_after=1.0), Outage()
    stream = failover(first=first, second=second).stream()
    collected = asyncio.create_task(finals_of(stream))

    async def break_first_for_good() -> None:
        while first.drop_after is not None:
            await asyncio.sleep(0.001)
        first.refuse = True

    breaker = asyncio.create_task(break_first_for_good())
    await speak(stream, ["india", "juliet", "kilo"], realtime=0.2)
    stream.end_input()
    assert await collected == ["india juliet kilo"]
    assert second.finals == ["india juliet kilo"]
    await breaker
    await stream.aclose()


async def test_returns_to_the_preferred_provider_once_it_recovers() -> None:
    preferred, backup = Outage(refuse=True), Outage()
    stream = failover(preferred=preferred, backup=backup).stream()
    collected = asyncio.create_task(finals_of(stream))
    await speak(stream, ["lima", "mike"], realtime=0.2)
    preferred.refuse = False
    await asyncio.sleep(FAST.cooldown)
    await speak(stream, ["november", "oscar"], realtime=0.2)
    await speak(stream, ["papa", "alpha"], realtime=0.2)
    stream.end_input()
    assert await collected == ["lima mike", "november oscar", "papa alpha"]
    assert backup.finals[0] == "lima mike"
    assert preferred.finals[-1] == "papa alpha"
    assert stream.active_provider is None  # closed
    await stream.aclose()


async def test_all_providers_down_then_one_returns_resumes_with_buffered_audio() -> None:
    first, second = Outage(refuse=True), Outage(refuse=True)
    stream = failover(first=first, second=second).stream()
    collected = asyncio.create_task(finals_of(stream))
    await speak(stream, ["bravo", "delta"], realtime=0.2)
    await asyncio.sleep(0.5)
    assert not collected.done()
    second.refuse = False
    await speak(stream, ["echo", "golf"], realtime=0.2)
    stream.end_input()
    assert await asyncio.wait_for(collected, 10) == ["bravo delta", "echo golf"]
    await stream.aclose()


async def test_audio_older_than_the_replay_bound_is_dropped_while_all_are_down() -> None:
    only = Outage(refuse=True)
    options = FailoverOptions(
        retries_per_provider=1, retry_interval=0.01, cooldown=0.05, max_cooldown=0.1, max_replay=3
    )
    stream = FailoverSTT({"only": functools.partial(FlakySTT, only)}, options).stream()
    collected = asyncio.create_task(finals_of(stream))
    await speak(stream, ["hotel", "india"])
    await speak(stream, ["juliet", "kilo"])
    await speak(stream, ["lima", "mike"])
    only.refuse = False
    stream.end_input()
    finals = await asyncio.wait_for(collected, 10)
    assert finals[-1] == "lima mike"
    assert "hotel india" not in finals
    await stream.aclose()


async def test_a_bug_ends_only_its_own_stream_and_marks_no_provider_down() -> None:
    first, second = Outage(bug_after=0.5), Outage()
    shared = failover(first=first, second=second)
    broken = shared.stream()
    collected = asyncio.create_task(finals_of(broken))
    with pytest.raises(RuntimeError, match="is closed"):  # as a pipeline sees it
        await speak(broken, ["alpha", "bravo", "charlie"], realtime=0.1)
    with pytest.raises(TypeError, match="a bug in our own code"):
        await asyncio.wait_for(collected, 5)
    assert (first.attempts, second.attempts) == (1, 0)  # neither retried nor failed over
    assert all(h.available() and h.failures == 0 for h in shared.health)
    assert broken.usage["first"].failures == 0
    await broken.aclose()

    other_track = shared.stream()
    collected = asyncio.create_task(finals_of(other_track))
    await speak(other_track, ["delta", "echo"])
    other_track.end_input()
    assert await asyncio.wait_for(collected, 5) == ["delta echo"]
    assert first.finals == ["delta echo"]  # still the preferred provider
    await other_track.aclose()


async def test_a_refused_key_fails_over_at_once_without_retrying() -> None:
    refused = APIStatusError("invalid API key", status_code=401, retryable=False)
    first, second = Outage(refuse=True, refusal=refused), Outage()
    stream = failover(first=first, second=second).stream()
    collected = asyncio.create_task(finals_of(stream))
    await speak(stream, ["foxtrot", "golf"])
    stream.end_input()
    assert await asyncio.wait_for(collected, 5) == ["foxtrot golf"]
    assert first.attempts == 1  # FAST allows one retry of a retryable error
    assert second.finals == ["foxtrot golf"]
    await stream.aclose()


class FinalizingSTT(FlakySTT):
    """Like Speechmatics: `STT.finalize()` ends the turn."""

    def finalize(self) -> None:
        self.outage.finals.append("<finalize>")


@pytest.mark.parametrize("finalizing", [["first"], []])
async def test_flush_calls_finalize_only_on_providers_whose_turns_end_there(
    finalizing: list[str],
) -> None:
    outage = Outage()
    providers = {"first": functools.partial(FinalizingSTT, outage)}
    shared = FailoverSTT(providers, FAST, finalizing=finalizing)
    stream = shared.stream()
    collected = asyncio.create_task(finals_of(stream))
    await speak(stream, ["hotel", "india"])
    stream.flush()
    stream.end_input()
    assert await asyncio.wait_for(collected, 5) == ["hotel india"]
    assert ("<finalize>" in outage.finals) == bool(finalizing)
    await stream.aclose()



async def test_every_provider_stream_of_a_track_keeps_its_language() -> None:
    first, second = Outage(drop_after=1.0), Outage()
    stream = failover(first=first, second=second).stream(language="fr")
    collected = asyncio.create_task(
        _languages_of_finals(stream)
    )

    async def break_first_for_good() -> None:
        while first.drop_after is not None:
            await asyncio.sleep(0.001)
        first.refuse = True

    breaker = asyncio.create_task(break_first_for_good())
    await speak(stream, ["india", "juliet", "kilo"], realtime=0.2)
    stream.end_input()
    assert await collected == [("india juliet kilo", "fr")]
    assert first.languages == ["fr", "fr"]  # the first stream and its reconnect
    assert second.languages == ["fr"]  # the failover
    await breaker
    await stream.aclose()


async def test_a_stream_without_language_leaves_each_provider_its_default() -> None:
    only = Outage()
    stream = failover(only=only).stream()
    collected = asyncio.create_task(_languages_of_finals(stream))
    await speak(stream, ["golf", "hotel"])
    stream.end_input()
    assert await collected == [("golf hotel", "en")]
    assert only.languages == [None]
    await stream.aclose()


async def _languages_of_finals(stream: FailoverStream) -> list[tuple[str, str]]:
    return [
        (event.alternatives[0].text, event.alternatives[0].language)
        async for event in stream
        if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    ]



async def test_every_second_sent_reaches_the_billing_metric_by_the_end_of_the_stream() -> None:
    """The metric is fed in whole seconds while the track speaks; the rest when it ends."""

    def sent() -> float:
        value = REGISTRY.get_sample_value(
            "transcriber_stt_audio_sent_seconds_total", {"provider": "metered"}
        )
        return value or 0.0

    before = sent()
    stream = failover(metered=Outage()).stream()
    collected = asyncio.create_task(finals_of(stream))
    await speak(stream, ["alpha", "bravo", "charlie"])
    await asyncio.sleep(0.1)
    pushed = stream.usage["metered"].seconds_sent
    assert pushed > 1.2
    assert pushed - 1.0 <= sent() - before <= pushed
    stream.end_input()
    await collected
    await stream.aclose()
    assert sent() - before == pytest.approx(stream.usage["metered"].seconds_sent)


def test_options_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        FailoverOptions(retries_per_provider=1, cooldown=0)
    with pytest.raises(ValueError):
        FailoverOptions(retries_per_provider=1, cooldown=1, max_replay=0)
