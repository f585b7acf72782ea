"""Speech start and end decisions from per-window speech probabilities."""

from __future__ import annotations

from livekit.plugins.local_whisper.segmenter import Segmenter, SpeechBoundary

RATE = 16000
WINDOW = 512  # Silero's window at 16 kHz


def run(probabilities: list[float], **options: float) -> list[SpeechBoundary]:
    segmenter = Segmenter(sample_rate=RATE, **options)
    found = []
    for i, p in enumerate(probabilities):
        boundary = segmenter.push(p, start=i * WINDOW, end=(i + 1) * WINDOW)
        if boundary is not None:
            found.append(boundary)
    return found


def seconds(value: float, duration: float) -> list[float]:
    return [value] * round(duration * RATE / WINDOW)


def test_speech_starts_where_the_voiced_run_began_and_ends_where_the_pause_began() -> None:
    probabilities = seconds(0.0, 1.0) + seconds(0.9, 2.0) + seconds(0.0, 1.0)

    start, end = run(probabilities, min_silence_duration=0.5)

    assert start == SpeechBoundary("start", 31 * WINDOW)
    assert end == SpeechBoundary("end", (31 + 62) * WINDOW)


def test_a_pause_shorter_than_min_silence_does_not_end_speech() -> None:
    probabilities = seconds(0.9, 1.0) + seconds(0.0, 0.3) + seconds(0.9, 1.0)

    assert [b.kind for b in run(probabilities, min_silence_duration=0.5)] == ["start"]


def test_a_click_shorter_than_min_speech_does_not_start_speech() -> None:
    probabilities = seconds(0.0, 1.0) + [0.9] + seconds(0.0, 1.0)

    assert run(probabilities, min_speech_duration=0.1) == []


def test_noise_scored_below_the_threshold_never_starts_speech() -> None:
    assert run(seconds(0.3, 5.0)) == []


def test_speech_holds_while_the_score_stays_above_the_lower_threshold() -> None:
    probabilities = seconds(0.9, 0.5) + seconds(0.4, 2.0) + seconds(0.0, 1.0)

    assert [b.kind for b in run(probabilities)] == ["start", "end"]


def test_the_pause_in_progress_is_known_before_the_end_is_decided() -> None:
    segmenter = Segmenter(sample_rate=RATE, min_silence_duration=0.5)
    for i in range(20):
        segmenter.push(0.9, start=i * WINDOW, end=(i + 1) * WINDOW)
    assert segmenter.pause_start is None

    segmenter.push(0.0, start=20 * WINDOW, end=21 * WINDOW)
    segmenter.push(0.0, start=21 * WINDOW, end=22 * WINDOW)

    assert segmenter.speaking
    assert segmenter.pause_start == 20 * WINDOW
