"""The livekit-agents internals the transcriber relies on where it has no public API.

An upgrade that moves one fails here, by name, rather than as a wrong load report or a
log flooded with retries in production.
"""

from __future__ import annotations

import inspect
import time

from livekit.agents import AgentServer

from transcriber.worker import OutageLogFilter, cpu_load


def test_the_default_cpu_load_is_still_there_and_a_fraction() -> None:
    server = AgentServer()
    cpu_load(server)  # the first call starts its sampling thread
    time.sleep(1.2)
    assert 0.0 <= cpu_load(server) <= 1.0


def test_the_connection_messages_the_outage_filter_matches_are_still_logged() -> None:
    connection = inspect.getsource(AgentServer._connection_task)
    assert f'"{OutageLogFilter.LOST}, retrying' in connection
    registered = inspect.getsource(AgentServer._handle_register)
    assert f'"{OutageLogFilter.BACK}"' in registered


def test_availability_is_still_judged_on_the_effective_load_with_reserved_rooms() -> None:
    """`TranscriberServer._get_effective_load` counts rooms said yes to and not started."""
    available = inspect.getsource(AgentServer._is_available)
    assert "self._get_effective_load()" in available
    answer = inspect.getsource(AgentServer._answer_availability)
    assert "self._reserved_slots += 1" in answer
    effective = inspect.getsource(AgentServer._get_effective_load)
    assert "self._worker_load" in effective and "self._reserved_slots" in effective


def test_an_audio_stream_still_subscribes_to_the_process_wide_queue_with_a_filter() -> None:
    """`track_pipeline.own_frames_only` swaps the filter of the stream's subscription."""
    from livekit.rtc import AudioStream
    from livekit.rtc._ffi_client import FfiQueue

    init = inspect.getsource(AudioStream.__init__)
    assert "self._ffi_queue = FfiClient.instance.queue.subscribe(" in init
    assert "self._ffi_handle" in inspect.getsource(AudioStream)
    put = inspect.getsource(FfiQueue.put)
    assert "for queue, loop, filter_fn in self._subscribers" in put and "self._lock" in put


def test_a_text_stream_can_still_be_sent_in_one_request_on_behalf_of_a_speaker() -> None:
    """`caption_outputs.send_text` builds the SDK's own send_text request, with a sender."""
    from livekit.rtc._ffi_client import FfiQueue
    from livekit.rtc._proto import ffi_pb2

    send_text = ffi_pb2.FfiRequest().send_text
    assert "local_participant_handle" in send_text.DESCRIPTOR.fields_by_name
    options = set(send_text.options.DESCRIPTOR.fields_by_name)
    assert {"topic", "attributes", "destination_identities", "sender_identity"} <= options
    assert "async_id" in ffi_pb2.FfiResponse().send_text.DESCRIPTOR.fields_by_name
    assert "filter_fn" in inspect.signature(FfiQueue.subscribe).parameters
