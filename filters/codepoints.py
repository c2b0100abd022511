"""A text as a numpy array of its code points, with Python's own character classes.

The per-document filters tokenise every document into words; done word by word in Python
(``str.split``, ``re.findall``, a dict lookup per word) that costs more than all of their
arithmetic. Here a text becomes its code points (``np.uint32``, one per ``str`` index, so a
span is a ``str`` slice) and per-character tables answer, for every code point, what Python
itself answers:

- ``space``: ``str.isspace`` (what ``str.split()``, ``str.strip()`` and ``re``'s ``\\s`` use),
- ``word``: ``re``'s ``\\w``; ``letter``: ``re``'s ``[^\\W\\d_]``.

The tables are computed once per process from Python's own answers (``re`` over a string of
all 1,114,112 code points, ~0.1 s), so they agree with the code they replace by construction;
tests/test_codepoints.py checks every code point.

Lower case: ``text.lower()`` maps every character on its own to one character of the same
classes, except 'İ' (U+0130, to 'i' + U+0307, a combining mark that is no ``\\w``) and 'Σ'
(U+03A3, to 'ς' at the end of a word, else 'σ', judged on its neighbours); :func:`lowered`
says when a text has neither, so that ``text.lower()`` is ``text`` lower-cased piece by
piece at the same positions (checked for every code point in tests/test_codepoints.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

N_CODE_POINTS = 0x110000


def code_points(text: str) -> np.ndarray:
    """The code points of ``text`` (lone surrogates included, as ``str`` holds them)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@dataclass(frozen=True)
class Tables:
    """One bool per code point."""

    space: np.ndarray
    word: np.ndarray
    letter: np.ndarray


def _class(chars: str, pattern: str) -> np.ndarray:
    """Per code point: does ``pattern`` (one character class, +) match it."""
    edge = np.zeros(len(chars) + 1, dtype=np.int32)
    for m in re.finditer(pattern, chars):
        edge[m.start()] += 1
        edge[m.end()] -= 1
    return np.cumsum(edge[:-1]) > 0


@cache
def tables() -> Tables:
    """The tables (built on first use in a process, then shared by every filter)."""
    chars = np.arange(N_CODE_POINTS, dtype=np.uint32).tobytes().decode("utf-32-le", "surrogatepass")
    return Tables(
        space=_class(chars, r"\s+"),
        word=_class(chars, r"\w+"),
        letter=_class(chars, r"[^\W\d_]+"),
    )


@lru_cache(maxsize=512)
def lowered(text: str) -> tuple[str, bool]:
    """(``text.lower()``, whether it lower-cases ``text`` character by character in place:
    no 'İ' or 'Σ', so every word of it is the lower case of the word at the same span).
    Remembered for the last few hundred texts (a batch): decontamination, the Gopher
    filters and the constraint check each need it for the same documents in turn."""
    low = text.lower()
    return low, len(low) == len(text) and "Σ" not in text


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the maximal runs of True in ``mask``."""
    edge = np.zeros(len(mask) + 2, dtype=np.int8)
    edge[1:-1] = mask
    change = np.flatnonzero(edge[1:] != edge[:-1])
    return change[0::2], change[1::2]


def split_spans(cp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spans of the words ``str.split()`` returns (runs of non-space)."""
    return runs(~tables().space[cp.astype(np.intp)])  # (an intp index gathers faster)


def word_spans(cp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spans of ``re.finditer(r"\\w+", text)``."""
    return runs(tables().word[cp.astype(np.intp)])


# --------------------------------------------------------------------------- batches of texts
def joined(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The code points of ``texts`` joined by "\\n" (whitespace and no ``\\w``: no word of
    either kind spans two texts) and the index where each text starts."""
    sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    return code_points("\n".join(texts)), np.concatenate(([0], np.cumsum(sizes + 1)[:-1]))


def text_bounds(starts: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Word offsets of each text (len(texts) + 1) from the words' ``starts`` in a
    :func:`joined` array and the texts' ``first`` indices."""
    return np.append(np.searchsorted(starts, first), len(starts))


def chunks(texts: Sequence[str], limit: int) -> Iterator[list[str]]:
    """Consecutive runs of ``texts`` of at most about ``limit`` characters (a longer text
    alone): what one :func:`joined` array should hold."""
    run: list[str] = []
    size = 0
    for t in texts:
        if run and size + len(t) > limit:
            yield run
            run, size = [], 0
        run.append(t)
        size += len(t) + 1
    if run:
        yield run


def split_counts(texts: Sequence[str], limit: int = 1 << 20) -> list[int]:
    """``len(text.split())`` of each text, counted over the code points of the texts end to
    end, about ``limit`` characters at a time (no ``str`` per word)."""
    out: list[int] = []
    for run in chunks(texts, limit):
        cp, first = joined(run)
        starts, _ = split_spans(cp)
        out.extend(np.diff(text_bounds(starts, first)).tolist())
    return out
