"""Many endpoints of one model (vLLM replicas, llama.cpp servers, one API): which one gets the
next request, and which ones are resting.

Each request goes to the healthy endpoint with the fewest requests in flight. An endpoint whose
requests keep failing (``teacher.endpoint_failures`` in a row: connection refused or cut, 5xx,
timeouts) is taken out for ``teacher.endpoint_cooldown_s`` while another one is in service, and
its work goes to the others; after the cool-down it gets requests again, and one more failure
takes it out again. A 429 with ``Retry-After`` pauses every request to that endpoint, not just
the one that got it; ``x-ratelimit-remaining-*`` headers hold the sender once the window is
spent, before the server answers 429.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Any, Literal

from pipeline.redaction import safe_url
from pipeline.teacher.limits import HeaderLimit

# ok: an answer; down: the endpoint failed (connection, 5xx, timeout); limited: 429;
# error: the request failed (4xx, an unusable body); none: nothing happened (cancelled)
Outcome = Literal["ok", "down", "limited", "error", "none"]


class Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.chat_url = f"{self.url}/chat/completions"
        self.in_flight = 0
        self.requests = 0
        self.ok = 0
        self.failures = 0
        self.rate_limited = 0
        self.cooldowns = 0
        self.streak = 0  # failures in a row
        self.down_until = 0.0  # monotonic time its cool-down ends
        self.paused_until = 0.0  # a 429's Retry-After
        self.request_limit = HeaderLimit("requests")
        self.token_limit = HeaderLimit("tokens")

    def wait_s(self, now: float, tokens: float) -> float:
        """0 when a request of ``tokens`` may go now, else how long until it may."""
        return max(
            0.0,
            self.down_until - now,
            self.paused_until - now,
            self.request_limit.wait_s(1, now),
            self.token_limit.wait_s(tokens, now),
        )

    def report(self) -> dict[str, Any]:
        return {
            "url": safe_url(self.url),
            "requests": self.requests,
            "ok": self.ok,
            "failures": self.failures,
            "rate_limited": self.rate_limited,
            "cooldowns": self.cooldowns,
        }


class EndpointPool:
    def __init__(self, urls: list[str], failures_to_rest: int, cooldown_s: float) -> None:
        self.endpoints = [Endpoint(u) for u in urls]
        self.failures_to_rest = failures_to_rest
        self.cooldown_s = cooldown_s
        self._changed = asyncio.Event()
        self._waiting = 0

    async def acquire(self, tokens: float) -> Endpoint:
        """The least-loaded endpoint that may take a request now (waits when none may)."""
        while True:
            now = time.monotonic()
            best: Endpoint | None = None
            soonest = math.inf
            for e in self.endpoints:
                w = e.wait_s(now, tokens)
                if w > 0:
                    soonest = min(soonest, w)
                elif best is None or e.in_flight < best.in_flight:
                    best = e
            if best is not None:
                best.in_flight += 1
                best.requests += 1
                best.request_limit.spend(1)
                best.token_limit.spend(tokens)
                return best
            await self._wait(soonest)

    async def _wait(self, seconds: float) -> None:
        """Until ``seconds`` pass or an answer changes what the endpoints allow."""
        self._waiting += 1
        try:
            async with asyncio.timeout(max(0.001, min(seconds, 1.0))):
                await self._changed.wait()
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1

    def others_up(self, e: Endpoint, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return any(o is not e and o.down_until <= now for o in self.endpoints)

    def release(
        self,
        e: Endpoint,
        outcome: Outcome,
        headers: Mapping[str, str] | None = None,
        tokens: float = 0.0,
        retry_after_s: float | None = None,
    ) -> None:
        """Record how a request to ``e`` ended."""
        e.in_flight -= 1
        now = time.monotonic()
        if headers is not None:
            e.request_limit.update(headers, e.in_flight, 1.0)
            e.token_limit.update(headers, e.in_flight, tokens)
        if outcome == "ok":
            e.ok += 1
            e.streak = 0
        elif outcome == "down":
            e.failures += 1
            e.streak += 1
            # never the last endpoint in service: with no other, the retries' backoff rules
            if e.streak >= self.failures_to_rest and self.others_up(e, now):
                e.down_until = now + self.cooldown_s
                e.cooldowns += 1
        elif outcome == "limited":
            e.failures += 1
            e.rate_limited += 1
            if retry_after_s is not None:
                e.paused_until = max(e.paused_until, now + retry_after_s)
        elif outcome == "error":
            e.failures += 1
        if self._waiting:
            self._changed.set()
            self._changed = asyncio.Event()

    def report(self) -> list[dict[str, Any]]:
        return [e.report() for e in self.endpoints]
