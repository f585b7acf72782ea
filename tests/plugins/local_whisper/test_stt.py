"""The STT on spoken clips with the real tiny.en model: what a caption viewer would see.

The WER bound, 0.08, is about twice what we measure over all the clips (0.035 to 0.06, the
spread coming from the dither of LiveKit's resampler; offline decoding of whole clips gets
0.018): loose enough for tiny.en's wobble, tight enough to catch lost or doubled words.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from livekit import rtc
from livekit.agents import stt
from livekit.plugins.local_whisper import STT, ModelLoadError

from tests.speech_clips import (
    CLIP_NAMES,
    Clip,
    clip,
    long_speech,
    noise,
    normalize_words,
    silence,
    word_error_rate,
)

from .conftest import feed

Kind = stt.SpeechEventType
Transcribe = Callable[..., Awaitable[list[stt.SpeechEvent]]]
MAX_WER = 0.08


def finals(events: list[stt.SpeechEvent]) -> list[stt.SpeechData]:
    return [e.alternatives[0] for e in events if e.type == Kind.FINAL_TRANSCRIPT]


def utterances(events: list[stt.SpeechEvent]) -> list[list[Kind]]:
    """Event kinds grouped from each START_OF_SPEECH to its END_OF_SPEECH."""
    groups: list[list[Kind]] = []
    for event in events:
        if event.type == Kind.START_OF_SPEECH:
            groups.append([])
        groups[-1].append(event.type)
    return groups


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    words = sum(len(ref.split()) for ref, _ in pairs)
    return sum(word_error_rate(ref, hyp) * len(ref.split()) for ref, hyp in pairs) / words


async def test_interims_come_while_speaking_and_a_final_when_the_speaker_pauses(
    make_stt: Callable[..., STT], transcribe: Transcribe
) -> None:
    events = await transcribe(make_stt(), clip("us-160", 48000), real_time=True)

    groups = utterances(events)
    assert len(groups) == 3, groups
    for kinds in groups:
        assert kinds[0] == Kind.START_OF_SPEECH
        assert kinds[-2:] == [Kind.FINAL_TRANSCRIPT, Kind.END_OF_SPEECH]
        assert Kind.INTERIM_TRANSCRIPT in kinds[1:-2]


async def test_interims_grow_towards_the_final(
    make_stt: Callable[..., STT], transcribe: Transcribe
) -> None:
    events = await transcribe(make_stt(), clip("gb-150", 16000), real_time=True)

    first = next(i for i, e in enumerate(events) if e.type == Kind.FINAL_TRANSCRIPT)
    interims = [e.alternatives[0].text for e in events[:first] if e.type == Kind.INTERIM_TRANSCRIPT]
    final = events[first].alternatives[0].text
    assert len(interims) >= 2
    assert len(interims[-1].split()) > len(interims[0].split())
    # how close the last interim gets depends on CPU time: starved, it lags a few words
    assert word_error_rate(final, interims[-1]) < word_error_rate(final, interims[0])


async def test_each_sentence_becomes_one_final_with_its_words(
    make_stt: Callable[..., STT], transcribe: Transcribe
) -> None:
    speech = make_stt()
    clips = [clip(name, 48000) for name in CLIP_NAMES]

    results = await asyncio.gather(*(transcribe(speech, c) for c in clips))

    pairs = []
    for c, events in zip(clips, results, strict=True):
        texts = [f.text for f in finals(events)]
        assert len(texts) == len(c.sentences), texts
        pairs.append((c.text, " ".join(texts)))
    assert corpus_wer(pairs) <= MAX_WER, pairs


async def test_finals_are_timed_from_the_start_of_the_stream(
    make_stt: Callable[..., STT], transcribe: Transcribe
) -> None:
    c = clip("us-f3-170", 16000)

    events = await transcribe(make_stt(), c)

    for data, sentence in zip(finals(events), c.sentences, strict=True):
        assert data.language == "en"
        assert 0.0 < data.confidence <= 1.0
        assert abs(data.start_time - sentence.start) < 0.5
        assert abs(data.end_time - sentence.end) < 0.5
        assert data.words and data.words[0].start_time == data.start_time


@pytest.mark.parametrize(
    "quiet",
    [silence(4), noise(4, level_dbfs=-50), noise(4, level_dbfs=-40)],
    ids=lambda c: c.name,
)
async def test_silence_and_quiet_noise_give_no_events_at_all(
    make_stt: Callable[..., STT], transcribe: Transcribe, quiet: Clip
) -> None:
    assert await transcribe(make_stt(), quiet, real_time=True) == []


async def test_unbroken_speech_gets_a_final_at_least_every_max_segment_duration(
    make_stt: Callable[..., STT], transcribe: Transcribe
) -> None:
    speech = long_speech(40)

    events = await transcribe(make_stt(max_segment_duration=15.0), speech)

    texts = finals(events)
    assert len(texts) >= 3, [f.text for f in texts]
    assert all(f.end_time - f.start_time <= 15.5 for f in texts)
    assert [e.type for e in events].count(Kind.END_OF_SPEECH) == 1
    # nothing lost or said twice where the speech was cut
    assert word_error_rate(speech.text, " ".join(f.text for f in texts)) <= MAX_WER


async def test_two_streams_at_once_each_get_their_own_words(
    make_stt: Callable[..., STT], transcribe: Transcribe
) -> None:
    speech = make_stt()
    clips = [clip("rp-155", 48000), clip("us-m3-145", 48000)]

    results = await asyncio.gather(*(transcribe(speech, c, real_time=True) for c in clips))

    for c, events in zip(clips, results, strict=True):
        assert Kind.INTERIM_TRANSCRIPT in [e.type for e in events]
        heard = " ".join(f.text for f in finals(events))
        assert word_error_rate(c.text, heard) <= 2 * MAX_WER, heard


async def test_flush_finalizes_the_utterance_in_progress(make_stt: Callable[..., STT]) -> None:
    c = clip("us-190", 16000)
    cut = c.sentences[0].end - 0.4  # mid-word, no pause to end the utterance
    stream = make_stt().stream()
    try:
        for frame in frames_until(c, cut):
            stream.push_frame(frame)
        stream.flush()

        async def first_final() -> stt.SpeechData:
            async for event in stream:
                if event.type == Kind.FINAL_TRANSCRIPT:
                    return event.alternatives[0]
            raise AssertionError("the stream ended without a final")

        final = await asyncio.wait_for(first_final(), timeout=30)
        assert final.text.startswith("Let's take a short break")
    finally:
        await stream.aclose()


async def test_end_input_finalizes_and_ends_the_stream(make_stt: Callable[..., STT]) -> None:
    c = clip("us-190", 16000)
    stream = make_stt().stream()
    try:
        for frame in frames_until(c, c.sentences[0].end):
            stream.push_frame(frame)
        stream.end_input()

        events = await asyncio.wait_for(_all(stream), timeout=30)
    finally:
        await stream.aclose()

    assert [e.type for e in events][-2:] == [Kind.FINAL_TRANSCRIPT, Kind.END_OF_SPEECH]
    assert word_error_rate(c.sentences[0].text, finals(events)[0].text) <= 0.2


async def test_recognize_transcribes_a_whole_buffer(make_stt: Callable[..., STT]) -> None:
    c = clip("us-160", 48000)

    event = await make_stt().recognize(list(c.frames()))

    assert event.type == Kind.FINAL_TRANSCRIPT
    # one clip of 30 words: each word is 0.033, and int8 decoding on threads varies by one
    assert word_error_rate(c.text, event.alternatives[0].text) <= 2 * MAX_WER


def test_a_model_that_cannot_be_used_fails_in_the_constructor(vad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError) as failure:
        STT(model="tiny.xx", vad=vad)

    assert "\n" not in str(failure.value)
    assert "LOCAL_WHISPER_MODEL='tiny.xx'" in str(failure.value)


def test_options_out_of_range_are_refused_with_the_option_named(model_path: str) -> None:
    with pytest.raises(ValueError, match="interim_interval"):
        STT(model=model_path, interim_interval=0.0)
    with pytest.raises(ValueError, match="max_segment_duration"):
        STT(model=model_path, max_segment_duration=40.0)


def frames_until(c: Clip, seconds: float) -> list[rtc.AudioFrame]:
    return [frame for i, frame in enumerate(c.frames(frame_ms=10)) if i * 0.01 < seconds]


async def _all(stream: stt.RecognizeStream) -> list[stt.SpeechEvent]:
    return [event async for event in stream]


@pytest.mark.parametrize("name", ["silence", "loud_noise", "breathing"])
async def test_thirty_seconds_of_silence_noise_or_breathing_give_no_caption_at_all(
    make_stt: Callable[..., STT], transcribe: Transcribe, request: pytest.FixtureRequest, name: str
) -> None:
    quiet = silence(30) if name == "silence" else request.getfixturevalue(name)

    events = await transcribe(make_stt(), quiet, real_time=True)

    assert [e.alternatives[0].text for e in events if e.alternatives] == []
    assert events == []


async def test_noise_before_the_first_word_gives_no_interim_before_it(
    make_stt: Callable[..., STT], noise_then_speech: Clip
) -> None:
    onset = noise_then_speech.sentences[0].start
    said = set(normalize_words(noise_then_speech.text))
    stream = make_stt().stream()
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, stt.SpeechEvent]] = []
    try:
        started = loop.time()
        feeder = asyncio.create_task(feed(stream, [noise_then_speech], real_time=True))
        async with asyncio.timeout(60):
            async for event in stream:
                arrivals.append((loop.time() - started, event))
        await feeder
    finally:
        await stream.aclose()

    captions = [(at, e) for at, e in arrivals if e.alternatives]
    first_final = next(i for i, (_, e) in enumerate(captions) if e.type == Kind.FINAL_TRANSCRIPT)
    assert captions[0][0] > onset, captions[0]
    for _, event in captions[:first_final]:
        heard = normalize_words(event.alternatives[0].text)
        assert set(heard) <= said, event.alternatives[0].text


async def test_preflight_words_only_grow_and_start_the_final(
    make_stt: Callable[..., STT], transcribe: Transcribe
) -> None:
    events = await transcribe(make_stt(), clip("gb-150", 16000), real_time=True)

    by_utterance: dict[str, list[stt.SpeechEvent]] = {}
    for event in events:
        if event.alternatives:
            by_utterance.setdefault(event.request_id, []).append(event)
    starts_final = with_preflights = 0
    for utterance in by_utterance.values():
        preflights = [
            [str(w) for w in e.alternatives[0].words or []]
            for e in utterance
            if e.type == Kind.PREFLIGHT_TRANSCRIPT
        ]
        for shorter, longer in zip(preflights, preflights[1:], strict=False):
            assert len(longer) > len(shorter) and longer[: len(shorter)] == shorter
        final = [e for e in utterance if e.type == Kind.FINAL_TRANSCRIPT]
        assert len(final) == 1
        final_words = [str(w) for w in final[0].alternatives[0].words or []]
        if preflights:
            with_preflights += 1
            starts_final += final_words[: len(preflights[-1])] == preflights[-1]
    # how many utterances get a preflight before their final depends on CPU time
    assert with_preflights >= 1
    assert starts_final >= with_preflights - 1  # hearing it all, the final may rephrase one
