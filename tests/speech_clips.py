"""Synthetic speech clips for speech-to-text tests and benchmarks.

Clips are spoken by espeak-ng and shaped by sox, then cached as mono 16-bit WAV files
with their expected text beside them, so every run hears exactly the same audio without
shipping binary fixtures. A clip is made the first time it is asked for and reused after.

    from tests.speech_clips import clip, all_clips, silence, noise, long_speech

    c = clip("us-160", 16000)
    c.path          # the WAV file
    c.text          # what is said, sentences joined by spaces
    c.sentences     # each sentence with its start and end in seconds
    for frame in c.frames():  # 10 ms livekit.rtc.AudioFrame objects
        ...

The cache lives in ~/.cache/transcriber/speech unless TRANSCRIBER_SPEECH_CACHE says
otherwise. `python -m tests.speech_clips` makes every clip ahead of time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from livekit import rtc

SAMPLE_RATES = (16000, 48000)

LEAD_IN = 0.5
"""Silence before the first sentence, in seconds."""
PAUSE = 1.2
"""Silence between sentences: long enough for any voice activity detector to end a turn."""
TAIL = 1.0
"""Silence after the last sentence."""

SENTENCES = (
    "Good morning everyone, thank you for joining the meeting.",
    "Let's start with a quick update on the project.",
    "The new version will be ready at the end of the month.",
    "We found a few problems during testing last week.",
    "Most of them are fixed, but some are still open.",
    "Can everyone see my screen right now?",
    "The sales numbers look much better than last year.",
    "I will send the notes to the team after this call.",
    "Please let me know if you have any questions.",
    "The weather was nice, so we had lunch outside.",
    "Our next meeting is on Tuesday morning.",
    "We need to hire more people for the support team.",
    "The customer asked for a simple way to export the data.",
    "I think we should focus on the most important features first.",
    "Thanks for the feedback, it was very helpful.",
    "Let's take a short break and come back in a few minutes.",
    "The budget for this quarter has already been approved.",
    "She will present the results of the survey tomorrow.",
)


@dataclass(frozen=True)
class _Voice:
    name: str
    voice: str
    words_per_minute: int


VOICES = (
    _Voice("us-160", "en-us", 160),
    _Voice("gb-150", "en-gb", 150),
    _Voice("us-f3-170", "en-us+f3", 170),
    _Voice("rp-155", "en-gb-x-rp", 155),
    _Voice("us-m3-145", "en-us+m3", 145),
    _Voice("us-190", "en-us", 190),
)
"""Each voice reads its own three sentences, so the clips together cover all of SENTENCES."""

CLIP_NAMES = tuple(v.name for v in VOICES)

_FORMAT = 1
"""Bump when the way clips are made changes, so cached copies are made again."""


@dataclass(frozen=True)
class Sentence:
    text: str
    start: float
    """Seconds from the start of the clip to the first sound of the sentence."""
    end: float
    """Seconds from the start of the clip to the last sound of the sentence."""


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    sample_rate: int
    sentences: tuple[Sentence, ...]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)

    @property
    def duration(self) -> float:
        with wave.open(str(self.path)) as w:
            return float(w.getnframes() / w.getframerate())

    def samples(self) -> np.ndarray:
        """The audio as int16 samples."""
        with wave.open(str(self.path)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)

    def frames(self, frame_ms: int = 10) -> Iterator[rtc.AudioFrame]:
        """The audio cut into frames as a LiveKit track would deliver them."""
        from livekit import rtc

        step = self.sample_rate * frame_ms // 1000
        data = self.samples()
        for i in range(0, len(data), step):
            chunk = data[i : i + step]
            yield rtc.AudioFrame(
                data=chunk.tobytes(),
                sample_rate=self.sample_rate,
                num_channels=1,
                samples_per_channel=len(chunk),
            )


_Audio = tuple[np.ndarray, tuple[Sentence, ...]]
"""int16 samples and the sentences spoken in them."""


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "transcriber" / "speech"
    return Path(os.environ.get("TRANSCRIBER_SPEECH_CACHE") or default)


def clip(name: str, sample_rate: int = 16000) -> Clip:
    """Three sentences read by one voice, with pauses between them."""
    voice = next((v for v in VOICES if v.name == name), None)
    if voice is None:
        raise ValueError(f"unknown clip {name!r}: use one of {', '.join(CLIP_NAMES)}")
    index = VOICES.index(voice)
    texts = SENTENCES[index * 3 : index * 3 + 3]
    return _cached(name, sample_rate, lambda: _speak(voice, texts, sample_rate, PAUSE))


def all_clips(sample_rate: int = 16000) -> list[Clip]:
    return [clip(name, sample_rate) for name in CLIP_NAMES]


def long_speech(seconds: float, sample_rate: int = 16000) -> Clip:
    """Sentences run together with no pause between them, lasting at least `seconds`.

    For checking that a recognizer gives finals even when the speaker never stops.
    """

    def make() -> _Audio:
        # a sentence lasts about three seconds: start with enough of them and add more if short
        count = int(seconds / 3) + 1
        while True:
            texts = [SENTENCES[i % len(SENTENCES)] for i in range(count)]
            audio, sentences = _speak(VOICES[0], texts, sample_rate, pause=0.0)
            if len(audio) >= seconds * sample_rate:
                return audio, sentences
            count += 1

    return _cached(f"long-{seconds:g}s", sample_rate, make)


def silence(seconds: float, sample_rate: int = 16000) -> Clip:
    """Digital silence: a recognizer should say nothing."""
    name = f"silence-{seconds:g}s"
    return _cached(name, sample_rate, lambda: (np.zeros(int(seconds * sample_rate), np.int16), ()))


def noise(seconds: float, sample_rate: int = 16000, level_dbfs: float = -50.0) -> Clip:
    """Steady white noise at `level_dbfs` RMS, like a quiet room or a fan: no words in it."""
    name = f"noise{level_dbfs:g}dB-{seconds:g}s"

    def make() -> _Audio:
        rng = np.random.default_rng(1234)
        rms = 32768 * 10 ** (level_dbfs / 20)
        samples = rng.normal(0.0, rms, int(seconds * sample_rate))
        return np.clip(samples, -32768, 32767).astype(np.int16), ()

    return _cached(name, sample_rate, make)


_WORD = re.compile(r"[a-z0-9]+")


def normalize_words(text: str) -> list[str]:
    """Lowercase words with punctuation dropped: "Let's go!" -> ["lets", "go"]."""
    return _WORD.findall(text.lower().replace("'", ""))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance divided by the number of reference words."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    if not ref:
        return float(len(hyp) > 0)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1] / len(ref)


def _cached(name: str, sample_rate: int, make: Callable[[], _Audio]) -> Clip:
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"sample_rate {sample_rate} is not one of {SAMPLE_RATES}")
    directory = cache_dir()
    wav = directory / f"{name}.{sample_rate}.wav"
    meta = directory / f"{name}.{sample_rate}.json"
    if wav.exists() and meta.exists():
        body = json.loads(meta.read_text())
        if body.get("format") == _FORMAT:
            sentences = tuple(Sentence(**s) for s in body["sentences"])
            return Clip(name, wav, sample_rate, sentences)

    audio, sentences = make()
    directory.mkdir(parents=True, exist_ok=True)
    # write beside the target and rename, so concurrent test runs never see half a file
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".wav", delete=False) as samples:
        with wave.open(samples, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(audio.astype(np.int16).tobytes())
    os.replace(samples.name, wav)
    body = {
        "format": _FORMAT,
        "text": " ".join(s.text for s in sentences),
        "sentences": [asdict(s) for s in sentences],
    }
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".json", delete=False) as text:
        json.dump(body, text, indent=2)
    os.replace(text.name, meta)
    return Clip(name, wav, sample_rate, sentences)


def _speak(voice: _Voice, texts: Sequence[str], sample_rate: int, pause: float) -> _Audio:
    """Each sentence spoken, trimmed to its sounds, and laid out with `pause` between."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: apt-get install espeak-ng sox")
    parts = [np.zeros(int(LEAD_IN * sample_rate), np.int16)]
    sentences = []
    position = len(parts[0])
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(texts):
            raw, shaped = Path(tmp, f"{i}.raw.wav"), Path(tmp, f"{i}.wav")
            subprocess.run(
                [
                    "espeak-ng",
                    "-v",
                    voice.voice,
                    "-s",
                    str(voice.words_per_minute),
                    "-w",
                    str(raw),
                    text,
                ],
                check=True,
                capture_output=True,
            )
            # trim leading and trailing silence, then resample with sox's high quality filter
            subprocess.run(
                [
                    "sox",
                    str(raw),
                    "-b",
                    "16",
                    str(shaped),
                    "silence",
                    "1",
                    "0.01",
                    "0.5%",
                    "reverse",
                    "silence",
                    "1",
                    "0.01",
                    "0.5%",
                    "reverse",
                    "rate",
                    "-v",
                    str(sample_rate),
                ],
                check=True,
                capture_output=True,
            )
            with wave.open(str(shaped)) as w:
                speech = np.frombuffer(w.readframes(w.getnframes()), np.int16)
            if i > 0:
                gap = np.zeros(int(pause * sample_rate), np.int16)
                parts.append(gap)
                position += len(gap)
            sentences.append(
                Sentence(
                    text=text,
                    start=round(position / sample_rate, 3),
                    end=round((position + len(speech)) / sample_rate, 3),
                )
            )
            parts.append(speech)
            position += len(speech)
    parts.append(np.zeros(int(TAIL * sample_rate), np.int16))
    return np.concatenate(parts), tuple(sentences)


def main() -> None:
    for rate in SAMPLE_RATES:
        for c in all_clips(rate):
            print(f"{c.path}  {c.duration:5.1f}s  {c.text}")
        for c in (long_speech(40, rate), silence(3, rate), noise(3, rate)):
            print(f"{c.path}  {c.duration:5.1f}s")


if __name__ == "__main__":
    main()
