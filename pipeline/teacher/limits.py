"""Client-side request-per-minute and token-per-minute limits (async token buckets)."""

from __future__ import annotations

import asyncio
import time


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
