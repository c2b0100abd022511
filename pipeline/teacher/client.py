"""One place where a chat request becomes an API call; retries, limits, cache and cost around it.

Retries (tenacity): 429, 408/409, 5xx, timeouts, connection errors and malformed bodies, with
exponential backoff and jitter, honouring ``Retry-After``. Other errors (400, 401, 404) fail at
once. After the last attempt a :class:`TeacherError` carries the reason: never an empty text,
never the API key. ``teacher.timeout_s`` is a deadline for a whole attempt (a server that
trickles its answer cannot hold a worker past it). Each attempt's cost goes to the run's spend
ledger (:mod:`pipeline.teacher.budget`) the moment its answer arrives.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
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
from pipeline.secrets import redact
from pipeline.teacher.budget import BudgetExhausted, SpendLedger
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
            TimeoutError,  # the per-attempt deadline
        ),
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it (the SDK wraps httpx errors, which wrap aiohttp's)."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


# the SDK's aiohttp transport maps every aiohttp.ClientConnectionError (a reset, a closed
# connection, a refused connect) to httpx.ConnectTimeout, so the SDK reports APITimeoutError;
# the aiohttp error underneath says what really happened
_CONNECT_FAILED = (aiohttp.ClientConnectorError, httpx2.ConnectError, ConnectionRefusedError)
_TIMEOUTS = (TimeoutError, httpx2.TimeoutException)


def _connection_problem(exc: BaseException) -> BaseException | None:
    """The underlying connection error (reset, disconnect, refused), if it was not a timeout."""
    causes = _causes(exc)
    for c in causes[1:]:
        if isinstance(c, (aiohttp.ClientConnectionError, OSError)) and not isinstance(
            c, TimeoutError
        ):
            return c
    for c in causes[1:]:
        if isinstance(c, httpx2.TransportError) and not isinstance(c, _TIMEOUTS):
            return c
    return None


def _never_sent(exc: BaseException) -> bool:
    """The connection never opened, so the request cannot have been billed."""
    return any(isinstance(c, _CONNECT_FAILED) for c in _causes(exc))


def _retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds from a Retry-After / retry-after-ms header, if the error carries one."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            seconds = float(ms) / 1000.0
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(0.0, seconds)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:  # an HTTP date; anything else is ignored (the backoff applies)
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


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


def describe_error(exc: BaseException, *secrets: str, timeout_s: float | None = None) -> str:
    """A short reason for a failures file: never request headers, never the key (the server's
    message is redacted: a 401 may quote the key)."""
    return redact(_describe(exc, timeout_s), *secrets)


def _describe(exc: BaseException, timeout_s: float | None) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}: {str(exc.message)[:200]}"
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        if (c := _connection_problem(exc)) is not None:
            detail = " ".join(str(c).split())[:160]
            return f"connection_error: {type(c).__name__}" + (f": {detail}" if detail else "")
        if isinstance(exc, openai.APITimeoutError):
            return "timeout"
        return "connection_error: closed"
    if isinstance(exc, TimeoutError):
        limit = f" within teacher.timeout_s={timeout_s:g}s" if timeout_s else ""
        return f"timeout: no complete answer{limit}"
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
        ledger: SpendLedger | None = None,
    ) -> None:
        """``base_urls``: one endpoint, or several replicas (the embedded teacher runs one
        llama.cpp server per core); each request goes to the replica with fewest in flight.
        ``ledger``: where each attempt's cost is recorded and the budget checked."""
        self.cfg = cfg
        self.api_key = api_key
        self.ledger = ledger
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

    def worst_case_cost(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> float | None:
        """The most one attempt can cost if the endpoint keeps to ``max_tokens``: every UTF-8
        byte of the prompt (and of a response_format schema) as a token (byte-level BPE and
        byte-fallback tokenizers never do worse) plus per-message overhead, and ``max_tokens``
        out. None when the model has no price."""
        if self.price is None:
            return None
        prompt = sum(len(str(m.get("content", "")).encode("utf-8", "replace")) for m in messages)
        prompt += 8 * len(messages) + 8
        if (fmt := params.get("response_format")) is not None:
            prompt += len(json.dumps(fmt).encode())
        out = int(params.get("max_tokens", self.cfg.max_tokens))
        return self.cost_usd(prompt, out)

    async def complete(
        self,
        messages: list[dict[str, str]],
        params: dict[str, Any] | None = None,
        item_id: str = "",
    ) -> Completion:
        """The completion, from the cache when it holds it (free). Raises
        :class:`TeacherError` after the last attempt, :class:`BudgetExhausted` when the next
        attempt does not fit the budget."""
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
                    completion = await self._call(messages, params, item_id)
        except RetryError as e:
            exc = e.last_attempt.exception()
            assert exc is not None
            raise TeacherError(self._reason(exc), attempts) from None
        except BudgetExhausted:
            raise
        except Exception as e:  # non-retryable API error: fail this item with its reason
            if isinstance(e, (openai.OpenAIError, MalformedResponse, json.JSONDecodeError)):
                raise TeacherError(self._reason(e), attempts) from None
            raise
        if self.cache is not None:
            self.cache.put(key, {k: v for k, v in completion.__dict__.items() if k != "cached"})
        return completion

    def _reason(self, exc: BaseException) -> str:
        return describe_error(exc, self.api_key, timeout_s=self.cfg.timeout_s)

    async def _call(
        self, messages: list[dict[str, str]], params: dict[str, Any], item_id: str
    ) -> Completion:
        await self.limits.acquire(self.estimate_tokens(messages, params))
        worst = self.worst_case_cost(messages, params)
        key = await self.ledger.admit(item_id, worst) if self.ledger else ""
        self.requests_sent += 1
        t0 = time.perf_counter()
        # client.post with cast_to=object: the SDK's own request path (auth, base URL, error
        # types, timeouts) without its per-request TypedDict transform and pydantic model
        # construction: 558 vs 514 req/s at 128 in flight (docs/benchmarks.md); the body is
        # validated below
        i = min(range(len(self.clients)), key=self.in_flight.__getitem__)
        self.in_flight[i] += 1
        try:
            # the SDK's timeout is per read; this one bounds the whole attempt
            async with asyncio.timeout(self.cfg.timeout_s):
                body = await self.clients[i].post(
                    "/chat/completions",
                    cast_to=object,
                    body={"model": self.model, "messages": messages, **params},
                )
        except BaseException as e:
            if self.ledger:
                if isinstance(e, openai.APIStatusError) or _never_sent(e):
                    self.ledger.unbilled(key)  # an error status or no connection: not billed
                else:
                    self.ledger.abandon(key)  # no answer: may be billed, counted at worst
            raise
        finally:
            self.in_flight[i] -= 1
        latency = time.perf_counter() - t0
        usage, problem = _read_usage(body)
        if self.ledger:  # charged as it arrives, whatever the body holds
            self.ledger.paid(key, usage, self.cost_usd(*usage) if usage else None)
        if problem:
            raise MalformedResponse(problem)
        return _parse_completion(body, self.model, latency)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        if self.cache is not None:
            self.cache.close()


def _read_usage(body: Any) -> tuple[tuple[int, int] | None, str]:
    """(prompt, completion) tokens from ``usage``, or None when absent or unreadable; the
    second value names the problem when a field is there but not a token count."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None, ""
    counts = []
    for name in ("prompt_tokens", "completion_tokens"):
        v = usage.get(name)
        if v is None:
            return None, ""
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return None, f"usage.{name} is not a token count (got {str(v)[:40]!r})"
        counts.append(v)
    return (counts[0], counts[1]), ""


def _clean(text: str) -> str:
    """Lone surrogates (legal as JSON escapes, not encodable as UTF-8) become '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


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
    usage, problem = _read_usage(body)
    if problem:
        raise MalformedResponse(problem)
    return Completion(
        text=_clean(text),
        finish_reason=_clean(str(choice.get("finish_reason") or "unknown")),
        prompt_tokens=usage[0] if usage else 0,
        completion_tokens=usage[1] if usage else 0,
        model=_clean(str(body.get("model") or model)),
        latency_s=round(latency, 4),
    )
