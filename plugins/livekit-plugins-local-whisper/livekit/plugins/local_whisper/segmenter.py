"""Where speech starts and stops, from a voice activity detector's per-window probabilities.

The VAD only scores audio; this decides with hysteresis, so the STT's own pause length and
not the shared VAD's settings end an utterance. Positions are sample indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SpeechBoundary:
    kind: Literal["start", "end"]
    sample: int
    """For a start, the first sample of speech; for an end, the first sample of the pause."""


class Segmenter:
    def __init__(
        self,
        *,
        sample_rate: int,
        min_speech_duration: float = 0.1,
        min_silence_duration: float = 0.5,
        activation_threshold: float = 0.5,
        deactivation_threshold: float = 0.35,
    ) -> None:
        self._min_speech = int(min_speech_duration * sample_rate)
        self._min_silence = int(min_silence_duration * sample_rate)
        self._activation = activation_threshold
        self._deactivation = deactivation_threshold
        self.speaking = False
        self._run_start: int | None = None
        """Where the current run of windows on the other side of the threshold began."""

    def push(self, probability: float, *, start: int, end: int) -> SpeechBoundary | None:
        """Score of the window of samples [start, end); returns a boundary once it is sure."""
        voiced = probability >= (self._deactivation if self.speaking else self._activation)
        if voiced == self.speaking:
            self._run_start = None
            return None
        if self._run_start is None:
            self._run_start = start
        if self.speaking and end - self._run_start >= self._min_silence:
            self.speaking, run_start, self._run_start = False, self._run_start, None
            return SpeechBoundary("end", run_start)
        if not self.speaking and end - self._run_start >= self._min_speech:
            self.speaking, run_start, self._run_start = True, self._run_start, None
            return SpeechBoundary("start", run_start)
        return None

    @property
    def pause_start(self) -> int | None:
        """While speaking, where the current run of silence began, if one has begun."""
        return self._run_start if self.speaking else None

    def reset(self) -> None:
        """Forget the current state, as after a flush: the next speech starts anew."""
        self.speaking = False
        self._run_start = None
