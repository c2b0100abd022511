"""fastText quality classifier trained in the test on real text (OpenStax textbook pieces as
positive, Common Crawl page text as negative), and the annotation parser."""

from __future__ import annotations

import random

import pytest
from filters_testdata import SHARED, chunks, openstax_modules, web_pages

from filters.classifier import (
    NEGATIVE,
    POSITIVE,
    QualityClassifier,
    binary_metrics,
    stratified_split,
    train_classifier,
)
from pipeline.config import ClassifierConfig
from pipeline.errors import DatagenError
from pipeline.records import Document
from pipeline.stages.annotate import parse_score, sample_documents


@pytest.fixture(scope="module")
def labeled() -> tuple[list[str], list[bool]]:
    pos = [c for m in openstax_modules() for c in chunks(m["text"])]
    neg = [c for t in web_pages() for c in chunks(t)]
    rng = random.Random(0)
    rng.shuffle(pos)
    pos = pos[: len(neg) * 2]  # imbalanced on purpose: the majority baseline is not 50%
    data = [(t, True) for t in pos] + [(t, False) for t in neg]
    return [t for t, _ in data], [y for _, y in data]


@pytest.fixture(scope="module")
def trained(labeled, tmp_path_factory):
    texts, labels = labeled
    path = tmp_path_factory.mktemp("clf") / "model.bin"
    metrics = train_classifier(texts, labels, path, ClassifierConfig(test_fraction=0.3), seed=1)
    return path, metrics


def test_fasttext_beats_the_majority_baseline_on_held_out_text(trained, labeled):
    _, m = trained
    held = m["heldout"]
    assert held["n"] == m["n_test"] and m["n_train"] + m["n_test"] == len(labeled[0])
    assert held["accuracy"] >= held["majority_baseline_accuracy"] + 0.15
    assert held["f1"] >= 0.85
    c = held["confusion"]
    assert c["tp"] + c["fp"] + c["fn"] + c["tn"] == held["n"]


def test_model_is_quantized_to_a_few_mb_at_the_same_f1(trained):
    """fastText's defaults (2,000,000 hash buckets x dim 64, float) wrote 515 MB for these few
    hundred labels; the quantized model (.ftz) is a few MB and as good on the held-out split
    (docs/benchmarks.md)."""
    path, m = trained
    assert m["quantized"] and m["bucket"] == 2_000_000
    assert path.stat().st_size == m["model_bytes"] < 8_000_000
    assert m["heldout"]["f1"] >= 0.95
    model = QualityClassifier(path).model
    assert model.is_quantized() and model.f.getArgs().bucket == 2_000_000  # classifier.bucket


def test_quantization_can_be_turned_off(labeled, tmp_path):
    """classifier.quantize=false saves fastText's float model, the 515 MB of before: its input
    matrix (words + 2,000,000 hash buckets) x dim 64 x 4 bytes is nearly all of the file."""
    texts, labels = labeled
    cfg = ClassifierConfig(test_fraction=0.3, quantize=False)
    m = train_classifier(texts, labels, tmp_path / "m.bin", cfg, seed=1)
    clf = QualityClassifier(tmp_path / "m.bin")
    assert not m["quantized"] and not clf.model.is_quantized()
    rows = len(clf.model.get_words()) + clf.model.f.getArgs().bucket
    assert clf.model.f.getArgs().bucket == 2_000_000
    assert rows * 64 * 4 < m["model_bytes"] < 1.01 * rows * 64 * 4
    assert m["heldout"]["f1"] >= 0.95
    (tmp_path / "m.bin").unlink()


def test_quality_classifier_returns_positive_probability_per_text(trained):
    path, _ = trained
    clf = QualityClassifier(path, "hq")  # the __label__ prefix is optional
    assert set(clf.labels) == {POSITIVE, NEGATIVE}
    textbook = openstax_modules()[20]["text"]
    web = web_pages()[0]
    p = clf.predict_proba([textbook, web, ""])
    assert p.shape == (3,) and all(0.0 <= x <= 1.0 for x in p)
    assert p[0] > p[1]


