"""A demo meeting: one participant speaks generated sentences, the captions print here.

Joins `LIVEKIT_URL` as a speaker and a viewer, dispatches the transcriber by agent name
(as a backend would), plays the speech in real time and prints interim and final
captions as the viewer receives them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
from dotenv import load_dotenv
from livekit import api, rtc
from livekit.agents.types import ATTRIBUTE_TRANSCRIPTION_FINAL, TOPIC_TRANSCRIPTION

from transcriber.room_claim import transcriber_in_room

SENTENCES = [
    "Good morning everyone, thank you for joining the meeting today.",
    "The first item on the agenda is the budget for next year.",
    "Please send me your questions before the end of the week.",
]
RATE = 48000


def speak_to_wav(text: str, path: Path) -> np.ndarray:
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(path)], check=True)
    with wave.open(str(path)) as f:
        return np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16)


def token(identity: str, room: str) -> str:
    return (
        api.AccessToken()
        .with_identity(identity)
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )


async def wait_for_transcriber(lkapi: api.LiveKitAPI, room: str, agent_name: str) -> None:
    """The transcriber joins hidden, so only the server API sees it arrive."""
    for _ in range(600):
        if await transcriber_in_room(lkapi, room, agent_name):
            return
        await asyncio.sleep(0.1)
    sys.exit(f"the transcriber did not join {room} within 60 s: see the worker log")


async def main(room_name: str, agent_name: str, repeat: int) -> None:
    url = os.environ["LIVEKIT_URL"]
    viewer, speaker = rtc.Room(), rtc.Room()
    finals: list[str] = []

    def on_caption(reader: rtc.TextStreamReader, sender: str) -> None:
        async def show() -> None:
            text = await reader.read_all()
            if reader.info.attributes.get(ATTRIBUTE_TRANSCRIPTION_FINAL) == "true":
                finals.append(text)
                print(f"\r\033[K[{sender}] {text}", flush=True)
            else:
                print(f"\r\033[K[{sender}] … {text}", end="", flush=True)

        asyncio.get_running_loop().create_task(show())

    viewer.register_text_stream_handler(TOPIC_TRANSCRIPTION, on_caption)
    await viewer.connect(url, token("demo-viewer", room_name), rtc.RoomOptions(auto_subscribe=False))
    await speaker.connect(url, token("demo-speaker", room_name))
    source = rtc.AudioSource(RATE, 1, queue_size_ms=100)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    await speaker.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    )

    async with api.LiveKitAPI() as lkapi:
        await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=room_name)
        )
        print(f"room {room_name}: transcriber dispatched, waiting for it to join")
        await wait_for_transcriber(lkapi, room_name, agent_name)
    await asyncio.sleep(2)  # its join settle time, then it subscribes
    times = "until Ctrl-C" if repeat == 0 else f"{repeat} time(s)"
    print(f"transcriber joined, speaking {len(SENTENCES)} sentences, {times}")

    with tempfile.TemporaryDirectory() as tmp:
        clips = [speak_to_wav(s, Path(tmp) / f"{i}.wav") for i, s in enumerate(SENTENCES)]
    frame = RATE // 50
    rounds = itertools.count() if repeat == 0 else range(repeat)
    for _ in rounds:
        for samples in clips:
            padded = np.concatenate([samples, np.zeros(RATE, dtype=np.int16)])
            for i in range(0, len(padded) - frame + 1, frame):
                chunk = padded[i : i + frame]
                await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), RATE, 1, frame))
    await asyncio.sleep(3)

    await speaker.disconnect()
    await viewer.disconnect()
    print(f"\n{len(finals)} final captions received")
    if not finals:
        sys.exit("no captions arrived: see the worker log")


if __name__ == "__main__":
    load_dotenv()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--room", default="demo-room")
    parser.add_argument("--agent-name", default=os.environ.get("TRANSCRIBER_AGENT_NAME", "transcriber"))
    parser.add_argument(
        "--repeat", type=int, default=1, help="times to speak the sentences; 0 = until Ctrl-C"
    )
    args = parser.parse_args()
    try:
        asyncio.run(main(args.room, args.agent_name, args.repeat))
    except KeyboardInterrupt:
        print()
