"""fastText quality classifier (the phi-1 recipe: a teacher labels a sample, a cheap classifier
scores everything).

- ``QualityClassifier(model_path, positive_label)``: loads any supervised fastText model (ours,
  or a published one such as the DCLM / FineWeb-Edu fastText classifiers) and returns
  P(positive) for a batch of texts: ``clf.predict_proba(texts) -> np.ndarray``.
- ``train_classifier(texts, labels, out_path, cfg, seed)``: trains on binary labels with a
  stratified held-out split and returns precision / recall / F1 / confusion matrix. By default
  the model is product-quantized (fastText's ``.ftz`` format, ``classifier.quantize``): a few
  MB instead of fastText's 512 MB float matrix of 2,000,000 hash buckets x dim 64.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from filters.fasttext_io import load_fasttext
from pipeline.config import ClassifierConfig
from pipeline.errors import DatagenError
from pipeline.runs import file_mode

POSITIVE = "__label__hq"
NEGATIVE = "__label__lq"
# quantization keeps the 100,000 input rows (words and n-gram buckets) of largest norm and
# retrains, fastText's recipe (-qnorm -retrain -cutoff 100000, fasttext.cc/docs/en/faqs.html)
QUANTIZE_CUTOFF = 100_000
MIN_QUANTIZE_ROWS = 256  # product quantization trains 256 centroids per sub-vector


def clean_text(text: str) -> str:
    """fastText reads one example per line: newlines and runs of whitespace become one space."""
    return " ".join(text.split())


class QualityClassifier:
    def __init__(
        self, model_path: Path | str, positive_label: str = POSITIVE, what: str = "classifier"
    ) -> None:
        self.model_path = Path(model_path)
        self.model = load_fasttext(self.model_path, what)
        self.labels = list(self.model.get_labels())
        if not positive_label.startswith("__label__"):
            positive_label = f"__label__{positive_label}"
        if positive_label not in self.labels:
            raise DatagenError(
                f"classifier.positive_label: '{positive_label}' is not a label of "
                f"{self.model_path} (labels: {', '.join(self.labels)})"
            )
        self.positive_label = positive_label

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(positive label) for each text."""
        if not texts:
            return np.zeros(0)
        try:
            labels, probs = self.model.predict([clean_text(t) for t in texts], k=len(self.labels))
        except RuntimeError as e:  # fastText's "Encountered NaN." from a diverged model
            raise DatagenError(f"{self.model_path}: fastText could not score ({e})") from None
        pos = self.positive_label
        out = np.fromiter(
            (
                p[lab.index(pos)] if pos in lab else 0.0
                for lab, p in zip(labels, probs, strict=True)
            ),
            dtype=np.float64,
            count=len(texts),
        )
        return np.minimum(out, 1.0)  # fastText's softmax can print 1.00001


