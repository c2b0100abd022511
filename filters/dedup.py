"""Exact and near-duplicate detection (MinHash LSH with datasketch).

API
---
Exact (hash of normalized text; the first by id is kept)::

    ex = ExactDeduper()
    ex.add(doc_id, text)                # or ex.add_hash(doc_id, exact_hash(text))
    dropped = ex.duplicates()           # {dropped_id: kept_id}; the smallest id in a group is kept
    ex.kept_id(text)                    # id of an indexed doc with this normalized text
    ex.save(folder); ExactDeduper.load(folder)   # exact_hashes.json: {hash: kept_id}

Near-duplicates (word n-gram shingles, MinHash signatures, LSH banding, candidates VERIFIED by
the signatures' estimated Jaccard >= threshold, clusters joined transitively)::

    params = MinHashParams(num_perm=112, ngram=5, threshold=0.8, bands=0, seed=cfg.seed)
    md = MinHashDeduper(params)
    md.add_batch(ids, texts, qualities)    # keeps signatures only, never texts
    md.pairs()                             # [(id_a, id_b, est_jaccard)] verified pairs
    clusters = md.clusters()               # [Cluster(cluster_id, kept_id, members)], size >= 2
    md.duplicates()                        # {dropped_id: (cluster_id, kept_id)}; kept = highest
                                           # quality, ties by smallest id
    md.query(text) / md.query_signature(sig)   # [(indexed_id, est_jaccard)], verified, best first
    md.save(folder); MinHashDeduper.load(folder)   # signatures.npy, ids.json, quality.npy,
                                                   # params.json; the LSH is rebuilt on load
    md.s_curve()                           # {"0.8": P(judged duplicate | exact J=0.8), ...}:
                                           # candidate AND verified (the whole decision)
    md.candidate_curve()                   # {"0.8": P(LSH candidate | J=0.8), ...}: before
                                           # verification, so higher near the threshold

Signatures are datasketch ``affine32`` MinHash values (the same permutations as
``datasketch.MinHash(num_perm, seed)``), computed in numpy for whole batches: each word is
hashed once with xxh3 and n-gram shingle hashes are combined from word hashes.
"""

from __future__ import annotations

import io
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH

from pipeline.errors import DatagenError
from pipeline.records import stable_id
from pipeline.runs import atomic_write_bytes, atomic_write_json, read_json

_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+")
CURVE_JACCARDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)  # where the manifest reports curves
SHINGLE_VERSION = 1  # bump when the shingle hashing changes (saved indexes must match)


# --------------------------------------------------------------------------- exact
def normalize_text(text: str) -> str:
    """NFKC, lower case, whitespace collapsed: trivially different copies hash the same."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_hash(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(normalize_text(text).encode("utf-8"))


class ExactDeduper:
    def __init__(self) -> None:
        self._kept: dict[str, str] = {}  # hash -> smallest id seen
        self._members: dict[str, list[str]] = {}

    def add(self, doc_id: str, text: str) -> str:
        h = exact_hash(text)
        self.add_hash(doc_id, h)
        return h

    def add_hash(self, doc_id: str, h: str) -> None:
        prev = self._kept.get(h)
        if prev is None:
            self._kept[h] = doc_id
            self._members[h] = [doc_id]
        else:
            self._members[h].append(doc_id)
            if doc_id < prev:
                self._kept[h] = doc_id

    def duplicates(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for h, ids in self._members.items():
            kept = self._kept[h]
            out.update({i: kept for i in ids if i != kept})
        return out

    def kept_id(self, text: str) -> str | None:
        return self._kept.get(exact_hash(text))

    def __len__(self) -> int:
        return len(self._kept)

    def save(self, folder: Path, only: set[str] | None = None) -> None:
        """Write {hash: kept_id}; ``only`` restricts to hashes whose kept id is in the set."""
        data = {h: i for h, i in self._kept.items() if only is None or i in only}
        atomic_write_json(folder / "exact_hashes.json", data)

    @classmethod
    def load(cls, folder: Path) -> ExactDeduper:
        path = folder / "exact_hashes.json"
        if not path.exists():
            raise DatagenError(f"{path}: exact-dedup hash set not found")
        ex = cls()
        for h, i in read_json(path).items():
            ex.add_hash(i, h)
        return ex


# --------------------------------------------------------------------------- MinHash
@dataclass(frozen=True)
class MinHashParams:
    num_perm: int = 112
    ngram: int = 5
    threshold: float = 0.8
    bands: int = 0  # 0: derive from threshold
    seed: int = 1234
    min_recall: float = 0.97  # derived bands: P(candidate | J = threshold) at least this

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
    a candidate; it is a duplicate only if verification passes too, see decision_probability)."""
    return 1.0 - (1.0 - np.power(j, rows)) ** bands


