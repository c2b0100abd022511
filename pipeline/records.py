"""Record types that travel between stages (one JSON object per line in shards)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def stable_id(*parts: object, prefix: str = "") -> str:
    """A short content hash: same parts give the same id on every machine."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]
    return f"{prefix}{h}"


class PlanItem(BaseModel):
    """One generation request: topic x audience x format x vocabulary constraint."""

    model_config = ConfigDict(extra="forbid")

    id: str
    topic: str
    subject: str = ""  # the chapter/area the topic belongs to
    audience: str
    format: str
    words: list[str]
    seed_text: str | None = None  # optional web extract the request is grounded on
    style: str = ""  # plan.styles ("" for formats whose template has no style)
    features: list[str] = Field(default_factory=list)  # TinyStories story features


# a code exercise's tests run against its solution in the sandbox (pipeline.sandbox): passed,
# failed (an assert failed), timeout (wall-clock or CPU limit), error (anything else)
Verdict = Literal["passed", "failed", "timeout", "error"]
Isolation = Literal["namespaces", "rlimits"]  # pipeline.sandbox: with or without namespaces


class CodeExercise(BaseModel):
    """A code exercise (format ``code_exercises``), phi-1 CodeExercises style: a function's
    signature and docstring, its solution, and assert tests (pipeline.code_exercises)."""

    model_config = ConfigDict(extra="forbid")

    instruction: str  # the signature + docstring, as the student reads it
    solution: str  # the complete function(s)
    tests: str  # Python asserts that call entry_point
    entry_point: str  # the function the instruction asks for
    verified: Verdict | None = None  # None: not run in the sandbox yet
    runtime_s: float | None = None  # sandbox wall clock, interpreter start-up included
    error: str | None = None  # the traceback or limit hit (redacted, its tail)
    isolation: Isolation | None = None  # how the sandbox ran it
    repairs: int = 0  # repair rounds this exercise took (generate.repair_rounds)


class Critique(BaseModel):
    """The teacher's rubric critique of one text (prompts/revise_critique.j2): criterion
    ratings 1-5 and their sum, the score a revision must beat."""

    model_config = ConfigDict(extra="forbid")

    critique: str
    ratings: dict[str, int]  # correctness, clarity, pedagogy, required_words
    score: int  # the sum of the ratings, 4-20
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RevisionRound(BaseModel):
    """One round: the critique of the current text, the rewrite, the rewrite's critique."""

    model_config = ConfigDict(extra="forbid")

    round: int
    critique: Critique  # of the text going into this round
    revised: str  # the rewrite
    revised_critique: Critique
    accepted: bool  # the rewrite scored higher and replaced the text
    rewrite_prompt_tokens: int = 0
    rewrite_completion_tokens: int = 0
    rewrite_finish_reason: str | None = None


class Revision(BaseModel):
    """What the revise stage did to a document: the draft, every round, the final score."""

    model_config = ConfigDict(extra="forbid")

    draft: str
    draft_critique: Critique | None = None
    rounds: list[RevisionRound] = Field(default_factory=list)
    draft_score: int | None = None
    final_score: int | None = None
    model: str | None = None
    error: str | None = None  # why it stopped early (a failed request, an unparseable critique)


class Document(BaseModel):
    """A text document, synthetic or web; the same type flows through filter, web and emit."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    source: Literal["synthetic", "web"] = "synthetic"
    # plan fields (synthetic)
    topic: str | None = None
    subject: str | None = None
    audience: str | None = None
    format: str | None = None
    style: str | None = None
    features: list[str] = Field(default_factory=list)
    required_words: list[str] = Field(default_factory=list)
    # generation provenance (synthetic)
    template: str | None = None
    messages: list[dict[str, str]] | None = None
    model: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    created_at: str | None = None
    code: CodeExercise | None = None  # format code_exercises: the exercise and its verdict
    revision: Revision | None = None  # the revise stage: draft, critiques, rewrites
    # web provenance
    url: str | None = None
    source_file: str | None = None
    warc_record_id: str | None = None
    offset: int | None = None
    fetch_date: str | None = None
    language: str | None = None
    # filter results: scores are kept so thresholds can change without rescoring
    scores: dict[str, float] = Field(default_factory=dict)
    drop_reason: str | None = None
    cluster_id: str | None = None
    kept_id: str | None = None


class Failure(BaseModel):
    """An item that failed after the last retry, with the reason (never an empty text)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    reason: str
    attempts: int
    created_at: str = Field(default_factory=utc_now)
    template: str | None = None
    model: str | None = None


# the one name of the quality classifier's probability on every record (filter and web)
QUALITY_KEY = "classifier.prob"


def quality_of(scores: dict[str, float], key: str = "") -> float | None:
    """A document's quality score: ``scores[key]`` if a key is given (``emit.quality_key``),
    else the classifier probability; None if the record has none."""
    return scores.get(key or QUALITY_KEY)
