"""Exact and MinHash near-duplicate detection on real text (CCNet Common Crawl documents,
WikiText articles, OpenStax modules) with near duplicates made by known, seeded word edits."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from datasketch import MinHash
from filters_testdata import ccnet_docs, openstax_modules, web_pages, wikitext_articles

from filters.dedup import (
    BUCKET_ANCHORS,
    MinHashParams,
    Signer,
    candidate_curve,
    candidate_probability,
    decision_curve,
    derive_bands_rows,
    exact_hash,
    exact_keys,
    find_duplicates,
    jaccard,
    words,
)
from pipeline.errors import DatagenError

TOKEN = re.compile(r"\w+")


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = TOKEN.findall(text.lower())
    if len(w) < n:
        return {tuple(w)} if w else set()
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def true_jaccard(a: str, b: str) -> float:
    """Jaccard of the word 5-gram shingle sets, as strings (no hashing)."""
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def edit(text: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    """Replace a fraction ``rate`` of the words with words from another document."""
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, int(rate * len(words)))):
        words[i] = rng.choice(vocab)
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus() -> dict[str, str]:
    bases = [t for t in ccnet_docs() if len(t.split()) > 150] + wikitext_articles()[:12]
    vocab = wikitext_articles()[-1].split()
    rng = random.Random(7)
    docs: dict[str, str] = {}
    for i, t in enumerate(bases):
        t = " ".join(t.split()[:1500])
        docs[f"b{i:02d}"] = t
        docs[f"b{i:02d}-near"] = edit(t, 0.01, rng, vocab)  # ~5% of 5-gram shingles change
        docs[f"b{i:02d}-far"] = edit(t, 0.12, rng, vocab)  # most shingles change
    return docs


def test_signatures_are_datasketch_affine32_minhash_of_the_shingle_sets():
    params = MinHashParams(num_perm=112, seed=99)
    signer = Signer(params)
    texts = ccnet_docs()[:5] + ["", "two words"]
    s = signer.sign(texts)
    used = signer.bands * signer.rows
    for i in range(len(texts)):
        ref = MinHash(num_perm=112, seed=99, hashfunc=lambda x: x)
        ref.update_batch([int(x) for x in s.shingle_set(i)])
        assert np.array_equal(ref.hashvalues[:used], s.signatures[i])
    assert s.empty.tolist() == [False] * 5 + [True, False]
    # all_positions signs every one of the num_perm positions, as datasketch does
    full = Signer(params, all_positions=True).sign(texts[:2]).signatures
    ref = MinHash(num_perm=112, seed=99, hashfunc=lambda x: x)
    ref.update_batch([int(x) for x in s.shingle_set(1)])
    assert np.array_equal(ref.hashvalues, full[1])


def test_words_are_the_regex_word_runs_on_multilingual_web_text():
    texts = web_pages() + ccnet_docs() + wikitext_articles()
    assert sum(not t.isascii() for t in texts) > 50
    for t in texts:
        low = t.lower()
        assert words(low) == [w.encode("utf-8") for w in TOKEN.findall(low)]


def test_exact_keys_normalise_like_normalize_text():
    texts = web_pages()[:40] + ["\ufb01ne  Caf\u00e9", "fine caf\u00e9", "ＡＢＣ abc"]
    lowered = [t.lower() for t in texts]
    fast, plain = exact_keys(texts, lowered), exact_keys(texts)
    assert np.array_equal(fast, plain)
    assert np.array_equal(fast[-3], fast[-2])  # NFKC: the ligature is "fi"
    assert exact_hash(texts[-1]) == exact_hash("abc abc")


def test_shingle_sets_give_the_exact_jaccard_of_the_word_ngrams(corpus):
    signer = Signer(MinHashParams())
    ids = sorted(corpus)
    s = signer.sign([corpus[i] for i in ids])
    for k, i in enumerate(ids):
        assert len(s.shingle_set(k)) == len(shingles(corpus[i]))  # no hash collisions here
    for i in [x for x in ids if "-" not in x][:10]:
        for other in (f"{i}-near", f"{i}-far"):
            a, b = ids.index(i), ids.index(other)
            got = jaccard(s.shingle_set(a), s.shingle_set(b))
            assert got == pytest.approx(true_jaccard(corpus[i], corpus[other]), abs=1e-9)


def test_near_duplicates_found_with_precision_one(corpus):
    ids = sorted(corpus)
    texts = [corpus[i] for i in ids]
    found = find_duplicates(texts, MinHashParams(num_perm=112, ngram=5, threshold=0.8, seed=1234))
    got = {(ids[a], ids[b]) for a, b, _ in found.pairs}
    truth = {
        (a, b)
        for n, a in enumerate(ids)
        for b in ids[n + 1 :]
        if true_jaccard(corpus[a], corpus[b]) >= 0.8
    }
    n_bases = sum("-" not in i for i in ids)
    assert sum(1 for a, b in truth if b == f"{a}-near") == n_bases  # 1% edits: J >= 0.8
    assert got == truth  # every true pair, and nothing else (exact verification)
    for a, b, j in found.pairs:
        assert j == pytest.approx(true_jaccard(texts[a], texts[b]), abs=1e-9)
    assert found.candidates >= len(found.pairs)
    # a "far" edit (J well under 0.5) stays its own document
    assert all(true_jaccard(corpus[i], corpus[i + "-far"]) < 0.5 for i in ids if "-" not in i)
    assert len(found.clusters) == n_bases


def shifted_pair(text: str, shift: int, n: int = 500) -> tuple[str, str, float]:
    """Two overlapping windows of ``n`` words of a real article, ``shift`` words apart, and
    their exact Jaccard on word 5-gram shingles."""
    w = TOKEN.findall(text.lower())
    a, b = " ".join(w[:n]), " ".join(w[shift : n + shift])
    return a, b, true_jaccard(a, b)


def test_pairs_just_above_the_threshold_are_found_as_often_as_the_decision_curve_says():
    """Real text pairs at known exact Jaccard around 0.8, under 300 seeds (300 sets of
    permutations): a pair below the threshold is never judged a duplicate, one above it as
    often as the decision curve says (P(candidate), 0.99+), not ~50-90% as when candidates
    were verified by the estimated Jaccard."""
    arts = [t for t in wikitext_articles() if len(TOKEN.findall(t)) > 700]
    pairs = [shifted_pair(t, s) for t, s in zip(arts, (64, 52, 43, 30), strict=False)]
    js = [j for _, _, j in pairs]
    assert js[0] < 0.8 < js[1] < js[2] < 0.85 < js[3]  # about 0.78, 0.81, 0.84, 0.89
    texts = [x for a, b, _ in pairs for x in (a, b)]
    trials = 300
    found = [0] * len(pairs)
    for seed in range(trials):
        got = find_duplicates(texts, MinHashParams(threshold=0.8, seed=seed), exact=False)
        for a, _, _ in got.pairs:
            found[a // 2] += 1
    params = MinHashParams(threshold=0.8)
    curve = decision_curve(params, js)
    b, r = params.bands_rows()
    assert found[0] == 0 and curve[f"{js[0]:g}"] == 0.0  # below the threshold: never
    for i, j in enumerate(js[1:], 1):
        p = float(candidate_probability(j, b, r))
        assert curve[f"{j:g}"] == round(p, 4) and p > 0.99
        assert found[i] / trials >= p - 4.5 * max(p * (1 - p), 0.003) ** 0.5 / trials**0.5
    assert sum(found[1:]) >= 0.98 * 3 * trials


def test_clusters_are_transitive_and_keep_highest_quality_then_smallest_id(corpus):
    base = corpus["b00"]
    vocab = wikitext_articles()[-1].split()
    rng = random.Random(3)
    a1 = edit(base, 0.01, rng, vocab)
    a2 = edit(a1, 0.01, rng, vocab)
    found = find_duplicates(
        [base, a1, a2, corpus["b01"]],
        MinHashParams(seed=5),
        ids=["x", "y", "z", "other"],
        quality=[0.2, 0.9, 0.9, 0.99],
    )
    [c] = found.clusters
    assert [m.id for m in c.members] == ["x", "y", "z"]
    assert c.kept.id == "y"  # y and z tie on quality; the smaller id wins
    assert c.reasons == {0: "near", 2: "near"}


def test_exact_copies_and_a_copy_of_a_near_duplicate_point_at_the_kept_document():
    mods = [m["text"] for m in openstax_modules() if len(m["text"]) > 1500][:4]
    vocab = wikitext_articles()[-1].split()
    near = edit(mods[1], 0.01, random.Random(1), vocab)
    texts = [
        mods[0],
        "  " + mods[0].upper().replace(" ", "\n ") + "\n",  # case and whitespace only
        mods[1],
        near,
        near.upper(),  # an exact copy of the near duplicate
        mods[2],
    ]
    ids = ["a", "a-copy", "b", "b-near", "b-near-copy", "c"]
    found = find_duplicates(texts, MinHashParams(), ids=ids, quality=[0.5, 0.6, 0.9, 0.4, 0.8, 0])
    by_kept = {c.kept.id: c for c in found.clusters}
    assert set(by_kept) == {"a-copy", "b"}  # the higher quality of each cluster
    assert by_kept["a-copy"].reasons == {0: "exact"}
    # b-near-copy is the better of its two exact copies: it is the near duplicate of b, and
    # b-near, its exact copy, is dropped as exact; both point at b, the document kept
    assert by_kept["b"].reasons == {3: "exact", 4: "near"}
    assert sorted(found.exact) == [(1, 0), (4, 3)]
    assert (0, 1) in found.judged_pairs() and (2, 4) in found.judged_pairs()


def test_without_exact_dedup_exact_copies_are_near_duplicates_at_jaccard_one():
    mods = [m["text"] for m in openstax_modules() if len(m["text"]) > 1500][:3]
    texts = [mods[0], mods[0].upper(), mods[1], "  " + mods[1] + "\n", mods[2]]
    found = find_duplicates(texts, MinHashParams(), exact=False)
    assert found.exact == []
    assert [(a, b) for a, b, _ in found.pairs] == [(0, 1), (2, 3)]
    assert all(j == 1.0 for _, _, j in found.pairs)
    assert [c.reasons for c in found.clusters] == [{1: "near"}, {3: "near"}]


def test_a_bucket_larger_than_the_anchor_cap_stays_one_cluster():
    """A real article copied 300 times, each copy with one word of its own changed (a template
    page crawled many times): the shared bands form buckets over the cap, each copy is paired
    with the bucket's anchors only (so candidates grow linearly, not as n^2), and all of them
    still form one cluster."""
    art = " ".join(next(t for t in wikitext_articles() if len(t.split()) > 1500).split()[:1500])
    vocab = wikitext_articles()[-1].split()
    rng = random.Random(11)
    n = 300
    texts = [edit(art, 0.0, rng, vocab) for _ in range(n)]
    found = find_duplicates(texts, MinHashParams())
    assert found.capped_buckets > 0
    assert found.candidates < 2 * BUCKET_ANCHORS * n < n * (n - 1) // 2
    [c] = found.clusters
    assert len(c.members) == n


def test_empty_texts_are_never_near_duplicates_but_are_exact_copies():
    texts = ["", "  \n", "...", ccnet_docs()[0]]
    found = find_duplicates(texts, MinHashParams())
    assert found.pairs == [] and found.candidates == 0
    assert sorted(found.exact) == [(1, 0)]  # "" and whitespace normalise alike; "..." does not


def test_bands_rows_derived_from_threshold_or_given():
    b, r = derive_bands_rows(0.8, 112, 0.99)
    assert (b, r) == (17, 6) == MinHashParams().bands_rows()
    assert candidate_probability(0.8, b, r) >= 0.99
    assert candidate_probability(0.5, b, r) < 0.25
    assert MinHashParams(num_perm=112, bands=14).bands_rows() == (14, 8)
    with pytest.raises(DatagenError, match="dedup.bands: 200 must be 2..dedup.num_perm"):
        MinHashParams(bands=200).bands_rows()
    params = MinHashParams()
    for curve in (candidate_curve(params), decision_curve(params)):
        assert list(curve) == ["0.5", "0.6", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"]
        values = list(curve.values())
        assert all(x <= y for x, y in zip(values, values[1:], strict=False))
    dec, cand = decision_curve(params), candidate_curve(params)
    assert all(dec[k] == 0.0 for k in ("0.5", "0.6", "0.7", "0.75"))
    assert all(dec[k] == cand[k] for k in ("0.8", "0.85", "0.9", "0.95"))
    assert list(candidate_curve(params, (0.801, 0.8))) == ["0.801", "0.8"]
