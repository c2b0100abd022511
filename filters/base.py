"""The filter protocol shared by every filter family."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from pipeline.records import Document


class DocFilter(Protocol):
    """``score`` is pure: document -> named numbers (stored on the record as
    ``family.metric``). ``keep`` applies thresholds: None keeps, a string is the drop reason."""

    family: str

    def score(self, doc: Document) -> dict[str, float]: ...

    def keep(self, scores: dict[str, float]) -> str | None: ...


def apply_filters(doc: Document, filters: Iterable[DocFilter], counts: Counter[str]) -> bool:
    """Score ``doc`` with each filter in turn (scores saved on the record); stop at the first
    drop, set ``doc.drop_reason`` and count it. Returns True when the document is kept."""
    for f in filters:
        scores = f.score(doc)
        doc.scores.update({f"{f.family}.{k}": v for k, v in scores.items()})
        reason = f.keep(scores)
        if reason is not None:
            doc.drop_reason = reason
            counts[reason] += 1
            return False
    return True
