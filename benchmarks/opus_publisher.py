"""Load that costs next to nothing: speakers as pre-encoded Opus, published by a Go program.

Encoding Opus in the load generator took a core at 8 tracks, so the load generator, not
the worker, set the knee. Here the speech program (every meeting sentence once, each with
its fast_stt timecode before it) is rendered once at 48 kHz, encoded once to Ogg Opus in
20 ms packets with `opusenc` (Debian's opus-tools), cached under ~/.cache/transcriber, and
published looped at real-time pace by `benchmarks/publisher` (github.com/livekit/
server-sdk-go/v2, built once into the same cache): one participant per track, each
starting at another packet of the loop, no audio processing at all.

A track's timeline is its packets': packet n of a track leaves at its start + n × 20 ms
(the Go program keeps an absolute schedule), so the send time of any sample is known
without a record per frame. Program sample x of loop k is at track sample
x + pre-skip - offset + k × loop length.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import os
import shutil
import subprocess
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from benchmarks import fast_stt
from tests.livekit_server import ROOT

SAMPLE_RATE = 48000
PACKET = SAMPLE_RATE // 50
"""Samples per Opus packet (20 ms)."""
CACHE = Path.home() / ".cache" / "transcriber"
SOURCE = ROOT / "benchmarks" / "publisher"
HORIZON = 3600.0
"""Seconds of each track's timeline whose sentences are listed in advance."""


@dataclass
class Sentence:
    """One sentence a speaker sent; positions are 48 kHz samples of its track."""

    seq: int
    marker: int
    speech_start: int
    speech_end: int


@dataclass(frozen=True)
class Program:
    """The looped speech: its Ogg Opus file and where each sentence is in one loop."""

    ogg: Path
    packets: int
    preskip: int
    sentences: tuple[tuple[int, int, int], ...]
    """(marker, speech start, speech end) in program samples; sentence j has timecode j."""

    @property
    def loop(self) -> int:
        return self.packets * PACKET


def build_program(speech: list[np.ndarray], pause: float, gap: float) -> Program:
    """Renders the sentences (48 kHz int16) with a timecode `gap` before each and `pause`
    of silence before that, and encodes them once (cached by content)."""
    if len(speech) > 256:
        raise ValueError("fast_stt timecodes go up to 255: at most 256 sentences")
    parts: list[np.ndarray] = []
    spans = []
    position = 0
    for j, sentence in enumerate(speech):
        marker = fast_stt.marker_audio(j, SAMPLE_RATE)
        silence = np.zeros(int(pause * SAMPLE_RATE), np.int16)
        between = np.zeros(int(gap * SAMPLE_RATE), np.int16)
        start = position + len(silence)
        speech_start = start + len(marker) + len(between)
        spans.append((start, speech_start, speech_start + len(sentence)))
        parts += [silence, marker, between, sentence]
        position = speech_start + len(sentence)
    tail = np.zeros(-position % PACKET, np.int16)  # whole packets
    audio = np.concatenate([*parts, tail])
    ogg = encode(audio)
    packets, preskip = opus_packets(ogg)
    return Program(ogg=ogg, packets=packets, preskip=preskip, sentences=tuple(spans))


def encode(audio: np.ndarray) -> Path:
    """48 kHz mono int16 → Ogg Opus, 20 ms packets, cached under ~/.cache/transcriber."""
    opusenc = shutil.which("opusenc")
    if opusenc is None:
        raise RuntimeError("opusenc not found: install opus-tools (scripts/setup does)")
    digest = hashlib.sha256(audio.tobytes()).hexdigest()[:16]
    out = CACHE / "bench-opus" / f"program-{digest}.ogg"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    wav = out.with_suffix(".wav")
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(audio.tobytes())
    partial = out.with_suffix(".part")
    subprocess.run(
        [opusenc, "--quiet", "--framesize", "20", "--bitrate", "32", str(wav), str(partial)],
        check=True,
    )
    wav.unlink()
    partial.rename(out)
    return out


def opus_packets(ogg: Path) -> tuple[int, int]:
    """(audio packets, pre-skip samples) of an Ogg Opus file."""
    data = ogg.read_bytes()
    packets, pos, preskip = 0, 0, 0
    first = b""
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS":
            raise ValueError(f"{ogg}: not an Ogg page at byte {pos}")
        count = data[pos + 26]
        table = data[pos + 27 : pos + 27 + count]
        body = pos + 27 + count
        if not first:
            first = data[body : body + table[0]]
        packets += sum(1 for lacing in table if lacing < 255)
        pos = body + sum(table)
    if first[:8] == b"OpusHead":
        preskip = int.from_bytes(first[10:12], "little")
    return packets - 2, preskip  # OpusHead, OpusTags


