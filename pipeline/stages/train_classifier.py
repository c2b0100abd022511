"""train_classifier: the fastText quality model that filter and web use, from one of three
sources (``classifier.source``):

- ``reference`` (default): positives are reference text (``classifier.reference``, by default
  the OpenStax set shipped in data/reference), negatives a seeded sample of web pages as the
  web stage would extract them (``web.inputs`` read here with the web stage's record, extract and
  language steps; or the pool in ``classifier.negatives``), balanced, deduplicated against each
  other and cut to the same lengths (``pipeline.classifier_data``), trained with DCLM's
  fastText settings. Reference documents are split whole into train / test / eval; the eval
  documents (``reference_eval.jsonl.zst``, the ablation's clean eval text) are never used by
  the classifier. Steps: negatives (one shard job per pool file, on the executor: read,
  sample, extract, language id) -> reduce (cut, dedup, pair, train, evaluate).
- ``teacher``: the teacher's ratings from annotate (positive when score >=
  ``classifier.threshold``), with a stratified held-out split.
- ``model_path``: an existing model (e.g. a published DCLM / FineWeb-Edu classifier), checked.

Precision, recall, F1, the confusion matrix and the held-out score histogram of each class go
to the manifest, the model to ``<run>/train_classifier/model.ftz`` (quantized,
``classifier.quantize``; ``model.bin`` without quantization). A model that is not
demonstrably useful (too few labels, no held-out split, not beating the majority baseline)
only scores; when no model can be trained (single-class ratings, no negative pool) the stage
finishes with a note and no model, and the filter skips the classifier decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from filters.classifier import QualityClassifier, train_classifier
from pipeline.classifier_data import (
    EVAL,
    TRAIN,
    Example,
    RefDoc,
    cut_examples,
    deduplicate,
    length_summary,
    page_split,
    pair,
    read_reference,
    reference_files,
    reference_split,
    unit_hash,
)
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.executor import ShardJob, make_executor, run_shards, worker_cached
from pipeline.records import Document
from pipeline.runs import Run, read_jsonl, read_shards
from pipeline.shards import RecordWriter
from pipeline.stages.annotate import ANNOTATIONS, Annotation
from pipeline.steps import Stats

CONFIG_KEYS = ("classifier", "seed")
MODEL = "model.bin"  # a model trained without quantization (and by datagen before .ftz)
QUANTIZED_MODEL = "model.ftz"
EXAMPLES = "examples.jsonl.zst"  # the reference source's train/test examples
REFERENCE_EVAL = "reference_eval.jsonl.zst"  # held-out reference documents (the ablation's)
NEGATIVES = "negatives"  # per pool file: the extracted pages (part-NNNNN.jsonl.zst)
# web.* keys that decide which pages the negative pool holds (when it is web.inputs)
POOL_KEYS = (
    "web.inputs",
    "web.format",
    "web.text_field",
    "web.url_field",
    "web.date_field",
    "web.hf_split",
    "web.hf_config",
    "web.extractor",
    "web.include_tables",
    "web.trafilatura_fast",
    "web.languages",
    "web.lang_min_score",
    "web.lid_model",
    "web.max_records",
)
DEDUP_KEYS = ("dedup.num_perm", "dedup.ngram", "dedup.threshold", "dedup.bands")


def model_file(cfg: PipelineConfig) -> str:
    """The file name of the model this stage trains under ``<run>/train_classifier/``."""
    return QUANTIZED_MODEL if cfg.classifier.quantize else MODEL


def pool_inputs(cfg: PipelineConfig) -> list[str]:
    return cfg.classifier.negatives or cfg.web.inputs


def fingerprint(cfg: PipelineConfig) -> str:
    """The reference source also depends on the pool's web settings, the dedup parameters
    and the reference files (name and size)."""
    if cfg.classifier.source != "reference":
        return ""
    try:
        files = [(str(p), p.stat().st_size) for p in reference_files(cfg)]
    except DatagenError as e:  # preflight reports it; the hash only has to differ
        files = [("error", str(e))]
    keys = DEDUP_KEYS + (() if cfg.classifier.negatives else POOL_KEYS)
    payload = json.dumps([cfg.section_hash(*keys), files])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def preflight(cfg: PipelineConfig) -> None:
    """A configured model must exist before generate spends any teacher time; reference files
    and a configured negative pool are checked before any stage runs."""
    c = cfg.classifier
    if c.source == "model_path" and not cfg.project_path(c.model_path).is_file():
        raise DatagenError(f"classifier.model_path: {c.model_path}: fastText model file not found")
    if c.source != "reference":
        return
    reference_files(cfg)
    if c.negatives:
        _pool_sources(cfg)
        from filters.lid import default_lid_model
        from pipeline.web.extract import Extractor

        Extractor(cfg.web.extractor)
        if not cfg.web.lid_model:
            default_lid_model()


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
    source = cfg.classifier.source
    if source == "model_path":
        return _given_model(cfg, console)
    if source == "teacher":
        return _teacher(cfg, run, console)
    return _reference(cfg, run, console)


def _given_model(cfg: PipelineConfig, console: Console) -> dict[str, Any]:
    c = cfg.classifier
    path = cfg.project_path(c.model_path)
    # DatagenError if missing / wrong label
    clf = QualityClassifier(path, c.positive_label, "classifier.model_path")
    console.print(f"train_classifier: using {path} (labels {', '.join(clf.labels)})")
    return {
        "source": "model_path",
        "model_path": str(path.resolve()),
        "positive_label": clf.positive_label,
        "trained": False,
        "applied": True,
        "labels": clf.labels,
        "summary": {"model": path.name, "trained": False},
    }


def _trained(
    cfg: PipelineConfig,
    folder: Path,
    texts: list[str],
    labels: list[bool],
    console: Console,
    split: tuple[list[int], list[int]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train, then judge usefulness: (manifest part, summary part)."""
    c = cfg.classifier
    n_pos = sum(labels)
    model_path = folder / model_file(cfg)
    metrics = train_classifier(texts, labels, model_path, c, cfg.seed, split=split)
    held = metrics.get("heldout") or {}
    applied, why = usefulness(n_pos, len(labels) - n_pos, held, c.min_labels_per_class)
    if not applied:
        console.print(f"[yellow]train_classifier: model scores only, no keep decision: {why}[/]")
    out = {
        **metrics,
        "model_path": str(model_path.resolve()),
        "model_file": model_path.name,  # the filter stage loads <run>/train_classifier/<this>
        "trained": True,
        "applied": applied,
        "note": None if applied else f"score only: {why}",
    }
    summary = {
        "f1": held.get("f1", "n/a"),
        "model": model_path.name,
        "model_mb": round(metrics["model_bytes"] / 1e6, 2),
        "applied": applied,
    }
    return out, summary


