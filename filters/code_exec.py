"""Keep code exercises whose tests passed in the sandbox (``filter.require_verified``).

:class:`CodeExerciseFilter` follows the score/keep protocol of ``filters.base``: it reads the
verdict on the record (``doc.code.verified``). :class:`CodeStep` is the filter stage's step:
it first runs the sandbox, in parallel, on every exercise of the batch that has no verdict yet
(generate normally ran it already), then applies the filter. Documents that are not code
exercises pass untouched.
"""

from __future__ import annotations

from collections import Counter

from pipeline.code_exercises import FORMAT, verify
from pipeline.config import FilterConfig, SandboxConfig
from pipeline.records import Document
from pipeline.sandbox import Sandbox
from pipeline.steps import FilterStep, Stats

# verdict flag -> drop reason, in the order they are checked
_REASONS = {
    "unparsed": "code.unparsed",  # format code_exercises without an exercise on the record
    "unverified": "code.unverified",
    "failed": "code.tests_failed",
    "timeout": "code.timeout",
    "error": "code.error",
}


class CodeExerciseFilter:
    family = "code"

    def __init__(self, require_verified: bool = True) -> None:
        self.require_verified = require_verified

    def score(self, doc: Document) -> dict[str, float]:
        if doc.code is None:
            return {"exercise": 1.0, "unparsed": 1.0} if doc.format == FORMAT else {}
        v = doc.code.verified
        return {
            "exercise": 1.0,
            "unverified": float(v is None),
            **{k: float(v == k) for k in ("passed", "failed", "timeout", "error")},
            "runtime_s": doc.code.runtime_s or 0.0,
        }

    def keep(self, s: dict[str, float]) -> str | None:
        if s.get("unparsed", 0.0) > 0.5:  # never an exercise, whatever require_verified says
            return _REASONS["unparsed"]
        if not self.require_verified:
            return None
        for flag, reason in _REASONS.items():
            if s.get(flag, 0.0) > 0.5:
                return reason
        return None


class CodeStep(FilterStep):
    """Verify the batch's unverified exercises in the sandbox, then keep by verdict. Counts
    go to ``stats``: ``code.<verdict>`` per exercise, ``code.verified_in_filter``; the
    sandbox's isolation (and why it fell back) to ``stats.info["sandbox"]``."""

    def __init__(self, cfg: FilterConfig, sandbox: SandboxConfig) -> None:
        super().__init__("code", [CodeExerciseFilter(cfg.require_verified)])
        self.sandbox_cfg = sandbox
        self.sandbox: Sandbox | None = None

    def setup(self) -> None:
        self.sandbox = Sandbox(self.sandbox_cfg)  # probes the isolation on first use only

    def process(self, batch: list[Document], stats: Stats) -> list[Document]:
        todo = [d for d in batch if d.code is not None and d.code.verified is None]
        if todo:
            if self.sandbox is None:
                self.setup()
            assert self.sandbox is not None
            for d, ex in zip(todo, verify(self.sandbox, [d.code for d in todo]), strict=True):
                d.code = ex
            stats.add("code.verified_in_filter", len(todo))
            stats.info.setdefault(
                "sandbox", {"isolation": self.sandbox.isolation, "note": self.sandbox.note}
            )
        verdicts = Counter(d.code.verified or "unverified" for d in batch if d.code is not None)
        for verdict, n in verdicts.items():
            stats.add(f"code.{verdict}", n)
        return super().process(batch, stats)
