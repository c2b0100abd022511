"""The teacher: an async OpenAI-compatible client with retries, limits, cache and cost, plus
the embedded llama.cpp server used when ``teacher.base_url`` is empty.

    async with open_teacher(cfg, run, console) as teacher:
        stats = await run_batch(teacher, jobs, on_success, on_failure, console, label="generate")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.runs import Run
from pipeline.teacher.batch import BatchStats, Job, run_batch
from pipeline.teacher.cache import ResponseCache
from pipeline.teacher.client import Completion, Teacher, TeacherError
from pipeline.teacher.server import local_server

__all__ = [
    "BatchStats",
    "Completion",
    "Job",
    "Teacher",
    "TeacherError",
    "open_teacher",
    "run_batch",
]


def cache_dir(cfg: PipelineConfig) -> Path:
    return (
        Path(cfg.teacher.cache_dir)
        if cfg.teacher.cache_dir
        else (Path(cfg.run.root) / ".cache" / "teacher")
    )


def _api_key(cfg: PipelineConfig, base_url: str) -> str:
    key = os.environ.get(cfg.teacher.api_key_env, "")
    if key:
        return key
    host = urlparse(base_url).hostname or ""
    if host.endswith("openai.com"):
        raise DatagenError(
            f"teacher.api_key_env: environment variable "
            f"{cfg.teacher.api_key_env} is not set (needed for {host})"
        )
    return "not-needed"  # local servers (llama.cpp, vLLM, Ollama) accept any key


@contextlib.asynccontextmanager
async def open_teacher(cfg: PipelineConfig, run: Run, console: Console) -> AsyncIterator[Teacher]:
    cache = ResponseCache(cache_dir(cfg)) if cfg.teacher.cache else None
    with contextlib.ExitStack() as stack:
        urls = [cfg.teacher.base_url]
        if not cfg.teacher.base_url:
            urls = stack.enter_context(
                local_server(cfg.teacher.local, cfg.teacher.model, run.path / "logs", console)
            )
        teacher = Teacher(cfg.teacher, urls, _api_key(cfg, urls[0]), cache)
        try:
            yield teacher
        finally:
            await teacher.close()
