"""The transcriber's configuration: one typed object, read once at start.

Every value comes from the environment (after `.env` is loaded). A bad value stops the
worker with a `SettingsError` whose message is one line naming the variable and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

BUILTIN_PROVIDERS = ("local", "deepgram", "speechmatics")
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
"""What CTranslate2 accepts; whether the device runs it is checked when the model loads."""
_PROVIDER_KEYS = {"deepgram": "DEEPGRAM_API_KEY", "speechmatics": "SPEECHMATICS_API_KEY"}
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
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

    vad_gating: bool = True
    """Send audio to the STT only around speech (cloud STT bills every second sent). By
    default on for cloud providers, off when local Whisper comes first: it already decodes
    only what its own VAD calls speech."""
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
    transcribe_agents: bool = False
    """Caption participants of kind AGENT too (the transcriber itself never is)."""

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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        reader = _EnvReader(os.environ if env is None else env)
        providers = reader.providers("TRANSCRIBER_STT_PROVIDER", default="local")
        language = reader.language("TRANSCRIBER_LANGUAGE", default="en")
        settings = cls(
            livekit_url=reader.required("LIVEKIT_URL", hint="e.g. ws://127.0.0.1:7880"),
            livekit_api_key=reader.required("LIVEKIT_API_KEY", hint="your LiveKit API key"),
            livekit_api_secret=reader.required(
                "LIVEKIT_API_SECRET", hint="your LiveKit API secret"
            ),
            agent_name=reader.agent_name("TRANSCRIBER_AGENT_NAME", default="transcriber"),
            stt_providers=providers,
            language=language,
            deepgram_api_key=reader.text("DEEPGRAM_API_KEY"),
            speechmatics_api_key=reader.text("SPEECHMATICS_API_KEY"),
            local_whisper_model=reader.text("LOCAL_WHISPER_MODEL", "tiny.en"),
            local_whisper_device=reader.choice(
                "LOCAL_WHISPER_DEVICE", LOCAL_WHISPER_DEVICES, default="cpu"
            ),
            local_whisper_compute_type=reader.choice(
                "LOCAL_WHISPER_COMPUTE_TYPE", LOCAL_WHISPER_COMPUTE_TYPES, default="int8"
            ),
            deepgram=DeepgramSettings(
                model=reader.text("DEEPGRAM_MODEL", "nova-3"),
                url=reader.url("DEEPGRAM_URL", default=DeepgramSettings.url),
                endpointing_ms=reader.count("DEEPGRAM_ENDPOINTING_MS", default=25, low=0),
                smart_format=reader.flag("DEEPGRAM_SMART_FORMAT", default=False),
                keyterms=reader.words("DEEPGRAM_KEYTERMS"),
            ),
            speechmatics=SpeechmaticsSettings(
                model=reader.text("SPEECHMATICS_MODEL"),
                url=reader.url("SPEECHMATICS_URL", default=SpeechmaticsSettings.url),
                partials=reader.flag("SPEECHMATICS_PARTIALS", default=True),
                vocabulary=reader.words("SPEECHMATICS_VOCABULARY"),
            ),
            failover_retries=reader.count("TRANSCRIBER_FAILOVER_RETRIES", default=1, low=0),
            failover_cooldown=reader.seconds("TRANSCRIBER_FAILOVER_COOLDOWN", default=5.0),
            vad_gating=reader.flag("TRANSCRIBER_VAD_GATING", default=providers[0] != "local"),
            gate_preroll=reader.seconds("TRANSCRIBER_GATE_PREROLL", default=0.35),
            gate_hangover=reader.seconds("TRANSCRIBER_GATE_HANGOVER", default=0.25),
            stt_idle_close=reader.seconds("TRANSCRIBER_STT_IDLE_CLOSE", default=30.0),
            text_streams=reader.flag("TRANSCRIBER_TEXT_STREAMS", default=True),
            legacy_transcriptions=reader.flag("TRANSCRIBER_LEGACY_TRANSCRIPTIONS", default=True),
            transcribe_agents=reader.flag("TRANSCRIBER_TRANSCRIBE_AGENTS", default=False),
            empty_room_timeout=reader.seconds("TRANSCRIBER_EMPTY_ROOM_TIMEOUT", default=30.0),
            join_settle_time=reader.seconds("TRANSCRIBER_JOIN_SETTLE_TIME", default=1.0),
            track_drain_timeout=reader.seconds("TRANSCRIBER_TRACK_DRAIN_TIMEOUT", default=5.0),
            http_port=reader.port("TRANSCRIBER_HTTP_PORT", default=8081),
            load_threshold=reader.fraction("TRANSCRIBER_LOAD_THRESHOLD", default=0.7),
            max_rooms=reader.count("TRANSCRIBER_MAX_ROOMS", default=20),
            max_tracks=reader.count("TRANSCRIBER_MAX_TRACKS", default=100),
            max_tracks_per_room=reader.count("TRANSCRIBER_MAX_TRACKS_PER_ROOM", default=50),
            metrics_port=reader.port("TRANSCRIBER_METRICS_PORT", default=9100),
            drain_timeout=reader.seconds("TRANSCRIBER_DRAIN_TIMEOUT", default=600.0),
        )
        if language == "multi" and set(providers) & {"local", "speechmatics"}:
            raise SettingsError(
                "TRANSCRIBER_LANGUAGE=multi is only understood by deepgram: "
                "use a language code such as en, or TRANSCRIBER_STT_PROVIDER=deepgram"
            )
        if settings.gate_preroll < 0.3:
            raise SettingsError(
                f"TRANSCRIBER_GATE_PREROLL={settings.gate_preroll:g} would cut first syllables: "
                "use at least 0.3 seconds"
            )
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
        return settings


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

    def flag(self, name: str, *, default: bool) -> bool:
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
            number = float(value)
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
        if not value.isdigit() or int(value) > 65535:
            raise SettingsError(f"{name}={value!r} is not a port number: use 0 to 65535")
        return int(value)

    def count(self, name: str, *, default: int, low: int = 1) -> int:
        value = self.text(name)
        if not value:
            return default
        if not value.isdigit() or not low <= int(value) <= 10000:
            raise SettingsError(
                f"{name}={value!r} is not a count: use a whole number from {low} to 10000"
            )
        return int(value)

    def url(self, name: str, *, default: str) -> str:
        value = self.text(name, default)
        if not re.fullmatch(r"(wss?|https?)://[^\s/?#]+[^\s]*", value):
            raise SettingsError(
                f"{name}={value!r} is not a URL: use wss://host/path (or ws:// for a local server)"
            )
        return value

    def choice(self, name: str, choices: tuple[str, ...], *, default: str) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise SettingsError(f"{name}={value!r} is not valid: use one of {', '.join(choices)}")
        return value

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
            number = float(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r} is not a number: use a value like 0.7") from None
        if not 0 < number <= 1:
            raise SettingsError(f"{name}={value!r} is out of range: use a value above 0, at most 1")
        return number

    def agent_name(self, name: str, *, default: str) -> str:
        value = self.text(name, default)
        if not _AGENT_NAME.match(value):
            raise SettingsError(
                f"{name}={value!r} is not a valid agent name: use 1-64 letters, digits, '-', '_' or '.'"
            )
        return value

    def language(self, name: str, *, default: str) -> str:
        value = self.text(name, default)
        if not re.fullmatch(r"[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?|multi", value):
            raise SettingsError(
                f"{name}={value!r} is not a language code: use an ISO 639-1 code such as en or fr"
            )
        return value

    def providers(self, name: str, *, default: str) -> tuple[str, ...]:
        value = self.text(name, default)
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
