"""STT failover: one recognizer over an ordered list of providers, per track.

livekit-agents' `stt.FallbackAdapter` loses the audio a failing stream had consumed, keeps
a track on the fallback until that stream fails too, and streams every frame to a provider
it is probing (billed twice). This one keeps the audio not yet covered by a final in a
replay buffer, so a reconnect or a switch replays it and no word is lost; it moves back to
the preferred provider at the next segment boundary once that provider's cool-down has
passed; and with every provider down it keeps trying with backoff while buffering.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, APIError, stt
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from . import metrics

logger = logging.getLogger(__name__)

OUTAGES = (APIError, OSError, TimeoutError, aiohttp.ClientError)
"""What a provider failing looks like (as `RecognizeStream._main_task` decides): the
APIError family, connection errors (OSError covers sockets, DNS, TLS) and timeouts.
Anything else is a bug: it ends the track's stream and marks no provider down."""


@dataclass(frozen=True, kw_only=True)
class FailoverOptions:
    retries_per_provider: int
    """Reconnects to the same provider (replaying the buffer) before moving to the next;
    from `Settings.failover_retries`."""
    cooldown: float
    """How long a provider that failed past its retries is skipped; doubles per failure.
    From `Settings.failover_cooldown`."""
    retry_interval: float = 0.5
    connect_timeout: float = 5.0
    max_cooldown: float = 60.0
    max_replay: float = 30.0
    """Seconds of audio not yet covered by a final kept for replay; older audio is dropped."""
    silence_replay: float = 5.0
    """Seconds kept for replay while the provider reports no speech in progress."""

    def __post_init__(self) -> None:
        if self.retries_per_provider < 0 or self.retry_interval < 0 or self.cooldown <= 0:
            raise ValueError("retries_per_provider, retry_interval >= 0 and cooldown > 0")
        if self.max_cooldown < self.cooldown or self.max_replay <= 0:
            raise ValueError("max_cooldown must be >= cooldown and max_replay > 0")


@dataclass
class ProviderHealth:
    """Shared by every track of the process: one track finding a provider down spares the
    others the wait; one succeeding brings it back for all."""

    label: str
    failures: int = 0
    down_until: float = 0.0

    def available(self) -> bool:
        return time.monotonic() >= self.down_until

    def mark_failed(self, opts: FailoverOptions) -> None:
        self.failures += 1
        cooldown = min(opts.max_cooldown, opts.cooldown * 2 ** (self.failures - 1))
        self.down_until = time.monotonic() + cooldown

    def mark_ok(self) -> None:
        self.failures = 0
        self.down_until = 0.0


ProviderFactory = Callable[[], stt.STT[Any]]
"""Builds one provider STT. Each provider stream gets its own: Speechmatics' `finalize()`
ends the turn of every stream of its STT, and its STT keeps every stream it made."""


class FailoverSTT(stt.STT[Any]):
    def __init__(
        self,
        providers: Mapping[str, ProviderFactory],
        options: FailoverOptions,
        *,
        finalizing: Collection[str] = (),
    ) -> None:
        """`providers` in order of preference, by the name logs and metrics use;
        `finalizing` names those that end a turn on `STT.finalize()` (see `_flush`)."""
        if not providers:
            raise ValueError("at least one STT provider is needed")
        self.factories = list(providers.values())
        self._warm = [build() for build in self.factories]
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True,
                interim_results=any(p.capabilities.interim_results for p in self._warm),
                manual_flush=True,
            )
        )
        self.options = options
        self.health = [ProviderHealth(label=name) for name in providers]
        self.finalizing = [name in finalizing for name in providers]

    @property
    def provider(self) -> str:
        return ",".join(h.label for h in self.health)

    def prewarm(self) -> None:
        for provider in self._warm:
            provider.prewarm()

    async def _recognize_impl(self, buffer, *, language=NOT_GIVEN, conn_options=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError("the transcriber only streams")

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        log_extra: dict[str, str] | None = None,
    ) -> FailoverStream:
        """`language` is the track's: every provider stream it opens, on reconnect or
        failover too, is opened in it (not given: each provider's own default)."""
        return FailoverStream(
            self, conn_options=conn_options, log_extra=log_extra or {}, language=language
        )

    async def aclose(self) -> None:
        for provider in self._warm:
            await provider.aclose()


@dataclass
class _Buffered:
    position: float
    """Seconds of track audio before this frame, counted from the stream's start."""
    frame: rtc.AudioFrame

    @property
    def end(self) -> float:
        return self.position + self.frame.duration


@dataclass
class ProviderUsage:
    seconds_sent: float = 0.0
    connected_seconds: float = 0.0
    failures: int = 0


