"""Exact and near-duplicate detection: the building blocks of the ``dedup`` stage.

One rule for every document, synthetic or web:

- **exact**: the xxh3-128 hash of the normalised text (NFKC, lower case, whitespace
  collapsed), so trivially different copies are one group;
- **near**: word n-gram shingles (``dedup.ngram``), MinHash signatures (datasketch
  ``affine32`` values: the same permutations as ``datasketch.MinHash(num_perm, seed)``),
  LSH bands; two documents that share a band key are a *candidate* pair, and a candidate is a
  duplicate only if the EXACT Jaccard of the two shingle sets is >= ``dedup.threshold``
  (precision ~1, and a pair just above the threshold is found whenever it is a candidate);
- **clusters**: connected components of the verified pairs and the exact groups; each cluster
  keeps its highest-quality member (``classifier.prob``, missing = 0; ties by id).

API (the stage runs these per shard and per band; ``find_duplicates`` runs them in memory)::

    params = MinHashParams(num_perm=112, ngram=5, threshold=0.8, bands=0, seed=cfg.seed)
    signer = Signer(params)
    s = signer.sign(texts)      # Signed: shingle sets, signatures, band keys, exact keys
    copy, first = exact_groups(hi, lo, gids)          # edges joining exact copies
    a, b, capped = bucket_pairs(keys, groups, gids)   # candidate pairs of one band's buckets
    a, b = distinct_pairs([(a1, b1), (a2, b2)])       # over bands: each pair once
    js = pair_jaccards(a, b, shingles_of)             # exact Jaccard of each pair
    nodes, labels = components(a, b)                  # connected components (scipy)
    clusters = resolve(labels, members)               # the keep rule and drop reasons
    found = find_duplicates(texts, params)            # all of it, in memory
    candidate_curve(params) / decision_curve(params)  # {"0.8": P(... | exact J = 0.8)}

Shingles are hashed once per word (xxh3, memoised) and combined per n-gram in numpy; a
document's shingle set is the sorted unique uint32 values (so its Jaccard is exact up to
32-bit hash collisions, ~1e-6 for documents of 10k words).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import xxhash
from datasketch import MinHash

from pipeline.errors import DatagenError
from pipeline.records import stable_id

_TOKEN = re.compile(r"\w+")
SHINGLE_VERSION = 2  # bump when the shingle hashing changes (saved artefacts must match)
CURVE_JACCARDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)  # where the manifest reports curves
# A band bucket of more documents than this (a template page crawled thousands of times with
# small changes) pairs each member with its first BUCKET_ANCHORS members only, as NeMo
# Curator's anchor documents do: the candidate pairs then grow linearly, not quadratically, and
# the members still join one cluster through the anchors. The manifest counts such buckets.
BUCKET_ANCHORS = 64
_U64 = np.uint64


# --------------------------------------------------------------------------- exact
def normalize_text(text: str) -> str:
    """NFKC, lower case, whitespace collapsed: trivially different copies hash the same.
    (``str.split()`` splits where ``\\s`` matches: at every ``str.isspace()`` character.)"""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_hash(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(normalize_text(text).encode("utf-8"))


def exact_keys(texts: Sequence[str], lowered: Sequence[str] | None = None) -> np.ndarray:
    """The exact hash of each text as (hi, lo) uint64 halves of xxh3-128, shape (n, 2).
    ``lowered`` (the texts in lower case, when the caller has them) saves NFKC and lower()
    for texts NFKC leaves as they are (ASCII, most text)."""
    out = np.zeros((len(texts), 2), dtype=np.uint64)
    for i, t in enumerate(texts):
        if lowered is not None and unicodedata.is_normalized("NFKC", t):
            norm = " ".join(lowered[i].split())
        else:
            norm = normalize_text(t)
        h = xxhash.xxh3_128_intdigest(norm.encode("utf-8"))
        out[i, 0] = h >> 64
        out[i, 1] = h & 0xFFFF_FFFF_FFFF_FFFF
    return out


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class MinHashParams:
    num_perm: int = 112
    ngram: int = 5
    threshold: float = 0.8
    bands: int = 0  # 0: derive from threshold
    seed: int = 1234
    # derived bands: P(candidate | J = threshold) at least this. Candidates are verified by
    # their exact Jaccard, so an extra candidate costs one set intersection and a missed one a
    # duplicate: 0.99 gives 17 x 6 at threshold 0.8 (0.994 at J = 0.8, 0.9997 at 0.85)
    min_recall: float = 0.99

    def bands_rows(self) -> tuple[int, int]:
        if self.bands:
            if not 2 <= self.bands <= self.num_perm:
                raise DatagenError(
                    f"dedup.bands: {self.bands} must be 2..dedup.num_perm "
                    f"({self.num_perm}), or 0 to derive it from the threshold"
                )
            return self.bands, self.num_perm // self.bands
        return derive_bands_rows(self.threshold, self.num_perm, self.min_recall)


def candidate_probability(j: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """LSH S-curve: probability that a pair with Jaccard j shares at least one band (it becomes
    a candidate; it is a duplicate only if its exact Jaccard passes the threshold too)."""
    return 1.0 - (1.0 - np.power(j, rows)) ** bands


def derive_bands_rows(threshold: float, num_perm: int, min_recall: float = 0.99) -> tuple[int, int]:
    """Bands x rows for a target Jaccard threshold: among splits with
    P(candidate | J = threshold) >= min_recall, the one admitting fewest pairs below the threshold
    (area under the S-curve on [0, threshold]); candidates are verified afterwards, so a missed
    pair costs more than an extra candidate."""
    grid = np.linspace(0.0, threshold, 201)
    best: tuple[float, int, int] | None = None
    fallback: tuple[float, int, int] | None = None
    for b in range(2, num_perm + 1):
        r = num_perm // b
        if r < 1:
            break
        p_t = float(candidate_probability(threshold, b, r))
        fp = float(np.trapezoid(candidate_probability(grid, b, r), grid))
        if p_t >= min_recall and (best is None or fp < best[0]):
            best = (fp, b, r)
        if fallback is None or p_t > fallback[0]:
            fallback = (p_t, b, r)
    chosen = best or fallback
    assert chosen is not None
    return chosen[1], chosen[2]


def candidate_curve(
    params: MinHashParams, js: Iterable[float] = CURVE_JACCARDS
) -> dict[str, float]:
    """{J: P(a pair at exact Jaccard J becomes an LSH candidate)}."""
    b, r = params.bands_rows()
    return {f"{j:g}": round(float(candidate_probability(j, b, r)), 4) for j in js}


def decision_curve(params: MinHashParams, js: Iterable[float] = CURVE_JACCARDS) -> dict[str, float]:
    """{J: P(a pair at exact Jaccard J is judged a duplicate)}: the whole decision, an LSH
    candidate AND exact Jaccard >= threshold, i.e. P(candidate | J) * 1[J >= threshold]. (In a
    bucket larger than BUCKET_ANCHORS a pair of non-anchors is not a candidate; such pairs
    still share a cluster through the anchors.)"""
    b, r = params.bands_rows()
    return {
        f"{j:g}": round(float(candidate_probability(j, b, r)) if j >= params.threshold else 0.0, 4)
        for j in js
    }


# --------------------------------------------------------------------------- signatures
def _fmix32(h: np.ndarray) -> np.ndarray:
    # MurmurHash3 finalizer, as datasketch's affine32 scheme pre-mixes its input
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


# ASCII bytes that are not \w (so never inside a word) -> space; bytes of non-ASCII characters
# (all >= 0x80 in UTF-8) stay for the regex to judge
_ASCII_NON_WORD = bytes(
    c if c >= 0x80 or chr(c).isalnum() or c == 0x5F else 0x20 for c in range(256)
)


def words(lowered: str) -> list[bytes]:
    """The ``\\w+`` runs of a text (UTF-8), as ``re.findall(r"\\w+", lowered)`` finds them,
    2x faster: ASCII non-word bytes split the text, and only a piece holding a non-ASCII
    character goes through the regex."""
    raw = lowered.encode("utf-8", "surrogatepass")
    pieces = raw.translate(_ASCII_NON_WORD).split()
    if lowered.isascii():
        return pieces
    out: list[bytes] = []
    for piece in pieces:
        if piece.isascii():
            out.append(piece)
        else:
            text = piece.decode("utf-8", "surrogatepass")
            out.extend(w.encode("utf-8", "surrogatepass") for w in _TOKEN.findall(text))
    return out


class WordHashes(dict[bytes, int]):
    """xxh3-64 of each word, memoised (word frequencies are Zipfian; the cache is bounded).
    A dict whose ``__missing__`` hashes: ``map(self.__getitem__, words)`` runs in C for hits."""

    def __init__(self, max_size: int = 1 << 20) -> None:
        super().__init__()
        self.max_size = max_size

    def __missing__(self, w: bytes) -> int:
        h = xxhash.xxh3_64_intdigest(w)
        if len(self) >= self.max_size:
            self.clear()
        self[w] = h
        return h

    def of(self, lowered: str) -> np.ndarray:
        """The hashes of the words of a text already in lower case."""
        ws = words(lowered)
        return np.fromiter(map(self.__getitem__, ws), dtype=np.uint64, count=len(ws))


def _unique(x: np.ndarray) -> np.ndarray:
    """Sorted unique values (numpy's hash-based ``np.unique`` is slower on uint64 keys)."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


class Signed(NamedTuple):
    """What one batch of texts gives: everything the dedup stage needs, no text."""

    shingles: np.ndarray  # uint32: each text's sorted unique shingle hashes, concatenated
    offsets: np.ndarray  # int64, n + 1: text i's set is shingles[offsets[i]:offsets[i + 1]]
    signatures: np.ndarray  # (n, bands * rows) uint32 MinHash values (empty text: all 2^32-1)
    band_keys: np.ndarray  # (bands, n) uint64: one hash of each band's rows
    exact: np.ndarray  # (n, 2) uint64: exact hash (hi, lo) of the normalised text

    @property
    def empty(self) -> np.ndarray:
        """Texts without a word: no shingles, never a near duplicate."""
        return np.diff(self.offsets) == 0

    def shingle_set(self, i: int) -> np.ndarray:
        return self.shingles[self.offsets[i] : self.offsets[i + 1]]


class Signer:
    """Shingle sets, MinHash signatures and LSH band keys for batches of texts (numpy)."""

    def __init__(self, params: MinHashParams, all_positions: bool = False) -> None:
        self.params = params
        self.bands, self.rows = params.bands_rows()
        ref = MinHash(num_perm=params.num_perm, seed=params.seed, scheme="affine32")
        self.permutations = ref.permutations  # shape (2, num_perm) uint32, datasketch's
        # the positions the bands read; the rest would serve only an estimated Jaccard
        used = params.num_perm if all_positions else self.bands * self.rows
        self._a = self.permutations[0][:used].astype(np.uint32)
        self._b = self.permutations[1][:used].astype(np.uint32)
        self._words = WordHashes()
        rng = np.random.default_rng(params.seed)
        odd = rng.integers(1, 2**63, size=params.ngram, dtype=np.uint64) * _U64(2)
        self._mult = odd + _U64(1)
        band = rng.integers(1, 2**63, size=(self.bands, self.rows), dtype=np.uint64) * _U64(2)
        self._band_mult = band + _U64(1)

    # ---- shingles
    def _combine(self, wh: np.ndarray, n: int, count: int) -> np.ndarray:
        acc = wh[0:count] * self._mult[0]
        for k in range(1, n):
            acc = acc + wh[k : k + count] * self._mult[k]
        return (acc >> _U64(32)).astype(np.uint32)

    def shingles(
        self, texts: Sequence[str], lowered: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each text's sorted unique word n-gram shingle hashes, concatenated, and the offsets
        (len(texts) + 1). A text shorter than n words is one shingle; an empty one has none.
        Words are ``\\w+`` runs of the lower-cased text."""
        n = self.ngram
        lowered = lowered if lowered is not None else [t.lower() for t in texts]
        parts = [self._words.of(t) for t in lowered]
        lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        if not parts or not lens.any():
            return np.zeros(0, dtype=np.uint32), offsets
        allw = np.concatenate(parts)
        ends = np.cumsum(lens)
        doc = np.repeat(np.arange(len(texts), dtype=np.uint64), lens)  # text of each word
        keys = np.zeros(0, dtype=np.uint64)
        if len(allw) >= n:
            # windows of n words that start in a text and end in the same text
            sh = self._combine(allw, n, len(allw) - n + 1)
            wdoc = doc[: len(sh)]
            valid = np.arange(len(sh)) + n <= ends[wdoc.astype(np.int64)]
            keys = (wdoc[valid] << _U64(32)) | sh[valid].astype(np.uint64)
        short = np.flatnonzero((lens > 0) & (lens < n))
        if len(short):
            extra = np.array(
                [self._combine(parts[i], int(lens[i]), 1)[0] for i in short], dtype=np.uint64
            )
            keys = np.concatenate([keys, (short.astype(np.uint64) << _U64(32)) | extra])
        keys = _unique(keys)  # sorted by text, then hash; duplicates within a text removed
        docs = (keys >> _U64(32)).astype(np.int64)
        np.cumsum(np.bincount(docs, minlength=len(texts)), out=offsets[1:])
        return (keys & _U64(0xFFFFFFFF)).astype(np.uint32), offsets

    @property
    def ngram(self) -> int:
        return self.params.ngram

    # ---- MinHash
    def signatures(
        self, shingles: np.ndarray, offsets: np.ndarray, max_cells: int = 1 << 20
    ) -> np.ndarray:
        """MinHash values (n x bands*rows, uint32) of the shingle sets (datasketch affine32);
        an empty set gives 2^32-1 everywhere. Computed position-major (a transposed view is
        returned): the per-text minimum then runs along contiguous rows, 3x faster."""
        used = len(self._a)
        n = len(offsets) - 1
        out = np.full((used, n), np.uint32(0xFFFFFFFF), dtype=np.uint32)
        if len(shingles) == 0:
            return out.T
        mixed = _fmix32(shingles)
        nonempty = np.flatnonzero(np.diff(offsets) > 0)
        # whole texts in chunks of at most max_cells matrix cells
        step = max(1, max_cells // used)
        ends = offsets[nonempty + 1]
        i = 0
        while i < len(nonempty):
            lo = int(offsets[nonempty[i]])
            j = max(i + 1, int(np.searchsorted(ends, lo + step, side="right")))
            docs = nonempty[i:j]
            hi = int(offsets[docs[-1] + 1])
            phv = np.multiply(self._a[:, None], mixed[None, lo:hi])
            phv += self._b[:, None]
            out[:, docs] = np.minimum.reduceat(phv, offsets[docs] - lo, axis=1)
            i = j
        return out.T

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(bands, n) uint64: a 64-bit hash of each band's ``rows`` values. Two documents
        share a key when their band agrees (or, ~2^-64, by chance: one more candidate, which
        verification then rejects)."""
        n = len(signatures)
        by_pos = signatures.T[: self.bands * self.rows]  # (positions, n)
        s = by_pos.reshape(self.bands, self.rows, n).astype(np.uint64)
        acc = (s * self._band_mult[:, :, None]).sum(axis=1, dtype=np.uint64)
        acc += np.arange(self.bands, dtype=np.uint64)[:, None]
        return _fmix64(acc)

    def sign(self, texts: Sequence[str]) -> Signed:
        lowered = [t.lower() for t in texts]
        sh, off = self.shingles(texts, lowered)
        sigs = self.signatures(sh, off)
        return Signed(sh, off, sigs, self.band_keys(sigs), exact_keys(texts, lowered))


# --------------------------------------------------------------------------- candidates
@functools.lru_cache(maxsize=256)
def _pairs_of_size(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of a bucket of m members; beyond BUCKET_ANCHORS, j paired with the
    first BUCKET_ANCHORS members only."""
    anchors = np.arange(min(m, BUCKET_ANCHORS))
    i = np.repeat(anchors, m - 1 - anchors)
    j = np.concatenate([np.arange(x + 1, m) for x in anchors.tolist()])
    return i.astype(np.int64), j.astype(np.int64)


def bucket_pairs(
    keys: np.ndarray, groups: np.ndarray, gids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Candidate pairs among documents that share a band key: (a, b) document numbers with
    a < b, unique, sorted, and the number of buckets larger than BUCKET_ANCHORS.

    ``groups`` is each document's exact-hash group (its hi half): of several exact copies in a
    bucket only the first (smallest number) takes part, since its copies have the same shingles
    and join its cluster as exact duplicates anyway."""
    order = np.lexsort((gids, groups, keys))
    k, g, d = keys[order], groups[order], gids[order]
    first = np.ones(len(k), dtype=bool)
    first[1:] = (k[1:] != k[:-1]) | (g[1:] != g[:-1])
    k, d = k[first], d[first]
    if len(k) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    start = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    size = np.diff(np.r_[start, len(k)])
    a_parts, b_parts = [], []
    capped = 0
    for m in np.unique(size[size >= 2]):
        i, j = _pairs_of_size(int(m))
        s = start[size == m][:, None]
        a_parts.append(d[s + i[None, :]].ravel())
        b_parts.append(d[s + j[None, :]].ravel())
        if m > BUCKET_ANCHORS:
            capped += int(len(s))
    if not a_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    a, b = np.concatenate(a_parts).astype(np.int64), np.concatenate(b_parts).astype(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return (*distinct_pairs([(lo, hi)]), capped)


def distinct_pairs(
    parts: Iterable[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (a, b) pairs of several lists (document numbers < 2^32), sorted by a then
    b: the candidates of all bands, each verified once."""
    packed = [(a.astype(np.uint64) << _U64(32)) | b.astype(np.uint64) for a, b in parts]
    u = _unique(np.concatenate(packed)) if packed else np.zeros(0, np.uint64)
    return (u >> _U64(32)).astype(np.int64), (u & _U64(0xFFFFFFFF)).astype(np.int64)


def exact_groups(hi: np.ndarray, lo: np.ndarray, gids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges (member, first) joining each document to the first (smallest number) of the
    documents with the same exact hash; documents without a copy have none."""
    order = np.lexsort((gids, lo, hi))
    h, low, d = hi[order], lo[order], gids[order]
    same = np.zeros(len(h), dtype=bool)
    same[1:] = (h[1:] == h[:-1]) & (low[1:] == low[:-1])
    head = np.maximum.accumulate(np.where(~same, np.arange(len(h)), 0))
    return d[same].astype(np.int64), d[head[same]].astype(np.int64)


def pair_jaccards(
    a: np.ndarray, b: np.ndarray, shingles_of: Callable[[int], np.ndarray]
) -> np.ndarray:
    """Exact Jaccard of each pair (a[i], b[i]); ``shingles_of(doc)`` gives a document's
    sorted shingle set (pairs sorted by a: each a is fetched once per run of pairs)."""
    out = np.zeros(len(a), dtype=np.float64)
    last, set_a = -1, np.zeros(0, np.uint32)
    for n, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
        if x != last:
            last, set_a = x, shingles_of(x)
        out[n] = jaccard(set_a, shingles_of(y))
    return out


def jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Exact Jaccard of two sorted, unique shingle-hash arrays."""
    if len(x) == 0 or len(y) == 0:
        return 0.0
    if len(x) > len(y):
        x, y = y, x
    pos = np.searchsorted(y, x)
    pos[pos == len(y)] = 0
    inter = int(np.count_nonzero(y[pos] == x))
    return inter / (len(x) + len(y) - inter)


# --------------------------------------------------------------------------- clusters
@dataclass
class Member:
    """What the keep rule needs of one document in a cluster."""

    gid: int  # the document's number in the stage's input order
    id: str
    quality: float  # classifier.prob (missing = 0)
    exact: tuple[int, int]  # exact hash (hi, lo)
    source: str = "synthetic"


@dataclass
class Cluster:
    cluster_id: str
    kept: Member
    members: list[Member]
    # gid -> "exact" | "near" for every member but the kept one
    reasons: dict[int, str] = field(default_factory=dict)


def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, label per node): connected components of the graph with edges a[i]-b[i]."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes = np.unique(np.concatenate([a, b]))
    if not len(nodes):
        return nodes, np.zeros(0, dtype=np.int64)
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    graph = coo_matrix((np.ones(len(ia), dtype=np.int8), (ia, ib)), shape=(len(nodes),) * 2)
    _, labels = connected_components(graph, directed=False)
    return nodes, labels.astype(np.int64)


def _rank(m: Member) -> tuple[float, str, int]:
    return (-m.quality, m.id, m.gid)


def resolve(labels: np.ndarray, members: Sequence[Member], exact: bool = True) -> list[Cluster]:
    """Clusters from component labels (members[i] has labels[i]): each keeps its highest
    quality member (ties by id, then input order). A dropped member is ``exact`` when it is
    not the best of its exact-hash copies in the cluster (a copy of a document that stays or
    of one dropped as a near duplicate), else ``near`` (always, without exact dedup); every
    one points at the kept member."""
    by_label: dict[int, list[Member]] = {}
    for lab, m in zip(labels.tolist(), members, strict=True):
        by_label.setdefault(lab, []).append(m)
    out = []
    for group in by_label.values():
        if len(group) < 2:
            continue
        kept = min(group, key=_rank)
        best_copy: dict[tuple[int, int], Member] = {}
        for m in group:
            if m.exact not in best_copy or _rank(m) < _rank(best_copy[m.exact]):
                best_copy[m.exact] = m
        reasons = {
            m.gid: ("exact" if exact and best_copy[m.exact] is not m else "near")
            for m in group
            if m is not kept
        }
        ids = sorted(m.id for m in group)
        out.append(
            Cluster(
                cluster_id=stable_id(*ids, prefix="dup-"),
                kept=kept,
                members=sorted(group, key=lambda m: m.gid),
                reasons=reasons,
            )
        )
    return sorted(out, key=lambda c: c.members[0].gid)


# --------------------------------------------------------------------------- in memory
@dataclass
class Found:
    """The result of :func:`find_duplicates` on a list of texts (indices into it)."""

    candidates: int  # distinct candidate pairs (shared band key)
    pairs: list[tuple[int, int, float]]  # verified: (i, j, exact J), i < j
    exact: list[tuple[int, int]]  # (copy, first copy)
    capped_buckets: int
    clusters: list[Cluster]

    def judged_pairs(self) -> set[tuple[int, int]]:
        """Every pair judged a duplicate: the verified pairs, each extended to the exact copies
        of either side (same shingle set, same Jaccard), and the pairs of exact copies."""
        group: dict[int, int] = {}
        for c, f in self.exact:
            group[c] = f
        copies: dict[int, list[int]] = {}
        for c, f in self.exact:
            copies.setdefault(f, [f]).append(c)
        out: set[tuple[int, int]] = set()
        for members in copies.values():
            out |= {(x, y) for x in members for y in members if x < y}
        for i, j, _ in self.pairs:
            for x in copies.get(group.get(i, i), [i]):
                for y in copies.get(group.get(j, j), [j]):
                    if x != y:
                        out.add((min(x, y), max(x, y)))
        return out


def find_duplicates(
    texts: Sequence[str],
    params: MinHashParams,
    ids: Sequence[str] | None = None,
    quality: Sequence[float] | None = None,
    exact: bool = True,
    near: bool = True,
    signer: Signer | None = None,
) -> Found:
    """The dedup stage's decision on texts held in memory (tests, the benchmark): the same
    functions the stage runs per shard and per band."""
    signer = signer or Signer(params)
    s = signer.sign(texts)
    n = len(texts)
    gids = np.arange(n, dtype=np.int64)
    ea, eb = (
        exact_groups(s.exact[:, 0], s.exact[:, 1], gids)
        if exact
        else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    )
    pa = pb = np.zeros(0, np.int64)
    js = np.zeros(0, np.float64)
    n_cand = capped = 0
    if near:
        alive = ~s.empty
        group = s.exact[:, 0] if exact else gids.astype(np.uint64)
        parts = []
        for band in range(signer.bands):
            a, b, c = bucket_pairs(s.band_keys[band][alive], group[alive], gids[alive])
            capped += c
            parts.append((a, b))
        ca, cb = distinct_pairs(parts)
        n_cand = len(ca)
        cj = pair_jaccards(ca, cb, s.shingle_set)
        ok = cj >= params.threshold
        pa, pb, js = ca[ok], cb[ok], cj[ok]
    pairs = list(zip(pa.tolist(), pb.tolist(), js.tolist(), strict=True))
    nodes, labels = components(np.concatenate([ea, pa]), np.concatenate([eb, pb]))
    ids = ids if ids is not None else [f"{i:08d}" for i in range(n)]
    quality = quality if quality is not None else [0.0] * n
    members = [
        Member(int(g), ids[g], float(quality[g]), (int(s.exact[g, 0]), int(s.exact[g, 1])))
        for g in nodes.tolist()
    ]
    return Found(
        candidates=n_cand,
        pairs=pairs,
        exact=list(zip(ea.tolist(), eb.tolist(), strict=True)),
        capped_buckets=capped,
        clusters=resolve(labels, members, exact),
    )
