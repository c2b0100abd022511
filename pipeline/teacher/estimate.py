"""``dry_run=true``: what a stage would request, and what it would cost, before anything is sent.

Input tokens are counted with a tokenizer of the teacher's family when one is available offline
(OpenAI's o200k_base / cl100k_base, Llama 3 and Qwen through ``quicktok``, which ships them;
SmolLM2's own for the embedded teacher), else with the emit tokenizer (SmolLM2's), and the
estimate says which. Each message adds the chat format's overhead (3 tokens, and 3 for the
reply: OpenAI's published rule). A plan of millions is counted on an evenly spaced sample of
requests and scaled. Output tokens: an upper bound from ``max_tokens`` and, when earlier answers
of the model exist (this stage's outputs, or the response cache), an expected figure from their
mean. Cost online and in batch mode at ``teacher.prices``, and time at the configured rate
limits. Nothing is sent, and the embedded teacher is not started.
"""

from __future__ import annotations

import functools
import itertools
import math
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.config import PipelineConfig
from pipeline.runs import Run
from pipeline.teacher.batch import Job
from pipeline.teacher.budget import SPEND_FILE, read_spend
from pipeline.teacher.cache import cache_key
from pipeline.teacher.client import cost_at, worst_case_tokens

SAMPLE = 20_000  # requests counted one by one; larger plans are sampled evenly and scaled
PER_MESSAGE = 3  # chat-format overhead per message, and for the reply (OpenAI's rule)
# OpenAI model families (longest prefix wins); names not here fall to quicktok's own lookup
OPENAI_ENCODINGS = {
    "gpt-4o": "o200k_base",
    "gpt-4.1": "o200k_base",
    "gpt-4.5": "o200k_base",
    "gpt-5": "o200k_base",
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-3.5": "cl100k_base",
}


@dataclass
class Counter:
    """How a text's tokens are counted, and what to say about it."""

    count: Callable[[str], int]
    name: str
    family: bool  # a tokenizer of the teacher's family (else the emit tokenizer)


def _openai_encoding(model: str) -> str | None:
    m = model.lower().rsplit("/", 1)[-1]
    for prefix in sorted(OPENAI_ENCODINGS, key=len, reverse=True):
        if m == prefix or m.startswith((prefix + "-", prefix + ".")):
            return OPENAI_ENCODINGS[prefix]
    return None


@functools.lru_cache(maxsize=8)
def token_counter(model: str) -> Counter:
    """A tokenizer of ``model``'s family when one is available offline, else the emit one."""
    if "smollm" not in model.lower():
        try:
            import quicktok
        except ImportError:
            quicktok = None
        if quicktok is not None:
            name = _openai_encoding(model)
            try:
                enc = quicktok.get_encoding(name) if name else quicktok.encoding_for_model(model)
            except (KeyError, RuntimeError, ValueError):
                enc = None
            if enc is not None:
                return Counter(enc.count, f"{enc.name} (quicktok)", True)
    from pipeline.tokenize import load_tokenizer

    tok = load_tokenizer("smollm2").tokenizer

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    own = "smollm" in model.lower()
    name = "smollm2 (the emit tokenizer" + (", the teacher's own)" if own else ")")
    return Counter(count, name, own)


def prompt_tokens(counter: Counter, messages: list[dict[str, str]]) -> int:
    return sum(counter.count(str(m.get("content", ""))) + PER_MESSAGE for m in messages) + (
        PER_MESSAGE
    )


