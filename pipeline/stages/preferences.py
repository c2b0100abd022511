"""preferences: chosen/rejected pairs, Zephyr dDPO / UltraFeedback style.

For a seeded sample of ``preferences.n`` plan items, the request generate would send (the same
template and variables) is sampled ``preferences.samples`` times at
``preferences.temperature``, each sample with its own ``seed`` request parameter (so each is a
distinct, separately cached request); the teacher rates every sample with a rubric
(``prompts/preferences_rate.j2``: instruction following, correctness, helpfulness, clarity;
JSON ``{"rationale", "score": 1-10}``). chosen = the best-rated sample (the first of equals),
rejected = the worst-rated (``preferences.rejected=worst``) or a seeded random one rated
strictly lower (``random``). A prompt whose rated samples all score the same is skipped with
reason ``tie``; one with fewer than two rated samples with reason ``too_few_rated``.

Each prompt's record (every sample, its rating or error, the pair or the skip reason) is
appended to ``preferences/ratings.jsonl`` as soon as it is complete; a rerun asks only for
prompts not there, and what a killed run had already received comes from the teacher's cache
(no request is paid twice). At the end ``preferences/pairs.parquet`` (prompt, chosen,
rejected, score_chosen, score_rejected, scores, model, id, chosen_sample, rejected_sample;
``datasets.load_dataset("parquet", ...)`` reads it; not written while there is no pair, as
``datasets`` cannot load a parquet file without rows) and its dataset card ``README.md`` are
written.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict
from rich.console import Console

from pipeline import judging
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.prompting import PromptLibrary, describe, prompts_folder
from pipeline.records import PlanItem, stable_id, utc_now
from pipeline.runs import (
    STOPPED_BUDGET,
    JsonlAppender,
    Run,
    atomic_write_text,
    read_jsonl,
)
from pipeline.teacher.structured import schema_format, structured_mode

# teacher.base_url decides preferences.structured=auto
CONFIG_KEYS = ("preferences", "teacher.model", "teacher.base_url", "teacher.top_p", "seed")
RATINGS = "ratings.jsonl"
PARQUET = "pairs.parquet"
CARD = "README.md"
RATING_SCHEMA = {
    "type": "object",
    "properties": {
        "rationale": {"type": "string"},
        "score": {"type": "integer", "enum": list(range(1, 11))},
    },
    "required": ["rationale", "score"],
}


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    text: str | None = None
    finish_reason: str | None = None
    score: int | None = None  # None: not rated (see error)
    rationale: str | None = None
    error: str | None = None
    prompt_tokens: int = 0  # the sample's and its rating's
    completion_tokens: int = 0


class PreferenceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str  # the plan item's
    prompt: str  # the user message
    messages: list[dict[str, str]]
    samples: list[Sample]
    chosen: int | None = None  # sample index
    rejected: int | None = None
    skip_reason: str | None = None
    model: str | None = None
    created_at: str


def _rate_template(cfg: PipelineConfig) -> tuple[PromptLibrary, str]:
    return judging.template(cfg, cfg.preferences.rate_prompt, "preferences.rate_prompt")


def preflight(cfg: PipelineConfig) -> None:
    if cfg.preferences.n == 0:
        return
    _rate_template(cfg)
    PromptLibrary(prompts_folder(cfg)).check(cfg.plan.formats)
    if cfg.teacher.mode == "batch":
        raise DatagenError(
            "preferences: teacher.mode=batch is not supported (each rating needs its sample "
            "first); run preferences with teacher.mode=online"
        )
    from pipeline.teacher import check_teacher_config

    check_teacher_config(cfg)


def fingerprint(cfg: PipelineConfig) -> str:
    """generate's templates (the prompts) and the rating template are part of the identity."""
    if cfg.preferences.n == 0:
        return ""
    lib, name = _rate_template(cfg)
    return PromptLibrary(prompts_folder(cfg)).fingerprint(cfg.plan.formats) + lib.fingerprint(
        [name]
    )


def parse_rating(text: str) -> tuple[int, str] | None:
    obj = judging.parse_json_object(text)
    score = None if obj is None else judging.int_field(obj, "score", 1, 10)
    if obj is None or score is None:
        return None
    return score, str(obj.get("rationale", "")).strip()


def choose_pair(
    samples: list[Sample], how: str, seed: int, item_id: str
) -> tuple[int | None, int | None, str | None]:
    """(chosen, rejected, skip reason): chosen is the first best-rated sample, rejected the
    first worst-rated or a seeded random one rated strictly lower."""
    rated = [s for s in samples if s.score is not None]
    if len(rated) < 2:
        return None, None, f"too_few_rated: {len(rated)} of {len(samples)} samples rated"
    best = max(s.score for s in rated)  # type: ignore[type-var]
    lower = [s for s in rated if s.score is not None and s.score < best]
    if not lower:
        return None, None, f"tie: all {len(rated)} rated samples scored {best}"
    chosen = next(s.index for s in rated if s.score == best)
    if how == "worst":
        worst = min(s.score for s in lower)  # type: ignore[type-var]
        return chosen, next(s.index for s in lower if s.score == worst), None
    rng = random.Random(int(hashlib.sha256(f"{seed}\x1f{item_id}".encode()).hexdigest()[:16], 16))
    return chosen, rng.choice(lower).index, None


