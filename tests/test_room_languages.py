"""A room's languages: what each participant is transcribed in and what it is translated into."""

from __future__ import annotations

from dataclasses import dataclass, field

from livekit import rtc

from transcriber.languages import LanguagePolicy
from transcriber.room_languages import RoomLanguages

POLICY = LanguagePolicy(
    default="en", spoken=("en", "fr", "de"), translation=("fr", "de"), max_targets=1
)


@dataclass
class Participant:
    identity: str
    attributes: dict[str, str] = field(default_factory=dict)
    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD


def test_a_participant_is_transcribed_in_its_language_and_told_only_on_a_change() -> None:
    languages = RoomLanguages(POLICY, room="standup")
    anne = Participant("anne", {"language": "fr"})
    assert languages.update(anne) == "fr"  # type: ignore[arg-type]
    assert languages.update(anne) is None  # type: ignore[arg-type]
    assert languages.spoken_language("anne") == "fr"
    anne.attributes["language"] = "ja"  # not a language the operator allowed
    assert languages.update(anne) == "en"  # type: ignore[arg-type]


def test_an_agent_never_chooses_a_language() -> None:
    languages = RoomLanguages(POLICY, room="standup")
    bot = Participant("bot", {"language": "de"}, kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
    assert languages.update(bot) is None  # type: ignore[arg-type]
    assert languages.translation_targets().languages == ()


def test_the_most_read_languages_are_the_targets_and_leavers_stop_counting() -> None:
    languages = RoomLanguages(POLICY, room="standup")
    for identity, code in (("anne", "fr"), ("bernd", "de"), ("clara", "de")):
        languages.update(Participant(identity, {"language": code}))  # type: ignore[arg-type]
    targets = languages.translation_targets()
    assert (targets.languages, targets.dropped) == (("de",), ("fr",))
    languages.forget("bernd")
    languages.forget("clara")
    assert languages.translation_targets().languages == ("fr",)
    assert languages.spoken_language("bernd") == "en"


def test_an_over_cap_room_at_start_is_reported_once(caplog) -> None:  # type: ignore[no-untyped-def]
    languages = RoomLanguages(POLICY, room="standup")
    present = [Participant("anne", {"language": "fr"}), Participant("bernd", {"language": "de"})]
    present.append(Participant("clara", {"language": "de"}))
    with caplog.at_level("WARNING", logger="transcriber.room_languages"):
        languages.update_all(present)  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records if "not into" in r.getMessage()] == [
        "participants read more languages than TRANSCRIBER_MAX_TRANSLATION_LANGUAGES=1: "
        "translating into de (the most read), not into fr"
    ]
