"""Vocabulary-constraint check (TinyStories-style required words): the fraction of a record's
``required_words`` that appear in its text, inflections counted with lemminflect
("run" is satisfied by "ran", "running"; "child" by "children").

A record with no required words scores coverage 1.0.
"""

from __future__ import annotations

import re
from functools import lru_cache

import lemminflect

from filters.codepoints import lowered, tables
from pipeline.records import Document

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_JOIN = "'’-"


@lru_cache(maxsize=65_536)
def word_forms(word: str) -> frozenset[str]:
    """The word, its lemmas, and every inflection of each (lower case)."""
    w = word.strip().lower()
    forms = {w}
    lemmas = {w}
    for lem in lemminflect.getAllLemmas(w).values():
        lemmas.update(x.lower() for x in lem)
    for lem in lemmas:
        forms.add(lem)
        for infl in lemminflect.getAllInflections(lem).values():
            forms.update(x.lower() for x in infl)
    if len(forms) == 1 and " " not in w:  # unknown to lemminflect: regular rules
        for infl in lemminflect.getAllInflectionsOOV(w, "NOUN").values():
            forms.update(x.lower() for x in infl)
        for infl in lemminflect.getAllInflectionsOOV(w, "VERB").values():
            forms.update(x.lower() for x in infl)
    return frozenset(forms)


def text_tokens(text: str) -> set[str]:
    """The words of ``text``, lower-cased: runs of letters, joined by an apostrophe or hyphen
    between letters ("don't", "well-known")."""
    return {m.group(0).lower() for m in _WORD.finditer(text)}


def _letter(ch: str) -> bool:
    return bool(tables().letter[ord(ch)])


def _has_token(low: str, form: str) -> bool:
    """Is ``form`` in ``text_tokens(text)``, where ``low`` is ``text.lower()`` lower-cased in
    place (``filters.codepoints.lowered``)? Finds ``form`` in ``low`` and checks that the word
    there is exactly ``form``: no letter, and no apostrophe or hyphen before a letter, on
    either side. Found with ``str.find``: no token set of the whole text is built."""
    if not _WORD.fullmatch(form):
        return False
    n, size = len(form), len(low)
    i = low.find(form)
    while i >= 0:
        j = i + n
        left = i > 0 and (
            _letter(low[i - 1]) or (low[i - 1] in _JOIN and i > 1 and _letter(low[i - 2]))
        )
        right = j < size and (
            _letter(low[j]) or (low[j] in _JOIN and j + 1 < size and _letter(low[j + 1]))
        )
        if not left and not right:
            return True
        i = low.find(form, i + 1)
    return False


def covered_words(required: list[str], text: str) -> list[str]:
    """The required words present in ``text`` in some inflected form. A multi-word entry
    counts when it occurs as a whole-word phrase (case-insensitive, any whitespace between
    its words: "ice cream" does not match "nice creamy")."""
    low, in_place = lowered(text)
    tokens = None if in_place else text_tokens(text)  # 'İ' or 'Σ': lower word by word
    out = []
    for w in required:
        if " " in w.strip():
            phrase = r"\s+".join(map(re.escape, w.lower().split()))
            if re.search(r"\b" + phrase + r"\b", low):
                out.append(w)
        elif tokens is not None:
            if word_forms(w) & tokens:
                out.append(w)
        elif any(_has_token(low, f) for f in word_forms(w)):
            out.append(w)
    return out


class ConstraintFilter:
    family = "constraints"
    covered = staticmethod(covered_words)

    def __init__(self, min_coverage: float = 0.5) -> None:
        self.min_coverage = min_coverage

    def score(self, doc: Document) -> dict[str, float]:
        req = [w for w in doc.required_words if w.strip()]
        if not req:
            return {"coverage": 1.0, "required": 0.0, "satisfied": 0.0}
        hit = self.covered(req, doc.text)
        return {
            "coverage": len(hit) / len(req),
            "required": float(len(req)),
            "satisfied": float(len(hit)),
        }

    def keep(self, s: dict[str, float]) -> str | None:
        return "constraints.coverage" if s["coverage"] < self.min_coverage else None
