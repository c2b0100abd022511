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
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

from aiohttp import web

FAULTS = (
    "429",  # rate limited, Retry-After: 1
    "429bad",  # rate limited, a Retry-After that is neither seconds nor an HTTP date
    "500",
    "always500",
    "400",
    "401",  # bad key, and the message quotes it (as real servers do)
    "slow",  # answers after slow_s
    "trickle",  # sends the answer a few bytes at a time, each well within any read timeout
    "malformed",  # a truncated JSON body
    "drop",  # closes the connection without a response
    "reset",  # resets the connection (TCP RST)
    "empty",  # an empty completion
    "badusage",  # usage.prompt_tokens is not a number
    "surrogate",  # the content holds a lone surrogate (a legal JSON escape)
)


def request_key(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


class FakeOpenAI:
    def __init__(
        self,
        latency_s: float = 0.0,
        slow_s: float = 5.0,
        script: Callable[[str], list[str]] | None = None,
        completion_tokens: int = 50,
        prompt_tokens: int | None = 100,
        rate_window: tuple[int, float] | None = None,
        answer: Callable[[dict], str] | None = None,
    ) -> None:
        """``prompt_tokens=None``: bill one prompt token per UTF-8 byte of the messages (what a
        byte-level tokenizer does at worst). ``rate_window=(n, s)``: at most n requests per
        window of s seconds, announced in x-ratelimit-* headers; more get a 429.
        ``answer(body)``: the content for a request body (default: an echo of the prompt);
        tests give code exercises or topic lists this way."""
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.script = script or (lambda key: [])
        self.completion_tokens = completion_tokens
        self.prompt_tokens = prompt_tokens
        self.trickle_s = 0.1  # pause between the pieces of a "trickle" answer
        self.attempts: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()
        self.after_success: Counter[str] = Counter()
        self.auth_headers: set[str] = set()
        self.total = 0
        # a 429 with Retry-After asks for quiet until then: requests arriving earlier
        self.quiet_until = 0.0
        self.early = 0
        self.rate_window = rate_window
        self.window_start = 0.0
        self.window_count = 0
        self.rate_limited = 0  # 429s sent for the rate window
        self.answer = answer
        self.response_formats: list[object] = []  # each request's response_format (or None)
        # /v1/completions with echo=true, logprobs (vLLM's prompt log-probabilities): given
        # token ids, log p(ids[j] | ids[:j]) for j >= 1; decode_token names each id
        self.prompt_logprobs: Callable[[list[int]], list[float]] | None = None
        self.decode_token: Callable[[int], str] = str

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def completions(self, request: web.Request) -> web.Response:
        """Legacy completions, echo=true with logprobs: the prompt's token log-probabilities
        (first None, as OpenAI and vLLM send it), then one generated token. Faults: the script's
        "500", "429" and "drop" per prompt."""
        body = await request.json()
        ids = body["prompt"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        key = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
        self.total += 1
        if self.successes[key]:
            self.after_success[key] += 1
        self.attempts[key] += 1
        faults = self.script(key)
        n = self.attempts[key]
        fault = faults[n - 1] if n - 1 < len(faults) else "ok"
        if fault in ("500", "always500"):
            return web.json_response({"error": {"message": "boom", "type": "server"}}, status=500)
        if fault == "429":
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate"}},
                status=429,
                headers={"Retry-After": "0"},
            )
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        if self.prompt_logprobs is None or not body.get("echo") or body.get("logprobs") is None:
            return web.json_response(
                {"error": {"message": "no prompt logprobs here", "type": "invalid"}}, status=400
            )
        lps: list[float | None] = [None, *self.prompt_logprobs(list(ids)), -1.0]
        tokens = [self.decode_token(i) for i in ids] + [" x"]
        self.successes[key] += 1
        return web.json_response(
            {
                "id": f"cmpl-{key}",
                "object": "text_completion",
                "created": 0,
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "text": "".join(tokens),
                        "finish_reason": "length",
                        "logprobs": {
                            "tokens": tokens,
                            "token_logprobs": lps,
                            "top_logprobs": None,
                            "text_offset": list(range(len(tokens))),
                        },
                    }
                ],
                "usage": {
                    "prompt_tokens": len(ids),
                    "completion_tokens": 1,
                    "total_tokens": len(ids) + 1,
                },
            }
        )

    def _window(self) -> tuple[bool, dict[str, str]]:
        """(over the limit, the x-ratelimit headers) for a request arriving now."""
        n, seconds = self.rate_window or (0, 0.0)
        now = time.monotonic()
        if now - self.window_start >= seconds:
            self.window_start, self.window_count = now, 0
        self.window_count += 1
        left = max(0, n - self.window_count)
        reset = self.window_start + seconds - now
        headers = {
            "x-ratelimit-limit-requests": str(n),
            "x-ratelimit-remaining-requests": str(left),
            "x-ratelimit-reset-requests": f"{reset:.3f}s",
        }
        return self.window_count > n, headers

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.auth_headers.add(request.headers.get("Authorization", ""))
        key = request_key(body["messages"])
        self.total += 1
        self.response_formats.append(body.get("response_format"))
        if time.monotonic() < self.quiet_until:
            self.early += 1
        if self.rate_window:
            over, headers = self._window()
            if over:
                self.rate_limited += 1
                return web.json_response(
                    {"error": {"message": "rate limited", "type": "rate"}},
                    status=429,
                    headers=headers,
                )
            response = await self._chat(request, body, key)
            response.headers.update(headers)
            return response
        return await self._chat(request, body, key)

    async def _chat(self, request: web.Request, body: dict, key: str) -> web.StreamResponse:
        if self.successes[key]:
            self.after_success[key] += 1
        self.attempts[key] += 1
        n = self.attempts[key]
        faults = self.script(key)
        fault = faults[n - 1] if n - 1 < len(faults) else "ok"
        if fault == "429":
            self.quiet_until = max(self.quiet_until, time.monotonic() + 1.0)
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate"}},
                status=429,
                headers={"Retry-After": "1"},
            )
        if fault in ("500", "always500"):
            return web.json_response({"error": {"message": "boom", "type": "server"}}, status=500)
        if fault == "429bad":
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate"}},
                status=429,
                headers={"Retry-After": "soon"},
            )
        if fault == "400":
            return web.json_response(
                {"error": {"message": "bad request", "type": "invalid"}}, status=400
            )
        if fault == "401":
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            message = (
                f"Incorrect API key provided: {token}. Key sk-live-0123456789abcdefXYZ is "
                f"revoked too. You can find your API key at https://example.com/keys."
            )
            return web.json_response(
                {"error": {"message": message, "type": "invalid_request_error"}}, status=401
            )
        if fault == "reset":
            assert request.transport is not None
            sock = request.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()  # SO_LINGER 0: the close sends RST
            return web.Response(status=200)
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
        answer = self.completion(body, key, fault)
        if fault == "trickle":
            return await self._trickle(request, json.dumps(answer).encode())
        return web.json_response(answer)

    def completion(self, body: dict, key: str, fault: str) -> dict:
        """The chat completion for ``body``; counts it as a success when it is one."""
        if fault == "empty":
            text = ""
        else:
            text = self.answer(body) if self.answer else self._text(body["messages"])
        if fault == "surrogate":
            text += " \ud800 (a lone surrogate)"
        if fault not in ("empty", "slow", "trickle"):  # those arrive after the client gave up
            self.successes[key] += 1
        prompt = self.prompt_tokens
        if prompt is None:
            prompt = sum(len(m["content"].encode()) for m in body["messages"])
        usage: dict[str, object] = {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
        }
        if fault == "badusage":
            usage["prompt_tokens"] = "lots"
        return {
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
            "usage": usage,
        }

    async def _trickle(self, request: web.Request, data: bytes) -> web.StreamResponse:
        """The whole answer, in 8-byte pieces ``trickle_s`` apart."""
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        try:
            for i in range(0, len(data), 8):
                await resp.write(data[i : i + 8])
                await asyncio.sleep(self.trickle_s)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):  # the client gave up
            pass
        return resp

    @staticmethod
    def _text(messages: list[dict[str, str]]) -> str:
        user = messages[-1]["content"]
        return f"A fake answer to: {user[:80]}"


