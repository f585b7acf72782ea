"""The transcriber's configuration: one typed object, read once at start.

Every value comes from the environment (after `.env` is loaded). A bad value stops the
worker with a `SettingsError` whose message is one line naming the variable and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from .languages import MULTI, is_language_code

BUILTIN_PROVIDERS = ("local", "deepgram", "speechmatics")
LEGACY_MODES = ("stable", "final", "updates")
LOCAL_WHISPER_DEVICES = ("cpu", "cuda", "auto")
LOCAL_WHISPER_COMPUTE_TYPES = (
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
    "default",
    "auto",
)
"""What CTranslate2 accepts; whether the device runs it is checked at start."""
_PROVIDER_KEYS = {"deepgram": "DEEPGRAM_API_KEY", "speechmatics": "SPEECHMATICS_API_KEY"}
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DIGITS = re.compile(r"[0-9]+")
"""ASCII only: `str.isdigit()` and `float()` also take other scripts' digits (`٨٠٨١`)."""
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable and the fix."""


@dataclass(frozen=True, kw_only=True)
class DeepgramSettings:
    model: str = "nova-3"
    url: str = "https://api.deepgram.com/v1/listen"
    """A regional or self-hosted endpoint."""
    endpointing_ms: int = 25
    """Silence (ms) after which Deepgram ends a sentence."""
    smart_format: bool = False
    keyterms: tuple[str, ...] = ()
    """Words to recognize better (product names, jargon)."""


@dataclass(frozen=True, kw_only=True)
class SpeechmaticsSettings:
    model: str = ""
    """Empty: the service's default."""
    url: str = "wss://eu2.rt.speechmatics.com/v2/agent"
    partials: bool = True
    """Interim captions while someone speaks."""
    vocabulary: tuple[str, ...] = ()
    """Additional vocabulary (product names, jargon)."""


TRANSLATION_PROVIDERS = ("deepl", "libretranslate", "openai")


@dataclass(frozen=True, kw_only=True)
class TranslationSettings:
    provider: str = ""
    """Empty: no translation. Else one of TRANSLATION_PROVIDERS."""
    languages: tuple[str, ...] = ()
    """The languages captions may be translated into (those participants read)."""
    max_languages: int = 4
    """Target languages per room at most, the most-read first."""
    interims: bool = False
    """Translate interim captions too (throttled): every request is billed."""
    timeout: float = 5.0
    """Seconds one translation request may take before it is skipped."""
    deepl_api_key: str = field(default="", repr=False)
    deepl_url: str = "https://api.deepl.com"
    """https://api-free.deepl.com for a DeepL API Free key."""
    libretranslate_url: str = ""
    libretranslate_api_key: str = field(default="", repr=False)
    llm_url: str = ""
    """An OpenAI-compatible API base, e.g. https://api.openai.com/v1."""
    llm_model: str = ""
    llm_api_key: str = field(default="", repr=False)


