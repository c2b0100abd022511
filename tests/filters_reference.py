"""The per-document filters as they were before they were vectorised (datagen commit 785b4a0:
the ``score`` of filters/gopher.py, ``covered_words`` of filters/constraints.py and the n-gram
matching of filters/decontam.py, verbatim; what did not change is inherited). The oracle of
tests/test_filter_equivalence.py (same scores and decisions on every real document) and the
"before" rows of scripts/bench/heuristics.py. Not used by the pipeline."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import xxhash

from filters import constraints, gopher
from filters.constraints import word_forms
from filters.decontam import Decontaminator, benchmark_files, read_records
from pipeline.config import DecontamConfig, GopherQualityConfig
from pipeline.records import Document

# --------------------------------------------------------------------------- gopher.py
_BULLETS = ("-", "*", "•", "‣", "◦", "⁃", "·", "●", "○", "▪")
_ELLIPSES = ("...", "…")
_PARA_SPLIT = re.compile(r"\n\s*\n")
_LINE_SPLIT = re.compile(r"\n+")
_ALPHA = re.compile(r"[^\W\d_]")


def _one_by_one(self: Any, docs: Sequence[Document | str]) -> list[dict[str, float]]:
    """The previous implementation had no batch scoring: ``score`` per document."""
    return [self.score(d) for d in docs]


class GopherQualityFilter(gopher.GopherQualityFilter):
    """The previous ``score``: Python string operations per word."""

    score_batch = _one_by_one

    def __init__(self, cfg: GopherQualityConfig | None = None) -> None:
        super().__init__(cfg)
        self._stop_set = frozenset(w.lower() for w in self.cfg.stop_words)

    def score(self, doc: Document | str) -> dict[str, float]:
        text = doc if isinstance(doc, str) else doc.text
        words = text.split()
        n = len(words)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        n_lines = max(len(lines), 1)
        hashes = text.count("#")
        ellipses = text.count("...") + text.count("…")
        return {
            "n_words": float(n),
            "mean_word_length": sum(len(w) for w in words) / n if n else 0.0,
            "hash_word_ratio": hashes / n if n else 0.0,
            "ellipsis_word_ratio": ellipses / n if n else 0.0,
            "bullet_lines_ratio": sum(ln.startswith(_BULLETS) for ln in lines) / n_lines,
            "ellipsis_lines_ratio": sum(ln.endswith(_ELLIPSES) for ln in lines) / n_lines,
            "alpha_words_ratio": sum(bool(_ALPHA.search(w)) for w in words) / n if n else 0.0,
            "stop_words": float(sum(1 for w in words if w.lower() in self._stop_set)),
        }


_MULT = np.random.default_rng(20211208).integers(1, 2**62, size=16, dtype=np.uint64) * np.uint64(
    2
) + np.uint64(1)  # odd multipliers for n-gram keys (n <= 16)


class _Words:
    """A text's words as integer ids, with numpy n-gram keys (computed once per text)."""

    def __init__(self, words: list[str]) -> None:
        vocab: dict[str, int] = {}
        self.ids = np.fromiter(
            (vocab.setdefault(w, len(vocab)) for w in words), dtype=np.uint64, count=len(words)
        )
        self.lens = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        # per-id random keys so that n-gram keys are order-sensitive and collision-resistant
        rng = np.random.default_rng(len(vocab))
        self._key = rng.integers(1, 2**63, size=max(len(vocab), 1), dtype=np.uint64)

    def ngram_keys(self, n: int) -> np.ndarray:
        m = len(self.ids) - n + 1
        base = self._key[self.ids.astype(np.int64)]
        acc = base[0:m] * _MULT[0]
        for k in range(1, n):
            acc = acc + base[k : k + m] * _MULT[k % len(_MULT)]
        return acc

    def top_ngram_chars(self, n: int) -> int:
        """Characters covered by the most frequent n-gram (0 when no n-gram repeats)."""
        if len(self.ids) < n:
            return 0
        keys = self.ngram_keys(n)
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        top = counts.max()
        if top < 2:
            return 0
        start = int(first[counts == top].min())  # ties: the first to occur (as Counter)
        return int(self.lens[start : start + n].sum()) * int(top)

    def dup_ngram_chars(self, n: int) -> int:
        """Characters of words covered by repeated occurrences of an n-gram (every occurrence
        after the first; overlapping n-grams count each word once). Close to, not identical
        with, datatrove's ``find_all_duplicate``: that scans left to right, jumps n words past
        each repeat and never records the n-grams it jumps over, so on overlapping or
        interleaved repeats the two can differ slightly."""
        if len(self.ids) < n:
            return 0
        keys = self.ngram_keys(n)
        _, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        dup = np.flatnonzero(first[inv] != np.arange(len(keys)))
        if len(dup) == 0:
            return 0
        diff = np.zeros(len(self.ids) + 1, dtype=np.int64)
        np.add.at(diff, dup, 1)
        np.add.at(diff, dup + n, -1)
        covered = np.cumsum(diff[:-1]) > 0
        return int(self.lens[covered].sum())


class GopherRepetitionFilter(gopher.GopherRepetitionFilter):
    """The previous ``score``: n-grams of per-text word ids, one ``np.unique`` per n."""

    score_batch = _one_by_one

    def score(self, doc: Document | str) -> dict[str, float]:
        text = doc if isinstance(doc, str) else doc.text
        stripped = text.strip()
        out = gopher.line_repetition(text)  # unchanged
        words = _Words(stripped.lower().split())
        word_chars = max(int(words.lens.sum()), 1)
        for n in sorted(self.cfg.max_top_ngram_char_frac):
            out[f"top_{n}gram_char_frac"] = words.top_ngram_chars(n) / word_chars
        for n in sorted(self.cfg.max_dup_ngram_char_frac):
            out[f"dup_{n}gram_char_frac"] = words.dup_ngram_chars(n) / word_chars
        return out


