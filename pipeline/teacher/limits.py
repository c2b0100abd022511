"""Client-side request-per-minute and token-per-minute limits (async token buckets), and the
limits an endpoint announces in its ``x-ratelimit-*`` headers."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping


class TokenBucket:
    """Allows ``rate_per_min`` units per minute with bursts up to one minute's worth."""

    def __init__(self, rate_per_min: float) -> None:
        self.rate = rate_per_min / 60.0
        self.capacity = float(rate_per_min)
        self.level = float(rate_per_min)
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)  # a request larger than the bucket waits for a full one
        async with self._lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)


class RateLimits:
    """RPM and TPM together; 0 disables a limit."""

    def __init__(self, rpm: int, tpm: int) -> None:
        self.requests = TokenBucket(rpm) if rpm > 0 else None
        self.tokens = TokenBucket(tpm) if tpm > 0 else None

    async def acquire(self, est_tokens: int) -> None:
        if self.requests:
            await self.requests.acquire(1)
        if self.tokens:
            await self.tokens.acquire(est_tokens)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str | None) -> float | None:
    """Seconds in an ``x-ratelimit-reset-*`` header: OpenAI's "1s", "6m0s", "20ms", "1h2m3.5s",
    or plain seconds; None when unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            return None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class HeaderLimit:
    """What an endpoint's ``x-ratelimit-remaining-<kind>`` / ``x-ratelimit-reset-<kind>``
    headers allow until the window resets: the sender stops before the server's 429."""

    def __init__(self, kind: str) -> None:
        self.remaining_header = f"x-ratelimit-remaining-{kind}"
        self.reset_header = f"x-ratelimit-reset-{kind}"
        self.left: float | None = None  # units we may still send before reset_at
        self.reset_at = 0.0

    def update(self, headers: Mapping[str, str], in_flight: int, per_request: float) -> None:
        """Read the headers of an answer; requests still in flight count as already spent."""
        remaining = headers.get(self.remaining_header)
        if remaining is None:
            return
        try:
            left = float(remaining)
        except ValueError:
            return
        reset = parse_reset(headers.get(self.reset_header))
        self.left = left - in_flight * per_request
        self.reset_at = time.monotonic() + (reset if reset is not None else 1.0)

    def wait_s(self, amount: float, now: float) -> float:
        """0 when ``amount`` may be sent now, else the seconds until the window resets."""
        if self.left is None:
            return 0.0
        if now >= self.reset_at:
            self.left = None  # a new window: unknown until the next answer says
            return 0.0
        return 0.0 if self.left >= amount else self.reset_at - now

    def spend(self, amount: float) -> None:
        if self.left is not None:
            self.left -= amount