@dataclass(frozen=True, kw_only=True)
class Settings:
    livekit_url: str
    livekit_api_key: str
    livekit_api_secret: str = field(repr=False)

    agent_name: str = "transcriber"
    stt_providers: tuple[str, ...] = ("local",)
    """Ordered: the first is preferred, the others are failovers. A `module:factory`
    import path names a custom `stt.STT` factory (used by the tests and benchmarks)."""
    language: str = "en"
    languages: tuple[str, ...] = ("en",)
    """The languages participants may be transcribed in (their `language` attribute)."""
    deepgram_api_key: str = field(default="", repr=False)
    speechmatics_api_key: str = field(default="", repr=False)
    local_whisper_model: str = "tiny.en"
    """A faster-whisper model name (downloaded on first use) or a CTranslate2 model dir."""
    local_whisper_device: str = "cpu"
    """cpu, cuda, or auto (cuda when a GPU is visible)."""
    local_whisper_compute_type: str = "int8"
    """CTranslate2 compute type: int8 on CPU; float16 or int8_float16 on a GPU."""
    deepgram: DeepgramSettings = field(default_factory=DeepgramSettings)
    speechmatics: SpeechmaticsSettings = field(default_factory=SpeechmaticsSettings)
    failover_retries: int = 1
    """Reconnects to the same provider before failing over to the next."""
    failover_cooldown: float = 5.0
    """Seconds a failed provider is skipped before the transcriber tries it again."""

    vad_gating: bool | None = None
    """Send audio to the STT only around speech (cloud STT bills every second sent). None
    (unset) means on when a cloud provider comes first, off when local Whisper does: it
    already decodes only what its own VAD calls speech. Always a bool once constructed."""
    gate_preroll: float = 0.35
    """Seconds of audio before detected speech that are sent with it (first syllables)."""
    gate_hangover: float = 0.25
    """Seconds still sent after speech ends, so the STT can finish the last word."""
    stt_idle_close: float = 30.0
    """Seconds of silence after which a track's STT connection is closed (0: never)."""

    text_streams: bool = True
    """Publish captions as `lk.transcription` text streams (livekit-client >= 2.9)."""
    legacy_transcriptions: bool = True
    """Also publish legacy transcription events (`RoomEvent.TranscriptionReceived`)."""
    legacy_mode: str = "stable"
    """What legacy transcription events carry: `stable` (each newly stable run of words as
    its own final segment: live and complete in every reader, La Suite Meet included),
    `final` (one final per segment) or `updates` (interims then the final, one id)."""
    history_finals: int = 20
    """Last finals sent to a participant who joins or rejoins (0: none)."""
    transcribe_agents: bool = False
    """Caption participants of kind AGENT too (the transcriber itself never is)."""

    transcript_dir: str = ""
    """Where each meeting's transcript is written (.vtt, .txt, .json); empty: nowhere."""
    transcript_webhook_url: str = ""
    """Where each meeting's transcript JSON is POSTed, signed; empty: nowhere."""
    transcript_max_finals: int = 20000
    transcript_max_bytes: int = 5_000_000
    """Bounds on one room's transcript (finals, bytes of text)."""
    transcript_retry_timeout: float = 3600.0
    """Seconds a failing transcript delivery is retried before it is set aside."""
    journal_dir: str = ""
    """Where transcripts are journaled while a meeting runs; empty: a `.journal` folder
    in the transcript directory, else ~/.local/state/transcriber/journal."""

    empty_room_timeout: float = 30.0
    """Seconds with no non-agent participant before the transcriber leaves."""
    join_settle_time: float = 1.0
    """Seconds after joining before captioning starts, so transcribers that joined the same
    room at once all see each other and the first one alone stays (`room_claim`)."""
    track_drain_timeout: float = 5.0
    """Seconds a closing track waits for its STT to deliver the last final."""

    http_port: int = 8081
    """The worker's health/status HTTP server; 0 picks a free port."""
    load_threshold: float = 0.7
    """Load (0-1) at which LiveKit stops sending new rooms to this worker."""
    max_rooms: int = 20
    """Rooms one worker captions at most; load is the larger of CPU and rooms/max_rooms."""
    max_tracks: int = 100
    """Audio tracks one worker captions at most, over all its rooms."""
    max_tracks_per_room: int = 50
    """Audio tracks captioned in one room at most."""
    metrics_port: int = 9100
    """Prometheus /metrics port; 0 turns metrics off."""
    drain_timeout: float = 600.0
    """On SIGTERM, how long current rooms keep being captioned before the worker exits."""
    translation: TranslationSettings = field(default_factory=TranslationSettings)
    lease_ttl: float = 4.0
    """Seconds a transcriber's room lease lasts; renewed every quarter of it. A transcriber
    whose lease lapsed is taken for dead and replaced (`room_lease`)."""
    redis_url: str = field(default="", repr=False)
    """The LiveKit cluster's Redis: lets every worker find rooms whose transcriber died
    with its whole worker. Empty: only a worker's own dead jobs are replaced."""

    def __post_init__(self) -> None:
        if self.vad_gating is None:
            object.__setattr__(self, "vad_gating", self.stt_providers[0] != "local")

    @property
    def transcript_enabled(self) -> bool:
        return bool(self.transcript_dir or self.transcript_webhook_url)

    @property
    def journal_path(self) -> Path:
        if self.journal_dir:
            return Path(self.journal_dir)
        if self.transcript_dir:
            return Path(self.transcript_dir) / ".journal"
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "transcriber" / "journal"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every default is the field's own (`cls.<field>`), written once above."""
        reader = _EnvReader(os.environ if env is None else env)
        providers = reader.providers("TRANSCRIBER_STT_PROVIDER", default=cls.stt_providers)
        language = reader.language("TRANSCRIBER_LANGUAGE", default=cls.language)
        settings = cls(
            livekit_url=reader.required_url("LIVEKIT_URL", hint="e.g. ws://127.0.0.1:7880"),
            livekit_api_key=reader.required("LIVEKIT_API_KEY", hint="your LiveKit API key"),
            livekit_api_secret=reader.required(
                "LIVEKIT_API_SECRET", hint="your LiveKit API secret"
            ),
            agent_name=reader.agent_name("TRANSCRIBER_AGENT_NAME", default=cls.agent_name),
            stt_providers=providers,
            language=language,
            languages=reader.languages("TRANSCRIBER_LANGUAGES", default=(language,)),
            deepgram_api_key=reader.text("DEEPGRAM_API_KEY"),
            speechmatics_api_key=reader.text("SPEECHMATICS_API_KEY"),
            local_whisper_model=reader.text("LOCAL_WHISPER_MODEL", cls.local_whisper_model),
            local_whisper_device=reader.choice(
                "LOCAL_WHISPER_DEVICE",
                default=cls.local_whisper_device,
                choices=LOCAL_WHISPER_DEVICES,
            ),
            local_whisper_compute_type=reader.choice(
                "LOCAL_WHISPER_COMPUTE_TYPE",
                default=cls.local_whisper_compute_type,
                choices=LOCAL_WHISPER_COMPUTE_TYPES,
            ),
            deepgram=_read_deepgram(reader),
            speechmatics=_read_speechmatics(reader),
            failover_retries=reader.count(
                "TRANSCRIBER_FAILOVER_RETRIES", default=cls.failover_retries, low=0
            ),
            failover_cooldown=reader.seconds(
                "TRANSCRIBER_FAILOVER_COOLDOWN", default=cls.failover_cooldown
            ),
            vad_gating=reader.flag("TRANSCRIBER_VAD_GATING", default=cls.vad_gating),
            gate_preroll=reader.seconds("TRANSCRIBER_GATE_PREROLL", default=cls.gate_preroll),
            gate_hangover=reader.seconds("TRANSCRIBER_GATE_HANGOVER", default=cls.gate_hangover),
            stt_idle_close=reader.seconds("TRANSCRIBER_STT_IDLE_CLOSE", default=cls.stt_idle_close),
            text_streams=reader.flag("TRANSCRIBER_TEXT_STREAMS", default=cls.text_streams),
            legacy_transcriptions=reader.flag(
                "TRANSCRIBER_LEGACY_TRANSCRIPTIONS", default=cls.legacy_transcriptions
            ),
            legacy_mode=reader.choice(
                "TRANSCRIBER_LEGACY_MODE", default=cls.legacy_mode, choices=LEGACY_MODES
            ),
            history_finals=reader.count(
                "TRANSCRIBER_HISTORY_FINALS", default=cls.history_finals, low=0, high=1000
            ),
            transcribe_agents=reader.flag(
                "TRANSCRIBER_TRANSCRIBE_AGENTS", default=cls.transcribe_agents
            ),
            **_read_transcript(reader),
            empty_room_timeout=reader.seconds(
                "TRANSCRIBER_EMPTY_ROOM_TIMEOUT", default=cls.empty_room_timeout
            ),
            join_settle_time=reader.seconds(
                "TRANSCRIBER_JOIN_SETTLE_TIME", default=cls.join_settle_time
            ),
            track_drain_timeout=reader.seconds(
                "TRANSCRIBER_TRACK_DRAIN_TIMEOUT", default=cls.track_drain_timeout
            ),
            http_port=reader.port("TRANSCRIBER_HTTP_PORT", default=cls.http_port),
            load_threshold=reader.fraction(
                "TRANSCRIBER_LOAD_THRESHOLD", default=cls.load_threshold
            ),
            max_rooms=reader.count("TRANSCRIBER_MAX_ROOMS", default=cls.max_rooms),
            max_tracks=reader.count("TRANSCRIBER_MAX_TRACKS", default=cls.max_tracks),
            max_tracks_per_room=reader.count(
                "TRANSCRIBER_MAX_TRACKS_PER_ROOM", default=cls.max_tracks_per_room
            ),
            metrics_port=reader.port("TRANSCRIBER_METRICS_PORT", default=cls.metrics_port),
            drain_timeout=reader.seconds("TRANSCRIBER_DRAIN_TIMEOUT", default=cls.drain_timeout),
            translation=_translation_settings(reader),
            lease_ttl=reader.seconds("TRANSCRIBER_LEASE_TTL", default=cls.lease_ttl),
            redis_url=reader.text("TRANSCRIBER_REDIS_URL"),
        )
        _check(settings)
        return settings


