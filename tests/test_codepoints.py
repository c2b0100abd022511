"""The numpy text views agree with Python itself: every code point's classes, the words of
real texts, and the word hashes' definition."""

from __future__ import annotations

import re

import numpy as np
import pytest
from filters_testdata import ccnet_docs, openstax_modules, wikitext_articles

from filters.codepoints import (
    N_CODE_POINTS,
    code_points,
    lowered,
    split_counts,
    split_spans,
    tables,
    word_spans,
)
from filters.ngrams import (
    _BASES,
    _CHUNK,
    _EXACT_WORD,
    _PRIMES,
    WordHasher,
    multipliers,
    windows,
)


def _real_texts() -> list[str]:
    return ccnet_docs() + wikitext_articles()[:20] + [m["text"] for m in openstax_modules()]


def test_tables_match_python_for_every_code_point():
    t = tables()
    word, letter = re.compile(r"\w"), re.compile(r"[^\W\d_]")
    for c in range(N_CODE_POINTS):
        ch = chr(c)
        assert t.space[c] == ch.isspace() == bool(re.match(r"\s", ch)), hex(c)
        assert t.word[c] == bool(word.match(ch)), hex(c)
        assert t.letter[c] == bool(letter.match(ch)), hex(c)


def test_lower_case_is_one_character_of_the_same_classes_but_for_dotted_capital_i():
    t = tables()
    for c in range(N_CODE_POINTS):
        low = chr(c).lower()
        if c == 0x130:  # 'İ' -> 'i' + combining dot above (not \w): lowered() reports it
            assert low == "i\u0307" and not t.word[0x307]
            continue
        assert len(low) == 1, hex(c)
        o = ord(low)
        assert (t.space[o], t.word[o], t.letter[o]) == (t.space[c], t.word[c], t.letter[c])
    # 'Σ' depends on its neighbours (a word's final 'ς' is 'σ' in a longer text)
    assert "ΟΔΟΣ".lower() + ".α" != "ΟΔΟΣ.Α".lower()
    assert not lowered("ΟΔΟΣ")[1] and not lowered("İstanbul")[1] and lowered("Straße")[1]


def test_spans_are_python_words_on_real_text():
    for text in _real_texts() + ["", "  ", "a\x00b \ud800x", "\u2028x\x1cy\x85z"]:
        cp = code_points(text)
        assert len(cp) == len(text)
        s, e = split_spans(cp)
        assert [text[a:b] for a, b in zip(s, e, strict=True)] == text.split()
        s, e = word_spans(cp)
        assert [text[a:b] for a, b in zip(s, e, strict=True)] == re.findall(r"\w+", text)


def test_split_counts_are_python_word_counts_in_batches_of_any_size():
    texts = _real_texts() + ["", "  ", "a\x00b \ud800x", "\u2028x\x1cy\x85z", "x"]
    want = [len(t.split()) for t in texts]
    for limit in (1, 5_000, 1 << 20):  # one text per run, a few, all of them
        assert split_counts(texts, limit) == want
    assert split_counts([]) == []


def test_lowered_is_str_lower():
    for text in _real_texts()[:30] + ["İstanbul ΣΑΣ", ""]:
        low, in_place = lowered(text)
        assert low == text.lower()
        assert in_place == (len(low) == len(text) and "Σ" not in text)
        assert lowered(text) == (low, in_place)  # the memo gives the same answer


def _python_hash(word: str) -> int:
    """The definition of a word's hash, in Python integers."""
    out = 0
    for p, b in zip(_PRIMES, _BASES, strict=True):
        h = sum((ord(c) + 1) * pow(b, j, p) for j, c in enumerate(word)) % p
        out = (out << 32) | h
    return out


def test_word_hashes_follow_their_definition_inside_any_text():
    hasher = WordHasher()
    text = openstax_modules()[0]["text"]
    words = text.split()
    got = hasher.words(words).tolist()
    assert got == [_python_hash(w) for w in words]
    # the same words inside the text (other positions), and inside a text with a word longer
    # than the exact-sum limit (the reduced path)
    long_word = "".join(words)[: 3 * _EXACT_WORD]
    for body in (text, long_word + " " + text):
        cp = code_points(body)
        s, e = split_spans(cp)
        h = hasher.spans(cp, s, e).tolist()
        assert h[-len(words) :] == got
    assert hasher.words([long_word]).tolist() == [_python_hash(long_word)]


def test_a_long_array_is_hashed_in_runs_with_the_same_hashes_and_small_tables():
    """Real texts end to end, far longer than one run of _CHUNK code points: every word's
    hash is the hash of the word alone, and the power tables stay about one run long."""
    texts = _real_texts()
    body = " ".join(texts)
    assert len(body) > 3 * _CHUNK
    hasher = WordHasher()
    cp = code_points(body)
    s, e = split_spans(cp)
    got = hasher.spans(cp, s, e)
    words = body.split()
    alone = [WordHasher().words(words[k : k + 1000]) for k in range(0, len(words), 1000)]
    assert got.tolist() == np.concatenate(alone).tolist()  # each piece one run
    assert got[:50].tolist() == [_python_hash(w) for w in words[:50]]
    assert hasher._size <= 2 * _CHUNK


def test_ngram_windows_of_every_length_come_from_one_pass():
    hasher = WordHasher()
    words = wikitext_articles()[0].lower().split()[:500]
    h = hasher.words(words)
    mult = multipliers(13)
    got = dict(windows(h, {3, 8, 13}, mult))
    for n in (3, 8, 13):
        expect = [
            sum(int(h[i + k]) * int(mult[k]) for k in range(n)) % 2**64
            for i in range(len(words) - n + 1)
        ]
        assert got[n].tolist() == expect
    assert multipliers(5).tolist() == multipliers(13)[:5].tolist()
    assert (multipliers(13) % 2 == 1).all()


@pytest.mark.parametrize("seed", [0, 13])
def test_multipliers_are_distinct(seed: int):
    m = multipliers(64, seed)
    assert len(np.unique(m)) == 64
