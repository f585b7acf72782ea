"""Translation: how late translations are, and how many characters a meeting costs.

    python -m benchmarks.translation --json translation.json            # 1 min per run, 3 runs
    python -m benchmarks.translation --minutes 2 --json translation.json

Everything runs on this machine, on 127.0.0.1 only: the real LiveKit server (pinned
build), the worker as a subprocess (`python -m transcriber start`, tone STT, environment as
tests/conftest.py `worker_env`), a local DeepL (`tests.fake_translators.FakeDeepL`, in this
process) with a fixed service time, and a three-language meeting: speakers whose
`language` is en, fr and de take turns (one at a time, 3-6 tone words per sentence, 0.6 s
between sentences), while one reader per language collects captions.

Runs: the fake answering in 0 ms, in 200 ms, and in 200 ms with
TRANSCRIBER_TRANSLATE_INTERIMS=true. Per run:
- latency: per translated final, from the original final reaching a reader to its
  translation reaching the same reader (matched by `transcriber.source_segment_id`);
  p50/p95 in ms;
- characters translated per minute: the source characters of the requests the fake
  answered, per minute of meeting (what DeepL bills), and requests per minute.
Tone words are short; a real meeting has ~150 words a minute per speaker, so scale the
characters by its words per minute (the ratio between runs holds).

The machine may be shared: latency includes the worker's and this process's scheduling;
compare runs of one invocation. Every process started here stops on exit; the whole run
has a deadline (--timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from livekit import api

from tests.conftest import WorkerProcess, worker_env
from tests.fake_translators import FakeDeepL
from tests.livekit_server import LiveKitServer
from tests.participants import CaptionListener, Speaker
from tests.tone_stt import VOCABULARY, utterance_audio, write_wav

LANGUAGES = ("en", "fr", "de")
RUNS = (
    ("0 ms", 0.0, False),
    ("200 ms", 0.2, False),
    ("200 ms + interims", 0.2, True),
)


async def run_meeting(
    server: LiveKitServer, workdir: Path, *, service_s: float, interims: bool, minutes: float
) -> dict[str, Any]:
    key = secrets.token_hex(16)
    agent = f"bench-translate-{secrets.token_hex(3)}"
    room = f"bench-room-{secrets.token_hex(3)}"
    async with FakeDeepL(api_key=key, delay=service_s) as deepl:
        env = worker_env(
            server,
            TRANSCRIBER_AGENT_NAME=agent,
            TRANSCRIBER_LANGUAGES=",".join(LANGUAGES),
            TRANSCRIBER_TRANSLATION_LANGUAGES=",".join(LANGUAGES),
            TRANSCRIBER_TRANSLATION_PROVIDER="deepl",
            TRANSCRIBER_TRANSLATE_INTERIMS="true" if interims else "false",
            DEEPL_API_KEY=key,
            DEEPL_URL=deepl.url,
        )
        worker = WorkerProcess(env, workdir / f"worker-{agent}.log")
        try:
            worker.wait_registered()
            return await _meet(server, worker, deepl, agent, room, workdir, minutes)
        finally:
            worker.stop()


async def _meet(
    server: LiveKitServer,
    worker: WorkerProcess,
    deepl: FakeDeepL,
    agent: str,
    room: str,
    workdir: Path,
    minutes: float,
) -> dict[str, Any]:
    readers = {
        lang: await CaptionListener(server, room, f"reader-{lang}", {"language": lang}).join()
        for lang in LANGUAGES
    }
    speakers = [
        await Speaker(server, room, f"speaker-{lang}", attributes={"language": lang}).join()
        for lang in LANGUAGES
    ]
    async with server.api() as lkapi:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent, room=room)
        )
    for speaker in speakers:
        await worker.wait_captioning(speaker.track_sid, timeout=60)
    rng = random.Random(7)
    started = time.monotonic()
    turn = 0
    while time.monotonic() - started < minutes * 60:
        speaker = speakers[turn % len(speakers)]
        words = [rng.choice(VOCABULARY) for _ in range(rng.randint(3, 6))]
        wav = write_wav(
            workdir / f"{speaker.identity}-{turn}.wav", utterance_audio(words, pause=0.6)
        )
        await speaker.play(wav)
        turn += 1
    spoken_min = (time.monotonic() - started) / 60
    await asyncio.sleep(3.0)  # the last finals and their translations
    result = _measure(readers, deepl, spoken_min, turn)
    for who in (*speakers, *readers.values()):
        await who.leave()
    return result


def _measure(
    readers: dict[str, CaptionListener], deepl: FakeDeepL, minutes: float, sentences: int
) -> dict[str, Any]:
    latencies: list[float] = []
    for reader in readers.values():
        originals = {
            c.segment_id: c
            for c in reader.captions
            if c.output == "text_stream" and c.final and not c.translated
        }
        for caption in reader.captions:
            if caption.translated and caption.final:
                source = originals.get(caption.attributes.get("transcriber.source_segment_id", ""))
                if source is not None:
                    latencies.append(caption.received_at - source.received_at)
    characters = sum(sum(len(t) for t in r.body["text"]) for r in deepl.answered)
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    return {
        "meeting_minutes": round(minutes, 2),
        "sentences": sentences,
        "translated_finals": len(latencies),
        "latency_p50_ms": round(statistics.median(latencies) * 1000) if latencies else None,
        "latency_p95_ms": round(q[18] * 1000) if latencies else None,
        "requests_per_minute": round(len(deepl.answered) / minutes, 1),
        "characters_per_minute": round(characters / minutes),
        "failed_requests": len(deepl.requests) - len(deepl.answered),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-translation-"))
    server = LiveKitServer.start(workdir / "livekit.log")
    try:
        results = {}
        for name, service_s, interims in RUNS:
            results[name] = await run_meeting(
                server, workdir, service_s=service_s, interims=interims, minutes=args.minutes
            )
            print(f"{name}: {results[name]}", file=sys.stderr)
        return results
    finally:
        server.stop()


def print_table(results: dict[str, Any]) -> None:
    columns = (
        "latency_p50_ms",
        "latency_p95_ms",
        "characters_per_minute",
        "requests_per_minute",
        "translated_finals",
        "failed_requests",
    )
    print(f"{'run':<20}" + "".join(f"{c:>24}" for c in columns))
    for name, row in results.items():
        print(f"{name:<20}" + "".join(f"{row[c]!s:>24}" for c in columns))
    base = results["200 ms"]["characters_per_minute"]
    if base:
        ratio = results["200 ms + interims"]["characters_per_minute"] / base
        print(f"interims cost {ratio:.2f}x the characters of finals only")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="meeting length per run")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--timeout", type=float, default=900, help="deadline for everything")
    args = parser.parse_args()
    results = asyncio.run(asyncio.wait_for(main(args), args.timeout))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"machine": "shared, 2 cores", "runs": results}, indent=2))