def _read_transcript(reader: _EnvReader) -> dict[str, Any]:
    s = Settings
    return dict(
        transcript_dir=reader.directory("TRANSCRIBER_TRANSCRIPT_DIR"),
        transcript_webhook_url=reader.http_url("TRANSCRIBER_TRANSCRIPT_WEBHOOK_URL"),
        transcript_max_finals=reader.count(
            "TRANSCRIBER_TRANSCRIPT_MAX_FINALS", default=s.transcript_max_finals, high=1_000_000
        ),
        transcript_max_bytes=reader.count(
            "TRANSCRIBER_TRANSCRIPT_MAX_BYTES",
            default=s.transcript_max_bytes,
            low=1000,
            high=1_000_000_000,
        ),
        transcript_retry_timeout=reader.seconds(
            "TRANSCRIBER_TRANSCRIPT_RETRY_TIMEOUT", default=s.transcript_retry_timeout
        ),
        journal_dir=reader.directory("TRANSCRIBER_JOURNAL_DIR"),
    )


def _read_deepgram(reader: _EnvReader) -> DeepgramSettings:
    dg = DeepgramSettings
    return DeepgramSettings(
        model=reader.text("DEEPGRAM_MODEL", dg.model),
        url=reader.url("DEEPGRAM_URL", default=dg.url),
        endpointing_ms=reader.count("DEEPGRAM_ENDPOINTING_MS", default=dg.endpointing_ms, low=0),
        smart_format=reader.flag("DEEPGRAM_SMART_FORMAT", default=dg.smart_format),
        keyterms=reader.words("DEEPGRAM_KEYTERMS"),
    )


