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

Code exercises (format ``code_exercises``) are asked for as a structured answer (the schema of
:mod:`pipeline.code_exercises` as ``response_format``, ``generate.structured``); each answer is
parsed (one that does not parse is a failure with its reason, never an empty exercise) and its
tests run in the sandbox as it arrives; with ``generate.repair_rounds`` a failing one goes
back to the teacher with its failing output (:class:`~pipeline.code_exercises.ExerciseChecker`).
The record's text is the exercise as a student reads it; the tests and the verdict are on
``Document.code``.

``teacher.mode=batch`` sends the same requests through the Batch API (or ``vllm run-batch``,
:mod:`pipeline.teacher.batchapi`), into the same outputs, failures and cache. ``dry_run=true``
estimates requests, tokens, cost and time, and sends nothing (:mod:`pipeline.teacher.estimate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from pipeline.code_exercises import (
    FORMAT as CODE,
)
from pipeline.code_exercises import (
    Checked,
    ExerciseChecker,
    UnparsedAnswer,
    exercise_text,
    parse_answer,
    response_format,
)
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.prompting import PromptLibrary, describe, prompts_folder
from pipeline.records import Document, Failure, PlanItem, utc_now
from pipeline.redaction import safe_url
from pipeline.runs import (
    STOPPED_BUDGET,
    JsonlAppender,
    Run,
    atomic_write_text,
    read_jsonl,
    repair_jsonl_tail,
)
from pipeline.stages import DRY_RUN, WAITING
from pipeline.stages.plan import iter_plan, planned_count
from pipeline.teacher import (
    BatchStats,
    Completion,
    Job,
    Teacher,
    budget_note,
    check_teacher_config,
    open_teacher,
    run_batch,
    spend_report,
)
from pipeline.teacher.structured import structured_mode as _structured_mode

CONFIG_KEYS = ("teacher.model", "teacher.max_tokens", "teacher.temperature", "teacher.top_p")
OUTPUTS = "outputs.jsonl"
FAILURES = "failures.jsonl"
_OUTPUT_NAME = re.compile(r"outputs(?:-(\d{5,}))?\.jsonl")
REPAIR_TEMPLATE = "code_repair"
UNPARSED = "unparsed"  # the failure reason of an answer that is not a usable exercise


def structured_mode(cfg: PipelineConfig) -> str:
    """How code exercises are asked for (``generate.structured``)."""
    return _structured_mode(cfg.generate.structured, cfg.teacher)


def code_params(cfg: PipelineConfig) -> dict[str, Any]:
    """The request parameters of a code exercise (its ``response_format``)."""
    fmt = response_format(structured_mode(cfg))
    return {"response_format": fmt} if fmt else {}


def fingerprint(cfg: PipelineConfig) -> str:
    """The templates' source is part of generate's identity: an edited prompt redoes it. With
    code exercises, so are what decides their records: the answer's form, the repair rounds
    (and their template) and the sandbox's limits (not ``sandbox.workers``)."""
    names = list(cfg.plan.formats)
    if CODE not in names:
        return PromptLibrary(prompts_folder(cfg)).fingerprint(names)
    if cfg.generate.repair_rounds:
        names.append(REPAIR_TEMPLATE)
    sandbox = cfg.sandbox.model_dump(mode="json", exclude={"workers"})
    code = f"{structured_mode(cfg)}:{cfg.generate.repair_rounds}:{sorted(sandbox.items())}"
    return hashlib.sha256(
        (PromptLibrary(prompts_folder(cfg)).fingerprint(names) + code).encode()
    ).hexdigest()[:16]


def rerun_requested(cfg: PipelineConfig) -> bool:
    """retry_failed=true reruns a finished generate stage for its failed items only."""
    return cfg.retry_failed


def preflight(cfg: PipelineConfig) -> None:
    check_teacher_config(cfg)
    if CODE in cfg.plan.formats and cfg.generate.repair_rounds and cfg.teacher.mode == "batch":
        raise DatagenError(
            "generate.repair_rounds: repair rounds need teacher.mode=online (in batch mode "
            "exercises are parsed in generate and verified by the filter stage)"
        )


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
        self.code: Counter[str] = Counter()  # code exercises: verdicts, repaired
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
        if d.code is not None:
            self.code[d.code.verified or "unverified"] += 1
            if d.code.repairs:
                self.code[f"repaired_{d.code.verified or 'unverified'}"] += 1

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


def make_job(
    it: PlanItem, prompts: PromptLibrary, params: dict[str, dict[str, Any]] | None = None
) -> Job:
    """The request for a plan item; ``params``: request parameters per format."""
    return Job(
        id=it.id,
        template=prompts.template_name(it.format),
        params=(params or {}).get(it.format, {}),
        meta={"item": it.model_dump()},  # JSON: batch mode stores it beside the request
        messages=prompts.render(
            it.format,
            topic=it.topic,
            subject=it.subject,
            audience=it.audience,
            words=it.words,
            seed_text=it.seed_text,
            style=it.style,
            features=it.features,
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


def document(job: Job, c: Completion, checked: Checked | None = None) -> Document:
    """The record of an answer; a code exercise's text is the exercise as a student reads it,
    its tokens and latency those of every request it took (repairs included)."""
    it = PlanItem.model_validate(job.meta["item"])
    answers = checked.answers if checked is not None else [c]
    code = checked.exercise if checked is not None else None
    last = answers[-1]
    return Document(
        id=it.id,
        text=exercise_text(code) if code is not None else c.text,
        source="synthetic",
        topic=it.topic,
        subject=it.subject,
        audience=it.audience,
        style=it.style or None,
        features=it.features,
        format=it.format,
        required_words=it.words,
        template=job.template,
        messages=job.messages,
        model=c.model,
        finish_reason=last.finish_reason,
        prompt_tokens=sum(a.prompt_tokens for a in answers),
        completion_tokens=sum(a.completion_tokens for a in answers),
        latency_s=round(sum(a.latency_s for a in answers), 4),
        created_at=utc_now(),
        code=code,
    )


class Sink:
    """Where answers go: a Document per item in the outputs, a Failure with its reason in the
    failures file. A code exercise is parsed and, online, verified and repaired first
    (:class:`ExerciseChecker`, which needs ``teacher``); in batch mode it is parsed only and
    the filter stage verifies it."""

    def __init__(
        self,
        cfg: PipelineConfig,
        outputs: OutputLog,
        fails: JsonlAppender,
        checker: ExerciseChecker | None,
    ) -> None:
        self.cfg, self.outputs, self.fails, self.checker = cfg, outputs, fails, checker
        self.teacher: Teacher | None = None
        self.repair_errors = 0

    def ok(self, job: Job, c: Completion) -> bool | Awaitable[bool]:
        if job.meta["item"]["format"] != CODE:
            self.outputs.write(document(job, c))
            return True
        if self.checker is None or self.teacher is None:
            try:
                checked = Checked(exercise=parse_answer(c.text), answers=[c])
            except UnparsedAnswer as e:
                checked = Checked(exercise=None, reason=str(e), answers=[c])
            return self._write_code(job, c, checked)
        return self._check(job, c)

    async def _check(self, job: Job, c: Completion) -> bool:
        assert self.checker is not None and self.teacher is not None
        teacher = self.teacher

        async def complete(messages: list[dict[str, str]], item_id: str) -> Completion:
            return await teacher.complete(messages, job.params, item_id=item_id)

        checked = await self.checker.check(job.messages, c, complete, job.id)
        self.repair_errors += bool(checked.repair_error)
        return self._write_code(job, c, checked)

    def _write_code(self, job: Job, c: Completion, checked: Checked) -> bool:
        if checked.exercise is None:
            self.fails.write(
                Failure(
                    id=job.id,
                    reason=f"{UNPARSED}: {checked.reason}",
                    attempts=len(checked.answers),
                    template=job.template,
                    model=c.model,
                )
            )
            return False  # counted as failed, in the progress bar too
        self.outputs.write(document(job, c, checked))
        return True

    def bad(self, job: Job, reason: str, attempts: int) -> None:
        self.fails.write(
            Failure(
                id=job.id,
                reason=reason,
                attempts=attempts,
                template=job.template,
                model=self.cfg.teacher.model,
            )
        )


def _checker(cfg: PipelineConfig, prompts: PromptLibrary) -> ExerciseChecker:
    from pipeline.sandbox import Sandbox

    def repair_prompt(verdict: str, output: str) -> str:
        messages = prompts.render(REPAIR_TEMPLATE, verdict=verdict, output=output)
        return next(m["content"] for m in messages if m["role"] == "user")

    return ExerciseChecker(Sandbox(cfg.sandbox), cfg.generate.repair_rounds, repair_prompt)


# --------------------------------------------------------------------------- the stage
def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("generate")
    fail_path = folder / FAILURES
    planned = planned_count(run)
    outputs = OutputLog(folder, cfg.plan.shard_items)
    failed = _failures(fail_path, outputs)
    n_todo = len(failed) if cfg.retry_failed else planned - len(outputs) - len(failed)
    prompts = PromptLibrary(prompts_folder(cfg))
    params = {CODE: code_params(cfg)} if CODE in cfg.plan.formats else {}
    jobs = (make_job(it, prompts, params) for it in _todo(run, outputs, failed, cfg.retry_failed))
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
            cfg, run, "generate", items, lambda it: make_job(it, prompts, params), n_todo, earlier
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
    sink: Sink | None = None
    sandbox: dict[str, str] | None = None
    if n_todo:
        online_code = CODE in cfg.plan.formats and cfg.teacher.mode == "online"
        # each output and failure is appended as it happens (a retried item's newer record
        # wins), so a kill loses none; the failures file is compacted below
        try:
            with (
                JsonlAppender(fail_path) as fails,
                contextlib.closing(_checker(cfg, prompts))
                if online_code
                else contextlib.nullcontext() as checker,
            ):
                sink = Sink(cfg, outputs, fails, checker)
                stats = asyncio.run(
                    _generate(cfg, run, console, jobs, n_todo, sink, outputs.__contains__)
                )
                if checker is not None:
                    sb = checker.sandbox
                    sandbox = {"isolation": sb.isolation, **({"note": sb.note} if sb.note else {})}
        finally:
            outputs.close()
    failed = _failures(fail_path, outputs)
    manifest = _manifest(cfg, run, outputs, failed, stats, planned)
    if "code" in manifest:
        manifest["code"] = {
            **manifest["code"],
            "sandbox": sandbox,
            "repair_errors_this_run": sink.repair_errors if sink else 0,
        }
    # answers that were not usable exercises are the teacher's work, not a broken setup
    request_failures = manifest["failed"] - manifest["failure_reasons"].get(UNPARSED, 0)
    if manifest["items"] == 0 and request_failures == manifest["failed"] > 0:
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
    sink: Sink,
    done: Callable[[str], bool],
) -> BatchStats:
    if cfg.teacher.mode == "batch":
        from pipeline.teacher.batchapi import run_batch_api

        return await run_batch_api(cfg, run, console, "generate", jobs, sink.ok, sink.bad, done)
    if sink.checker is not None:  # before the teacher starts: a refused sandbox costs nothing
        console.print(f"generate: code exercises run in the sandbox ({await sink.checker.start()})")
    async with open_teacher(cfg, run, console, stage="generate") as teacher:
        sink.teacher = teacher
        return await run_batch(
            teacher, jobs, sink.ok, sink.bad, console, label="generate", total=total
        )


def _code_report(
    cfg: PipelineConfig, outputs: OutputLog, reasons: dict[str, int]
) -> dict[str, Any]:
    """Code exercises over every output file: verdicts, how many a repair round fixed, and
    how many answers were not usable exercises (failures ``unparsed: <why>``)."""
    c = outputs.code
    return {
        "structured": structured_mode(cfg),
        "repair_rounds": cfg.generate.repair_rounds,
        "verdicts": {k: c[k] for k in ("passed", "failed", "timeout", "error", "unverified")},
        "repaired": c["repaired_passed"],  # passed after at least one repair round
        "repaired_still_failing": sum(
            v for k, v in c.items() if k.startswith("repaired_") and k != "repaired_passed"
        ),
        "unparsed": reasons.get(UNPARSED, 0),
    }


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
        **({"code": _code_report(cfg, outputs, reasons)} if CODE in cfg.plan.formats else {}),
        "output_fingerprint": outputs.fingerprint(),
        "model": cfg.teacher.model,
        "base_url": (safe_url(urls[0]) if len(urls) == 1 else [safe_url(u) for u in urls])
        if urls
        else "embedded llama.cpp",
        "outputs": [p.name for p in outputs.files],
        "failures": FAILURES,
    }
