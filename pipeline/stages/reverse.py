"""reverse: phi-4 instruction reversal: the teacher writes the instruction a text answers.

Input: a seeded sample of ``reverse.n`` documents from the web stage's kept output, or, with
``reverse.input``, from a JSONL file of ``{"text", "id"?}`` records (code snippets, say); texts
shorter than ``reverse.min_chars`` are not used. For each, the teacher writes the instruction
or question to which the text is the answer (``prompts/reverse.j2``); the record is the pair
(instruction, original text).

The answerability check is overlap-based (no second request): the share of the instruction's
content words (words of five letters or more, task verbs aside, compared on their first six
letters so "functions" meets "function") found in the text must be at least
``reverse.min_overlap``; an empty instruction, one with no content words, and one longer than
``reverse.max_instruction_words`` (it copies the text) are dropped too. Every pair is appended
to ``reverse/pairs.jsonl`` as it arrives, dropped ones with their ``drop_reason``; a request
that fails for good goes to ``failures.jsonl``. At the end the kept pairs are written to
``reverse/pairs.parquet`` (instruction, response, id, source_id, url, model, overlap; not
written while no pair is kept: ``datasets`` cannot load a parquet file without rows). A rerun
requests only what is missing; the teacher's cache, retries and budget are the run's.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console

from pipeline import judging
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.prompting import describe
from pipeline.records import Document, Failure, stable_id, utc_now
from pipeline.runs import STOPPED_BUDGET, JsonlAppender, Run, read_jsonl

CONFIG_KEYS = ("reverse", "teacher.model", "teacher.top_p", "seed")
PAIRS = "pairs.jsonl"
PARQUET = "pairs.parquet"
FAILURES = "failures.jsonl"
_WORD = re.compile(r"[^\W\d_]{5,}", re.UNICODE)
# words of an instruction that say what to do, not what about: they need not be in the text
TASK_WORDS = frozenset(
    {
        *("explain", "describe", "write", "which", "would", "should", "could", "about"),
        *("their", "there", "these", "those", "given", "following", "provide", "discuss"),
        *("summarize", "summarise", "create", "implement", "question", "answer", "between"),
    }
)


class InstructionPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    source_id: str
    instruction: str
    text: str  # the original text: the answer
    origin: str  # "web" or the reverse.input file
    url: str | None = None
    model: str | None = None
    overlap: float | None = None
    drop_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: str


def _stems(text: str) -> set[str]:
    return {w[:6] for w in (m.lower() for m in _WORD.findall(text)) if w not in TASK_WORDS}


def answerability(instruction: str, text: str, cfg: PipelineConfig) -> tuple[float, str | None]:
    """(overlap, drop reason or None): the overlap-based check described above."""
    r = cfg.reverse
    words = instruction.split()
    if not words:
        return 0.0, "empty_instruction"
    if len(words) > r.max_instruction_words:
        return 0.0, f"too_long: {len(words)} words > reverse.max_instruction_words"
    stems = _stems(instruction)
    if not stems:
        return 0.0, "no_content_words"
    overlap = len(stems & _stems(text)) / len(stems)
    if overlap < r.min_overlap:
        return overlap, f"not_answerable: overlap {overlap:.2f} < reverse.min_overlap"
    return overlap, None


def clean_instruction(text: str) -> str:
    """The instruction without the quotes or a leading label the model may add."""
    t = text.strip().strip('"').strip()
    return re.sub(r"^(instruction|question)\s*:\s*", "", t, flags=re.IGNORECASE).strip()


def preflight(cfg: PipelineConfig) -> None:
    if cfg.reverse.n == 0:
        return
    judging.template(cfg, cfg.reverse.prompt, "reverse.prompt")
    if cfg.reverse.input and not cfg.project_path(cfg.reverse.input).is_file():
        raise DatagenError(f"reverse.input: {cfg.project_path(cfg.reverse.input)} not found")
    from pipeline.teacher import check_teacher_config

    check_teacher_config(cfg)


def fingerprint(cfg: PipelineConfig) -> str:
    """The template's source, and a ``reverse.input`` file's size and mtime (an edited input
    redoes the stage; the web stage's output is in the upstream hash already)."""
    if cfg.reverse.n == 0:
        return ""
    lib, name = judging.template(cfg, cfg.reverse.prompt, "reverse.prompt")
    extra = ""
    if cfg.reverse.input and (path := cfg.project_path(cfg.reverse.input)).is_file():
        st = path.stat()
        extra = stable_id(path.resolve(), st.st_size, st.st_mtime_ns)
    return lib.fingerprint([name]) + extra


def _file_docs(path: Path) -> Iterator[Document]:
    """Documents from a JSONL file of {"text", "id"?}; a bad line is one clear error."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = obj["text"]
                if not isinstance(text, str):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DatagenError(
                    f"reverse.input: {path}:{n}: not a JSON object with a string 'text'"
                ) from None
            yield Document(id=str(obj.get("id") or stable_id(text, prefix="in-")), text=text)


def _inputs(cfg: PipelineConfig, run: Run) -> tuple[Iterator[Document], str]:
    if cfg.reverse.input:
        path = cfg.project_path(cfg.reverse.input)
        return _file_docs(path), str(path)
    from pipeline.runs import read_shards

    folder = run.require_finished("web", "reverse")
    return read_shards(folder, Document), "web"


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    r = cfg.reverse
    if r.n == 0:
        console.print("reverse: reverse.n=0; nothing to reverse")
        return {"summary": {"skipped": "reverse.n=0"}}
    from pipeline.stages.annotate import sample_documents

    folder = run.stage_dir("reverse")
    docs, origin = _inputs(cfg, run)
    seen = Counter[str]()

    def usable() -> Iterator[Document]:
        for d in docs:
            seen["read"] += 1
            if len(d.text) >= r.min_chars:
                yield d

    sample = sample_documents(usable(), r.n, cfg.seed)
    out_path, fail_path = folder / PAIRS, folder / FAILURES
    done = judging.recorded_ids(out_path, InstructionPair) | judging.recorded_ids(
        fail_path, Failure
    )
    todo = [d for d in sample if stable_id(d.id, prefix="rev-") not in done]
    lib, name = judging.template(cfg, r.prompt, "reverse.prompt")
    console.print(
        f"reverse: {len(sample)} sampled of {seen['read']} texts ({origin}), "
        f"{len(sample) - len(todo)} done earlier, {len(todo)} to request; {describe(lib.folder)}"
    )
    stopped = False
    if todo:
        from pipeline.teacher import Completion, Job

        params = {"max_tokens": r.max_tokens, "temperature": r.temperature}
        by_id = {stable_id(d.id, prefix="rev-"): d for d in todo}
        jobs = [
            Job(
                id=pid,
                template=f"{name}.j2",
                params=params,
                messages=lib.render(name, text=d.text[: r.max_doc_chars]),
            )
            for pid, d in by_id.items()
        ]
        with (
            JsonlAppender(out_path, fsync=False) as out,
            JsonlAppender(fail_path, fsync=False) as fails,
        ):

            def ok(job: Job, c: Completion) -> bool:
                d = by_id[job.id]
                instruction = clean_instruction(c.text)
                overlap, why = answerability(instruction, d.text, cfg)
                out.write(
                    InstructionPair(
                        id=job.id,
                        source_id=d.id,
                        instruction=instruction,
                        text=d.text,
                        origin=origin,
                        url=d.url,
                        model=c.model,
                        overlap=round(overlap, 4),
                        drop_reason=why,
                        prompt_tokens=c.prompt_tokens,
                        completion_tokens=c.completion_tokens,
                        created_at=utc_now(),
                    )
                )
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

            stopped = asyncio.run(_reverse(cfg, run, console, jobs, ok, bad)).stopped_by_budget
    return _manifest(cfg, run, folder, sample, seen["read"], origin, stopped)


async def _reverse(
    cfg: PipelineConfig, run: Run, console: Console, jobs: list[Any], ok: Any, bad: Any
) -> Any:
    from pipeline.teacher import open_teacher, run_batch

    async with open_teacher(cfg, run, console, stage="reverse") as teacher:
        return await run_batch(teacher, jobs, ok, bad, console, label="reverse", total=len(jobs))


def read_pairs(folder: Path) -> list[InstructionPair]:
    """Every pair recorded in ``folder`` (kept and dropped), the last record per id."""
    path = folder / PAIRS
    if not path.exists():
        return []
    try:
        return list({p.id: p for p in read_jsonl(path, InstructionPair)}.values())
    except ValidationError as e:
        raise DatagenError(f"{path}: not a reverse pairs file ({e.errors()[0]['msg']})") from None


def _manifest(
    cfg: PipelineConfig,
    run: Run,
    folder: Path,
    sample: list[Document],
    read: int,
    origin: str,
    stopped: bool,
) -> dict[str, Any]:
    from pipeline.teacher import budget_note, spend_report

    pairs = read_pairs(folder)
    kept = [p for p in pairs if p.drop_reason is None]
    fails = list(read_jsonl(folder / FAILURES, Failure)) if (folder / FAILURES).exists() else []
    if not pairs and fails:
        raise DatagenError(
            f"reverse: nothing succeeded: {len(fails)} requests failed (e.g. "
            f"{fails[0].reason[:160]!r}); each reason is in {folder / FAILURES}; fix the "
            f"cause, then run `datagen run stage=reverse force=true`"
        )
    table = pa.table(
        {
            "instruction": [p.instruction for p in kept],
            "response": [p.text for p in kept],
            "id": [p.id for p in kept],
            "source_id": [p.source_id for p in kept],
            "url": [p.url for p in kept],
            "model": [p.model for p in kept],
            "overlap": pa.array([p.overlap for p in kept], type=pa.float64()),
        }
    )
    parquet = judging.write_dataset(folder / PARQUET, table)
    reasons = Counter((p.drop_reason or "").split(":")[0] for p in pairs if p.drop_reason)
    pending = len(sample) - len(pairs) - len({f.id for f in fails} - {p.id for p in pairs})
    spend = spend_report(run.path, "reverse", cfg.budget.max_cost_usd)
    return {
        **({"status": STOPPED_BUDGET, "next": budget_note(spend, pending)} if stopped else {}),
        "summary": {
            "pairs": len(kept),
            "dropped": len(pairs) - len(kept),
            "failed": len(fails),
            **({"pending": pending} if pending else {}),
        },
        "input": origin,
        "read": read,
        "sampled": len(sample),
        "pairs": len(kept),
        "dropped": len(pairs) - len(kept),
        "failed": len(fails),
        "pending": pending,
        "drop_reasons": dict(sorted(reasons.items())),
        "check": f"overlap-based: content-word overlap >= {cfg.reverse.min_overlap}",
        **spend,
        "output_fingerprint": stable_id(*sorted(p.id for p in kept)),
        "outputs": {"pairs": PAIRS, "parquet": parquet, "failures": FAILURES},
    }