@dataclass
class _Attempt:
    """One provider stream: where its audio started, so its times map to the track's."""

    index: int
    provider: stt.STT[Any]
    stream: stt.RecognizeStream
    base: float
    usage: ProviderUsage
    sent_metric: metrics.SecondsTally
    """This provider's `transcriber_stt_audio_sent_seconds_total`."""
    finalize: bool
    """Its turns end on `STT.finalize()`."""
    opened_at: float = field(default_factory=time.monotonic)


class FailoverStream(stt.RecognizeStream):
    def __init__(
        self,
        failover: FailoverSTT,
        *,
        conn_options: APIConnectOptions,
        log_extra: dict[str, str],
        language: NotGivenOr[str] = NOT_GIVEN,
    ) -> None:
        # retrying is ours (with replay): the base class must not retry around _run
        super().__init__(stt=failover, conn_options=dataclasses.replace(conn_options, max_retry=0))
        self._failover = failover
        self._opts = failover.options
        self._log_extra = log_extra
        self.language = language
        self._buffer: collections.deque[_Buffered] = collections.deque()
        self._position = 0.0
        self._attempt: _Attempt | None = None
        self._pending_flush = False
        self._switch_back = False
        self._state = ""
        self._dropped_warned = False
        self._in_speech = False
        self._input_ended = False
        self.usage = {h.label: ProviderUsage() for h in failover.health}

    @property
    def active_provider(self) -> str | None:
        return self._failover.health[self._attempt.index].label if self._attempt else None

    # Input goes straight to the provider stream, without the base class's input channel:
    # one task hop less per frame of every track.

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        self._check_input_not_ended()
        self._check_not_closed()
        self._buffer_frame(frame)
        if self._attempt is not None:
            self._send(self._attempt, frame)

    def flush(self) -> None:
        self._check_input_not_ended()
        self._check_not_closed()
        if self._attempt is not None:
            _flush(self._attempt)
        else:
            self._pending_flush = True

    def end_input(self) -> None:
        super().end_input()  # our flush(), then the base refuses further input
        self._input_ended = True
        if self._attempt is not None:
            with contextlib.suppress(RuntimeError):
                self._attempt.stream.end_input()

    async def _run(self) -> None:
        try:
            await self._drive()
        finally:
            if self._attempt is not None:
                await self._release(self._attempt)

    def _buffer_frame(self, frame: rtc.AudioFrame) -> None:
        self._buffer.append(_Buffered(self._position, frame))
        self._position += frame.duration
        connected = self._attempt is not None
        quiet = connected and not self._in_speech
        keep = self._opts.silence_replay if quiet else self._opts.max_replay
        while self._buffer and self._position - self._buffer[0].position > keep:
            self._buffer.popleft()
            if not connected and not self._dropped_warned:
                self._dropped_warned = True
                logger.warning(
                    "no STT provider has taken this track's audio for %.0f s, dropping the oldest",
                    keep,
                    extra=self._log_extra,
                )

    def _send(self, attempt: _Attempt, frame: rtc.AudioFrame) -> None:
        try:
            attempt.stream.push_frame(frame)
        except RuntimeError:
            return  # that stream is failing; its replacement replays the buffer
        attempt.usage.seconds_sent += frame.duration
        attempt.sent_metric.add(frame.duration)

    async def _drive(self) -> None:
        """Runs provider streams one after another until the input ends and the last
        stream has delivered its finals."""
        outage = 0
        while True:
            outcome = await self._try_providers()
            if outcome == "done":
                return
            if outcome == "switch":
                outage = 0
                continue
            outage += 1
            self._set_state("all STT providers down, retrying", logging.ERROR)
            await asyncio.sleep(min(self._opts.max_cooldown, self._opts.cooldown * outage))

    async def _try_providers(self) -> str:
        """Available providers in order of preference (all of them when none is), each
        retried before the next: "done", "switch" (back to a preferred one) or "failed"."""
        healths = self._failover.health
        candidates = [i for i, h in enumerate(healths) if h.available()] or list(
            range(len(healths))
        )
        for index in candidates:
            label = healths[index].label
            tries = 0
            while True:
                attempt = self._open(index)
                error, delivered = await self._consume(attempt)
                await self._release(attempt)
                if error is None:
                    return "switch" if self._switch_back else "done"
                self.usage[label].failures += 1
                metrics.STT_ERRORS.labels(provider=label).inc()
                if self._input_ended and not self._buffer:
                    return "done"  # nothing left to recognize
                tries = 1 if delivered else tries + 1
                if tries > self._opts.retries_per_provider or not _retryable(error):
                    break
                self._set_state(f"reconnecting to {label}", logging.WARNING, error)
                metrics.STT_RECONNECTS.labels(provider=label).inc()
                await asyncio.sleep(self._opts.retry_interval)
            healths[index].mark_failed(self._opts)
            self._set_state(f"{label} failed past its retries", logging.WARNING, error)
        return "failed"

    def _first_available(self) -> int | None:
        return next((i for i, h in enumerate(self._failover.health) if h.available()), None)

    def _open(self, index: int) -> _Attempt:
        conn = dataclasses.replace(
            self._conn_options, max_retry=0, timeout=self._opts.connect_timeout
        )
        provider = self._failover.factories[index]()
        stream = provider.stream(language=self.language, conn_options=conn)
        base = self._buffer[0].position if self._buffer else self._position
        label = self._failover.health[index].label
        attempt = _Attempt(
            index=index,
            provider=provider,
            stream=stream,
            base=base,
            usage=self.usage[label],
            sent_metric=metrics.SecondsTally(metrics.STT_AUDIO_SENT.labels(provider=label)),
            finalize=self._failover.finalizing[index],
        )
        self._attempt = attempt
        self._switch_back = False
        for item in list(self._buffer):
            self._send(attempt, item.frame)
        if self._pending_flush:
            self._pending_flush = False
            _flush(attempt)
        if self._input_ended:
            stream.end_input()
        return attempt

    async def _consume(self, attempt: _Attempt) -> tuple[Exception | None, bool]:
        """Forwards the stream's events. Returns the provider failure that ended it, if
        any, and whether it delivered anything (a provider that worked a while earns new
        retries). Any other exception is a bug and propagates: it ends this stream only."""
        health = self._failover.health[attempt.index]
        delivered = False
        try:
            async for event in attempt.stream:
                if not delivered:
                    delivered = True
                    health.mark_ok()
                    self._set_state(f"captioning with {health.label}", logging.INFO)
                self._event_ch.send_nowait(_shift(event, attempt.base))
                if event.type in _SPEECH_OPENS:
                    self._in_speech = True
                elif event.type in _SPEECH_CLOSES:
                    self._in_speech = False
                if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                    self._forget_until(attempt, event)
                    if self._should_switch_back(attempt):
                        self._switch_back = True
                        return None, delivered
            if not self._input_ended:
                error = APIConnectionError(
                    f"{health.label} closed the stream while the track was live"
                )
                return error, delivered
            return None, delivered
        except OUTAGES as e:
            return e, delivered

    def _forget_until(self, attempt: _Attempt, event: stt.SpeechEvent) -> None:
        """Drops the audio a final covers: it will never be replayed."""
        end = max((a.end_time for a in event.alternatives), default=0.0)
        covered = attempt.base + end if end > 0 else self._position
        while self._buffer and self._buffer[0].end <= covered + 1e-6:
            self._buffer.popleft()
        self._dropped_warned = False

    def _should_switch_back(self, attempt: _Attempt) -> bool:
        preferred = self._first_available()
        return preferred is not None and preferred < attempt.index

    async def _release(self, attempt: _Attempt) -> None:
        if self._attempt is attempt:
            self._attempt = None
        attempt.sent_metric.flush()
        label = self._failover.health[attempt.index].label
        connected = time.monotonic() - attempt.opened_at
        self.usage[label].connected_seconds += connected
        metrics.STT_CONNECTED_SECONDS.labels(provider=label).inc(connected)
        with contextlib.suppress(RuntimeError):
            attempt.stream.end_input()
        try:
            await attempt.stream.aclose()
        except OUTAGES:
            pass  # already failed; its error was handled

    def _set_state(self, state: str, level: int, error: Exception | None = None) -> None:
        if state == self._state:
            return
        self._state = state
        detail = f": {error}" if error else ""
        logger.log(level, "%s%s", state, detail, extra=self._log_extra)


def _retryable(error: Exception) -> bool:
    """A non-retryable APIError (a refused key, say) moves on to the next provider at once."""
    return not isinstance(error, APIError) or error.retryable


def _flush(attempt: _Attempt) -> None:
    """Ends the current segment. Speechmatics' stream ignores flush() for that: its turn
    ends on `STT.finalize()` (this stream's own STT, see ProviderFactory)."""
    attempt.stream.flush()
    if attempt.finalize:
        attempt.provider.finalize()  # type: ignore[attr-defined]


_SPEECH_OPENS = (stt.SpeechEventType.START_OF_SPEECH, stt.SpeechEventType.INTERIM_TRANSCRIPT)
_SPEECH_CLOSES = (stt.SpeechEventType.FINAL_TRANSCRIPT, stt.SpeechEventType.END_OF_SPEECH)


def _shift(event: stt.SpeechEvent, base: float) -> stt.SpeechEvent:
    """Provider times count from that provider's stream start; captions count from ours."""
    if not base or not event.alternatives:
        return event
    shifted = [
        dataclasses.replace(a, start_time=a.start_time + base, end_time=a.end_time + base)
        for a in event.alternatives
    ]
    return dataclasses.replace(event, alternatives=shifted)
