"""Translation: a sink on the room's caption stream that publishes each final, translated
once per target language of the room, to the participants who read that language.

The room's targets are the `language` attributes of its non-agent participants, limited to
TRANSCRIBER_TRANSLATION_LANGUAGES and the per-room cap (`LanguagePolicy`). A translation
is an `lk.transcription` text stream sent on behalf of the speaker with its own segment id
(so `useTranscriptions` shows it beside the original), the attributes `language` (the
target), `translated` = `true` and `transcriber.source_segment_id`, and only to that
language's readers (`destination_identities`). A caption is never translated into its own
language, and never once per listener.

Each target language has its own lane: a bounded queue worked by a few concurrent
requests, so a slow or failing translator delays only translations into that language,
never the originals (this sink is one of many on the stream), and a backlog is bounded by
dropping the oldest waiting finals. Interims are translated only when asked, at most one
request per segment per second per language, and never after that segment's final.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import APIError, utils
from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
    TOPIC_TRANSCRIPTION,
)

from . import metrics
from .caption_stream import CaptionSink
from .captions import Caption
from .languages import (
    LANGUAGE_ATTRIBUTE,
    LanguagePolicy,
    base_language,
    is_language_code,
    read_attribute,
)
from .translators import Translator

logger = logging.getLogger("transcriber.translation")

ATTRIBUTE_TRANSLATED = "translated"
ATTRIBUTE_SOURCE_SEGMENT_ID = "transcriber.source_segment_id"

_AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


@dataclass(frozen=True, kw_only=True)
class TranslationOptions:
    interims: bool = False
    """Translate interims too (TRANSCRIBER_TRANSLATE_INTERIMS): every request is billed."""
    interim_interval: float = 1.0
    """Seconds between two interim requests of one segment into one language, at least."""
    concurrency: int = 4
    """Requests in flight per target language."""
    max_pending: int = 50
    """Finals waiting per target language; past this the oldest are skipped (a translator
    far slower than speech: their translation would come too late to read)."""
    drain_timeout: float = 3.0
    """At close, how long waiting finals still get to be translated."""


class TranslationSink(CaptionSink):
    """Fed by the caption stream on its own task; `on_caption` only enqueues."""

    name = "translation"

    def __init__(
        self,
        room: rtc.Room,
        translator: Translator,
        *,
        policy: LanguagePolicy,
        options: TranslationOptions | None = None,
    ) -> None:
        self._room = room
        self._translator = translator
        self._policy = policy
        self._opts = options or TranslationOptions()
        self._lanes: dict[str, TranslationLane] = {}

    async def on_caption(self, caption: Caption) -> None:
        if not caption.final and not self._opts.interims:
            return
        source = base_language(caption.language)
        for target in self.audience():
            if target != source:
                self._lane(target).put(caption)

    def audience(self) -> dict[str, list[str]]:
        """Target language → its readers, from the participants' attributes right now."""
        return self._policy.audience(readers_by_identity(self._room.remote_participants))

    async def aclose(self) -> None:
        lanes = list(self._lanes.values())
        await asyncio.gather(*(lane.drain(self._opts.drain_timeout) for lane in lanes))
        await asyncio.gather(*(lane.aclose() for lane in lanes))
        await self._translator.aclose()

    def _lane(self, target: str) -> TranslationLane:
        lane = self._lanes.get(target)
        if lane is None:
            lane = TranslationLane(target, self._opts, self._translate_and_publish)
            self._lanes[target] = lane
        return lane

    async def _translate_and_publish(
        self, target: str, caption: Caption, lane: TranslationLane
    ) -> None:
        source = base_language(caption.language)
        try:
            text = await self._translator.translate(
                caption.text, source=source if is_language_code(source) else None, target=target
            )
        except APIError:
            metrics.TRANSLATIONS_SKIPPED.labels(reason="translator").inc()
            return  # the translator logs once per change of its state
        if not caption.final and lane.finalized(caption.segment_id):
            return  # its final's translation is out (or on its way): never show an older one
        readers = self.audience().get(target, [])
        if readers and text.strip():
            await self._publish(target, caption, text.strip(), readers)

    async def _publish(self, target: str, caption: Caption, text: str, readers: list[str]) -> None:
        if not self._room.isconnected():
            return
        attributes = {
            ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: translated_segment_id(caption.segment_id, target),
            ATTRIBUTE_TRANSCRIPTION_FINAL: "true" if caption.final else "false",
            ATTRIBUTE_TRANSCRIPTION_TRACK_ID: caption.track_sid,
            LANGUAGE_ATTRIBUTE: target,
            ATTRIBUTE_TRANSLATED: "true",
            ATTRIBUTE_SOURCE_SEGMENT_ID: caption.segment_id,
        }
        try:
            writer = await self._room.local_participant.stream_text(
                topic=TOPIC_TRANSCRIPTION,
                sender_identity=caption.speaker_identity,
                destination_identities=readers,
                attributes=attributes,
            )
            await writer.write(text)
            await writer.aclose()
        except Exception as e:  # the room may be going away; never fail the sink
            if self._room.isconnected():
                logger.warning("failed to publish a translation: %s", e)
            return
        metrics.TRANSLATIONS_PUBLISHED.labels(kind="final" if caption.final else "interim").inc()


