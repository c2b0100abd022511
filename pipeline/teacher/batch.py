"""Run many teacher requests (or items that each make several) with a concurrency limit, a
budget and a progress bar."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

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

from pipeline.teacher.budget import BudgetExhausted
from pipeline.teacher.client import Completion, Teacher, TeacherError

T = TypeVar("T")


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
    endpoints: list[dict[str, Any]] = field(default_factory=list)  # requests/failures per URL
    batches: list[dict[str, Any]] = field(default_factory=list)  # teacher.mode=batch
    waiting: list[str] = field(default_factory=list)  # offline: the vllm run-batch commands

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
        TextColumn("{task.fields[counts]}"),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _counts(stats: BatchStats) -> str:
    text = f"ok={stats.done} failed={stats.failed}"
    return text + (f" budget-skipped={stats.skipped_by_budget}" if stats.skipped_by_budget else "")


async def run_tasks(
    teacher: Teacher,
    items: Iterable[T],
    work: Callable[[T], Awaitable[bool | None]],
    console: Console,
    label: str,
    total: int | None = None,
    stats: BatchStats | None = None,
) -> BatchStats:
    """Run ``work(item)`` for every item with ``teacher.cfg.concurrency`` workers. An item may
    make several requests in turn (a critique, then a revision of it): ``work`` records what
    it got and returns False for an item that failed. An item whose next request does not fit
    the budget (``teacher.ledger``) is left pending; the answers it already got are in the
    cache, so continuing it later costs only what it still needs."""
    stats = stats or BatchStats(cost_known=teacher.price is not None)
    it = iter(items)
    progress = make_progress(console)
    task = progress.add_task(label, total=total, counts=_counts(stats))

    async def worker() -> None:
        for item in it:
            try:
                ok = await work(item)
            except BudgetExhausted:
                stats.stopped_by_budget = True
                stats.skipped_by_budget += 1
            else:
                if ok is False:
                    stats.failed += 1
                else:
                    stats.done += 1
            finally:
                progress.update(task, advance=1, counts=_counts(stats))

    with progress:
        await asyncio.gather(*(worker() for _ in range(teacher.cfg.concurrency)))
    if teacher.ledger is not None:
        stats.spent_usd = teacher.ledger.session_usd
    stats.endpoints = teacher.pool.report()
    return stats


async def ask(
    teacher: Teacher,
    stats: BatchStats,
    messages: list[dict[str, str]],
    params: dict[str, Any] | None,
    item_id: str,
) -> Completion:
    """One request of an item's work (``run_tasks``), its tokens and cache hit counted in
    ``stats``. Raises TeacherError (failed for good) and BudgetExhausted (left pending)."""
    c = await teacher.complete(messages, params, item_id=item_id)
    stats.tokens_in += c.prompt_tokens
    stats.tokens_out += c.completion_tokens
    stats.cached += c.cached
    return c


async def run_batch(
    teacher: Teacher,
    jobs: Iterable[Job],
    on_success: Callable[[Job, Completion], bool | None | Awaitable[bool | None]],
    on_failure: Callable[[Job, str, int], None],
    console: Console,
    label: str,
    total: int | None = None,
) -> BatchStats:
    """Send ``jobs`` with ``teacher.cfg.concurrency`` workers. ``on_success`` returns False for
    an answer it could not use (counted as failed); it may return an awaitable (work on the
    answer that sends more requests, such as a code exercise's repair rounds: its worker
    waits for it). A job whose request does not fit the budget (``teacher.ledger``) is
    skipped and left pending, also when ``on_success``'s own requests do not fit; cached
    jobs still complete."""
    stats = BatchStats(cost_known=teacher.price is not None)

    async def work(job: Job) -> bool:
        try:
            c = await ask(teacher, stats, job.messages, job.params, job.id)
            used = on_success(job, c)
            if inspect.isawaitable(used):
                used = await used
        except TeacherError as e:
            on_failure(job, e.reason, e.attempts)
            return False
        return used is not False

    return await run_tasks(teacher, jobs, work, console, label, total, stats)
