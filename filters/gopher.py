"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models: Methods,
Analysis & Insights from Training Gopher", Appendix A.1.1 and Table A1).

Both classes follow the score/keep protocol in ``filters.base``: ``score`` is a pure function of
the text, ``keep`` applies the thresholds from a pydantic config (``GopherQualityConfig`` /
``GopherRepetitionConfig`` in ``pipeline.config``) and returns None or ``family.metric``.
They work on any text, synthetic or web (the web stage reuses them).

Words are whitespace-separated (``str.split()``), lower-cased for the stop words and the
n-grams; both filters read them from one numpy view of the lower-cased texts of a batch
(:func:`word_batch`: spans, lengths, hashes, the texts end to end), so a batch of documents
costs a few dozen array operations instead of a Python step per word and n-gram, and
``score_batch`` (what ``pipeline.steps.FilterStep`` calls) pays numpy's per-call overhead once
per batch rather than once per document. ``score(doc)`` is a batch of one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from filters.codepoints import chunks, joined, lowered, runs, tables, text_bounds
from filters.lines import duplicates
from filters.ngrams import WordHasher, multipliers, text_ends, windows
from pipeline.config import GopherQualityConfig, GopherRepetitionConfig
from pipeline.records import Document

_BULLETS = ("-", "*", "•", "‣", "◦", "⁃", "·", "●", "○", "▪")
_ELLIPSES = ("...", "…")
_TEXT_SALT = np.uint64(0x9E3779B97F4A7C15)  # odd: distinct texts, distinct salts
_PARA_SPLIT = re.compile(r"\n\s*\n")


@cache
def _hasher() -> WordHasher:
    return WordHasher()


@cache
def _mult(n: int) -> np.ndarray:
    return multipliers(n)


@dataclass(frozen=True)
class WordBatch:
    """The words of ``text.lower().split()`` (the lower-cased words of ``text.split()``:
    lower-casing keeps every character's whitespace class) of several texts, end to end: the
    words of text j are ``bounds[j]:bounds[j + 1]``. A batch costs the numpy calls of one text."""

    hashes: np.ndarray  # uint64 per word (filters.ngrams)
    lens: np.ndarray  # characters per word
    has_letter: np.ndarray  # bool: the word has a letter (re's [^\W\d_])
    bounds: np.ndarray  # len(texts) + 1 word offsets
    space_chars: np.ndarray  # per text

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def select(self, rows: list[int]) -> WordBatch:
        """The batch of the texts ``rows`` (in that order)."""
        if rows == list(range(len(self))):
            return self
        r = np.asarray(rows, dtype=np.intp)
        n = np.diff(self.bounds)[r]
        bounds = np.concatenate(([0], np.cumsum(n)))
        idx = np.arange(bounds[-1]) - np.repeat(bounds[:-1] - self.bounds[r], n)
        return WordBatch(
            self.hashes[idx], self.lens[idx], self.has_letter[idx], bounds, self.space_chars[r]
        )

    @classmethod
    def concat(cls, parts: list[WordBatch]) -> WordBatch:
        if len(parts) == 1:
            return parts[0]
        offsets = np.cumsum([0] + [len(p.hashes) for p in parts])
        return cls(
            hashes=np.concatenate([p.hashes for p in parts]),
            lens=np.concatenate([p.lens for p in parts]),
            has_letter=np.concatenate([p.has_letter for p in parts]),
            bounds=np.concatenate(
                [p.bounds[:-1] + o for p, o in zip(parts, offsets[:-1], strict=True)]
                + [offsets[-1:]]
            ),
            space_chars=np.concatenate([p.space_chars for p in parts]),
        )


