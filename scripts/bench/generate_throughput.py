"""Teacher client throughput against a fake OpenAI-compatible server with fixed latency.

    .venv/bin/python scripts/bench/generate_throughput.py [--requests 6000] [--repeats 3]

The fake server (tests/fake_openai.py, aiohttp) runs in its own process and answers every
chat request after a fixed 200 ms. The client is datagen's real path: Teacher (openai SDK
AsyncOpenAI, tenacity, rate limiter) driven by run_batch with 128 workers, response cache on
(as in a real run) and off. Little's law bounds completed requests/s at in_flight / latency
= 128 / 0.2 s = 640/s. Transports aiohttp (default) and httpx, and the SDK's typed
``chat.completions.create`` path, are measured side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.teacher import Job, Teacher, run_batch  # noqa: E402
from pipeline.teacher.cache import ResponseCache  # noqa: E402
from pipeline.teacher.client import Completion, _parse_completion  # noqa: E402


class TypedCreateTeacher(Teacher):
    """The same client through the SDK's typed ``chat.completions.create`` (what datagen's
    raw ``client.post`` path replaces), for comparison."""

    async def _call(self, messages, params, item_id="") -> Completion:  # noqa: ANN001
        t0 = time.perf_counter()
        resp = await self.clients[0].chat.completions.create(
            model=self.model, messages=messages, **params
        )
        return _parse_completion(resp.model_dump(), self.model, time.perf_counter() - t0)


def _serve(port: int, latency: float) -> None:
    from aiohttp import web
    from fake_openai import FakeOpenAI

    web.run_app(
        FakeOpenAI(latency_s=latency).app(),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        backlog=2048,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _measure(
    url: str,
    transport: str,
    n: int,
    concurrency: int,
    cache_dir: str | None,
    tag: str,
    typed: bool = False,
) -> float:
    cfg = load_config(
        [
            f"teacher.concurrency={concurrency}",
            f"teacher.transport={transport}",
            "teacher.model=fake-model",
        ]
    )
    cls = TypedCreateTeacher if typed else Teacher
    teacher = cls(cfg.teacher, url, "bench", ResponseCache(Path(cache_dir)) if cache_dir else None)
    jobs = [
        Job(id=str(i), messages=[{"role": "user", "content": f"{tag} request {i}"}])
        for i in range(n)
    ]
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    # warm up connections
    await run_batch(
        teacher, jobs[:concurrency], lambda j, c: None, lambda j, r, a: None, quiet, "warmup"
    )
    t0 = time.perf_counter()
    stats = await run_batch(
        teacher, jobs[concurrency:], lambda j, c: None, lambda j, r, a: None, quiet, "bench"
    )
    dt = time.perf_counter() - t0
    await teacher.close()
    assert stats.failed == 0 and stats.done == n - concurrency, stats
    return stats.done / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    port = _free_port()
    proc = mp.get_context("spawn").Process(target=_serve, args=(port, args.latency), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    bound = args.concurrency / args.latency
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; server latency {args.latency * 1000:.0f} ms, "
        f"{args.concurrency} in flight, bound {bound:.0f} req/s, {args.requests} requests"
    )
    # (transport, cache, typed create() path)
    variants = [
        ("aiohttp", True, False),
        ("aiohttp", False, False),
        ("httpx", True, False),
        ("httpx", False, False),
        ("aiohttp", True, True),
    ]
    results: dict[str, list[float]] = {}
    try:
        for rep in range(args.repeats):  # interleaved, so noise hits all variants alike
            for transport, cache, typed in variants:
                name = f"{transport}, cache {'on' if cache else 'off'}" + (
                    ", SDK create()" if typed else ""
                )
                with tempfile.TemporaryDirectory() as d:
                    rate = asyncio.run(
                        _measure(
                            url,
                            transport,
                            args.requests,
                            args.concurrency,
                            d if cache else None,
                            f"{rep}-{name}",
                            typed,
                        )
                    )
                results.setdefault(name, []).append(rate)
                print(f"  run {rep + 1}: {name:<36} {rate:7.1f} req/s", flush=True)
    finally:
        proc.terminate()
    print("\n| client transport | median req/s | % of Little's-law bound |\n|---|---|---|")
    for name, rates in results.items():
        med = statistics.median(rates)
        print(f"| {name} | {med:.0f} | {100 * med / bound:.0f}% |")


if __name__ == "__main__":
    main()
