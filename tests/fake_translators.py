"""Local DeepL, LibreTranslate and OpenAI chat-completions servers, with a deterministic
"translation", so tests can assert exact text.

Each speaks its protocol as its clients use it:

- DeepL API v2 (developers.deepl.com): `POST /v2/translate`, JSON {"text": [...],
  "target_lang", "source_lang"?}, key in `Authorization: DeepL-Auth-Key <key>`; answers
  {"translations": [{"detected_source_language", "text"}]}; errors are {"message": ...}:
  403 for a missing or wrong key, 400 for a missing parameter or an unsupported (or
  deprecated, EN/PT) target, 429 too many requests, 456 quota exceeded, 5xx.
- LibreTranslate (docs.libretranslate.com): `POST /translate`, JSON {"q", "source" (a code
  or "auto"), "target", "format", "api_key"?}; answers {"translatedText"}; errors are
  {"error": ...}: 400 for a missing parameter or unsupported language, 403 for a missing or
  wrong key when the server requires one, 429 slow down, 500.
- OpenAI chat completions: `POST /v1/chat/completions`, JSON {"model", "messages": [...]},
  key in `Authorization: Bearer <key>`; answers {"id", "object": "chat.completion",
  "choices": [{"index", "message": {"role": "assistant", "content"}, "finish_reason"}],
  "usage"}; errors are {"error": {"message", "type", "param", "code"}}: 401
  invalid_api_key, 400 for a malformed request, 404 model_not_found, 429
  rate_limit_exceeded, 5xx. The target language is read from the system prompt.

The "translation" of each tone-speech word (tests.tone_stt.VOCABULARY) is the numeral of its
position in that language, unknown words are kept, and a marker names the target:
`translation("alpha bravo", "fr") == "un deux [fr]"`.

Faults (in process, or `POST /_fake/faults` with the same names): `delay` seconds before
every answer, `fail_status` (e.g. 503) for the next `fail_count` requests (None: all),
`rate_limited` next requests answered 429 with `Retry-After: retry_after`.
`GET /_fake/state` lists the requests.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web

from .tone_stt import VOCABULARY

NUMERALS = {
    "fr": "un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze "
    "seize",
    "de": "eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn "
    "fünfzehn sechzehn",
    "es": "uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince "
    "dieciséis",
    "it": "uno due tre quattro cinque sei sette otto nove dieci undici dodici tredici quattordici "
    "quindici sedici",
    "en": "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen",
}
TABLE = {
    lang: dict(zip(VOCABULARY, words.split(), strict=True)) for lang, words in NUMERALS.items()
}
LANGUAGES = tuple(NUMERALS)


def translation(text: str, target: str) -> str:
    """What every fake answers for `text` into `target`."""
    table = TABLE[target]
    return " ".join(table.get(word, word) for word in text.split()) + f" [{target}]"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 200
    answered_at: float = 0.0


@dataclass
class FakeTranslationService:
    """An aiohttp server on 127.0.0.1; subclasses speak one provider's protocol."""

    api_key: str = ""
    host: str = "127.0.0.1"
    delay: float = 0.0
    fail_status: int | None = None
    fail_count: int | None = None
    """How many requests `fail_status` answers (None: all of them)."""
    rate_limited: int = 0
    retry_after: float = 1.0
    requests: list[Request] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    route: ClassVar[str]

    async def __aenter__(self) -> FakeTranslationService:
        app = web.Application()
        app.router.add_post(self.route, self._handle)
        app.router.add_get("/_fake/state", self._state)
        app.router.add_post("/_fake/faults", self._faults)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """What the client's URL setting takes (DEEPL_URL, LIBRETRANSLATE_URL, ...)."""
        return f"http://{self.host}:{self.port}"

    @property
    def answered(self) -> list[Request]:
        return [r for r in self.requests if r.status == 200]

    def translations_into(self, target: str) -> list[Request]:
        """Answered requests into `target` (each is one billed translation)."""
        return [r for r in self.answered if self.target_of(r) == target]

    def target_of(self, request: Request) -> str | None:
        raise NotImplementedError

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        record = Request(path=request.path, headers=dict(request.headers), body=body)
        self.requests.append(record)
        if self.delay:
            await asyncio.sleep(self.delay)
        response = self._fault() or self._answer(request, body)
        record.status = response.status
        record.answered_at = time.monotonic()
        return response

    def _fault(self) -> web.Response | None:
        if self.rate_limited > 0:
            self.rate_limited -= 1
            response = self.error(429, "too many requests")
            response.headers["Retry-After"] = f"{self.retry_after:g}"
            return response
        if self.fail_status is not None and self.fail_count != 0:
            if self.fail_count is not None:
                self.fail_count -= 1
            return self.error(self.fail_status, "service unavailable (fake fault)")
        return None

    def _answer(self, request: web.Request, body: Any) -> web.Response:
        raise NotImplementedError

    def error(self, status: int, message: str, **extra: Any) -> web.Response:
        raise NotImplementedError

    async def _state(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": [
                    {"path": r.path, "body": r.body, "status": r.status} for r in self.requests
                ],
                "delay": self.delay,
                "fail_status": self.fail_status,
                "rate_limited": self.rate_limited,
            }
        )

    async def _faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        for name in ("delay", "fail_status", "fail_count", "rate_limited", "retry_after"):
            if name in body:
                setattr(self, name, body[name])
        return await self._state(request)


