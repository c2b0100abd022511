"""Sandbox throughput: real exercises verified per second.

Exercises: HumanEval (164: prompt + canonical solution, its ``check`` tests) and the first
``--mbpp`` MBPP tasks (reference code, ``test_list``) from ../shared/data/benchmarks, each run
in its own sandbox (``pipeline.sandbox``) with the default limits. Variants, interleaved in
each round: isolation ``namespaces`` and ``rlimits``, with 1 worker and with one per core; and
a baseline without any sandbox: one bare ``python -I -S`` process per exercise (what a
process per exercise costs by itself), as many at once as cores.

Run:  flock /work/bench.lock .venv/bin/python scripts/bench/sandbox_throughput.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from code_testdata import humaneval, mbpp  # noqa: E402

from pipeline.config import SandboxConfig  # noqa: E402
from pipeline.sandbox import Sandbox  # noqa: E402

BARE = (
    "import sys\nns = {'__name__': '__main__'}\n"
    "exec(compile(sys.argv[1], '<solution>', 'exec'), ns)\n"
    "exec(compile(sys.argv[2], '<tests>', 'exec'), ns)\n"
)


def bare(programs: list[tuple[str, str]], workers: int) -> Counter[str]:
    exe = os.path.realpath(sys.executable)

    def one(p: tuple[str, str]) -> str:
        rc = subprocess.run([exe, "-I", "-S", "-c", BARE, *p], capture_output=True).returncode
        return "passed" if rc == 0 else "not passed"

    with ThreadPoolExecutor(workers) as pool:
        return Counter(pool.map(one, programs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mbpp", type=int, default=200, help="MBPP tasks (of 974) after HumanEval")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    exercises = humaneval() + mbpp()[: args.mbpp]
    programs = [(e.solution, e.tests) for e in exercises]
    print(
        f"{len(programs)} exercises; {platform.machine()}, {cores} cores, Python "
        f"{platform.python_version()}, uid {os.geteuid()}; load {os.getloadavg()[0]:.2f}"
    )
    variants = [(iso, w) for iso in ("namespaces", "rlimits") for w in sorted({1, cores})]
    rates: dict[str, list[float]] = {}
    per_run: dict[str, list[float]] = {}
    for rnd in range(args.repeats):
        for iso, w in variants:
            sb = Sandbox(SandboxConfig(isolation=iso, workers=w))
            assert sb.isolation == iso
            started = time.perf_counter()
            results = sb.run_many(programs)
            elapsed = time.perf_counter() - started
            name = f"{iso}, {w} worker{'s' if w > 1 else ''}"
            rates.setdefault(name, []).append(len(programs) / elapsed)
            per_run.setdefault(name, []).extend(r.runtime_s for r in results)
            counts = Counter(r.status for r in results)
            print(f"round {rnd + 1}  {name:<24} {len(programs) / elapsed:7.1f}/s  {dict(counts)}")
        started = time.perf_counter()
        counts = bare(programs, cores)
        elapsed = time.perf_counter() - started
        name = f"no sandbox (bare process), {cores} workers"
        rates.setdefault(name, []).append(len(programs) / elapsed)
        print(f"round {rnd + 1}  {name:<24} {len(programs) / elapsed:7.1f}/s  {dict(counts)}")
    print("\n| variant | median exercises/s | median sandbox wall time per exercise |")
    print("|---|---|---|")
    for name, r in rates.items():
        t = f"{statistics.median(per_run[name]) * 1000:.0f} ms" if name in per_run else "-"
        print(f"| {name} | {statistics.median(r):.1f} | {t} |")


if __name__ == "__main__":
    main()