class _Sampler:
    def __init__(self, cfg: PipelineConfig, teacher: Any, stats: Any) -> None:
        from pipeline.stages.generate import make_job

        self.make_job = make_job
        self.cfg, self.teacher, self.stats = cfg, teacher, stats
        self.prompts = PromptLibrary(prompts_folder(cfg))
        self.rate_lib, self.rate_name = _rate_template(cfg)
        p = cfg.preferences
        mode = structured_mode(p.structured, cfg.teacher, endpoint="off")
        self.rate_params: dict[str, Any] = {"max_tokens": p.rate_max_tokens, "temperature": 0.0}
        if fmt := schema_format(mode, "rating", RATING_SCHEMA):
            self.rate_params["response_format"] = fmt

    def sample_params(self, i: int) -> dict[str, Any]:
        p = self.cfg.preferences
        # a seed per sample: distinct requests (and cache keys) for the same prompt
        return {"max_tokens": p.max_tokens, "temperature": p.temperature, "seed": self.cfg.seed + i}

    async def record(self, it: PlanItem) -> PreferenceRecord:
        """Every sample and its rating (requests in turn). BudgetExhausted propagates: the
        prompt stays pending, what it got is cached."""
        from pipeline.teacher import TeacherError, ask

        p = self.cfg.preferences
        messages = self.make_job(it, self.prompts).messages
        prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        samples = []
        for i in range(p.samples):
            s = Sample(index=i)
            try:
                c = await ask(self.teacher, self.stats, messages, self.sample_params(i), it.id)
                s.text, s.finish_reason = c.text, c.finish_reason
                s.prompt_tokens, s.completion_tokens = c.prompt_tokens, c.completion_tokens
                if not c.text.strip():
                    raise TeacherError("empty: the sample has no text", 1)
                rate = self.rate_lib.render(
                    self.rate_name, prompt=prompt, response=c.text[: p.max_doc_chars]
                )
                r = await ask(self.teacher, self.stats, rate, self.rate_params, it.id)
                s.prompt_tokens += r.prompt_tokens
                s.completion_tokens += r.completion_tokens
                got = parse_rating(r.text)
                if got is None:
                    tail = " ".join(r.text.split())[-80:]
                    raise TeacherError(f"unparseable: no JSON score 1-10 (ends {tail!r})", 1)
                s.score, s.rationale = got
            except TeacherError as e:
                s.error = e.reason
            samples.append(s)
        chosen, rejected, why = choose_pair(samples, p.rejected, self.cfg.seed, it.id)
        return PreferenceRecord(
            id=it.id,
            prompt=prompt,
            messages=messages,
            samples=samples,
            chosen=chosen,
            rejected=rejected,
            skip_reason=why,
            model=self.cfg.teacher.model,
            created_at=utc_now(),
        )


def read_records(folder: Path) -> list[PreferenceRecord]:
    path = folder / RATINGS
    if not path.exists():
        return []
    return list({r.id: r for r in read_jsonl(path, PreferenceRecord)}.values())


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    p = cfg.preferences
    if p.n == 0:
        console.print("preferences: preferences.n=0; no preference pairs")
        return {"summary": {"skipped": "preferences.n=0"}}
    from pipeline.stages.annotate import sample_documents
    from pipeline.stages.plan import iter_plan

    run.require_finished("plan", "preferences")
    folder = run.stage_dir("preferences")
    out_path = folder / RATINGS
    done = judging.recorded_ids(out_path, PreferenceRecord)
    sample = sample_documents(iter_plan(run), p.n, cfg.seed)
    todo = [it for it in sample if it.id not in done]
    lib, _ = _rate_template(cfg)
    console.print(
        f"preferences: {len(sample)} prompts sampled, {len(sample) - len(todo)} done earlier, "
        f"{len(todo)} to sample x{p.samples} and rate; {describe(lib.folder)}"
    )
    stats = None
    if todo:
        stats = asyncio.run(_sample(cfg, run, console, iter(todo), len(todo), out_path))
    return _finish(cfg, run, folder, len(sample), stats)