class _LastBatch:
    """The word batch computed last and the row of each of its texts: the quality and the
    repetition filter score the same texts (or the survivors) in turn; the second reuses
    the first's words."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.words: WordBatch | None = None


@cache
def _last() -> _LastBatch:
    return _LastBatch()


_CHUNK = 1 << 20  # code points hashed together (the hasher's tables grow to this)


def _word_batch(lows: list[str]) -> WordBatch:
    t = tables()
    cp, first = joined(lows)
    idx = cp.astype(np.intp)  # an intp index gathers faster
    starts, ends = runs(~t.space[idx])
    letters = np.zeros(len(cp) + 1, dtype=np.int32)
    np.cumsum(t.letter[idx], out=letters[1:])
    lens = ends - starts
    bounds = text_bounds(starts, first)
    cum = np.concatenate(([0], np.cumsum(lens)))
    sizes = np.fromiter(map(len, lows), dtype=np.int64, count=len(lows))
    return WordBatch(
        hashes=_hasher().spans(cp, starts, ends),
        lens=lens,
        has_letter=letters[ends] > letters[starts],
        bounds=bounds,
        space_chars=sizes - (cum[bounds[1:]] - cum[bounds[:-1]]),
    )


def word_batch(texts: Sequence[str]) -> WordBatch:
    """The lower-cased words of each of ``texts`` (``text.lower().split()``), in one batch."""
    last = _last()
    rows = [last.rows.get(t, -1) for t in texts]
    if last.words is not None and -1 not in rows:
        return last.words.select(rows)
    lows = [lowered(t)[0] for t in texts]
    words = WordBatch.concat([_word_batch(run) for run in chunks(lows, _CHUNK)])
    last.words, last.rows = words, {t: j for j, t in enumerate(texts)}
    return words


def _per_text(words: WordBatch, values: np.ndarray) -> np.ndarray:
    """The sum of ``values`` (one per word) over each text's words."""
    cum = np.concatenate(([0], np.cumsum(values, dtype=np.int64)))
    return cum[words.bounds[1:]] - cum[words.bounds[:-1]]