def min_agreements(threshold: float, num_perm: int) -> int:
    """The fewest agreeing signature positions k with k / num_perm >= threshold (the float
    comparison verification makes)."""
    return next(k for k in range(num_perm + 1) if k / num_perm >= threshold)


def _binom_pmf(n: int, p: float) -> np.ndarray:
    return np.array([math.comb(n, k) * p**k * (1.0 - p) ** (n - k) for k in range(n + 1)])


def decision_probability(j: float, num_perm: int, bands: int, rows: int, threshold: float) -> float:
    """Probability that a pair with exact Jaccard ``j`` is judged a duplicate: an LSH candidate
    (some band agrees in all its rows) AND estimated Jaccard (agreeing positions / num_perm)
    >= ``threshold``. Each of the num_perm positions agrees independently with probability j
    (the MinHash property); exact, by a DP over bands tracking the number of agreements so far
    and whether a band has matched. Positions outside the bands count toward the estimate."""
    band = _binom_pmf(rows, j)  # agreements within one band
    no_match = np.zeros(num_perm + 1)  # [k]: P(k agreements so far, no band matched yet)
    matched = np.zeros(num_perm + 1)  # [k]: P(k agreements so far, some band matched)
    no_match[0] = 1.0
    for _ in range(bands):
        full = np.zeros(num_perm + 1)
        full[rows:] = no_match[: num_perm + 1 - rows] * band[rows]
        matched = np.convolve(matched, band)[: num_perm + 1] + full
        no_match = np.convolve(no_match, band[:rows])[: num_perm + 1]
    rest = num_perm - bands * rows
    matched = np.convolve(matched, _binom_pmf(rest, j))[: num_perm + 1]
    return float(matched[min_agreements(threshold, num_perm) :].sum())


def derive_bands_rows(threshold: float, num_perm: int, min_recall: float = 0.97) -> tuple[int, int]:
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


def _fmix32(h: np.ndarray) -> np.ndarray:
    # MurmurHash3 finalizer, as datasketch's affine32 scheme pre-mixes its input
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class _WordHashes:
    """xxh3-64 of each word, memoized (word frequencies are Zipfian; the cache is bounded)."""

    def __init__(self, max_size: int = 1 << 20) -> None:
        self.max_size = max_size
        self._cache: dict[str, int] = {}

    def _miss(self, w: str) -> int:
        h = xxhash.xxh3_64_intdigest(w.encode("utf-8"))
        if len(self._cache) >= self.max_size:
            self._cache.clear()
        self._cache[w] = h
        return h

    def __call__(self, text: str) -> np.ndarray:
        words = _TOKEN.findall(text.lower())
        get = self._cache.get
        miss = self._miss
        return np.fromiter([get(w) or miss(w) for w in words], dtype=np.uint64, count=len(words))


