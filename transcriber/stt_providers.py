"""Builds the STT the settings ask for. Heavy plugins are imported only when chosen."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from livekit.agents import stt
from livekit.agents.types import NOT_GIVEN
from livekit.agents.vad import VAD

from .settings import Settings, SettingsError
from .stt_failover import FailoverOptions, FailoverSTT

SAMPLE_RATE = 16000
"""Every provider is fed 16 kHz mono: what Whisper, Deepgram and Speechmatics expect."""


def _whisper_languages() -> tuple[str, ...]:
    """Whisper's language codes, as faster-whisper checks them (it has no public list)."""
    try:
        from faster_whisper.tokenizer import _LANGUAGE_CODES
    except ImportError:  # local Whisper not installed: it cannot be chosen either
        return ()
    return tuple(_LANGUAGE_CODES)


@dataclass(frozen=True, kw_only=True)
class ProviderTraits:
    """What a provider can do, where the transcriber must treat providers differently."""

    finalize: bool = False
    """Ends a turn on `STT.finalize()` (Speechmatics ignores `stream.flush()` for that)."""
    keep_alive: bool = False
    """Keeps an idle stream open for free (Deepgram's KeepAlive): never closed when idle."""
    languages: Callable[[], Collection[str]] | None = None
    """Lists the `TRANSCRIBER_LANGUAGE` values it understands (called once, at start);
    None: the service decides."""


PROVIDER_TRAITS = {
    "local": ProviderTraits(languages=_whisper_languages),
    "deepgram": ProviderTraits(keep_alive=True),
    "speechmatics": ProviderTraits(finalize=True),
}
"""Custom `module:factory` providers get the defaults: no finalize, no keep-alive."""


def traits(provider: str) -> ProviderTraits:
    return PROVIDER_TRAITS.get(provider, ProviderTraits())


_PLUGIN_MODULES = {
    "local": ("livekit.plugins.local_whisper", "livekit-plugins-local-whisper"),
    "deepgram": ("livekit.plugins.deepgram", "livekit-plugins-deepgram"),
    "speechmatics": ("livekit.plugins.speechmatics", "livekit-plugins-speechmatics"),
}


def check_providers_installed(settings: Settings) -> None:
    """Imports each chosen provider's plugin (plugins must register in the main process)."""
    for name in settings.stt_providers:
        if name in _PLUGIN_MODULES:
            module, package = _PLUGIN_MODULES[name]
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise SettingsError(
                    f"TRANSCRIBER_STT_PROVIDER uses {name} but {package} is not installed "
                    f"({e}): run scripts/setup"
                ) from None
        else:
            _check_factory(name, settings)
        languages = traits(name).languages
        if languages is not None and settings.language not in languages():
            raise SettingsError(
                f"TRANSCRIBER_LANGUAGE={settings.language!r} is not a language {name} "
                "understands: use a code such as en, fr or de"
            )
    if "local" in settings.stt_providers:
        spoken = (settings.language, *(x for x in settings.languages if x != settings.language))
        check_local_whisper(
            settings.local_whisper_model,
            spoken,
            device=settings.local_whisper_device,
            compute_type=settings.local_whisper_compute_type,
        )
    importlib.import_module("livekit.plugins.silero")


def _check_factory(path: str, settings: Settings) -> None:
    """Calls a custom factory once, so a wrong one fails here and not in every job."""
    factory = _load_factory(path)
    try:
        built = factory(settings)
    except Exception as e:  # whatever the user's factory raises, say which one failed
        raise SettingsError(
            f"TRANSCRIBER_STT_PROVIDER={path!r} failed when called with the settings "
            f"({type(e).__name__}: {e}): name a factory that returns an stt.STT"
        ) from None
    if not isinstance(built, stt.STT):
        raise SettingsError(
            f"TRANSCRIBER_STT_PROVIDER={path!r} returned {type(built).__name__}, not an "
            "stt.STT: name a factory that returns one"
        )


