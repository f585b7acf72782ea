"""One stream's transcription state, with no event loop and no model in it.

Like whisper_streaming's OnlineASRProcessor: audio goes in (`insert_audio`), with the VAD's
scores (`insert_vad`) and flushes; `process` says which decode the stream needs next; the
decode's result goes back in (`take`) and comes out as transcript events. The async glue in
`stt.py` only moves audio, decodes and events between this, the VAD and the scheduler.

Each speech segment (from the segmenter) is decoded again every `interval` while it grows;
LocalAgreement turns those decodes into interims, and a decode of the whole utterance at the
pause into its final. A pause starts a "candidate" decode at once, which becomes the final if
the pause lasts. Speech that runs past `max_segment_duration` is cut into several finals.
Positions are sample indices at 16 kHz since the stream started.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from livekit.agents import stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import TimedString

from .backend import AUTO_LANGUAGE, SAMPLE_RATE, Job, Lead, Transcript, Word, join_words
from .policy import LocalAgreement
from .scheduler import Priority
from .segmenter import Segmenter

PREFIX_PADDING = int(0.3 * SAMPLE_RATE)
"""Audio kept before the detected start of speech, so the first sound is not clipped."""
SUFFIX_PADDING = int(0.2 * SAMPLE_RATE)
"""Audio kept after the detected end of speech, for the same reason at the other end."""
_PAUSE_HINT = int(0.2 * SAMPLE_RATE)
"""A pause this long starts the final decode, in case the pause lasts."""
VAD_MAX_WINDOW = int(0.1 * SAMPLE_RATE)
"""Longer than any VAD's window (Silero's is 32 ms)."""
_IDLE_HISTORY = 1.0
"""Audio kept before what the VAD has scored, since it decides a little after the fact."""
_LEAD_SECONDS = 4.0
"""How much of the previous final leads each decode of the next utterance."""
TENTATIVE_PROBABILITY = 0.5
"""An unconfirmed word is shown in an interim only when the model is this sure of it..."""
_TENTATIVE_TAIL = 0.25
"""...and it ends this long before the decoded audio does: the last word heard may be the
first half of a longer one ("Go" of "Good morning")."""
_TENTATIVE_MIN_AUDIO = 1.0
"""...and the utterance is this long: decoded from less, the model guesses a whole word from
a syllable ("Moroth" for "Good morning") and is sure of it. Two decodes that agree on a
word still show it sooner."""
_MAX_INTERVAL_FACTOR = 4.0
"""Under load the interim cadence stretches to at most this many `interim_interval`s."""
_OPENING_FACTOR = 0.6
"""Until an utterance shows its first words, decodes come this much more often: the first
words wait for a decode with audio after them, and a reader waits for the first words most."""
_EAGER_OPENING_FACTOR = 0.4
"""And at this fraction while the last decode came back within it: the model is idle, so an
extra decode costs the other streams next to nothing."""

DecodeKind = Literal["interim", "candidate", "final", "cut"]


@dataclass(eq=False)
class Decode:
    """A decode the stream needs: the model's job and what its result is for."""

    kind: DecodeKind
    """interim: a growing segment; candidate: up to a pause, the final if the pause lasts;
    final: the whole utterance at its end; cut: the utterance ran too long."""
    job: Job
    until: int
    window_start: float
    """Where the job's audio starts, in seconds of the utterance."""
    utterance: _Utterance

    opening: bool = False
    """An interim of an utterance that shows nothing yet."""

    @property
    def urgent(self) -> bool:
        return self.kind != "interim"

    @property
    def priority(self) -> Priority:
        if self.urgent:
            return Priority.FINAL
        return Priority.OPENING if self.opening else Priority.INTERIM


class _Utterance:
    """The part of a segment that will become one final transcript."""

    def __init__(self, start: int, policy: LocalAgreement, language: str) -> None:
        self.start = start
        self.policy = policy
        self.language = language
        """The stream's language, or once detected (for `auto`), the detected one."""
        self.id = utils.shortuuid("LW_")
        self.shown = ""
        """The text of the last interim."""

    @property
    def window_start(self) -> int:
        return self.start + int(self.policy.window_start * SAMPLE_RATE)


@dataclass(eq=False)
class _Segment:
    """A stretch of speech between pauses, and how far its transcription got."""

    start: int
    needed_from: int
    """Audio before this sample is no longer needed for the segment."""
    end: int | None = None
    """Set when the speaker pauses or the stream is flushed."""
    pause: int | None = None
    """Where the speaker paused, once the pause lasted `_PAUSE_HINT`; None while speaking."""
    utterance: _Utterance | None = None
    decoded_until: int = 0
    pause_seen: int | None = None
    candidate: Decode | None = None
    candidate_result: Transcript | None = None
    started: bool = False
    """START_OF_SPEECH was sent for it."""


