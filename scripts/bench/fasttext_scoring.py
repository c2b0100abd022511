"""fastText quality-classifier scoring throughput on real text, one core.

A model is trained on the spot (OpenStax textbook pieces vs Common Crawl page text, as in
tests/test_classifier.py), then ``QualityClassifier.predict_proba`` scores:
  - whole documents: every WARC page (trafilatura text), CCNet doc, WikiText article, OpenStax
    module;
  - 500-char pieces of the same text (closer to a short synthetic exercise);
batched (the filter stage's path) and, for comparison, one ``model.predict`` call per document.

Run:  .venv/bin/python scripts/bench/fasttext_scoring.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from filters_testdata import (  # noqa: E402
    ccnet_docs,
    chunks,
    openstax_modules,
    web_pages,
    wikitext_articles,
)

from filters.classifier import QualityClassifier, clean_text, train_classifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    web = web_pages(())
    mods = [m["text"] for m in openstax_modules()]
    docs = web + ccnet_docs() + wikitext_articles() + mods
    pieces = [c for t in docs for c in chunks(t, 500)]
    pos = [c for t in mods for c in chunks(t)]
    neg = [c for t in web for c in chunks(t)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.bin"
        train_classifier(pos + neg, [True] * len(pos) + [False] * len(neg), path, seed=1)
        clf = QualityClassifier(path)
        print(
            f"one core; model dim {clf.model.get_dimension()}, wordNgrams 2; "
            f"median of {args.repeats}"
        )
        print("| input | method | docs | MB | median s | docs/s | MB/s |")
        print("|---|---|---|---|---|---|---|")
        for label, texts in (("whole documents", docs), ("500-char pieces", pieces)):
            mb = sum(len(t.encode()) for t in texts) / 1e6
            for method in ("batched predict_proba", "per-doc predict"):
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    if method.startswith("batched"):
                        clf.predict_proba(texts)
                    else:
                        for t in texts:
                            clf.model.predict(clean_text(t), k=2)
                    times.append(time.perf_counter() - t0)
                med = statistics.median(times)
                print(
                    f"| {label} | {method} | {len(texts)} | {mb:.2f} | {med:.3f} | "
                    f"{len(texts) / med:,.0f} | {mb / med:.1f} |"
                )


if __name__ == "__main__":
    main()
