"""The stream processor on its own: scripted VAD scores in, scripted decodes back.

No event loop, no model: what a caption viewer would get from a stream, decided step by step.
"""

from __future__ import annotations

import math

import numpy as np
from livekit.agents import stt
from livekit.plugins.local_whisper import StreamProcessor, Transcript, Word
from livekit.plugins.local_whisper.processor import Decode, ProcessorOptions

RATE = 16000
WINDOW = 512  # Silero's window
Kind = stt.SpeechEventType


def processor(language: str = "en", **options: float) -> StreamProcessor:
    opts = {"interim_interval": 0.5, "max_segment_duration": 15.0, "min_silence_duration": 0.5}
    opts.update(options)
    return StreamProcessor(ProcessorOptions(language=language, **opts))  # type: ignore[arg-type]


def words(text: str, *, start: float = 0.3, probability: float = 0.9) -> list[Word]:
    """One word every 0.3 s from `start`, as the model would time them."""
    return [
        Word(" " + w, start + 0.3 * i, start + 0.3 * i + 0.25, probability)
        for i, w in enumerate(text.split())
    ]


def speak(p: StreamProcessor, seconds: float, *, voiced: bool) -> None:
    """Audio and the VAD's score for it, window by window."""
    for _ in range(math.ceil(seconds * RATE / WINDOW)):
        p.insert_audio(np.zeros(WINDOW, np.float32))
        p.insert_vad(0.9 if voiced else 0.05, p.audio_end)


def texts(events: list[stt.SpeechEvent], kind: Kind) -> list[str]:
    return [e.alternatives[0].text for e in events if e.type == kind]


def test_nothing_is_decoded_for_silence() -> None:
    p = processor()
    speak(p, 5, voiced=False)

    assert p.process() is None
    assert p.take_events() == []


def test_a_decode_is_asked_once_per_interval_of_speech_and_finals_come_at_the_pause() -> None:
    p = processor()
    speak(p, 0.4, voiced=True)
    assert p.process() is None  # 0.1 s after the padding: too early for an interim
    speak(p, 0.5, voiced=True)
    first = p.process()
    assert first is not None and first.kind == "interim" and not first.urgent
    assert p.process() is None  # one at a time

    p.take(first, Transcript(words("good morning"), "en"))
    speak(p, 1.0, voiced=False)
    final = p.process()
    assert final is not None and final.urgent and final.kind in ("candidate", "final")
    p.take(final, Transcript(words("good morning everyone"), "en"))
    while (more := p.process()) is not None:  # a candidate may give way to the final
        p.take(more, Transcript(words("good morning everyone"), "en"))

    events = p.take_events()
    assert [e.type for e in events][0] == Kind.START_OF_SPEECH
    assert texts(events, Kind.FINAL_TRANSCRIPT) == ["good morning everyone"]
    assert [e.type for e in events][-1] == Kind.END_OF_SPEECH


def test_an_utterance_is_decoded_more_often_until_it_shows_its_first_words() -> None:
    p = processor(interim_interval=0.5)
    p.observe_latency(0.25)  # decodes are not fast enough for an eager opening
    speak(p, 0.5, voiced=True)
    assert p.process() is None
    speak(p, 0.15, voiced=True)
    opening = p.process()  # 0.3 s after the padding, not 0.5
    assert opening is not None and opening.opening
    p.take(opening, Transcript(words("good", start=0.0), "en"))
    assert texts(p.take_events(), Kind.INTERIM_TRANSCRIPT) == []  # a guess from a syllable

    speak(p, 0.3, voiced=True)
    again = p.process()
    assert again is not None and again.opening
    p.take(again, Transcript(words("good morning", start=0.0), "en"))
    assert texts(p.take_events(), Kind.INTERIM_TRANSCRIPT) == ["good"]  # two decodes agree

    speak(p, 0.35, voiced=True)
    assert p.process() is None  # words are shown: back to the interim interval
    speak(p, 0.2, voiced=True)
    later = p.process()
    assert later is not None and not later.opening


def test_while_decodes_come_back_fast_an_utterance_is_decoded_as_soon_as_it_can_show_words() -> (
    None
):
    p = processor(interim_interval=0.5)
    p.observe_latency(0.1)
    speak(p, 0.4, voiced=True)
    assert p.process() is None
    speak(p, 0.1, voiced=True)
    opening = p.process()  # 0.2 s after the padding
    assert opening is not None and opening.opening