class ServerThread:
    """Run a FakeOpenAI on ``host`` (127.0.0.1) in a background thread; ``url`` is the /v1
    base URL."""

    def __init__(self, fake: FakeOpenAI, host: str = "127.0.0.1") -> None:
        self.fake = fake
        self.host = host
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.fake.app(), access_log=None)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.host, 0, backlog=1024)
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


class FastFakeOpenAI(asyncio.Protocol):
    """The fast fake server, for throughput and memory benchmarks only: a bare asyncio protocol
    (HTTP/1.1 keep-alive) that answers every chat request with one fixed completion after
    ``latency_s``, at a few microseconds of CPU per request, so the client is what is measured.
    No faults, no counters (use FakeOpenAI for those)."""

    def __init__(self, latency_s: float, completion_tokens: int = 50) -> None:
        self.latency_s = latency_s
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        answer = {
            "id": "chatcmpl-fast",
            "object": "chat.completion",
            "created": 0,
            "model": "fake-model",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "A fake answer, always the same."},
                }
            ],
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": completion_tokens,
                "total_tokens": 100 + completion_tokens,
            },
        }
        models = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
        self.chat = self._response(json.dumps(answer).encode())
        self.models = self._response(json.dumps(models).encode())

    @staticmethod
    def _response(body: bytes) -> bytes:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        return head.encode() + b"\r\nConnection: keep-alive\r\n\r\n" + body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15 : stop if stop >= 0 else None]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            reply = self.models if head.startswith(b"get") else self.chat
            asyncio.get_running_loop().call_later(self.latency_s, self._send, reply)

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)


def serve_fast(port: int, latency_s: float, cpu: int | None = None) -> None:
    """Run a FastFakeOpenAI on 127.0.0.1:port until killed (a benchmark's server process)."""
    import os

    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: FastFakeOpenAI(latency_s), "127.0.0.1", port, backlog=4096
        )
        await server.serve_forever()

    asyncio.run(main())
