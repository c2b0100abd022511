"""generate: synthetic textbooks and exercises from the teacher, resumable without paying twice.

The plan is read lazily and only the requests in flight are held in memory. Each finished item
is appended as soon as it completes (a Document per line) to ``outputs.jsonl``, which rolls
into ``outputs-00001.jsonl``, ``outputs-00002.jsonl``, ... every ``plan.shard_items`` lines
(:func:`output_files` lists them in order); an item that fails after the last retry goes to
``failures.jsonl`` with its reason. A rerun skips finished items, and the content-addressed
response cache means that even an item whose response arrived just before a kill -9 is not
requested again. Items the budget did not allow stay pending (the stage is
``stopped: budget``); a run with a larger ``budget.max_cost_usd`` continues them. A stage in
which nothing succeeded is an error.

``teacher.mode=batch`` sends the same requests through the Batch API (or ``vllm run-batch``,
:mod:`pipeline.teacher.batchapi`), into the same outputs, failures and cache. ``dry_run=true``
estimates requests, tokens, cost and time, and sends nothing (:mod:`pipeline.teacher.estimate`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.prompting import PromptLibrary, describe, prompts_folder
from pipeline.records import Document, Failure, PlanItem, utc_now
from pipeline.runs import (
    STOPPED_BUDGET,
    JsonlAppender,
    Run,
    atomic_write_text,
    read_jsonl,
    repair_jsonl_tail,
)
from pipeline.secrets import safe_url
from pipeline.stages import DRY_RUN, WAITING
from pipeline.stages.plan import iter_plan, planned_count
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
_OUTPUT_NAME = re.compile(r"outputs(?:-(\d{5,}))?\.jsonl")


def fingerprint(cfg: PipelineConfig) -> str:
    """The templates' source is part of generate's identity: an edited prompt redoes it."""
    return PromptLibrary(prompts_folder(cfg)).fingerprint(cfg.plan.formats)


def rerun_requested(cfg: PipelineConfig) -> bool:
    """retry_failed=true reruns a finished generate stage for its failed items only."""
    return cfg.retry_failed


def preflight(cfg: PipelineConfig) -> None:
    check_teacher_config(cfg)


# --------------------------------------------------------------------------- output files
def output_file(folder: Path, index: int) -> Path:
    """The ``index``-th output file: ``outputs.jsonl``, then ``outputs-00001.jsonl``, ..."""
    return folder / (OUTPUTS if index == 0 else f"outputs-{index:05d}.jsonl")


def output_files(folder: Path) -> list[Path]:
    """generate's output files in ``folder``, in order."""
    found = []
    for p in folder.glob("outputs*.jsonl"):
        if m := _OUTPUT_NAME.fullmatch(p.name):
            found.append((int(m.group(1) or 0), p))
    return [p for _, p in sorted(found)]


def synthetic_files(run: Run) -> list[Path]:
    """The synthetic documents later stages read, in order: revise's outputs when the revise
    stage rewrote them (its manifest says so), else generate's."""
    if (run.read_manifest("revise") or {}).get("revised"):
        return output_files(run.path / "revise")
    return output_files(run.path / "generate")


def iter_outputs(run: Run) -> Iterator[Document]:
    """Every synthetic Document of ``run`` (generate's, or revise's), file by file: what
    annotate and train_classifier read."""
    for path in synthetic_files(run):
        yield from read_jsonl(path, Document)


