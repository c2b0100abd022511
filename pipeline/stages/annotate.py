"""annotate: the teacher rates a seeded sample of generated documents for educational value
(additive 0-5 scale, prompts/annotate.j2), the labels the quality classifier learns from.

Each rating is appended to ``annotations.jsonl`` as it arrives; an answer with no parseable
final score line is a recorded failure in ``failures.jsonl`` (never a 0). A rerun requests only
what is missing. With ``classifier.model_path`` set there is nothing to label: the stage skips.
The teacher's spend counts against the same ``budget.max_cost_usd`` as generate's; ratings
the budget did not allow stay pending (``stopped: budget``).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict
from rich.console import Console

from pipeline import judging
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.prompting import PromptLibrary, describe
from pipeline.records import Document, Failure, stable_id, utc_now
from pipeline.redaction import env_secret, redact
from pipeline.runs import STOPPED_BUDGET, JsonlAppender, Run, read_jsonl
from pipeline.teacher.structured import schema_format
from pipeline.teacher.structured import structured_mode as _structured_mode

# teacher.base_url decides annotate.structured=auto (see structured_mode)
CONFIG_KEYS = ("annotate", "teacher.model", "teacher.base_url", "classifier.model_path", "seed")
ANNOTATIONS = "annotations.jsonl"
FAILURES = "failures.jsonl"

# the last "Educational score: N" (markdown bold, "N/5" and "= N" tolerated)
_SCORE = re.compile(
    r"educational\s+score\s*(?:\*\*)?\s*[:=\-]\s*(?:\*\*)?\s*(\d+(?:\.\d+)?)"
    r"\s*(?:/\s*5|out of 5|points?)?",
    re.IGNORECASE,
)


class Annotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    score: int
    justification: str
    response: str
    model: str | None = None
    created_at: str


def parse_score(text: str) -> int | None:
    """The final educational score 0-5, or None when the answer has no valid score line."""
    found = _SCORE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    if value != int(value) or not 0 <= value <= 5:
        return None
    return int(value)


# justification first, then the score (as the plain-text prompt); an enum because llama.cpp's
# grammar ignores minimum/maximum
RATING_SCHEMA = {
    "type": "object",
    "properties": {
        "justification": {"type": "string"},
        "score": {"type": "integer", "enum": [0, 1, 2, 3, 4, 5]},
    },
    "required": ["justification", "score"],
}


def structured_mode(cfg: PipelineConfig) -> str:
    return _structured_mode(cfg.annotate.structured, cfg.teacher, endpoint="off")


def response_format(mode: str) -> dict[str, Any] | None:
    return schema_format(mode, "rating", RATING_SCHEMA)


def parse_rating(text: str, structured: bool) -> tuple[int, str] | None:
    """(score, justification) from an answer, or None when it holds no valid score."""
    if not structured:
        score = parse_score(text)
        return None if score is None else (score, justification(text))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    score = judging.int_field(obj, "score", 0, 5) if isinstance(obj, dict) else None
    if score is None:
        return None
    return score, str(obj.get("justification", "")).strip()


def justification(text: str) -> str:
    m = list(_SCORE.finditer(text))
    return (text[: m[-1].start()] if m else text).strip()


class _HasId(Protocol):
    id: str


D = TypeVar("D", bound=_HasId)


def sample_documents(docs: Iterable[D], n: int, seed: int) -> list[D]:
    """A seeded sample of ``n`` documents in one pass over any number of them: those with the
    smallest hash of (seed, id), so the sample depends neither on the order generate wrote them
    in nor on how many runs it took; returned sorted by id. Memory holds the sample only."""
    heap: list[tuple[int, str, D]] = []  # a max-heap on the hash (negated)
    in_heap: set[int] = set()
    for d in docs:
        h = _sample_hash(seed, d.id)
        if h in in_heap:  # the same id twice
            continue
        if len(heap) < n:
            heapq.heappush(heap, (-h, d.id, d))
            in_heap.add(h)
        elif heap and -heap[0][0] > h:
            old, _, _ = heapq.heapreplace(heap, (-h, d.id, d))
            in_heap.discard(-old)
            in_heap.add(h)
    return sorted((d for _, _, d in heap), key=lambda d: d.id)


def _sample_hash(seed: int, doc_id: str) -> int:
    data = f"{seed}\x1f{doc_id}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


_ids = judging.recorded_ids


def _template(cfg: PipelineConfig) -> tuple[PromptLibrary, str]:
    return judging.template(cfg, cfg.annotate.prompt, "annotate.prompt")


def _needs_template(cfg: PipelineConfig) -> bool:
    return not cfg.classifier.model_path and cfg.annotate.n > 0


def preflight(cfg: PipelineConfig) -> None:
    if _needs_template(cfg):
        _template(cfg)
        from pipeline.teacher import check_teacher_config

        check_teacher_config(cfg)


def fingerprint(cfg: PipelineConfig) -> str:
    """The template's source (and what it includes) is part of annotate's identity."""
    if not _needs_template(cfg):
        return ""
    prompts, name = _template(cfg)
    return prompts.fingerprint([name])


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("annotate")
    if cfg.classifier.model_path:
        console.print("annotate: classifier.model_path is set; nothing to label")
        return {"skipped": "classifier.model_path is set", "summary": {"skipped": "model_path"}}
    run.require_finished("generate", "annotate")
    run.require_finished("revise", "annotate")
    from pipeline.stages.generate import iter_outputs

    read = Counter[str]()

    def counted() -> Iterator[Document]:
        for d in iter_outputs(run):
            read["docs"] += 1
            yield d

    sample = sample_documents(counted(), cfg.annotate.n, cfg.seed)
    available = read["docs"]
    out_path, fail_path = folder / ANNOTATIONS, folder / FAILURES
    done = _ids(out_path, Annotation) | _ids(fail_path, Failure)
    todo = [d for d in sample if d.id not in done]
    prompts, name = _template(cfg)
    mode = structured_mode(cfg)
    params: dict[str, Any] = {
        "max_tokens": cfg.annotate.max_tokens,
        "temperature": cfg.annotate.temperature,
    }
    if fmt := response_format(mode):
        params["response_format"] = fmt
    console.print(
        f"annotate: {len(sample)} sampled of {available}, {len(sample) - len(todo)} "
        f"done earlier, {len(todo)} to request; {describe(prompts.folder)}"
    )
    stopped = False
    if todo:
        from pipeline.teacher import Completion, Job

        jobs = [
            Job(
                id=d.id,
                template=f"{name}.j2",
                params=params,
                messages=prompts.render(
                    name, text=d.text[: cfg.annotate.max_doc_chars], json_answer=mode != "off"
                ),
            )
            for d in todo
        ]
        with (
            JsonlAppender(out_path, fsync=False) as out,
            JsonlAppender(fail_path, fsync=False) as fails,
        ):

            def ok(job: Job, c: Completion) -> bool:
                rating = parse_rating(c.text, structured=mode != "off")
                if rating is None:
                    tail = redact(
                        " ".join(c.text.split())[-80:], env_secret(cfg.teacher.api_key_env)
                    )
                    want = (
                        "a JSON score 0-5" if mode != "off" else "an 'Educational score: 0-5' line"
                    )
                    fails.write(
                        Failure(
                            id=job.id,
                            reason=f"unparseable: no {want} (answer ends {tail!r})",
                            attempts=1,
                            template=job.template,
                            model=c.model,
                        )
                    )
                    return False  # counted as failed, in the progress bar too
                out.write(
                    Annotation(
                        id=job.id,
                        score=rating[0],
                        justification=rating[1],
                        response=c.text,
                        model=c.model,
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

            stopped = asyncio.run(_annotate(cfg, run, console, jobs, ok, bad)).stopped_by_budget
    manifest = _manifest(cfg, run, out_path, fail_path, sample, available, mode, stopped)
    request_failures = manifest["failed"] - manifest["failure_reasons"].get("unparseable", 0)
    if manifest["rated"] == 0 and request_failures == manifest["failed"] > 0:
        reasons = ", ".join(f"{k} x{v}" for k, v in manifest["failure_reasons"].items())
        raise DatagenError(
            f"annotate: nothing succeeded: {manifest['failed']} requests failed ({reasons}); "
            f"each reason is in {fail_path}; fix the cause, then run `datagen run "
            f"stage=annotate force=true`"
        )
    return {**manifest, "prompts": str(prompts.folder), "prompt": f"{name}.j2"}


async def _annotate(
    cfg: PipelineConfig, run: Run, console: Console, jobs: list[Any], ok: Any, bad: Any
) -> Any:
    from pipeline.teacher import open_teacher, run_batch

    async with open_teacher(cfg, run, console, stage="annotate") as teacher:
        return await run_batch(teacher, jobs, ok, bad, console, label="annotate", total=len(jobs))


def _manifest(
    cfg: PipelineConfig,
    run: Run,
    out_path: Path,
    fail_path: Path,
    sample: list[Document],
    available: int,
    mode: str,
    stopped: bool,
) -> dict[str, Any]:
    from pipeline.teacher import budget_note, spend_report

    anns = list(read_jsonl(out_path, Annotation)) if out_path.exists() else []
    fails = list(read_jsonl(fail_path, Failure)) if fail_path.exists() else []
    hist = Counter(a.score for a in anns)
    reasons = Counter(f.reason.split(":")[0] for f in fails)
    pending = len({d.id for d in sample} - {a.id for a in anns} - {f.id for f in fails})
    spend = spend_report(run.path, "annotate", cfg.budget.max_cost_usd)
    return {
        **({"status": STOPPED_BUDGET, "next": budget_note(spend, pending)} if stopped else {}),
        "summary": {
            "rated": len(anns),
            "failed": len(fails),
            **({"pending": pending} if pending else {}),
            "mean_score": round(sum(a.score for a in anns) / len(anns), 2) if anns else None,
            **({"spent_usd": spend["spent_usd"]} if cfg.budget.max_cost_usd is not None else {}),
        },
        "available": available,
        "sampled": len(sample),
        "rated": len(anns),
        "failed": len(fails),
        "pending": pending,
        **spend,
        "output_fingerprint": stable_id(*sorted(f"{a.id}:{a.score}" for a in anns)),
        "failure_reasons": dict(sorted(reasons.items())),
        "structured": mode,
        "score_histogram": {str(k): hist.get(k, 0) for k in range(6)},
        "annotations": ANNOTATIONS,
        "failures": FAILURES,
    }
