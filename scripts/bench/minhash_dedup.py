"""MinHash near-dedup benchmark on the real web text in ../shared/data.

Documents: the main text (trafilatura) of every HTML response in the Common Crawl / web-archive
WARCs, the CCNet documents and the WikiText-2 test articles; plus, for each, one copy with a
known fraction of words replaced (0.5% to 15%, seeded) so that true Jaccard spans both sides of
the 0.8 threshold. Methods, 112 permutations, same documents, one run:

  datagen       filters.dedup.MinHashDeduper: batched numpy signatures + datasketch LSH + verify
  naive         a per-document datasketch.MinHash loop (update per shingle) + the same LSH/verify
  ds_bulk_xxh   datasketch MinHash.bulk with an xxhash hashfunc + the same LSH/verify
  rensa         rensa.RMinHash (if installed: run from the /tmp/bench-venv)

Quality: median (and worst) precision / recall over seeds 1..N of the verified pairs against
brute-force exact Jaccard of the word 5-gram shingle sets, at J >= 0.8. (The web pages hold
dense clusters of near-identical pages, so one seed's figures swing by a few points.)

Run (datagen's venv, or the bench venv that also has rensa):
    python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install -e /work/main rensa
    /tmp/bench-venv/bin/python scripts/bench/minhash_dedup.py --seeds 5
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from filters_testdata import ccnet_docs, web_pages, wikitext_articles  # noqa: E402

from filters.dedup import MinHashDeduper, MinHashParams  # noqa: E402

TOKEN = re.compile(r"\w+")
NUM_PERM, NGRAM, THRESHOLD, SEED = 112, 5, 0.8, 1234  # SEED: the corpus edits


def corpus() -> list[str]:
    base = web_pages(()) + ccnet_docs() + wikitext_articles()
    rng = random.Random(SEED)
    vocab = " ".join(base).split()
    out = list(base)
    for i, t in enumerate(base):
        words = t.split()
        rate = [0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.15][i % 7]
        for k in rng.sample(range(len(words)), max(1, int(rate * len(words)))):
            words[k] = rng.choice(vocab)
        out.append(" ".join(words))
    return out


def shingle_strings(text: str) -> list[str]:
    w = TOKEN.findall(text.lower())
    if len(w) < NGRAM:
        return [" ".join(w)] if w else []
    return [" ".join(w[i : i + NGRAM]) for i in range(len(w) - NGRAM + 1)]


def truth_pairs(texts: list[str]) -> set[tuple[int, int]]:
    sets = [set(shingle_strings(t)) for t in texts]
    out = set()
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            x, y = sets[a], sets[b]
            if x and y and len(x & y) / len(x | y) >= THRESHOLD:
                out.add((a, b))
    return out


def lsh_pairs(
    sigs: list[np.ndarray], make: Callable[[np.ndarray], object], bands: int, rows: int
) -> set[tuple[int, int]]:
    """The same LSH + verification for every method (estimated Jaccard >= threshold)."""
    lsh = MinHashLSH(num_perm=NUM_PERM, params=(bands, rows))
    objs = [make(s) for s in sigs]
    for i, o in enumerate(objs):
        lsh.insert(i, o, check_duplication=False)
    out = set()
    for i, o in enumerate(objs):
        for j in lsh.query(o):
            if i < j and np.count_nonzero(sigs[i] == sigs[j]) / NUM_PERM >= THRESHOLD:
                out.add((i, j))
    return out


def run_datagen(texts: list[str], seed: int) -> set[tuple[int, int]]:
    md = MinHashDeduper(
        MinHashParams(num_perm=NUM_PERM, ngram=NGRAM, threshold=THRESHOLD, seed=seed)
    )
    ids = [f"{i:06d}" for i in range(len(texts))]
    md.add_batch(ids, texts)
    return {(int(a), int(b)) for a, b, _ in md.pairs()}


def _bands() -> tuple[int, int]:
    return MinHashParams(num_perm=NUM_PERM, threshold=THRESHOLD).bands_rows()


def run_naive(texts: list[str], seed: int) -> set[tuple[int, int]]:
    sigs = []
    for t in texts:
        m = MinHash(num_perm=NUM_PERM, seed=seed)
        for s in shingle_strings(t):
            m.update(s.encode("utf-8"))
        sigs.append(m.hashvalues)
    perms = MinHash(num_perm=NUM_PERM, seed=seed).permutations
    b, r = _bands()
    return lsh_pairs(
        sigs,
        lambda s: MinHash(num_perm=NUM_PERM, hashvalues=s, permutations=perms, scheme="affine32"),
        b,
        r,
    )


def run_ds_bulk(texts: list[str], seed: int) -> set[tuple[int, int]]:
    ms = MinHash.bulk(
        [[s.encode("utf-8") for s in shingle_strings(t)] for t in texts],
        num_perm=NUM_PERM,
        seed=seed,
        hashfunc=xxhash.xxh32_intdigest,
    )
    perms = ms[0].permutations
    b, r = _bands()
    return lsh_pairs(
        [m.hashvalues for m in ms],
        lambda s: MinHash(num_perm=NUM_PERM, hashvalues=s, permutations=perms, scheme="affine32"),
        b,
        r,
    )


def run_rensa(texts: list[str], seed: int) -> set[tuple[int, int]]:
    from rensa import RMinHash

    sigs = []
    for t in texts:
        m = RMinHash(num_perm=NUM_PERM, seed=seed)
        m.update(shingle_strings(t))
        sigs.append(np.asarray(m.digest(), dtype=np.uint32))
    b, r = _bands()
    perms = MinHash(num_perm=NUM_PERM, seed=seed).permutations  # unused by LSH / jaccard
    return lsh_pairs(
        sigs,
        lambda s: MinHash(num_perm=NUM_PERM, hashvalues=s, permutations=perms, scheme="affine32"),
        b,
        r,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5, help="runs per method, seeds 1..N")
    args = ap.parse_args()
    texts = corpus()
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    truth = truth_pairs(texts)
    methods: dict[str, Callable[[list[str], int], set[tuple[int, int]]]] = {
        "datagen": run_datagen,
        "naive": run_naive,
        "ds_bulk_xxh": run_ds_bulk,
    }
    try:
        import rensa  # noqa: F401

        methods["rensa"] = run_rensa
    except ImportError:
        print("rensa not installed: skipped (run from /tmp/bench-venv)")
    print(
        f"{len(texts)} docs, {mb:.2f} MB, {len(truth)} true pairs at J >= {THRESHOLD}; "
        f"bands x rows = {_bands()}; medians over seeds 1..{args.seeds}"
    )
    rows = []
    for name, fn in methods.items():
        times, ps, rs = [], [], []
        for seed in range(1, args.seeds + 1):
            t0 = time.perf_counter()
            found = fn(texts, seed)
            times.append(time.perf_counter() - t0)
            tp = len(found & truth)
            ps.append(tp / len(found) if found else 0.0)
            rs.append(tp / len(truth) if truth else 0.0)
        med = statistics.median(times)
        p, r = statistics.median(ps), statistics.median(rs)
        rows.append((name, med, len(texts) / med, mb / med, p, r, min(ps), min(rs)))
    base = next(x for x in rows if x[0] == "naive")[1]
    print("| method | median s | docs/s | MB/s | vs naive | precision (min) | recall (min) |")
    print("|---|---|---|---|---|---|---|")
    for name, med, dps, mbs, p, r, pmin, rmin in rows:
        print(
            f"| {name} | {med:.3f} | {dps:,.0f} | {mbs:.2f} | {base / med:.1f}x | "
            f"{p:.3f} ({pmin:.3f}) | {r:.3f} ({rmin:.3f}) |"
        )


if __name__ == "__main__":
    main()