def translated_segment_id(segment_id: str, target: str) -> str:
    """The translation's own segment id: stable over a segment's interims and final."""
    return f"{segment_id}_{target}"


TranslateJob = Callable[[str, Caption, "TranslationLane"], Awaitable[None]]


class TranslationLane:
    """The translations into one language: finals oldest first, then the newest interim
    of each segment once its throttle allows, by `concurrency` workers."""

    def __init__(self, target: str, options: TranslationOptions, job: TranslateJob) -> None:
        self.target = target
        self._opts = options
        self._job = job
        self._finals: deque[Caption] = deque()
        self._interims: OrderedDict[str, Caption] = OrderedDict()
        self._next_interim_at: dict[str, float] = {}
        self._finalized: OrderedDict[str, None] = OrderedDict()
        self._changed = asyncio.Event()
        self._busy = 0
        self._overflowing = False
        self._workers = [
            asyncio.create_task(self._work(), name=f"translate-{target}-{i}")
            for i in range(options.concurrency)
        ]

    def put(self, caption: Caption) -> None:
        if caption.final:
            self._interims.pop(caption.segment_id, None)
            self._next_interim_at.pop(caption.segment_id, None)
            self._mark_finalized(caption.segment_id)
            self._finals.append(caption)
            self._bound()
        elif caption.segment_id not in self._finalized:
            self._interims[caption.segment_id] = caption  # the newest text of the segment
        self._changed.set()

    def finalized(self, segment_id: str) -> bool:
        return segment_id in self._finalized

    async def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (self._finals or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        await utils.aio.cancel_and_wait(*self._workers)

    async def _work(self) -> None:
        while True:
            caption = await self._take()
            self._busy += 1
            try:
                await self._job(self.target, caption, self)
            except Exception:
                logger.exception("translation failed on one caption")
            finally:
                self._busy -= 1

    async def _take(self) -> Caption:
        while True:
            if self._finals:
                return self._finals.popleft()
            if self._overflowing:
                self._overflowing = False
                logger.info("translations into %s caught up", self.target)
            now = time.monotonic()
            wait: float | None = None
            for segment_id, caption in self._interims.items():
                due = self._next_interim_at.get(segment_id, 0.0)
                if due <= now:
                    del self._interims[segment_id]
                    self._next_interim_at[segment_id] = now + self._opts.interim_interval
                    return caption
                wait = due - now if wait is None else min(wait, due - now)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
            except asyncio.TimeoutError:
                pass

    def _mark_finalized(self, segment_id: str) -> None:
        self._finalized[segment_id] = None
        while len(self._finalized) > 1000:
            self._finalized.popitem(last=False)

    def _bound(self) -> None:
        """Skips the oldest finals past `max_pending`; logs once until the lane catches up."""
        if len(self._finals) <= self._opts.max_pending:
            return
        while len(self._finals) > self._opts.max_pending:
            self._finals.popleft()
            metrics.TRANSLATIONS_SKIPPED.labels(reason="backlog").inc()
        if not self._overflowing:
            self._overflowing = True
            logger.warning(
                "translations into %s are %d finals behind: skipping the oldest",
                self.target,
                self._opts.max_pending,
            )


def readers_by_identity(participants: Mapping[str, rtc.RemoteParticipant]) -> dict[str, str]:
    """Identity → the language read, for the participants whose attribute is usable."""
    readers: dict[str, str] = {}
    for identity, participant in participants.items():
        reading = read_attribute(participant.attributes, is_agent=participant.kind == _AGENT)
        if reading.code is not None:
            readers[identity] = reading.code
    return readers
