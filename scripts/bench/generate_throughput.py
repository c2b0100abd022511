"""Teacher client throughput on one core, side by side: datagen, the openai SDK's plain client,
Curator and distilabel, against the same fast fake server.

    flock /work/bench.lock .venv/bin/python scripts/bench/generate_throughput.py \\
        [--requests 20000] [--repeats 3] [--in-flight 128 512] \\
        [--peers-python /tmp/datagen-bench-peers/bin/python]

The fast fake server (tests/fake_openai.py ``FastFakeOpenAI``, a bare asyncio protocol) runs in
its own process pinned to core 1 and answers every chat request after 200 ms. Each measurement
is a fresh client process pinned to core 0 (one core, as the issue asks), so Little's law
bounds it at in_flight / latency completed requests/s (640/s at 128, 2,560/s at 512); CPU
seconds per 1,000 requests is the client process's CPU time over the timed requests.

- datagen: its real request path, ``Teacher`` (aiohttp session, endpoint pool, tenacity,
  rate limiter) with the SQLite response cache and the spend ledger, driven by ``run_batch``.
- openai SDK: ``AsyncOpenAI.chat.completions.create`` (its default httpx client), one task
  per request in flight.
- Curator (``bespokelabs-curator``) and distilabel run in their own virtualenv
  (scripts/bench/peers_venv.sh makes it; never installed into the project's): see
  scripts/bench/peer_clients.py for how each is driven.

Clients and in-flight counts are interleaved in each round, so noise hits all alike; the table
shows medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

PEERS = ("curator", "distilabel")


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def _prompts(n: int, tag: str) -> list[str]:
    return [f"Write a short textbook section, request {tag}-{i}." for i in range(n)]


async def _datagen(url: str, n: int, in_flight: int, tag: str) -> tuple[float, float]:
    from rich.console import Console

    from pipeline.config import load_config
    from pipeline.teacher import Job, Teacher, run_batch
    from pipeline.teacher.budget import SpendLedger
    from pipeline.teacher.cache import ResponseCache

    cfg = load_config([f"teacher.concurrency={in_flight}", "teacher.model=fake-model"])
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    with tempfile.TemporaryDirectory() as d:
        ledger = SpendLedger(Path(d) / "spend.jsonl", "generate", None, fsync=False)
        teacher = Teacher(cfg.teacher, url, "bench", ResponseCache(Path(d) / "cache"), ledger)
        jobs = [
            Job(id=str(i), messages=[{"role": "user", "content": p}])
            for i, p in enumerate(_prompts(n + in_flight, tag))
        ]

        def ok(job: Job, c: object) -> None:
            return None

        def bad(job: Job, reason: str, attempts: int) -> None:
            raise RuntimeError(reason)

        await run_batch(teacher, jobs[:in_flight], ok, bad, quiet, "warm-up")
        t0, c0 = time.perf_counter(), time.process_time()
        stats = await run_batch(teacher, jobs[in_flight:], ok, bad, quiet, "bench", total=n)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        await teacher.close()
        await ledger.aclose()
    assert stats.done == n, stats
    return n / dt, cpu


async def _sdk(url: str, n: int, in_flight: int, tag: str) -> tuple[float, float]:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)

    async def drive(prompts: list[str]) -> None:
        it = iter(prompts)

        async def worker() -> None:
            for p in it:
                r = await client.chat.completions.create(
                    model="fake-model", messages=[{"role": "user", "content": p}], max_tokens=600
                )
                assert r.choices[0].message.content

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    prompts = _prompts(n + in_flight, tag)
    await drive(prompts[:in_flight])
    t0, c0 = time.perf_counter(), time.process_time()
    await drive(prompts[in_flight:])
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    await client.close()
    return n / dt, cpu


def _client_main(args: argparse.Namespace) -> None:
    """One measurement in this (fresh, pinned) process; prints a JSON line."""
    _pin(args.cpu)
    fn = {"datagen": _datagen, "openai-sdk": _sdk}[args.client]
    rate, cpu = asyncio.run(fn(args.url, args.requests, args.in_flight, args.tag))
    print(json.dumps({"rate": rate, "cpu_per_1000": 1000 * cpu / args.requests}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _measure(
    python: str, script: Path, client: str, url: str, n: int, in_flight: int, tag: str
) -> dict[str, float] | str:
    cmd = [python, str(script), "--client", client, "--url", url]
    cmd += ["--requests", str(n), "--in-flight", str(in_flight), "--tag", tag, "--cpu", "0"]
    env = {**os.environ, "CURATOR_DISABLE_CACHE": "1", "TELEMETRY_ENABLED": "false"}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        return (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="x", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=20_000)
    # distilabel does ~50 req/s here: fewer timed requests keep a round within minutes
    ap.add_argument("--peer-requests", type=int, default=3_000)
    ap.add_argument("--in-flight", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peers-python", default="/tmp/datagen-bench-peers/bin/python")
    args = ap.parse_args()
    if args.client:
        args.in_flight = args.in_flight[0]
        return _client_main(args)

    from fake_openai import serve_fast

    port = _free_port()
    server = mp.get_context("spawn").Process(
        target=serve_fast, args=(port, args.latency, 1), daemon=True
    )
    server.start()
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    clients: list[tuple[str, str, Path]] = [
        ("datagen", sys.executable, Path(__file__)),
        ("openai-sdk", sys.executable, Path(__file__)),
    ]
    peers = Path(args.peers_python)
    if peers.exists():
        clients += [(p, str(peers), Path(__file__).with_name("peer_clients.py")) for p in PEERS]
    else:
        print(f"(no {peers}: Curator and distilabel skipped; make it with peers_venv.sh)")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f} at start; "
        f"server latency {args.latency * 1000:.0f} ms; {args.requests} timed requests per "
        f"measurement ({args.peer_requests} for Curator and distilabel); clients on core 0, "
        f"server on core 1",
        flush=True,
    )
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for rep in range(args.repeats):
            for in_flight in args.in_flight:
                for name, python, script in clients:
                    tag = f"{rep}-{in_flight}-{name}"
                    n = args.peer_requests if name in PEERS else args.requests
                    out = _measure(python, script, name, url, n, in_flight, tag)
                    if isinstance(out, str):
                        print(f"  round {rep + 1}: {name:<11} {in_flight:>4} in flight: {out}")
                        continue
                    results.setdefault((name, in_flight), []).append(out)
                    print(
                        f"  round {rep + 1}: {name:<11} {in_flight:>4} in flight: "
                        f"{out['rate']:7.1f} req/s, {out['cpu_per_1000']:.3f} CPU s/1000",
                        flush=True,
                    )
    finally:
        server.terminate()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print("\n| client | in flight | median req/s | % of Little's-law bound | CPU s / 1,000 req |")
    print("|---|---|---|---|---|")
    for (name, in_flight), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rate = statistics.median(r["rate"] for r in runs)
        cpu = statistics.median(r["cpu_per_1000"] for r in runs)
        bound = in_flight / args.latency
        print(f"| {name} | {in_flight} | {rate:.0f} | {100 * rate / bound:.0f}% | {cpu:.3f} |")


if __name__ == "__main__":
    main()
