"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models: Methods,
Analysis & Insights from Training Gopher", Appendix A.1.1 and Table A1).

Both classes follow the score/keep protocol in ``filters.base``: ``score`` is a pure function of
the text, ``keep`` applies the thresholds from a pydantic config (``GopherQualityConfig`` /
``GopherRepetitionConfig`` in ``pipeline.config``) and returns None or ``family.metric``.
They work on any text, synthetic or web (the web stage reuses them).

Words are whitespace-separated (``str.split()``), lower-cased for the stop words and the
n-grams; both filters read them from one numpy view of the lower-cased text
(:func:`lower_words`: spans, lengths, hashes), computed once per text, so a document costs a
few dozen array operations instead of a Python step per word and n-gram.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from filters.codepoints import code_points, runs, tables
from filters.lines import duplicates
from filters.ngrams import WordHasher, multipliers, windows
from pipeline.config import GopherQualityConfig, GopherRepetitionConfig
from pipeline.records import Document

_BULLETS = ("-", "*", "•", "‣", "◦", "⁃", "·", "●", "○", "▪")
_ELLIPSES = ("...", "…")
_PARA_SPLIT = re.compile(r"\n\s*\n")
_LINE_SPLIT = re.compile(r"\n+")


@cache
def _hasher() -> WordHasher:
    return WordHasher()


@cache
def _mult(n: int) -> np.ndarray:
    return multipliers(n)


@dataclass(frozen=True)
class LowerWords:
    """The words of ``text.lower().split()`` (the lower-cased words of ``text.split()``:
    lower-casing keeps every character's whitespace class)."""

    hashes: np.ndarray  # uint64 per word (filters.ngrams)
    lens: np.ndarray  # characters per word
    has_letter: np.ndarray  # bool: the word has a letter (re's [^\W\d_])
    space_chars: int  # whitespace characters in the text


@lru_cache(maxsize=4)  # the quality and repetition filters score the same text in turn
def lower_words(text: str) -> LowerWords:
    t = tables()
    cp = code_points(text.lower())
    idx = cp.astype(np.intp)  # an intp index gathers faster
    starts, ends = runs(~t.space[idx])
    letters = np.zeros(len(cp) + 1, dtype=np.int32)
    np.cumsum(t.letter[idx], out=letters[1:])
    lens = ends - starts
    return LowerWords(
        hashes=_hasher().spans(cp, starts, ends),
        lens=lens,
        has_letter=letters[ends] > letters[starts],
        space_chars=len(cp) - int(lens.sum()),
    )


def _count_in(values: np.ndarray, sorted_set: np.ndarray) -> int:
    """How many of ``values`` are in ``sorted_set`` (a few entries: one searchsorted)."""
    if not len(sorted_set) or not len(values):
        return 0
    pos = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return int((sorted_set[pos] == values).sum())


class GopherQualityFilter:
    """Word count, mean word length, '#' / word and ellipsis / word ratios (each checked on its
    own, as Gopher and datatrove do), bullet and ellipsis line fractions, alphabetic word
    fraction, stop-word presence."""

    family = "gopher_quality"

    def __init__(self, cfg: GopherQualityConfig | None = None) -> None:
        self.cfg = cfg or GopherQualityConfig()
        # lower-cased, as the words are; one with a space in it matches no word
        stop = sorted({w.lower() for w in self.cfg.stop_words} - {""})
        stop = [w for w in stop if w.split() == [w]]
        self._stop = np.sort(_hasher().words(stop))

    def score(self, doc: Document | str) -> dict[str, float]:
        text = doc if isinstance(doc, str) else doc.text
        w = lower_words(text)
        n = len(w.lens)
        lines = [ln for ln in map(str.strip, text.splitlines()) if ln]
        n_lines = max(len(lines), 1)
        hashes = text.count("#")
        ellipses = text.count("...") + text.count("…")
        # the original words' characters: lower-casing keeps every whitespace character
        chars = len(text) - w.space_chars
        return {
            "n_words": float(n),
            "mean_word_length": chars / n if n else 0.0,
            "hash_word_ratio": hashes / n if n else 0.0,
            "ellipsis_word_ratio": ellipses / n if n else 0.0,
            "bullet_lines_ratio": sum(ln.startswith(_BULLETS) for ln in lines) / n_lines,
            "ellipsis_lines_ratio": sum(ln.endswith(_ELLIPSES) for ln in lines) / n_lines,
            "alpha_words_ratio": int(w.has_letter.sum()) / n if n else 0.0,
            "stop_words": float(_count_in(w.hashes, self._stop)),
        }

    def keep(self, s: dict[str, float]) -> str | None:
        c = self.cfg
        f = self.family
        if s["n_words"] < c.min_words:
            return f"{f}.n_words_low"
        if s["n_words"] > c.max_words:
            return f"{f}.n_words_high"
        if s["mean_word_length"] < c.min_mean_word_length:
            return f"{f}.mean_word_length_low"
        if s["mean_word_length"] > c.max_mean_word_length:
            return f"{f}.mean_word_length_high"
        # Gopher A.1.1 / datatrove: '#' and ellipsis counts are two separate ratios, each held
        # to the one config field max_symbol_word_ratio (kept under its old name)
        if s["hash_word_ratio"] > c.max_symbol_word_ratio:
            return f"{f}.hash_word_ratio"
        if s["ellipsis_word_ratio"] > c.max_symbol_word_ratio:
            return f"{f}.ellipsis_word_ratio"
        if s["bullet_lines_ratio"] > c.max_bullet_lines_ratio:
            return f"{f}.bullet_lines_ratio"
        if s["ellipsis_lines_ratio"] > c.max_ellipsis_lines_ratio:
            return f"{f}.ellipsis_lines_ratio"
        if s["alpha_words_ratio"] < c.min_alpha_words_ratio:
            return f"{f}.alpha_words_ratio"
        if s["stop_words"] < c.min_stop_words:
            return f"{f}.stop_words"
        return None


