"""The teacher: an async OpenAI-compatible client with retries, limits, cache and cost over one
endpoint or many (``teacher.base_url``: a URL or a list), plus the embedded llama.cpp server
used when ``teacher.base_url`` is empty. ``teacher.mode=batch`` is :mod:`.batchapi`,
``dry_run`` is :mod:`.estimate`.

    async with open_teacher(cfg, run, console, stage="generate") as teacher:
        stats = await run_batch(teacher, jobs, on_success, on_failure, console, label="generate")

The key (``$OPENAI_API_KEY``, or ``teacher.api_key_env``) goes to a loopback host, or to any
host over https; a plain-http non-loopback endpoint gets it only with
``teacher.allow_insecure_key=true``. Credentials in ``teacher.base_url`` are refused.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from pipeline.config import PipelineConfig, TeacherConfig
from pipeline.errors import DatagenError
from pipeline.redaction import env_secret, has_credentials, redact, safe_url
from pipeline.runs import Run
from pipeline.teacher.batch import BatchStats, Job, ask, run_batch, run_tasks
from pipeline.teacher.budget import (
    SPEND_FILE,
    BudgetExhausted,
    SpendLedger,
    budget_note,
    spend_report,
)
from pipeline.teacher.cache import ResponseCache
from pipeline.teacher.client import Completion, Teacher, TeacherError
from pipeline.teacher.server import local_server

__all__ = [
    "BatchStats",
    "BudgetExhausted",
    "Completion",
    "Job",
    "Teacher",
    "TeacherError",
    "ask",
    "budget_note",
    "check_teacher_config",
    "open_teacher",
    "run_batch",
    "run_tasks",
    "spend_report",
]


def cache_dir(cfg: PipelineConfig) -> Path:
    return (
        Path(cfg.teacher.cache_dir)
        if cfg.teacher.cache_dir
        else (Path(cfg.run.root) / ".cache" / "teacher")
    )


NO_KEY = "not-needed"  # local servers (llama.cpp, vLLM, Ollama) accept any key


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, t: TeacherConfig, field: str = "teacher.base_url") -> None:
    """One endpoint URL: http(s) with a host, one URL (not two joined), no credentials, and
    the key only where it may go. ``field`` names the setting in the error."""
    section = field.rsplit(".", 1)[0]
    if has_credentials(url):  # never echo the URL: it holds the credentials
        raise DatagenError(
            f"{field}: credentials in the URL are refused (they would be logged and "
            f"stored); put the key in ${t.api_key_env} ({section}.api_key_env) instead"
        )
    if any(c in url for c in ", \t\n") or url.count("://") > 1:
        raise DatagenError(
            f"{field}: {redact(url.strip()[:200])!r} is not one URL"
            + (
                "; for several endpoints give a list: "
                "teacher.base_url=[http://host1:8000/v1,http://host2:8000/v1]"
                if field == "teacher.base_url"
                else ""
            )
        )
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise DatagenError(
            f"{field}: {redact(url[:200])!r} has a port that is not a number"
        ) from None
    shown = safe_url(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DatagenError(f"{field}: {shown!r} is not an http(s):// URL with a host")
    host = parts.hostname
    insecure = parts.scheme == "http" and not _is_loopback(host)
    if insecure and env_secret(t.api_key_env) and not t.allow_insecure_key:
        raise DatagenError(
            f"{field}: ${t.api_key_env} is not sent to {host} over plain http; "
            f"use https, or set {section}.allow_insecure_key=true to send it anyway"
        )


def check_teacher_config(cfg: PipelineConfig) -> None:
    """Refuse, in one line, an endpoint the key must not go to, a URL that is not one, and a
    budget that cannot be kept; runs before any stage does (stage preflight) and again when
    the teacher opens."""
    t = cfg.teacher
    if cfg.budget.max_cost_usd is not None and t.model not in t.prices:
        raise DatagenError(
            f"budget.max_cost_usd is set but teacher.prices has no price for "
            f"'{t.model}': add teacher.prices.{t.model}"
        )
    urls = t.urls()
    for url in urls:
        check_url(url, t)
    if len(set(urls)) != len(urls):
        raise DatagenError("teacher.base_url: the list names one endpoint twice")
    if t.mode == "batch" and not t.batch.local_dir and len(urls) != 1:
        raise DatagenError(
            "teacher.mode=batch: needs one teacher.base_url (a Batch API such as "
            "https://api.openai.com/v1), or teacher.batch.local_dir for vllm run-batch"
        )


def _api_key(cfg: PipelineConfig, base_urls: list[str]) -> str:
    key = env_secret(cfg.teacher.api_key_env)
    if key:
        return key
    for url in base_urls:
        host = urlsplit(url).hostname or ""
        if host.endswith("openai.com"):
            raise DatagenError(
                f"teacher.api_key_env: environment variable "
                f"{cfg.teacher.api_key_env} is not set (needed for {host})"
            )
    return NO_KEY


@contextlib.asynccontextmanager
async def open_teacher(
    cfg: PipelineConfig, run: Run, console: Console, stage: str
) -> AsyncIterator[Teacher]:
    """The configured teacher; its attempts go to ``<run>/spend.jsonl`` under ``stage``."""
    check_teacher_config(cfg)
    cache = ResponseCache(cache_dir(cfg)) if cfg.teacher.cache else None
    with contextlib.ExitStack() as stack:
        if cfg.teacher.urls():
            urls = cfg.teacher.urls()
            key = _api_key(cfg, urls)
        else:  # the embedded server needs no key: the user's is never sent to it
            urls = stack.enter_context(
                local_server(cfg.teacher.local, cfg.teacher.model, run.path / "logs", console)
            )
            key = NO_KEY
        price = cfg.teacher.price()
        paid = price is not None and (price.input_per_mtok > 0 or price.output_per_mtok > 0)
        ledger = SpendLedger(run.path / SPEND_FILE, stage, cfg.budget.max_cost_usd, fsync=paid)
        teacher = Teacher(cfg.teacher, urls, key, cache, ledger)
        try:
            yield teacher
        finally:
            try:
                await teacher.close()
            finally:
                await ledger.aclose()
