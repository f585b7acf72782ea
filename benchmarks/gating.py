"""Pay only for speech: what VAD gating saves on STT billing, and what it costs in words.

    python -m benchmarks.gating --json gating.json              # ~3 min meeting, twice (~10 min)
    python -m benchmarks.gating --quick --json gating.json      # ~1 min meeting, twice (~4 min)
    python -m benchmarks.gating --minutes 5 --json gating.json

Everything runs on this machine, on 127.0.0.1 only:

- the real LiveKit server (tests/livekit_server.py, pinned build);
- a local Deepgram: `python -m tests.fake_deepgram`, the /v1/listen websocket answered by
  local Whisper. It counts the audio seconds each connection received: that is "billed",
  measured where a provider bills. A fresh one per run, in its own process (its CPU is
  not the worker's);
- the worker, `python -m transcriber start` with TRANSCRIBER_STT_PROVIDER=deepgram and
  DEEPGRAM_URL pointing at the fake, environment as tests/conftest.py `worker_env`,
  once with TRANSCRIBER_VAD_GATING=true (default gate settings) and once with false;
- this process: a scripted meeting of 8 participants and a caption listener.

The meeting (same for both runs, seeded): 8 participants each publish one 48 kHz
microphone track in real time. Even-numbered participants have background noise
(`speech_clips.noise`, -60 dBFS by default) under everything they send, odd-numbered ones
send digital silence. One speaks at a time: turns of 2-4 sentences (the sentences of
`speech_clips.all_clips`, cut at their start/end), 0.25-0.9 s between a speaker's
sentences, 0.4-1.2 s between turns, next speaker never the previous one. Lead-in 3 s,
tail 4 s.

Measures, per run:
- billed_s: audio seconds the fake Deepgram received from the first to the last frame of
  the meeting (+1 s), and the worker's own counter transcriber_stt_audio_sent_seconds_total
  over the same window as a cross-check;
- speech_seconds: sum of the sentences' durations (first to last sound); talk_seconds: sum
  of the turns' spans (pauses inside a turn included). With gating, billed is about
  talk + (pre-roll + hangover) per burst of speech;
- recall: words of each sentence (speech_clips.normalize_words) found, in order, in the
  speaker's final text-stream captions (longest common subsequence per speaker). After
  the meeting the tracks are unpublished and the worker drains every STT stream
  (TRANSCRIBER_TRACK_DRAIN_TIMEOUT raised for that), so a slow fake delays the last
  finals but loses none;
- first words: a sentence whose first word is not in that alignment counts as missing;
  `first_words_missing_gated_only` counts those the same STT did hear without gating;
- CPU per track: CPU seconds of the worker's process tree (psutil, job processes
  included) per wall second of the meeting, divided by 8; also the fake's, the LiveKit
  server's, this process's and the rest of the machine's (a shared machine is noisy);
- caption delay: from a sentence's last sound leaving its publisher to the final caption
  holding its last recognized word reaching the listener (mostly the fake's Whisper);
  and the playback's real-time factor.

Then the gate is replayed offline (`replay_gate`): every track, exactly as published,
through the worker's SpeechGate and its batched silero with default settings, no codec, network or
CPU contention. Its sent seconds should match the live gated billing, and it tells
whether any sentence was not sent in full and how much audio the STT got before each
sentence since its last flush. The fake's recognizer then transcribes, offline, what the
gate sent (flushed at each burst end) and the whole tracks, and the whole tracks 10 ms
later: the last is the STT's own noise floor for recall_ratio (Whisper's output changes
with where an utterance is cut).

Every process started here is stopped on exit, errors and Ctrl-C/SIGTERM included; the
whole run has a deadline (--timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from livekit import api, rtc

from benchmarks.process_tree import cpu_between, tree_cpu
from tests.conftest import WorkerProcess, worker_env
from tests.livekit_server import ROOT, LiveKitServer
from tests.participants import CaptionListener
from tests.speech_clips import all_clips, noise, normalize_words

SAMPLE_RATE = 48000
FRAME = SAMPLE_RATE // 10
"""Samples per captured frame (100 ms); the worker receives 10 ms frames whatever this is."""
PARTICIPANTS = 8
LEAD_IN = 3.0
TAIL = 4.0
SENTENCES_PER_TURN = (2, 4)
PAUSE_IN_TURN = (0.25, 0.9)
GAP_BETWEEN_TURNS = (0.4, 1.2)
QUEUE_MS = 1000
"""Audio queued in each source: a load generator starved for a moment by other processes
on the machine still sends on time (what matters here is the worker, not this process)."""
DRAIN_MAX = 150.0
"""After the meeting, how long the worker may take to publish the last finals."""
CAPTION_TRANSIT = 2.0
"""Seconds for the last published captions to reach the listener."""
DG_KEY = secrets.token_hex(16)
DEFAULT_SERVER_BIN = Path.home() / ".cache" / "transcriber" / "livekit-server-v1.13.5"


# ------------------------------------------------------------------------- the script


@dataclass(frozen=True)
class Spoken:
    speaker: str
    text: str
    start: float
    """Meeting seconds (track time) of the first sound."""
    end: float
    turn: int


@dataclass
class Script:
    duration: float
    tracks: dict[str, np.ndarray]
    backgrounds: dict[str, str]
    spoken: list[Spoken]
    turns: list[tuple[str, float, float]]

    @property
    def speech_seconds(self) -> float:
        return sum(s.end - s.start for s in self.spoken)

    @property
    def talk_seconds(self) -> float:
        return sum(end - start for _, start, end in self.turns)


def identity(i: int) -> str:
    return f"p{i}-{'noise' if i % 2 == 0 else 'silent'}"


def build_script(minutes: float, seed: int, noise_dbfs: float) -> Script:
    rng = random.Random(seed)
    pool: list[tuple[str, np.ndarray]] = []
    for c in all_clips(SAMPLE_RATE):
        samples = c.samples()
        for s in c.sentences:
            pool.append(
                (s.text, samples[round(s.start * SAMPLE_RATE) : round(s.end * SAMPLE_RATE)])
            )
    order: list[int] = []

    def next_sentence() -> tuple[str, np.ndarray]:
        if not order:
            order.extend(rng.sample(range(len(pool)), len(pool)))
        return pool[order.pop()]

    names = [identity(i) for i in range(PARTICIPANTS)]
    target = minutes * 60.0
    placed: list[tuple[str, int, np.ndarray]] = []
    spoken: list[Spoken] = []
    turns: list[tuple[str, float, float]] = []
    t, previous = LEAD_IN, None
    while t < target - TAIL:
        speaker = rng.choice([n for n in names if n != previous])
        previous = speaker
        turn_start = t
        count = rng.randint(*SENTENCES_PER_TURN)
        for k in range(count):
            text, audio = next_sentence()
            start = round(t * SAMPLE_RATE)
            placed.append((speaker, start, audio))
            end = (start + len(audio)) / SAMPLE_RATE
            spoken.append(Spoken(speaker, text, start / SAMPLE_RATE, end, len(turns)))
            t = end
            if k < count - 1:
                t += rng.uniform(*PAUSE_IN_TURN)
        turns.append((speaker, turn_start, t))
        t += rng.uniform(*GAP_BETWEEN_TURNS)
    duration = t + TAIL
    length = int(np.ceil(duration * SAMPLE_RATE / FRAME)) * FRAME

    base_noise = noise(10, SAMPLE_RATE, level_dbfs=noise_dbfs).samples().astype(np.int32)
    tracks: dict[str, np.ndarray] = {}
    backgrounds: dict[str, str] = {}
    for i, name in enumerate(names):
        if i % 2 == 0:
            reps = length // len(base_noise) + 2
            tiled = np.tile(np.roll(base_noise, i * 12345), reps)[:length]
            tracks[name] = tiled.copy()
            backgrounds[name] = f"noise {noise_dbfs:g} dBFS"
        else:
            tracks[name] = np.zeros(length, np.int32)
            backgrounds[name] = "digital silence"
    for speaker, start, audio in placed:
        tracks[speaker][start : start + len(audio)] += audio.astype(np.int32)
    for name in names:
        tracks[name] = np.clip(tracks[name], -32768, 32767).astype(np.int16)
    return Script(length / SAMPLE_RATE, tracks, backgrounds, spoken, turns)


# --------------------------------------------------------------------- processes


_PROCESSES: list[subprocess.Popen[bytes]] = []
"""Everything started here, each in its own session: stopped by process group on exit."""


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _PROCESSES.append(process)
    return process


def _stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:  # whatever is left of the group (job processes, forkserver)
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait()
    if process in _PROCESSES:
        _PROCESSES.remove(process)


_WORKERS: list[WorkerProcess] = []
"""The transcriber workers, run as the tests run them (tests.conftest.WorkerProcess)."""


def _stop_all() -> None:
    for worker in _WORKERS:
        worker.stop()
    for process in list(_PROCESSES):
        _stop(process, grace=5.0)


class FakeDeepgramProcess:
    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "fake-deepgram.log"
        self.process = _spawn(
            [sys.executable, "-m", "tests.fake_deepgram", "--port", "0", "--api-key", DG_KEY],
            {**os.environ, "PYTHONPATH": str(ROOT)},
            self.log,
        )
        self.port = 0

    async def ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log.read_text(errors="replace").splitlines():
                if line.strip().isdigit():
                    self.port = int(line.strip())
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"fake deepgram exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("fake deepgram did not start (Whisper load?)")
            await asyncio.sleep(0.2)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/listen"

    async def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(
            await _http_get(f"http://127.0.0.1:{self.port}/_fake/state")
        )
        return state


async def _http_get(url: str, timeout: float = 10.0) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
            return body.decode()

    return await asyncio.to_thread(get)


def quantile(values: list[float], q: float) -> float | None:
    return round(float(np.quantile(values, q)), 3) if values else None


# ------------------------------------------------------------------------ scoring


def align(ref: list[str], hyp: list[str]) -> list[int]:
    """For each reference word, the hypothesis word it is matched to in a longest common
    subsequence, or -1."""
    n, m = len(ref), len(hyp)
    dp = np.zeros((n + 1, m + 1), np.int32)
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            dp[i, j] = dp[i + 1, j + 1] + 1 if ref[i] == hyp[j] else max(dp[i + 1, j], dp[i, j + 1])
    matched = [-1] * n
    i = j = 0
    while i < n and j < m:
        if ref[i] == hyp[j]:
            matched[i] = j
            i, j = i + 1, j + 1
        elif dp[i + 1, j] >= dp[i, j + 1]:
            i += 1
        else:
            j += 1
    return matched


def score(
    script: Script, finals: dict[str, list[tuple[str, float]]], sent_wall: Any | None
) -> dict[str, Any]:
    """`finals`: per speaker, (text, received at) of each final caption in arrival order;
    `sent_wall(t)`: when the audio at meeting time t left its publisher (monotonic), None
    for no caption delays."""
    total = found = 0
    first_missing: list[dict[str, Any]] = []
    lossy: list[dict[str, Any]] = []
    delays: list[float] = []
    for speaker in sorted({s.speaker for s in script.spoken}):
        sentences = [s for s in script.spoken if s.speaker == speaker]
        words = [normalize_words(s.text) for s in sentences]
        hyp: list[str] = []
        caption_of: list[int] = []
        for k, (text, _) in enumerate(finals.get(speaker, [])):
            ws = normalize_words(text)
            hyp += ws
            caption_of += [k] * len(ws)
        matched = align([w for ws in words for w in ws], hyp)
        k = 0
        for n, (s, ws) in enumerate(zip(sentences, words, strict=True)):
            got = matched[k : k + len(ws)]
            k += len(ws)
            total += len(ws)
            found += sum(g >= 0 for g in got)
            hits = [g for g in got if g >= 0]
            if (
                hits and sent_wall is not None
            ):  # caption delay: the final holding the sentence's last heard word
                received = finals[speaker][caption_of[hits[-1]]][1]
                delays.append(received - sent_wall(s.end))
            entry = {
                "speaker": s.speaker,
                "at": round(s.start, 2),
                "turn": s.turn,
                "starts_turn": n == 0 or sentences[n - 1].turn != s.turn,
                "text": s.text,
                "missing": [w for w, g in zip(ws, got, strict=True) if g < 0],
            }
            if got[0] < 0:
                first_missing.append(entry)
            if min(got) < 0:
                lossy.append(entry)
    return {
        "words": total,
        "found": found,
        "recall": found / total if total else 0.0,
        "first_words_missing": first_missing,
        "lossy_sentences": lossy,
        "caption_delay_p50_s": quantile(delays, 0.5),
        "caption_delay_p95_s": quantile(delays, 0.95),
    }


# ----------------------------------------------------------- the gate, replayed offline


async def replay_gate(script: Script, *, transcribe: bool = True) -> dict[str, Any]:
    """Every track through the worker's own SpeechGate (silero, default settings), offline,
    on the exact audio published: what the gate sends when nothing else interferes (no
    codec, no network, no CPU contention), and whether it covers every sentence.

    With `transcribe`, the fake's own recognizer (tests.fake_stt_recognizer, what the fake
    Deepgram runs per connection) then hears, per track, (a) what the gate sent, finalized
    at each burst end as the pipeline's flush does, and (b) the whole track: the gate's
    effect on recall with the same STT and nothing else in between."""
    from transcriber.settings import Settings
    from transcriber.speech_gate import GateAudio, GateBurstEnd, GateOptions, SpeechGate
    from transcriber.stt_providers import SAMPLE_RATE as STT_RATE
    from transcriber.vad_batcher import load_gate_vad

    # fed faster than real time on purpose: silero's "slower than realtime" warning is noise
    logging.getLogger("livekit.plugins.silero").setLevel(logging.ERROR)
    vad = load_gate_vad()
    options = GateOptions(preroll=Settings.gate_preroll, hangover=Settings.gate_hangover)
    sent: dict[str, list[tuple[float, float]]] = {}
    audio: dict[str, np.ndarray] = {}
    gated: dict[str, list[np.ndarray | None]] = {}
    """Per track, the audio the gate sent; None marks a burst end."""
    step = SAMPLE_RATE // 100
    for name, track in script.tracks.items():
        resampler = rtc.AudioResampler(SAMPLE_RATE, STT_RATE, num_channels=1)
        gate = SpeechGate(vad, options)
        spans: list[tuple[float, float]] = []
        out_audio: list[np.ndarray | None] = []
        heard: list[np.ndarray] = []

        async def collect(
            gate: SpeechGate = gate,
            spans: list[tuple[float, float]] = spans,
            out_audio: list[np.ndarray | None] = out_audio,
        ) -> None:
            async for event in gate:
                if isinstance(event, GateAudio):
                    out_audio.append(np.frombuffer(event.frame.data, np.int16).copy())
                    end = event.start + event.frame.duration
                    flushed = len(out_audio) > 1 and out_audio[-2] is None
                    if not flushed and spans and abs(spans[-1][1] - event.start) < 1e-6:
                        spans[-1] = (spans[-1][0], end)
                    else:  # a new burst (after a flush) starts a new span even if contiguous
                        spans.append((event.start, end))
                elif isinstance(event, GateBurstEnd):
                    out_audio.append(None)

        task = asyncio.create_task(collect())
        for i in range(0, len(track) - step + 1, step):
            frame = rtc.AudioFrame(track[i : i + step].tobytes(), SAMPLE_RATE, 1, step)
            for out in resampler.push(frame):
                heard.append(np.frombuffer(out.data, np.int16).copy())
                gate.push_frame(out)
            if i % (step * 50) == 0:
                await asyncio.sleep(0)
        for out in resampler.flush():
            heard.append(np.frombuffer(out.data, np.int16).copy())
            gate.push_frame(out)
        gate.end_input()
        await task
        await gate.aclose()
        sent[name] = spans
        gated[name] = out_audio
        audio[name] = np.concatenate(heard)

    uncovered: list[dict[str, Any]] = []
    short_lead: list[dict[str, Any]] = []
    margins: list[float] = []
    previous: dict[str, Spoken] = {}
    for s in script.spoken:
        spans = sent[s.speaker]
        before, previous[s.speaker] = previous.get(s.speaker), s
        covered = sum(max(0.0, min(b, s.end) - max(a, s.start)) for a, b in spans)
        holding = [a for a, b in spans if a <= s.start < b]
        if holding:
            # audio the STT hears before the sentence since its last flush (Finalize)
            margins.append(s.start - holding[0])
            if margins[-1] < 0.3:
                short_lead.append(
                    {
                        "speaker": s.speaker,
                        "at": round(s.start, 2),
                        "text": s.text,
                        "audio_before_s": round(margins[-1], 3),
                        "pause_before_s": None
                        if before is None
                        else round(s.start - before.end, 3),
                    }
                )
        if s.end - s.start - covered > 0.005:
            uncovered.append(
                {
                    "speaker": s.speaker,
                    "at": round(s.start, 2),
                    "text": s.text,
                    "unsent_s": round(s.end - s.start - covered, 3),
                }
            )
    bursts = sum(len(v) for v in sent.values())
    billed = sum(b - a for v in sent.values() for a, b in v)
    result: dict[str, Any] = {
        "billed_s": round(billed, 3),
        "spans": bursts,
        "false_spans": sum(
            1
            for name, v in sent.items()
            for a, b in v
            if not any(s.speaker == name and s.start < b and s.end > a for s in script.spoken)
        ),
        "sent_per_track_s": {n: round(sum(b - a for a, b in v), 3) for n, v in sent.items()},
        "sentences_not_fully_sent": uncovered,
        "min_audio_before_sentence_s": round(min(margins), 3) if margins else None,
        "sentences_with_short_preroll": short_lead,
    }
    if transcribe:
        speakers = {s.speaker for s in script.spoken}
        whole: dict[str, list[np.ndarray | None]] = {n: [audio[n]] for n in speakers}
        # the STT's own noise floor: the ungated audio 10 ms later (no gate) already changes
        # what Whisper hears, as any other cut of the stream does
        shifted: dict[str, list[np.ndarray | None]] = {
            n: [np.zeros(STT_RATE // 100, np.int16), audio[n]] for n in speakers
        }
        feeds = (
            ("gated", {n: gated[n] for n in speakers}),
            ("ungated", whole),
            ("ungated_10ms_later", shifted),
        )
        for label, feed in feeds:
            finals = {
                n: [(t, 0.0) for t in await _recognize(chunks, STT_RATE)]
                for n, chunks in feed.items()
            }
            scored = score(script, finals, None)
            result[f"stt_recall_{label}"] = round(scored["recall"], 4)
            result[f"stt_first_words_missing_{label}"] = [
                f"{e['speaker']}@{e['at']}" for e in scored["first_words_missing"]
            ]
            result[f"stt_lossy_sentences_{label}"] = [
                f"{e['speaker']}@{e['at']} missing {' '.join(e['missing'])}"
                for e in scored["lossy_sentences"]
            ]
        if result["stt_recall_ungated"]:
            result["stt_recall_ratio"] = round(
                result["stt_recall_gated"] / result["stt_recall_ungated"], 4
            )
            result["stt_recall_ratio_ungated_10ms_later"] = round(
                result["stt_recall_ungated_10ms_later"] / result["stt_recall_ungated"], 4
            )
    return result


async def _recognize(chunks: list[np.ndarray | None], rate: int) -> list[str]:
    """Final transcripts of the fake's recognizer (as configured by the fake Deepgram for
    the worker's query) for int16 audio chunks; None finalizes, like Deepgram's Finalize."""
    from tests.fake_deepgram import MIN_SILENCE
    from tests.fake_stt_recognizer import StreamRecognizer, Transcript, load_model

    await load_model()
    recognizer = StreamRecognizer(sample_rate=rate, min_silence=MIN_SILENCE, interim_every=None)
    finals: list[str] = []

    async def collect() -> None:
        async for event in recognizer.events():
            if isinstance(event, Transcript) and event.is_final and event.words:
                finals.append(event.text)

    task = asyncio.create_task(collect())
    for chunk in chunks:
        if chunk is None:
            recognizer.finalize()
        else:
            recognizer.push(chunk.astype(np.float32) / 32768.0)
        await asyncio.sleep(0)
    recognizer.end()
    await task
    await recognizer.aclose()
    return finals


# --------------------------------------------------------------------------- a run


@dataclass
class RunResult:
    gating: bool
    billed_s: float = 0.0
    """Audio seconds the fake Deepgram received during the meeting."""
    billed_metric_s: float = 0.0
    """The worker's transcriber_stt_audio_sent_seconds_total over the same window."""
    billed_outside_meeting_s: float = 0.0
    """Received before the meeting started or after it ended (silence around it)."""
    connections: int = 0
    stt_final_words: int = 0
    caption_final_words: int = 0
    recall: float = 0.0
    words: int = 0
    first_words_missing: list[dict[str, Any]] = field(default_factory=list)
    lossy_sentences: list[dict[str, Any]] = field(default_factory=list)
    caption_delay_p50_s: float | None = None
    caption_delay_p95_s: float | None = None
    last_final_after_meeting_s: float = 0.0
    realtime_factor: float = 0.0
    worker_cpu_cores: float = 0.0
    cpu_per_track: float = 0.0
    fake_cpu_cores: float = 0.0
    livekit_cpu_cores: float = 0.0
    loadgen_cpu_cores: float = 0.0
    other_cpu_cores: float = 0.0
    """CPU the rest of the machine used meanwhile (other work on a shared machine)."""
    worker_warnings: dict[str, int] = field(default_factory=dict)
    sent_per_track_s: dict[str, float] = field(default_factory=dict)
    """What the worker says it sent to the STT per track ("track closed" log lines)."""


