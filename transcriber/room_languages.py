"""The languages of one room: what each participant speaks (its tracks are transcribed in
it) and reads, from their `language` attributes under the operator's `LanguagePolicy`.

`languages.py` holds the rules; this keeps the room's state and says, once per change,
what it ignored or left out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from livekit import rtc

from .languages import LANGUAGE_ATTRIBUTE, LanguagePolicy, Targets, read_attribute

logger = logging.getLogger(__name__)

_AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


class RoomLanguages:
    def __init__(self, policy: LanguagePolicy, *, room: str) -> None:
        self._policy = policy
        self._room = room
        self._readers: dict[str, str] = {}  # identity → the language it reads (and speaks)
        self._problems: dict[str, str] = {}  # identity → the attribute value last ignored
        self._dropped_targets: tuple[str, ...] = ()

    def spoken_language(self, identity: str) -> str:
        return self._policy.spoken_language(self._readers.get(identity))

    def translation_targets(self) -> Targets:
        """The languages this room's captions are translated into, most-read first."""
        return self._policy.targets(self._readers.values())

    def update_all(self, participants: Iterable[rtc.RemoteParticipant]) -> None:
        """Reads everyone present (at start), then checks the targets once."""
        for participant in participants:
            self._read(participant)
        self._check_targets()

    def update(self, participant: rtc.RemoteParticipant) -> str | None:
        """Reads the participant's `language`: its new spoken language if that changed."""
        spoken = self._read(participant)
        self._check_targets()
        return spoken

    def _read(self, participant: rtc.RemoteParticipant) -> str | None:
        identity = participant.identity
        reading = read_attribute(participant.attributes, is_agent=participant.kind == _AGENT)
        extra = {"room": self._room, "participant": identity}
        if reading.problem is not None:
            value = participant.attributes.get(LANGUAGE_ATTRIBUTE, "")
            if self._problems.get(identity) != value:
                self._problems[identity] = value
                logger.warning(
                    "ignoring the language attribute of participant %s: %s",
                    identity,
                    reading.problem,
                    extra=extra,
                )
        else:
            self._problems.pop(identity, None)
        before = self.spoken_language(identity)
        if reading.code is None:
            self._readers.pop(identity, None)
        else:
            self._readers[identity] = reading.code
        spoken = self.spoken_language(identity)
        if spoken == before:
            return None
        logger.info("participant now transcribed in %s", spoken, extra=extra)
        return spoken

    def forget(self, identity: str) -> None:
        """The participant left."""
        self._readers.pop(identity, None)
        self._problems.pop(identity, None)
        self._check_targets()

    def _check_targets(self) -> None:
        targets = self.translation_targets()
        if targets.dropped == self._dropped_targets:
            return
        self._dropped_targets = targets.dropped
        if targets.dropped:
            logger.warning(
                "participants read more languages than TRANSCRIBER_MAX_TRANSLATION_LANGUAGES"
                "=%d: translating into %s (the most read), not into %s",
                self._policy.max_targets,
                ",".join(targets.languages),
                ",".join(targets.dropped),
                extra={"room": self._room},
            )