@dataclass
class ProcessorOptions:
    language: str
    """A Whisper language code, or `auto`."""
    interim_interval: float
    max_segment_duration: float
    min_silence_duration: float


class StreamProcessor:
    def __init__(self, opts: ProcessorOptions) -> None:
        self._opts = opts
        self._audio = AudioLog()
        self._segmenter = Segmenter(
            sample_rate=SAMPLE_RATE, min_silence_duration=opts.min_silence_duration
        )
        self._segments: deque[_Segment] = deque()
        """Segments not finalized yet, oldest first; only the first one is decoded."""
        self._open: _Segment | None = None
        self._scored = 0
        """Audio up to this sample has been scored by the VAD; decodes look no further."""
        self._settled_until = 0
        """Audio before this sample was ended by a flush; the VAD's late opinions don't count."""
        self._flushes: deque[int] = deque()
        """Flushes not applied yet: they wait for the VAD to score the audio before them."""
        self._pending: Decode | None = None
        self._lead: Lead | None = None
        """The end of the last final, heard before each decode of the next utterance."""
        self._events: list[stt.SpeechEvent] = []
        self._input_done = False
        self.interval = opts.interim_interval
        """Seconds of new speech between interim decodes; longer while decodes are slow."""
        self._latency = 0.0
        """How long the last interim decode took, from request to result."""
        self.time_offset = 0.0
        """Added to every time in the events (the stream's start_time_offset)."""

    # audio in

    def insert_audio(self, samples: np.ndarray) -> None:
        self._audio.append(samples)
        # the VAD may lag: keep what it has yet to score, and a little before
        history = self._scored - int(_IDLE_HISTORY * SAMPLE_RATE)
        self._audio.forget_before(min([s.needed_from for s in self._segments] + [history]))

    def insert_vad(self, probability: float, end: int) -> None:
        """The VAD scored the audio from where it last stopped up to sample `end`."""
        window_start, self._scored = self._scored, end
        self._settle(end)
        if end <= self._settled_until:
            return
        boundary = self._segmenter.push(probability, start=window_start, end=end)
        if boundary is not None and boundary.kind == "start":
            start = boundary.sample - PREFIX_PADDING
            self._open_segment(max(start, self._settled_until, self._audio.first))
        elif boundary is not None:
            self._close_segment(boundary.sample + SUFFIX_PADDING)
        elif self._open is not None:
            pause = self._segmenter.pause_start
            if pause is not None and end - pause < _PAUSE_HINT:
                pause = None
            self._open.pause = pause

    def flush(self) -> int:
        """End the utterance at the audio so far, once the VAD has scored it; returns where."""
        self._flushes.append(self._audio.end)
        return self._audio.end

    def settle_stalled(self, at: int) -> bool:
        """Apply the flush at `at` if the VAD is only waiting for audio that may never come;
        True when it is still waiting for the VAD and should be checked again later."""
        if at not in self._flushes:
            return False
        if at - self._scored <= VAD_MAX_WINDOW:
            self._settle(at)
            return False
        return True

    def finish(self) -> None:
        """No more audio: every flush applies now."""
        self._settle(self._audio.end)
        self._flushes.clear()
        self._close_segment(self._audio.end)
        self._input_done = True

    # decodes out, results in

    def process(self) -> Decode | None:
        """The decode the stream needs now, if any; it supersedes the one asked before."""
        while self._segments:
            segment = self._segments[0]
            if segment.utterance is None:
                segment.utterance = self._new_utterance(segment.start)
                # the first interim comes `interval` after speech starts, not after the padding
                segment.decoded_until = segment.start + PREFIX_PADDING
            decode = self._next_decode(segment, segment.utterance)
            if decode is not None or (self._segments and self._segments[0] is segment):
                return decode
        return None

    def take(self, decode: Decode, transcript: Transcript) -> None:
        """The result of a decode asked by `process`; results of superseded ones are ignored."""
        if decode is not self._pending:
            return
        self._pending = None
        segment, utterance = self._segments[0], decode.utterance
        if decode.kind == "cut":
            window_end = (decode.until - utterance.start) / SAMPLE_RATE
            final, cut = utterance.policy.cut(
                transcript.words, window_start=decode.window_start, window_end=window_end
            )
            self._finalize(segment, final, transcript.language)
            next_start = utterance.start + max(int(cut * SAMPLE_RATE), SAMPLE_RATE)
            segment.utterance = self._new_utterance(next_start)
            segment.decoded_until = next_start
            segment.candidate, segment.candidate_result = None, None
        elif decode.kind == "final" or (decode.kind == "candidate" and segment.end == decode.until):
            self._end_segment(segment, decode, transcript)
        else:
            if decode.kind == "candidate":
                segment.candidate_result = transcript
            self._update(segment, decode, transcript)

    def skip(self, decode: Decode) -> None:
        """A decode that will not come back (refused or cancelled): the stream goes on."""
        if decode is not self._pending:
            return
        self._pending = None
        if self._segments and decode.kind == "interim":
            self._segments[0].decoded_until = self._scored

    def observe_latency(self, seconds: float) -> None:
        """How long an interim took from request to result: decode less often when slow."""
        base = self._opts.interim_interval
        self.interval = min(max(base, seconds), _MAX_INTERVAL_FACTOR * base)
        self._latency = seconds

    def take_events(self) -> list[stt.SpeechEvent]:
        events, self._events = self._events, []
        return events

    @property
    def done(self) -> bool:
        """All input was transcribed."""
        return self._input_done and not self._segments

    @property
    def lag(self) -> float:
        """Seconds of scored speech that no decode has covered yet."""
        if not self._segments:
            return 0.0
        return max(0, self._scored - self._segments[0].decoded_until) / SAMPLE_RATE

    @property
    def audio_end(self) -> int:
        return self._audio.end

    # internals

    def _next_decode(self, segment: _Segment, utterance: _Utterance) -> Decode | None:
        limit = utterance.start + int(self._opts.max_segment_duration * SAMPLE_RATE)
        segment.needed_from = utterance.start
        available = segment.end if segment.end is not None else self._scored
        if available >= limit:
            # no pause for max_segment_duration: finalize what was said and go on after it
            return self._ask("cut", utterance, limit)
        if segment.end is not None:
            candidate = segment.candidate
            if candidate is not None and candidate.until == segment.end:
                if segment.candidate_result is not None:
                    self._end_segment(segment, candidate, segment.candidate_result)
                return None  # the candidate, asked for already, is the final
            return self._ask("final", utterance, segment.end)
        if segment.pause is not None and segment.pause != segment.pause_seen:
            # the speaker may be done: start on the final now, not when the pause ends
            segment.pause_seen = segment.pause
            segment.candidate_result = None
            segment.candidate = self._ask("candidate", utterance, segment.pause + SUFFIX_PADDING)
            return segment.candidate
        interval = self.interval
        if not utterance.shown:
            eager = self._latency < self.interval * _EAGER_OPENING_FACTOR
            interval *= _EAGER_OPENING_FACTOR if eager else _OPENING_FACTOR
        if self._pending is None and self._scored >= segment.decoded_until + int(
            interval * SAMPLE_RATE
        ):
            return self._ask("interim", utterance, self._scored)
        return None

    def _ask(self, kind: DecodeKind, utterance: _Utterance, until: int) -> Decode | None:
        """A decode up to `until`: of the whole utterance, or for interims of its window.

        Decodes from the start of the utterance hear the end of the previous final first.
        """
        pending = self._pending
        if pending is not None and (pending.kind, pending.until) == (kind, until):
            return None
        policy = utterance.policy
        if kind != "interim" or policy.window_start == 0.0:
            # finals and candidates detect the language afresh, on all of the utterance
            language = utterance.language if kind == "interim" else self._opts.language
            audio = self._audio.slice(utterance.start, until)
            job, window_start = Job(audio, lead=self._lead, language=language), 0.0
        else:
            audio = self._audio.slice(utterance.window_start, until)
            job = Job(audio, policy.prompt(), language=utterance.language)
            window_start = policy.window_start
        opening = kind == "interim" and not utterance.shown
        self._pending = Decode(kind, job, until, window_start, utterance, opening)
        return self._pending

    def _update(self, segment: _Segment, decode: Decode, transcript: Transcript) -> None:
        """An interim decode: preflight the words now confirmed, show what is trusted."""
        utterance, policy = decode.utterance, decode.utterance.policy
        if self._opts.language == AUTO_LANGUAGE and transcript.words:
            utterance.language = transcript.language
        confirmed_before = len(policy.confirmed)
        policy.update(transcript.words, window_start=decode.window_start)
        segment.decoded_until = decode.until
        if len(policy.confirmed) > confirmed_before:
            # the words two decodes agreed on: readers that cannot take back text show them
            self._emit(segment, stt.SpeechEventType.PREFLIGHT_TRANSCRIPT, list(policy.confirmed))
        heard = (decode.until - utterance.start) / SAMPLE_RATE
        shown = list(policy.confirmed) + _trusted(policy.tentative, heard)
        if shown and join_words(shown) != utterance.shown:
            utterance.shown = join_words(shown)
            self._emit(segment, stt.SpeechEventType.INTERIM_TRANSCRIPT, shown)

    def _end_segment(self, segment: _Segment, decode: Decode, transcript: Transcript) -> None:
        policy = decode.utterance.policy
        final = policy.finish(transcript.words, window_start=decode.window_start)
        self._finalize(segment, final, transcript.language)
        if segment.started:
            self._events.append(stt.SpeechEvent(stt.SpeechEventType.END_OF_SPEECH))
        self._segments.popleft()
        if self._pending is not None and self._pending.utterance is decode.utterance:
            self._pending = None

    def _finalize(self, segment: _Segment, words: list[Word], language: str) -> None:
        utterance = segment.utterance
        assert utterance is not None
        if words:
            self._emit(segment, stt.SpeechEventType.FINAL_TRANSCRIPT, words, language)
            self._lead = self._lead_after(utterance, words)

    def _emit(
        self,
        segment: _Segment,
        kind: stt.SpeechEventType,
        words: list[Word],
        language: str | None = None,
    ) -> None:
        utterance = segment.utterance
        assert utterance is not None
        if not segment.started:
            segment.started = True
            self._events.append(stt.SpeechEvent(stt.SpeechEventType.START_OF_SPEECH))
        offset = self.time_offset + utterance.start / SAMPLE_RATE
        language = language or utterance.language
        self._events.append(
            stt.SpeechEvent(
                type=kind,
                request_id=utterance.id,
                alternatives=[speech_data(words, language, offset=offset)],
            )
        )

    def _new_utterance(self, start: int) -> _Utterance:
        policy = LocalAgreement(prompt=self._lead.text if self._lead else "")
        return _Utterance(start, policy, self._opts.language)

    def _lead_after(self, utterance: _Utterance, final: list[Word]) -> Lead:
        """The last few seconds of a final, to lead the next utterance's decodes."""
        tail = [w for w in final if w.start >= final[-1].end - _LEAD_SECONDS] or final[-1:]
        start = utterance.start + int(max(tail[0].start - 0.1, 0.0) * SAMPLE_RATE)
        end = utterance.start + int((tail[-1].end + 0.1) * SAMPLE_RATE)
        return Lead(self._audio.slice(start, end), join_words(tail))

    def _open_segment(self, start: int) -> None:
        segment = _Segment(start=start, needed_from=start)
        self._open = segment
        self._segments.append(segment)

    def _close_segment(self, end: int) -> None:
        if self._open is not None:
            self._open.end = max(end, self._open.start)
            self._open = None

    def _settle(self, until: int) -> None:
        """Apply the flushes up to `until`: the open segment ends at the flush point."""
        while self._flushes and self._flushes[0] <= until:
            self._settled_until = self._flushes.popleft()
            self._close_segment(self._settled_until)
            self._segmenter.reset()


