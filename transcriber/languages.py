"""Who speaks and reads which language: the participant attribute `language`, checked
against the operator's lists.

A participant's `language` attribute (the convention of livekit-agents' multi-user
translator example) names the language they speak and read. It is participant-controlled,
so it only ever selects among codes the operator allowed; it never reaches a model name,
URL or provider choice. Everything here is pure: the room manager logs what it reports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LANGUAGE_ATTRIBUTE = "language"

ISO_639_1 = frozenset(
    """
    aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu
    cv cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi
    ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks
    ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl
    nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl
    sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve
    vi vo wa wo xh yi yo za zh zu
    """.split()
)
"""Every two-letter ISO 639-1 code, lowercase: the only values `language` may take."""

MULTI = "multi"
"""Deepgram's code-switching mode: allowed for TRANSCRIBER_LANGUAGE, never as an attribute."""


@dataclass(frozen=True)
class AttributeLanguage:
    """What a participant's `language` attribute says: the code, or why it was ignored."""

    code: str | None
    problem: str | None = None
    """Set when the attribute was present but ignored; the log line says it."""


def read_attribute(attributes: Mapping[str, str], *, is_agent: bool) -> AttributeLanguage:
    """The participant's language, if its attribute is one lowercase ISO 639-1 code.

    An agent's attribute is ignored: agents (the transcriber among them) do not choose
    the languages a room is translated into."""
    value = attributes.get(LANGUAGE_ATTRIBUTE)
    if value is None or value == "":
        return AttributeLanguage(None)
    if is_agent:
        return AttributeLanguage(None, "is set on an agent participant")
    if value not in ISO_639_1:
        shown = value if len(value) <= 16 else f"{value[:16]}... ({len(value)} characters)"
        return AttributeLanguage(None, f"{shown!r} is not a lowercase ISO 639-1 code such as en")
    return AttributeLanguage(value)


def is_language_code(code: str) -> bool:
    return code in ISO_639_1


@dataclass(frozen=True, kw_only=True)
class LanguagePolicy:
    """The operator's language settings, as one object the room consults."""

    default: str = "en"
    """TRANSCRIBER_LANGUAGE: what a participant without a usable attribute is transcribed in."""
    spoken: tuple[str, ...] = ("en",)
    """TRANSCRIBER_LANGUAGES: the languages the STT may be asked to recognize."""
    translation: tuple[str, ...] = ()
    """TRANSCRIBER_TRANSLATION_LANGUAGES: the languages captions may be translated into."""
    max_targets: int = 4
    """TRANSCRIBER_MAX_TRANSLATION_LANGUAGES: target languages per room at most."""

    def __post_init__(self) -> None:
        if self.default not in self.spoken:
            raise ValueError("the default language must be one of the spoken languages")
        if self.max_targets < 1:
            raise ValueError("max_targets must be at least 1")

    def spoken_language(self, attribute: str | None) -> str:
        """The language to open a participant's STT streams in."""
        return attribute if attribute in self.spoken else self.default

    def targets(self, readers: Iterable[str]) -> Targets:
        """A room's translation target languages, given the language each non-agent
        participant reads: the allowed ones, the most-read first (ties in the operator's
        order), at most `max_targets`."""
        counts = Counter(r for r in readers if r in self.translation)
        ranked = sorted(counts, key=lambda code: (-counts[code], self.translation.index(code)))
        return Targets(
            languages=tuple(ranked[: self.max_targets]),
            dropped=tuple(ranked[self.max_targets :]),
        )

    def audience(self, readers: Mapping[str, str]) -> dict[str, list[str]]:
        """Target language → the participants who read it, for `readers` (identity →
        language read); the targets in `targets()` order."""
        return {
            target: [identity for identity, read in readers.items() if read == target]
            for target in self.targets(readers.values()).languages
        }


@dataclass(frozen=True)
class Targets:
    languages: tuple[str, ...]
    """Translated into, most-read first."""
    dropped: tuple[str, ...] = ()
    """Read by someone but over the cap: the room logs these once per change."""


def base_language(code: str) -> str:
    """`fr-CA` and `fr` are the same language for translation: never translate between them."""
    return code.replace("_", "-").split("-", 1)[0].lower()
