"""fastText quality-classifier file size and held-out F1: fastText's defaults (2,000,000 hash
buckets x dim 64, float ``.bin``) vs product quantization (``.ftz``, -qnorm -retrain -cutoff
100000, the default), and, for comparison, hash buckets sized to the data (4 per distinct word
bigram of the training text, float).

Real labelled set, as in tests/test_classifier.py: OpenStax textbook pieces (positive) vs the
main text of real Common Crawl / dolma WARC pages (negative), 2:1; and 100-label subsets (about
what the annotate stage gives). Each configuration is trained through
``filters.classifier.train_classifier`` (the train_classifier stage's code) on seeds 1..N, each
with its own shuffle of the data and its stratified 30% held-out split; F1 at P(positive) >=
0.5. A run that diverges (fastText "Encountered NaN", training or scoring) is counted, not
averaged.

Run:  flock /work/bench.lock .venv/bin/python scripts/bench/classifier_size.py
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from filters_testdata import chunks, openstax_modules, web_pages  # noqa: E402

from filters.classifier import clean_text, stratified_split, train_classifier  # noqa: E402
from pipeline.config import ClassifierConfig  # noqa: E402
from pipeline.errors import DatagenError  # noqa: E402

CONFIGS = {
    "before: fastText defaults, float (.bin)": {"quantize": False},
    "after: quantized (.ftz), the default": {},
    "buckets sized to the data (4 per bigram), float": {"quantize": False, "bucket": "data"},
}


def labelled(n: int | None, seed: int) -> tuple[list[str], list[bool]]:
    pos = [c for m in openstax_modules() for c in chunks(m["text"])]
    neg = [c for t in web_pages() for c in chunks(t)]
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    pos = pos[: len(neg) * 2]
    if n:
        pos, neg = pos[: n * 2 // 3], neg[: n - n * 2 // 3]
    return pos + neg, [True] * len(pos) + [False] * len(neg)


def data_bucket(texts: list[str], labels: list[bool], seed: int) -> int:
    """4 buckets per distinct word bigram of the training split (fastText adds ``</s>``)."""
    train, _ = stratified_split(labels, 0.3, seed)
    bigrams = set()
    for i in train:
        w = clean_text(texts[i]).split() + ["</s>"]
        bigrams.update(zip(w, w[1:], strict=False))
    return 4 * len(bigrams)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    print(
        "| labels | configuration | buckets | diverged | file MB | held-out F1 mean (min-max) "
        "| train s |"
    )
    print("|---:|---|---:|---:|---:|---|---:|")
    for n in (None, 100):
        for name, over in CONFIGS.items():
            f1, size, secs, buckets, failed = [], [], [], [], 0
            for seed in range(1, args.seeds + 1):
                texts, labels = labelled(n, seed)
                kw = dict(over)
                if kw.get("bucket") == "data":
                    kw["bucket"] = data_bucket(texts, labels, seed)
                cfg = ClassifierConfig(test_fraction=0.3, **kw)
                buckets.append(cfg.bucket)
                with tempfile.TemporaryDirectory() as d:
                    t0 = time.perf_counter()
                    try:
                        m = train_classifier(texts, labels, Path(d) / "m", cfg, seed=seed)
                    except DatagenError:  # fastText diverged ("Encountered NaN") training or
                        # scoring the held-out split
                        failed += 1
                        continue
                    secs.append(time.perf_counter() - t0)
                f1.append(m["heldout"]["f1"])
                size.append(m["model_bytes"] / 1e6)
            stats = (
                f"{statistics.mean(size):.2f} | {statistics.mean(f1):.4f} "
                f"({min(f1):.4f}-{max(f1):.4f}) | {statistics.median(secs):.2f}"
                if f1
                else "- | - | -"
            )
            print(
                f"| {len(texts)} | {name} | {min(buckets):,}-{max(buckets):,} | "
                f"{failed} of {args.seeds} | {stats} |"
            )


if __name__ == "__main__":
    main()
