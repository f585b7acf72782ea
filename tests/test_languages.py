"""Participant languages: the `language` attribute, the operator's lists, a room's targets."""

from __future__ import annotations

import pytest

from transcriber.languages import LanguagePolicy, base_language, read_attribute


@pytest.mark.parametrize("code", ["en", "fr", "de", "zh", "uk"])
def test_a_lowercase_iso_639_1_code_is_the_participants_language(code: str) -> None:
    assert read_attribute({"language": code}, is_agent=False).code == code


def test_no_attribute_means_no_language_and_no_complaint() -> None:
    for attributes in ({}, {"language": ""}, {"other": "x"}):
        reading = read_attribute(attributes, is_agent=False)
        assert reading.code is None and reading.problem is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("EN", "'EN' is not a lowercase ISO 639-1 code"),
        ("xx", "'xx' is not a lowercase ISO 639-1 code"),
        ("eng", "'eng' is not"),
        ("en-US", "'en-US' is not"),
        ("multi", "'multi' is not"),
        ("../etc/passwd", "is not a lowercase"),
    ],
)
def test_anything_but_a_code_is_ignored_with_a_reason(value: str, problem: str) -> None:
    reading = read_attribute({"language": value}, is_agent=False)
    assert reading.code is None
    assert reading.problem is not None and problem in reading.problem


def test_a_huge_value_is_ignored_and_its_reason_stays_short() -> None:
    reading = read_attribute({"language": "x" * 10_000}, is_agent=False)
    assert reading.code is None
    assert reading.problem is not None
    assert "10000 characters" in reading.problem and len(reading.problem) < 120


def test_an_agents_language_is_ignored() -> None:
    reading = read_attribute({"language": "fr"}, is_agent=True)
    assert reading.code is None and reading.problem == "is set on an agent participant"


def test_spoken_language_is_the_attribute_when_allowed_else_the_default() -> None:
    policy = LanguagePolicy(default="en", spoken=("en", "fr", "de"))
    assert policy.spoken_language("fr") == "fr"
    assert policy.spoken_language("es") == "en"  # reads Spanish, speaks into an English STT
    assert policy.spoken_language(None) == "en"


def test_the_default_must_be_recognizable() -> None:
    with pytest.raises(ValueError):
        LanguagePolicy(default="en", spoken=("fr",))


def test_targets_are_the_allowed_languages_read_in_the_room_most_read_first() -> None:
    policy = LanguagePolicy(spoken=("en",), translation=("fr", "de", "es"))
    targets = policy.targets(["de", "fr", "de", "en", "it"])
    assert targets.languages == ("de", "fr")  # en, it: not in TRANSCRIBER_TRANSLATION_LANGUAGES
    assert targets.dropped == ()


def test_ties_keep_the_operators_order() -> None:
    policy = LanguagePolicy(spoken=("en",), translation=("es", "fr", "de"))
    assert policy.targets(["de", "fr", "es"]).languages == ("es", "fr", "de")


def test_more_targets_than_the_cap_keeps_the_most_read() -> None:
    policy = LanguagePolicy(spoken=("en",), translation=("fr", "de", "es", "it"), max_targets=2)
    targets = policy.targets(["it", "es", "es", "de", "de", "de", "fr"])
    assert targets.languages == ("de", "es")
    assert targets.dropped == ("fr", "it")


def test_no_translation_languages_means_no_targets() -> None:
    assert LanguagePolicy().targets(["fr", "de"]).languages == ()


def test_regional_variants_are_one_language() -> None:
    assert base_language("fr-CA") == base_language("fr") == "fr"
    assert base_language("pt_BR") == "pt"


def test_the_audience_of_each_target_is_who_reads_it() -> None:
    policy = LanguagePolicy(spoken=("en",), translation=("fr", "de"), max_targets=1)
    readers = {"ann": "fr", "bob": "de", "cem": "de", "dan": "en"}
    assert policy.audience(readers) == {"de": ["bob", "cem"]}  # fr is over the cap