def id_key(item_id: str) -> int:
    """A 64-bit key for an item id: sets of millions of ids stay small."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


class OutputLog:
    """The output files: what is done (a 64-bit key per item) and totals over every record,
    read once at the start and kept up to date as items are appended."""

    def __init__(self, folder: Path, shard_items: int) -> None:
        self.folder = folder
        self.shard_items = shard_items
        self.done: set[int] = set()
        self.tokens_in = self.tokens_out = 0
        self.latency_s = 0.0
        self.finish: Counter[str] = Counter()
        self.files = output_files(folder)
        self._lines = 0  # records in the last file (the one appended to)
        for path in self.files:
            repair_jsonl_tail(path)  # a kill mid-write leaves a cut last line
            self._lines = 0
            for d in read_jsonl(path, Document):
                self._lines += 1
                self._count(d)
        self._out: JsonlAppender | None = None

    def __contains__(self, item_id: str) -> bool:
        return id_key(item_id) in self.done

    def __len__(self) -> int:
        return len(self.done)

    def _count(self, d: Document) -> None:
        k = id_key(d.id)
        if k in self.done:
            return
        self.done.add(k)
        self.tokens_in += d.prompt_tokens or 0
        self.tokens_out += d.completion_tokens or 0
        self.latency_s += d.latency_s or 0.0
        self.finish[d.finish_reason or "unknown"] += 1

    def write(self, d: Document) -> None:
        if self._out is None or self._lines >= self.shard_items:
            self._roll()
        assert self._out is not None
        self._out.write(d)
        self._lines += 1
        self._count(d)

    def _roll(self) -> None:
        """Open the file to append to: the last one while it has room, else the next."""
        if self._out is not None or not self.files or self._lines >= self.shard_items:
            if self._out is not None:
                self._out.close()
            self.files.append(output_file(self.folder, len(self.files)))
            self._lines = 0
        self._out = JsonlAppender(self.files[-1], fsync=False)

    def fingerprint(self) -> str:
        """Order-independent: the same items give the same value however they were written."""
        keys = np.sort(np.fromiter(self.done, dtype=np.uint64, count=len(self.done)))
        return hashlib.sha256(keys.tobytes()).hexdigest()[:16]

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


# --------------------------------------------------------------------------- requests
def _failures(path: Path, done: OutputLog) -> dict[str, Failure]:
    """The latest failure per item not done (an item in outputs is done whatever this file
    says: a retry_failed run killed before its final rewrite leaves such lines). The file is
    repaired (a cut last line) and rewritten when it held anything else."""
    if not path.exists():
        return {}
    repair_jsonl_tail(path)
    latest: dict[str, Failure] = {}
    n = 0
    for f in read_jsonl(path, Failure):
        n += 1
        if f.id not in done:
            latest.pop(f.id, None)  # the newest record last, as it was appended
            latest[f.id] = f
    if len(latest) != n:
        atomic_write_text(path, "".join(f.model_dump_json() + "\n" for f in latest.values()))
    return latest


def make_job(it: PlanItem, prompts: PromptLibrary) -> Job:
    return Job(
        id=it.id,
        template=prompts.template_name(it.format),
        meta={"item": it.model_dump()},  # JSON: batch mode stores it beside the request
        messages=prompts.render(
            it.format,
            topic=it.topic,
            subject=it.subject,
            audience=it.audience,
            words=it.words,
            seed_text=it.seed_text,
        ),
    )


def _todo(
    run: Run, done: OutputLog, failed: dict[str, Failure], retry_failed: bool
) -> Iterator[PlanItem]:
    """The plan items to request, read lazily."""
    for it in iter_plan(run):
        if it.id in done:
            continue
        if (it.id in failed) == retry_failed:
            yield it


def document(job: Job, c: Completion) -> Document:
    it = PlanItem.model_validate(job.meta["item"])
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


# --------------------------------------------------------------------------- the stage
def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("generate")
    fail_path = folder / FAILURES
    planned = planned_count(run)
    outputs = OutputLog(folder, cfg.plan.shard_items)
    failed = _failures(fail_path, outputs)
    n_todo = len(failed) if cfg.retry_failed else planned - len(outputs) - len(failed)
    prompts = PromptLibrary(prompts_folder(cfg))
    jobs = (make_job(it, prompts) for it in _todo(run, outputs, failed, cfg.retry_failed))
    console.print(
        f"generate: {planned} planned, {len(outputs)} done earlier, {n_todo} to request"
        + (" (retrying failures)" if cfg.retry_failed else "")
        + f"; {describe(prompts.folder)}"
    )
    if cfg.dry_run:
        from pipeline.teacher.estimate import estimate, print_estimate

        earlier = {
            "answers": len(outputs),
            "completion_tokens": outputs.tokens_out,
            "latency_s": outputs.latency_s,
        }
        items = _todo(run, outputs, failed, cfg.retry_failed)
        est = estimate(
            cfg, run, "generate", items, lambda it: make_job(it, prompts), n_todo, earlier
        )
        print_estimate(est, console)
        return {
            "status": DRY_RUN,
            "summary": est.pop("summary"),
            "estimate": est,
            "planned": planned,
            "items": len(outputs),
            "failed": len(failed),
            "pending": planned - len(outputs) - len(failed),
        }

    stats = BatchStats(cost_known=cfg.teacher.price() is not None)
    if n_todo:
        # each output and failure is appended as it happens (a retried item's newer record
        # wins), so a kill loses none; the failures file is compacted below
        try:
            with JsonlAppender(fail_path) as fails:

                def ok(job: Job, c: Completion) -> bool:
                    outputs.write(document(job, c))
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

                stats = asyncio.run(
                    _generate(cfg, run, console, jobs, n_todo, ok, bad, outputs.__contains__)
                )
        finally:
            outputs.close()
    failed = _failures(fail_path, outputs)
    manifest = _manifest(cfg, run, outputs, failed, stats, planned)
    if manifest["items"] == 0 and manifest["failed"] > 0:
        raise DatagenError(
            f"generate: nothing succeeded: {manifest['failed']} items failed "
            f"({_top_reasons(failed)}); each reason is in {fail_path}; fix the cause, "
            f"then run again with retry_failed=true"
        )
    return {**manifest, "prompts": str(prompts.folder)}


def _top_reasons(failed: dict[str, Failure], n: int = 3) -> str:
    counts = Counter(f.reason.split(":")[0] for f in failed.values())
    top = counts.most_common(n)
    first = next(f.reason for f in failed.values() if f.reason.split(":")[0] == top[0][0])
    return ", ".join(f"{k} x{v}" for k, v in top) + f"; e.g. {first[:160]!r}"


async def _generate(
    cfg: PipelineConfig,
    run: Run,
    console: Console,
    jobs: Iterator[Job],
    total: int,
    ok: Callable[[Job, Completion], bool],
    bad: Callable[[Job, str, int], None],
    done: Callable[[str], bool],
) -> BatchStats:
    if cfg.teacher.mode == "batch":
        from pipeline.teacher.batchapi import run_batch_api

        return await run_batch_api(cfg, run, console, "generate", jobs, ok, bad, done)
    async with open_teacher(cfg, run, console, stage="generate") as teacher:
        return await run_batch(teacher, jobs, ok, bad, console, label="generate", total=total)


def _manifest(
    cfg: PipelineConfig,
    run: Run,
    outputs: OutputLog,
    failed: dict[str, Failure],
    stats: BatchStats,
    planned: int,
) -> dict[str, Any]:
    """Totals over every output file (earlier runs included), plus this run's requests;
    items + failed + pending = planned."""
    items = len(outputs)
    pending = planned - items - len(failed)
    tok_in, tok_out = outputs.tokens_in, outputs.tokens_out
    price = cfg.teacher.price()
    cost = (
        None
        if price is None
        else round((tok_in * price.input_per_mtok + tok_out * price.output_per_mtok) / 1e6, 6)
    )
    reasons = dict(Counter(f.reason.split(":")[0] for f in failed.values()))
    stopped = stats.stopped_by_budget
    spend = spend_report(run.path, "generate", cfg.budget.max_cost_usd)
    urls = cfg.teacher.urls()
    status = WAITING if stats.waiting else STOPPED_BUDGET if stopped else "finished"
    nxt = budget_note(spend, pending) if stopped else ""
    if stats.waiting:
        nxt = (
            f"{pending} items wait for offline results; run, where the model is served, "
            + "; ".join(stats.waiting)
            + "; then run the same datagen command again"
        )
    return {
        "status": status,
        "summary": {
            "items": items,
            "failed": len(failed),
            **({"pending": pending} if pending else {}),
            "tokens": tok_in + tok_out,
            "cost_usd": "unknown" if cost is None else cost,
            **({"spent_usd": spend["spent_usd"]} if cfg.budget.max_cost_usd is not None else {}),
        },
        **({"next": nxt} if nxt else {}),
        "planned": planned,
        "items": items,
        "failed": len(failed),
        "pending": pending,
        "failure_reasons": reasons,
        "finish_reasons": dict(outputs.finish),
        "prompt_tokens": tok_in,
        "completion_tokens": tok_out,
        # the outputs' tokens at teacher.prices (for teacher.mode); null = the model has no
        # price (unknown, not 0); spent_usd below is what was billed, mode by mode
        "cost_usd": cost,
        **spend,  # what was spent (billed or counted at worst case), this stage and the run
        "this_run": {
            "mode": cfg.teacher.mode,
            "requested_ok": stats.done - stats.cached,
            "cache_hits": stats.cached,
            "failed": stats.failed,
            "cost_usd": stats.cost_usd,
            "skipped_by_budget": stats.skipped_by_budget,
            **({"endpoints": stats.endpoints} if stats.endpoints else {}),
            **({"batches": stats.batches} if stats.batches else {}),
        },
        "output_fingerprint": outputs.fingerprint(),
        "model": cfg.teacher.model,
        "base_url": (safe_url(urls[0]) if len(urls) == 1 else [safe_url(u) for u in urls])
        if urls
        else "embedded llama.cpp",
        "outputs": [p.name for p in outputs.files],
        "failures": FAILURES,
    }