def check_local_whisper(
    model: str, languages: Sequence[str], *, device: str = "cpu", compute_type: str = "int8"
) -> None:
    """Refuse at start what local Whisper would refuse on the first track.

    A known model name is fine even if not downloaded yet (it downloads on first use),
    unless downloads are off (HF_HUB_OFFLINE, as in the image): then it must be cached. A
    path must hold a readable model. An English-only model (a name ending in `.en`, or a
    directory whose vocabulary has no language tokens, like the packaged tiny.en) accepts
    only English; `languages` starts with `TRANSCRIBER_LANGUAGE`, then the rest of
    `TRANSCRIBER_LANGUAGES`. The device must exist and run the compute type.
    """
    from faster_whisper.utils import available_models
    from livekit.plugins.local_whisper import ModelLoadError
    from livekit.plugins.local_whisper.backend import (
        AUTO_LANGUAGE,
        check_compute_type,
        model_languages,
        resolve_model,
        whisper_language,
    )

    try:
        if model not in available_models() or os.environ.get("HF_HUB_OFFLINE"):
            resolve_model(model)
        known = model_languages(model)
        for i, language in enumerate(languages):
            code = whisper_language(language) if language != "multi" else AUTO_LANGUAGE
            if known is not None and code != AUTO_LANGUAGE and code not in known:
                where = (
                    f"TRANSCRIBER_LANGUAGE={language!r}"
                    if i == 0
                    else f"TRANSCRIBER_LANGUAGES has {language!r}"
                )
                raise SettingsError(
                    f"LOCAL_WHISPER_MODEL={model!r} only understands English but {where}: "
                    "use a multilingual model such as tiny, base or small, or language en"
                )
        check_compute_type(compute_type, device)
    except ModelLoadError as e:
        raise SettingsError(str(e)) from None


def import_all_plugins() -> None:
    for module, _ in _PLUGIN_MODULES.values():
        importlib.import_module(module)
    importlib.import_module("livekit.plugins.silero")


VAD_MIN_SILENCE = 0.25
"""Seconds of silence that end speech. The gate sends audio until the VAD says speech
ended, so this bounds what silence costs per burst; Silero's default 0.55 s billed 25%
above speech time in the gating benchmark. Pauses shorter than this never split a burst."""


def load_vad() -> VAD:
    """Silero VAD, loaded once per process and shared by every track and provider."""
    from livekit.plugins import silero

    return silero.VAD.load(min_silence_duration=VAD_MIN_SILENCE)


def build_stt(settings: Settings, *, vad: VAD) -> FailoverSTT:
    """The providers in order of preference; even a single one gets reconnects with
    replay, so a dropped connection loses no words."""
    providers = {
        name: functools.partial(_build_one, name, settings, vad) for name in settings.stt_providers
    }
    return FailoverSTT(
        providers,
        FailoverOptions(
            retries_per_provider=settings.failover_retries,
            cooldown=max(settings.failover_cooldown, 0.1),
            max_cooldown=max(FailoverOptions.max_cooldown, settings.failover_cooldown),
        ),
        finalizing=[name for name in settings.stt_providers if traits(name).finalize],
    )


def _build_one(name: str, settings: Settings, vad: VAD) -> stt.STT[Any]:
    if name == "local":
        from livekit.plugins import local_whisper

        return local_whisper.STT(
            model=settings.local_whisper_model,
            language=settings.language,
            device=settings.local_whisper_device,
            compute_type=settings.local_whisper_compute_type,
            vad=vad,
        )
    if name == "deepgram":
        from livekit.plugins import deepgram

        dg = settings.deepgram
        return deepgram.STT(
            api_key=settings.deepgram_api_key,
            base_url=dg.url,
            model=dg.model,
            language=settings.language,
            sample_rate=SAMPLE_RATE,
            endpointing_ms=dg.endpointing_ms,
            smart_format=dg.smart_format,
            keyterm=list(dg.keyterms) if dg.keyterms else NOT_GIVEN,
        )
    if name == "speechmatics":
        from livekit.plugins import speechmatics

        sm = settings.speechmatics
        return speechmatics.STT(
            api_key=settings.speechmatics_api_key,
            base_url=sm.url,
            model=sm.model or NOT_GIVEN,
            language=settings.language,
            include_partials=sm.partials,
            additional_vocab=[{"content": w} for w in sm.vocabulary] or NOT_GIVEN,  # type: ignore[misc]
            vad=vad,
        )
    return _load_factory(name)(settings)


def _load_factory(path: str) -> Callable[[Settings], stt.STT[Any]]:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise SettingsError(
            f"TRANSCRIBER_STT_PROVIDER={path!r} cannot be imported ({e}): "
            "check the module path and that it is installed"
        ) from None
    if not callable(factory):
        raise SettingsError(f"TRANSCRIBER_STT_PROVIDER={path!r} is not callable: name a factory")
    return factory  # type: ignore[no-any-return]
