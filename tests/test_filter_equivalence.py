"""The vectorised filters score exactly as their previous implementation did
(tests/filters_reference.py, datagen 785b4a0): Gopher quality and repetition, the vocabulary
constraints and decontamination, on every real document of scripts/bench/heuristics.py plus
the multilingual Common Crawl sample (Greek 'Σ' and Turkish 'İ' take the word-by-word paths),
the same documents with their paragraphs repeated, and documents quoting real benchmark
items (both decontamination modes)."""

from __future__ import annotations

import re

import filters_reference as ref
import pytest
from filters_testdata import (
    bench_texts,
    cc_sample_texts,
    gsm8k_items,
    humaneval_items,
    openstax_modules,
)

from filters.constraints import covered_words
from filters.decontam import Decontaminator
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from pipeline.config import DecontamConfig

_WORD = re.compile(r"[^\W\d_]+")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    real = bench_texts() + cc_sample_texts()
    # repetition the Gopher rules must catch: each text's first paragraphs, then again
    repeated = [
        "\n\n".join(ps[: len(ps) // 2] * 2 + ps)
        for t in real[:200]
        if len(ps := [p for p in t.split("\n") if p.strip()]) >= 4
    ]
    return real + repeated


def test_the_documents_cover_the_paths_that_matter(texts):
    assert len(texts) > 1100
    assert any("Σ" in t for t in texts) and any("İ" in t for t in texts)
    reasons = {GopherRepetitionFilter().keep(GopherRepetitionFilter().score(t)) for t in texts}
    assert len(reasons - {None}) >= 5  # several repetition rules drop something


@pytest.mark.parametrize(
    ("new_filter", "old_filter"),
    [
        (GopherQualityFilter, ref.GopherQualityFilter),
        (GopherRepetitionFilter, ref.GopherRepetitionFilter),
    ],
)
def test_gopher_scores_equal_the_previous_implementation(texts, new_filter, old_filter):
    new, old = new_filter(), old_filter()
    differ = [i for i, t in enumerate(texts) if new.score(t) != old.score(t)]
    assert differ == []


def test_constraint_coverage_equals_the_previous_implementation(texts):
    covered = 0
    for i, t in enumerate(texts):
        words = _WORD.findall(t)
        other = _WORD.findall(texts[(i + 1) % len(texts)])
        for required in (t.split()[5:8], words[10:14], other[30:34], ["ice cream", "the end"]):
            got = covered_words(required, t)
            assert got == ref.covered_words(required, t), (i, required)
            covered += len(got)
    assert covered > 5000  # the words present are found, inflected or not


def _quoting(texts: list[str]) -> list[str]:
    """Real texts with a real benchmark item spliced in (upper-cased, non-breaking spaces,
    a 'İ' nearby: the matching must see through all of it)."""
    out = []
    gsm, he = gsm8k_items(), humaneval_items()
    for i, t in enumerate(texts[:80]):
        q = gsm[i]["question"]
        q = [q, q.upper(), q.replace(" ", "\u00a0"), "İ " + q][i % 4]
        out.append(f"{t[:2000]}\n{q}\n{t[2000:4000]}{he[i % len(he)]['prompt']}{t[4000:]}")
    return out


@pytest.mark.parametrize("mode", ["drop", "cut"])
def test_decontamination_equals_the_previous_implementation(texts, mode):
    cfg = DecontamConfig(mode=mode)
    new, old = Decontaminator(cfg), ref.ReferenceDecontaminator(cfg)
    assert {b: c["ngrams"] + c["whole"] for b, c in new.loaded.items()} == old.first_keys
    docs = texts + _quoting(texts) + [m["text"] for m in openstax_modules()]
    matched = 0
    for i, t in enumerate(docs):
        got = new.check(t)
        assert got == old.check(t), i
        matched += bool(got.matches)
    assert matched >= 80
