"""Peak memory of a plan of millions: ``datagen run stage=generate plan.n=1000000`` (the plan,
then every request) against the fast fake server, with the response cache and spend ledger on,
as in a real run.

    flock /work/bench.lock .venv/bin/python scripts/bench/generate_rss.py [--n 1000000] \\
        [--concurrency 512] [--latency 0.05] [--plan-only]

The real command runs in a subprocess; its resident memory is sampled from /proc every 0.5 s
(peak and the curve are printed), and the kernel's peak (ru_maxrss of the child) is reported
too. ``--plan-only`` writes the plan alone (e.g. --n 2000000: the sharded plan). The run folder
is a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--concurrency", type=int, default=512)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--plan-only", action="store_true")
    args = ap.parse_args()

    from fake_openai import serve_fast

    port = _free_port()
    server = mp.get_context("spawn").Process(
        target=serve_fast, args=(port, args.latency, 1), daemon=True
    )
    server.start()
    work = Path(tempfile.mkdtemp(prefix="datagen-rss-"))
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "stage=plan" if args.plan_only else "stage=generate",
        f"plan.n={args.n}",
        f"teacher.base_url=http://127.0.0.1:{port}/v1",
        "teacher.model=fake-model",
        f"teacher.concurrency={args.concurrency}",
        f"run.root={work / 'runs'}",
    ]
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; "
        f"{' '.join(cmd[3:])}",
        flush=True,
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    peak, curve, last = 0.0, [], 0.0
    try:
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            if rss is not None:
                peak = max(peak, rss)
                now = time.perf_counter() - t0
                if now - last >= 30:
                    curve.append((round(now), round(rss)))
                    last = now
            time.sleep(0.5)
        err = proc.stderr.read().decode() if proc.stderr else ""
        elapsed = time.perf_counter() - t0
        kernel_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode:
            print(err[-2000:])
            raise SystemExit(f"datagen exited with {proc.returncode}")
        gen = work / "runs/default/generate/manifest.json"
        plan = json.loads((work / "runs/default/plan/manifest.json").read_text())
        files = len(plan["files"])
        print(f"plan: {plan['requests']} requests in {files} files, {plan['elapsed_s']} s")
        if gen.exists():
            m = json.loads(gen.read_text())
            print(
                f"generate: {m['items']} items in {len(m['outputs'])} output files, "
                f"{m['elapsed_s']} s ({m['items'] / m['elapsed_s']:.0f} items/s)"
            )
        print(f"elapsed {elapsed:.0f} s; load average {os.getloadavg()[0]:.2f} at the end")
        print(f"RSS every 30 s (s, MB): {curve}")
        print(f"peak RSS: {peak:.0f} MB sampled, {kernel_peak:.0f} MB ru_maxrss")
    finally:
        if proc.poll() is None:
            proc.kill()
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