def _trusted(tentative: tuple[Word, ...], heard: float) -> list[Word]:
    """The unconfirmed words worth showing: sure ones, with audio after them."""
    if heard < _TENTATIVE_MIN_AUDIO:
        return []
    shown: list[Word] = []
    for word in tentative:
        if word.probability < TENTATIVE_PROBABILITY or word.end > heard - _TENTATIVE_TAIL:
            break
        shown.append(word)
    return shown


class AudioLog:
    """The stream's 16 kHz audio as float32, addressed by sample index since the stream began."""

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE * 20, dtype=np.float32)
        self._size = 0
        self.first = 0
        """Index of the oldest sample still kept."""

    @property
    def end(self) -> int:
        return self.first + self._size

    def append(self, samples: np.ndarray) -> None:
        if self._size + len(samples) > len(self._data):
            grown = np.zeros(max(2 * len(self._data), self._size + len(samples)), np.float32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : self._size + len(samples)] = samples
        self._size += len(samples)

    def slice(self, start: int, end: int) -> np.ndarray:
        start = max(start, self.first)
        return self._data[start - self.first : max(end, start) - self.first].copy()

    def forget_before(self, index: int) -> None:
        drop = min(index, self.end) - self.first
        # moving memory for every frame would cost more than keeping a few seconds extra
        if drop < SAMPLE_RATE * 5:
            return
        self._data[: self._size - drop] = self._data[drop : self._size]
        self._size -= drop
        self.first += drop


def speech_data(words: list[Word], language: str, *, offset: float) -> stt.SpeechData:
    return stt.SpeechData(
        language=LanguageCode(language),
        text=join_words(words),
        start_time=offset + words[0].start,
        end_time=offset + words[-1].end,
        confidence=float(np.mean([w.probability for w in words])),
        words=[
            TimedString(
                w.text.strip(),
                start_time=offset + w.start,
                end_time=offset + w.end,
                confidence=w.probability,
                start_time_offset=offset,
            )
            for w in words
        ],
    )