class FakeDeepL(FakeTranslationService):
    route = "/v2/translate"

    _TARGETS = {"FR": "fr", "DE": "de", "ES": "es", "IT": "it", "EN-GB": "en", "EN-US": "en"}

    def target_of(self, request: Request) -> str | None:
        return self._TARGETS.get(str((request.body or {}).get("target_lang", "")).upper())

    def error(self, status: int, message: str, **extra: Any) -> web.Response:
        return web.json_response({"message": message, **extra}, status=status)

    def _answer(self, request: web.Request, body: Any) -> web.Response:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme != "DeepL-Auth-Key" or key != self.api_key:
            return self.error(403, "Authorization failure, check auth_key")
        if not isinstance(body, dict) or not isinstance(body.get("text"), list) or not body["text"]:
            return self.error(400, "Parameter 'text' not specified.")
        target = str(body.get("target_lang", "")).upper()
        if target in ("EN", "PT"):
            return self.error(
                400,
                f"targetLang='{target.lower()}' is deprecated, please use en-GB or en-US instead.",
            )
        if target not in self._TARGETS:
            return self.error(400, "Value for 'target_lang' not supported.")
        source = str(body.get("source_lang") or "EN").upper()
        translations = [
            {"detected_source_language": source, "text": translation(t, self._TARGETS[target])}
            for t in body["text"]
        ]
        return web.json_response({"translations": translations})


class FakeLibreTranslate(FakeTranslationService):
    """`api_key` empty: a server that needs none (LT_REQUIRE_API_KEY off)."""

    route = "/translate"

    def target_of(self, request: Request) -> str | None:
        return (request.body or {}).get("target")

    def error(self, status: int, message: str, **extra: Any) -> web.Response:
        return web.json_response({"error": message}, status=status)

    def _answer(self, request: web.Request, body: Any) -> web.Response:
        if not isinstance(body, dict):
            return self.error(400, "Invalid request: missing q parameter")
        if self.api_key and body.get("api_key") != self.api_key:
            return self.error(403, "Invalid API key")
        for name in ("q", "source", "target"):
            if not body.get(name):
                return self.error(400, f"Invalid request: missing {name} parameter")
        source, target = body["source"], body["target"]
        if source != "auto" and source not in LANGUAGES:
            return self.error(400, f"{source} is not supported")
        if target not in LANGUAGES:
            return self.error(400, f"{target} is not supported")
        if body.get("format", "text") not in ("text", "html"):
            return self.error(400, f"{body['format']} format is not supported")
        answer: dict[str, Any] = {"translatedText": translation(body["q"], target)}
        if source == "auto":
            answer["detectedLanguage"] = {"confidence": 90.0, "language": "en"}
        return web.json_response(answer)


class FakeChatCompletions(FakeTranslationService):
    """`url` is the API base (`.../v1`) as OpenAI-compatible clients take it."""

    route = "/v1/chat/completions"
    models: tuple[str, ...] = ("translate-model",)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def target_of(self, request: Request) -> str | None:
        return _prompt_target((request.body or {}).get("messages"))

    def error(self, status: int, message: str, **extra: Any) -> web.Response:
        kind = {401: "invalid_request_error", 429: "requests"}.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        error = {"message": message, "type": kind, "param": None, "code": extra.get("code")}
        return web.json_response({"error": error}, status=status)

    def _answer(self, request: web.Request, body: Any) -> web.Response:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if self.api_key and (scheme != "Bearer" or key != self.api_key):
            shown = f"{key[:3]}...{key[-4:]}" if len(key) > 8 else "(none)"
            return self.error(401, f"Incorrect API key provided: {shown}.", code="invalid_api_key")
        if not isinstance(body, dict) or not body.get("model"):
            return self.error(400, "you must provide a model parameter")
        if body["model"] not in self.models:
            return self.error(
                404, f"The model `{body['model']}` does not exist", code="model_not_found"
            )
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict)
                and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            return self.error(400, "'messages' must be a non-empty list of role/content objects")
        target = _prompt_target(messages)
        if messages[-1]["role"] != "user" or target not in LANGUAGES:
            return self.error(
                400, "the fake needs a system prompt naming the target, then the text"
            )
        content = translation(messages[-1]["content"], target)
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50},
            }
        )


_TARGET_IN_PROMPT = re.compile(r"into the language whose ISO 639-1 code is '([a-z]{2})'")


def _prompt_target(messages: Any) -> str | None:
    """The target named by the system prompt, if it asks for the translation only."""
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    system = messages[0]
    if system.get("role") != "system" or "translation only" not in str(system.get("content")):
        return None
    match = _TARGET_IN_PROMPT.search(str(system.get("content")))
    return match.group(1) if match else None