def interim_round(p: StreamProcessor, heard: list[Word]) -> Decode:
    speak(p, 0.5, voiced=True)
    decode = p.process()
    assert decode is not None and decode.kind == "interim"
    p.take(decode, Transcript(heard, "en"))
    return decode


def test_unsure_and_unfinished_words_wait_for_agreement_before_they_are_shown() -> None:
    p = processor()
    # the last word ends where the audio ends: maybe the first half of a longer word
    speak(p, 1.0, voiced=True)
    decode = p.process()
    assert decode is not None
    p.take(decode, Transcript(words("go", start=decode.until / RATE - 0.2), "en"))
    assert p.take_events() == []
    # a word the model doubts is held back even with audio after it
    interim_round(p, words("good mourning", probability=0.3))
    assert texts(p.take_events(), Kind.INTERIM_TRANSCRIPT) == []
    # two decodes agree: confirmed words are shown whatever their probability
    interim_round(p, words("good mourning everyone", probability=0.3))
    events = p.take_events()
    assert texts(events, Kind.PREFLIGHT_TRANSCRIPT) == ["good mourning"]
    assert texts(events, Kind.INTERIM_TRANSCRIPT) == ["good mourning"]


def test_preflight_carries_only_confirmed_words_and_only_grows() -> None:
    p = processor()
    speak(p, 0.5, voiced=True)
    for heard in ("let's", "let's take", "let's take a", "let's take a short break"):
        interim_round(p, words(heard))
    preflights = texts(p.take_events(), Kind.PREFLIGHT_TRANSCRIPT)

    assert preflights == ["let's", "let's take", "let's take a"]


def test_a_newer_decode_supersedes_the_pending_interim_and_its_late_result_is_ignored() -> None:
    p = processor()
    speak(p, 1.0, voiced=True)
    interim = p.process()
    assert interim is not None
    speak(p, 0.3, voiced=False)  # a pause: the candidate final is asked at once
    candidate = p.process()
    assert candidate is not None and candidate.kind == "candidate"

    p.take(interim, Transcript(words("something stale"), "en"))
    assert p.take_events() == []


def test_speech_that_never_pauses_is_cut_into_finals() -> None:
    p = processor(max_segment_duration=4.0)
    speak(p, 4.5, voiced=True)
    cut = p.process()
    while cut is not None and cut.kind != "cut":
        p.skip(cut)
        cut = p.process()
    assert cut is not None and cut.urgent
    p.take(cut, Transcript(words("one. two three four five six seven eight nine"), "en"))

    assert texts(p.take_events(), Kind.FINAL_TRANSCRIPT)
    assert p.process() is None or p.process() is not cut  # the rest is a new utterance


def test_auto_detects_on_the_final_and_keeps_the_detected_language_for_interims() -> None:
    p = processor(language="auto")
    speak(p, 1.0, voiced=True)
    first = p.process()
    assert first is not None and first.job.language == "auto"
    p.take(first, Transcript(words("bonjour"), "fr"))
    speak(p, 0.5, voiced=True)
    second = p.process()
    assert second is not None and second.job.language == "fr"

    speak(p, 1.0, voiced=False)
    final = p.process()
    assert final is not None and final.job.language == "auto"  # detected afresh on it all
    p.take(final, Transcript(words("bonjour à tous"), "fr"))
    while (more := p.process()) is not None:
        p.take(more, Transcript(words("bonjour à tous"), "fr"))
    finals = [e for e in p.take_events() if e.type == Kind.FINAL_TRANSCRIPT]
    assert [f.alternatives[0].language for f in finals] == ["fr"]


def test_a_stream_whose_decodes_do_not_come_back_reports_its_lag() -> None:
    p = processor()
    speak(p, 1.0, voiced=True)
    assert p.process() is not None  # asked, never answered
    speak(p, 5.0, voiced=True)

    assert p.lag > 5.0


def test_slow_decodes_stretch_the_interim_cadence_within_bounds() -> None:
    p = processor(interim_interval=0.5)
    p.observe_latency(1.2)
    assert p.interval == 1.2
    p.observe_latency(10.0)
    assert p.interval == 2.0
    p.observe_latency(0.1)
    assert p.interval == 0.5
