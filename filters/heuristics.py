"""Simple heuristics for synthetic generations: length bounds, truncated generations,
stock openers. Each follows the score/keep protocol of ``filters.base``."""

from __future__ import annotations

import re

from pipeline.records import Document


class LengthFilter:
    family = "length"

    def __init__(self, min_chars: int = 200, max_chars: int = 100_000) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars

    def score(self, doc: Document) -> dict[str, float]:
        return {"chars": float(len(doc.text.strip()))}

    def keep(self, s: dict[str, float]) -> str | None:
        if s["chars"] < self.min_chars:
            return "length.too_short"
        if s["chars"] > self.max_chars:
            return "length.too_long"
        return None


class TruncationFilter:
    """A generation stopped by the token limit (``finish_reason == "length"``) is cut mid-text."""

    family = "truncated"

    def score(self, doc: Document) -> dict[str, float]:
        return {"finish_length": 1.0 if doc.finish_reason == "length" else 0.0}

    def keep(self, s: dict[str, float]) -> str | None:
        return "truncated.finish_length" if s["finish_length"] > 0.5 else None


def _fold(text: str) -> str:
    """Curly apostrophes as straight ones, so "In today’s" matches the opener "In today's"."""
    return text.replace("’", "'").replace("‘", "'")


class StockOpenerFilter:
    """Drops texts that open with a cliché (e.g. "Once upon a time"): the tell of a model
    falling back on one template, which the phi/TinyStories recipes push against."""

    family = "stock_opener"

    def __init__(self, openers: list[str]) -> None:
        self.openers = [_fold(o.strip()).lower() for o in openers if o.strip()]
        self._lead = re.compile(r"^[\W_]+")  # markdown '#', quotes, bullets before the words

    def score(self, doc: Document) -> dict[str, float]:
        head = _fold(self._lead.sub("", doc.text.lstrip()[:200])).lower()
        return {"match": 1.0 if any(head.startswith(o) for o in self.openers) else 0.0}

    def keep(self, s: dict[str, float]) -> str | None:
        return "stock_opener.match" if s["match"] > 0.5 else None
