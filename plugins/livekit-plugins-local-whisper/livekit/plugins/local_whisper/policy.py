"""LocalAgreement: which words of a growing, re-decoded utterance are settled.

Whisper has no streaming mode, so the utterance heard so far is decoded again and again.
A word is confirmed once two decodes in a row agree on it: the longest common prefix of
their unconfirmed words (ufal/whisper_streaming). Confirmed words never change, which keeps
the start of an interim caption still while its tail is being worked out.

To keep decodes short, the decoding window starts after the last confirmed sentence once it
grows past `trim_after` seconds; the confirmed text before it goes in the prompt instead.

Pure bookkeeping: no audio and no model. Times are seconds from the start of the utterance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from .backend import Word, join_words

SENTENCE_ENDS = (".", "?", "!", "。", "？", "！", "…")
_REPEAT_SPAN = 5
"""How many confirmed words a new decode may repeat at its start, since word times drift."""
_TIME_SLACK = 0.1
_PROMPT_CHARS = 200
_TRUNCATED_TAIL = 0.3
"""A word ending this close to a cut may itself be cut in half."""


class LocalAgreement:
    def __init__(self, *, trim_after: float = 6.0, prompt: str = "") -> None:
        self._trim_after = trim_after
        self._context = prompt
        self._confirmed: list[Word] = []
        self._tentative: list[Word] = []
        self._window_start = 0.0

    @property
    def window_start(self) -> float:
        """Where the next decode's audio should start."""
        return self._window_start

    @property
    def confirmed(self) -> tuple[Word, ...]:
        return tuple(self._confirmed)

    @property
    def tentative(self) -> tuple[Word, ...]:
        return tuple(self._tentative)

    @property
    def text(self) -> str:
        """Interim text: the confirmed words and the latest guess at the rest."""
        return join_words(self._confirmed + self._tentative)

    def prompt(self, window_start: float | None = None) -> str:
        """Text said before the decoding window, so the model keeps its context."""
        if window_start is None:
            window_start = self._window_start
        before = join_words(self._confirmed_before(window_start))
        text = f"{self._context} {before}".strip()
        return text[-_PROMPT_CHARS:]

    def update(self, words: Sequence[Word], *, window_start: float) -> None:
        """Take a decode of the window that started at `window_start`."""
        new = self._unconfirmed_part(words, window_start)
        agreed = 0
        for mine, theirs in zip(self._tentative, new, strict=False):
            if _normalize(mine.text) != _normalize(theirs.text):
                break
            agreed += 1
        self._confirmed += new[:agreed]
        self._tentative = new[agreed:]
        self._trim()

    def finish(self, words: Sequence[Word], *, window_start: float) -> list[Word]:
        """All words of the utterance: those confirmed before the window, then its last decode.

        The last decode hears the most audio, so inside its window it overrules words that
        earlier, shorter decodes agreed on. Decoding the whole utterance (`window_start` 0)
        gives a final as good as decoding it offline.
        """
        return self._confirmed_before(window_start) + _shifted(words, window_start)

    def cut(
        self, words: Sequence[Word], *, window_start: float, window_end: float
    ) -> tuple[list[Word], float]:
        """For speech that runs on: the words to finalize now and where the rest begins.

        Prefers the end of a sentence in the later half of the utterance; otherwise the last
        word that is not at risk of being cut off by `window_end`. The words after the cut are
        left for the next utterance, which decodes them again from the returned time.
        """
        heard = self.finish(words, window_start=window_start)
        safe = [w for w in heard if w.end <= window_end - _TRUNCATED_TAIL]
        sentence_ends = [
            i
            for i, w in enumerate(safe)
            if w.text.rstrip().endswith(SENTENCE_ENDS) and w.end >= window_end / 2
        ]
        if sentence_ends:
            safe = safe[: sentence_ends[-1] + 1]
        if not safe:
            return heard, window_end
        return safe, safe[-1].end

    def _confirmed_before(self, time: float) -> list[Word]:
        return [w for w in self._confirmed if w.end <= time + _TIME_SLACK]

    def _unconfirmed_part(self, words: Sequence[Word], window_start: float) -> list[Word]:
        """The decode in utterance time, without the words already confirmed."""
        shifted = _shifted(words, window_start)
        if not self._confirmed:
            return shifted
        last_end = self._confirmed[-1].end
        new = [w for w in shifted if w.start > last_end - _TIME_SLACK]
        # word times wobble between decodes, so a confirmed word can slip past the time check
        if new and abs(new[0].start - last_end) < 1.0:
            for n in range(1, min(_REPEAT_SPAN, len(self._confirmed), len(new)) + 1):
                tail = [_normalize(w.text) for w in self._confirmed[-n:]]
                head = [_normalize(w.text) for w in new[:n]]
                if tail == head:
                    return new[n:]
        return new

    def _trim(self) -> None:
        heard = self._tentative or self._confirmed
        if not heard or heard[-1].end - self._window_start <= self._trim_after:
            return
        for word in reversed(self._confirmed):
            if word.end <= self._window_start:
                return
            if word.text.rstrip().endswith(SENTENCE_ENDS):
                self._window_start = word.end
                return


def _shifted(words: Sequence[Word], offset: float) -> list[Word]:
    return [replace(w, start=w.start + offset, end=w.end + offset) for w in words]


_NOT_WORD = re.compile(r"[^\w']+")


def _normalize(text: str) -> str:
    """Words agree whatever their case or punctuation: "project," == "Project."."""
    return _NOT_WORD.sub("", text.lower())
