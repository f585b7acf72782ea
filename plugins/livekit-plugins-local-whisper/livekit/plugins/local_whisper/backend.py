"""Whisper on the CPU through faster-whisper: 16 kHz audio in, words with times out.

Synchronous on purpose: the scheduler runs it in a worker thread, and CTranslate2 releases
the GIL while it computes.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .log import logger

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

SAMPLE_RATE = 16000
MODEL_ENV = "LOCAL_WHISPER_MODEL"
DEFAULT_MODEL = "tiny.en"
MAX_WINDOW = 30.0
"""Whisper hears at most 30 s at a time."""

_FRAMES_PER_SECOND = 100
_ENCODER_STEP = 500
"""Encoder input lengths are rounded up to multiples of 5 s, with at least 2 s of padding.

The model was trained on 30 s windows, but CTranslate2 accepts shorter ones; a 10 s window
costs a third of a 30 s one and, with the padding, decodes as well on our clips.
"""
_MIN_ENCODER_FRAMES = 1000
_ENCODER_PADDING = 200

_HALLUCINATIONS = frozenset(
    {
        "you",
        "thank you",
        "thank you very much",
        "thanks",
        "thanks for watching",
        "thank you for watching",
        "thanks for watching and please subscribe",
        "please subscribe",
        "bye",
        "so",
        "okay",
        "oh",
        "uh",
        "um",
        "hmm",
        "the end",
        "i",
    }
)
"""What Whisper says when it hears silence or noise, learnt from subtitled videos."""
_QUIET_RMS = 0.003
"""About -50 dBFS: anything quieter holds no words a person would want captioned."""


class ModelLoadError(Exception):
    """A model setting that cannot work; the message names the setting and the fix."""


@dataclass(frozen=True)
class Word:
    text: str
    """As the model spells it, with its leading space and any punctuation."""
    start: float
    """Seconds from the start of the decoded audio."""
    end: float
    probability: float


def join_words(words: list[Word] | tuple[Word, ...]) -> str:
    return "".join(w.text for w in words).strip()


def resolve_model(model: str, *, download: bool = False) -> str:
    """The directory of a CTranslate2 Whisper model, from a known name or a path.

    Names are looked up in the Hugging Face cache that faster-whisper downloads into;
    nothing is downloaded unless `download` is set.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file() or not os.access(path / "model.bin", os.R_OK):
            raise ModelLoadError(
                f"{MODEL_ENV}={model!r} is a directory without a readable model.bin: "
                "point it at a CTranslate2 Whisper model (see ct2-transformers-converter)"
            )
        return str(path)

    from faster_whisper.utils import available_models, download_model

    if model not in available_models():
        raise ModelLoadError(
            f"{MODEL_ENV}={model!r} is not a known Whisper model or readable directory: "
            f"use one of {', '.join(available_models())} or a path to a CTranslate2 model"
        )
    try:
        return str(download_model(model, local_files_only=not download))
    except Exception as e:
        if download:
            raise ModelLoadError(
                f"{MODEL_ENV}={model!r} could not be downloaded ({type(e).__name__}): "
                "check network access to huggingface.co, or set it to a local model directory"
            ) from e
        raise ModelLoadError(
            f"{MODEL_ENV}={model!r} is not downloaded: run the worker's download-files "
            "command once with network access, or set it to a local model directory"
        ) from e


def check_compute_type(compute_type: str) -> None:
    import ctranslate2

    supported = sorted(ctranslate2.get_supported_compute_types("cpu"))
    if compute_type not in supported:
        raise ModelLoadError(
            f"compute_type={compute_type!r} is not supported on this CPU: "
            f"use one of {', '.join(supported)}"
        )


def check_language(model: str, language: str) -> None:
    if model.endswith(".en") and language != "en":
        raise ModelLoadError(
            f"{MODEL_ENV}={model!r} only understands English but language={language!r}: "
            f"use {model.removesuffix('.en')!r} or another multilingual model"
        )


