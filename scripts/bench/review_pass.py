"""`datagen review` on a big filter run: 1 worker vs 2, and its text statistics vs datasketch.

The run: ``--docs`` real 8 kB documents (the 393 of scripts/bench/heuristics.py repeated with
distinct ids, built as scripts/bench/filter_scaling.py builds its runs), filtered once by the
real ``datagen run stage=filter`` (2 workers, ``executor.shard_docs=2000``).

1. The whole command, ``datagen review stage=filter`` as a user runs it (a subprocess: reading
   every kept and dropped shard for the counters and the sample, the text statistics over the
   ``review.max_stats_docs`` sample, the page), with ``executor.workers=1`` and ``=2``. The rows
   take turns in each round, and the figures are medians. The two pages must be the same,
   bytes for bytes, apart from the line with the creation time.
2. The text statistics over the same sample (the first ``review.max_stats_docs`` kept texts),
   in this process. The near-duplicate rate by ``pipeline.review.near_dup_rate`` (the dedup
   stage's rule: ``filters.dedup``) is timed against datasketch's ``MinHash`` + ``MinHashLSH``
   (the way the review computed it before). distinct-1/2/3 by ``pipeline.review.distinct_ns``
   (hashed n-grams in numpy) is timed against a Python set of word tuples (the way the review
   did it before). Both pairs must give the same figures.

Run:  flock /work/bench.lock .venv/bin/python scripts/bench/review_pass.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from filter_scaling import make_run, run_filter  # noqa: E402

from filters.dedup import MinHashParams  # noqa: E402
from pipeline.records import Document  # noqa: E402
from pipeline.review import distinct_ns, near_dup_rate  # noqa: E402
from pipeline.runs import read_shards  # noqa: E402

WORD = re.compile(r"\w+")


def datasketch_near_dup(texts: list[str], seed: int, threshold: float) -> float:
    """The share of texts with an LSH neighbour (the review's way before: datasketch)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    sigs = []
    for i, t in enumerate(texts):
        w = WORD.findall(t.lower())
        shingles = {" ".join(w[j : j + 5]) for j in range(max(1, len(w) - 4))}
        m = MinHash(num_perm=128, seed=seed)
        m.update_batch([s.encode() for s in shingles])
        lsh.insert(str(i), m)
        sigs.append(m)
    dup = sum(1 for i, m in enumerate(sigs) if any(k != str(i) for k in lsh.query(m)))
    return dup / len(texts)


def tuple_distinct(texts: list[str], n: int) -> float:
    """distinct-n over sets of word tuples (the review's way before)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for t in texts:
        w = WORD.findall(t.lower())
        grams = list(zip(*(w[i:] for i in range(n)), strict=False))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def review(overrides: list[str], out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "review", "stage=filter", f"review.out={out}"]
        + overrides,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"datagen review failed:\n{r.stderr[-3000:]}")
    return wall


def page(path: Path) -> str:
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)?", "", path.read_text())


def timed(fn, rounds: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=25_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="review-pass-"))
    work.mkdir(parents=True, exist_ok=True)
    base = [f"run.root={work / 'runs'}", "executor.shard_docs=2000"]
    overrides = make_run(work, f"review-{args.docs}", args.docs, base)
    if not (work / "runs" / f"review-{args.docs}" / "filter" / "manifest.json").exists():
        run_filter([*overrides, "executor.workers=2"])
    stage = work / "runs" / f"review-{args.docs}" / "filter"
    kept_files = len(list(stage.glob("part-*"))) + len(list((stage / "dropped").glob("part-*")))
    print(
        f"{args.docs:,} documents, {kept_files} shard files (kept + dropped); "
        f"{os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.2f}"
    )

    rows = {"1 worker": ["executor.workers=1"], "2 workers": ["executor.workers=2"]}
    walls: dict[str, list[float]] = {k: [] for k in rows}
    loads = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, extra in rows.items():
            walls[name].append(review([*overrides, *extra], work / f"{name[0]}.html"))
    same = page(work / "1.html") == page(work / "2.html")
    print(f"load average per round: {', '.join(f'{x:.2f}' for x in loads)}; pages equal: {same}")
    print("| `datagen review stage=filter` | median s | per round s |")
    print("|---|---|---|")
    for name, ts in walls.items():
        per = " / ".join(f"{t:.1f}" for t in ts)
        print(f"| {name} | {statistics.median(ts):.1f} | {per} |")
    if not same:
        raise SystemExit("the 1- and 2-worker pages differ")

    texts = [d.text for d in read_shards(stage, Document)][:5000]
    params = MinHashParams(seed=1)
    new_t, new_v = timed(lambda: near_dup_rate(texts, params), args.rounds)
    old_t, old_v = timed(lambda: datasketch_near_dup(texts, 1, params.threshold), args.rounds)
    dn_t, dn_v = timed(lambda: distinct_ns(texts), args.rounds)
    dt_t, dt_v = timed(lambda: {n: tuple_distinct(texts, n) for n in (1, 2, 3)}, args.rounds)
    print(f"\ntext statistics over {len(texts):,} kept texts (medians of {args.rounds}):")
    print("| statistic | datagen s | value | before s | value | speed-up |")
    print("|---|---|---|---|---|---|")
    print(
        f"| near-duplicate rate (datagen: filters.dedup; before: datasketch LSH) | {new_t:.2f} "
        f"| {new_v:.4f} | {old_t:.2f} | {old_v:.4f} | {old_t / new_t:.1f}x |"
    )
    d_new = ", ".join(f"{v:.4f}" for v in dn_v.values())
    d_old = ", ".join(f"{v:.4f}" for v in dt_v.values())
    print(
        f"| distinct-1/2/3 (datagen: hashed n-grams; before: word tuples) | {dn_t:.2f} | {d_new} "
        f"| {dt_t:.2f} | {d_old} | {dt_t / dn_t:.1f}x |"
    )


if __name__ == "__main__":
    main()
