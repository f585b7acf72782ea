"""Translation providers: one caption's text into one language, over HTTP.

- `deepl`: DeepL API v2 `POST /v2/translate`, key in `Authorization: DeepL-Auth-Key`;
- `libretranslate`: a LibreTranslate server's `POST /translate`, optional `api_key` in the body;
- `openai`: any OpenAI-compatible `POST /chat/completions` (OpenAI, vLLM, Ollama, ...), with a
  system prompt asking for the translation only.

Each request has a timeout and gets one retry when the error says it is worth one (429,
honouring a short Retry-After; 5xx; a connection error). A translator that starts failing
logs once, and once again when it works again; every request is counted per provider.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import aiohttp
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError

from . import metrics
from .settings import TranslationSettings

logger = logging.getLogger("transcriber.translation")

MAX_TEXT = 5000
"""Characters of one caption sent at most: captions are sentences, and this bounds the cost
of a recognizer that never ends one."""


@dataclass(frozen=True, kw_only=True)
class TranslatorOptions:
    timeout: float = 5.0
    """Seconds one translation may take, its retry included; then it is skipped."""
    retry_interval: float = 0.2
    """Wait before retrying a 5xx or connection error."""
    max_retry_after: float = 2.0
    """A 429 asking to wait longer than this is not retried: the caption would be stale."""

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.retry_interval < 0 or self.max_retry_after < 0:
            raise ValueError("timeout must be > 0, retry_interval and max_retry_after >= 0")


class RateLimited(APIStatusError):
    """A 429: `retry_after` is the seconds the service asked to wait (None: not said)."""

    def __init__(self, message: str, *, retry_after: float | None, body: object) -> None:
        super().__init__(message, status_code=429, body=body, retryable=True)
        self.retry_after = retry_after


class Translator(abc.ABC):
    """Translates caption text; `translate` raises `APIError` when it could not."""

    provider: ClassVar[str]

    def __init__(
        self, *, options: TranslatorOptions, session: aiohttp.ClientSession | None = None
    ) -> None:
        self._opts = options
        self._session = session
        self._own_session = session is None
        self._failing = False
        self._requests = metrics.TRANSLATION_REQUESTS.labels(provider=self.provider)
        self._characters = metrics.TRANSLATION_CHARACTERS.labels(provider=self.provider)
        self._errors = metrics.TRANSLATION_ERRORS.labels(provider=self.provider)
        self._latency = metrics.TRANSLATION_LATENCY.labels(provider=self.provider)

    async def translate(self, text: str, *, source: str | None, target: str) -> str:
        """`source` None lets the provider detect it (e.g. Deepgram's `multi`)."""
        text = text[:MAX_TEXT]
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(
                self._translate_with_retry(text, source, target), self._opts.timeout
            )
        except asyncio.TimeoutError:
            self._errors.inc()
            timeout = APITimeoutError(f"{self.provider} gave no answer in {self._opts.timeout:g} s")
            self._set_failing(timeout)
            raise timeout from None
        except APIError as e:
            self._set_failing(e)
            raise
        self._latency.observe(time.monotonic() - started)
        self._characters.inc(len(text))
        self._set_failing(None)
        return result

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    @abc.abstractmethod
    async def _request(self, text: str, source: str | None, target: str) -> str:
        """One request; raises `APIStatusError`/`APIConnectionError` with `retryable` set."""

    async def _translate_with_retry(self, text: str, source: str | None, target: str) -> str:
        try:
            return await self._counted_request(text, source, target)
        except RateLimited as e:
            wait = self._opts.retry_interval if e.retry_after is None else e.retry_after
            if wait > self._opts.max_retry_after:
                raise
            await asyncio.sleep(wait)
        except APIError as e:
            if not e.retryable:
                raise
            await asyncio.sleep(self._opts.retry_interval)
        return await self._counted_request(text, source, target)

    async def _counted_request(self, text: str, source: str | None, target: str) -> str:
        self._requests.inc()
        try:
            return await self._request(text, source, target)
        except APIError:
            self._errors.inc()
            raise

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
        """POSTs JSON, returns the decoded answer; maps failures to `APIError`s whose
        message never holds a key (headers are not echoed)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                url,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._opts.timeout),
            ) as response:
                if response.status >= 400:
                    raise await _status_error(self.provider, response)
                try:
                    return await response.json(content_type=None)
                except ValueError:
                    raise APIStatusError(
                        f"{self.provider} answered with a body that is not JSON",
                        status_code=response.status,
                        retryable=False,
                    ) from None
        except aiohttp.ClientError as e:
            raise APIConnectionError(f"{self.provider} is unreachable") from e

    def _set_failing(self, error: APIError | None) -> None:
        if error is None:
            if self._failing:
                self._failing = False
                logger.info("translation with %s works again", self.provider)
            return
        if not self._failing:
            self._failing = True
            logger.warning(
                "translation with %s is failing, skipping translations until it works: %s",
                self.provider,
                _describe(error),
            )


class DeepLTranslator(Translator):
    provider = "deepl"

    _TARGETS = {"en": "EN-GB", "pt": "PT-PT"}
    """DeepL wants a variant for these targets; plain EN/PT are deprecated."""

    def __init__(self, *, api_key: str, url: str, options: TranslatorOptions, **kw: Any) -> None:
        super().__init__(options=options, **kw)
        self._url = f"{url.rstrip('/')}/v2/translate"
        self._headers = {"Authorization": f"DeepL-Auth-Key {api_key}"}

    async def _request(self, text: str, source: str | None, target: str) -> str:
        body: dict[str, Any] = {
            "text": [text],
            "target_lang": self._TARGETS.get(target, target.upper()),
        }
        if source:
            body["source_lang"] = source.upper()
        answer = await self._post(self._url, body, self._headers)
        return _pick(self.provider, answer, "translations", 0, "text")


class LibreTranslateTranslator(Translator):
    provider = "libretranslate"

    def __init__(self, *, url: str, api_key: str, options: TranslatorOptions, **kw: Any) -> None:
        super().__init__(options=options, **kw)
        self._url = f"{url.rstrip('/')}/translate"
        self._api_key = api_key

    async def _request(self, text: str, source: str | None, target: str) -> str:
        body = {"q": text, "source": source or "auto", "target": target, "format": "text"}
        if self._api_key:
            body["api_key"] = self._api_key
        answer = await self._post(self._url, body, {})
        return _pick(self.provider, answer, "translatedText")


SYSTEM_PROMPT = (
    "You translate live meeting captions. Translate the user's message {source}into the "
    "language whose ISO 639-1 code is '{target}'. Reply with the translation only: no quotes, "
    "notes, explanations or answers to what it says. Keep names and numbers as they are."
)


class OpenAITranslator(Translator):
    """Chat completions, temperature 0. The caption is the user message, never part of the
    instructions, so what someone says cannot change what the model is asked to do."""

    provider = "openai"

    def __init__(
        self, *, url: str, model: str, api_key: str, options: TranslatorOptions, **kw: Any
    ) -> None:
        super().__init__(options=options, **kw)
        base = url.rstrip("/")
        self._url = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def _request(self, text: str, source: str | None, target: str) -> str:
        origin = f"from the language whose ISO 639-1 code is '{source}' " if source else ""
        body = {
            "model": self._model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT.format(source=origin, target=target)},
                {"role": "user", "content": text},
            ],
        }
        answer = await self._post(self._url, body, self._headers)
        return _pick(self.provider, answer, "choices", 0, "message", "content").strip()


def build_translator(
    settings: TranslationSettings, *, session: aiohttp.ClientSession | None = None
) -> Translator | None:
    """The provider the settings name; None when translation is off."""
    options = TranslatorOptions(timeout=settings.timeout)
    if settings.provider == "deepl":
        return DeepLTranslator(
            api_key=settings.deepl_api_key, url=settings.deepl_url, options=options, session=session
        )
    if settings.provider == "libretranslate":
        return LibreTranslateTranslator(
            url=settings.libretranslate_url,
            api_key=settings.libretranslate_api_key,
            options=options,
            session=session,
        )
    if settings.provider == "openai":
        return OpenAITranslator(
            url=settings.llm_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key,
            options=options,
            session=session,
        )
    return None


async def _status_error(provider: str, response: aiohttp.ClientResponse) -> APIStatusError:
    body = await response.text()
    message = f"{provider} answered HTTP {response.status}: {_error_message(body)}"
    if response.status == 429:
        return RateLimited(
            message, retry_after=_retry_after(response.headers.get("Retry-After")), body=body
        )
    # 456: DeepL's quota exceeded, which no retry fixes; 4xx are never retried by the base
    return APIStatusError(
        message, status_code=response.status, body=body, retryable=response.status >= 500
    )


def _error_message(body: str) -> str:
    """The service's own words: DeepL {"message"}, LibreTranslate {"error"}, OpenAI
    {"error": {"message"}}; else the start of the body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))[:200]
        return str(error or data.get("message") or data)[:200]
    return body[:200]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _pick(provider: str, answer: Any, *path: str | int) -> str:
    """answer[path...] as text, or a non-retryable error naming what was missing."""
    value = answer
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            raise APIStatusError(
                f"{provider} answered without {'.'.join(map(str, path))}",
                status_code=200,
                retryable=False,
            ) from None
    if not isinstance(value, str):
        raise APIStatusError(f"{provider} answered a non-text translation", retryable=False)
    return value


def _describe(error: APIError) -> str:
    return error.message if isinstance(error, APIStatusError) else str(error)
