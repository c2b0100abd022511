"""generate: synthetic textbooks and exercises from the teacher, resumable without paying twice.

Each finished item is appended to ``outputs.jsonl`` as soon as it completes (a Document per
line); an item that fails after the last retry goes to ``failures.jsonl`` with its reason.
A rerun skips finished items, and the content-addressed response cache means that even an
item whose response arrived just before a kill -9 is not requested again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.prompting import PromptLibrary, describe, prompts_folder
from pipeline.records import Document, Failure, PlanItem, utc_now
from pipeline.runs import JsonlAppender, Run, atomic_write_text, read_jsonl, repair_jsonl_tail
from pipeline.stages.plan import load_plan
from pipeline.teacher import BatchStats, Completion, Job, open_teacher, run_batch

CONFIG_KEYS = ("teacher.model", "teacher.max_tokens", "teacher.temperature", "teacher.top_p")
OUTPUTS = "outputs.jsonl"
FAILURES = "failures.jsonl"


def fingerprint(cfg: PipelineConfig) -> str:
    """The templates' source is part of generate's identity: an edited prompt redoes it."""
    return PromptLibrary(prompts_folder(cfg)).fingerprint(cfg.plan.formats)


def rerun_requested(cfg: PipelineConfig) -> bool:
    """retry_failed=true reruns a finished generate stage for its failed items only."""
    return cfg.retry_failed


def _ids(path: Path, model: type[Document] | type[Failure]) -> set[str]:
    if not path.exists():
        return set()
    repair_jsonl_tail(path)
    return {r.id for r in read_jsonl(path, model)}


def _jobs(items: list[PlanItem], prompts: PromptLibrary) -> list[Job]:
    return [
        Job(
            id=it.id,
            template=prompts.template_name(it.format),
            meta={"item": it},
            messages=prompts.render(
                it.format,
                topic=it.topic,
                subject=it.subject,
                audience=it.audience,
                words=it.words,
                seed_text=it.seed_text,
            ),
        )
        for it in items
    ]


def _document(job: Job, c: Completion) -> Document:
    it: PlanItem = job.meta["item"]
    return Document(
        id=it.id,
        text=c.text,
        source="synthetic",
        topic=it.topic,
        subject=it.subject,
        audience=it.audience,
        format=it.format,
        required_words=it.words,
        template=job.template,
        messages=job.messages,
        model=c.model,
        finish_reason=c.finish_reason,
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        latency_s=c.latency_s,
        created_at=utc_now(),
    )


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("generate")
    out_path, fail_path = folder / OUTPUTS, folder / FAILURES
    plan = load_plan(run)
    done_ids = _ids(out_path, Document)
    failed = list(read_jsonl(fail_path, Failure)) if fail_path.exists() else []
    failed_ids = {f.id for f in failed}
    if cfg.retry_failed:
        todo = [it for it in plan if it.id in failed_ids and it.id not in done_ids]
        keep_failures: list[Failure] = []
    else:
        todo = [it for it in plan if it.id not in done_ids and it.id not in failed_ids]
        keep_failures = failed
    prompts = PromptLibrary(prompts_folder(cfg))
    jobs = _jobs(todo, prompts)
    price_known = cfg.teacher.model in cfg.teacher.prices
    if cfg.budget.max_cost_usd is not None and not price_known:
        raise DatagenError(
            f"budget.max_cost_usd is set but teacher.prices has no price for "
            f"'{cfg.teacher.model}': add teacher.prices.{cfg.teacher.model}"
        )
    console.print(
        f"generate: {len(plan)} planned, {len(done_ids)} done earlier, "
        f"{len(jobs)} to request"
        + (" (retrying failures)" if cfg.retry_failed else "")
        + f"; {describe(prompts.folder)}"
    )

    new_failures: list[Failure] = []
    stats = BatchStats(cost_known=price_known)
    if jobs:
        # with retry_failed the failures file is rewritten at the end: only what still fails
        fails = None if cfg.retry_failed else JsonlAppender(fail_path, fsync=False)
        with JsonlAppender(out_path, fsync=False) as out:

            def ok(job: Job, c: Completion) -> None:
                out.write(_document(job, c))

            def bad(job: Job, reason: str, attempts: int) -> None:
                f = Failure(
                    id=job.id,
                    reason=reason,
                    attempts=attempts,
                    template=job.template,
                    model=cfg.teacher.model,
                )
                new_failures.append(f)
                if fails is not None:
                    fails.write(f)

            try:
                stats = asyncio.run(_generate(cfg, run, console, jobs, ok, bad))
            finally:
                if fails is not None:
                    fails.close()
    if cfg.retry_failed:
        still = keep_failures + new_failures
        atomic_write_text(fail_path, "".join(f.model_dump_json() + "\n" for f in still))

    return {**_manifest(cfg, out_path, fail_path, stats, len(plan)), "prompts": str(prompts.folder)}


async def _generate(
    cfg: PipelineConfig, run: Run, console: Console, jobs: list[Job], ok: Any, bad: Any
) -> BatchStats:
    async with open_teacher(cfg, run, console) as teacher:
        return await run_batch(
            teacher,
            jobs,
            ok,
            bad,
            console,
            label="generate",
            total=len(jobs),
            budget_usd=cfg.budget.max_cost_usd,
        )


def _manifest(
    cfg: PipelineConfig, out_path: Path, fail_path: Path, stats: BatchStats, planned: int
) -> dict[str, Any]:
    """Totals over the whole output file (earlier runs included), plus this run's requests."""
    docs = list(read_jsonl(out_path, Document)) if out_path.exists() else []
    failures = list(read_jsonl(fail_path, Failure)) if fail_path.exists() else []
    tok_in = sum(d.prompt_tokens or 0 for d in docs)
    tok_out = sum(d.completion_tokens or 0 for d in docs)
    price = cfg.teacher.prices.get(cfg.teacher.model)
    cost = (
        None
        if price is None
        else round((tok_in * price.input_per_mtok + tok_out * price.output_per_mtok) / 1e6, 6)
    )
    reasons: dict[str, int] = {}
    for f in failures:
        key = f.reason.split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    status = "stopped" if stats.stopped_by_budget else "finished"
    return {
        "status": status,
        "summary": {
            "items": len(docs),
            "failed": len(failures),
            "tokens": tok_in + tok_out,
            "cost_usd": "unknown" if cost is None else cost,
            **({"stopped": "budget"} if stats.stopped_by_budget else {}),
        },
        "planned": planned,
        "items": len(docs),
        "failed": len(failures),
        "failure_reasons": reasons,
        "finish_reasons": _count(d.finish_reason or "unknown" for d in docs),
        "prompt_tokens": tok_in,
        "completion_tokens": tok_out,
        "cost_usd": cost,  # null = the model has no price in teacher.prices (unknown, not 0)
        "this_run": {
            "requested_ok": stats.done - stats.cached,
            "cache_hits": stats.cached,
            "failed": stats.failed,
            "cost_usd": stats.cost_usd,
            "skipped_by_budget": stats.skipped_by_budget,
        },
        "budget_usd": cfg.budget.max_cost_usd,
        "model": cfg.teacher.model,
        "base_url": cfg.teacher.base_url or "embedded llama.cpp",
        "outputs": OUTPUTS,
        "failures": FAILURES,
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
