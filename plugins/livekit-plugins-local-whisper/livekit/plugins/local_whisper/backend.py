"""Whisper on the CPU through faster-whisper: 16 kHz audio in, words with times out.

Synchronous on purpose: the scheduler runs it in a worker thread, and CTranslate2 releases
the GIL while it computes.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import zlib
from collections.abc import Collection, Sequence
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


DEVICE_ENV = "LOCAL_WHISPER_DEVICE"
COMPUTE_TYPE_ENV = "LOCAL_WHISPER_COMPUTE_TYPE"
DEVICES = ("cpu", "cuda", "auto")
COMPUTE_TYPES = (
    "default",
    "auto",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)
"""What CTranslate2 can be asked for; which of them a device runs is checked on load."""
AUTO_LANGUAGE = "auto"
"""A stream's language when the model should detect it."""
_MULTILINGUAL_VOCABULARY = 51865
"""English-only Whisper models have a smaller vocabulary (51864 tokens): no language tokens."""


def check_device(device: str) -> str:
    """The device the model loads on: `auto` is cuda when CTranslate2 sees a GPU."""
    if device not in DEVICES:
        raise ModelLoadError(f"{DEVICE_ENV}={device!r} is not a device: use cpu, cuda or auto")
    import ctranslate2

    gpus = ctranslate2.get_cuda_device_count()
    if device == "auto":
        return "cuda" if gpus else "cpu"
    if device == "cuda" and not gpus:
        raise ModelLoadError(f"{DEVICE_ENV}=cuda but no CUDA GPU is visible: use cpu or auto")
    return device


def check_compute_type(compute_type: str, device: str = "cpu") -> None:
    if compute_type not in COMPUTE_TYPES:
        raise ModelLoadError(
            f"{COMPUTE_TYPE_ENV}={compute_type!r} is not a compute type: "
            f"use one of {', '.join(COMPUTE_TYPES)}"
        )
    import ctranslate2

    supported = sorted(ctranslate2.get_supported_compute_types(check_device(device)))
    if compute_type not in supported and compute_type not in ("default", "auto"):
        raise ModelLoadError(
            f"{COMPUTE_TYPE_ENV}={compute_type!r} is not supported on {device}: "
            f"use one of {', '.join(supported)}"
        )


def whisper_language(language: str) -> str:
    """Whisper's code for a BCP 47 tag ("en-US" -> "en"), or `auto`."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    code = language.strip().replace("_", "-").split("-")[0].lower()
    if code != AUTO_LANGUAGE and code not in _LANGUAGE_CODES:
        raise ModelLoadError(
            f"language={language!r} is not one Whisper knows: "
            "use an ISO 639-1 code such as en, fr or de, or auto"
        )
    return code


def model_languages(model: str) -> frozenset[str] | None:
    """The languages a model understands, or None for all of Whisper's.

    A model given by path is read from its vocabulary (the packaged tiny.en is a path);
    a model given by name is English-only when it ends with `.en`.
    """
    directory = Path(model).expanduser()
    if not directory.is_dir():
        return frozenset({"en"}) if model.endswith(".en") else None
    size = 0
    if (directory / "vocabulary.txt").is_file():
        size = len((directory / "vocabulary.txt").read_text(encoding="utf-8").splitlines())
    elif (directory / "vocabulary.json").is_file():
        size = len(json.loads((directory / "vocabulary.json").read_text(encoding="utf-8")))
    else:
        return None  # an unusual layout: the loaded model checks again
    return None if size >= _MULTILINGUAL_VOCABULARY else frozenset({"en"})


def check_languages(model: str, languages: Collection[str]) -> None:
    """Refuse, in one line, a language the model cannot transcribe (`auto` always works)."""
    known = model_languages(model)
    for language in languages:
        code = whisper_language(language)
        if known is not None and code != AUTO_LANGUAGE and code not in known:
            raise ModelLoadError(
                f"{MODEL_ENV}={model!r} only understands English but language={language!r}: "
                "use a multilingual model such as tiny, base or small"
            )


@dataclass(frozen=True)
class Job:
    """One decode: up to 30 s of 16 kHz float32 audio and what helps the model hear it."""

    audio: np.ndarray
    prompt: str = ""
    """Text said before, which helps the model keep names and style."""
    lead: Lead | None = None
    language: str = "en"
    """A Whisper language code, or `auto` to detect it."""


@dataclass(frozen=True)
class Transcript:
    words: list[Word]
    """Timed from the start of the job's audio."""
    language: str
    """The language decoded: the job's, or the one detected."""


@dataclass(frozen=True)
class _Pass:
    """One model input: audio, prompt text and forced transcript prefix."""

    audio: np.ndarray
    prompt: str
    prefix: str
    language: str


@dataclass
class _Heard:
    words: list[Word]
    heard_until: float
    language: str


