"""Teacher pieces on their own: rate limits (on a simulated clock), Retry-After, cost, cache."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.config import load_config
from pipeline.redaction import redact
from pipeline.teacher import limits
from pipeline.teacher.cache import ResponseCache, cache_key
from pipeline.teacher.client import MalformedResponse, Teacher, _parse_completion, retry_after_s


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.now += s


@pytest.fixture
def clock(monkeypatch):
    c = SimClock()
    monkeypatch.setattr(limits.time, "monotonic", c.monotonic)
    monkeypatch.setattr(limits.asyncio, "sleep", c.sleep)
    return c


def test_rpm_bucket_allows_a_minute_of_burst_then_paces(clock):
    bucket = limits.TokenBucket(60)  # 1 request per second

    async def go() -> list[float]:
        stamps = []
        for _ in range(63):
            await bucket.acquire(1)
            stamps.append(clock.now)
        return stamps

    stamps = asyncio.run(go())
    assert stamps[59] == 0.0  # the first 60 go at once
    assert stamps[60:] == pytest.approx([1.0, 2.0, 3.0])


def test_tpm_limit_charges_estimated_tokens(clock):
    rl = limits.RateLimits(rpm=0, tpm=6000)  # 100 tokens per second

    async def go() -> None:
        for _ in range(3):
            await rl.acquire(3000)

    asyncio.run(go())
    assert clock.now == pytest.approx(30.0)  # 9000 tokens: 6000 burst + 3000 at 100/s


def test_retry_after_seconds_and_ms_headers_are_read():
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({}) is None


def test_cost_uses_input_price_for_input_and_output_price_for_output():
    cfg = load_config(["teacher.model=gpt-4o-mini"])
    t = Teacher(cfg.teacher, "http://127.0.0.1:9/v1", "k", None)
    assert t.cost_usd(1_000_000, 0) == pytest.approx(0.15)
    assert t.cost_usd(0, 1_000_000) == pytest.approx(0.60)
    unknown = Teacher(load_config(["teacher.model=my-finetune"]).teacher, "http://x/v1", "k", None)
    assert unknown.cost_usd(10, 10) is None


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"choices": []},
        {"choices": [{"message": {}}]},
        {"choices": [{"message": {"content": "  "}}]},
    ],
)
def test_unusable_bodies_are_malformed_not_empty_text(body):
    with pytest.raises(MalformedResponse):
        _parse_completion(body, "m", 0.1)


def test_cache_key_depends_on_model_messages_and_params(tmp_path):
    msgs = [{"role": "user", "content": "hi"}]
    k = cache_key("m", msgs, {"temperature": 0.7})
    assert k == cache_key("m", [dict(m) for m in msgs], {"temperature": 0.7})
    assert k != cache_key("m2", msgs, {"temperature": 0.7})
    assert k != cache_key("m", msgs, {"temperature": 0.8})
    cache = ResponseCache(tmp_path)
    cache.put(k, {"text": "x"})
    assert ResponseCache(tmp_path).get(k) == {"text": "x"}  # another connection sees it
    assert cache.get(cache_key("m2", msgs, {})) is None


@pytest.mark.parametrize("value", ["soon", "", "nan", "inf", "-inf", "Mon, 99 Foo 20x"])
def test_a_retry_after_that_is_neither_seconds_nor_a_date_is_ignored(value):
    assert retry_after_s({"retry-after": value}) is None


def test_a_retry_after_date_in_the_past_means_now():
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_redact_removes_the_key_and_key_shaped_tokens():
    text = (
        "Incorrect API key provided: my-own-key-123. Also sk-proj-abcdefgh12345678, "
        "Authorization: Bearer abc.def-123456, https://user:pw@host/v1?api_key=zzzz9999"
    )
    out = redact(text, "my-own-key-123")
    for secret in ("my-own-key-123", "sk-proj-abcdefgh12345678", "abc.def-123456", "pw@", "zzzz"):
        assert secret not in out
    assert out.count("[REDACTED]") == 5 and out.startswith("Incorrect API key provided: ")
    assert redact("max_tokens=600 completion_tokens: 5 id p-0123456789abcdef") == (
        "max_tokens=600 completion_tokens: 5 id p-0123456789abcdef"
    )
