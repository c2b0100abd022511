"""Run many teacher requests with a concurrency limit, a budget and a progress bar."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from pipeline.teacher.client import Completion, Teacher, TeacherError


@dataclass
class Job:
    id: str
    messages: list[dict[str, str]]
    template: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchStats:
    done: int = 0
    failed: int = 0
    cached: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_known: bool = True
    spent_usd: float = 0.0
    stopped_by_budget: bool = False
    skipped_by_budget: int = 0

    @property
    def cost_usd(self) -> float | None:
        return round(self.spent_usd, 6) if self.cost_known else None


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "-/s", style="progress.data.speed")


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok={task.fields[done]} failed={task.fields[failed]}"),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


async def run_batch(
    teacher: Teacher,
    jobs: Iterable[Job],
    on_success: Callable[[Job, Completion], None],
    on_failure: Callable[[Job, str, int], None],
    console: Console,
    label: str,
    total: int | None = None,
    budget_usd: float | None = None,
) -> BatchStats:
    """Send ``jobs`` with ``teacher.cfg.concurrency`` workers. Before each request the budget
    is checked against what was spent plus what is in flight, so it stops before exceeding."""
    stats = BatchStats(cost_known=teacher.price is not None)
    it = iter(jobs)
    reserved = 0.0
    progress = make_progress(console)
    task = progress.add_task(label, total=total, done=0, failed=0)

    async def worker() -> None:
        nonlocal reserved
        for job in it:
            params = teacher.sampling_params(job.params)
            est = teacher.estimate_cost(job.messages, params)
            if budget_usd is not None and stats.spent_usd + reserved + est > budget_usd:
                stats.stopped_by_budget = True
                stats.skipped_by_budget += 1
                continue
            reserved += est
            try:
                c = await teacher.complete(job.messages, job.params)
            except TeacherError as e:
                stats.failed += 1
                on_failure(job, e.reason, e.attempts)
            else:
                stats.done += 1
                stats.tokens_in += c.prompt_tokens
                stats.tokens_out += c.completion_tokens
                if c.cached:
                    stats.cached += 1
                else:
                    cost = teacher.cost_usd(c.prompt_tokens, c.completion_tokens)
                    stats.spent_usd += cost or 0.0
                on_success(job, c)
            finally:
                reserved -= est
                progress.update(task, advance=1, done=stats.done, failed=stats.failed)

    with progress:
        await asyncio.gather(*(worker() for _ in range(teacher.cfg.concurrency)))
    return stats