def _in_set(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Per value: is it in ``sorted_set`` (a few entries: one searchsorted)."""
    if not len(sorted_set) or not len(values):
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[pos] == values


def _texts(docs: Sequence[Document | str]) -> list[str]:
    return [d if isinstance(d, str) else d.text for d in docs]


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
        return self.score_batch([doc])[0]

    def score_batch(self, docs: Sequence[Document | str]) -> list[dict[str, float]]:
        """The scores of each document; the word arithmetic of all of them in one batch."""
        texts = _texts(docs)
        w = word_batch(texts)
        n_words = np.diff(w.bounds).tolist()
        alpha = _per_text(w, w.has_letter).tolist()
        stops = _per_text(w, _in_set(w.hashes, self._stop)).tolist()
        out = []
        for text, n, n_alpha, n_stop, spaces in zip(
            texts, n_words, alpha, stops, w.space_chars.tolist(), strict=True
        ):
            lines = [ln for ln in map(str.strip, text.splitlines()) if ln]
            n_lines = max(len(lines), 1)
            hashes = text.count("#")
            ellipses = text.count("...") + text.count("…")
            # the original words' characters: lower-casing keeps every whitespace character
            chars = len(text) - spaces
            out.append(
                {
                    "n_words": float(n),
                    "mean_word_length": chars / n if n else 0.0,
                    "hash_word_ratio": hashes / n if n else 0.0,
                    "ellipsis_word_ratio": ellipses / n if n else 0.0,
                    "bullet_lines_ratio": sum(ln.startswith(_BULLETS) for ln in lines) / n_lines,
                    "ellipsis_lines_ratio": sum(ln.endswith(_ELLIPSES) for ln in lines) / n_lines,
                    "alpha_words_ratio": n_alpha / n if n else 0.0,
                    "stop_words": float(n_stop),
                }
            )
        return out

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
    lines = [ln.strip() for ln in stripped.split("\n") if ln.strip()]  # = re.split(r"\n+")
    p_dup, p_chars = duplicates(paras)
    l_dup, l_chars = duplicates(lines)
    return {
        "dup_para_frac": p_dup / len(paras) if paras else 0.0,
        "dup_para_char_frac": p_chars / total,
        "dup_line_frac": l_dup / len(lines) if lines else 0.0,
        "dup_line_char_frac": l_chars / total,
    }


def repeated_ngram_chars(
    words: WordBatch, top_ns: Iterable[int], dup_ns: Iterable[int]
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Gopher's two n-gram repetition measures of each text of ``words``, in characters of
    words (``words.lens``), one int per text:

    - ``top[n]``: the most frequent n-gram's characters times its count, 0 when no n-gram
      repeats (ties: the one that occurs first, as ``Counter.most_common``);
    - ``dup[n]``: the characters of the words covered by every occurrence of an n-gram after
      its first (overlapping occurrences count each word once). Close to, not identical
      with, datatrove's ``find_all_duplicate``: that scans left to right, jumps n words past
      each repeat and never records the n-grams it jumps over, so on overlapping or
      interleaved repeats the two can differ slightly.

    One pass over n = 2, 3, ...: n-grams that are equal are equal as (n - 1)-grams, so the
    n-grams that can repeat start where an (n - 1)-gram repeats, and each n groups only those
    (in clean text a small fraction of the words by n = 5). The texts of the batch are
    grouped together: an n-gram's key is salted with its text's number (a 64-bit random
    multiple, so keys of two texts collide with probability 2**-64), and windows that would
    run past their text's end are left out."""
    top_ns, dup_ns = set(top_ns), set(dup_ns)
    n_texts, n_words = len(words), len(words.hashes)
    top = {n: np.zeros(n_texts, dtype=np.int64) for n in top_ns}
    dup = {n: np.zeros(n_texts, dtype=np.int64) for n in dup_ns}
    wanted = top_ns | dup_ns
    if not wanted or n_words == 0:
        return top, dup
    lens = words.lens
    text_of = np.repeat(np.arange(n_texts), np.diff(words.bounds))  # per word
    end = text_ends(words.bounds)  # per word: where its text's words end
    salt = text_of.astype(np.uint64) * _TEXT_SALT
    cum = np.concatenate(([0], np.cumsum(lens)))
    first_n = max(min(wanted), 1)
    cand: np.ndarray | None = None  # window starts that may repeat (None: all)
    for n, keys in windows(words.hashes, range(first_n, max(wanted) + 1), _mult(max(wanted))):
        pos = np.arange(len(keys)) if cand is None else cand[cand < len(keys)]
        pos = pos[pos + n <= end[pos]]  # windows inside one text
        if len(pos) < 2:
            break
        with np.errstate(over="ignore"):
            salted = keys[pos] + salt[pos]
        order = np.argsort(salted)  # not stable: each group's earliest start is its minimum
        spos = pos[order]  # by key
        skeys = salted[order]
        edge = np.ones(len(spos), dtype=bool)  # where a group of equal keys begins
        edge[1:] = skeys[1:] != skeys[:-1]
        heads = np.flatnonzero(edge)
        sizes = np.diff(np.append(heads, len(spos)))
        if sizes.max() < 2:
            break  # no n-gram repeats: no longer one can
        earliest = np.minimum.reduceat(spos, heads)  # per group
        if n in top_ns:
            rep = sizes >= 2
            g_start, g_size = earliest[rep], sizes[rep]
            g_text = text_of[g_start]
            # per text: the largest group, the earliest of those as large
            o = np.lexsort((g_start, -g_size, g_text))
            first = np.ones(len(o), dtype=bool)
            first[1:] = g_text[o][1:] != g_text[o][:-1]
            best = o[first]
            s = g_start[best]
            top[n][g_text[best]] = (cum[s + n] - cum[s]) * g_size[best]
        if n in dup_ns:
            starts = spos[spos != np.repeat(earliest, sizes)]  # every occurrence after the first
            cover = np.bincount(starts, minlength=n_words + 1)
            cover -= np.bincount(starts + n, minlength=n_words + 1)
            covered = np.cumsum(cover[:n_words]) > 0
            dup[n] = np.bincount(text_of[covered], weights=lens[covered], minlength=n_texts).astype(
                np.int64
            )
        cand = spos[np.repeat(sizes, sizes) >= 2]  # any order: the next sort groups them
    return top, dup


class GopherRepetitionFilter:
    """Duplicate line / paragraph fractions (by count and by characters), the most frequent
    2-4-gram's character fraction, and the character fraction in duplicated 5-10-grams."""

    family = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig | None = None) -> None:
        self.cfg = cfg or GopherRepetitionConfig()

    def score(self, doc: Document | str) -> dict[str, float]:
        return self.score_batch([doc])[0]

    def score_batch(self, docs: Sequence[Document | str]) -> list[dict[str, float]]:
        """The scores of each document; the n-gram passes of all of them in one batch."""
        texts = _texts(docs)
        w = word_batch(texts)  # = text.strip().lower().split() per text
        top_ns, dup_ns = self.cfg.max_top_ngram_char_frac, self.cfg.max_dup_ngram_char_frac
        top, dup = repeated_ngram_chars(w, top_ns, dup_ns)
        word_chars = np.maximum(_per_text(w, w.lens), 1)
        fracs = {f"top_{n}gram_char_frac": (top[n] / word_chars).tolist() for n in sorted(top_ns)}
        fracs |= {f"dup_{n}gram_char_frac": (dup[n] / word_chars).tolist() for n in sorted(dup_ns)}
        out = []
        for j, text in enumerate(texts):
            row = line_repetition(text)
            row.update((k, v[j]) for k, v in fracs.items())
            out.append(row)
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
