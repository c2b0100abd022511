"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models: Methods,
Analysis & Insights from Training Gopher", Appendix A.1.1 and Table A1).

Both classes follow the score/keep protocol in ``filters.base``: ``score`` is a pure function of
the text, ``keep`` applies the thresholds from a pydantic config (``GopherQualityConfig`` /
``GopherRepetitionConfig`` in ``pipeline.config``) and returns None or ``family.metric``.
They work on any text, synthetic or web (the web stage reuses them).
"""

from __future__ import annotations

import re

import numpy as np

from pipeline.config import GopherQualityConfig, GopherRepetitionConfig
from pipeline.records import Document

_BULLETS = ("-", "*", "•", "‣", "◦", "⁃", "·", "●", "○", "▪")
_ELLIPSES = ("...", "…")
_PARA_SPLIT = re.compile(r"\n\s*\n")
_LINE_SPLIT = re.compile(r"\n+")
_ALPHA = re.compile(r"[^\W\d_]")


class GopherQualityFilter:
    """Word count, mean word length, '#' / word and ellipsis / word ratios (each checked on its
    own, as Gopher and datatrove do), bullet and ellipsis line fractions, alphabetic word
    fraction, stop-word presence."""

    family = "gopher_quality"

    def __init__(self, cfg: GopherQualityConfig | None = None) -> None:
        self.cfg = cfg or GopherQualityConfig()
        self._stop = frozenset(w.lower() for w in self.cfg.stop_words)

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
            "stop_words": float(sum(1 for w in words if w.lower() in self._stop)),
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


def _dup_stats(items: list[str]) -> tuple[int, int]:
    """Number of items that repeat an earlier item, and their total characters."""
    seen: set[str] = set()
    n_dup = chars = 0
    for x in items:
        if x in seen:
            n_dup += 1
            chars += len(x)
        else:
            seen.add(x)
    return n_dup, chars


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


class GopherRepetitionFilter:
    """Duplicate line / paragraph fractions (by count and by characters), the most frequent
    2-4-gram's character fraction, and the character fraction in duplicated 5-10-grams."""

    family = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig | None = None) -> None:
        self.cfg = cfg or GopherRepetitionConfig()

    def score(self, doc: Document | str) -> dict[str, float]:
        text = doc if isinstance(doc, str) else doc.text
        stripped = text.strip()
        total = max(len(stripped), 1)
        paras = [p.strip() for p in _PARA_SPLIT.split(stripped) if p.strip()]
        lines = [ln.strip() for ln in _LINE_SPLIT.split(stripped) if ln.strip()]
        p_dup, p_chars = _dup_stats(paras)
        l_dup, l_chars = _dup_stats(lines)
        out = {
            "dup_para_frac": p_dup / len(paras) if paras else 0.0,
            "dup_para_char_frac": p_chars / total,
            "dup_line_frac": l_dup / len(lines) if lines else 0.0,
            "dup_line_char_frac": l_chars / total,
        }
        words = _Words(stripped.lower().split())
        word_chars = max(int(words.lens.sum()), 1)
        for n in sorted(self.cfg.max_top_ngram_char_frac):
            out[f"top_{n}gram_char_frac"] = words.top_ngram_chars(n) / word_chars
        for n in sorted(self.cfg.max_dup_ngram_char_frac):
            out[f"dup_{n}gram_char_frac"] = words.dup_ngram_chars(n) / word_chars
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
