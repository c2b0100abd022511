"""MinHash near-dedup benchmark on the real web text in ../shared/data: datagen vs datasketch
vs rensa, side by side, same documents, same machine, interleaved rounds.

Documents: the main text (trafilatura) of every HTML response in the Common Crawl / web-archive
WARCs, the CCNet documents and the WikiText-2 test articles; plus, for each, one copy with a
known fraction of words replaced (0.5% to 15%, seeded) so that true Jaccard spans both sides of
the 0.8 threshold. Word 5-gram shingles, 112 permutations, threshold 0.8. Methods:

  datagen        filters.dedup.find_duplicates: the dedup stage's decision in memory (shingle
                 sets + signatures + band keys in numpy, candidates from band buckets, verified
                 by the EXACT Jaccard of the shingle sets, clusters)
  datagen stage  the real dedup stage (pipeline.stages.dedup.run, one in-process worker) on the
                 same documents as a filter output: sign, buckets, verify, reduce, apply, with
                 the zstd shards read and written (same decision as datagen)
  datasketch     MinHash.bulk (xxh32 hashfunc) + MinHashLSH with datagen's 17 x 6 bands +
                 the estimated Jaccard >= 0.8 of each candidate (so only verification differs)
  datasketch (own bands)  the same with MinHashLSH(threshold=0.8) choosing its bands (9 x 12)
  rensa          RMinHash.from_token_sets (Rust, full-set R-MinHash) + RMinHashLSH, 17 x 6 bands
                 (102 permutations: rensa needs num_perm = bands x rows) + the estimated
                 Jaccard >= 0.8 of each candidate

Quality: precision / recall of the pairs each method judges duplicates against brute-force
exact Jaccard of the word 5-gram shingle sets (J >= 0.8), median and worst over the rounds
(round k uses seed k: another set of permutations). Speed: median wall time over the rounds,
the methods' order rotated each round (interleaved), documents per second of the whole
decision (signatures + candidates + verification). rensa is the optional `bench` extra.

Run (take the lock: other jobs share this machine):
    flock /work/bench.lock .venv/bin/python scripts/bench/minhash_dedup.py --rounds 7
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
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

from filters.dedup import MinHashParams, find_duplicates  # noqa: E402

TOKEN = re.compile(r"\w+")
NUM_PERM, NGRAM, THRESHOLD, SEED = 112, 5, 0.8, 1234  # SEED: the corpus edits
BANDS_ROWS = MinHashParams(num_perm=NUM_PERM, threshold=THRESHOLD).bands_rows()  # 17 x 6
Pairs = set[tuple[int, int]]


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


def truth_pairs(texts: list[str]) -> tuple[Pairs, dict[tuple[int, int], float]]:
    """Pairs at exact Jaccard >= THRESHOLD, and the Jaccard of every pair above 0.5."""
    sets = [set(shingle_strings(t)) for t in texts]
    out, js = set(), {}
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            x, y = sets[a], sets[b]
            if not x or not y:
                continue
            j = len(x & y) / len(x | y)
            if j > 0.5:
                js[(a, b)] = j
            if j >= THRESHOLD:
                out.add((a, b))
    return out, js


def run_datagen(texts: list[str], seed: int) -> Pairs:
    found = find_duplicates(
        texts, MinHashParams(num_perm=NUM_PERM, ngram=NGRAM, threshold=THRESHOLD, seed=seed)
    )
    return found.judged_pairs()


def _estimate_verified(sigs: np.ndarray, cands: list[list[int]], num_perm: int) -> Pairs:
    """The candidate pairs whose estimated Jaccard (agreeing positions) is >= THRESHOLD."""
    out = set()
    for i, js in enumerate(cands):
        js = [j for j in js if j > i]
        if js:
            est = np.count_nonzero(sigs[js] == sigs[i][None, :], axis=1) / num_perm
            out |= {(i, j) for j, e in zip(js, est, strict=True) if e >= THRESHOLD}
    return out


def _datasketch(texts: list[str], seed: int, lsh: MinHashLSH) -> Pairs:
    sets = [shingle_strings(t) for t in texts]
    ms = MinHash.bulk(
        [[s.encode("utf-8") for s in sh] for sh in sets],
        num_perm=NUM_PERM,
        seed=seed,
        hashfunc=xxhash.xxh32_intdigest,
    )
    with lsh.insertion_session() as session:
        for i, m in enumerate(ms):
            if sets[i]:
                session.insert(i, m, check_duplication=False)
    sigs = np.stack([m.hashvalues for m in ms])
    return _estimate_verified(sigs, [lsh.query(m) for m in ms], NUM_PERM)


def run_datasketch(texts: list[str], seed: int) -> Pairs:
    """datasketch with datagen's bands x rows (17 x 6): only the verification differs."""
    return _datasketch(texts, seed, MinHashLSH(num_perm=NUM_PERM, params=BANDS_ROWS))