async def _sample(
    cfg: PipelineConfig,
    run: Run,
    console: Console,
    items: Iterator[PlanItem],
    total: int,
    out_path: Path,
) -> Any:
    from pipeline.teacher import BatchStats, open_teacher, run_tasks

    with JsonlAppender(out_path, fsync=False) as out:
        async with open_teacher(cfg, run, console, stage="preferences") as teacher:
            stats = BatchStats(cost_known=teacher.price is not None)
            sampler = _Sampler(cfg, teacher, stats)

            async def work(it: PlanItem) -> bool:
                rec = await sampler.record(it)
                out.write(rec)
                return any(s.score is not None for s in rec.samples)

            return await run_tasks(teacher, items, work, console, "preferences", total, stats)


def pairs_table(records: list[PreferenceRecord]) -> pa.Table:
    """The preference dataset: one row per prompt with a pair."""
    rows = [r for r in records if r.chosen is not None and r.rejected is not None]

    def text(r: PreferenceRecord, i: int | None) -> str:
        return (r.samples[i].text or "") if i is not None else ""

    def score(r: PreferenceRecord, i: int | None) -> int | None:
        return r.samples[i].score if i is not None else None

    return pa.table(
        {
            "prompt": [r.prompt for r in rows],
            "chosen": [text(r, r.chosen) for r in rows],
            "rejected": [text(r, r.rejected) for r in rows],
            "score_chosen": pa.array([score(r, r.chosen) for r in rows], type=pa.int32()),
            "score_rejected": pa.array([score(r, r.rejected) for r in rows], type=pa.int32()),
            "scores": pa.array([[s.score for s in r.samples] for r in rows], pa.list_(pa.int32())),
            "model": [r.model for r in rows],
            "id": [r.id for r in rows],
            "chosen_sample": pa.array([r.chosen for r in rows], type=pa.int32()),
            "rejected_sample": pa.array([r.rejected for r in rows], type=pa.int32()),
        }
    )


def _finish(
    cfg: PipelineConfig, run: Run, folder: Path, sampled: int, stats: Any
) -> dict[str, Any]:
    from pipeline.card import preferences_card
    from pipeline.teacher import budget_note, spend_report
    from pipeline.teacher.client import cost_at

    records = read_records(folder)
    if records and not any(s.score is not None for r in records for s in r.samples):
        errors = Counter(s.error for r in records for s in r.samples)
        raise DatagenError(
            f"preferences: no sample was rated ({errors.most_common(1)[0][0]!r}, ...); each "
            f"error is in {folder / RATINGS}; fix the cause, then run `datagen run "
            f"stage=preferences force=true`"
        )
    table = pairs_table(records)
    parquet = judging.write_dataset(folder / PARQUET, table)
    skips = Counter((r.skip_reason or "").split(":")[0] for r in records if r.skip_reason)
    errors = Counter((s.error or "").split(":")[0] for r in records for s in r.samples if s.error)
    tok_in = sum(s.prompt_tokens for r in records for s in r.samples)
    tok_out = sum(s.completion_tokens for r in records for s in r.samples)
    cost = cost_at(cfg.teacher.price(), tok_in, tok_out)
    hist = Counter(s.score for r in records for s in r.samples if s.score is not None)
    pending = sampled - len(records)
    spend = spend_report(run.path, "preferences", cfg.budget.max_cost_usd)
    stopped = bool(stats and stats.stopped_by_budget)
    margins = [
        r.samples[r.chosen].score - r.samples[r.rejected].score  # type: ignore[operator]
        for r in records
        if r.chosen is not None and r.rejected is not None
    ]
    manifest = {
        **({"status": STOPPED_BUDGET, "next": budget_note(spend, pending)} if stopped else {}),
        "summary": {
            "pairs": table.num_rows,
            "skipped": sum(skips.values()),
            **({"pending": pending} if pending else {}),
            "cost_usd": "unknown" if cost is None else round(cost, 6),
        },
        "sampled": sampled,
        "prompts": len(records),
        "pairs": table.num_rows,
        "skipped": sum(skips.values()),
        "pending": pending,
        "skip_reasons": dict(sorted(skips.items())),
        "sample_errors": dict(sorted(errors.items())),
        "samples_per_prompt": cfg.preferences.samples,
        "temperature": cfg.preferences.temperature,
        "rejected_rule": cfg.preferences.rejected,
        "score_histogram": {str(k): hist.get(k, 0) for k in range(1, 11)},
        "mean_margin": round(sum(margins) / len(margins), 3) if margins else None,
        "prompt_tokens": tok_in,
        "completion_tokens": tok_out,
        "cost_usd": None if cost is None else round(cost, 6),
        **spend,
        **(
            {"this_run": {"cache_hits": stats.cached, "skipped_by_budget": stats.skipped_by_budget}}
            if stats is not None
            else {}
        ),
        "output_fingerprint": stable_id(*sorted(r.id for r in records)),
        "model": cfg.teacher.model,
        "outputs": {"ratings": RATINGS, "pairs": parquet, "card": CARD},
    }
    atomic_write_text(folder / CARD, preferences_card(cfg, run, manifest))
    return manifest
