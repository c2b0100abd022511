"""generate: synthetic textbooks and exercises from the teacher, resumable without paying twice.

Each finished item is appended to ``outputs.jsonl`` as soon as it completes (a Document per
line); an item that fails after the last retry goes to ``failures.jsonl`` with its reason.
A rerun skips finished items, and the content-addressed response cache means that even an
item whose response arrived just before a kill -9 is not requested again. Items the budget
did not allow stay pending (the stage is ``stopped: budget``); a run with a larger
``budget.max_cost_usd`` continues them. A stage in which nothing succeeded is an error.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.prompting import PromptLibrary, describe, prompts_folder
from pipeline.records import Document, Failure, PlanItem, stable_id, utc_now
from pipeline.runs import (
    STOPPED_BUDGET,
    JsonlAppender,
    Run,
    atomic_write_text,
    read_jsonl,
    repair_jsonl_tail,
)
from pipeline.secrets import safe_url
from pipeline.stages.plan import load_plan
from pipeline.teacher import (
    BatchStats,
    Completion,
    Job,
    budget_note,
    check_teacher_config,
    open_teacher,
    run_batch,
    spend_report,
)

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


def preflight(cfg: PipelineConfig) -> None:
    check_teacher_config(cfg)


def _failures(path: Path, done: set[str]) -> dict[str, Failure]:
    """The latest failure per item not done (an item in outputs is done whatever this file
    says: a retry_failed run killed before its final rewrite leaves such lines). The file is
    repaired (a cut last line) and rewritten when it held anything else."""
    if not path.exists():
        return {}
    repair_jsonl_tail(path)
    records = list(read_jsonl(path, Failure))
    latest = {f.id: f for f in records if f.id not in done}
    if len(latest) != len(records):
        atomic_write_text(path, "".join(f.model_dump_json() + "\n" for f in latest.values()))
    return latest


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("generate")
    out_path, fail_path = folder / OUTPUTS, folder / FAILURES
    plan = load_plan(run)
    done_ids = _ids(out_path, Document)
    failed = _failures(fail_path, done_ids)
    if cfg.retry_failed:
        todo = [it for it in plan if it.id in failed]
    else:
        todo = [it for it in plan if it.id not in done_ids and it.id not in failed]
    prompts = PromptLibrary(prompts_folder(cfg))
    jobs = _jobs(todo, prompts)
    console.print(
        f"generate: {len(plan)} planned, {len(done_ids)} done earlier, "
        f"{len(jobs)} to request"
        + (" (retrying failures)" if cfg.retry_failed else "")
        + f"; {describe(prompts.folder)}"
    )

    stats = BatchStats(cost_known=cfg.teacher.model in cfg.teacher.prices)
    if jobs:
        # each failure is appended as it happens (a retried item's newer record wins), so a
        # kill loses none; the file is compacted below
        with JsonlAppender(out_path, fsync=False) as out, JsonlAppender(fail_path) as fails:

            def ok(job: Job, c: Completion) -> bool:
                out.write(_document(job, c))
                return True

            def bad(job: Job, reason: str, attempts: int) -> None:
                fails.write(
                    Failure(
                        id=job.id,
                        reason=reason,
                        attempts=attempts,
                        template=job.template,
                        model=cfg.teacher.model,
                    )
                )

            stats = asyncio.run(_generate(cfg, run, console, jobs, ok, bad))
    _failures(fail_path, _ids(out_path, Document))
    manifest = _manifest(cfg, run, out_path, fail_path, stats, plan)
    if manifest["items"] == 0 and manifest["failed"] > 0:
        raise DatagenError(
            f"generate: nothing succeeded: {manifest['failed']} items failed "
            f"({_top_reasons(fail_path)}); each reason is in {fail_path}; fix the cause, "
            f"then run again with retry_failed=true"
        )
    return {**manifest, "prompts": str(prompts.folder)}


def _top_reasons(fail_path: Path, n: int = 3) -> str:
    failures = list(read_jsonl(fail_path, Failure))
    counts = _count(f.reason.split(":")[0] for f in failures)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    first = next(f.reason for f in failures if f.reason.split(":")[0] == top[0][0])
    return ", ".join(f"{k} x{v}" for k, v in top) + f"; e.g. {first[:160]!r}"


async def _generate(
    cfg: PipelineConfig, run: Run, console: Console, jobs: list[Job], ok: Any, bad: Any
) -> BatchStats:
    async with open_teacher(cfg, run, console, stage="generate") as teacher:
        return await run_batch(teacher, jobs, ok, bad, console, label="generate", total=len(jobs))


def _manifest(
    cfg: PipelineConfig,
    run: Run,
    out_path: Path,
    fail_path: Path,
    stats: BatchStats,
    plan: list[PlanItem],
) -> dict[str, Any]:
    """Totals over the whole output file (earlier runs included), plus this run's requests;
    items + failed + pending = planned."""
    docs = (
        list({d.id: d for d in read_jsonl(out_path, Document)}.values())
        if out_path.exists()
        else []
    )
    failures = list(read_jsonl(fail_path, Failure)) if fail_path.exists() else []
    planned = {p.id for p in plan}
    done = {d.id for d in docs}
    pending = len(planned - done - {f.id for f in failures})
    tok_in = sum(d.prompt_tokens or 0 for d in docs)
    tok_out = sum(d.completion_tokens or 0 for d in docs)
    price = cfg.teacher.prices.get(cfg.teacher.model)
    cost = (
        None
        if price is None
        else round((tok_in * price.input_per_mtok + tok_out * price.output_per_mtok) / 1e6, 6)
    )
    reasons = _count(f.reason.split(":")[0] for f in failures)
    stopped = stats.stopped_by_budget
    spend = spend_report(run.path, "generate", cfg.budget.max_cost_usd)
    return {
        "status": STOPPED_BUDGET if stopped else "finished",
        "summary": {
            "items": len(docs),
            "failed": len(failures),
            **({"pending": pending} if pending else {}),
            "tokens": tok_in + tok_out,
            "cost_usd": "unknown" if cost is None else cost,
            **({"spent_usd": spend["spent_usd"]} if cfg.budget.max_cost_usd is not None else {}),
        },
        **({"next": budget_note(spend, pending)} if stopped else {}),
        "planned": len(planned),
        "items": len(docs),
        "failed": len(failures),
        "pending": pending,
        "failure_reasons": reasons,
        "finish_reasons": _count(d.finish_reason or "unknown" for d in docs),
        "prompt_tokens": tok_in,
        "completion_tokens": tok_out,
        # the outputs' tokens at teacher.prices; null = the model has no price (unknown, not 0)
        "cost_usd": cost,
        **spend,  # what was spent (billed or counted at worst case), this stage and the run
        "this_run": {
            "requested_ok": stats.done - stats.cached,
            "cache_hits": stats.cached,
            "failed": stats.failed,
            "cost_usd": stats.cost_usd,
            "skipped_by_budget": stats.skipped_by_budget,
        },
        "output_fingerprint": stable_id(*sorted(done)),
        "model": cfg.teacher.model,
        "base_url": safe_url(cfg.teacher.base_url)
        if cfg.teacher.base_url
        else "embedded llama.cpp",
        "outputs": OUTPUTS,
        "failures": FAILURES,
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