# --------------------------------------------------------------------------- constraints.py
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


def text_tokens(text: str) -> set[str]:
    return {m.group(0).lower() for m in _WORD.finditer(text)}


def covered_words(required: list[str], text: str) -> list[str]:
    """The required words present in ``text`` in some inflected form. A multi-word entry
    counts when it occurs as a whole-word phrase (case-insensitive, any whitespace between
    its words: "ice cream" does not match "nice creamy")."""
    tokens = text_tokens(text)
    low = text.lower()
    out = []
    for w in required:
        if " " in w.strip():
            phrase = r"\s+".join(map(re.escape, w.lower().split()))
            if re.search(r"\b" + phrase + r"\b", low):
                out.append(w)
        elif word_forms(w) & tokens:
            out.append(w)
    return out


class ConstraintFilter(constraints.ConstraintFilter):
    covered = staticmethod(covered_words)


# --------------------------------------------------------------------------- decontam.py
_DTOKEN = re.compile(r"\w+")


class _NgramKeys:
    """64-bit keys of word sequences (xxh3 per word, memoized; combined in numpy). The key of
    a sequence of L <= n words uses the first L multipliers, so all lengths come from one
    pass over a document."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._cache: dict[str, int] = {}
        rng = np.random.default_rng(13)
        self._mult = rng.integers(1, 2**62, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    def _hash(self, w: str) -> int:
        h = self._cache.get(w)
        if h is None:
            if len(self._cache) > 1 << 20:
                self._cache.clear()
            h = self._cache[w] = xxhash.xxh3_64_intdigest(w.encode("utf-8"))
        return h

    def windows(self, words: list[str], lengths: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(L, keys of every L-word window) for each L in ``lengths`` (each <= n) that fits."""
        if not words or not lengths:
            return
        wh = np.fromiter(map(self._hash, words), dtype=np.uint64, count=len(words))
        acc = np.zeros(0, dtype=np.uint64)
        for k in range(min(max(lengths), len(words))):
            m = len(words) - k  # windows of k + 1 words
            term = wh[k : k + m] * self._mult[k]
            acc = term if k == 0 else acc[:m] + term
            if k + 1 in lengths:
                yield k + 1, acc

    def __call__(self, words: list[str], length: int | None = None) -> np.ndarray:
        """Keys of every window of ``length`` (default n) words."""
        want = length or self.n
        return next((keys for _, keys in self.windows(words, {want})), np.zeros(0, dtype=np.uint64))


def _walk(obj: Any, parts: list[str]) -> Iterator[str]:
    if isinstance(obj, list):
        for x in obj:
            yield from _walk(x, parts)
        return
    if not parts:
        if obj is not None and not isinstance(obj, dict):
            yield str(obj)
        return
    if isinstance(obj, dict) and parts[0] in obj:
        yield from _walk(obj[parts[0]], parts[1:])


class ReferenceDecontaminator(Decontaminator):
    """The old index (xxh3 word keys, one sorted table per sequence length) and matching, over
    the benchmarks of ``cfg`` read from their local files (the rest is inherited)."""

    def __init__(self, cfg: DecontamConfig) -> None:
        super().__init__(cfg)
        self._keys = _NgramKeys(self.n)
        self.names: list[str] = []
        building: dict[int, dict[int, int]] = {}
        for b in cfg.all_benchmarks():
            files = benchmark_files(b.path) if b.path else []
            if not files:
                continue
            number = len(self.names)
            self.names.append(b.name)
            for f in files:
                for row in read_records(f):
                    if not isinstance(row, dict):
                        continue
                    for fld in b.fields:
                        for value in _walk(row, fld.split(".")):
                            words = [m.group().lower() for m in _DTOKEN.finditer(value)]
                            if len(words) >= self.n:
                                length = self.n
                            elif len(words) >= self.min_short:
                                length = len(words)
                            else:
                                continue
                            table = building.setdefault(length, {})
                            for key in self._keys(words, length).tolist():
                                table.setdefault(key, number)
        # keys each benchmark brought first (the old "ngrams" + "whole" counts)
        firsts = [v for table in building.values() for v in table.values()]
        self.first_keys = {name: firsts.count(i) for i, name in enumerate(self.names)}
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for length, table in building.items():
            keys = np.fromiter(table.keys(), dtype=np.uint64, count=len(table))
            ids = np.fromiter(table.values(), dtype=np.int32, count=len(table))
            order = np.argsort(keys)
            self._tables[length] = (keys[order], ids[order])

    def _matches(self, texts: Sequence[str]) -> list[list[tuple[int, int, str]]]:
        """Per text (the interface ``Decontaminator.check_batch`` calls), one at a time."""
        return [self._matches_one(t) for t in texts]

    def _matches_one(self, text: str) -> list[tuple[int, int, str]]:
        """(char start, char end, benchmark) of each matching word sequence, by start."""
        if not self._tables:
            return []
        # tokenize the original text and lower-case per token, so char positions are the
        # original's even where lower() changes length ("İ".lower() is 2 chars)
        ms = list(_DTOKEN.finditer(text))
        words = [m.group().lower() for m in ms]
        found = []
        for length, keys in self._keys.windows(words, set(self._tables)):
            table, ids = self._tables[length]
            pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
            for i in np.flatnonzero(table[pos] == keys).tolist():
                found.append((ms[i].start(), ms[i + length - 1].end(), self.names[ids[pos[i]]]))
        return sorted(found)
