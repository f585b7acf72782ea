"""The meeting's transcript: its finals, and the formats it is delivered in.

WebVTT (cues with `<v Speaker>` voice spans, times from the meeting's start), plain text
(`[hh:mm:ss] Name: text`) and JSON. Names and text are participant- or speech-controlled:
every format escapes or cleans them, so no name or caption can break a file.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .captions import Caption, clean_label

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, kw_only=True)
class TranscriptSegment:
    id: str
    speaker_identity: str
    speaker_name: str
    track_sid: str
    language: str
    start: float
    end: float
    """Wall-clock seconds (Unix time)."""
    text: str
    source_id: str = ""
    """For a translation: the original's segment id."""

    @classmethod
    def from_caption(cls, caption: Caption) -> TranscriptSegment:
        return cls(
            id=caption.segment_id,
            speaker_identity=clean_label(caption.speaker_identity),
            speaker_name=clean_label(caption.speaker_name),
            track_sid=caption.track_sid,
            language=caption.language,
            start=caption.start,
            end=caption.end,
            text=caption.text,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class Transcript:
    room: str
    room_sid: str
    started_at: float
    ended_at: float
    segments: list[TranscriptSegment] = field(default_factory=list)
    translations: dict[str, list[TranscriptSegment]] = field(default_factory=dict)
    """Target language → the finals translated into it, as published."""

    @property
    def file_stem(self) -> str:
        """`<room>-<started_at>`, safe as a file name whatever the room is called."""
        room = _UNSAFE_FILE_CHARS.sub("_", self.room).strip("._")[:100] or "room"
        return f"{room}-{_utc(self.started_at).strftime('%Y%m%dT%H%M%SZ')}"

    def including(self, earlier: dict[str, Any]) -> Transcript:
        """This transcript with an earlier part of the same meeting (that part's JSON), as
        when a transcriber took over from one that died: each segment once, in time order."""

        def segments(items: list[dict[str, Any]]) -> list[TranscriptSegment]:
            return [
                TranscriptSegment(
                    id=str(i["id"]),
                    speaker_identity=str(i["speaker_identity"]),
                    speaker_name=str(i["speaker_name"]),
                    track_sid=str(i["track_sid"]),
                    language=str(i["language"]),
                    start=self.started_at + float(i["start"]),
                    end=self.started_at + float(i["end"]),
                    text=str(i["text"]),
                    source_id=str(i.get("source_id", "")),
                )
                for i in items
            ]

        def union(
            old: list[TranscriptSegment], new: list[TranscriptSegment]
        ) -> list[TranscriptSegment]:
            ids = {s.id for s in new}
            return sorted([s for s in old if s.id not in ids] + new, key=lambda s: s.start)

        earlier_translations = earlier.get("translations", {})
        languages = {*earlier_translations, *self.translations}
        return replace(
            self,
            segments=union(segments(earlier["segments"]), self.segments),
            translations={
                language: union(
                    segments(earlier_translations.get(language, [])),
                    self.translations.get(language, []),
                )
                for language in sorted(languages)
            },
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "room": self.room,
            "room_sid": self.room_sid,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "segments": [self._json_segment(s) for s in self.segments],
        }
        if self.translations:
            data["translations"] = {
                language: [{"source_id": s.source_id, **self._json_segment(s)} for s in items]
                for language, items in self.translations.items()
            }
        return data

    def _json_segment(self, s: TranscriptSegment) -> dict[str, Any]:
        return {
            "id": s.id,
            "speaker_identity": s.speaker_identity,
            "speaker_name": s.speaker_name,
            "track_sid": s.track_sid,
            "language": s.language,
            "start": round(max(0.0, s.start - self.started_at), 3),
            "end": round(max(0.0, s.end - self.started_at), 3),
            "text": s.text,
        }

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=1)

    def to_webvtt(self) -> str:
        lines = ["WEBVTT", ""]
        for s in self.segments:
            start = max(0.0, s.start - self.started_at)
            end = max(start + 0.001, s.end - self.started_at)
            speaker = _vtt_escape(_one_line(s.speaker_name or s.speaker_identity))
            text = _vtt_escape(_one_line(s.text))
            lines += [
                _vtt_cue_id(s.id),
                f"{_clock(start, vtt=True)} --> {_clock(end, vtt=True)}",
                f"<v {speaker}>{text}</v>" if speaker else text,
                "",
            ]
        return "\n".join(lines)

    def to_text(self) -> str:
        return "".join(
            f"[{_clock(s.start - self.started_at)}] "
            f"{_one_line(s.speaker_name or s.speaker_identity)}: {_one_line(s.text)}\n"
            for s in self.segments
        )


def _one_line(text: str) -> str:
    return " ".join(_CONTROL.sub(" ", text).split())


def _vtt_escape(text: str) -> str:
    """WebVTT cue text: `&`, `<` and `>` as entities, so no text forms a tag or `-->`."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtt_cue_id(segment_id: str) -> str:
    """Cue identifiers may hold neither `-->` nor a line break."""
    return _one_line(segment_id).replace("-->", "--") or "cue"


def _clock(seconds: float, *, vtt: bool = False) -> str:
    whole, ms = divmod(round(max(0.0, seconds) * 1000), 1000)
    text = f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
    return f"{text}.{ms:03d}" if vtt else text


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)


def _iso(timestamp: float) -> str:
    return _utc(timestamp).isoformat(timespec="milliseconds").replace("+00:00", "Z")
