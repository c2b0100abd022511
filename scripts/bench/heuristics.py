"""Per-document filter chain throughput, as the filter stage runs it, on one core.

Documents: every WARC page (trafilatura text), CCNet document, WikiText article and OpenStax
module in ../shared/data (393 texts, 8 kB on average), each with 3 required words taken from
its text. The chain is the filter stage's own: ``pipeline.stages.filter.build_steps`` with the
default config (decontamination against the five default benchmarks, length, truncation,
stock opener, Gopher quality, Gopher repetition, constraints; no classifier) run by
``pipeline.steps.run_steps`` over batches of ``dedup.batch_size`` documents, as
``filter_shard`` does. Each filter family is also timed alone (every document scored), and
the chain and families "before" (the implementation of datagen 785b4a0, kept in
tests/filters_reference.py) in the same rounds. Rounds are interleaved (each round times
every row once, in turn); the table gives medians and the load average of each round.

Run:  flock /work/bench.lock .venv/bin/python scripts/bench/heuristics.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import filters_reference as ref  # noqa: E402
from filters_testdata import bench_texts  # noqa: E402

import filters.gopher  # noqa: E402
from filters.codepoints import lowered, tables  # noqa: E402
from filters.constraints import ConstraintFilter  # noqa: E402
from filters.decontam import DecontamStep  # noqa: E402
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.records import Document  # noqa: E402
from pipeline.shards import batched  # noqa: E402
from pipeline.stages.filter import build_steps  # noqa: E402
from pipeline.steps import FilterStep, Stats, Step, run_steps  # noqa: E402

NO_CLASSIFIER = {"path": None, "applied": False, "note": "benchmark: no model"}


def _previous(f: object) -> object:
    if isinstance(f, GopherQualityFilter):
        return ref.GopherQualityFilter(f.cfg)
    if isinstance(f, GopherRepetitionFilter):
        return ref.GopherRepetitionFilter(f.cfg)
    if isinstance(f, ConstraintFilter):
        return ref.ConstraintFilter(f.min_coverage)
    return f


def previous(steps: list[Step], cfg: PipelineConfig) -> list[Step]:
    """The same steps with the previous implementation of every filter that changed."""
    for s in steps:
        if isinstance(s, FilterStep):
            s.filters = [_previous(f) for f in s.filters]  # type: ignore[misc]
        elif isinstance(s, DecontamStep):
            s.decon = ref.ReferenceDecontaminator(cfg.decontam)
    return steps


def families(steps: list[Step]) -> dict[str, list[Step]]:
    """Each filter family as a step of its own that scores every document."""
    out: dict[str, list[Step]] = {}
    for s in steps:
        if isinstance(s, DecontamStep):
            out["decontam"] = [s]
        elif isinstance(s, FilterStep):
            for f in s.filters:
                out.setdefault(f.family, []).append(FilterStep(f.family, [f], drop=False))
    cheap = ("length", "truncated", "stock_opener")
    out["length + truncated + stock_opener"] = [x for k in cheap for x in out.pop(k)]
    return out


def cold() -> None:
    """Forget the texts the previous row saw (the lower-case memo, the Gopher filters' last
    word batch): every timed row starts as a run does, with nothing computed for its texts."""
    lowered.cache_clear()
    filters.gopher._last().words = None


def run_chain(steps: Sequence[Step], docs: list[Document], batch: int) -> Stats:
    stats = Stats()
    for b in batched(docs, batch):
        run_steps(steps, b, stats)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    texts = bench_texts()
    base = [
        Document(id=str(i), text=t, finish_reason="stop", required_words=t.split()[5:8])
        for i, t in enumerate(texts)
    ]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    cfg = PipelineConfig()
    t0 = time.perf_counter()
    tables()
    steps = build_steps(cfg, NO_CLASSIFIER)
    for s in steps:
        s.setup()
    setup_s = time.perf_counter() - t0
    old = previous(build_steps(cfg, NO_CLASSIFIER), cfg)
    for s in old:
        s.setup()
    rows: dict[str, Callable[[list[Document]], object]] = {}
    for name, fam in families(steps).items():
        rows[name] = lambda d, fam=fam: run_chain(fam, d, cfg.dedup.batch_size)
    rows["chain (filter stage steps)"] = lambda d: run_chain(steps, d, cfg.dedup.batch_size)
    old_fam = families(old)
    for name in ("gopher_quality", "gopher_repetition", "constraints", "decontam"):
        rows[f"{name}, before"] = lambda d, f=old_fam[name]: run_chain(f, d, cfg.dedup.batch_size)
    rows["chain, before"] = lambda d: run_chain(old, d, cfg.dedup.batch_size)
    # the same decisions both ways (tests/test_filter_equivalence.py checks every score)
    new_st, old_st = (
        run_chain(s, [d.model_copy(deep=True) for d in base], 256) for s in (steps, old)
    )
    assert new_st.model_dump() == old_st.model_dump(), "the chains disagree"

    times: dict[str, list[float]] = {k: [] for k in rows}
    loads = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, fn in rows.items():
            docs = [d.model_copy(deep=True) for d in base]  # fresh records, not timed
            cold()
            t = time.perf_counter()
            fn(docs)
            times[name].append(time.perf_counter() - t)
    print(
        f"{len(base)} docs, {mb:.2f} MB ({mb * 1e3 / len(base):.1f} kB/doc), one core, "
        f"{args.rounds} interleaved rounds, medians; load average per round "
        f"{', '.join(f'{x:.2f}' for x in loads)}; steps setup {setup_s:.2f} s"
    )
    print("| filter | median s | docs/s | MB/s | before docs/s | speed-up |")
    print("|---|---|---|---|---|---|")
    out = {}
    for name in rows:
        if name.endswith(", before"):
            continue
        med = statistics.median(times[name])
        before = f"{name.split(' (')[0]}, before"
        row = f"| {name} | {med:.3f} | {len(base) / med:,.0f} | {mb / med:.2f} |"
        out[name] = {"median_s": med, "docs_per_s": len(base) / med}
        if before in times:
            b = statistics.median(times[before])
            row += f" {len(base) / b:,.0f} | {b / med:.1f}x |"
            out[name]["before_docs_per_s"] = len(base) / b
        else:
            row += " | |"
        print(row)
    if args.json:
        args.json.write_text(json.dumps({"rows": out, "loads": loads}, indent=2))


if __name__ == "__main__":
    main()