def sent_per_track(log: str) -> dict[str, float]:
    owners: dict[str, str] = {}
    sent: dict[str, float] = {}
    for line in log.splitlines():
        if '"captioning track"' not in line and '"track closed"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("message") == "captioning track":
            owners[record.get("track", "")] = record.get("participant", "")
        elif record.get("message") == "track closed":
            who = owners.get(record.get("track", ""), record.get("track", ""))
            sent[who] = sum(
                v for k, v in record.items() if k.startswith("stt_") and k.endswith("_sent_s")
            )
    return dict(sorted(sent.items()))


WARNINGS = {
    "vad_slower_than_realtime": "VAD inference is slower than realtime",
    "event_loop_blocked": "event loop blocked",
    "stt_failed": "STT stream failed",
    "stt_drain_timeout": "STT did not finish in time",
    "vad_failed": "VAD failed",
    "errors": '"level": "ERROR"',
}


SENT = "transcriber_stt_audio_sent_seconds_total"


async def start_worker(
    server: LiveKitServer,
    fake: FakeDeepgramProcess,
    *,
    agent_name: str,
    gating: bool,
    workdir: Path,
) -> WorkerProcess:
    """The transcriber on the fake Deepgram, as the tests run it."""
    metrics_dir = workdir / "prometheus"
    metrics_dir.mkdir()
    env = worker_env(
        server,
        TRANSCRIBER_AGENT_NAME=agent_name,
        TRANSCRIBER_STT_PROVIDER="deepgram",
        DEEPGRAM_API_KEY=DG_KEY,
        DEEPGRAM_URL=fake.url,
        TRANSCRIBER_VAD_GATING="true" if gating else "false",
        TRANSCRIBER_DRAIN_TIMEOUT="10",
        # at the end every track's STT is drained, however far behind the fake is
        TRANSCRIBER_TRACK_DRAIN_TIMEOUT=str(DRAIN_MAX),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    worker = WorkerProcess(env, workdir / "worker.log")
    _WORKERS.append(worker)
    await asyncio.to_thread(worker.wait_registered, 90.0)
    return worker


@dataclass
class Meeting:
    """The script's participants in one room, one microphone track each, and a listener."""

    server: LiveKitServer
    room_name: str
    rooms: list[rtc.Room] = field(default_factory=list)
    sources: dict[str, rtc.AudioSource] = field(default_factory=dict)
    listener: CaptionListener | None = None

    async def join(self, script: Script, agent_name: str) -> None:
        server = self.server
        self.listener = await CaptionListener(server, self.room_name, identity="listener").join()
        for name in script.tracks:
            room = rtc.Room()
            self.rooms.append(room)
            await room.connect(
                server.url,
                server.token(name, self.room_name),
                rtc.RoomOptions(auto_subscribe=False),
            )
            source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=QUEUE_MS)
            track = rtc.LocalAudioTrack.create_audio_track(f"{name}-mic", source)
            await room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            )
            self.sources[name] = source
        async with server.api() as lkapi:
            await lkapi.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=agent_name, room=self.room_name)
            )

    async def play(self, script: Script) -> np.ndarray:
        """Every track in real time, frame by frame: when each frame was accepted."""
        frames = len(next(iter(script.tracks.values()))) // FRAME
        returned = np.zeros(frames)
        for i in range(frames):
            await asyncio.gather(
                *(
                    source.capture_frame(
                        rtc.AudioFrame(
                            script.tracks[name][i * FRAME : (i + 1) * FRAME].tobytes(),
                            SAMPLE_RATE,
                            1,
                            FRAME,
                        )
                    )
                    for name, source in self.sources.items()
                )
            )
            returned[i] = time.monotonic()
        await asyncio.gather(*(s.wait_for_playout() for s in self.sources.values()))
        return returned

    async def unpublish(self) -> None:
        for room in self.rooms:
            for sid in list(room.local_participant.track_publications):
                await room.local_participant.unpublish_track(sid)

    async def leave(self) -> None:
        """Ends the job cleanly (its last finals), then disconnects everyone."""
        try:
            async with self.server.api() as lkapi:
                await asyncio.wait_for(
                    lkapi.room.delete_room(api.DeleteRoomRequest(room=self.room_name)), 10
                )
        except Exception:
            pass
        clients = [r.disconnect() for r in self.rooms]
        if self.listener is not None:
            clients.append(self.listener.leave())
        for client in clients:
            try:
                await asyncio.wait_for(client, 5)
            except Exception:
                pass