def publisher_binary() -> Path:
    """The Go publisher, built once per source version into ~/.cache/transcriber."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    binary = CACHE / f"bench-publisher-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        raise RuntimeError("go not found: the benchmark builds benchmarks/publisher with it")
    binary.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [go, "build", "-trimpath", "-o", str(binary.with_suffix(".part")), "."],
        cwd=SOURCE,
        check=True,
        timeout=600,
    )
    binary.with_suffix(".part").rename(binary)
    return binary


class LoopedSpeaker:
    """One published track of the program, seen from the benchmark: when each of its
    samples was sent and which sentence it belongs to."""

    def __init__(self, identity: str, room_name: str, program: Program, offset: int) -> None:
        self.identity, self.room_name = identity, room_name
        self.program = program
        self.offset_packets = offset % program.packets
        self.track_sid = ""
        self.start = 0.0
        """When the track's first packet left (monotonic)."""
        self.sent: list[Sentence] = []
        self._by_code: dict[int, list[Sentence]] = {}
        self._markers: list[int] = []

    def started(self, sid: str, start: float) -> None:
        self.track_sid, self.start = sid, start
        shift = self.program.preskip - self.offset_packets * PACKET
        loops = int(HORIZON * SAMPLE_RATE / self.program.loop) + 2
        for k in range(loops):
            for j, (marker, speech_start, speech_end) in enumerate(self.program.sentences):
                base = shift + k * self.program.loop
                if marker + base < 0:
                    continue
                sentence = Sentence(
                    len(self.sent), marker + base, speech_start + base, speech_end + base
                )
                self.sent.append(sentence)
                self._markers.append(sentence.marker)
                self._by_code.setdefault(j, []).append(sentence)

    def send_time(self, sample: int) -> float | None:
        """When the packet holding track sample `sample` left; None before the start or
        for a sample not sent yet."""
        if sample < 0 or not self.start:
            return None
        sent = self.start + sample // PACKET * PACKET / SAMPLE_RATE
        return sent if sent <= time.monotonic() else None

    def sentence_at(self, sample: int) -> Sentence | None:
        """The sentence whose timecode, speech and following pause hold `sample`."""
        i = bisect.bisect_right(self._markers, sample) - 1
        return self.sent[i] if i >= 0 else None

    def audio_sent_at(self, tag: fast_stt.Tag, arrival: float) -> tuple[Sentence, float] | None:
        if tag.code < 0:
            return None
        for sentence in reversed(self._by_code.get(tag.code, [])):
            marker_sent = self.send_time(sentence.marker)
            if marker_sent is not None and marker_sent <= arrival:
                sample = sentence.marker + tag.offset * SAMPLE_RATE // fast_stt.SAMPLE_RATE
                sent = self.send_time(sample)
                return None if sent is None else (sentence, sent)
        return None


class PublisherProcess:
    """The Go publisher for a set of speakers; stops when closed (or its stdin closes)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.tracks = 0
        self.reported: dict[str, float] = {}
        """The publisher's own account at exit: cpu_s, wall_s."""

    async def start(self, url: str, speakers: list[tuple[LoopedSpeaker, str]]) -> None:
        """Publishes every (speaker, token); returns once all tracks are sending."""
        plan = {
            "url": url,
            "duration_s": HORIZON,  # a bound, should this process die without closing stdin
            "tracks": [
                {
                    "token": token,
                    "clip": str(s.program.ogg),
                    "name": f"{s.identity}-mic",
                    "offset_packets": s.offset_packets,
                }
                for s, token in speakers
            ],
        }
        binary = await asyncio.to_thread(publisher_binary)
        with open(self.log_path, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(binary),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env={**os.environ, "GOMAXPROCS": "1", "GOGC": "400"},
            )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(plan).encode() + b"\n")
        await self.process.stdin.drain()
        self.tracks = len(speakers)
        clock = time.time() - time.monotonic()
        pending = len(speakers)
        while pending:
            line = await asyncio.wait_for(self.process.stdout.readline(), 60)
            if not line:
                raise RuntimeError(f"publisher exited:\n{self.log_path.read_text()[-3000:]}")
            report = json.loads(line)
            if "track" in report:
                speaker = speakers[report["track"]][0]
                speaker.started(report["sid"], report["start_unix_ns"] / 1e9 - clock)
                pending -= 1

    def cpu_seconds(self) -> float:
        if self.process is None:
            return 0.0
        try:
            t = psutil.Process(self.process.pid).cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return float(t.user + t.system)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        try:
            tail = await asyncio.wait_for(process.stdout.read(), 10)
            for line in tail.splitlines():
                report = json.loads(line)
                if "cpu_s" in report:
                    self.reported = report
            await asyncio.wait_for(process.wait(), 10)
        except (asyncio.TimeoutError, ValueError):
            pass
        if process.returncode is None:
            try:
                os.killpg(process.pid, 9)
            except ProcessLookupError:
                pass
            await process.wait()