def run_datasketch_own(texts: list[str], seed: int) -> Pairs:
    """datasketch as it comes: MinHashLSH(threshold=0.8) picks its own bands x rows."""
    return _datasketch(texts, seed, MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM))


def run_rensa(texts: list[str], seed: int) -> Pairs:
    """rensa with datagen's bands x rows: 17 bands of 6 (rensa needs num_perm = bands x rows,
    so 102 permutations, the ones datagen's bands read too)."""
    from rensa import RMinHash, RMinHashLSH

    b, r = BANDS_ROWS
    objs = RMinHash.from_token_sets([shingle_strings(t) for t in texts], b * r, seed)
    lsh = RMinHashLSH(threshold=THRESHOLD, num_perm=b * r, num_bands=b)
    lsh.insert_many(objs)
    sigs = np.array([o.digest() for o in objs], dtype=np.uint32)
    return _estimate_verified(sigs, lsh.query_all(objs), b * r)


class StageRunner:
    """The real dedup stage on the corpus written as a finished filter stage's output."""

    def __init__(self, texts: list[str]) -> None:
        from pipeline.records import Document
        from pipeline.runs import Run
        from pipeline.shards import RecordWriter

        self.root = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
        self.run = Run(self.root, "bench")
        with RecordWriter(self.run.stage_dir("filter") / "part-00000.jsonl.zst") as w:
            for i, t in enumerate(texts):
                w.write(Document(id=f"d{i:06d}", text=t))
        self.run.write_manifest("filter", {"stage": "filter", "status": "finished"})

    def __call__(self, texts: list[str], seed: int) -> Pairs:
        from rich.console import Console

        from pipeline.config import load_config
        from pipeline.stages import dedup

        shutil.rmtree(self.run.path / "dedup", ignore_errors=True)
        cfg = load_config([f"run.root={self.root}", "run.name=bench", f"seed={seed}"])
        cfg.executor.workers = 1
        dedup.run(cfg, self.run, Console(quiet=True))
        return set()  # the decision is datagen's (find_duplicates); only the time counts

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (seeds 1..N)")
    args = ap.parse_args()
    texts = corpus()
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    truth, js = truth_pairs(texts)
    stage = StageRunner(texts)
    methods: dict[str, Callable[[list[str], int], Pairs]] = {
        "datagen": run_datagen,
        "datagen stage": stage,
        "datasketch": run_datasketch,
        "datasketch (own bands)": run_datasketch_own,
    }
    try:
        import rensa  # noqa: F401

        methods["rensa"] = run_rensa
    except ImportError:
        print("rensa not installed: skipped (pip install -e '.[bench]')")
    near = [j for j in js.values() if THRESHOLD <= j < 0.85]
    print(
        f"{len(texts)} docs, {mb:.2f} MB, {len(truth)} true pairs at J >= {THRESHOLD} "
        f"({len(near)} at 0.80-0.85); {args.rounds} interleaved rounds; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    quality: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            found = methods[name](texts, r + 1)
            times[name].append(time.perf_counter() - t0)
            if name == "datagen stage":
                continue
            tp = len(found & truth)
            hit_near = sum(1 for p in found & truth if js[p] < 0.85)
            quality[name].append(
                (
                    tp / len(found) if found else 0.0,
                    tp / len(truth) if truth else 0.0,
                    hit_near / len(near) if near else 0.0,
                )
            )
    stage.close()
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(
        "| method | median s | docs/s | MB/s | precision (worst) | recall (worst) "
        "| recall at J 0.80-0.85 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        med = statistics.median(times[name])
        q = quality[name] or quality["datagen"]
        p = statistics.median(x[0] for x in q)
        rc = statistics.median(x[1] for x in q)
        rn = statistics.median(x[2] for x in q)
        worst_p, worst_r = min(x[0] for x in q), min(x[1] for x in q)
        print(
            f"| {name} | {med:.3f} | {len(texts) / med:,.0f} | {mb / med:.2f} | "
            f"{p:.3f} ({worst_p:.3f}) | {rc:.3f} ({worst_r:.3f}) | {rn:.3f} |"
        )


if __name__ == "__main__":
    main()