def _read_speechmatics(reader: _EnvReader) -> SpeechmaticsSettings:
    sm = SpeechmaticsSettings
    return SpeechmaticsSettings(
        model=reader.text("SPEECHMATICS_MODEL", sm.model),
        url=reader.url("SPEECHMATICS_URL", default=sm.url),
        partials=reader.flag("SPEECHMATICS_PARTIALS", default=sm.partials),
        vocabulary=reader.words("SPEECHMATICS_VOCABULARY"),
    )


def _check(settings: Settings) -> None:
    """What no single variable decides: combinations of them."""
    providers, language = settings.stt_providers, settings.language
    if settings.lease_ttl < 2:
        raise SettingsError(
            f"TRANSCRIBER_LEASE_TTL={settings.lease_ttl:g} would take live transcribers for "
            "dead: use at least 2 seconds"
        )
    if settings.redis_url and not re.fullmatch(r"(rediss?|unix)://\S+", settings.redis_url):
        raise SettingsError(
            "TRANSCRIBER_REDIS_URL is not a Redis URL: use redis://host:6379/0 (rediss:// for TLS)"
        )
    if language not in settings.languages:
        raise SettingsError(
            f"TRANSCRIBER_LANGUAGES={','.join(settings.languages)!r} does not include "
            f"TRANSCRIBER_LANGUAGE={language}: add it (it is the fallback for everyone)"
        )
    if MULTI in settings.languages and set(providers) & {"local", "speechmatics"}:
        where = (
            "TRANSCRIBER_LANGUAGE=multi" if language == MULTI else "TRANSCRIBER_LANGUAGES' multi"
        )
        raise SettingsError(
            f"{where} is only understood by deepgram: "
            "use a language code such as en, or TRANSCRIBER_STT_PROVIDER=deepgram"
        )
    _check_gate(settings)
    for provider in providers:
        key_var = _PROVIDER_KEYS.get(provider)
        if key_var and not getattr(settings, key_var.lower()):
            raise SettingsError(
                f"{key_var} is not set but TRANSCRIBER_STT_PROVIDER uses {provider}: "
                f"set {key_var} in the environment or .env"
            )
    if not (settings.text_streams or settings.legacy_transcriptions):
        raise SettingsError(
            "TRANSCRIBER_TEXT_STREAMS and TRANSCRIBER_LEGACY_TRANSCRIPTIONS are both off: "
            "enable at least one caption output"
        )
    if settings.transcript_enabled:
        journal = settings.journal_path
        try:
            _prepare_directory(journal)
        except OSError as e:
            raise SettingsError(
                f"cannot keep transcript journals in {journal} ({e.strerror}): set "
                "TRANSCRIBER_JOURNAL_DIR to a directory this user can write"
            ) from None


