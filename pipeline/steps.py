"""Steps: what a stage does to one batch of documents.

A stage is a list of steps applied to one shard of documents at a time (see
``pipeline.executor``). A step is set up once per worker process (``setup()`` loads fastText
models, the decontamination index, ...) and then ``process(batch, stats)`` returns the batch:

- a **filter** step scores each document (the numbers stay on the record as
  ``family.metric``) and drops the ones its keep decision rejects: it sets ``drop_reason``;
- a **modifier** step rewrites the text (C4 line removal, PII masking, decontamination cuts)
  and never drops.

``run_steps`` moves every document that got a ``drop_reason`` out of the batch after each step
and counts, per step, documents and words in and out and drops per reason into a
:class:`Stats`, which adds up over shards (``merge``) into the stage's manifest and funnel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, Field

from filters.base import DocFilter
from filters.codepoints import split_counts
from pipeline.records import Document


class Stats(BaseModel):
    """Counters that add up: per-shard stats merged in shard order give the stage's totals.

    ``counts`` holds plain counters (``"drop.gopher_quality.stop_words": 3``, ``"pii.emails":
    2``); ``funnel`` holds, per step in order, documents and words that left the step and the
    drops it made, so a stage's funnel is the same whatever the number of shards.
    """

    counts: dict[str, int | float] = Field(default_factory=dict)
    # facts that are the same in every shard (e.g. the benchmarks the decontaminator loaded)
    info: dict[str, Any] = Field(default_factory=dict)
    funnel: dict[str, dict[str, int]] = Field(default_factory=dict)
    order: list[str] = Field(default_factory=list)  # step names in pipeline order

    def add(self, key: str, n: int | float = 1) -> None:
        if n:
            self.counts[key] = self.counts.get(key, 0) + n

    def step(self, name: str) -> dict[str, int]:
        if name not in self.funnel:
            self.funnel[name] = {"documents": 0, "words": 0}
            self.order.append(name)
        return self.funnel[name]

    def passed(self, name: str, docs: Sequence[Document], words: int) -> None:
        row = self.step(name)
        row["documents"] += len(docs)
        row["words"] += words

    def dropped(self, name: str, reason: str) -> None:
        row = self.step(name)
        key = f"drop:{reason}"
        row[key] = row.get(key, 0) + 1
        self.add(f"drop.{reason}")

    def merge(self, other: Stats) -> Stats:
        for k, v in other.counts.items():
            self.add(k, v)
        for k, v in other.info.items():
            self.info.setdefault(k, v)
        for name in other.order:
            row = self.step(name)
            for k, v in other.funnel[name].items():
                row[k] = row.get(k, 0) + v
        return self

    @classmethod
    def merged(cls, parts: Iterable[Stats]) -> Stats:
        out = cls()
        for p in parts:
            out.merge(p)
        return out

    def drop_reasons(self) -> dict[str, int]:
        return dict(
            sorted(
                (k.removeprefix("drop."), v)
                for k, v in self.counts.items()
                if k.startswith("drop.")
            )
        )

    def funnel_list(self) -> list[dict[str, Any]]:
        """The funnel as the manifest writes it: one row per step, in order."""
        rows = []
        for name in self.order:
            row = self.funnel[name]
            drops = {k.removeprefix("drop:"): v for k, v in row.items() if k.startswith("drop:")}
            rows.append(
                {
                    "step": name,
                    "documents": row["documents"],
                    "tokens": row["words"],
                    "dropped": dict(sorted(drops.items())),
                }
            )
        return rows


class Step(Protocol):
    """One batch at a time. ``setup`` runs once per worker before the first batch."""

    name: str

    def setup(self) -> None: ...

    def process(self, batch: list[Document], stats: Stats) -> list[Document]: ...


def setup_filters(filters: Sequence[Any]) -> None:
    """Each filter's own ``setup`` (model loading), where it has one."""
    for f in filters:
        if callable(getattr(f, "setup", None)):
            f.setup()


def score_all(f: Any, docs: Sequence[Any]) -> list[dict[str, float]]:
    """``f``'s scores of each of ``docs``: one ``score_batch`` call where the filter has one."""
    many = getattr(f, "score_batch", None)
    return many(docs) if many else [f.score(d) for d in docs]


