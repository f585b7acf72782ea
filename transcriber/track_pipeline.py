"""Track pipeline: one subscribed audio track → one STT stream → its caption publisher."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import stt, utils

from .captions import CaptionOutputs, CaptionPublisher

logger = logging.getLogger("transcriber.track")


@dataclass(frozen=True, kw_only=True)
class PipelineOptions:
    sample_rate: int = 16000
    outputs: CaptionOutputs = CaptionOutputs()
    drain_timeout: float = 5.0
    """How long closing waits for the STT to deliver the last final."""
    max_retry_interval: float = 30.0


class TrackPipeline:
    """Runs while its track is subscribed; `aclose()` ends the input, lets the STT publish
    its last final (bounded by `drain_timeout`), then releases everything.

    A failing STT stream is reopened with backoff for as long as the track lives, so a
    pipeline never dies silently and never affects other tracks.
    """

    def __init__(
        self,
        *,
        room: rtc.Room,
        track: rtc.Track,
        speaker_identity: str,
        stt: stt.STT,
        options: PipelineOptions,
    ) -> None:
        self._stt = stt
        self._opts = options
        self._log_extra = {"participant": speaker_identity, "track": track.sid}
        self.publisher = CaptionPublisher(
            room, speaker_identity=speaker_identity, track_sid=track.sid, outputs=options.outputs
        )
        self._audio = rtc.AudioStream.from_track(
            track=track, sample_rate=options.sample_rate, num_channels=1
        )
        self._stream: stt.RecognizeStream | None = None
        self._input_ended = False
        self._closing: asyncio.Task[None] | None = None
        self._task = asyncio.create_task(self._run(), name=f"track-pipeline-{track.sid}")

    def flush(self) -> None:
        """Marks a segment boundary (the track was muted): the STT finalizes what it has."""
        if self._stream is not None and not self._input_ended:
            self._stream.flush()

    async def aclose(self) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._end_input()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._opts.drain_timeout)
        except asyncio.TimeoutError:
            logger.warning("STT did not finish in time, closing the track", extra=self._log_extra)
            await utils.aio.cancel_and_wait(self._task)
        except Exception:
            pass  # _run logs its own failures

    def _end_input(self) -> None:
        if self._input_ended:
            return
        self._input_ended = True
        if self._stream is not None:
            try:
                self._stream.end_input()
            except RuntimeError:
                pass  # the stream already closed on its own

    async def _run(self) -> None:
        forward = asyncio.create_task(self._forward_audio())
        try:
            await self._recognize()
        finally:
            await utils.aio.cancel_and_wait(forward)
            await self._audio.aclose()
            await self.publisher.close_open_segment()

    async def _forward_audio(self) -> None:
        async for event in self._audio:
            if self._input_ended:
                break
            if self._stream is not None:
                try:
                    self._stream.push_frame(event.frame)
                except RuntimeError:
                    pass  # stream failed between frames; _recognize reopens one
        self._end_input()

    async def _recognize(self) -> None:
        failures = 0
        while True:
            stream = self._stt.stream()
            self._stream = stream
            if self._input_ended:
                stream.end_input()
            try:
                async for event in stream:
                    await self.publisher.on_speech_event(event)
                    if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                        failures = 0
                if not self._input_ended:
                    raise RuntimeError("the STT closed the stream while the track was live")
            except Exception as e:
                failures += 1
                if failures == 1:
                    logger.error("STT stream failed: %s", e, extra=self._log_extra)
            finally:
                self._stream = None
                await stream.aclose()

            if self._input_ended:
                return
            await self.publisher.close_open_segment()
            await asyncio.sleep(min(self._opts.max_retry_interval, 0.5 * 2 ** (failures - 1)))
