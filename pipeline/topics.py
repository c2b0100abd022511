"""Topic expansion (``plan.topics.expand``): the teacher grows seed subjects into a topic
tree, subject -> topics -> subtopics, as phi-1.5 grew 20K topics from seeds (Li et al. 2023,
"Textbooks Are All You Need II: phi-1.5 technical report", section 2.2).

Each level is one request per node (``prompts/topics.j2``, a JSON list under a schema) sent
through the teacher (cache, budget and ledger apply: a rerun or a resumed run pays nothing for
answers it has). Answers are assembled in tree order, never arrival order, so the same answers
give the same tree byte for byte. Topics are de-duplicated within each level and the leaves
across the whole tree: normalised text (case, punctuation, stop words, plural s, word order)
and near copies (Jaccard of the normalised word sets >= ``plan.topics.near_threshold``, by the
dedup stage's MinHash LSH with verified pairs, :func:`filters.dedup.find_duplicates`).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.prompting import PromptLibrary, prompts_folder
from pipeline.runs import Run
from pipeline.teacher.structured import schema_format, structured_mode

TEMPLATE = "topics"
MAX_TOPIC_CHARS = 120
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "the",
        "of",
        "in",
        "on",
        "for",
        "to",
        "with",
        "its",
        "their",
        "your",
        "using",
        "by",
        "from",
    ]
)
_WORD = re.compile(r"[^\W_]+")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|[a-z][.)])\s+", re.IGNORECASE)


class TopicList(BaseModel):
    model_config = ConfigDict(extra="forbid", title="topic_list")
    topics: list[str]


SCHEMA: dict[str, Any] = TopicList.model_json_schema()


@dataclass(frozen=True)
class Node:
    """A node of the tree: a seed subject (``path`` = (area, subject)), then a topic and a
    subtopic below it (the path grows by one title per level)."""

    path: tuple[str, ...]

    @property
    def title(self) -> str:
        return self.path[-1]


def clean(title: str) -> str:
    """A topic title as listed: bullets, numbering, quotes and end punctuation removed,
    whitespace collapsed; "" for what cannot be a title (empty, too long)."""
    t = _BULLET.sub("", " ".join(title.split())).strip(" \"'`*.;:,")
    return t if 0 < len(t) <= MAX_TOPIC_CHARS and _WORD.search(t) else ""


def parse_topics(text: str) -> list[str]:
    """The titles in an answer: ``{"topics": [...]}`` or a JSON list, else one per line."""
    body = text.strip()
    items: list[Any] | None = None
    start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
    if start >= 0:
        try:
            obj = json.loads(body[start : max(body.rfind("}"), body.rfind("]")) + 1])
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            try:
                items = TopicList.model_validate(obj).topics
            except ValidationError:
                items = None
        elif isinstance(obj, list):
            items = obj
    if items is None:
        items = body.splitlines()
    return [c for t in items if isinstance(t, str) and (c := clean(t))]


def normalised(title: str) -> str:
    """The words that make a title: lower case, stop words and a plural s dropped, sorted
    (so "Recursion in Python" and "python recursion" are the same topic)."""
    words = []
    for w in _WORD.findall(title.lower()):
        if w in _STOP:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        words.append(w)
    return " ".join(sorted(set(words))) or title.lower()


def distinct(titles: list[str], threshold: float, seed: int) -> tuple[list[int], Counter[str]]:
    """The indices of the titles to keep (the first of each group of copies, in order) and
    how many were dropped as ``exact`` (same normalised words) or ``near`` copies."""
    from filters.dedup import MinHashParams, find_duplicates

    if not titles:
        return [], Counter()
    # titles are a few words: candidates cost little to verify, so the bands are set to miss
    # a pair at the threshold once in a million (26 x 4 at 0.8), not the dedup stage's 1%
    params = MinHashParams(
        num_perm=128, ngram=1, threshold=threshold, seed=seed, min_recall=0.99999
    )
    found = find_duplicates([normalised(t) for t in titles], params)
    drop: dict[int, str] = {}
    for c in found.clusters:  # each keeps its first member (equal quality: ties by id)
        drop.update(c.reasons)
    return [i for i in range(len(titles)) if i not in drop], Counter(drop.values())


def read_seeds(cfg: PipelineConfig) -> list[Node]:
    from pipeline.stages.plan import _read_tsv

    rows = _read_tsv(cfg.project_path(cfg.plan.topics.seeds_file), ("area", "subject"))
    seeds = [Node((r["area"], r["subject"])) for r in rows]
    k = cfg.plan.topics.seeds
    if k and k < len(seeds):  # drawn, then in file order
        chosen = set(random.Random(f"{cfg.seed}:seeds").sample(range(len(seeds)), k))
        seeds = [s for i, s in enumerate(seeds) if i in chosen]
    return seeds


def expand(cfg: PipelineConfig, run: Run, console: Console) -> tuple[list[Node], dict[str, Any]]:
    """The tree's leaves (in tree order, de-duplicated) and a report for the plan manifest."""
    return asyncio.run(_expand(cfg, run, console))


