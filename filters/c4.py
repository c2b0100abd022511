"""C4 line and page rules (Raffel et al. 2020, "Exploring the Limits of Transfer Learning
with a Unified Text-to-Text Transformer", Sec. 2.2), following the TFDS ``c4_utils``
reference code: per line, drop lines without terminal punctuation, with fewer than 5 words,
with a word over 1000 characters, mentioning "javascript", or with policy boilerplate; drop
the page on "lorem ipsum", on "{", or when fewer than 3 sentences remain.

Two steps share one cleaning: :class:`C4Filter` is the page rules as a filter (``score`` /
``keep`` as in ``filters.base``, computed on the text the line rules leave), and
:class:`C4LineRemover` is the line rules as a modifier that replaces the text by the kept
lines (``pipeline.steps.ModifierStep``; removed lines are counted per rule).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from pipeline.config import C4Config
from pipeline.records import Document

END_MARKS = (".", "?", "!", '"', "\u201d")  # TFDS c4_utils: . ? ! and closing quotes
ELLIPSIS = "..."
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.I)
POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
# a sentence ends at . ! ? followed by space/end (TFDS uses nltk punkt; close enough to count)
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d)]*(?=\s|$)")


@dataclass
class C4Result:
    text: str
    lines_in: int
    lines_out: int
    sentences: int
    lorem_ipsum: bool = False
    curly_bracket: bool = False
    removed: Counter[str] = field(default_factory=Counter)


class C4Filter:
    family = "c4"

    def __init__(self, cfg: C4Config | None = None) -> None:
        self.cfg = cfg or C4Config()
        self._last: tuple[str, C4Result] | None = None

    def clean(self, text: str) -> C4Result:
        if self._last is not None and self._last[0] is text:
            return self._last[1]
        c = self.cfg
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        kept: list[str] = []
        res = C4Result("", len(lines), 0, 0)
        for line in lines:
            if c.remove_citations:
                line = CITATION.sub("", line).strip()
            if c.drop_no_terminal_punct and (
                not line.endswith(END_MARKS) or line.endswith(ELLIPSIS)
            ):
                res.removed["no_terminal_punct"] += 1
                continue
            words = line.split()
            if len(words) < c.min_words_per_line:
                res.removed["few_words"] += 1
                continue
            if any(len(w) > c.max_word_length for w in words):
                res.removed["long_word"] += 1
                continue
            low = line.lower()
            if c.drop_lorem_ipsum and "lorem ipsum" in low:
                res.lorem_ipsum = True
            if c.drop_javascript_lines and "javascript" in low:
                res.removed["javascript"] += 1
                continue
            if c.drop_curly_bracket and "{" in line:
                res.curly_bracket = True
            if c.drop_policy_lines and any(p in low for p in POLICY):
                res.removed["policy"] += 1
                continue
            kept.append(line)
            res.sentences += max(1, len(_SENTENCE_END.findall(line)))
        res.text = "\n".join(kept)
        res.lines_out = len(kept)
        self._last = (text, res)
        return res

    def score(self, doc: Document | str) -> dict[str, float]:
        r = self.clean(doc if isinstance(doc, str) else doc.text)
        return {
            "lines_removed_frac": (r.lines_in - r.lines_out) / r.lines_in if r.lines_in else 0.0,
            "sentences": float(r.sentences),
            "lorem_ipsum": float(r.lorem_ipsum),
            "curly_bracket": float(r.curly_bracket),
        }

    def keep(self, s: dict[str, float]) -> str | None:
        if s["lorem_ipsum"] > 0:
            return "c4.lorem_ipsum"
        if s["curly_bracket"] > 0:
            return "c4.curly_bracket"
        if s["sentences"] < self.cfg.min_sentences:
            return "c4.min_sentences"
        return None


class C4LineRemover:
    """The C4 line rules as a modifier: the text becomes the kept lines; returns the number
    of lines removed per rule (``no_terminal_punct``, ``few_words``, ...)."""

    family = "c4_lines"

    def __init__(self, c4: C4Filter) -> None:
        self.c4 = c4

    def modify(self, doc: Document) -> dict[str, int]:
        res = self.c4.clean(doc.text)
        doc.text = res.text
        return dict(res.removed)
