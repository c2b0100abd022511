"""One place where a chat request becomes an API call; retries, limits, cache and cost around it.

The request goes out through one shared aiohttp session (the openai SDK's per-request
machinery, typed options, httpx-style request objects and response models, costs more CPU than
the rest of datagen's request path together: docs/benchmarks.md), to the endpoint the
:class:`EndpointPool` picks. Retries (tenacity): 429, 408/409, 5xx, timeouts, connection errors
and malformed bodies, with exponential backoff and jitter; a 429's ``Retry-After`` pauses the
whole endpoint (every request to it waits), other errors (400, 401, 404, redirects) fail at
once. A connection that cannot be opened costs no attempt while another endpoint is in
service: the request goes there. After the last attempt a :class:`TeacherError` carries the
reason: never an empty text, never the API key. ``teacher.timeout_s`` is a deadline for a whole
attempt (a server that trickles its answer cannot hold a worker past it). Each attempt's cost
goes to the run's spend ledger (:mod:`pipeline.teacher.budget`) the moment its answer arrives.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from pipeline.config import Price, TeacherConfig
from pipeline.redaction import redact
from pipeline.teacher.budget import SpendLedger
from pipeline.teacher.cache import ResponseCache, cache_key
from pipeline.teacher.endpoints import Endpoint, EndpointPool
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


class HTTPStatusError(Exception):
    """The endpoint answered with an error status."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"http_{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class ConnectionProblem(Exception):
    """No answer: the connection could not be opened (``never_sent``), or broke."""

    def __init__(self, detail: str, never_sent: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.never_sent = never_sent


class AttemptTimeout(Exception):
    """No complete answer within ``teacher.timeout_s``."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, HTTPStatusError):
        return exc.status in RETRY_STATUS or exc.status >= 500
    return isinstance(exc, (ConnectionProblem, AttemptTimeout, MalformedResponse))


# a connect that failed (refused, no route, TLS handshake): the request was never sent
_CONNECT_FAILED = (aiohttp.ClientConnectorError, ConnectionRefusedError)


def _connection_problem(exc: BaseException) -> ConnectionProblem:
    detail = " ".join(str(exc).split())[:160]
    name = type(exc).__name__
    return ConnectionProblem(
        f"{name}: {detail}" if detail else name, isinstance(exc, _CONNECT_FAILED)
    )


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a Retry-After / retry-after-ms header, if there is a readable one."""
    if headers is None:
        return None
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


class WaitBackoff(wait_base):
    """No wait after a 429 that said when to come back (its endpoint is paused for everyone,
    this request included); else the exponential backoff."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, HTTPStatusError) and exc.retry_after_s is not None:
            return 0.0
        return self.fallback(retry_state)


def describe_error(exc: BaseException, *secrets: str, timeout_s: float | None = None) -> str:
    """A short reason for a failures file: never request headers, never the key (the server's
    message is redacted: a 401 may quote the key)."""
    return redact(_describe(exc, timeout_s), *secrets)


def _describe(exc: BaseException, timeout_s: float | None) -> str:
    if isinstance(exc, HTTPStatusError):
        return f"http_{exc.status}: {exc.message[:200]}"
    if isinstance(exc, ConnectionProblem):
        return f"connection_error: {exc.detail}"
    if isinstance(exc, AttemptTimeout):
        limit = f" within teacher.timeout_s={timeout_s:g}s" if timeout_s else ""
        return f"timeout: no complete answer{limit}"
    if isinstance(exc, MalformedResponse):
        return f"malformed_response: {str(exc)[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _error_message(raw: bytes) -> str:
    """The server's error message: ``error.message`` of a JSON body, else the body's text."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return " ".join(str(msg).split())
    return " ".join(raw[:400].decode("utf-8", "replace").split()) or "(empty body)"


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
        llama.cpp server per core); each request goes to the least-loaded healthy one.
        ``ledger``: where each attempt's cost is recorded and the budget checked."""
        self.cfg = cfg
        self.api_key = api_key
        self.ledger = ledger
        self.model = cfg.model
        self.price: Price | None = cfg.price()
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self.pool = EndpointPool(urls, cfg.endpoint_failures, cfg.endpoint_cooldown_s)
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._session: aiohttp.ClientSession | None = None
        self.cache = cache
        self.limits = RateLimits(cfg.rpm, cfg.tpm)
        self.requests_sent = 0
        self.cache_hits = 0
        self._retry_wait = WaitBackoff(
            wait_exponential_jitter(
                initial=cfg.backoff_initial_s, max=cfg.backoff_max_s, jitter=cfg.backoff_initial_s
            )
        )

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created in the running event loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_read=self.cfg.timeout_s),
                auto_decompress=True,
            )
        return self._session

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
        return cost_at(self.price, prompt_tokens, completion_tokens)

    def estimate_tokens(self, messages: list[dict[str, str]], params: dict[str, Any]) -> int:
        chars = sum(len(m.get("content", "")) for m in messages)
        return chars // 4 + 8 * len(messages) + int(params.get("max_tokens", self.cfg.max_tokens))

    def worst_case_cost(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> float | None:
        """The most one attempt can cost if the endpoint keeps to ``max_tokens`` (see
        :func:`worst_case_tokens`). None when the model has no price."""
        if self.price is None:
            return None
        return self.cost_usd(*worst_case_tokens(messages, params, self.cfg.max_tokens))

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
            wait=self._retry_wait,
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
        except (HTTPStatusError, MalformedResponse) as e:  # not retryable: fail this item
            raise TeacherError(self._reason(e), attempts) from None
        if self.cache is not None:
            self.cache.put(key, completion_record(completion))
        return completion

    def _reason(self, exc: BaseException) -> str:
        return describe_error(exc, self.api_key, timeout_s=self.cfg.timeout_s)

    async def _call(
        self, messages: list[dict[str, str]], params: dict[str, Any], item_id: str
    ) -> Completion:
        tokens = self.estimate_tokens(messages, params)
        await self.limits.acquire(tokens)
        worst = self.worst_case_cost(messages, params)
        data = json.dumps(
            {"model": self.model, "messages": messages, **params}, ensure_ascii=False
        ).encode("utf-8")
        while True:  # a connect that fails goes to another endpoint, at no attempt's cost
            ep = await self.pool.acquire(tokens)
            try:
                key = await self.ledger.admit(item_id, worst) if self.ledger else ""
            except BaseException:
                self.pool.release(ep, "none")
                raise
            try:
                return await self._send(ep, data, key, tokens)
            except ConnectionProblem as e:
                if not (e.never_sent and self.pool.others_up(ep)):
                    raise

    async def _send(self, ep: Endpoint, data: bytes, key: str, tokens: int) -> Completion:
        self.requests_sent += 1
        t0 = time.perf_counter()
        try:
            # the session's timeout is per read; this one bounds the whole attempt
            async with asyncio.timeout(self.cfg.timeout_s):
                async with self.session().post(
                    ep.chat_url, data=data, headers=self._headers, allow_redirects=False
                ) as resp:
                    raw = await resp.read()
                    status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            problem = AttemptTimeout() if isinstance(e, TimeoutError) else _connection_problem(e)
            if self.ledger:  # a connection that never opened cannot be billed
                never = isinstance(problem, ConnectionProblem) and problem.never_sent
                (self.ledger.unbilled if never else self.ledger.abandon)(key)
            self.pool.release(ep, "down")
            raise problem from None
        except BaseException:  # cancelled: may have been billed, counted at worst
            if self.ledger:
                self.ledger.abandon(key)
            self.pool.release(ep, "none")
            raise
        latency = time.perf_counter() - t0
        if status >= 300:
            if self.ledger:
                self.ledger.unbilled(key)  # an error status is not billed
            ra = retry_after_s(headers) if status == 429 else None
            outcome = "down" if status >= 500 else "limited" if status == 429 else "error"
            self.pool.release(ep, outcome, headers, tokens, ra)
            raise HTTPStatusError(status, _error_message(raw), ra)
        try:
            body = json.loads(raw)
        except ValueError as e:
            body, problem = None, f"body is not JSON ({e.msg} at char {e.pos})"
        else:
            problem = ""
        usage, usage_problem = _read_usage(body)
        if self.ledger:  # charged as it arrives, whatever the body holds
            self.ledger.paid(key, usage, self.cost_usd(*usage) if usage else None)
        try:
            if problem or usage_problem:
                raise MalformedResponse(problem or usage_problem)
            completion = _parse_completion(body, self.model, latency)
        except MalformedResponse:
            self.pool.release(ep, "error", headers, tokens)
            raise
        self.pool.release(ep, "ok", headers, tokens)
        return completion

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.cache is not None:
            self.cache.close()


def cost_at(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    if price is None:
        return None
    return (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6


def worst_case_tokens(
    messages: list[dict[str, str]], params: dict[str, Any], default_max_tokens: int
) -> tuple[int, int]:
    """(prompt, completion) tokens one request can be billed at most if the endpoint keeps to
    ``max_tokens``: every UTF-8 byte of the prompt (and of a response_format schema) as a token
    (byte-level BPE and byte-fallback tokenizers never do worse) plus per-message overhead,
    and ``max_tokens`` out."""
    prompt = sum(len(str(m.get("content", "")).encode("utf-8", "replace")) for m in messages)
    prompt += 8 * len(messages) + 8
    if (fmt := params.get("response_format")) is not None:
        prompt += len(json.dumps(fmt).encode())
    return prompt, int(params.get("max_tokens", default_max_tokens))


def completion_record(c: Completion) -> dict[str, Any]:
    """What the response cache stores of a completion."""
    return {k: v for k, v in c.__dict__.items() if k != "cached"}


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
