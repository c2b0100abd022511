"""Heuristic filter throughput (score + keep) on real text, one core.

Documents: every WARC page (trafilatura text), CCNet doc, WikiText article and OpenStax module
in ../shared/data, as Documents with 3 required words each (taken from the text). Each filter
family is timed alone, then the whole per-document chain the filter stage runs (decontam against
the five default benchmarks, length, truncation, stock opener, Gopher quality, Gopher
repetition, constraints). The Gopher repetition n-gram rules are also timed in a
straightforward pure-Python form (datatrove-style) for comparison.

Run:  .venv/bin/python scripts/bench/heuristics.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from filters_testdata import (  # noqa: E402
    ccnet_docs,
    openstax_modules,
    web_pages,
    wikitext_articles,
)

from filters.base import apply_filters  # noqa: E402
from filters.constraints import ConstraintFilter  # noqa: E402
from filters.decontam import Decontaminator  # noqa: E402
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter  # noqa: E402
from filters.heuristics import LengthFilter, StockOpenerFilter, TruncationFilter  # noqa: E402
from pipeline.config import DecontamConfig, FilterConfig  # noqa: E402
from pipeline.records import Document  # noqa: E402


def reference_repetition(text: str) -> dict[str, float]:
    """Gopher repetition n-gram scores the straightforward way (tuples in Counter / set, as
    datatrove's GopherRepetitionFilter does): the comparison for filters.gopher's numpy path."""
    words = text.strip().lower().split()
    total = max(sum(len(w) for w in words), 1)
    out = {}
    for n in (2, 3, 4):
        c = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if c:
            gram, k = c.most_common(1)[0]
            out[f"top_{n}"] = sum(len(w) for w in gram) * k / total if k > 1 else 0.0
    for n in range(5, 11):
        seen: set[tuple[str, ...]] = set()
        rep, i = 0, 0
        while i < len(words) - n + 1:
            g = tuple(words[i : i + n])
            if g in seen:
                rep += sum(len(w) for w in g)
                i += n
            else:
                seen.add(g)
                i += 1
        out[f"dup_{n}"] = rep / total
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    texts = (
        web_pages(()) + ccnet_docs() + wikitext_articles() + [m["text"] for m in openstax_modules()]
    )
    docs = [
        Document(id=str(i), text=t, finish_reason="stop", required_words=t.split()[5:8])
        for i, t in enumerate(texts)
    ]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    f = FilterConfig(min_constraint_coverage=0.5)
    decon = Decontaminator(DecontamConfig())
    families = {
        "length + truncated + stock_opener": [
            LengthFilter(f.min_chars, f.max_chars),
            TruncationFilter(),
            StockOpenerFilter(f.stock_openers),
        ],
        "gopher_quality": [GopherQualityFilter(f.gopher_quality)],
        "gopher_repetition": [GopherRepetitionFilter(f.gopher_repetition)],
        "constraints (lemminflect)": [ConstraintFilter(f.min_constraint_coverage)],
    }
    print(f"{len(docs)} docs, {mb:.2f} MB, one core, median of {args.repeats}")
    print("| filter | median s | docs/s | MB/s |")
    print("|---|---|---|---|")

    def timed(name: str, fn: object) -> None:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"| {name} | {med:.3f} | {len(docs) / med:,.0f} | {mb / med:.2f} |")

    for name, fl in families.items():
        timed(name, lambda fl=fl: [apply_filters(d.model_copy(), fl, Counter()) for d in docs])
    timed(
        "gopher_repetition n-grams, pure-Python reference (datatrove-style)",
        lambda: [reference_repetition(d.text) for d in docs],
    )
    timed("decontam (13-grams, 5 benchmarks)", lambda: [decon.check(d.text) for d in docs])
    chain = [x for fl in families.values() for x in fl]

    def stage_chain() -> None:
        for d in docs:
            if decon.check(d.text).reason is None:
                apply_filters(d.model_copy(), chain, Counter())

    timed("whole chain (as the filter stage)", stage_chain)


if __name__ == "__main__":
    main()
