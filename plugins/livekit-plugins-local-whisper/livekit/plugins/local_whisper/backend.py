"""Whisper on the CPU through faster-whisper: 16 kHz audio in, words with times out.

Synchronous on purpose: the scheduler runs it in a worker thread, and CTranslate2 releases
the GIL while it computes.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from dataclasses import dataclass, replace
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
_ENCODER_PADDING = 200
"""The encoder hears the audio plus 2 s of padding, at least 5 s, rather than always 30 s.

Whisper was trained on 30 s windows, but CTranslate2 accepts shorter ones: a 5 s window
costs a sixth of a 30 s one, and with the padding the model still hears where speech ends
and decodes our test sentences as well. Rounded to whole seconds to limit distinct shapes.
"""
_MIN_ENCODER_FRAMES = 500
_UNHEARD = 1.0
"""A transcript that ends this long before its audio missed something."""
_LEAD_GAP = int(0.2 * SAMPLE_RATE)
"""Silence between a lead and the audio, like a short pause between sentences."""
_ENCODER_STEP = 100

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


@dataclass(frozen=True)
class Lead:
    """Speech heard just before the audio to transcribe, and what was said in it.

    Whisper recognizes a sentence better when it also hears the one before, as it does
    when decoding a whole recording. The lead's text is forced as the start of the
    transcript, so the model does not decode it again and its words are not returned.
    """

    audio: np.ndarray
    text: str


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
        """`cpu_threads` decodes can run at once, one thread each (0: one per core).

        On small models one thread per decode is faster than several: the matrices are too
        small to split well, so parallel decodes of different streams use the cores better.
        """
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
        self.parallelism = cpu_threads or os.cpu_count() or 1
        try:
            self._model: WhisperModel = WhisperModel(
                path,
                device="cpu",
                compute_type=compute_type,
                cpu_threads=1,
                num_workers=self.parallelism,
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

    def transcribe(
        self, audio: np.ndarray, prompt: str = "", *, lead: Lead | None = None
    ) -> list[Word]:
        """Words heard in `audio` (float32, 16 kHz, at most 30 s), timed from its start.

        `prompt` is text said before, which helps the model keep names and style; `lead`
        is audio said just before, with its text (see Lead). Words the model itself doubts,
        and its habit of hearing "Thank you." in silence, are left out.
        """
        audio = audio[: int(MAX_WINDOW * SAMPLE_RATE)]
        if lead is None or len(lead.audio) + _LEAD_GAP + len(audio) > MAX_WINDOW * SAMPLE_RATE:
            return self._decode(audio, prompt, "")[0]

        gap = np.zeros(_LEAD_GAP, np.float32)
        offset = (len(lead.audio) + len(gap)) / SAMPLE_RATE
        words, heard_until = self._decode(
            np.concatenate([lead.audio, gap, audio]), prompt, lead.text
        )
        if len(audio) / SAMPLE_RATE - (heard_until - offset) < _UNHEARD:
            return [
                replace(w, start=max(w.start - offset, 0.0), end=w.end - offset)
                for w in words
                if w.end > offset
            ]
        # the model took the lead for the whole story and stopped early: hear the audio alone
        return self._decode(audio, f"{prompt} {lead.text}".strip(), "")[0]

    def _decode(self, audio: np.ndarray, prompt: str, prefix: str) -> tuple[list[Word], float]:
        """One pass of the model: the words, and where the last word it transcribed ends."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import merge_punctuations

        duration = len(audio) / SAMPLE_RATE
        if duration < 0.1:
            return [], duration
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
        prompt_tokens = model.get_prompt(
            tokenizer, previous[-(model.max_length // 4) :], prefix=prefix.strip() or None
        )
        prefix_length = len(tokenizer.encode(" " + prefix.strip())) if prefix.strip() else 0
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
            return [], duration

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
            return [], duration
        text = tokenizer.decode(text_tokens)
        if _compression_ratio(text) > 2.4:
            logger.debug("dropping a looping decode: %r", text)
            return [], duration

        alignment: list[dict[str, Any]] = model.find_alignment(
            tokenizer, [text_tokens], encoder_output, content_frames
        )[0]
        merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
        heard_until = float(alignment[-1]["end"]) if alignment else duration
        alignment = _after_prefix(alignment, prefix_length)
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
            return [], duration
        return _without_repeats(words), heard_until


_WORD_CHARS = re.compile(r"\w")


def _after_prefix(alignment: list[dict[str, Any]], prefix_length: int) -> list[dict[str, Any]]:
    """The aligned words that come after the first `prefix_length` tokens."""
    seen = 0
    for i, word in enumerate(alignment):
        if seen >= prefix_length:
            return alignment[i:]
        seen += len(word["tokens"])
    return []


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def _without_repeats(words: list[Word], shortest: int = 3) -> list[Word]:
    """Drop a run of words said again right after itself, a known Whisper loop.

    People do repeat a word or two ("I, I think"), but not three or more words at once.
    """
    keys = [_WORD_CHARS_ONLY.sub("", w.text.lower()) for w in words]
    i = 0
    while i < len(words):
        for n in range((len(words) - i) // 2, shortest - 1, -1):
            if keys[i : i + n] == keys[i + n : i + 2 * n]:
                del words[i + n : i + 2 * n], keys[i + n : i + 2 * n]
                break
        else:
            i += 1
    return words


_WORD_CHARS_ONLY = re.compile(r"[^\w']+")


def _is_hallucination(words: list[Word], audio: np.ndarray, no_speech_prob: float) -> bool:
    said = " ".join(re.findall(r"[a-z']+", join_words(words).lower()))
    if said not in _HALLUCINATIONS:
        return False
    heard = audio[int(words[0].start * SAMPLE_RATE) : int(words[-1].end * SAMPLE_RATE) + 1]
    rms = float(np.sqrt(np.mean(np.square(heard, dtype=np.float64)))) if len(heard) else 0.0
    return no_speech_prob > 0.3 or rms < _QUIET_RMS
