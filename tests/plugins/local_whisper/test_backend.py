"""The model backend on its own: settings checks and the real tiny.en on spoken clips."""

from __future__ import annotations

import ctranslate2
import numpy as np
import pytest
from livekit.plugins.local_whisper import Job, Lead, ModelLoadError, WhisperBackend, Word
from livekit.plugins.local_whisper.backend import (
    check_compute_type,
    check_device,
    check_languages,
    join_words,
)

from tests.speech_clips import clip, noise, silence, word_error_rate

RATE = 16000


def audio_of(name: str, start: float, end: float) -> np.ndarray:
    samples = clip(name, RATE).samples()[int(start * RATE) : int(end * RATE)]
    return samples.astype(np.float32) / 32768.0


def sentence_audio(name: str, index: int) -> tuple[np.ndarray, str]:
    sentence = clip(name, RATE).sentences[index]
    return audio_of(name, sentence.start - 0.3, sentence.end + 0.2), sentence.text


def test_an_unknown_model_name_fails_with_one_line_that_names_the_setting() -> None:
    with pytest.raises(ModelLoadError) as failure:
        WhisperBackend("tiny.xx")

    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("LOCAL_WHISPER_MODEL='tiny.xx' is not a known Whisper model")
    assert "tiny.en" in message and "path" in message


def test_a_directory_without_a_model_fails_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError) as failure:
        WhisperBackend(str(tmp_path))

    assert "\n" not in str(failure.value)
    assert "model.bin" in str(failure.value)


def test_a_model_that_was_never_downloaded_says_how_to_get_it() -> None:
    with pytest.raises(ModelLoadError) as failure:
        WhisperBackend("large-v3")

    assert "\n" not in str(failure.value)
    assert "download-files" in str(failure.value)


def test_an_english_only_model_given_as_a_path_refuses_another_language(model_path: str) -> None:
    with pytest.raises(ModelLoadError) as failure:
        check_languages(model_path, ["en", "de"])

    assert "\n" not in str(failure.value)
    assert "only understands English but language='de'" in str(failure.value)
    check_languages(model_path, ["en", "en-US", "auto"])


def test_a_model_name_ending_in_en_refuses_another_language_before_loading() -> None:
    with pytest.raises(ModelLoadError, match="only understands English"):
        check_languages("small.en", ["fr"])
    check_languages("small", ["fr", "de", "auto"])


def test_an_unknown_language_is_refused_in_one_line() -> None:
    with pytest.raises(ModelLoadError) as failure:
        check_languages("small", ["xx-INVALID"])
    assert "\n" not in str(failure.value) and "'xx-INVALID'" in str(failure.value)


def test_an_unknown_device_or_compute_type_fails_with_one_line_naming_the_setting() -> None:
    with pytest.raises(ModelLoadError) as device:
        check_device("tpu")
    with pytest.raises(ModelLoadError) as compute:
        check_compute_type("int7")

    assert str(device.value).startswith("LOCAL_WHISPER_DEVICE='tpu' is not a device")
    assert str(compute.value).startswith("LOCAL_WHISPER_COMPUTE_TYPE='int7' is not a compute")
    assert "\n" not in str(device.value) + str(compute.value)


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() > 0, reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_to_use_cpu_or_auto() -> None:
    with pytest.raises(ModelLoadError, match="no CUDA GPU is visible: use cpu or auto"):
        check_device("cuda")
    assert check_device("auto") == "cpu"


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() == 0, reason="no CUDA GPU on this machine")
def test_the_model_decodes_on_the_gpu(model_path: str) -> None:
    backend = WhisperBackend(model_path, device="cuda", compute_type="float16")
    audio, expected = sentence_audio("us-160", 2)

    assert word_error_rate(expected, join_words(backend.transcribe(audio))) <= 0.1


def test_a_batch_decodes_each_job_as_it_would_alone(backend: WhisperBackend) -> None:
    jobs = [Job(sentence_audio(name, 1)[0]) for name in ("us-160", "gb-150", "rp-155")]
    jobs.append(Job(silence(2).samples().astype(np.float32)))

    together = backend.transcribe_batch(jobs)

    alone = [backend.transcribe_batch([j])[0] for j in jobs]
    assert [join_words(t.words) for t in together] == [join_words(t.words) for t in alone]
    assert together[-1].words == [] and all(t.language == "en" for t in together)


def test_a_sentence_comes_back_as_timed_words(backend: WhisperBackend) -> None:
    audio, expected = sentence_audio("us-160", 2)

    words = backend.transcribe(audio)

    assert word_error_rate(expected, join_words(words)) <= 0.1
    assert all(isinstance(w, Word) and 0 <= w.start <= w.end for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert words[-1].end <= len(audio) / RATE


def test_silence_and_quiet_noise_give_no_words(backend: WhisperBackend) -> None:
    for quiet in (silence(3), noise(3, level_dbfs=-50), noise(3, level_dbfs=-40)):
        audio = quiet.samples().astype(np.float32) / 32768.0
        assert backend.transcribe(audio) == []


def test_words_of_a_lead_are_heard_but_not_returned(backend: WhisperBackend) -> None:
    before, before_text = sentence_audio("gb-150", 0)
    audio, expected = sentence_audio("gb-150", 1)

    words = backend.transcribe(audio, lead=Lead(before, before_text))

    assert word_error_rate(expected, join_words(words)) <= 0.1
    assert words[0].start >= 0.0 and words[-1].end <= len(audio) / RATE
