"""The filter stage on many documents: 1 worker vs 2, local vs Ray, and peak memory vs input.

Runs the real ``datagen run stage=filter`` (a subprocess, as a user does) on a run whose
generate output is real text from ../shared/data (the 393 documents of
scripts/bench/heuristics.py, 8 kB on average) repeated with distinct ids, with a real fastText
quality model trained here on OpenStax vs web text (``classifier.model_path``). plan,
generate and annotate are marked finished the way tests/test_filter_stage.py does;
train_classifier runs once before the timed rounds.

Throughput: ``--docs`` documents with ``executor.kind=local workers=1``, ``local workers=2``,
``ray`` (a local Ray instance the stage starts and stops, what ``executor.kind=ray`` does on
one machine) and ``ray`` on an instance already running (``executor.address``: no start-up),
in interleaved rounds (every configuration once per round, in turn); medians of the wall
time of the whole command (interpreter start, config, shard planning, worker start-up and
setup, scoring, writing). Efficiency = docs/s at 2 workers / (2 x docs/s at 1). Every
configuration's kept and dropped shards are checked byte-identical.

Memory: peak RSS of the whole process tree (driver, workers, Ray's processes; the sum of
VmRSS sampled every 0.1 s) with ``--memory-docs`` and 10x as many documents, local 2 workers,
interleaved rounds, medians.

Run:  flock /work/bench.lock .venv/bin/python scripts/bench/filter_scaling.py --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from filters_testdata import bench_texts, chunks, openstax_modules, web_pages  # noqa: E402
from ray_cluster import RayCluster  # noqa: E402
from test_filter_stage import prepare_run  # noqa: E402

from filters.classifier import train_classifier  # noqa: E402
from pipeline.records import Document  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """Sum of the resident memory of ``root`` and all its descendants (bytes)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def run_filter(overrides: list[str]) -> dict[str, float]:
    """One ``datagen run stage=filter``: wall seconds and peak tree RSS (bytes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "stage=filter", *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"datagen run stage=filter {' '.join(overrides)} failed:\n{err[-3000:]}")
    return {"wall_s": wall, "peak_rss": peak}


def outputs_digest(stage_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(stage_dir.glob("**/part-*.jsonl.zst")):
        h.update(str(p.relative_to(stage_dir)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def make_run(work: Path, name: str, n_docs: int, base: list[str]) -> list[str]:
    """A run ``name`` with ``n_docs`` generated documents; returns its config overrides."""
    texts = bench_texts()
    docs = [
        Document(
            id=f"d{i:07d}",
            text=(t := texts[i % len(texts)]),
            finish_reason="stop",
            required_words=t.split()[5:8],
        )
        for i in range(n_docs)
    ]
    overrides = [*base, f"run.name={name}"]
    prepare_run(work, docs, overrides, stages=("plan", "generate", "annotate"))
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "stage=train_classifier", *overrides],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return overrides


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=25_000)
    ap.add_argument("--memory-docs", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shard-docs", type=int, default=0, help="executor.shard_docs (0: default)")
    ap.add_argument("--skip", nargs="*", default=[], help="configurations to leave out")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="filter-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "quality.bin"
    if not model.exists():
        pos = [c for m in openstax_modules() for c in chunks(m["text"])]
        neg = [c for t in web_pages() for c in chunks(t)]
        train_classifier(pos + neg, [True] * len(pos) + [False] * len(neg), model, seed=3)
    base = [f"run.root={work / 'runs'}", f"classifier.model_path={model}"]
    if args.shard_docs:
        base.append(f"executor.shard_docs={args.shard_docs}")
    sizes = {"scale": args.docs, "mem1x": args.memory_docs, "mem10x": 10 * args.memory_docs}
    runs = {k: make_run(work, f"{k}-{n}", n, base) for k, n in sizes.items()}
    configs = {
        "local, 1 worker": ["executor.kind=local", "executor.workers=1"],
        "local, 2 workers": ["executor.kind=local", "executor.workers=2"],
        "ray, local instance started by the stage": ["executor.kind=ray", "executor.workers=2"],
        "ray, running instance (executor.address)": ["executor.kind=ray"],
    }
    configs = {k: v for k, v in configs.items() if not any(s in k for s in args.skip)}
    cluster = RayCluster() if any("address" in k for k in configs) else None
    address = cluster.__enter__() if cluster else ""
    results: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    memory: dict[str, list[dict[str, float]]] = {"mem1x": [], "mem10x": []}
    digests: dict[str, set[str]] = {}
    loads: list[float] = []
    try:
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for name, extra in configs.items():
                overrides = runs["scale"] + extra
                if "address" in name:
                    overrides.append(f"executor.address={address}")
                stage = work / "runs" / f"scale-{args.docs}" / "filter"
                shutil.rmtree(stage, ignore_errors=True)
                results[name].append(run_filter(overrides))
                digests.setdefault("scale", set()).add(outputs_digest(stage))
            for key in memory:
                shutil.rmtree(work / "runs" / f"{key}-{sizes[key]}" / "filter", ignore_errors=True)
                memory[key].append(
                    run_filter(runs[key] + ["executor.kind=local", "executor.workers=2"])
                )
    finally:
        if cluster:
            cluster.__exit__()
    if len(digests["scale"]) != 1:
        raise SystemExit(f"the configurations wrote different outputs: {digests['scale']}")

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    n = args.docs
    print(
        f"{n:,} documents ({n * sum(map(len, bench_texts())) / len(bench_texts()) / 1e6:.0f} MB "
        f"of text), {args.rounds} interleaved rounds, medians; load average per round: "
        f"{', '.join(f'{x:.2f}' for x in loads)}; outputs identical in every configuration"
    )
    print("| executor | median s | docs/s | peak RSS (tree) |")
    print("|---|---|---|---|")
    figures: dict[str, object] = {"docs": n, "loads": loads}
    for name, rows in results.items():
        s = med(rows, "wall_s")
        rss = med(rows, "peak_rss") / 1e6
        figures[name] = {"wall_s": s, "docs_per_s": n / s, "peak_rss_mb": rss}
        print(f"| {name} | {s:.2f} | {n / s:,.0f} | {med(rows, 'peak_rss') / 1e6:,.0f} MB |")
    one, two = results.get("local, 1 worker"), results.get("local, 2 workers")
    if one and two:
        eff = med(one, "wall_s") / (2 * med(two, "wall_s"))
        figures["efficiency"] = eff
        print(f"\nscaling efficiency, 2 workers vs 1: {eff:.0%}")
    for name in configs:
        if name.startswith("ray") and two:
            extra = med(results[name], "wall_s") - med(two, "wall_s")
            print(f"{name}: {extra:+.2f} s vs local 2 workers")
    m1, m10 = (med(memory[k], "peak_rss") for k in ("mem1x", "mem10x"))
    figures["memory"] = {"1x_mb": m1 / 1e6, "10x_mb": m10 / 1e6, "ratio": m10 / m1}
    print(
        f"\npeak RSS, local 2 workers: {sizes['mem1x']:,} docs {m1 / 1e6:,.0f} MB, "
        f"{sizes['mem10x']:,} docs {m10 / 1e6:,.0f} MB: {m10 / m1:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
