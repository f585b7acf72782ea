"""Captions: what one track's STT says, turned into the room's caption records.

Each STT segment becomes interim captions then exactly one final, all under one segment
id. A `Caption` carries everything an output needs (speaker, track, language, wall-clock
times), so outputs never reach back into the pipeline. `SegmentTracker` does the turning,
one per track; the captions go to the room's caption stream (`caption_stream`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from livekit.agents import stt, utils
from livekit.agents.utils import is_given

MAX_NAME_CHARS = 128
"""Names and identities are participant-controlled: outputs get them cleaned and bounded."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@dataclass(frozen=True)
class CaptionWord:
    text: str
    start: float
    end: float
    """Wall-clock seconds (Unix time)."""


@dataclass(frozen=True, kw_only=True)
class Caption:
    segment_id: str
    speaker_identity: str
    speaker_name: str
    track_sid: str
    language: str
    final: bool
    start: float
    end: float
    """Wall-clock seconds (Unix time) of the caption's first and last audio."""
    text: str
    stable: tuple[CaptionWord, ...] = ()
    """Leading words the STT says will not change (all of them, on a final); outputs that
    cannot take text back publish only these."""


def clean_label(value: str) -> str:
    """A name or identity safe to print anywhere: no control characters, bounded."""
    return _CONTROL.sub(" ", value).strip()[:MAX_NAME_CHARS]


@dataclass
class _Segment:
    id: str
    text: str = ""
    start: float | None = None
    stable: tuple[CaptionWord, ...] = ()
    language: str = ""


@dataclass(frozen=True, kw_only=True)
class Speaker:
    identity: str
    name: str
    track_sid: str


@dataclass
class SegmentTracker:
    """Turns one track's STT events into captions, in order, through `emit`.

    `wall_time(position)` maps a position of the STT stream (seconds) to the wall-clock
    time its audio arrived. Not thread-safe: the track pipeline feeds it events in order.
    """

    speaker: Speaker
    emit: Callable[[Caption], None]
    wall_time: Callable[[float], float]
    language: str = ""
    finals: int = 0
    _segment: _Segment | None = field(default=None, init=False)

    @property
    def segment_open(self) -> bool:
        """A segment has shown words and has no final yet."""
        return self._segment is not None

    def on_speech_event(self, event: stt.SpeechEvent) -> None:
        kind = event.type
        if kind == stt.SpeechEventType.END_OF_SPEECH:
            # STTs that drop an empty final (the words were withdrawn) end speech without one
            self.close_open_segment()
        elif not event.alternatives:
            return
        elif kind == stt.SpeechEventType.INTERIM_TRANSCRIPT:
            self._interim(event.alternatives[0])
        elif kind == stt.SpeechEventType.PREFLIGHT_TRANSCRIPT:
            self._stable(event.alternatives[0])
        elif kind == stt.SpeechEventType.FINAL_TRANSCRIPT:
            self._final(event.alternatives[0])

    def close_open_segment(self) -> None:
        """Closes a segment the STT left without a final (its input ended mid-sentence),
        so clients never keep a caption that is still 'in progress' forever."""
        segment, self._segment = self._segment, None
        if segment is not None and segment.text:
            self._emit(segment, segment.text, final=True, end=None, stable=_closing_words(segment))

    def _open(self, data: stt.SpeechData) -> _Segment:
        if self._segment is None:
            self._segment = _Segment(id=utils.shortuuid("SG_"))
        segment = self._segment
        if segment.start is None:
            segment.start = self.wall_time(data.start_time)
        segment.language = str(data.language or self.language)
        return segment

    def _interim(self, data: stt.SpeechData) -> None:
        text = data.text.strip()
        if not text:
            return
        segment = self._open(data)
        segment.text = text
        self._emit(segment, text, final=False, end=data.end_time, stable=segment.stable)

    def _stable(self, data: stt.SpeechData) -> None:
        words = self._words(data)
        if not words:
            return
        segment = self._open(data)
        segment.stable = words
        if not segment.text:
            segment.text = data.text.strip()
        self._emit(segment, segment.text, final=False, end=data.end_time, stable=words)

    def _final(self, data: stt.SpeechData) -> None:
        text = data.text.strip()
        segment = self._segment
        if not text:
            if segment is None or not segment.text:
                return
            # the STT withdrew what it showed; close the segment with what users saw
            self.close_open_segment()
            return
        segment = self._open(data)
        self._segment = None
        self._emit(segment, text, final=True, end=data.end_time, stable=self._words(data))

    def _emit(
        self,
        segment: _Segment,
        text: str,
        *,
        final: bool,
        end: float | None,
        stable: tuple[CaptionWord, ...],
    ) -> None:
        now = time.time()
        start = segment.start if segment.start is not None else now
        end_wall = max(start, self.wall_time(end) if end is not None else now)
        if final:
            self.finals += 1
        self.emit(
            Caption(
                segment_id=segment.id,
                speaker_identity=self.speaker.identity,
                speaker_name=self.speaker.name,
                track_sid=self.speaker.track_sid,
                language=segment.language or self.language,
                final=final,
                start=start,
                end=end_wall,
                text=text,
                stable=stable,
            )
        )

    def _words(self, data: stt.SpeechData) -> tuple[CaptionWord, ...]:
        timed = [w for w in data.words or () if str(w).strip()]
        times = [(w.start_time, w.end_time) for w in timed]
        if not timed or not all(is_given(a) and is_given(b) for a, b in times):
            return _spread(
                data.text, self.wall_time(data.start_time), self.wall_time(data.end_time)
            )
        return tuple(
            CaptionWord(str(w).strip(), self.wall_time(float(a)), self.wall_time(float(b)))  # type: ignore[arg-type]
            for w, (a, b) in zip(timed, times, strict=True)
        )


def _closing_words(segment: _Segment) -> tuple[CaptionWord, ...]:
    """All words of a segment closed without a final: the stable ones, then the rest."""
    rest = segment.text.split()[len(segment.stable) :]
    start = segment.stable[-1].end if segment.stable else (segment.start or time.time())
    return segment.stable + _spread(" ".join(rest), start, max(start, time.time()))


def _spread(text: str, start: float, end: float) -> tuple[CaptionWord, ...]:
    """Word times for an STT that gives none: spread evenly over the caption."""
    words = text.split()
    step = (end - start) / max(len(words), 1)
    return tuple(
        CaptionWord(w, start + i * step, start + (i + 1) * step) for i, w in enumerate(words)
    )
