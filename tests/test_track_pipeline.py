"""What a track cost, as the "track closed" and "room closed" log lines report it."""

from __future__ import annotations

from transcriber.stt_failover import ProviderUsage
from transcriber.track_pipeline import TrackUsage


def test_usage_sums_tracks_and_reports_each_providers_failures() -> None:
    room = TrackUsage()
    for failures in (1, 2):
        track = TrackUsage(seconds_received=10.0)
        track.add_stt("deepgram", ProviderUsage(seconds_sent=4.0, failures=failures))
        room.add(track)
    assert room.log_fields() == {
        "audio_received_s": 20.0,
        "stt_deepgram_sent_s": 8.0,
        "stt_deepgram_connected_s": 0.0,
        "stt_deepgram_failures": 3,
    }
