"""One place where a chat request becomes an API call; retries, limits, cache and cost around it.

Retries (tenacity): 429, 408/409, 5xx, timeouts, connection errors and malformed bodies, with
exponential backoff and jitter, honouring ``Retry-After``. Other errors (400, 401, 404) fail at
once. After the last attempt a :class:`TeacherError` carries the reason: never an empty text.
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass
from typing import Any

import openai
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from pipeline.config import Price, TeacherConfig
from pipeline.teacher.cache import ResponseCache, cache_key
from pipeline.teacher.limits import RateLimits

RETRY_STATUS = {408, 409, 429}


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    latency_s: float
    cached: bool = False


class TeacherError(Exception):
    """A request that failed for good; ``reason`` is short and safe to store."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


class MalformedResponse(Exception):
    """The endpoint answered 200 but the body is not a usable chat completion."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUS or exc.status_code >= 500
    return isinstance(
        exc,
        (
            openai.APITimeoutError,
            openai.APIConnectionError,
            openai.APIResponseValidationError,
            MalformedResponse,
            json.JSONDecodeError,
        ),
    )


def _retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds from a Retry-After / retry-after-ms header, if the error carries one."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


class WaitRetryAfter(wait_base):
    """Wait what the server asked for (capped), else the fallback backoff."""

    def __init__(self, fallback: wait_base, cap_s: float) -> None:
        self.fallback = fallback
        self.cap_s = cap_s

    def __call__(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        ra = _retry_after_s(exc)
        if ra is not None:
            return min(ra, self.cap_s)
        return self.fallback(retry_state)


def describe_error(exc: BaseException) -> str:
    """A short reason for a failures file; never includes request headers (or the key)."""
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}: {str(exc.message)[:200]}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection_error: {type(exc.__cause__).__name__ if exc.__cause__ else 'closed'}"
    if isinstance(
        exc, (MalformedResponse, openai.APIResponseValidationError, json.JSONDecodeError)
    ):
        return f"malformed_response: {str(exc)[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class Teacher:
    """An OpenAI-compatible chat endpoint with retries, limits, a cache and cost accounting."""

    def __init__(
        self,
        cfg: TeacherConfig,
        base_urls: str | list[str],
        api_key: str,
        cache: ResponseCache | None,
    ) -> None:
        """``base_urls``: one endpoint, or several replicas (the embedded teacher runs one
        llama.cpp server per core); each request goes to the replica with fewest in flight."""
        self.cfg = cfg
        self.model = cfg.model
        self.price: Price | None = cfg.prices.get(cfg.model)
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self.clients = [
            openai.AsyncOpenAI(
                base_url=url,
                api_key=api_key,
                max_retries=0,
                timeout=cfg.timeout_s,
                http_client=openai.DefaultAioHttpClient() if cfg.transport == "aiohttp" else None,
            )
            for url in urls
        ]
        self.in_flight = [0] * len(self.clients)
        self.cache = cache
        self.limits = RateLimits(cfg.rpm, cfg.tpm)
        self.requests_sent = 0
        self.cache_hits = 0

    def sampling_params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        params = {
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
            "top_p": self.cfg.top_p,
        }
        params.update(overrides or {})
        return params

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """None when the model has no price: unknown, not free."""
        if self.price is None:
            return None
        return (
            prompt_tokens * self.price.input_per_mtok
            + completion_tokens * self.price.output_per_mtok
        ) / 1e6

    def estimate_tokens(self, messages: list[dict[str, str]], params: dict[str, Any]) -> int:
        chars = sum(len(m.get("content", "")) for m in messages)
        return chars // 4 + 8 * len(messages) + int(params.get("max_tokens", self.cfg.max_tokens))

    def estimate_cost(self, messages: list[dict[str, str]], params: dict[str, Any]) -> float:
        """Upper-ish bound used to stop before a budget is exceeded."""
        if self.price is None:
            return 0.0
        out = int(params.get("max_tokens", self.cfg.max_tokens))
        prompt = self.estimate_tokens(messages, params) - out
        return (prompt * self.price.input_per_mtok + out * self.price.output_per_mtok) / 1e6

    async def complete(
        self, messages: list[dict[str, str]], params: dict[str, Any] | None = None
    ) -> Completion:
        params = self.sampling_params(params)
        key = cache_key(self.model, messages, params)
        if self.cache is not None and (hit := self.cache.get(key)):
            self.cache_hits += 1
            return Completion(**{**hit, "cached": True})
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.max_retries + 1),
            wait=WaitRetryAfter(
                wait_exponential_jitter(
                    initial=self.cfg.backoff_initial_s,
                    max=self.cfg.backoff_max_s,
                    jitter=self.cfg.backoff_initial_s,
                ),
                cap_s=self.cfg.backoff_max_s,
            ),
            retry=retry_if_exception(_retryable),
            reraise=False,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    completion = await self._call(messages, params)
        except RetryError as e:
            exc = e.last_attempt.exception()
            raise TeacherError(describe_error(exc), attempts) from None
        except Exception as e:  # non-retryable API error: fail this item with its reason
            if isinstance(e, (openai.OpenAIError, MalformedResponse, json.JSONDecodeError)):
                raise TeacherError(describe_error(e), attempts) from None
            raise
        if self.cache is not None:
            self.cache.put(key, {k: v for k, v in completion.__dict__.items() if k != "cached"})
        return completion

    async def _call(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        await self.limits.acquire(self.estimate_tokens(messages, params))
        self.requests_sent += 1
        t0 = time.perf_counter()
        # client.post with cast_to=object: the SDK's own request path (auth, base URL, error
        # types, timeouts) without its per-request TypedDict transform and pydantic model
        # construction: 558 vs 514 req/s at 128 in flight (docs/benchmarks.md); the body is
        # validated below
        i = min(range(len(self.clients)), key=self.in_flight.__getitem__)
        self.in_flight[i] += 1
        try:
            body = await self.clients[i].post(
                "/chat/completions",
                cast_to=object,
                body={"model": self.model, "messages": messages, **params},
            )
        finally:
            self.in_flight[i] -= 1
        latency = time.perf_counter() - t0
        return _parse_completion(body, self.model, latency)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        if self.cache is not None:
            self.cache.close()


def _parse_completion(body: Any, model: str, latency: float) -> Completion:
    """Check a chat completion body; anything unusable is a (retryable) MalformedResponse."""
    if not isinstance(body, dict):
        raise MalformedResponse(f"body is {type(body).__name__}, not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("no choices in response")
    choice = choices[0]
    message = choice.get("message") or {}
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise MalformedResponse("empty or missing message content")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Completion(
        text=text,
        finish_reason=str(choice.get("finish_reason") or "unknown"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        model=str(body.get("model") or model),
        latency_s=round(latency, 4),
    )