class WhisperBackend:
    """One loaded Whisper model that turns up to 30 s of audio into words."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        compute_type: str = "int8",
        cpu_threads: int = 0,
        language: str = "en",
        beam_size: int = 1,
        min_word_probability: float = 0.1,
    ) -> None:
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens
        except ImportError as e:
            raise ModelLoadError(
                "faster-whisper is not installed: pip install livekit-plugins-local-whisper"
            ) from e

        check_compute_type(compute_type)
        check_language(model, language)
        path = resolve_model(model)
        try:
            self._model: WhisperModel = WhisperModel(
                path, device="cpu", compute_type=compute_type, cpu_threads=cpu_threads
            )
        except (RuntimeError, ValueError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelLoadError(
                f"{MODEL_ENV}={model!r} could not be loaded ({reason}): "
                "download it again or point it at another CTranslate2 Whisper model"
            ) from e

        if not self._model.model.is_multilingual and language != "en":
            raise ModelLoadError(
                f"{MODEL_ENV}={model!r} only understands English but language={language!r}: "
                "use a multilingual model"
            )
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task="transcribe",
            language=language,
        )
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]) or [])
        self._beam_size = beam_size
        self._min_word_probability = min_word_probability
        self.model_name = model
        logger.info("loaded whisper model %s from %s (%s)", model, path, compute_type)

    def transcribe(self, audio: np.ndarray, prompt: str = "") -> list[Word]:
        """Words heard in `audio` (float32, 16 kHz, at most 30 s).

        `prompt` is text said just before, which helps the model keep names and style.
        Words the model itself doubts, and its habit of hearing "Thank you." in silence,
        are left out.
        """
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import merge_punctuations

        audio = audio[: int(MAX_WINDOW * SAMPLE_RATE)]
        duration = len(audio) / SAMPLE_RATE
        if duration < 0.1:
            return []
        model, tokenizer = self._model, self._tokenizer

        features = model.feature_extractor(audio)
        content_frames = min(features.shape[-1] - 1, int(MAX_WINDOW * _FRAMES_PER_SECOND))
        encoder_frames = min(
            int(MAX_WINDOW * _FRAMES_PER_SECOND),
            max(
                _MIN_ENCODER_FRAMES,
                math.ceil((content_frames + _ENCODER_PADDING) / _ENCODER_STEP) * _ENCODER_STEP,
            ),
        )
        encoder_output = model.encode(pad_or_trim(features, encoder_frames))

        previous = tokenizer.encode(" " + prompt.strip()) if prompt.strip() else []
        prompt_tokens = model.get_prompt(tokenizer, previous[-(model.max_length // 2 - 1) :])
        # a little over what anyone can say, so a decode that loops stops early
        max_new_tokens = int(12 * duration) + 16
        result = model.model.generate(
            encoder_output,
            [prompt_tokens],
            beam_size=self._beam_size,
            max_length=min(model.max_length, len(prompt_tokens) + max_new_tokens),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
            max_initial_timestamp_index=50,
        )[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)

        if result.no_speech_prob > 0.6 and avg_logprob < -1.0:
            return []

        # timestamp tokens mark where the model thinks speech segments end; past the real
        # audio it is inventing, so stop there
        text_tokens: list[int] = []
        for token in tokens:
            if token >= tokenizer.timestamp_begin:
                if (token - tokenizer.timestamp_begin) * model.time_precision > duration + 0.5:
                    break
            elif token < tokenizer.eot:
                text_tokens.append(token)
        if not text_tokens:
            return []
        text = tokenizer.decode(text_tokens)
        if _compression_ratio(text) > 2.4:
            logger.debug("dropping a looping decode: %r", text)
            return []

        alignment: list[dict[str, Any]] = model.find_alignment(
            tokenizer, [text_tokens], encoder_output, content_frames
        )[0]
        merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
        words = [
            Word(
                text=a["word"],
                start=round(min(float(a["start"]), duration), 2),
                end=round(min(float(a["end"]), duration), 2),
                probability=float(a["probability"]),
            )
            for a in alignment
            if _WORD_CHARS.search(a["word"])
        ]
        words = [w for w in words if w.probability >= self._min_word_probability]
        if _is_hallucination(words, audio, result.no_speech_prob):
            return []
        return words


_WORD_CHARS = re.compile(r"\w")


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def _is_hallucination(words: list[Word], audio: np.ndarray, no_speech_prob: float) -> bool:
    said = " ".join(re.findall(r"[a-z']+", join_words(words).lower()))
    if said not in _HALLUCINATIONS:
        return False
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return no_speech_prob > 0.3 or rms < _QUIET_RMS