class CpuMeter:
    """CPU of the worker, the fake, the LiveKit server, this process (the load generator)
    and the rest of the machine, between `start` and `stop`, in cores."""

    def __init__(self, processes: dict[str, int]) -> None:
        self._processes = processes
        self._me = psutil.Process()

    def start(self) -> None:
        self._trees = {k: tree_cpu(pid) for k, pid in self._processes.items()}
        self._own, self._machine = sum(self._me.cpu_times()[:2]), psutil.cpu_times()
        self._t0 = time.monotonic()

    def stop(self, result: RunResult, tracks: int) -> None:
        wall = time.monotonic() - self._t0
        cores = {
            k: cpu_between(self._trees[k], tree_cpu(pid)) / wall
            for k, pid in self._processes.items()
        }
        cores["loadgen"] = (sum(self._me.cpu_times()[:2]) - self._own) / wall
        machine = psutil.cpu_times()
        idle = machine.idle + machine.iowait - self._machine.idle - self._machine.iowait
        busy = (sum(machine) - sum(self._machine) - idle) / wall  # summed over CPUs
        result.worker_cpu_cores = round(cores["worker"], 4)
        result.cpu_per_track = round(cores["worker"] / tracks, 4)
        result.fake_cpu_cores = round(cores["fake"], 3)
        result.livekit_cpu_cores = round(cores["livekit"], 3)
        result.loadgen_cpu_cores = round(cores["loadgen"], 3)
        result.other_cpu_cores = round(max(0.0, busy - sum(cores.values())), 3)