def line_repetition(text: str) -> dict[str, float]:
    """Duplicate paragraph and line fractions, by count and by characters (Gopher Table A1)."""
    stripped = text.strip()
    total = max(len(stripped), 1)
    paras = [p.strip() for p in _PARA_SPLIT.split(stripped) if p.strip()]
    lines = [ln.strip() for ln in _LINE_SPLIT.split(stripped) if ln.strip()]
    p_dup, p_chars = duplicates(paras)
    l_dup, l_chars = duplicates(lines)
    return {
        "dup_para_frac": p_dup / len(paras) if paras else 0.0,
        "dup_para_char_frac": p_chars / total,
        "dup_line_frac": l_dup / len(lines) if lines else 0.0,
        "dup_line_char_frac": l_chars / total,
    }


def repeated_ngram_chars(
    hashes: np.ndarray, lens: np.ndarray, top_ns: Iterable[int], dup_ns: Iterable[int]
) -> tuple[dict[int, int], dict[int, int]]:
    """Gopher's two n-gram repetition measures, in characters of words (``lens``):

    - ``top[n]``: the most frequent n-gram's characters times its count, 0 when no n-gram
      repeats (ties: the one that occurs first, as ``Counter.most_common``);
    - ``dup[n]``: the characters of the words covered by every occurrence of an n-gram after
      its first (overlapping occurrences count each word once). Close to, not identical
      with, datatrove's ``find_all_duplicate``: that scans left to right, jumps n words past
      each repeat and never records the n-grams it jumps over, so on overlapping or
      interleaved repeats the two can differ slightly.

    One pass over n = 2, 3, ...: n-grams that are equal are equal as (n - 1)-grams, so the
    n-grams that can repeat start where an (n - 1)-gram repeats, and each n groups only those
    (in clean text a small fraction of the words by n = 5)."""
    top_ns, dup_ns = set(top_ns), set(dup_ns)
    top = dict.fromkeys(top_ns, 0)
    dup = dict.fromkeys(dup_ns, 0)
    wanted = top_ns | dup_ns
    n_words = len(hashes)
    if not wanted or n_words == 0:
        return top, dup
    first_n = max(min(wanted), 1)
    cand: np.ndarray | None = None  # window starts that may repeat (None: all)
    for n, keys in windows(hashes, range(first_n, max(wanted) + 1), _mult(max(wanted))):
        pos = np.arange(len(keys)) if cand is None else cand[cand < len(keys)]
        if len(pos) < 2:
            break
        order = np.argsort(keys[pos], kind="stable")
        spos = pos[order]  # by key; equal keys in text order
        skeys = keys[spos]
        head = np.ones(len(spos), dtype=bool)  # the first (earliest) of each group of equal keys
        head[1:] = skeys[1:] != skeys[:-1]
        heads = np.flatnonzero(head)
        sizes = np.diff(np.append(heads, len(spos)))
        if n in top_ns and sizes.max() >= 2:
            best = int(sizes.max())
            start = int(spos[heads[sizes == best]].min())
            top[n] = int(lens[start : start + n].sum()) * best
        if n in dup_ns and not head.all():
            starts = spos[~head]
            cover = np.bincount(starts, minlength=n_words + 1)
            cover -= np.bincount(starts + n, minlength=n_words + 1)
            dup[n] = int(lens[np.cumsum(cover[:n_words]) > 0].sum())
        cand = np.sort(spos[np.repeat(sizes, sizes) >= 2])
    return top, dup


class GopherRepetitionFilter:
    """Duplicate line / paragraph fractions (by count and by characters), the most frequent
    2-4-gram's character fraction, and the character fraction in duplicated 5-10-grams."""

    family = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig | None = None) -> None:
        self.cfg = cfg or GopherRepetitionConfig()

    def score(self, doc: Document | str) -> dict[str, float]:
        text = doc if isinstance(doc, str) else doc.text
        out = line_repetition(text)
        w = lower_words(text)  # = text.strip().lower().split()
        word_chars = max(int(w.lens.sum()), 1)
        top, dup = repeated_ngram_chars(
            w.hashes, w.lens, self.cfg.max_top_ngram_char_frac, self.cfg.max_dup_ngram_char_frac
        )
        for n in sorted(self.cfg.max_top_ngram_char_frac):
            out[f"top_{n}gram_char_frac"] = top[n] / word_chars
        for n in sorted(self.cfg.max_dup_ngram_char_frac):
            out[f"dup_{n}gram_char_frac"] = dup[n] / word_chars
        return out

    def keep(self, s: dict[str, float]) -> str | None:
        c = self.cfg
        f = self.family
        for key, limit in (
            ("dup_line_frac", c.max_dup_line_frac),
            ("dup_para_frac", c.max_dup_para_frac),
            ("dup_line_char_frac", c.max_dup_line_char_frac),
            ("dup_para_char_frac", c.max_dup_para_char_frac),
        ):
            if s[key] > limit:
                return f"{f}.{key}"
        for n, limit in sorted(c.max_top_ngram_char_frac.items()):
            if s.get(f"top_{n}gram_char_frac", 0.0) > limit:
                return f"{f}.top_{n}gram_char_frac"
        for n, limit in sorted(c.max_dup_ngram_char_frac.items()):
            if s.get(f"dup_{n}gram_char_frac", 0.0) > limit:
                return f"{f}.dup_{n}gram_char_frac"
        return None