class WhisperBackend:
    """One loaded Whisper model that turns batches of up to 30 s of audio into words."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        beam_size: int = 1,
        min_word_probability: float = 0.1,
    ) -> None:
        """`cpu_threads` batches can run at once, one thread each (0: one per core).

        On small models one thread per decode is faster than several: the matrices are too
        small to split well, so parallel decodes of different streams use the cores better.
        """
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise ModelLoadError(
                "faster-whisper is not installed: pip install livekit-plugins-local-whisper"
            ) from e

        device = check_device(device)
        check_compute_type(compute_type, device)
        path = resolve_model(model)
        self.parallelism = 1 if device == "cuda" else cpu_threads or os.cpu_count() or 1
        try:
            self._model: WhisperModel = WhisperModel(
                path,
                device=device,
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
        self.multilingual = bool(self._model.model.is_multilingual)
        self._tokenizers: dict[str, Any] = {}
        self._tokenizer_lock = threading.Lock()
        self._suppress: list[int] | None = None
        self._beam_size = beam_size
        self._min_word_probability = min_word_probability
        self._device = device
        logger.info("loaded whisper model %s from %s (%s, %s)", model, path, device, compute_type)

    def transcribe(
        self, audio: np.ndarray, prompt: str = "", *, lead: Lead | None = None, language: str = "en"
    ) -> list[Word]:
        """Words heard in `audio` (float32, 16 kHz, at most 30 s), timed from its start."""
        return self.transcribe_batch([Job(audio, prompt, lead, language)])[0].words

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript]:
        """Each job's words, from one encoder and one decoder call for the whole batch.

        `prompt` is text said before; `lead` is audio said just before, with its text (see
        Lead). Words the model itself doubts, and its habit of hearing "Thank you." in
        silence, are left out.
        """
        passes, offsets = [], []
        for job in jobs:
            audio = job.audio[: int(MAX_WINDOW * SAMPLE_RATE)]
            language = self._language(job.language)
            lead = job.lead
            if lead is None or len(lead.audio) + _LEAD_GAP + len(audio) > MAX_WINDOW * SAMPLE_RATE:
                passes.append(_Pass(audio, job.prompt, "", language))
                offsets.append(0.0)
                continue
            gap = np.zeros(_LEAD_GAP, np.float32)
            both = np.concatenate([lead.audio, gap, audio])
            passes.append(_Pass(both, job.prompt, lead.text, language))
            offsets.append((len(lead.audio) + len(gap)) / SAMPLE_RATE)
        heard = self._decode(passes)

        # where the model took the lead for the whole story and stopped early, it hears the
        # audio alone, in a second batch
        again = [
            i
            for i, (job, offset) in enumerate(zip(jobs, offsets, strict=True))
            if offset and len(job.audio) / SAMPLE_RATE - (heard[i].heard_until - offset) >= _UNHEARD
        ]
        retried = self._decode(
            [
                _Pass(
                    jobs[i].audio[: int(MAX_WINDOW * SAMPLE_RATE)],
                    f"{jobs[i].prompt} {jobs[i].lead.text}".strip(),  # type: ignore[union-attr]
                    "",
                    heard[i].language,
                )
                for i in again
            ]
        )
        for i, result in zip(again, retried, strict=True):
            heard[i], offsets[i] = result, 0.0
        return [
            Transcript(
                [
                    replace(w, start=max(w.start - offset, 0.0), end=w.end - offset)
                    for w in h.words
                    if w.end > offset
                ],
                h.language,
            )
            for h, offset in zip(heard, offsets, strict=True)
        ]

    def _language(self, language: str) -> str:
        code = whisper_language(language)
        if not self.multilingual:
            if code not in ("en", AUTO_LANGUAGE):
                raise ModelLoadError(f"this model only understands English, not {language!r}")
            return "en"
        return code

    def _tokenizer(self, language: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        with self._tokenizer_lock:
            if language not in self._tokenizers:
                self._tokenizers[language] = Tokenizer(
                    self._model.hf_tokenizer, self.multilingual, "transcribe", language
                )
            return self._tokenizers[language]

    def _suppressed(self) -> list[int]:
        from faster_whisper.transcribe import get_suppressed_tokens

        if self._suppress is None:
            self._suppress = list(get_suppressed_tokens(self._tokenizer("en"), [-1]) or [])
        return self._suppress

    def _decode(self, passes: list[_Pass]) -> list[_Heard]:
        """One encoder, one decoder and one alignment call for the passes that can hold words."""
        heard = [_Heard([], len(p.audio) / SAMPLE_RATE, p.language) for p in passes]
        batch = [i for i, p in enumerate(passes) if len(p.audio) >= 0.1 * SAMPLE_RATE]
        if not batch:
            return heard
        features = [self._model.feature_extractor(passes[i].audio) for i in batch]
        content = [min(f.shape[-1] - 1, int(MAX_WINDOW * _FRAMES_PER_SECOND)) for f in features]
        encoder_output = self._encode(features, max(content))
        languages = self._detect(encoder_output, [passes[i].language for i in batch])
        generated = self._generate(encoder_output, [passes[i] for i in batch], languages)
        texts = [
            self._text_tokens(g, passes[i], language)
            for i, g, language in zip(batch, generated, languages, strict=True)
        ]
        alignments = self._align(encoder_output, texts, content, languages)
        for k, i in enumerate(batch):
            heard[i] = self._words(alignments[k], passes[i], languages[k], generated[k])
        return heard

    def _encode(self, features: list[np.ndarray], content_frames: int) -> Any:
        from faster_whisper.audio import pad_or_trim

        frames = min(
            int(MAX_WINDOW * _FRAMES_PER_SECOND),
            max(
                _MIN_ENCODER_FRAMES,
                math.ceil((content_frames + _ENCODER_PADDING) / _ENCODER_STEP) * _ENCODER_STEP,
            ),
        )
        return self._model.encode(np.stack([pad_or_trim(f, frames) for f in features]))

    def _detect(self, encoder_output: Any, languages: list[str]) -> list[str]:
        """The languages of the batch, detecting those asked as `auto`."""
        if AUTO_LANGUAGE not in languages:
            return languages
        detected = self._model.model.detect_language(encoder_output)
        return [
            d[0][0].strip("<|>") if language == AUTO_LANGUAGE else language
            for language, d in zip(languages, detected, strict=True)
        ]

    def _generate(
        self, encoder_output: Any, passes: list[_Pass], languages: list[str]
    ) -> list[_Generated]:
        model = self._model
        prompts, lengths = [], []
        for p, language in zip(passes, languages, strict=True):
            tokenizer = self._tokenizer(language)
            previous = tokenizer.encode(" " + p.prompt.strip()) if p.prompt.strip() else []
            prompt = model.get_prompt(
                tokenizer, previous[-(model.max_length // 4) :], prefix=p.prefix.strip() or None
            )
            prompts.append(prompt)
            # a little over what anyone can say, so a decode that loops stops early
            new_tokens = int(12 * len(p.audio) / SAMPLE_RATE) + 16
            lengths.append(min(model.max_length, len(prompt) + new_tokens))
        results = model.model.generate(
            encoder_output,
            prompts,
            beam_size=self._beam_size,
            max_length=max(lengths),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppressed(),
            max_initial_timestamp_index=50,
        )
        generated = []
        for result, prompt, length in zip(results, prompts, lengths, strict=True):
            tokens = list(result.sequences_ids[0])[: length - len(prompt)]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            generated.append(_Generated(tokens, avg_logprob, result.no_speech_prob))
        return generated

    def _text_tokens(self, generated: _Generated, p: _Pass, language: str) -> list[int]:
        """The tokens of the words heard, or none when the decode is not to be trusted."""
        if generated.no_speech_prob > 0.6 and generated.avg_logprob < -1.0:
            return []
        tokenizer = self._tokenizer(language)
        duration = len(p.audio) / SAMPLE_RATE
        # timestamp tokens mark where the model thinks speech segments end; past the real
        # audio it is inventing, so stop there
        text_tokens: list[int] = []
        for token in generated.tokens:
            if token >= tokenizer.timestamp_begin:
                if (
                    token - tokenizer.timestamp_begin
                ) * self._model.time_precision > duration + 0.5:
                    break
            elif token < tokenizer.eot:
                text_tokens.append(token)
        if text_tokens and _compression_ratio(tokenizer.decode(text_tokens)) > 2.4:
            logger.debug("dropping a looping decode: %r", tokenizer.decode(text_tokens))
            return []
        return text_tokens

    def _align(
        self, encoder_output: Any, texts: list[list[int]], content: list[int], languages: list[str]
    ) -> list[list[dict[str, Any]]]:
        """Word timings, in one call per language (the call takes one start sequence)."""
        alignments: list[list[dict[str, Any]]] = [[] for _ in texts]
        groups: dict[str, list[int]] = {}
        for k, tokens in enumerate(texts):
            if tokens:
                groups.setdefault(languages[k], []).append(k)
        for language, ks in groups.items():
            output = encoder_output if len(ks) == len(texts) else _rows(encoder_output, ks)
            found = self._model.find_alignment(
                self._tokenizer(language),
                [texts[k] for k in ks],
                output,
                [content[k] for k in ks],  # CTranslate2 takes a list of frame counts too
            )
            for k, alignment in zip(ks, found, strict=True):
                alignments[k] = alignment
        return alignments

    def _words(
        self, alignment: list[dict[str, Any]], p: _Pass, language: str, generated: _Generated
    ) -> _Heard:
        from faster_whisper.transcribe import merge_punctuations

        duration = len(p.audio) / SAMPLE_RATE
        if not alignment:
            return _Heard([], duration, language)
        merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
        heard_until = float(alignment[-1]["end"]) if alignment else duration
        if p.prefix.strip():
            prefix_length = len(self._tokenizer(language).encode(" " + p.prefix.strip()))
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
        if _is_hallucination(words, p.audio, generated.no_speech_prob):
            return _Heard([], duration, language)
        return _Heard(_without_repeats(words), heard_until, language)


@dataclass(frozen=True)
class _Generated:
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float


def _rows(encoder_output: Any, rows: list[int]) -> Any:
    """Some items of a batch's encoder output, as a new batch."""
    import ctranslate2

    on_cpu = (
        encoder_output
        if encoder_output.device == "cpu"
        else encoder_output.to_device(ctranslate2.Device.cpu)
    )
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(on_cpu)[rows]))


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
