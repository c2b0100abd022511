"""FineWeb quality rules (Penedo et al. 2024, "The FineWeb Datasets", Sec. 3.5), as in
datatrove's ``FineWebQualityFilter``: share of lines ending in punctuation, share of short
lines, share of characters in duplicated lines, and newlines per word (list-like pages)."""

from __future__ import annotations

from filters.lines import duplicates
from pipeline.config import FineWebQualityConfig
from pipeline.records import Document

# datatrove's END_PUNCTUATION (Latin, Armenian, Arabic, Syriac, N'Ko, Indic, Myanmar,
# Ethiopic, Canadian syllabics, Mongolian, general punctuation, CJK)
END_PUNCTUATION = (
    ".",
    "'",
    '"',
    "!",
    "?",
    "։",
    "؟",
    "۔",
    "܀",
    "܁",
    "܂",
    "߹",
    "।",
    "॥",
    "၊",
    "။",
    "።",
    "፧",
    "፨",
    "᙮",
    "᠃",
    "᠉",
    "‼",
    "‽",
    "⁇",
    "⁈",
    "⁉",
    "⸮",
    "。",
)


class FineWebQualityFilter:
    family = "fineweb"

    def __init__(self, cfg: FineWebQualityConfig | None = None) -> None:
        self.cfg = cfg or FineWebQualityConfig()

    def score(self, doc: Document | str) -> dict[str, float]:
        text = doc if isinstance(doc, str) else doc.text
        lines = [ln for ln in text.split("\n") if ln.strip()]
        n = len(lines)
        words = len(text.split())
        chars = max(len(text.replace("\n", "")), 1)
        return {
            "n_lines": float(n),
            "line_punct_ratio": sum(ln.endswith(END_PUNCTUATION) for ln in lines) / n if n else 0.0,
            "short_line_ratio": (
                sum(len(ln) <= self.cfg.short_line_length for ln in lines) / n if n else 0.0
            ),
            "char_dup_ratio": duplicates(lines)[1] / chars,
            "list_ratio": text.count("\n") / words if words else 0.0,
        }

    def keep(self, s: dict[str, float]) -> str | None:
        c = self.cfg
        if s["n_lines"] == 0:
            return "fineweb.empty"
        r = s["line_punct_ratio"]
        if r <= c.line_punct_thr and not (r == 0 and c.line_punct_exclude_zero):
            return "fineweb.line_punct_ratio"
        if s["short_line_ratio"] >= c.short_line_thr:
            return "fineweb.short_line_ratio"
        if s["char_dup_ratio"] >= c.char_duplicates_ratio:
            return "fineweb.char_dup_ratio"
        if s["list_ratio"] > c.new_line_ratio:
            return "fineweb.list_ratio"
        return None
