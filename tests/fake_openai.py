"""A fake OpenAI-compatible chat server on 127.0.0.1, for fault injection and throughput
benchmarks only (never as proof that generation works: that is the real llama.cpp test).

Each distinct request (hash of its messages) gets a fault script: the faults for its first
attempts, then success. The server counts attempts per request and any request that arrives
again after it already succeeded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Callable

from aiohttp import web

FAULTS = ("429", "500", "slow", "malformed", "drop", "empty")


def request_key(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


class FakeOpenAI:
    def __init__(
        self,
        latency_s: float = 0.0,
        slow_s: float = 5.0,
        script: Callable[[str], list[str]] | None = None,
        completion_tokens: int = 50,
    ) -> None:
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.script = script or (lambda key: [])
        self.completion_tokens = completion_tokens
        self.attempts: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()
        self.after_success: Counter[str] = Counter()
        self.auth_headers: set[str] = set()
        self.total = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.auth_headers.add(request.headers.get("Authorization", ""))
        key = request_key(body["messages"])
        self.total += 1
        if self.successes[key]:
            self.after_success[key] += 1
        self.attempts[key] += 1
        n = self.attempts[key]
        faults = self.script(key)
        fault = faults[n - 1] if n - 1 < len(faults) else "ok"
        if fault == "429":
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate"}},
                status=429,
                headers={"Retry-After": "1"},
            )
        if fault in ("500", "always500"):
            return web.json_response({"error": {"message": "boom", "type": "server"}}, status=500)
        if fault == "400":
            return web.json_response(
                {"error": {"message": "bad request", "type": "invalid"}}, status=400
            )
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        if fault == "malformed":
            return web.Response(
                status=200, text='{"id": "x", "choices": [{"mess', content_type="application/json"
            )
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        text = "" if fault == "empty" else self._text(body["messages"])
        if fault not in ("empty", "slow"):  # a slow answer arrives after the client gave up
            self.successes[key] += 1
        return web.json_response(
            {
                "id": f"chatcmpl-{key}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "usage": {
                    "prompt_tokens": 100,
                    "completion_tokens": self.completion_tokens,
                    "total_tokens": 100 + self.completion_tokens,
                },
            }
        )

    @staticmethod
    def _text(messages: list[dict[str, str]]) -> str:
        user = messages[-1]["content"]
        return f"A fake answer to: {user[:80]}"


class ServerThread:
    """Run a FakeOpenAI on 127.0.0.1 in a background thread; ``url`` is the /v1 base URL."""

    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.fake.app(), access_log=None)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