async def wait_tracks_closed(worker: WorkerProcess, tracks: int, label: str) -> None:
    """Each unpublished track's pipeline ends its STT stream and publishes the last finals
    (the fake decodes what it still holds first; on a busy machine it can be far behind).
    A track is done when the worker logs it closed."""
    deadline = time.monotonic() + DRAIN_MAX
    while worker.log().count('"track closed"') < tracks:
        if time.monotonic() > deadline:
            print(f"  {label}: tracks still open after {DRAIN_MAX:.0f} s", flush=True)
            return
        await asyncio.sleep(0.5)


async def run_once(
    server: LiveKitServer, script: Script, *, gating: bool, workdir: Path
) -> RunResult:
    label = "gated" if gating else "ungated"
    result = RunResult(gating=gating)
    fake = FakeDeepgramProcess(workdir)
    worker: WorkerProcess | None = None
    meeting = Meeting(server, f"gating-{label}-{uuid.uuid4().hex[:6]}")
    agent_name = f"gating-{uuid.uuid4().hex[:6]}"
    try:
        await fake.ready()
        worker = await start_worker(
            server, fake, agent_name=agent_name, gating=gating, workdir=workdir
        )
        await meeting.join(script, agent_name)
        tracks = len(meeting.sources)
        await worker.wait_tracks(tracks, timeout=60)
        await asyncio.sleep(1.0)

        meter = CpuMeter(
            {"worker": worker.process.pid, "fake": fake.process.pid, "livekit": server.process.pid}
        )
        billed0 = (await fake.state())["billed_seconds"]
        metric0 = await asyncio.to_thread(worker.metric, SENT)
        t0 = time.monotonic()
        meter.start()
        returned = await meeting.play(script)
        meter.stop(result, tracks)
        t1 = time.monotonic()
        result.realtime_factor = round((t1 - t0) / script.duration, 4)

        # billed: once the meeting's last audio (tail: background only) reached the STT
        await asyncio.sleep(1.0)
        result.billed_s = round((await fake.state())["billed_seconds"] - billed0, 3)
        result.billed_metric_s = round(await asyncio.to_thread(worker.metric, SENT) - metric0, 3)

        await meeting.unpublish()
        await wait_tracks_closed(worker, tracks, label)
        await asyncio.sleep(CAPTION_TRANSIT)
        assert meeting.listener is not None
        listener = meeting.listener
        result.last_final_after_meeting_s = round(
            max((c.received_at for c in listener.captions if c.final), default=t1) - t1, 2
        )
        lead = QUEUE_MS / 1000 - FRAME / SAMPLE_RATE

        def sent_wall(t: float) -> float:
            return float(returned[min(int(t * SAMPLE_RATE) // FRAME, len(returned) - 1)]) + lead

        finals = {
            n: [(c.text, c.received_at) for c in listener.of(n) if c.final] for n in meeting.sources
        }
        record_recall(result, score(script, finals, sent_wall), finals)
        await record_stt(result, fake, workdir, finals)
        log = worker.log()
        result.worker_warnings = {k: log.count(v) for k, v in WARNINGS.items()}
        result.sent_per_track_s = sent_per_track(log)
        return result
    finally:
        await meeting.leave()
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(_stop, fake.process, 5.0)


def record_recall(
    result: RunResult, scored: dict[str, Any], finals: dict[str, list[tuple[str, float]]]
) -> None:
    result.recall = round(scored["recall"], 4)
    result.words = scored["words"]
    result.first_words_missing = scored["first_words_missing"]
    result.lossy_sentences = scored["lossy_sentences"]
    result.caption_delay_p50_s = scored["caption_delay_p50_s"]
    result.caption_delay_p95_s = scored["caption_delay_p95_s"]
    result.caption_final_words = sum(
        len(normalize_words(t)) for fs in finals.values() for t, _ in fs
    )


async def record_stt(
    result: RunResult,
    fake: FakeDeepgramProcess,
    workdir: Path,
    finals: dict[str, list[tuple[str, float]]],
) -> None:
    """What the fake Deepgram received and answered, also kept in `workdir`."""
    state = await fake.state()
    result.billed_outside_meeting_s = round(state["billed_seconds"] - result.billed_s, 3)
    accepted = [c for c in state["connections"] if c["accepted"]]
    result.connections = len(accepted)
    result.stt_final_words = sum(len(normalize_words(t)) for c in accepted for t in c["finals"])
    (workdir / "fake-state.json").write_text(json.dumps(state, indent=1))
    (workdir / "captions.json").write_text(
        json.dumps({n: [t for t, _ in f] for n, f in finals.items()}, indent=1)
    )


# --------------------------------------------------------------------------- report


def summarize(
    script: Script,
    gated: RunResult,
    ungated: RunResult,
    replay: dict[str, Any] | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    speech = script.speech_seconds
    ratio = gated.recall / ungated.recall if ungated.recall else None
    cpu_ratio = gated.cpu_per_track / ungated.cpu_per_track if ungated.cpu_per_track else None
    ungated_missing = {(e["speaker"], e["at"]) for e in ungated.first_words_missing}
    gated_only = [
        e for e in gated.first_words_missing if (e["speaker"], e["at"]) not in ungated_missing
    ]
    return {
        "meeting_seconds": round(script.duration, 2),
        "speech_seconds": round(speech, 2),
        "talk_seconds": round(script.talk_seconds, 2),
        "participants": PARTICIPANTS,
        "sentences": len(script.spoken),
        "turns": len(script.turns),
        "words": gated.words or ungated.words,
        "backgrounds": script.backgrounds,
        "seed": args.seed,
        "billed_over_speech_gated": round(gated.billed_s / speech, 3),
        "billed_over_speech_ungated": round(ungated.billed_s / speech, 3),
        "billed_over_talk_gated": round(gated.billed_s / script.talk_seconds, 3),
        "recall_gated": gated.recall,
        "recall_ungated": ungated.recall,
        "recall_ratio": round(ratio, 4) if ratio is not None else None,
        "first_words_missing_gated": len(gated.first_words_missing),
        "first_words_missing_ungated": len(ungated.first_words_missing),
        # missing with gating although the same STT heard them without it
        "first_words_missing_gated_only": len(gated_only),
        "cpu_per_track_gated": gated.cpu_per_track,
        "cpu_per_track_ungated": ungated.cpu_per_track,
        "cpu_gated_over_ungated": round(cpu_ratio, 3) if cpu_ratio is not None else None,
        "targets": {
            "billed_over_speech_gated<=1.2": gated.billed_s / speech <= 1.2,
            "recall_ratio>=0.99": ratio is not None and ratio >= 0.99,
            "no_first_word_missing_gated": not gated.first_words_missing,
            "cpu_gated_over_ungated<=1.2": cpu_ratio is not None and cpu_ratio <= 1.2,
        },
        "first_words_missing_gated_only_list": gated_only,
        "gate_replay": replay,
        "runs": {"gated": gated.__dict__, "ungated": ungated.__dict__},
    }


def print_table(summary: dict[str, Any]) -> None:
    g, u = summary["runs"]["gated"], summary["runs"]["ungated"]
    speech = summary["speech_seconds"]

    def pair(a: Any, b: Any) -> str:
        return f"{a}/{b}"

    rows = [
        ("billed s (fake Deepgram)", g["billed_s"], u["billed_s"]),
        ("billed s (worker metric)", g["billed_metric_s"], u["billed_metric_s"]),
        ("billed / speech", round(g["billed_s"] / speech, 3), round(u["billed_s"] / speech, 3)),
        ("STT connections", g["connections"], u["connections"]),
        ("word recall", g["recall"], u["recall"]),
        ("first words missing", len(g["first_words_missing"]), len(u["first_words_missing"])),
        ("sentences with lost words", len(g["lossy_sentences"]), len(u["lossy_sentences"])),
        (
            "STT final words/caption words",
            pair(g["stt_final_words"], g["caption_final_words"]),
            pair(u["stt_final_words"], u["caption_final_words"]),
        ),
        (
            "caption delay p50/p95 s",
            pair(g["caption_delay_p50_s"], g["caption_delay_p95_s"]),
            pair(u["caption_delay_p50_s"], u["caption_delay_p95_s"]),
        ),
        ("worker CPU cores", g["worker_cpu_cores"], u["worker_cpu_cores"]),
        ("worker CPU per track", g["cpu_per_track"], u["cpu_per_track"]),
        (
            "fake/livekit/loadgen cores",
            f"{g['fake_cpu_cores']}/{g['livekit_cpu_cores']}/{g['loadgen_cpu_cores']}",
            f"{u['fake_cpu_cores']}/{u['livekit_cpu_cores']}/{u['loadgen_cpu_cores']}",
        ),
        ("other processes' cores", g["other_cpu_cores"], u["other_cpu_cores"]),
        ("playback wall/audio", g["realtime_factor"], u["realtime_factor"]),
        (
            "VAD slower than realtime",
            g["worker_warnings"].get("vad_slower_than_realtime"),
            u["worker_warnings"].get("vad_slower_than_realtime"),
        ),
    ]
    m = summary
    print(
        f"\nmeeting {m['meeting_seconds']} s, speech {speech} s, talk {m['talk_seconds']} s, "
        f"{m['participants']} tracks, {m['sentences']} sentences in {m['turns']} turns, "
        f"{m['words']} words"
    )
    print(f"{'':32}{'gated':>18}{'ungated':>18}")
    for name, a, b in rows:
        print(f"{name:32}{str(a):>18}{str(b):>18}")
    print(f"recall ratio (gated/ungated): {summary['recall_ratio']}")
    print(f"CPU per track gated/ungated: {summary['cpu_gated_over_ungated']}")
    if (r := summary["gate_replay"]) is not None:
        print(
            f"gate replayed offline: billed {r['billed_s']} s "
            f"({r['billed_s'] / speech:.3f} x speech), "
            f"{r['spans']} bursts ({r['false_spans']} without speech), "
            f"{len(r['sentences_not_fully_sent'])} sentences not fully sent, "
            f"min audio before a sentence {r['min_audio_before_sentence_s']} s"
        )
    if r is not None:
        for e in r["sentences_with_short_preroll"][:10]:
            print(
                f"  gate flushed {e['audio_before_s']} s before {e['speaker']} @{e['at']}s "
                f"(pause before it {e['pause_before_s']} s): {e['text']!r}"
            )
        if "stt_recall_gated" in r:
            print(
                f"same STT offline: recall gated {r['stt_recall_gated']}, "
                f"ungated {r['stt_recall_ungated']}, ratio {r.get('stt_recall_ratio')}; "
                f"ungated 10 ms later {r['stt_recall_ungated_10ms_later']} "
                f"(ratio {r.get('stt_recall_ratio_ungated_10ms_later')}: the STT's noise floor)"
            )
    for target, ok in summary["targets"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {target}")
    only = {(e["speaker"], e["at"]) for e in summary["first_words_missing_gated_only_list"]}
    for e in g["first_words_missing"][:10]:
        where = "gated only" if (e["speaker"], e["at"]) in only else "ungated too"
        print(f"  first word missing ({where}): {e['speaker']} @{e['at']}s {e['text']!r}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="VAD gating: billed seconds vs word recall")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--minutes", type=float, default=3.0, help="meeting length (default 3)")
    p.add_argument("--quick", action="store_true", help="a ~1 minute meeting")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--noise-dbfs", type=float, default=-60.0)
    p.add_argument("--only", choices=("gated", "ungated"), help="run one side (debugging)")
    p.add_argument("--no-replay", action="store_true", help="skip the offline gate replay")
    p.add_argument("--keep", action="store_true", help="keep logs, captions and fake state")
    p.add_argument("--timeout", type=float, help="seconds for everything (default: from --minutes)")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes = 1.0
    return args


async def amain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    script = build_script(args.minutes, args.seed, args.noise_dbfs)
    print(
        f"meeting: {script.duration:.0f} s, {len(script.spoken)} sentences, "
        f"speech {script.speech_seconds:.1f} s; logs in {workdir}",
        flush=True,
    )
    server = LiveKitServer.start(workdir / "livekit-server.log")
    _PROCESSES.append(server.process)
    try:
        results: dict[str, RunResult] = {}
        for gating in (True, False):
            label = "gated" if gating else "ungated"
            results[label] = RunResult(gating=gating)
            if args.only and args.only != label:
                continue
            (workdir / label).mkdir()
            print(f"run: {label} ...", flush=True)
            results[label] = r = await run_once(
                server, script, gating=gating, workdir=workdir / label
            )
            print(
                f"  billed {r.billed_s} s (metric {r.billed_metric_s}), recall {r.recall}, "
                f"first words missing {len(r.first_words_missing)}, cpu/track {r.cpu_per_track}",
                flush=True,
            )
    finally:
        server.stop()
        if server.process in _PROCESSES:
            _PROCESSES.remove(server.process)
    replay = None
    if not args.no_replay:
        print("replaying the gate offline ...", flush=True)
        replay = await replay_gate(script)
    return summarize(script, results["gated"], results["ungated"], replay, args)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    os.environ.setdefault("LIVEKIT_SERVER_BIN", str(DEFAULT_SERVER_BIN))
    workdir = Path(tempfile.mkdtemp(prefix="gating-"))
    timeout = args.timeout or 2 * (args.minutes * 60 + 150) + 120

    async def guarded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too when started with it ignored
            loop.add_signal_handler(sig, task.cancel)
        return await asyncio.wait_for(amain(args, workdir), timeout)

    try:
        summary = asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted, everything stopped", file=sys.stderr)
        return 130
    except asyncio.TimeoutError:
        print(f"did not finish in {timeout:.0f} s, everything stopped", file=sys.stderr)
        return 1
    finally:
        _stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
        print(f"wrote {args.json}")
    if args.keep:
        print(f"logs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
