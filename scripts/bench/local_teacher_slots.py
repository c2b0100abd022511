"""Embedded teacher throughput: one llama.cpp server with all cores vs one server per core.

    .venv/bin/python scripts/bench/local_teacher_slots.py [--requests 8] [--repeats 2]

llama-cpp-python's server runs one request at a time, so its "parallel slots" are separate
processes. Both layouts get the same requests (SmolLM2-135M-Instruct, 96 new tokens each,
concurrency 8) through datagen's Teacher; reported as completion tokens/s, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.teacher import Job, Teacher, run_batch  # noqa: E402
from pipeline.teacher.server import local_server  # noqa: E402


async def _load(urls: list[str], n: int, tag: str) -> float:
    cfg = load_config(["teacher.concurrency=8", "teacher.max_tokens=96"])
    teacher = Teacher(cfg.teacher, urls, "none", None)
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    tokens = 0

    def ok(job: Job, c) -> None:  # noqa: ANN001
        nonlocal tokens
        tokens += c.completion_tokens

    jobs = [
        Job(
            id=str(i),
            messages=[
                {
                    "role": "user",
                    "content": f"Explain Python topic number {i} ({tag}) to a student.",
                }
            ],
        )
        for i in range(n)
    ]
    t0 = time.perf_counter()
    await run_batch(teacher, jobs, ok, lambda j, r, a: None, quiet, "bench")
    dt = time.perf_counter() - t0
    await teacher.close()
    return tokens / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    layouts = {f"1 server x {cores} threads": (1, cores), f"{cores} servers x 1 thread": (cores, 1)}
    results: dict[str, list[float]] = {k: [] for k in layouts}
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    for rep in range(args.repeats):
        for name, (servers, threads) in layouts.items():
            cfg = load_config(
                [f"teacher.local.servers={servers}", f"teacher.local.n_threads={threads}"]
            )
            with (
                tempfile.TemporaryDirectory() as d,
                local_server(cfg.teacher.local, cfg.teacher.model, Path(d), quiet) as urls,
            ):
                rate = asyncio.run(_load(urls, args.requests, f"{rep}"))
            results[name].append(rate)
            print(f"run {rep + 1}: {name:<24} {rate:6.1f} completion tokens/s", flush=True)
    print("\n| layout | median completion tokens/s |\n|---|---|")
    for name, rates in results.items():
        print(f"| {name} | {statistics.median(rates):.1f} |")


if __name__ == "__main__":
    main()
