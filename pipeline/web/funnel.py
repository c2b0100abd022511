"""The web funnel: documents and (whitespace) tokens left after each step, drops per reason.

Every record read is either kept or dropped exactly once; :meth:`Funnel.check` verifies that
``read == kept + all drops`` before the manifest is written.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

STEPS = (
    "read",
    "extract",
    "language",
    "blocklist",
    "heuristics",
    "quality",
    "dedup",
    "decontam",
    "kept",
)


class Funnel:
    def __init__(self, steps: tuple[str, ...] = STEPS) -> None:
        self.steps = steps
        self.docs: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self.dropped: dict[str, Counter[str]] = {s: Counter() for s in steps}

    def passed(self, step: str, tokens: int) -> None:
        self.docs[step] += 1
        self.tokens[step] += tokens

    def drop(self, step: str, reason: str) -> None:
        self.dropped[step][reason] += 1

    def drop_reasons(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for c in self.dropped.values():
            out.update(c)
        return dict(sorted(out.items()))

    @property
    def n_dropped(self) -> int:
        return sum(sum(c.values()) for c in self.dropped.values())

    def check(self) -> None:
        """read == kept + dropped, and each step's survivors are the previous step's minus
        its drops (an accounting bug fails loudly instead of publishing wrong numbers)."""
        prev = None
        for s in self.steps:
            if prev is not None and self.docs[s] != self.docs[prev] - sum(self.dropped[s].values()):
                raise AssertionError(
                    f"web funnel: step '{s}' has {self.docs[s]} documents, "
                    f"expected {self.docs[prev]} - drops"
                )
            prev = s
        if self.docs["read"] != self.docs[self.steps[-1]] + self.n_dropped:
            raise AssertionError("web funnel: read != kept + dropped")

    def as_list(self) -> list[dict[str, Any]]:
        return [
            {
                "step": s,
                "documents": self.docs[s],
                "tokens": self.tokens[s],
                "dropped": dict(sorted(self.dropped[s].items())),
            }
            for s in self.steps
        ]