async def _expand(
    cfg: PipelineConfig, run: Run, console: Console
) -> tuple[list[Node], dict[str, Any]]:
    from pipeline.teacher import Completion, Job, open_teacher, run_batch

    tc = cfg.plan.topics
    prompts = PromptLibrary(prompts_folder(cfg))
    fmt = schema_format(structured_mode(tc.structured, cfg.teacher), "topic_list", SCHEMA)
    params: dict[str, Any] = {
        "max_tokens": tc.max_tokens,
        **({"response_format": fmt} if fmt else {}),
    }
    nodes = read_seeds(cfg)
    report: dict[str, Any] = {"seeds": len(nodes), "levels": []}
    failures: Counter[str] = Counter()
    sizes = [tc.per_subject] + ([tc.per_topic] if tc.per_topic else [])
    async with open_teacher(cfg, run, console, stage="plan") as teacher:
        for depth, n in enumerate(sizes, 1):
            if not nodes:
                break  # nothing to grow (the error below says why)
            answers: dict[str, list[str]] = {}
            jobs = [
                Job(
                    id=f"topics-{depth}-{i}",
                    template=prompts.template_name(TEMPLATE),
                    params=params,
                    messages=prompts.render(
                        TEMPLATE,
                        area=node.path[0],
                        subject=node.path[1],
                        parent=node.title if len(node.path) > 2 else "",
                        n=n,
                    ),
                )
                for i, node in enumerate(nodes)
            ]

            def ok(job: Job, c: Completion, answers: dict[str, list[str]] = answers) -> bool:
                titles = parse_topics(c.text)
                answers[job.id] = titles
                if not titles:
                    failures["no topics in the answer"] += 1
                return bool(titles)

            def bad(job: Job, reason: str, attempts: int) -> None:
                failures[reason] += 1

            stats = await run_batch(
                teacher, jobs, ok, bad, console, label=f"topics level {depth}", total=len(jobs)
            )
            if stats.stopped_by_budget:
                raise DatagenError(
                    f"plan.topics: expansion stopped by budget.max_cost_usd at level {depth} "
                    f"({stats.skipped_by_budget} requests not sent); the answers so far are "
                    f"cached: raise the budget and rerun"
                )
            children = [
                Node((*node.path, t))
                for job, node in zip(jobs, nodes, strict=True)
                for t in answers.get(job.id, [])[: n * 2]  # a model that lists on and on
            ]
            listed = len(children)
            # a topic that only repeats its parent (a weak model's first answer) is no topic
            children = [c for c in children if normalised(c.title) != normalised(c.path[-2])]
            keep, dropped = distinct([c.title for c in children], tc.near_threshold, cfg.seed)
            dropped["exact"] += listed - len(children)
            nodes = [children[i] for i in keep]
            report["levels"].append(
                {
                    "depth": depth,
                    "requests": len(jobs),
                    "failed": stats.failed,
                    "cached": stats.cached,
                    "listed": listed,
                    "duplicates_exact": dropped["exact"],
                    "duplicates_near": dropped["near"],
                    "kept": len(nodes),
                }
            )
    if not nodes:
        raise DatagenError(
            f"plan.topics: the expansion gave no topics ({dict(failures) or 'no answers'})"
        )
    report["topics"] = len(nodes)
    report["failure_reasons"] = dict(failures.most_common(10))
    return nodes, report
