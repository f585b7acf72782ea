"""Prometheus metrics, served by the worker on `TRANSCRIBER_METRICS_PORT` at /metrics.

Jobs run in child processes; livekit-agents' multiprocess mode (a shared directory set
before any job starts) lets the main process serve every process's numbers.
"""

from __future__ import annotations

import asyncio
import os

from prometheus_client import Counter, Gauge, Histogram, multiprocess

ACTIVE_ROOMS = Gauge(
    "transcriber_active_rooms", "Rooms being captioned", multiprocess_mode="livesum"
)
ACTIVE_TRACKS = Gauge(
    "transcriber_active_tracks", "Audio tracks being captioned", multiprocess_mode="livesum"
)
WAITING_TRACKS = Gauge(
    "transcriber_waiting_tracks",
    "Audio tracks left unsubscribed by a cap, captioned once it allows",
    multiprocess_mode="livesum",
)
CAPTIONS_PUBLISHED = Counter("transcriber_captions_published_total", "Captions published", ["kind"])
AUDIO_RECEIVED = Counter(
    "transcriber_audio_received_seconds_total", "Seconds of track audio received"
)
STT_AUDIO_SENT = Counter(
    "transcriber_stt_audio_sent_seconds_total",
    "Seconds of audio sent to each STT provider (what cloud providers bill)",
    ["provider"],
)
STT_CONNECTED_SECONDS = Counter(
    "transcriber_stt_connected_seconds_total",
    "Seconds STT streams were open, per provider",
    ["provider"],
)
STT_ERRORS = Counter("transcriber_stt_errors_total", "STT stream failures", ["provider"])
STT_RECONNECTS = Counter(
    "transcriber_stt_reconnects_total", "Reconnects to the same STT provider", ["provider"]
)
CAPTION_LATENCY = Histogram(
    "transcriber_caption_latency_seconds",
    "From the arrival of a caption's last audio to the caption being published",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
EVENT_LOOP_LAG = Histogram(
    "transcriber_event_loop_lag_seconds",
    "How late the job process's event loop runs a timer",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
LIMIT_REACHED = Counter(
    "transcriber_limit_reached_total", "Tracks not captioned because a cap was reached", ["cap"]
)


class SecondsTally:
    """Seconds of audio for a counter, passed on once they add up to `every`.

    In multiprocess mode each `inc` writes to a file the processes share; once per frame of
    every track, that was 7% of a job process's event loop in the capacity benchmark.
    """

    def __init__(self, counter: Counter, every: float = 1.0) -> None:
        self._counter = counter
        self._every = every
        self._pending = 0.0

    def add(self, seconds: float) -> None:
        self._pending += seconds
        if self._pending >= self._every:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._counter.inc(self._pending)
            self._pending = 0.0


async def watch_event_loop_lag(interval: float = 0.5) -> None:
    """Runs for the life of a job: a loop blocked by CPU work shows up here first."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - start - interval))


OUTPUTS_STALLED = Gauge(
    "transcriber_caption_outputs_stalled",
    "Caption outputs stuck on one caption for 5 s or more (live captions go on without them)",
    ["sink"],
    multiprocess_mode="livesum",
)
CAPTIONS_DROPPED = Counter(
    "transcriber_captions_dropped_total",
    "Captions a caption output lost because it fell too far behind (a broken output)",
    ["sink"],
)


TRANSLATION_REQUESTS = Counter(
    "transcriber_translation_requests_total",
    "Requests sent to the translation provider (a retry is a second request)",
    ["provider"],
)
TRANSLATION_CHARACTERS = Counter(
    "transcriber_translation_characters_total",
    "Characters of caption text translated: what translation providers bill",
    ["provider"],
)
TRANSLATION_ERRORS = Counter(
    "transcriber_translation_errors_total",
    "Translation requests that failed or timed out",
    ["provider"],
)
TRANSLATION_LATENCY = Histogram(
    "transcriber_translation_latency_seconds",
    "Time to translate one caption, its retry included",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0),
)
TRANSLATIONS_PUBLISHED = Counter(
    "transcriber_translations_published_total", "Translated captions published", ["kind"]
)
TRANSLATIONS_SKIPPED = Counter(
    "transcriber_translations_skipped_total",
    "Finals or interims not translated: the translator failed, or a lane fell too far behind",
    ["reason"],
)


def forget_process(pid: int) -> None:
    """Called in the main process when a job process exits: its live gauges (rooms,
    tracks) leave the sums at once, even when it was killed before it could decrement them."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
