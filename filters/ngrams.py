"""Word and word n-gram hashes, computed in numpy for a whole text at once.

Used wherever a filter compares word sequences: Gopher's repeated n-grams
(``filters.gopher``), benchmark n-gram overlap (``filters.decontam``), shingles.

**Words.** A word is a span of a code-point array (``filters.codepoints``); its hash is two
polynomial hashes of its code points, each modulo a prime just under 2**32 (Karp and Rabin
1987), packed in 64 bits. Prefix sums give every word of a text in a few array operations,
with no Python call per word, and the arithmetic stays exact in uint64. The same word gets
the same hash in any text; two different words of at most L code points collide with
probability at most (L / 2**32)**2 (a nonzero polynomial of degree < L has fewer than L roots
modulo a prime), about 1e-17 for ten-letter words.

**N-grams.** The key of the n words from position i is ``sum_k h[i + k] * M[k]`` (mod 2**64)
with fixed random odd multipliers ``M``, so the keys of sequences of every length up to n
come from one pass over a text (``windows``), and a sequence of L < n words has the key of
its L-gram.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from filters.codepoints import code_points

_PRIMES = (4294967291, 4294967279)  # the two largest primes below 2**32
_BASES = (1_635_272_959, 3_119_574_637)  # fixed random bases in [2, p - 2]
_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele et al. 2014): well-mixed 64-bit constants."""
    with np.errstate(over="ignore"):
        z = x + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def multipliers(n: int, seed: int = 0) -> np.ndarray:
    """n odd 64-bit multipliers, the same for a seed whatever n (a prefix of a longer list)."""
    return _splitmix64(np.arange(n, dtype=_U64) + _U64(seed) * _U64(0x100000000)) | _U64(1)


def _powers(base: int, p: int, n: int) -> np.ndarray:
    """base**i mod p for i < n (by doubling: each step multiplies the known half)."""
    out = np.ones(1, dtype=_U64)
    while len(out) < n:
        step = pow(base, len(out), p)
        out = np.concatenate([out, out * _U64(step) % _U64(p)])
    return out[:n]


# the sum of (code point) * base**i over a word stays exact in uint64 up to this length
_EXACT_WORD = 2**11  # code points < 2**21, powers < 2**32: 2**11 terms < 2**64
# code points hashed at a time: a batch of texts end to end (millions of code points) is
# hashed in runs of whole words this long, so the power tables and temporaries stay small
_CHUNK = 2**18


class WordHasher:
    """Hashes of words given as spans of a code-point array. Holds the powers of the bases
    (grown to the longest text seen); one per process or filter, reused for every text."""

    def __init__(self) -> None:
        self._size = 0
        self._pow: list[np.ndarray] = []  # base**i mod p
        self._inv: list[np.ndarray] = []  # base**-i mod p

    def _grow(self, n: int) -> None:
        if self._size >= n:
            return
        n = max(n, 2 * self._size, 1024)
        self._pow = [_powers(b, p, n) for p, b in zip(_PRIMES, _BASES, strict=True)]
        self._inv = [_powers(pow(b, -1, p), p, n) for p, b in zip(_PRIMES, _BASES, strict=True)]
        self._size = n

    def spans(self, cp: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """uint64 hash of each word ``cp[starts[i]:ends[i]]``: per prime p, the sum over the
        word of (code point + 1) * base**(position in the word), mod p. Words in text order
        over a long array are hashed in runs of about ``_CHUNK`` code points (a word's hash
        does not depend on where it sits), so memory does not grow with the array."""
        if len(cp) <= _CHUNK or len(starts) < 2 or (np.diff(ends) < 0).any():
            return self._spans(cp, starts, ends)
        out = np.empty(len(starts), dtype=_U64)
        i = 0
        while i < len(starts):
            o = int(starts[i])
            j = max(i + 1, int(np.searchsorted(ends, o + _CHUNK, side="right")))
            e = int(ends[i:j].max())
            o = min(o, int(starts[i:j].min()))
            out[i:j] = self._spans(cp[o:e], starts[i:j] - o, ends[i:j] - o)
            i = j
        return out

    def _spans(self, cp: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        n = len(cp)
        self._grow(n)
        exact = not len(starts) or int((ends - starts).max()) <= _EXACT_WORD
        v = cp + np.uint32(1)  # + 1: a code point 0 still counts
        out = np.zeros(len(starts), dtype=_U64)
        prefix = np.zeros(n + 1, dtype=_U64)
        for k, p in enumerate(_PRIMES):
            # terms at absolute positions; the prefix sums wrap, but their difference over a
            # word of at most _EXACT_WORD code points is the exact sum
            term = v * self._pow[k][:n]
            if not exact:  # a longer word: keep every term and prefix below 2**64
                term %= _U64(p)
            np.cumsum(term, out=prefix[1:])
            h = (prefix[ends] - prefix[starts]) % _U64(p)
            h = h * self._inv[k][starts] % _U64(p)  # as if the word started at 0
            out = (out << _U64(32)) | h
        return out

    def words(self, words: Sequence[str]) -> np.ndarray:
        """uint64 hash of each string (the hash its code points have inside any text)."""
        if not words:
            return np.zeros(0, dtype=_U64)
        lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        ends = np.cumsum(lens)
        return self.spans(code_points("".join(words)), ends - lens, ends)


def ngram_keys(h: np.ndarray, n: int, mult: np.ndarray) -> np.ndarray:
    """Key of every n-word window of the word hashes ``h`` (empty when fewer than n words)."""
    return next((keys for _, keys in windows(h, (n,), mult)), np.zeros(0, dtype=_U64))


def windows(
    h: np.ndarray, lengths: Iterable[int], mult: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """(L, key of every L-word window) for each L in ``lengths`` (at most len(mult)) that fits
    in ``h``, shortest first; one pass for all lengths."""
    want = set(lengths)
    if not len(h) or not want:
        return
    acc = np.zeros(0, dtype=_U64)
    with np.errstate(over="ignore"):
        for k in range(min(max(want), len(h))):
            m = len(h) - k  # windows of k + 1 words
            term = h[k : k + m] * mult[k]
            acc = term if k == 0 else acc[:m] + term
            if k + 1 in want:
                yield k + 1, acc


def text_ends(bounds: np.ndarray) -> np.ndarray:
    """Per word of texts end to end (text j's words ``bounds[j]:bounds[j + 1]``): the offset
    where its text's words end."""
    return np.repeat(bounds[1:], np.diff(bounds))


def windows_within(
    h: np.ndarray, bounds: np.ndarray, lengths: Iterable[int], mult: np.ndarray
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """:func:`windows` of texts end to end, keeping the windows inside one text: (L, start
    of each such L-word window, its key)."""
    end = text_ends(bounds)
    for length, keys in windows(h, lengths, mult):
        first = np.flatnonzero(np.arange(len(keys)) + length <= end[: len(keys)])
        yield length, first, keys[first]