class FilterStep:
    """Score with each filter in turn (scores stored on the record as ``family.metric``), drop
    at the first keep decision that fails; the reason names the filter family and metric.

    ``drop=False`` only scores (e.g. the classifier probability and the constraint coverage
    of every record, dropped or not); a later :class:`KeepStep` applies the thresholds to the
    stored scores without scoring again. ``setup`` calls each filter's own ``setup`` (model
    loading), when it has one. A filter with ``score_batch(docs) -> [scores]`` (the Gopher
    families) scores the batch's survivors in one call, filter after filter; the scores and
    drop reasons are those of scoring document by document."""

    def __init__(self, name: str, filters: Sequence[DocFilter], drop: bool = True) -> None:
        self.name = name
        self.filters = filters
        self.drop = drop

    def setup(self) -> None:
        setup_filters(self.filters)

    def process(self, batch: list[Document], stats: Stats) -> list[Document]:
        alive = batch
        for f in self.filters:
            if not alive:
                break
            scored = score_all(f, alive)
            fam = f.family
            left = []
            for doc, scores in zip(alive, scored, strict=True):
                doc.scores.update({f"{fam}.{k}": round(float(v), 6) for k, v in scores.items()})
                if self.drop and (reason := f.keep(scores)) is not None:
                    doc.drop_reason = reason
                else:
                    left.append(doc)
            alive = left
        return batch


class KeepStep:
    """The keep decisions of filters whose scores an earlier step stored on the record."""

    def __init__(self, name: str, filters: Sequence[DocFilter]) -> None:
        self.name = name
        self.filters = filters

    def setup(self) -> None:
        pass

    def process(self, batch: list[Document], stats: Stats) -> list[Document]:
        for doc in batch:
            for f in self.filters:
                prefix = f"{f.family}."
                n = len(prefix)
                stored = {k[n:]: v for k, v in doc.scores.items() if k.startswith(prefix)}
                if (reason := f.keep(stored)) is not None:
                    doc.drop_reason = reason
                    break
        return batch


class Modifier(Protocol):
    """Rewrites a document's text; returns named counts (lines removed, e-mails masked)."""

    family: str

    def modify(self, doc: Document) -> dict[str, int]: ...


class ModifierStep:
    """Apply modifiers in turn; their counts go to ``stats.counts`` as ``family.key``."""

    def __init__(self, name: str, modifiers: Sequence[Modifier]) -> None:
        self.name = name
        self.modifiers = modifiers

    def setup(self) -> None:
        pass

    def process(self, batch: list[Document], stats: Stats) -> list[Document]:
        for doc in batch:
            for m in self.modifiers:
                for k, v in m.modify(doc).items():
                    stats.add(f"{m.family}.{k}", v)
        return batch


def setup_all(steps: list[Step]) -> list[Step]:
    """Each step's ``setup`` (models, indexes), once per worker: for ``worker_cached``."""
    for s in steps:
        s.setup()
    return steps


def run_steps(
    steps: Sequence[Step], batch: list[Document], stats: Stats
) -> tuple[list[Document], list[Document]]:
    """Push one batch through ``steps``: (kept, dropped), counting each step's survivors and
    drops. A document that has a drop reason on entry (dropped by the reader or extractor)
    stays dropped without going through any step."""
    dropped = [d for d in batch if d.drop_reason]
    alive = [d for d in batch if not d.drop_reason]
    words = _WordCounts()
    for step in steps:
        if not alive:
            stats.step(step.name)
            continue
        out = step.process(alive, stats)
        alive = []
        for d in out:
            if d.drop_reason:
                stats.dropped(step.name, d.drop_reason)
                dropped.append(d)
            else:
                alive.append(d)
        stats.passed(step.name, alive, words.total(alive))
    return alive, dropped


class _WordCounts:
    """Whitespace words of a document's text, recounted only when a step replaced the text."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[str, int]] = {}

    def total(self, docs: list[Document]) -> int:
        """The words of ``docs``; those not seen with their current text are counted in one
        batch (``filters.codepoints.split_counts``)."""
        new = [d for d in docs if (hit := self._seen.get(id(d))) is None or hit[0] is not d.text]
        for d, n in zip(new, split_counts([d.text for d in new]), strict=True):
            self._seen[id(d)] = (d.text, n)
        return sum(self._seen[id(d)][1] for d in docs)
