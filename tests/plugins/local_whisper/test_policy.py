"""LocalAgreement driven by a scripted stand-in for Whisper."""

from __future__ import annotations

import numpy as np
from livekit.plugins.local_whisper import LocalAgreement, Word

SAMPLE_RATE = 16000


def words(script: str) -> list[Word]:
    """ "the@0.0 cat@0.4" -> Words starting at those seconds, each 0.3 s long."""
    out = []
    for item in script.split():
        text, start = item.rsplit("@", 1)
        out.append(Word(" " + text, float(start), float(start) + 0.3, 0.9))
    return out


def text(ws: tuple[Word, ...] | list[Word]) -> str:
    return "".join(w.text for w in ws).strip()


class ScriptedWhisper:
    """Stands in for the model: each decode returns the next scripted hypothesis.

    Hypotheses are timed from the start of the utterance; the backend, like Whisper, times
    words from the start of the audio it is given, so the stand-in shifts them.
    """

    def __init__(self, *hypotheses: str) -> None:
        self._hypotheses = [words(h) for h in hypotheses]
        self.prompts: list[str] = []

    def transcribe(self, audio: np.ndarray, prompt: str = "", *, window_start: float) -> list[Word]:
        self.prompts.append(prompt)
        heard = self._hypotheses.pop(0)
        return [
            Word(w.text, w.start - window_start, w.end - window_start, w.probability)
            for w in heard
            if w.start >= window_start - 0.05
        ]


def decode(policy: LocalAgreement, whisper: ScriptedWhisper) -> None:
    window_start = policy.window_start
    heard = whisper.transcribe(np.zeros(0), policy.prompt(), window_start=window_start)
    policy.update(heard, window_start=window_start)


def test_a_word_is_confirmed_once_two_decodes_in_a_row_agree_on_it() -> None:
    policy = LocalAgreement()
    whisper = ScriptedWhisper("the@0.0 cat@0.4", "the@0.0 cat@0.4 sat@0.8")

    decode(policy, whisper)
    assert text(policy.confirmed) == ""
    assert policy.text == "the cat"

    decode(policy, whisper)
    assert text(policy.confirmed) == "the cat"
    assert text(policy.tentative) == "sat"
    assert policy.text == "the cat sat"


def test_a_correction_replaces_the_tentative_tail_without_confirming_it() -> None:
    policy = LocalAgreement()
    whisper = ScriptedWhisper(
        "I@0.0 scream@0.3",
        "ice@0.0 cream@0.3 is@0.7",
        "ice@0.0 cream@0.3 is@0.7 cold@1.0",
    )

    decode(policy, whisper)
    decode(policy, whisper)
    assert text(policy.confirmed) == ""
    assert policy.text == "ice cream is"

    decode(policy, whisper)
    assert text(policy.confirmed) == "ice cream is"
    assert policy.text == "ice cream is cold"


def test_confirmed_words_stay_when_a_later_decode_hears_them_differently() -> None:
    policy = LocalAgreement()
    whisper = ScriptedWhisper(
        "the@0.0 cat@0.4",
        "the@0.0 cat@0.4 sat@0.8",
        "a@0.0 hat@0.4 sat@0.8 down@1.2",
    )
    for _ in range(3):
        decode(policy, whisper)

    assert policy.text.startswith("the cat")
    assert "hat" not in policy.text


def test_words_agree_whatever_their_case_and_punctuation() -> None:
    policy = LocalAgreement()
    whisper = ScriptedWhisper("hello,@0.0 world@0.5", "Hello.@0.0 World@0.5 again@1.0")

    decode(policy, whisper)
    decode(policy, whisper)

    assert text(policy.confirmed) == "Hello. World"


def test_a_confirmed_word_heard_again_with_a_slightly_later_time_is_not_repeated() -> None:
    policy = LocalAgreement()
    whisper = ScriptedWhisper(
        "we@0.0 can@0.4 go@0.8",
        "we@0.0 can@0.4 go@0.8 home@1.2",
        # word times wobble between decodes: "go" now starts after the confirmed "go" ended
        "we@0.0 can@0.4 go@1.2 home@1.5 now@1.9",
    )
    for _ in range(3):
        decode(policy, whisper)

    assert policy.text == "we can go home now"


def test_the_window_moves_past_a_confirmed_sentence_once_it_grows_long() -> None:
    policy = LocalAgreement(trim_after=3.0)
    first = "The@0.0 plan@0.4 is@0.8 ready.@1.2 We@2.0 start@2.4 today@2.8"
    whisper = ScriptedWhisper(
        first,
        first + " at@3.2 noon@3.6",
        "We@2.0 start@2.4 today@2.8 at@3.2 noon@3.6",
    )

    decode(policy, whisper)
    assert policy.window_start == 0.0
    decode(policy, whisper)
    # the sentence "The plan is ready." is confirmed, so decodes can start after it
    assert policy.window_start == 1.5
    assert policy.prompt().endswith("The plan is ready.")

    decode(policy, whisper)
    assert whisper.prompts[-1].endswith("The plan is ready.")
    assert policy.text == "The plan is ready. We start today at noon"


def test_the_window_does_not_move_into_an_unfinished_sentence() -> None:
    policy = LocalAgreement(trim_after=1.0)
    script = "we@0.0 need@0.4 more@0.8 people@1.2 for@1.6 support@2.0"
    whisper = ScriptedWhisper(script, script)
    decode(policy, whisper)
    decode(policy, whisper)

    assert policy.window_start == 0.0


def test_the_prompt_carries_what_was_said_before_the_utterance() -> None:
    policy = LocalAgreement(prompt="Good morning everyone.")
    assert policy.prompt() == "Good morning everyone."


def test_the_final_is_the_last_decode_of_the_whole_utterance() -> None:
    policy = LocalAgreement()
    whisper = ScriptedWhisper("the@0.0 whether@0.4", "the@0.0 whether@0.4 is@0.8")
    decode(policy, whisper)
    decode(policy, whisper)
    assert text(policy.confirmed) == "the whether"

    final = policy.finish(words("the@0.0 weather@0.4 is@0.8 nice.@1.1"), window_start=0.0)

    assert text(final) == "the weather is nice."


def test_the_final_keeps_confirmed_words_before_a_moved_window() -> None:
    policy = LocalAgreement(trim_after=3.0)
    first = "The@0.0 plan@0.4 is@0.8 ready.@1.2 We@2.0 start@2.4 today@2.8"
    whisper = ScriptedWhisper(first, first + " at@3.2 noon@3.6")
    decode(policy, whisper)
    decode(policy, whisper)
    window_start = policy.window_start

    final = policy.finish(words("We@0.5 start@0.9 today.@1.3"), window_start=window_start)

    assert text(final) == "The plan is ready. We start today."


def test_a_forced_cut_ends_at_a_sentence_end_in_the_later_half() -> None:
    policy = LocalAgreement()
    heard = words("one@0.0 two@3.0 three.@8.2 four@9.0 five@12.0 six@14.6")

    final, cut = policy.cut(heard, window_start=0.0, window_end=15.0)

    assert text(final) == "one two three."
    assert cut == 8.5


def test_a_forced_cut_leaves_a_word_at_the_window_edge_for_the_next_utterance() -> None:
    policy = LocalAgreement()
    heard = words("one@0.0 two@3.0 three@6.0 four@9.0 five@14.6")

    final, cut = policy.cut(heard, window_start=0.0, window_end=15.0)

    assert text(final) == "one two three four"
    assert cut == 9.3