def _check_gate(settings: Settings) -> None:
    """The gate owns its limits (the pre-roll minimum): ask it, name the variable."""
    from .speech_gate import GateOptions

    try:
        GateOptions(preroll=settings.gate_preroll, hangover=settings.gate_hangover)
    except ValueError as e:
        raise SettingsError(f"TRANSCRIBER_GATE_PREROLL: {e}") from None


def _translation_settings(reader: _EnvReader) -> TranslationSettings:
    provider = reader.choice(
        "TRANSCRIBER_TRANSLATION_PROVIDER", default="none", choices=("none", *TRANSLATION_PROVIDERS)
    )
    provider = "" if provider == "none" else provider
    languages = reader.languages("TRANSCRIBER_TRANSLATION_LANGUAGES", default=(), multi=False)
    if bool(provider) != bool(languages):
        if provider:
            raise SettingsError(
                f"TRANSCRIBER_TRANSLATION_PROVIDER={provider} but "
                "TRANSCRIBER_TRANSLATION_LANGUAGES is empty: list the languages to translate "
                "into, e.g. fr,de"
            )
        raise SettingsError(
            "TRANSCRIBER_TRANSLATION_LANGUAGES is set but TRANSCRIBER_TRANSLATION_PROVIDER is not: "
            f"use one of {', '.join(TRANSLATION_PROVIDERS)}"
        )
    translation = TranslationSettings(
        provider=provider,
        languages=languages,
        max_languages=reader.count("TRANSCRIBER_MAX_TRANSLATION_LANGUAGES", default=4),
        interims=reader.flag("TRANSCRIBER_TRANSLATE_INTERIMS", default=False),
        timeout=reader.seconds("TRANSCRIBER_TRANSLATION_TIMEOUT", default=5.0),
        deepl_api_key=reader.text("DEEPL_API_KEY"),
        deepl_url=(reader.http_url("DEEPL_URL") or TranslationSettings.deepl_url).rstrip("/"),
        libretranslate_url=reader.http_url("LIBRETRANSLATE_URL").rstrip("/"),
        libretranslate_api_key=reader.text("LIBRETRANSLATE_API_KEY"),
        llm_url=reader.http_url("TRANSLATION_LLM_URL").rstrip("/"),
        llm_model=reader.text("TRANSLATION_LLM_MODEL"),
        llm_api_key=reader.text("TRANSLATION_LLM_API_KEY"),
    )
    if translation.timeout <= 0 or translation.timeout > 60:
        raise SettingsError(
            f"TRANSCRIBER_TRANSLATION_TIMEOUT={translation.timeout:g} is out of range: "
            "use more than 0 and at most 60 seconds"
        )
    required = {
        "deepl": ("DEEPL_API_KEY", translation.deepl_api_key),
        "libretranslate": ("LIBRETRANSLATE_URL", translation.libretranslate_url),
        "openai": ("TRANSLATION_LLM_URL", translation.llm_url),
    }
    if provider:
        name, value = required[provider]
        if not value:
            raise SettingsError(
                f"{name} is not set but TRANSCRIBER_TRANSLATION_PROVIDER={provider}: "
                f"set {name} in the environment or .env"
            )
    if provider == "openai" and not translation.llm_model:
        raise SettingsError(
            "TRANSLATION_LLM_MODEL is not set but TRANSCRIBER_TRANSLATION_PROVIDER=openai: "
            "name the chat model, e.g. gpt-4o-mini"
        )
    return translation


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str = "") -> str:
        return self._env.get(name, "").strip() or default

    def required(self, name: str, *, hint: str) -> str:
        value = self.text(name)
        if not value:
            raise SettingsError(f"{name} is not set: set it in the environment or .env ({hint})")
        return value

    @overload
    def flag(self, name: str, *, default: bool) -> bool: ...
    @overload
    def flag(self, name: str, *, default: None) -> bool | None: ...
    def flag(self, name: str, *, default: bool | None) -> bool | None:
        value = self.text(name).lower()
        if not value:
            return default
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise SettingsError(f"{name}={value!r} is not a boolean: use true or false")

    def seconds(self, name: str, *, default: float) -> float:
        value = self.text(name)
        if not value:
            return default
        try:
            number = _ascii_float(value)
        except ValueError:
            raise SettingsError(
                f"{name}={value!r} is not a number: give seconds, e.g. {name}={default:g}"
            ) from None
        if not 0 <= number <= 86400:
            raise SettingsError(f"{name}={value!r} is out of range: use 0 to 86400 seconds")
        return number

    def port(self, name: str, *, default: int) -> int:
        value = self.text(name)
        if not value:
            return default
        if not _DIGITS.fullmatch(value) or int(value) > 65535:
            raise SettingsError(f"{name}={value!r} is not a port number: use 0 to 65535")
        return int(value)

    def count(self, name: str, *, default: int, low: int = 1, high: int = 10000) -> int:
        value = self.text(name)
        if not value:
            return default
        if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
            raise SettingsError(
                f"{name}={value!r} is not a count: use a whole number from {low} to {high}"
            )
        return int(value)

    def choice(self, name: str, *, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            raise SettingsError(f"{name}={value!r} is not valid: use one of {', '.join(choices)}")
        return value

    def http_url(self, name: str) -> str:
        value = self.text(name)
        if value and not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value):
            raise SettingsError(f"{name}={value!r} is not an http(s) URL: use https://host/path")
        return value

    def directory(self, name: str) -> str:
        """A directory the worker can write in, created if missing; empty stays empty."""
        value = self.text(name)
        if value:
            try:
                _prepare_directory(Path(value))
            except OSError as e:
                raise SettingsError(
                    f"{name}={value!r} is not a writable directory ({e.strerror}): "
                    "create it for this user or choose another"
                ) from None
        return value

    def required_url(self, name: str, *, hint: str) -> str:
        return self.url(name, default=self.required(name, hint=hint))

    def url(self, name: str, *, default: str) -> str:
        value = self.text(name, default)
        if not re.fullmatch(r"(wss?|https?)://[^\s/?#]+[^\s]*", value):
            raise SettingsError(
                f"{name}={value!r} is not a URL: use wss://host/path (or ws:// for a local server)"
            )
        return value

    def languages(
        self, name: str, *, default: tuple[str, ...], multi: bool = True
    ) -> tuple[str, ...]:
        """Comma-separated lowercase ISO 639-1 codes (and Deepgram's `multi` if allowed)."""
        value = self.text(name)
        if not value:
            return default
        codes = tuple(c.strip() for c in value.split(",") if c.strip())
        for code in codes:
            if not (is_language_code(code) or (multi and code == MULTI)):
                raise SettingsError(
                    f"{name} has {code!r}, which is not a language code: "
                    "list lowercase ISO 639-1 codes such as en,fr,de"
                )
        if len(set(codes)) != len(codes):
            raise SettingsError(f"{name}={value!r} lists a language twice: list each once")
        return codes

    def words(self, name: str) -> tuple[str, ...]:
        words = tuple(w.strip() for w in self.text(name).split(",") if w.strip())
        if len(words) > 500 or any(len(w) > 100 for w in words):
            raise SettingsError(f"{name} is too long: list at most 500 terms of 100 characters")
        return words

    def fraction(self, name: str, *, default: float) -> float:
        value = self.text(name)
        if not value:
            return default
        try:
            number = _ascii_float(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r} is not a number: use a value like 0.7") from None
        if not 0 < number <= 1:
            raise SettingsError(f"{name}={value!r} is out of range: use a value above 0, at most 1")
        return number

    def agent_name(self, name: str, *, default: str) -> str:
        if self._env.get(name) and not self._env[name].strip():
            raise SettingsError(
                f"{name} is only spaces: give a name, or leave it empty for {default!r}"
            )
        value = self.text(name, default)
        if not _AGENT_NAME.match(value):
            raise SettingsError(
                f"{name}={value!r} is not a valid agent name: "
                "use 1-64 letters, digits, '-', '_' or '.'"
            )
        return value

    def language(self, name: str, *, default: str) -> str:
        value = self.text(name, default)
        if not re.fullmatch(r"[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?|multi", value):
            raise SettingsError(
                f"{name}={value!r} is not a language code: use an ISO 639-1 code such as en or fr"
            )
        return value

    def providers(self, name: str, *, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.text(name, ",".join(default))
        providers = tuple(p.strip() for p in value.split(",") if p.strip())
        for provider in providers:
            if provider not in BUILTIN_PROVIDERS and not _IMPORT_PATH.match(provider):
                raise SettingsError(
                    f"{name} has unknown STT provider {provider!r}: "
                    f"use {', '.join(BUILTIN_PROVIDERS)} (or a comma-separated list of them)"
                )
        if len(set(providers)) != len(providers):
            raise SettingsError(f"{name}={value!r} lists a provider twice: list each once")
        if not providers:
            raise SettingsError(f"{name} is empty: use one of {', '.join(BUILTIN_PROVIDERS)}")
        return providers


def _ascii_float(value: str) -> float:
    if not value.isascii():
        raise ValueError(value)
    return float(value)


def _prepare_directory(path: Path) -> None:
    """Creates the directory (0700: transcripts are private) if missing and checks that
    this user can write in it; raises OSError otherwise."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    probe = path / f".probe-{os.getpid()}"
    probe.touch(mode=0o600)
    probe.unlink()