class Shingler:
    """Word n-gram shingle hashes (uint32), one array per text, built in numpy."""

    def __init__(self, ngram: int, seed: int) -> None:
        self.ngram = ngram
        self._words = _WordHashes()
        rng = np.random.default_rng(seed)
        odd = rng.integers(1, 2**63, size=ngram, dtype=np.uint64) * np.uint64(2)
        self._mult = odd + np.uint64(1)

    def _combine(self, wh: np.ndarray, n: int, count: int) -> np.ndarray:
        acc = wh[0:count] * self._mult[0]
        for k in range(1, n):
            acc = acc + wh[k : k + count] * self._mult[k]
        return (acc >> np.uint64(32)).astype(np.uint32)

    def batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All shingle hashes of ``texts`` concatenated, and each text's start offset
        (offsets has len(texts)+1 entries). A text shorter than n words is one shingle; an empty
        text has none."""
        n = self.ngram
        parts = [self._words(t) for t in texts]
        lens = np.array([len(p) for p in parts], dtype=np.int64)
        counts = np.where(lens >= n, lens - n + 1, np.minimum(lens, 1))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        if not parts or offsets[-1] == 0:
            return np.zeros(0, dtype=np.uint32), offsets
        allw = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        starts = np.zeros(len(texts), dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        out = np.empty(int(offsets[-1]), dtype=np.uint32)
        if len(allw) >= n:
            sh = self._combine(allw, n, len(allw) - n + 1)
            long_ = lens >= n
            # valid window starts: inside one text, not crossing into the next
            idx = (
                np.concatenate(
                    [np.arange(s, s + c) for s, c in zip(starts[long_], counts[long_], strict=True)]
                )
                if long_.any()
                else np.zeros(0, dtype=np.int64)
            )
            pos = (
                np.concatenate(
                    [
                        np.arange(o, o + c)
                        for o, c in zip(offsets[:-1][long_], counts[long_], strict=True)
                    ]
                )
                if long_.any()
                else np.zeros(0, dtype=np.int64)
            )
            out[pos] = sh[idx]
        for i in np.flatnonzero((lens > 0) & (lens < n)):
            out[offsets[i]] = self._combine(parts[i], int(lens[i]), 1)[0]
        return out, offsets


class MinHashDeduper:
    """MinHash signatures + LSH index over documents; see the module docstring."""

    def __init__(self, params: MinHashParams | None = None) -> None:
        self.params = params or MinHashParams()
        self.bands, self.rows = self.params.bands_rows()
        ref = MinHash(num_perm=self.params.num_perm, seed=self.params.seed, scheme="affine32")
        self._perms = ref.permutations  # shape (2, num_perm) uint32
        self._a = self._perms[0].astype(np.uint32)
        self._b = self._perms[1].astype(np.uint32)
        self._shingler = Shingler(self.params.ngram, self.params.seed)
        self.lsh = MinHashLSH(num_perm=self.params.num_perm, params=(self.bands, self.rows))
        self.ids: list[str] = []
        self._sigs: list[np.ndarray] = []
        self._sig_matrix: np.ndarray | None = None
        self.quality: list[float] = []
        self._empty: set[int] = set()
        self._pos: dict[str, int] = {}

    # ---- signatures
    def signatures(self, texts: Sequence[str], max_cells: int = 1 << 20) -> np.ndarray:
        """MinHash signatures (len(texts) x num_perm, uint32) for a batch of texts."""
        sh, offsets = self._shingler.batch(texts)
        p = self.params.num_perm
        out = np.full((len(texts), p), np.uint32(0xFFFFFFFF), dtype=np.uint32)
        if len(sh) == 0:
            return out
        mixed = _fmix32(sh)
        counts = np.diff(offsets)
        nonempty = np.flatnonzero(counts > 0)
        # process whole texts in chunks of at most max_cells matrix cells
        step = max(1, max_cells // p)
        i = 0
        while i < len(nonempty):
            j = i
            total = 0
            while j < len(nonempty) and (total == 0 or total + counts[nonempty[j]] <= step):
                total += int(counts[nonempty[j]])
                j += 1
            docs = nonempty[i:j]
            lo, hi = int(offsets[docs[0]]), int(offsets[docs[-1] + 1])
            phv = np.multiply(mixed[lo:hi, None], self._a[None, :])
            phv += self._b[None, :]
            out[docs] = np.minimum.reduceat(phv, offsets[docs] - lo, axis=0)
            i = j
        return out

    def signature(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]

    def _minhash(self, sig: np.ndarray) -> MinHash:
        return MinHash(
            num_perm=self.params.num_perm,
            seed=self.params.seed,
            hashvalues=sig,
            permutations=self._perms,
            scheme="affine32",
        )

    # ---- index
    def add(self, doc_id: str, text: str, quality: float = 0.0) -> None:
        self.add_batch([doc_id], [text], [quality])

    def add_batch(
        self, ids: Sequence[str], texts: Sequence[str], qualities: Sequence[float] | None = None
    ) -> None:
        sigs = self.signatures(texts)
        empty = [len(_TOKEN.findall(t)) == 0 for t in texts]
        self.add_signatures(ids, sigs, qualities, empty)

    def add_signatures(
        self,
        ids: Sequence[str],
        sigs: np.ndarray,
        qualities: Sequence[float] | None = None,
        empty: Sequence[bool] | None = None,
    ) -> None:
        qualities = qualities if qualities is not None else [0.0] * len(ids)
        empty = empty if empty is not None else [False] * len(ids)
        with self.lsh.insertion_session() as session:
            for doc_id, sig, q, e in zip(ids, sigs, qualities, empty, strict=True):
                if doc_id in self._pos:
                    raise DatagenError(f"dedup: document id {doc_id!r} added twice")
                k = len(self.ids)
                self._pos[doc_id] = k
                self.ids.append(doc_id)
                self._sigs.append(np.asarray(sig, dtype=np.uint32))
                self.quality.append(float(q))
                if e:  # no words: never a duplicate of anything
                    self._empty.add(k)
                else:
                    session.insert(k, self._minhash(self._sigs[-1]), check_duplication=False)
        self._sig_matrix = None

    def __len__(self) -> int:
        return len(self.ids)

    def _matrix(self) -> np.ndarray:
        if self._sig_matrix is None or len(self._sig_matrix) != len(self._sigs):
            self._sig_matrix = (
                np.stack(self._sigs)
                if self._sigs
                else np.zeros((0, self.params.num_perm), dtype=np.uint32)
            )
        return self._sig_matrix

    def _verified(self, sig: np.ndarray, exclude: int = -1) -> list[tuple[int, float]]:
        cands = [k for k in self.lsh.query(self._minhash(sig)) if k != exclude]
        if not cands:
            return []
        m = self._matrix()
        est = np.count_nonzero(m[cands] == sig[None, :], axis=1) / self.params.num_perm
        keep = est >= self.params.threshold
        return sorted(
            ((int(k), float(e)) for k, e, ok in zip(cands, est, keep, strict=True) if ok),
            key=lambda x: (-x[1], self.ids[x[0]]),
        )

    def query_signature(self, sig: np.ndarray) -> list[tuple[str, float]]:
        """Indexed documents whose estimated Jaccard with ``sig`` is >= threshold, best first."""
        return [(self.ids[k], e) for k, e in self._verified(np.asarray(sig, dtype=np.uint32))]

    def query(self, text: str) -> list[tuple[str, float]]:
        if not _TOKEN.search(text):
            return []
        return self.query_signature(self.signature(text))

    # ---- clusters
    def _pairs(self) -> list[tuple[int, int, float]]:
        m = self._matrix()
        out = []
        for k in range(len(self.ids)):
            if k in self._empty:
                continue
            out += [(k, j, e) for j, e in self._verified(m[k], exclude=k) if k < j]
        return out

    def pairs(self) -> list[tuple[str, str, float]]:
        """Verified duplicate pairs (id_a < id_b by index order) with estimated Jaccard."""
        return [(self.ids[a], self.ids[b], e) for a, b, e in self._pairs()]

    def clusters(self) -> list[Cluster]:
        """Connected components (size >= 2) of verified duplicate pairs."""
        parent = list(range(len(self.ids)))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for k, j, _ in self._pairs():
            a, b = find(k), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
        groups: dict[int, list[int]] = {}
        for k in range(len(self.ids)):
            groups.setdefault(find(k), []).append(k)
        out = []
        for members in groups.values():
            if len(members) < 2:
                continue
            ids = sorted(self.ids[k] for k in members)
            kept = min(members, key=lambda k: (-self.quality[k], self.ids[k]))
            out.append(
                Cluster(
                    cluster_id=stable_id(*ids, prefix="mh-"), kept_id=self.ids[kept], members=ids
                )
            )
        return sorted(out, key=lambda c: c.kept_id)

    def duplicates(self) -> dict[str, tuple[str, str]]:
        """{dropped_id: (cluster_id, kept_id)} for every non-kept cluster member."""
        out = {}
        for c in self.clusters():
            for i in c.members:
                if i != c.kept_id:
                    out[i] = (c.cluster_id, c.kept_id)
        return out

    def candidate_curve(self, js: Iterable[float] = CURVE_JACCARDS) -> dict[str, float]:
        """{J: P(a pair at exact Jaccard J becomes an LSH candidate)}, before verification."""
        return {
            f"{j:g}": round(float(candidate_probability(j, self.bands, self.rows)), 4) for j in js
        }

    def s_curve(self, js: Iterable[float] = CURVE_JACCARDS) -> dict[str, float]:
        """{J: P(a pair at exact Jaccard J is judged a duplicate)}: the whole decision, LSH
        candidate and verified estimated Jaccard >= threshold."""
        p = self.params
        return {
            f"{j:g}": round(
                decision_probability(j, p.num_perm, self.bands, self.rows, p.threshold), 4
            )
            for j in js
        }

    # ---- persistence
    def save(self, folder: Path, only: set[str] | None = None) -> None:
        """Write signatures + ids + quality + params (never texts); ``only`` keeps those ids."""
        keep = [k for k, i in enumerate(self.ids) if only is None or i in only]
        m = self._matrix()[keep] if keep else np.zeros((0, self.params.num_perm), np.uint32)
        buf = io.BytesIO()
        np.save(buf, m)
        atomic_write_bytes(folder / "signatures.npy", buf.getvalue())
        buf = io.BytesIO()
        np.save(buf, np.array([self.quality[k] for k in keep], dtype=np.float64))
        atomic_write_bytes(folder / "quality.npy", buf.getvalue())
        atomic_write_json(
            folder / "ids.json",
            {
                "ids": [self.ids[k] for k in keep],
                "empty": [n for n, k in enumerate(keep) if k in self._empty],
            },
        )
        atomic_write_json(
            folder / "params.json",
            {
                **asdict(self.params),
                "bands": self.bands,
                "rows": self.rows,
                "scheme": "affine32",
                "shingle_version": SHINGLE_VERSION,
            },
        )

    @classmethod
    def load(cls, folder: Path) -> MinHashDeduper:
        pp = folder / "params.json"
        if not pp.exists():
            raise DatagenError(f"{pp}: MinHash index not found (run the filter stage first)")
        meta = read_json(pp)
        if meta.get("shingle_version") != SHINGLE_VERSION or meta.get("scheme") != "affine32":
            raise DatagenError(f"{pp}: index was built by another datagen version; rebuild it")
        fields = {
            k: meta[k] for k in ("num_perm", "ngram", "threshold", "bands", "seed", "min_recall")
        }
        md = cls(MinHashParams(**fields))
        sigs = np.load(folder / "signatures.npy")
        quality = np.load(folder / "quality.npy")
        idx = read_json(folder / "ids.json")
        if len(sigs) != len(idx["ids"]) or len(quality) != len(sigs):
            raise DatagenError(f"{folder}: signatures, ids and quality lengths differ")
        empty = set(idx.get("empty", []))
        md.add_signatures(
            idx["ids"], sigs, quality.tolist(), [k in empty for k in range(len(sigs))]
        )
        return md


@dataclass(frozen=True)
class Cluster:
    cluster_id: str
    kept_id: str
    members: list[str]