def stratified_split(
    labels: Sequence[bool], test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, test): each class contributes round(fraction * n) >= 1 test examples
    when it has at least 2 examples."""
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for cls in (True, False):
        idx = [i for i, y in enumerate(labels) if bool(y) == cls]  # numpy bools, 0/1 too
        rng.shuffle(idx)
        k = round(test_fraction * len(idx)) if test_fraction > 0 else 0
        if test_fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        test += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(test)


def binary_metrics(y_true: Sequence[bool], y_pred: Sequence[bool]) -> dict[str, Any]:
    tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t and p)
    fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if not t and p)
    fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t and not p)
    tn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if not t and not p)
    n = len(y_true)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    majority = max(tp + fn, fp + tn) / n if n else 0.0
    return {
        "n": n,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "accuracy": round((tp + tn) / n, 4) if n else 0.0,
        "majority_baseline_accuracy": round(majority, 4),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def train_classifier(
    texts: Sequence[str],
    labels: Sequence[bool],
    out_path: Path,
    cfg: ClassifierConfig | None = None,
    seed: int = 1234,
) -> dict[str, Any]:
    """Train a supervised fastText model on binary labels; save it atomically to ``out_path``.
    Returns counts and held-out metrics (positive when P(positive) >= cfg.min_score, the cut
    the filter stage keeps at)."""
    import fasttext

    cfg = cfg or ClassifierConfig()
    if len(texts) != len(labels):
        raise ValueError("texts and labels differ in length")
    n_pos = sum(1 for y in labels if y)
    if n_pos == 0 or n_pos == len(labels):
        raise DatagenError(
            f"labels have a single class ({n_pos} positive of {len(labels)}); "
            "cannot train a classifier"
        )
    train_idx, test_idx = stratified_split(labels, cfg.test_fraction, seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, train_file = tempfile.mkstemp(dir=out_path.parent, prefix=".train.", suffix=".txt")
    fd2, tmp_model = tempfile.mkstemp(dir=out_path.parent, prefix=".model.", suffix=".tmp")
    os.close(fd2)
    try:
        lines = [f"{POSITIVE if labels[i] else NEGATIVE} {clean_text(texts[i])}" for i in train_idx]
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        try:
            model = fasttext.train_supervised(
                input=train_file,
                wordNgrams=cfg.word_ngrams,
                epoch=cfg.epoch,
                lr=cfg.lr,
                dim=cfg.dim,
                bucket=cfg.bucket,
                minCount=1,
                loss="softmax",
                thread=1,
                seed=seed,
                verbose=0,
            )
            # fastText uses no buckets without word n-grams; a tiny model stays as it is
            rows = len(model.words) + (cfg.bucket if cfg.word_ngrams > 1 else 0)
            quantized = cfg.quantize and rows >= MIN_QUANTIZE_ROWS
            if quantized:
                model.quantize(
                    input=train_file,
                    qnorm=True,
                    retrain=True,
                    cutoff=min(QUANTIZE_CUTOFF, rows),
                    thread=1,
                    verbose=0,
                )
        except RuntimeError as e:  # fastText's "Encountered NaN." when training diverges
            raise DatagenError(
                f"classifier: fastText training failed ({e}); a lower classifier.lr "
                f"(now {cfg.lr}) may help"
            ) from None
        model.save_model(tmp_model)
        os.chmod(tmp_model, file_mode())
        os.replace(tmp_model, out_path)
    finally:
        Path(train_file).unlink(missing_ok=True)
        Path(tmp_model).unlink(missing_ok=True)
    out: dict[str, Any] = {
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "n_positive": n_pos,
        "n_negative": len(labels) - n_pos,
        "bucket": cfg.bucket,
        "quantized": quantized,
        "model_bytes": out_path.stat().st_size,
    }
    if test_idx:
        clf = QualityClassifier(out_path, POSITIVE)
        p = clf.predict_proba([texts[i] for i in test_idx])
        out["heldout"] = binary_metrics(
            [labels[i] for i in test_idx], [bool(x >= cfg.min_score) for x in p]
        )
    else:
        out["heldout"] = None
    return out


class ClassifierFilter:
    """The quality classifier as a filter: score ``classifier.prob`` = P(positive label);
    keep drops a document under ``min_score`` as ``quality.low_score`` when ``applied`` (a
    model that is not demonstrably useful only scores). The model loads in ``setup``."""

    family = "classifier"

    def __init__(
        self, model_path: Path | str, positive_label: str, min_score: float, applied: bool = True
    ) -> None:
        self.model_path = Path(model_path)
        self.positive_label = positive_label
        self.min_score = min_score
        self.applied = applied
        self._clf: QualityClassifier | None = None

    def setup(self) -> None:
        if self._clf is None:
            self._clf = QualityClassifier(self.model_path, self.positive_label)

    def score(self, doc: Any) -> dict[str, float]:
        self.setup()
        assert self._clf is not None
        return {"prob": float(self._clf.predict_proba([doc.text])[0])}

    def keep(self, s: dict[str, float]) -> str | None:
        if self.applied and s["prob"] < self.min_score:
            return "quality.low_score"
        return None
