"""Translation providers against local servers speaking DeepL's, LibreTranslate's and the
OpenAI chat-completions protocols (`tests/fake_translators.py`)."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from livekit.agents import APIConnectionError, APIStatusError, APITimeoutError
from prometheus_client import REGISTRY

from transcriber.settings import TranslationSettings
from transcriber.translators import (
    SYSTEM_PROMPT,
    DeepLTranslator,
    LibreTranslateTranslator,
    OpenAITranslator,
    RateLimited,
    Translator,
    TranslatorOptions,
    build_translator,
)

from .fake_translators import (
    FakeChatCompletions,
    FakeDeepL,
    FakeLibreTranslate,
    FakeTranslationService,
    translation,
)

KEY = "translation-key-0123456789"
QUICK = TranslatorOptions(timeout=2.0, retry_interval=0.01, max_retry_after=1.0)


def fake(provider: str, api_key: str = KEY) -> FakeTranslationService:
    return {
        "deepl": FakeDeepL,
        "libretranslate": FakeLibreTranslate,
        "openai": FakeChatCompletions,
    }[provider](api_key=api_key)


def client(
    provider: str, server: FakeTranslationService, *, key: str = KEY, options=QUICK
) -> Translator:  # type: ignore[no-untyped-def]
    if provider == "deepl":
        return DeepLTranslator(api_key=key, url=server.url, options=options)
    if provider == "libretranslate":
        return LibreTranslateTranslator(url=server.url, api_key=key, options=options)
    return OpenAITranslator(url=server.url, model="translate-model", api_key=key, options=options)


PROVIDERS = ["deepl", "libretranslate", "openai"]


def metric(name: str, provider: str) -> float:
    return REGISTRY.get_sample_value(name, {"provider": provider}) or 0.0


async def test_deepl_sends_the_v2_request_and_reads_the_translation() -> None:
    async with fake("deepl") as server:
        translator = client("deepl", server)
        assert await translator.translate("alpha bravo", source="en", target="fr") == "un deux [fr]"
        assert await translator.translate("charlie", source=None, target="en") == "three [en]"
        await translator.aclose()
    first, second = server.requests
    assert first.path == "/v2/translate"
    assert first.headers["Authorization"] == f"DeepL-Auth-Key {KEY}"
    assert first.body == {"text": ["alpha bravo"], "target_lang": "FR", "source_lang": "EN"}
    assert second.body == {"text": ["charlie"], "target_lang": "EN-GB"}  # EN alone is deprecated


async def test_libretranslate_sends_q_source_target_and_the_key_in_the_body() -> None:
    async with fake("libretranslate") as server:
        translator = client("libretranslate", server)
        assert (
            await translator.translate("delta echo", source="en", target="de") == "vier fünf [de]"
        )
        assert await translator.translate("golf", source=None, target="es") == "siete [es]"
        await translator.aclose()
    first, second = server.requests
    assert first.path == "/translate"
    assert first.body == {
        "q": "delta echo",
        "source": "en",
        "target": "de",
        "format": "text",
        "api_key": KEY,
    }
    assert second.body["source"] == "auto"


async def test_libretranslate_without_a_key_sends_none() -> None:
    async with fake("libretranslate", api_key="") as server:
        translator = client("libretranslate", server, key="")
        assert await translator.translate("hotel", source="en", target="it") == "otto [it]"
        await translator.aclose()
    assert "api_key" not in server.requests[0].body


async def test_openai_sends_a_system_prompt_asking_for_the_translation_only() -> None:
    async with fake("openai") as server:
        translator = client("openai", server)
        assert (
            await translator.translate("india juliet", source="en", target="fr") == "neuf dix [fr]"
        )
        await translator.aclose()
    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    body = request.body
    assert body["model"] == "translate-model" and body["temperature"] == 0
    system, user = body["messages"]
    assert system["role"] == "system" and "translation only" in system["content"]
    assert "'fr'" in system["content"] and "'en'" in system["content"]
    assert user == {"role": "user", "content": "india juliet"}
    assert SYSTEM_PROMPT.count("{target}") == 1


async def test_openai_takes_the_full_endpoint_url_too() -> None:
    async with fake("openai") as server:
        translator = OpenAITranslator(
            url=f"{server.url}/chat/completions",
            model="translate-model",
            api_key=KEY,
            options=QUICK,
        )
        assert await translator.translate("kilo", source="en", target="de") == "elf [de]"
        await translator.aclose()


@pytest.mark.parametrize(
    ("provider", "status"), [("deepl", 403), ("libretranslate", 403), ("openai", 401)]
)
async def test_a_wrong_key_is_refused_once_and_never_retried(provider: str, status: int) -> None:
    async with fake(provider) as server:
        translator = client(provider, server, key="wrong-key-9876543210")
        with pytest.raises(APIStatusError) as error:
            await translator.translate("lima", source="en", target="fr")
        await translator.aclose()
    assert error.value.status_code == status and not error.value.retryable
    assert len(server.requests) == 1
    assert "wrong-key-9876543210" not in str(error.value)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_429_is_retried_once_after_its_retry_after(provider: str) -> None:
    async with fake(provider) as server:
        server.rate_limited, server.retry_after = 1, 0.3
        translator = client(provider, server)
        started = time.monotonic()
        assert await translator.translate("mike", source="en", target="fr") == "treize [fr]"
        waited = time.monotonic() - started
        await translator.aclose()
    assert [r.status for r in server.requests] == [429, 200]
    assert waited >= 0.3  # the retry honoured Retry-After


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_429_asking_for_a_long_wait_is_skipped_not_waited_for(provider: str) -> None:
    async with fake(provider) as server:
        server.rate_limited, server.retry_after = 5, 30
        translator = client(provider, server)
        with pytest.raises(RateLimited) as error:
            await translator.translate("mike", source="en", target="fr")
        await translator.aclose()
    assert error.value.retry_after == 30
    assert len(server.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_5xx_is_retried_once(provider: str) -> None:
    async with fake(provider) as server:
        server.fail_status, server.fail_count = 503, 1
        translator = client(provider, server)
        assert await translator.translate("november", source="en", target="de") == "vierzehn [de]"
        server.fail_status, server.fail_count = 500, None
        with pytest.raises(APIStatusError) as error:
            await translator.translate("oscar", source="en", target="de")
        await translator.aclose()
    assert [r.status for r in server.requests] == [503, 200, 500, 500]
    assert error.value.status_code == 500 and "service unavailable" in error.value.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_slow_service_times_out(provider: str) -> None:
    async with fake(provider) as server:
        server.delay = 1.0
        translator = client(provider, server, options=TranslatorOptions(timeout=0.3))
        with pytest.raises(APITimeoutError):
            await translator.translate("papa", source="en", target="fr")
        await translator.aclose()


async def test_an_unreachable_service_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    translator = LibreTranslateTranslator(url=f"http://127.0.0.1:{port}", api_key="", options=QUICK)
    with pytest.raises(APIConnectionError):
        await translator.translate("alpha", source="en", target="fr")
    await translator.aclose()


async def test_requests_characters_errors_and_latency_are_counted_per_provider() -> None:
    before = {
        name: metric(name, "deepl")
        for name in (
            "transcriber_translation_requests_total",
            "transcriber_translation_characters_total",
            "transcriber_translation_errors_total",
            "transcriber_translation_latency_seconds_count",
        )
    }
    async with fake("deepl") as server:
        translator = client("deepl", server)
        await translator.translate("alpha bravo", source="en", target="fr")  # 11 characters
        server.fail_status = 503
        with pytest.raises(APIStatusError):
            await translator.translate("charlie", source="en", target="fr")
        await translator.aclose()
    delta = {name: metric(name, "deepl") - value for name, value in before.items()}
    assert delta == {
        "transcriber_translation_requests_total": 3,
        "transcriber_translation_characters_total": 11,
        "transcriber_translation_errors_total": 2,
        "transcriber_translation_latency_seconds_count": 1,
    }


async def test_a_failing_translator_logs_once_when_it_fails_and_once_when_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="transcriber.translators")
    async with fake("libretranslate") as server:
        translator = client("libretranslate", server)
        server.fail_status = 503
        for _ in range(3):
            with pytest.raises(APIStatusError):
                await translator.translate("alpha", source="en", target="fr")
        server.fail_status = None
        for _ in range(2):
            await translator.translate("alpha", source="en", target="fr")
        await translator.aclose()
    records = [r for r in caplog.records if r.name == "transcriber.translators"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    assert "libretranslate" in records[0].getMessage() and KEY not in records[0].getMessage()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_settings_build_the_named_provider(provider: str) -> None:
    async with fake(provider) as server:
        settings = TranslationSettings(
            provider=provider,
            languages=("fr",),
            deepl_api_key=KEY,
            deepl_url=server.url,
            libretranslate_url=server.url,
            libretranslate_api_key=KEY,
            llm_url=server.url,
            llm_model="translate-model",
            llm_api_key=KEY,
        )
        translator = build_translator(settings)
        assert translator is not None and translator.provider == provider
        assert await translator.translate("alpha", source="en", target="fr") == translation(
            "alpha", "fr"
        )
        await translator.aclose()
    assert build_translator(TranslationSettings()) is None
