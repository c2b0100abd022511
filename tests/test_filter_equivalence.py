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
    before = [old.score(t) for t in texts]
    differ = [i for i, t in enumerate(texts) if new.score(t) != before[i]]
    assert differ == []
    # in batches, as the filter step scores them (all texts at once: several hashing chunks)
    for size in (7, len(texts)):
        got = [s for i in range(0, len(texts), size) for s in new.score_batch(texts[i : i + size])]
        assert [i for i, s in enumerate(got) if s != before[i]] == []
    # texts of the batch scored last, reordered (the words are reused, not recomputed)
    assert new.score_batch(texts[::-3]) == before[::-3]


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
    before = [old.check(t) for t in docs]
    assert [i for i, t in enumerate(docs) if new.check(t) != before[i]] == []
    # in one batch, as the decontamination step checks a batch (several hashing chunks)
    batch = new.check_batch(docs)
    assert [i for i, got in enumerate(batch) if got != before[i]] == []
    assert sum(bool(got.matches) for got in batch) >= 80