def test_model_file_or_label_errors_name_the_problem(trained, tmp_path):
    path, _ = trained
    with pytest.raises(DatagenError, match="not a label"):
        QualityClassifier(path, "__label__edu")
    with pytest.raises(DatagenError, match="classifier: .*none.bin: no such model file"):
        QualityClassifier(tmp_path / "none.bin")
    not_a_model = SHARED / "benchmarks/gsm8k/test.jsonl"
    with pytest.raises(DatagenError, match="not a fastText model"):
        QualityClassifier(not_a_model)


def test_single_class_labels_refuse_to_train(tmp_path):
    texts = [m["text"] for m in openstax_modules()[:6]]
    with pytest.raises(DatagenError, match="single class"):
        train_classifier(texts, [True] * 6, tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()


def test_stratified_split_keeps_both_classes_in_the_test_set():
    labels = [True] * 9 + [False] * 3
    train, test = stratified_split(labels, 0.2, seed=4)
    assert sorted(train + test) == list(range(12))
    assert any(labels[i] for i in test) and any(not labels[i] for i in test)
    assert stratified_split(labels, 0.2, seed=4) == (train, test)
    # numpy bools and 0/1 ints are split the same way (not dropped from both sides)
    import numpy as np

    assert stratified_split(list(np.array(labels)), 0.2, seed=4) == (train, test)
    assert stratified_split([int(y) for y in labels], 0.2, seed=4) == (train, test)


def test_binary_metrics_confusion_and_f1():
    m = binary_metrics([True, True, False, False, True], [True, False, False, True, True])
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["majority_baseline_accuracy"] == 0.6


@pytest.mark.parametrize(
    "answer,score",
    [
        ("The text explains variables clearly.\nEducational score: 4", 4),
        ("Justification: basic.\n**Educational score:** 2/5", 2),
        ("Educational score: 1\nOn reflection it is better.\nEducational score: 3", 3),
        ("educational score = 5 points", 5),
        ("I would give this a 4.", None),
        ("Educational score: 7", None),
        ("Educational score: 2.5", None),
        ("", None),
    ],
)
def test_parse_score_reads_the_final_score_line_or_reports_none(answer, score):
    assert parse_score(answer) == score


def test_annotation_sample_is_seeded_and_order_independent():
    docs = [Document(id=f"d{i:02d}", text=m["text"]) for i, m in enumerate(openstax_modules()[:30])]
    a = [d.id for d in sample_documents(docs, 8, seed=3)]
    b = [d.id for d in sample_documents(list(reversed(docs)), 8, seed=3)]
    assert a == b and len(set(a)) == 8
    assert [d.id for d in sample_documents(docs, 8, seed=4)] != a


@pytest.mark.parametrize(
    "answer,rating",
    [
        ('{"justification": "Clear worked examples.", "score": 4}', (4, "Clear worked examples.")),
        ('{"justification": "x", "score": 0}', (0, "x")),
        ('{"justification": "x", "score": 10}', None),  # out of range: not a 5
        ('{"justification": "x", "score": "3"}', None),  # not an integer
        ('{"justification": "x", "score": 3.0}', (3, "x")),  # an integral JSON number is fine
        ('{"justification": "x", "score": 3.5}', None),  # a fraction is not a 0-5 score
        ('{"justification": "cut off by max_tok', None),  # truncated JSON
    ],
)
def test_structured_rating_is_parsed_or_reported_as_none(answer, rating):
    from pipeline.stages.annotate import parse_rating

    got = parse_rating(answer, structured=True)
    assert got == rating
    assert got is None or type(got[0]) is int


def test_a_model_that_does_not_beat_the_majority_baseline_only_scores():
    from pipeline.stages.train_classifier import usefulness

    held_useless = {"f1": 0.0, "accuracy": 0.8, "majority_baseline_accuracy": 0.8}
    held_good = {"f1": 0.7, "accuracy": 0.9, "majority_baseline_accuracy": 0.6}
    assert usefulness(3, 18, held_good, 10) == (
        False,
        "3 positive / 18 negative labels; classifier.min_labels_per_class is 10",
    )
    applied, why = usefulness(40, 60, held_useless, 10)
    assert not applied and "does not beat the majority baseline 0.8" in why
    assert usefulness(40, 60, held_good, 10) == (True, "")
    # no held-out split (classifier.test_fraction=0): nothing shows it beats the baseline
    assert usefulness(40, 60, {}, 10) == (
        False,
        "no held-out split to show it beats the majority baseline",
    )
