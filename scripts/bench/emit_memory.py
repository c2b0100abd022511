"""Peak memory of the emit stage at 1x and 10x the input, and emit of >= 5 M tokens.

    flock /work/bench.lock .venv/bin/python scripts/bench/emit_memory.py [--base 100] \\
        [--workers 2] [--keep DIR]

The input is built by running the real stages once (tests/emit_testdata.py: plan, generate on
the embedded llama.cpp teacher, annotate, train_classifier, filter, the web stage on the real
Common Crawl WARCs in ../shared/data, dedup). Its kept documents are then replicated with new
ids into the dedup stage's output: ``--base`` copies for 1x, ten times as many for 10x. Each
size runs the emit stage alone (as the driver runs it: a subprocess, default config,
``executor.workers``) while the resident memory of its whole process tree (driver + workers)
is sampled from /proc every 0.1 s (the peak of the sum, and of the largest single process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

STAGE = (
    "import json, sys; from rich.console import Console; from pipeline.config import load_config;"
    "from pipeline.runs import Run; from pipeline.stages import BY_NAME, _run_one;"
    "cfg = load_config(sys.argv[1:]); run = Run(cfg.run.root, cfg.run.name);"
    "m = _run_one(cfg, run, BY_NAME['emit'], 'bench', Console(quiet=True));"
    "print(json.dumps({k: m[k] for k in ('summary', 'rounds', 'shards_total')}))"
)


def _tree_rss_mb(root_pid: int) -> tuple[float, float]:
    """(sum, max) of the resident memory of ``root_pid`` and its descendants, in MB."""
    parents: dict[int, int] = {}
    rss: dict[int, float] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            status = (p / "status").read_text()
        except OSError:
            continue
        parents[int(p.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(p.name)] = int(line.split()[1]) / 1024
    tree = {root_pid}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    vals = [rss.get(p, 0.0) for p in tree]
    return sum(vals), max(vals, default=0.0)


def replicate(src_run: Path, dest: Path, copies: int) -> int:
    """A copy of the run whose dedup output is its kept documents ``copies`` times, each copy
    with new ids; returns the number of documents."""
    from pipeline.records import Document
    from pipeline.runs import read_shards
    from pipeline.shards import RecordWriter

    shutil.copytree(src_run, dest, ignore=shutil.ignore_patterns("emit", ".superseded"))
    dedup = dest / "dedup"
    docs = list(read_shards(src_run / "dedup", Document))  # the base run: a few documents
    for p in dedup.glob("part-*.jsonl*"):
        p.unlink()
    per_file = max(1, 10_000 // len(docs))
    n = 0
    for f, start in enumerate(range(0, copies, per_file)):
        with RecordWriter(dedup / f"part-{f:05d}.jsonl.zst") as w:
            for c in range(start, min(copies, start + per_file)):
                for d in docs:
                    w.write(d.model_copy(update={"id": f"{d.id}-x{c:06d}"}))
                    n += 1
    return n


def measure(run_dir: Path, workers: int, shard_docs: int) -> dict:
    cmd = [
        sys.executable,
        "-c",
        STAGE,
        f"run.root={run_dir.parent}",
        f"run.name={run_dir.name}",
        f"executor.workers={workers}",
        *([f"executor.shard_docs={shard_docs}"] if shard_docs else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak_sum = peak_max = 0.0
    while proc.poll() is None:
        s, m = _tree_rss_mb(proc.pid)
        peak_sum, peak_max = max(peak_sum, s), max(peak_max, m)
        time.sleep(0.1)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"emit failed:\n{err.decode()[-3000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "tree_peak_mb": round(peak_sum, 1),
        "largest_process_peak_mb": round(peak_max, 1),
        "tokens": sum(v for k, v in result["summary"].items() if k.endswith("_tokens")),
        "documents": result["summary"]["documents"],
        "rounds": {k: v["tasks"] for k, v in result["rounds"].items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=100, help="copies of the real run at 1x")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--shard-docs",
        type=int,
        default=0,
        help="executor.shard_docs (0: the default config); e.g. 500 gives both sizes several "
        "tokenize tasks, so both start every worker",
    )
    ap.add_argument("--keep", type=Path, help="build the real run here (reused if present)")
    args = ap.parse_args()

    from emit_testdata import RUN_NAME, build_real_run

    tmp = Path(tempfile.mkdtemp(prefix="emit-bench-"))
    try:
        base = args.keep or tmp / "real"
        real = base / "runs" / RUN_NAME
        if not (real / "dedup" / "manifest.json").exists():
            t0 = time.perf_counter()
            build_real_run(base)
            print(f"real run built in {time.perf_counter() - t0:.0f} s: {real}", flush=True)
        rows = {}
        for label, copies in (("1x", args.base), ("10x", 10 * args.base)):
            run_dir = tmp / label / RUN_NAME
            n = replicate(real, run_dir, copies)
            rows[label] = {"input_documents": n, **measure(run_dir, args.workers, args.shard_docs)}
            print(label, json.dumps(rows[label]), flush=True)
            shutil.rmtree(tmp / label)
        ratio = rows["10x"]["tree_peak_mb"] / rows["1x"]["tree_peak_mb"]
        print(
            json.dumps(
                {
                    "machine": f"{platform.machine()} {os.cpu_count()} cores, "
                    f"Python {platform.python_version()}",
                    "workers": args.workers,
                    "rows": rows,
                    "tree_peak_10x_over_1x": round(ratio, 3),
                },
                indent=1,
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