# --------------------------------------------------------------------------- teacher
def _teacher(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("train_classifier")
    c = cfg.classifier
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
        "source": "teacher",
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
    console.print(f"train_classifier: {len(ids)} labels ({n_pos} positive), training fastText")
    out, summary = _trained(cfg, folder, texts, labels, console)
    return {**base, **out, "summary": {"labels": len(ids), "positive": n_pos, **summary}}


# --------------------------------------------------------------------------- reference
def _pool_sources(cfg: PipelineConfig) -> list[Any]:
    """The negative pool's input files (web.inputs, or classifier.negatives checked here so
    that a bad path names that key)."""
    from pipeline.web.readers import resolve_inputs

    items = pool_inputs(cfg)
    if cfg.classifier.negatives:
        for item in items:
            if item.startswith("hf:") or any(ch in item for ch in "*?["):
                continue
            if not cfg.project_path(item).exists():
                raise DatagenError(f"classifier.negatives: {item}: no such file or folder")
    return resolve_inputs(items, cfg.web.format)


def pool_steps(cfg: PipelineConfig) -> list[Any]:
    """The web stage's own steps up to its language filter (record checks and decoding, main
    text extraction, language id), so that a negative is a page as the web stage extracts it,
    before any quality rule."""
    from filters.lid import LanguageIdFilter
    from pipeline.web.extract import ExtractStep
    from pipeline.web.pages import LanguageStep, RecordStep

    w = cfg.web
    lid_path = cfg.project_path(w.lid_model) if w.lid_model else ""
    steps = [
        RecordStep(),
        ExtractStep(w.extractor, w.include_tables, w.trafilatura_fast),
        LanguageStep(LanguageIdFilter(w.languages, w.lang_min_score, lid_path)),
    ]
    for step in steps:
        step.setup()
    return steps


def negatives_shard(job: ShardJob) -> Stats:
    """One pool file: read its records, keep a seeded ``classifier.negative_fraction`` of
    them, run the web stage's record, extract and language steps; write the pages in
    ``web.languages`` as web Documents."""
    from pipeline.shards import batched
    from pipeline.steps import run_steps
    from pipeline.web.pages import read_pages
    from pipeline.web.readers import InputSource, ReadStats

    p = job.payload
    cfg = PipelineConfig.model_validate(p["config"])
    steps = worker_cached(f"train_classifier:{p['key']}", lambda: pool_steps(cfg))
    src = InputSource(**p["source"])
    read = ReadStats()
    stats = Stats()
    name = "/".join(Path(src.path).parts[-3:])
    frac = cfg.classifier.negative_fraction

    def sampled() -> Iterator[Any]:
        for page in read_pages(src, read, cfg.web):
            stats.add("records")
            if unit_hash(cfg.seed, "pool", name, page.offset, page.warc_record_id) < frac:
                stats.add("sampled")
                yield page

    with RecordWriter(Path(job.stage_dir) / f"part-{job.name}.jsonl.zst") as writer:
        for batch in batched(sampled(), cfg.web.batch_size):
            kept, dropped = run_steps(steps, batch, Stats())
            for d in dropped:
                fam = (d.drop_reason or "").split(".", 1)[0]
                stats.add("other_language" if fam == "lid" else "no_text")
            for d in kept:
                stats.add("pages")
                writer.write(d)
    for kind, n in read.errors.items():
        stats.add(f"read_errors.{kind}", n)
    return stats


def _negatives(
    cfg: PipelineConfig, folder: Path, console: Console
) -> tuple[list[Document], dict[str, Any]]:
    sources = _pool_sources(cfg)
    pool = {
        "inputs": pool_inputs(cfg),
        "from": "classifier.negatives" if cfg.classifier.negatives else "web.inputs",
        "files": len(sources),
    }
    if not sources:
        return [], pool
    stage_dir = folder / NEGATIVES
    config = cfg.model_dump(mode="json")
    key = cfg.section_hash(*CONFIG_KEYS, *POOL_KEYS)
    jobs = [
        ShardJob(
            index=i,
            stage_dir=str(stage_dir),
            payload={"config": config, "source": vars(s), "key": key},
        )
        for i, s in enumerate(sources)
    ]
    with contextlib.closing(make_executor(cfg.executor)) as ex:
        result = run_shards(
            ex, negatives_shard, jobs, console, "train_classifier: negatives", "records", "records"
        )
    counts = result.stats.counts
    pool.update(
        {
            k: int(counts.get(k, 0))
            for k in ("records", "sampled", "no_text", "other_language", "pages")
        }
    )
    pool["read_errors"] = {
        k.removeprefix("read_errors."): int(v)
        for k, v in sorted(counts.items())
        if k.startswith("read_errors.")
    }
    pool["shards_total"], pool["shards_run"] = len(jobs), result.ran
    return list(read_shards(stage_dir, Document)), pool


def _reference(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("train_classifier")
    c = cfg.classifier
    # reference documents, split whole; the eval ones are written out and never used here
    splits: dict[str, int] = {}
    positives: list[tuple[str, str, str]] = []
    eval_words = 0
    with RecordWriter(folder / REFERENCE_EVAL) as eval_out:
        seen: set[str] = set()
        for doc in read_reference(cfg):
            if doc.id in seen:
                raise DatagenError(
                    f"classifier.reference: document id '{doc.id}' appears twice; ids must "
                    "be unique (they decide the held-out split)"
                )
            seen.add(doc.id)
            split = reference_split(doc.id, cfg.seed, c.eval_fraction, c.test_fraction)
            splits[split] = splits.get(split, 0) + 1
            if split == EVAL:
                eval_out.write(RefDoc(id=doc.id, text=doc.text, attribution=doc.attribution))
                eval_words += len(doc.text.split())
            else:
                positives.append((doc.id, split, doc.text))
    if not positives:
        raise DatagenError(
            f"classifier.reference: {', '.join(c.reference)}: no reference documents outside "
            "the eval split"
        )
    pages, pool = _negatives(cfg, folder, console)
    base: dict[str, Any] = {
        "source": "reference",
        "positive_label": "__label__hq",
        "reference": {
            "paths": c.reference,
            "documents": sum(splits.values()),
            "documents_per_split": dict(sorted(splits.items())),
            "eval_file": REFERENCE_EVAL,
            "eval_words": eval_words,
        },
        "negative_pool": pool,
    }
    if not pages:
        note = (
            f"no negative pages ({pool['from']} gave none); no model trained, the filter "
            "skips the classifier decision"
        )
        console.print(f"[yellow]train_classifier: {note}[/]")
        return {
            **base,
            "model_path": None,
            "trained": False,
            "note": note,
            "summary": {"negatives": 0, "model": "none"},
        }
    negatives = [(d.id, page_split(d.id, cfg.seed, c.test_fraction), d.text) for d in pages]
    examples = cut_examples(positives, True, c.chunk_words, c.min_chunk_words)
    examples += cut_examples(negatives, False, c.chunk_words, c.min_chunk_words)
    cut = {
        "positive": sum(e.label for e in examples),
        "negative": sum(not e.label for e in examples),
    }
    examples, dups = deduplicate(examples, cfg)
    examples = pair(examples, c.max_examples, cfg.seed)
    with RecordWriter(folder / EXAMPLES) as out:
        for e in examples:
            out.write(e)
    train_idx = [i for i, e in enumerate(examples) if e.split == TRAIN]
    test_idx = [i for i, e in enumerate(examples) if e.split != TRAIN]
    base["examples"] = {
        "file": EXAMPLES,
        "pieces_cut": cut,
        "duplicates_removed": dict(sorted(dups.items())),
        "train": len(train_idx),
        "test": len(test_idx),
        "lengths": length_summary(examples),
        "chunk_words": c.chunk_words,
        "min_chunk_words": c.min_chunk_words,
    }
    n_pos = sum(e.label for e in examples)
    base.update({"n_labels": len(examples), "n_positive": n_pos, "n_negative": n_pos})
    if not examples:
        note = "no example pairs after cutting and dedup; no model trained"
        console.print(f"[yellow]train_classifier: {note}[/]")
        return {**base, "model_path": None, "trained": False, "note": note, "summary": {}}
    console.print(
        f"train_classifier: {len(train_idx)} train / {len(test_idx)} test examples "
        f"(reference vs {pool['pages']} web pages), training fastText"
    )
    out_part, summary = _trained(
        cfg,
        folder,
        [e.text for e in examples],
        [e.label for e in examples],
        console,
        split=(train_idx, test_idx),
    )
    return {
        **base,
        **out_part,
        "summary": {"examples": len(examples), "pages": pool["pages"], **summary},
    }


__all__ = ["Example", "negatives_shard", "run"]
