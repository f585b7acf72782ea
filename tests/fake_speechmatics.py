"""A local Speechmatics Agent STT service (`/v2/agent`), answered by real Whisper.

livekit-plugins-speechmatics 1.8.x does not speak the classic real-time protocol
(AddTranscript / AddPartialTranscript / EndOfUtterance): it drives the `speechmatics-agent-stt`
SDK, which opens `<base_url>/agent` (the plugin's default is
wss://eu2.rt.speechmatics.com/v2/agent) and talks in segments and turns. This fake speaks
that protocol as the SDK does and as docs.speechmatics.com/api-ref/agent-stt-websocket
describes it:

- handshake: the key as `Authorization: Bearer <key>` (the SDK's way) or `?jwt=<key>` (the
  browser way); a missing or wrong key is HTTP 401. The SDK adds `sm-app`, `sm-sdk` and an
  `X-Request-Id` header, all recorded.
- in: `StartRecognition` {audio_format, transcription_config, turn_config}, binary audio
  (AddAudio), `ForceEndOfUtterance` {timestamp}, `GetSpeakers`, `EndOfStream`.
- out: `RecognitionStarted`, `AudioAdded` {seq_no} per audio message, `AddPartialSegment`
  (only when transcription_config.enable_partials is true, as documented),
  `AddSegment` {segment: {transcript, speaker}, metadata: {start_time, end_time}},
  `StartOfTurn` / `EndOfTurn`, `SpeechStarted` / `SpeechEnded` (vad mode only),
  `SpeakersResult`, `EndOfTranscript`, and `Error` {type, reason} before closing:
  `invalid_audio_type` (Agent STT takes 16 kHz raw PCM only), `invalid_model`,
  `invalid_config`, `invalid_message`, `protocol_error`.
- turns: with turn_config.turn_detection_mode "vad" (the service default) a pause of
  `VAD_SILENCE` closes the turn; with "external" (the plugin's default) only
  ForceEndOfUtterance or EndOfStream does.

Usage, in a test or as `python -m tests.fake_speechmatics --port 0 --api-key K`, is the
same as tests.fake_deepgram; `server.url` is what to pass as
`speechmatics.STT(base_url=...)` or to put in SPEECHMATICS_RT_URL.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from .fake_deepgram import CloseWith, Connection, FakeSttService, send_json, serve_cli
from .fake_stt_recognizer import SpeechStarted, StreamRecognizer, Transcript, UtteranceEnd

SAMPLE_RATE = 16000
ENCODINGS = {"pcm_s16le": "<i2", "pcm_f32le": "<f4"}
MODELS = ("linden-1",)
TRANSCRIPTION_CONFIG_KEYS = {
    "language",
    "model",
    "operating_point",
    "output_locale",
    "domain",
    "diarization",
    "speaker_diarization_config",
    "additional_vocab",
    "enable_partials",
    "enable_entities",
    "emit_sentences",
}
"""What Agent STT reads; anything else (max_delay, conversation_config, ...) is refused."""

VAD_SILENCE = 0.6
"""Seconds of silence that end a turn in vad mode."""

START_TIMEOUT = 10.0
"""Seconds the service waits for StartRecognition after the upgrade."""


class FakeSpeechmatics(FakeSttService):
    """A local Speechmatics Agent STT endpoint: `base_url=server.url`."""

    route = "/v2/agent"

    @property
    def url(self) -> str:
        """What to pass as `speechmatics.STT(base_url=...)` or SPEECHMATICS_RT_URL."""
        return f"ws://{self.host}:{self.port}{self.route}"

    def _check_upgrade(self, request: web.Request, connection: Connection) -> web.Response | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            connection.api_key = value.strip()
        else:
            connection.api_key = request.query.get("jwt")
        if connection.api_key != self.api_key:
            return web.Response(status=401, text="401 Unauthorized: the API key is not valid")
        return None

    async def _session(self, request: web.Request, connection: Connection) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await _AgentSession(self, connection, ws).run()
        return ws


class _AgentSession:
    def __init__(
        self, server: FakeSpeechmatics, connection: Connection, ws: web.WebSocketResponse
    ) -> None:
        self._server = server
        self._connection = connection
        self._ws = ws
        self._recognizer: StreamRecognizer | None = None
        self._dtype = "<i2"
        self._carry = b""
        self._seq_no = 0
        self._vad_mode = True
        self._partials = False
        self._speaker: str | None = None
        self._turn_open = False

    async def run(self) -> None:
        sender: asyncio.Task[None] | None = None
        try:
            await self._start()
            sender = asyncio.create_task(self._send_events())
            if await self._receive() == "EndOfStream":
                assert self._recognizer is not None
                self._recognizer.end()
                await sender
                await self._send({"message": "EndOfTranscript"})
                await self._close(1000, "")
        except CloseWith as e:
            await self._close(e.code, e.reason)
        except ConnectionError:
            pass  # the client went while we were answering
        finally:
            if sender is not None:
                sender.cancel()
            if self._recognizer is not None:
                await self._recognizer.aclose()
            if not self._connection.dropped:
                await self._ws.close()

    async def _fail(self, kind: str, reason: str) -> CloseWith:
        """Sends Error; the caller raises what this returns, which closes the socket."""
        await self._send({"message": "Error", "type": kind, "reason": reason})
        return CloseWith(1011 if kind == "internal_error" else 1008, kind)

    async def _send(self, message: dict[str, Any]) -> None:
        await send_json(self._ws, self._connection, message)

    async def _close(self, code: int, reason: str) -> None:
        self._connection.close_code = code
        self._connection.close_reason = reason
        await self._ws.close(code=code, message=reason.encode())

    async def _start(self) -> None:
        try:
            msg = await self._ws.receive(timeout=START_TIMEOUT)
        except asyncio.TimeoutError:
            raise await self._fail("protocol_error", "no StartRecognition received") from None
        if msg.type == WSMsgType.BINARY:
            raise await self._fail("protocol_error", "audio received before StartRecognition")
        if msg.type != WSMsgType.TEXT:
            raise CloseWith(1000, "")
        try:
            start = json.loads(msg.data)
            kind = start["message"]
        except (ValueError, TypeError, KeyError):
            raise await self._fail("invalid_message", "messages must be JSON objects") from None
        self._connection.received[kind] += 1
        self._connection.config = start
        if kind != "StartRecognition":
            raise await self._fail("protocol_error", f"expected StartRecognition, not {kind}")

        audio = start.get("audio_format") or {}
        encoding, rate = audio.get("encoding"), audio.get("sample_rate")
        if audio.get("type") != "raw" or encoding not in ENCODINGS or rate != SAMPLE_RATE:
            raise await self._fail(
                "invalid_audio_type",
                f"Agent STT needs raw pcm_s16le or pcm_f32le audio at {SAMPLE_RATE} Hz, "
                f"not {json.dumps(audio)}",
            )
        config = start.get("transcription_config")
        if not isinstance(config, dict) or not config.get("language"):
            raise await self._fail("invalid_config", "transcription_config.language is required")
        self._connection.language = str(config["language"])
        unknown = sorted(set(config) - TRANSCRIPTION_CONFIG_KEYS)
        if unknown:
            raise await self._fail("invalid_config", f"not supported by Agent STT: {unknown}")
        model = config.get("model") or config.get("operating_point") or MODELS[0]
        if model not in MODELS:
            raise await self._fail("invalid_model", f"unknown model {model!r}: use {MODELS}")
        mode = (start.get("turn_config") or {}).get("turn_detection_mode", "vad")
        if mode not in ("vad", "external"):
            raise await self._fail("invalid_config", f"unknown turn_detection_mode {mode!r}")

        self._dtype = ENCODINGS[encoding]
        self._vad_mode = mode == "vad"
        self._partials = config.get("enable_partials") is True
        self._speaker = "S1" if config.get("diarization") == "speaker" else None
        vocab = [v.get("content", "") for v in config.get("additional_vocab") or []]
        self._recognizer = StreamRecognizer(
            sample_rate=SAMPLE_RATE,
            min_silence=VAD_SILENCE if self._vad_mode else None,
            interim_every=1.0 if self._partials else None,
            hotwords=" ".join(vocab) or None,
        )
        await self._send(
            {
                "message": "RecognitionStarted",
                "orchestrator_version": "fake",
                "id": self._connection.id,
                "language_pack_info": {
                    "adapted": False,
                    "itn": True,
                    "language_description": "English",
                    "word_delimiter": " ",
                    "writing_direction": "left-to-right",
                },
            }
        )

    async def _receive(self) -> str:
        """Reads until EndOfStream or the client goes; returns what ended it."""
        recognizer, connection = self._recognizer, self._connection
        assert recognizer is not None
        width = np.dtype(self._dtype).itemsize
        while True:
            msg = await self._ws.receive()
            if msg.type == WSMsgType.BINARY:
                data = self._carry + msg.data
                whole = len(data) - len(data) % width
                self._carry = data[whole:]
                connection.audio_bytes += len(msg.data)
                connection.audio_seconds = connection.audio_bytes / (width * SAMPLE_RATE)
                samples = np.frombuffer(data[:whole], self._dtype).astype(np.float32)
                recognizer.push(samples / 32768.0 if width == 2 else samples)
                self._seq_no += 1
                await self._send({"message": "AudioAdded", "seq_no": self._seq_no})
                if self._server.apply_drop_after(connection):
                    return "dropped"
                continue
            if msg.type != WSMsgType.TEXT:
                return "client closed"
            try:
                message = json.loads(msg.data)
                kind = str(message["message"])
            except (ValueError, TypeError, KeyError):
                raise await self._fail("invalid_message", "messages must be JSON objects") from None
            connection.received[kind] += 1
            if kind == "EndOfStream":
                return kind
            if kind == "ForceEndOfUtterance":
                timestamp = message.get("timestamp")
                recognizer.finalize(at=float(timestamp) if timestamp is not None else None)
            elif kind == "GetSpeakers":
                speakers = [{"label": "S1", "speaker_identifiers": ["fake-S1"]}]
                await self._send({"message": "SpeakersResult", "speakers": speakers})
            elif kind == "StartRecognition":
                raise await self._fail("protocol_error", "StartRecognition sent twice")
            else:
                raise await self._fail("invalid_message", f"unknown message {kind!r}")

    async def _send_events(self) -> None:
        assert self._recognizer is not None
        try:
            async for event in self._recognizer.events():
                if isinstance(event, SpeechStarted) and self._vad_mode:
                    await self._timed("SpeechStarted", event.time)
                elif isinstance(event, Transcript):
                    await self._transcript(event)
                elif isinstance(event, UtteranceEnd):
                    pass  # Deepgram's; Agent STT has turns instead
        except ConnectionError:
            pass  # the client is gone; _receive notices too

    async def _transcript(self, t: Transcript) -> None:
        if t.words and not self._turn_open:
            self._turn_open = True
            await self._timed("StartOfTurn", t.words[0].start)
        if t.is_final and t.reason == "pause" and self._vad_mode:
            await self._timed("SpeechEnded", t.words[-1].end if t.words else t.end)
        if t.words and (t.is_final or self._partials):
            segment: dict[str, Any] = {"transcript": t.text}
            if self._speaker is not None:
                segment["speaker"] = self._speaker
            message = {
                "message": "AddSegment" if t.is_final else "AddPartialSegment",
                "segment": segment,
                "metadata": {"start_time": t.words[0].start, "end_time": t.words[-1].end},
            }
            (self._connection.finals if t.is_final else self._connection.interims).append(t.text)
            await self._send(message)
        if t.is_final and t.reason != "max_length" and self._turn_open:
            self._turn_open = False
            await self._timed("EndOfTurn", t.words[-1].end if t.words else t.end)

    async def _timed(self, kind: str, time: float) -> None:
        await self._send({"message": kind, "metadata": {"start_time": time, "end_time": time}})


if __name__ == "__main__":
    serve_cli(FakeSpeechmatics)
