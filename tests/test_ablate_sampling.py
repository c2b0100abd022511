"""How `datagen ablate` samples its corpora and picks its steps, on real text tokenized with
the real SmolLM2 tokenizer (no teacher, no torch needed)."""

from __future__ import annotations

import numpy as np
from filters_testdata import openstax_modules, web_pages

from pipeline.ablate import _budgeted, _pieces, resolve_steps
from pipeline.config import load_config
from pipeline.tokenize import load_tokenizer


def _docs() -> list[np.ndarray]:
    tok = load_tokenizer("smollm2")
    return tok.encode([m["text"] for m in openstax_modules()[:30]] + list(web_pages()[:30]))


def test_samples_are_exactly_the_budget_of_pieces_drawn_by_seed():
    docs = _docs()
    pieces = _pieces(docs, 256)
    assert all(len(p) <= 256 for p in pieces)
    assert sum(map(len, pieces)) == sum(map(len, docs))  # nothing lost or repeated
    a, n = _budgeted(pieces, 5000, 1234, 1, "raw")
    assert len(a) == 5000 and n >= -(-5000 // 256)  # whole pieces, the last one cut
    again, _ = _budgeted(pieces, 5000, 1234, 1, "raw")
    other, _ = _budgeted(pieces, 5000, 1234, 2, "raw")
    assert np.array_equal(a, again) and not np.array_equal(a, other)
    # a budget above the corpus takes it all, once
    whole, k = _budgeted(pieces, 10**9, 1234, 1, "raw")
    assert k == len(pieces) and len(whole) == sum(map(len, pieces))


def test_steps_default_to_four_passes_over_the_budget_within_bounds():
    a = load_config().ablate
    assert resolve_steps(a, 11_287) == 45  # 4 x 11,287 / (16 x 64), rounded up
    assert resolve_steps(a, 100) == 10  # at least 10
    assert resolve_steps(a, 10**7) == 500  # ablate.max_steps
    assert resolve_steps(load_config(["ablate.steps=7"]).ablate, 10**7) == 7