def _cached_answers(cfg: PipelineConfig, limit: int = 10_000) -> tuple[int, int]:
    """(answers, completion tokens) of this model in the response cache."""
    from pipeline.teacher import cache_dir

    path = cache_dir(cfg) / "responses.sqlite"
    if not cfg.teacher.cache or not path.exists():
        return 0, 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute(
                "SELECT count(*), sum(t) FROM (SELECT json_extract(value, '$.completion_tokens')"
                " AS t FROM responses WHERE json_extract(value, '$.model') LIKE ? LIMIT ?)",
                (cfg.teacher.model.replace("%", "") + "%", limit),
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 0, 0
    return int(row[0] or 0), int(row[1] or 0)


def estimate(
    cfg: PipelineConfig,
    run: Run,
    stage: str,
    items: Iterator[Any],
    to_job: Callable[[Any], Job],
    n: int,
    earlier: dict[str, float],
) -> dict[str, Any]:
    """The estimate for the ``n`` requests ``items`` make (``to_job`` renders one);
    ``earlier``: answers, completion_tokens and latency_s of this stage's earlier outputs."""
    t = cfg.teacher
    counter = token_counter(t.model)
    step = max(1, math.ceil(n / SAMPLE))
    cache = None
    if t.cache:
        from pipeline.teacher import cache_dir
        from pipeline.teacher.cache import ResponseCache

        cache = ResponseCache(cache_dir(cfg))
    counted = cached = tok_in = worst_in = max_out = 0
    try:
        for item in itertools.islice(items, 0, None, step):
            job = to_job(item)
            params = {"max_tokens": t.max_tokens, "temperature": t.temperature, "top_p": t.top_p}
            params.update(job.params)
            counted += 1
            if cache is not None and cache.get(cache_key(t.model, job.messages, params)):
                cached += 1
                continue
            tok_in += prompt_tokens(counter, job.messages)
            w_in, w_out = worst_case_tokens(job.messages, params, t.max_tokens)
            worst_in += w_in
            max_out += w_out
    finally:
        if cache is not None:
            cache.close()
    scale = n / counted if counted else 0.0
    requests = round((counted - cached) * scale)
    tok_in, worst_in, max_out = (round(v * scale) for v in (tok_in, worst_in, max_out))
    answers, out_tokens = int(earlier.get("answers", 0)), int(earlier.get("completion_tokens", 0))
    basis = f"{answers} earlier answers in this run"
    if not answers:
        answers, out_tokens = _cached_answers(cfg)
        basis = f"{answers} answers of {t.model} in the response cache"
    expected_out = round(requests * out_tokens / answers) if answers else None

    def cost(mode: str, out: int | None, inp: int = tok_in) -> float | None:
        price = t.prices.get(t.model)
        if price is None or out is None:
            return None
        c = cost_at(price.for_mode(mode), inp, out)
        return None if c is None else round(c, 4)

    cap = cfg.budget.max_cost_usd
    spent = read_spend(run.path / SPEND_FILE).total()
    worst = cost(t.mode, max_out, worst_in)
    est: dict[str, Any] = {
        "stage": stage,
        "mode": t.mode,
        "model": t.model,
        "requests": requests,
        "cached": round(cached * scale),
        "counted": "every request" if step == 1 else f"1 in {step} requests, scaled",
        "tokenizer": counter.name,
        "tokenizer_of_teacher_family": counter.family,
        "input_tokens": tok_in,
        "output_tokens_max": max_out,
        "output_tokens_expected": expected_out,
        "expected_from": basis if expected_out is not None else "no earlier answers",
        "cost_usd": {
            "online": {"max": cost("online", max_out), "expected": cost("online", expected_out)},
            "batch": {"max": cost("batch", max_out), "expected": cost("batch", expected_out)},
        },
        "worst_case_usd": worst,
        "budget_usd": cap,
        "run_spent_usd": round(spent, 6),
        "fits_budget": None if cap is None or worst is None else spent + worst <= cap,
        "time": _time(cfg, requests, tok_in + max_out, earlier),
    }
    online = est["cost_usd"]["online"]
    est["summary"] = {
        "requests": requests,
        "input_tokens": tok_in,
        "cost_usd": "unknown" if online["max"] is None else online["expected"] or online["max"],
    }
    return est


def _time(
    cfg: PipelineConfig, requests: int, tokens: int, earlier: dict[str, float]
) -> dict[str, Any]:
    t = cfg.teacher
    out: dict[str, Any] = {}
    if t.mode == "batch":
        out["batch_window"] = t.batch.completion_window
    limits = []
    if t.rpm:
        limits.append(requests / t.rpm * 60)
    if t.tpm:
        limits.append(tokens / t.tpm * 60)
    out["at_rate_limits_s"] = round(max(limits), 1) if limits else None
    if not limits:
        out["note"] = "teacher.rpm and teacher.tpm are not set: no client-side limit"
    answers, latency = earlier.get("answers", 0), earlier.get("latency_s", 0.0)
    if answers and latency:
        per = latency / answers
        est = requests * per / t.concurrency
        out["at_earlier_latency_s"] = round(max(est, *(limits or [0.0])), 1)
        out["mean_latency_s"] = round(per, 3)
    return out


def _usd(v: float | None) -> str:
    return "unknown (no price)" if v is None else f"${v:,.4f}"


def print_estimate(est: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{est['stage']}: estimate (dry_run: nothing sent)", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("requests", f"{est['requests']:,} ({est['cached']:,} answered by the cache)")
    table.add_row(
        "input tokens",
        f"{est['input_tokens']:,} ({est['tokenizer']}; counted {est['counted']})",
    )
    expected = est["output_tokens_expected"]
    table.add_row(
        "output tokens",
        f"at most {est['output_tokens_max']:,}"
        + (f", expected {expected:,} (from {est['expected_from']})" if expected else ""),
    )
    for mode in ("online", "batch"):
        c = est["cost_usd"][mode]
        line = f"at most {_usd(c['max'])}"
        if c["expected"] is not None:
            line += f", expected {_usd(c['expected'])}"
        table.add_row(f"cost, {mode}", line)
    if est["budget_usd"] is not None:
        fits = {True: "fits", False: "does NOT fit", None: "unknown"}[est["fits_budget"]]
        table.add_row(
            "budget",
            f"worst case {_usd(est['worst_case_usd'])} {fits} budget.max_cost_usd="
            f"{est['budget_usd']} ({_usd(est['run_spent_usd'])} spent in this run)",
        )
    tm = est["time"]
    if tm.get("at_rate_limits_s") is not None:
        table.add_row("time at teacher.rpm/tpm", f"{tm['at_rate_limits_s'] / 3600:,.2f} h")
    else:
        table.add_row("time", tm.get("note", ""))
    if tm.get("at_earlier_latency_s") is not None:
        table.add_row(
            "time at earlier latency",
            f"{tm['at_earlier_latency_s'] / 3600:,.2f} h ({tm['mean_latency_s']} s a request, "
            f"teacher.concurrency in flight)",
        )
    if "batch_window" in tm:
        table.add_row("time, batch", f"within the completion window ({tm['batch_window']})")
    console.print(table)
