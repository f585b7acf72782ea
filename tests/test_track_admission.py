"""Track caps: which tracks a room subscribes to, and the waiting ones it admits later."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from transcriber.track_admission import TrackAdmission, TrackCaps


@dataclass
class Publication:
    """What the admission reads and sets of an `rtc.RemoteTrackPublication`."""

    sid: str
    subscribed: bool = False

    def set_subscribed(self, subscribed: bool) -> None:
        self.subscribed = subscribed


@dataclass
class Participant:
    identity: str
    track_publications: dict[str, Publication] = field(default_factory=dict)

    def publish(self, sid: str) -> Publication:
        self.track_publications[sid] = publication = Publication(sid)
        return publication


@dataclass
class Room:
    name: str = "standup"
    remote_participants: dict[str, Participant] = field(default_factory=dict)

    def join(self, identity: str) -> Participant:
        self.remote_participants[identity] = participant = Participant(identity)
        return participant


def admission(room: Room, worker_tracks: list[int] | None = None, **caps: int) -> TrackAdmission:
    counted = worker_tracks if worker_tracks is not None else [0]
    return TrackAdmission(
        room,  # type: ignore[arg-type]
        TrackCaps(**{"per_room": 10, "per_worker": 10, **caps}),
        worker_tracks=lambda: counted[0],
    )


def caption(admit: TrackAdmission, publication: Publication, participant: Participant) -> bool:
    """The track is requested, subscribed and admitted, as the room manager drives it."""
    admit.request(publication, participant)  # type: ignore[arg-type]
    if not publication.subscribed:
        return False
    return admit.admit(publication, participant)  # type: ignore[arg-type]


async def test_a_track_over_the_room_cap_stays_unsubscribed_until_another_closes() -> None:
    room = Room()
    alice, bob = room.join("alice"), room.join("bob")
    admit = admission(room, per_room=1)
    first, second = alice.publish("TR_a"), bob.publish("TR_b")
    assert caption(admit, first, alice)
    assert not caption(admit, second, bob)
    assert not second.subscribed, "a waiting track's audio is not even received"

    admit.release("TR_a")
    assert second.subscribed
    assert admit.admit(second, bob)  # type: ignore[arg-type]
    assert admit.owners == {"TR_b": "bob"}
    await admit.aclose()


async def test_one_participant_cannot_take_more_than_its_share() -> None:
    room = Room()
    mallory, alice = room.join("mallory"), room.join("alice")
    admit = admission(room, per_participant=2)
    taken = [caption(admit, mallory.publish(f"TR_m{i}"), mallory) for i in range(4)]
    assert taken == [True, True, False, False]
    assert caption(admit, alice.publish("TR_a"), alice)
    await admit.aclose()


async def test_requests_not_yet_subscribed_count_against_the_caps() -> None:
    room = Room()
    alice = room.join("alice")
    admit = admission(room, per_room=1)
    first, second = alice.publish("TR_1"), alice.publish("TR_2")
    admit.request(first, alice)  # type: ignore[arg-type]
    admit.request(second, alice)  # type: ignore[arg-type]
    assert first.subscribed and not second.subscribed
    await admit.aclose()


async def test_the_worker_cap_freed_in_another_room_admits_a_waiting_track() -> None:
    room = Room()
    alice = room.join("alice")
    elsewhere = [1]
    admit = admission(room, elsewhere, per_worker=1)
    waiting = alice.publish("TR_a")
    assert not caption(admit, waiting, alice)
    elsewhere[0] = 0  # that room's track closed: no event reaches this room
    for _ in range(40):
        if waiting.subscribed:
            break
        await asyncio.sleep(0.1)
    assert waiting.subscribed
    await admit.aclose()


async def test_a_waiting_track_whose_participant_left_is_never_subscribed() -> None:
    room = Room()
    alice, bob = room.join("alice"), room.join("bob")
    admit = admission(room, per_room=1)
    assert caption(admit, alice.publish("TR_a"), alice)
    waiting = bob.publish("TR_b")
    assert not caption(admit, waiting, bob)
    del room.remote_participants["bob"]
    admit.release("TR_a")
    assert not waiting.subscribed
    await admit.aclose()
