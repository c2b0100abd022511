"""revise: phi-4 critique and revision of generate's drafts, ``revise.rounds`` rounds each.

A round: the teacher critiques the current text against a rubric (correctness, clarity,
pedagogy, use of the required words; ``prompts/revise_critique.j2``, JSON with a 1-5 rating per
criterion), rewrites it from that critique (``prompts/revise_rewrite.j2``), and critiques the
rewrite with the same rubric. The rewrite replaces the text only when its critique score (the
sum of the four ratings, 4-20) is higher than the current text's. The next round starts from
the accepted rewrite, whose critique is already made (no request twice); a rejected rewrite
ends the rounds (asking again would get the same cached answer), and so does a score of 20.
The draft, every critique and every rewrite stay on the Document (``revision``); ``text`` is
the winner.

Documents are appended to ``revise/outputs*.jsonl`` (generate's file layout) as each finishes,
and later stages (annotate, train_classifier, filter) read them instead of generate's. A
request that fails for good, or a critique with no valid ratings, ends the item's rounds: it
keeps the best text so far, with the reason in ``revision.error``. Every request goes through
the run's teacher (cache, retries, budget); items the budget did not allow stay pending
(``stopped: budget``) and a rerun continues them, paying only for what is not cached.
``revise.rounds=0`` (the default) turns the stage off: later stages read generate's outputs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from pipeline import judging
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.prompting import PromptLibrary, describe
from pipeline.records import Critique, Document, Revision, RevisionRound
from pipeline.redaction import env_secret, redact
from pipeline.runs import STOPPED_BUDGET, Run, read_jsonl
from pipeline.stages.generate import OutputLog, output_files
from pipeline.teacher.structured import schema_format, structured_mode

# teacher.base_url decides revise.structured=auto; the rewrite uses the teacher's sampling
CONFIG_KEYS = (
    "revise",
    "teacher.model",
    "teacher.base_url",
    "teacher.max_tokens",
    "teacher.temperature",
    "teacher.top_p",
)
CRITERIA = ("correctness", "clarity", "pedagogy", "required_words")
MAX_SCORE = 5 * len(CRITERIA)
CRITIQUE_SCHEMA = {
    "type": "object",
    "properties": {
        "critique": {"type": "string"},
        **{c: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for c in CRITERIA},
    },
    "required": ["critique", *CRITERIA],
}


def enabled(cfg: PipelineConfig) -> bool:
    return cfg.revise.rounds > 0


def _templates(cfg: PipelineConfig) -> tuple[tuple[PromptLibrary, str], tuple[PromptLibrary, str]]:
    r = cfg.revise
    return (
        judging.template(cfg, r.critique_prompt, "revise.critique_prompt"),
        judging.template(cfg, r.rewrite_prompt, "revise.rewrite_prompt"),
    )


def preflight(cfg: PipelineConfig) -> None:
    if not enabled(cfg):
        return
    _templates(cfg)
    if cfg.teacher.mode == "batch":
        raise DatagenError(
            "revise: teacher.mode=batch is not supported (each request needs the answer "
            "before it); run revise with teacher.mode=online"
        )
    from pipeline.teacher import check_teacher_config

    check_teacher_config(cfg)


def fingerprint(cfg: PipelineConfig) -> str:
    """Both templates' sources are part of revise's identity."""
    if not enabled(cfg):
        return ""
    return "".join(lib.fingerprint([name]) for lib, name in _templates(cfg))


def parse_critique(text: str) -> Critique | None:
    """The rubric critique in an answer, or None when a rating is missing or not 1-5."""
    obj = judging.parse_json_object(text)
    if obj is None:
        return None
    ratings = {c: judging.int_field(obj, c, 1, 5) for c in CRITERIA}
    if any(v is None for v in ratings.values()):
        return None
    clean = {k: v for k, v in ratings.items() if v is not None}
    return Critique(
        critique=str(obj.get("critique", "")).strip(), ratings=clean, score=sum(clean.values())
    )


class _Reviser:
    """One document's rounds: every request through the shared teacher and its stats."""

    def __init__(self, cfg: PipelineConfig, teacher: Any, stats: Any) -> None:
        (self.crit_lib, self.crit_name), (self.rw_lib, self.rw_name) = _templates(cfg)
        self.cfg, self.teacher, self.stats = cfg, teacher, stats
        mode = structured_mode(cfg.revise.structured, cfg.teacher, endpoint="off")
        self.crit_params: dict[str, Any] = {
            "max_tokens": cfg.revise.critique_max_tokens,
            "temperature": cfg.revise.temperature,
        }
        if fmt := schema_format(mode, "critique", CRITIQUE_SCHEMA):
            self.crit_params["response_format"] = fmt

    async def critique(self, d: Document, text: str) -> Critique:
        from pipeline.teacher import TeacherError, ask

        msgs = self.crit_lib.render(
            self.crit_name,
            text=text[: self.cfg.revise.max_doc_chars],
            topic=d.topic or "",
            audience=d.audience or "students",
            words=d.required_words,
            json_answer=True,
        )
        c = await ask(self.teacher, self.stats, msgs, self.crit_params, d.id)
        crit = parse_critique(c.text)
        if crit is None:
            tail = redact(" ".join(c.text.split())[-80:], env_secret(self.cfg.teacher.api_key_env))
            raise TeacherError(f"unparseable: no rubric ratings 1-5 (answer ends {tail!r})", 1)
        return crit.model_copy(
            update={"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
        )

    async def revise(self, d: Document) -> Document:
        """The document after its rounds. BudgetExhausted propagates (the item stays pending;
        the answers it got are cached)."""
        from pipeline.teacher import TeacherError, ask

        rev = Revision(draft=d.text, model=self.cfg.teacher.model)
        text, finish = d.text, d.finish_reason
        try:
            current = await self.critique(d, text)
            rev.draft_critique, rev.draft_score = current, current.score
            for r in range(1, self.cfg.revise.rounds + 1):
                if current.score >= MAX_SCORE:
                    break
                msgs = self.rw_lib.render(
                    self.rw_name,
                    text=text,
                    critique=current.critique,
                    topic=d.topic or "",
                    audience=d.audience or "students",
                    words=d.required_words,
                )
                c = await ask(self.teacher, self.stats, msgs, None, d.id)
                if not c.text.strip():
                    raise TeacherError(f"round {r}: empty rewrite", 1)
                new = await self.critique(d, c.text)
                accepted = new.score > current.score
                rev.rounds.append(
                    RevisionRound(
                        round=r,
                        critique=current,
                        revised=c.text,
                        revised_critique=new,
                        accepted=accepted,
                        rewrite_prompt_tokens=c.prompt_tokens,
                        rewrite_completion_tokens=c.completion_tokens,
                        rewrite_finish_reason=c.finish_reason,
                    )
                )
                if not accepted:  # the same request again would get the same (cached) rewrite
                    break
                text, finish, current = c.text, c.finish_reason, new
        except TeacherError as e:
            rev.error = e.reason
        if rev.draft_critique is not None:
            rev.final_score = current.score
        return d.model_copy(update={"text": text, "finish_reason": finish, "revision": rev})


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    if not enabled(cfg):
        console.print("revise: revise.rounds=0; later stages read generate's outputs")
        return {"revised": False, "summary": {"skipped": "revise.rounds=0"}}
    gen = run.require_finished("generate", "revise")
    folder = run.stage_dir("revise")
    drafts = int((run.read_manifest("generate") or {}).get("items", 0))
    out = OutputLog(folder, cfg.plan.shard_items)
    n_todo = max(drafts - len(out), 0)

    def todo() -> Iterator[Document]:
        for path in output_files(gen):
            for d in read_jsonl(path, Document):
                if d.id not in out:
                    yield d

    (crit_lib, _), _ = _templates(cfg)
    console.print(
        f"revise: {drafts} drafts, {len(out)} done earlier, {n_todo} to revise "
        f"({cfg.revise.rounds} round(s) each); {describe(crit_lib.folder)}"
    )
    stopped = False
    stats = None
    if n_todo:
        try:
            stats = asyncio.run(_revise(cfg, run, console, todo(), n_todo, out))
            stopped = stats.stopped_by_budget
        finally:
            out.close()
    manifest = _manifest(cfg, run, out, drafts, stats, stopped)
    if manifest["items"] and manifest["failed"] == manifest["items"]:
        reasons = ", ".join(f"{k} x{v}" for k, v in manifest["failure_reasons"].items())
        raise DatagenError(
            f"revise: no document was critiqued ({reasons}); each reason is in "
            f"{folder}/outputs*.jsonl (revision.error); fix the cause, then run `datagen run "
            f"stage=revise force=true`"
        )
    return {**manifest, "prompts": str(crit_lib.folder)}


async def _revise(
    cfg: PipelineConfig,
    run: Run,
    console: Console,
    docs: Iterator[Document],
    total: int,
    out: OutputLog,
) -> Any:
    from pipeline.teacher import BatchStats, open_teacher, run_tasks

    async with open_teacher(cfg, run, console, stage="revise") as teacher:
        stats = BatchStats(cost_known=teacher.price is not None)
        reviser = _Reviser(cfg, teacher, stats)

        async def work(d: Document) -> bool:
            revised = await reviser.revise(d)
            out.write(revised)  # one line, appended as soon as the item is done
            return revised.revision is None or revised.revision.error is None

        return await run_tasks(teacher, docs, work, console, "revise", total, stats)


def _manifest(
    cfg: PipelineConfig,
    run: Run,
    out: OutputLog,
    drafts: int,
    stats: Any,
    stopped: bool,
) -> dict[str, Any]:
    """Totals over every output file (earlier runs included); per round: documents, rewrites
    accepted, mean score before and after, tokens and cost."""
    from pipeline.teacher import budget_note, spend_report
    from pipeline.teacher.client import cost_at

    price = cfg.teacher.price()
    rounds: dict[int, Counter[str]] = {}
    reasons: Counter[str] = Counter()
    n = failed = accepted_docs = 0
    draft_sum = final_sum = scored = 0
    for path in out.files:
        for d in read_jsonl(path, Document):
            n += 1
            rev = d.revision
            if rev is None:
                continue
            if rev.error:
                failed += 1
                reasons[rev.error.split(":")[0]] += 1
            if rev.draft_critique is not None and rev.final_score is not None:
                scored += 1
                draft_sum += rev.draft_critique.score
                final_sum += rev.final_score
            first = rev.draft_critique
            accepted_docs += any(r.accepted for r in rev.rounds)
            for r in rev.rounds:
                c = rounds.setdefault(r.round, Counter())
                after = r.revised_critique.score if r.accepted else r.critique.score
                c["documents"] += 1
                c["accepted"] += r.accepted
                c["score_before"] += r.critique.score
                c["score_after"] += after
                c["prompt_tokens"] += r.rewrite_prompt_tokens + r.revised_critique.prompt_tokens
                c["completion_tokens"] += (
                    r.rewrite_completion_tokens + r.revised_critique.completion_tokens
                )
                if r.round == 1 and first is not None:  # the draft's critique counts in round 1
                    c["prompt_tokens"] += first.prompt_tokens
                    c["completion_tokens"] += first.completion_tokens
    per_round = []
    for r, c in sorted(rounds.items()):
        k = c["documents"]
        cost = cost_at(price, c["prompt_tokens"], c["completion_tokens"])
        per_round.append(
            {
                "round": r,
                "documents": k,
                "accepted": c["accepted"],
                "mean_score_before": round(c["score_before"] / k, 3),
                "mean_score_after": round(c["score_after"] / k, 3),
                "mean_score_change": round((c["score_after"] - c["score_before"]) / k, 3),
                "prompt_tokens": c["prompt_tokens"],
                "completion_tokens": c["completion_tokens"],
                "cost_usd": None if cost is None else round(cost, 6),
            }
        )
    pending = max(drafts - n, 0)
    spend = spend_report(run.path, "revise", cfg.budget.max_cost_usd)
    mean_draft = round(draft_sum / scored, 3) if scored else None
    mean_final = round(final_sum / scored, 3) if scored else None
    return {
        **({"status": STOPPED_BUDGET, "next": budget_note(spend, pending)} if stopped else {}),
        "revised": True,  # later stages read revise/outputs*.jsonl
        "summary": {
            "items": n,
            "revised": accepted_docs,
            "failed": failed,
            **({"pending": pending} if pending else {}),
            "score": f"{mean_draft} -> {mean_final}" if scored else None,
            **({"spent_usd": spend["spent_usd"]} if cfg.budget.max_cost_usd is not None else {}),
        },
        "rounds_configured": cfg.revise.rounds,
        "drafts": drafts,
        "items": n,
        "accepted": accepted_docs,
        "failed": failed,
        "pending": pending,
        "failure_reasons": dict(sorted(reasons.items())),
        "score": "critique score: sum of the rubric's four 1-5 ratings (4-20)",
        "mean_draft_score": mean_draft,
        "mean_final_score": mean_final,
        "rounds": per_round,
        **spend,
        **(
            {
                "this_run": {
                    "done": stats.done,
                    "failed": stats.failed,
                    "cache_hits": stats.cached,
                    "skipped_by_budget": stats.skipped_by_budget,
                    "cost_usd": stats.cost_usd,
                }
            }
            if stats is not None
            else {}
        ),
        "output_fingerprint": out.fingerprint(),
        "model": cfg.teacher.model,
        "outputs": [p.name for p in out.files],
    }
