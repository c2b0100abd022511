"""train_classifier: a supervised fastText quality model on the teacher's ratings (positive when
score >= classifier.threshold), with a stratified held-out split; precision, recall, F1 and the
confusion matrix go to the manifest, the model to ``<run>/train_classifier/model.ftz``
(quantized, ``classifier.quantize``; ``model.bin`` without quantization).

With ``classifier.model_path`` set, that model (e.g. a published DCLM / FineWeb-Edu fastText
classifier) is checked and used instead. When the labels cannot train a model (none, or a
single class, as the tiny default teacher often gives) the stage finishes with a note and no
model; the filter stage then stores no classifier score and skips that keep decision.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from filters.classifier import QualityClassifier, train_classifier
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.runs import Run, read_jsonl
from pipeline.stages.annotate import ANNOTATIONS, Annotation

CONFIG_KEYS = (
    "classifier.threshold",
    "classifier.model_path",
    "classifier.positive_label",
    "classifier.word_ngrams",
    "classifier.epoch",
    "classifier.lr",
    "classifier.dim",
    "classifier.bucket",
    "classifier.quantize",
    "classifier.test_fraction",
    "classifier.min_labels_per_class",
    "classifier.min_score",
    "seed",
)  # min_score: the held-out metrics' cut
MODEL = "model.bin"  # a model trained without quantization (and by datagen before .ftz)
QUANTIZED_MODEL = "model.ftz"


def model_file(cfg: PipelineConfig) -> str:
    """The file name of the model this stage trains under ``<run>/train_classifier/``."""
    return QUANTIZED_MODEL if cfg.classifier.quantize else MODEL


def preflight(cfg: PipelineConfig) -> None:
    """A configured model must exist before generate spends any teacher time."""
    if cfg.classifier.model_path and not cfg.project_path(cfg.classifier.model_path).is_file():
        raise DatagenError(
            f"classifier.model_path: {cfg.classifier.model_path}: fastText model file not found"
        )


def usefulness(
    n_pos: int, n_neg: int, held: dict[str, Any], min_per_class: int
) -> tuple[bool, str]:
    """Should a model trained here make keep decisions? (True, "") or (False, why)."""
    if min(n_pos, n_neg) < min_per_class:
        return False, (
            f"{n_pos} positive / {n_neg} negative labels; classifier."
            f"min_labels_per_class is {min_per_class}"
        )
    if not held:  # e.g. classifier.test_fraction=0
        return False, "no held-out split to show it beats the majority baseline"
    if held["f1"] <= 0 or held["accuracy"] <= held["majority_baseline_accuracy"]:
        return False, (
            f"held-out F1 {held['f1']}, accuracy {held['accuracy']} does not beat "
            f"the majority baseline {held['majority_baseline_accuracy']}"
        )
    return True, ""


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("train_classifier")
    c = cfg.classifier
    if c.model_path:
        path = cfg.project_path(c.model_path)
        # DatagenError if missing / wrong label
        clf = QualityClassifier(path, c.positive_label, "classifier.model_path")
        console.print(f"train_classifier: using {path} (labels {', '.join(clf.labels)})")
        return {
            "model_path": str(path.resolve()),
            "positive_label": clf.positive_label,
            "trained": False,
            "applied": True,
            "labels": clf.labels,
            "summary": {"model": path.name, "trained": False},
        }
    ann_dir = run.require_finished("annotate", "train_classifier")
    ann_path = ann_dir / ANNOTATIONS
    anns = {a.id: a for a in read_jsonl(ann_path, Annotation)} if ann_path.exists() else {}
    from pipeline.stages.generate import iter_outputs

    docs = {d.id: d for d in iter_outputs(run) if d.id in anns}
    ids = sorted(i for i in anns if i in docs)
    texts = [docs[i].text for i in ids]
    labels = [anns[i].score >= c.threshold for i in ids]
    n_pos = sum(labels)
    base: dict[str, Any] = {
        "threshold": c.threshold,
        "n_labels": len(ids),
        "n_positive": n_pos,
        "n_negative": len(ids) - n_pos,
        "positive_label": "__label__hq",
    }
    if len(ids) < 2 or n_pos in (0, len(ids)):
        note = (
            f"labels have a single class ({n_pos} positive of {len(ids)} at threshold "
            f"{c.threshold}); no model trained, the filter skips the classifier decision"
        )
        if not ids:
            note = (
                "no parseable ratings; no model trained, the filter skips the classifier decision"
            )
        console.print(f"[yellow]train_classifier: {note}[/]")
        return {
            **base,
            "model_path": None,
            "trained": False,
            "note": note,
            "summary": {"labels": len(ids), "positive": n_pos, "model": "none"},
        }
    model_path = folder / model_file(cfg)
    console.print(f"train_classifier: {len(ids)} labels ({n_pos} positive), training fastText")
    metrics = train_classifier(texts, labels, model_path, c, cfg.seed)
    held = metrics.get("heldout") or {}
    applied, why = usefulness(n_pos, len(ids) - n_pos, held, c.min_labels_per_class)
    if not applied:
        console.print(f"[yellow]train_classifier: model scores only, no keep decision: {why}[/]")
    return {
        **base,
        **metrics,
        "model_path": str(model_path.resolve()),
        "model_file": model_path.name,  # the filter stage loads <run>/train_classifier/<this>
        "trained": True,
        "applied": applied,
        "note": None if applied else f"score only: {why}",
        "summary": {
            "labels": len(ids),
            "positive": n_pos,
            "f1": held.get("f1", "n/a"),
            "model": model_path.name,
            "model_mb": round(metrics["model_bytes"] / 1e6, 2),
            "applied": applied,
        },
    }
