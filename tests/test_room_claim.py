"""Which of several transcribers in one room keeps it (the rest of the claim is end to end
in test_worker_e2e)."""

from __future__ import annotations

from livekit import api

from transcriber.room_claim import AGENT_ATTRIBUTE, is_transcriber, joined_first


def member(identity: str, joined_ms: int, **fields) -> api.ParticipantInfo:  # type: ignore[no-untyped-def]
    fields.setdefault("kind", api.ParticipantInfo.Kind.AGENT)
    fields.setdefault("attributes", {AGENT_ATTRIBUTE: "transcriber"})
    return api.ParticipantInfo(
        identity=identity, joined_at_ms=joined_ms, joined_at=joined_ms // 1000, **fields
    )


def test_a_transcriber_that_joined_later_yields_to_the_one_already_there() -> None:
    listed = [member("agent-AJ_b", 1_000), member("agent-AJ_a", 9_000)]
    assert joined_first(listed, "agent-AJ_b")
    assert not joined_first(listed, "agent-AJ_a")


def test_transcribers_joining_in_the_same_millisecond_agree_on_one() -> None:
    listed = [member("agent-AJ_b", 5_000), member("agent-AJ_a", 5_000)]
    assert [joined_first(listed, "agent-AJ_a"), joined_first(listed, "agent-AJ_b")] == [True, False]


def test_a_transcriber_not_listed_yet_yields_to_those_listed_and_keeps_an_empty_room() -> None:
    assert not joined_first([member("agent-AJ_z", 9_000)], "agent-AJ_a")
    assert joined_first([], "agent-AJ_a")


def test_only_agents_carrying_this_agent_name_are_transcribers() -> None:
    assert is_transcriber(member("agent-AJ_1", 0), "transcriber")
    # a user cannot claim to be one: kind comes from the server-issued token
    assert not is_transcriber(
        member("agent-AJ_2", 0, kind=api.ParticipantInfo.Kind.STANDARD), "transcriber"
    )
    assert not is_transcriber(
        member("agent-AJ_3", 0, attributes={AGENT_ATTRIBUTE: "other"}), "transcriber"
    )
    assert not is_transcriber(member("agent-AJ_4", 0, attributes={}), "transcriber")
