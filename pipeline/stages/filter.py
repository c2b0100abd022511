"""filter: score every generated document, keep or drop it with a reason, deduplicate.

Per document, in order (the first failing check names the drop reason):
  decontam (benchmark n-gram overlap: drop, or cut with the GPT-3 rule) -> length -> truncated
  generation -> stock opener -> Gopher quality -> Gopher repetition -> vocabulary constraints ->
  classifier (P(positive) >= classifier.min_score; the probability is stored on every record)
then over the survivors: exact dedup (normalized-text hash, smallest id kept) and MinHash LSH
near-dedup (clusters; the highest classifier score kept, ties by id).

Outputs: kept docs as shards ``filter/part-*.jsonl.zst``; dropped docs (scores + drop_reason,
cluster/kept ids for duplicates) in ``filter/dropped/`` when ``filter.keep_dropped``; the
MinHash signatures and exact hashes of the KEPT docs in ``filter/dedup_index/`` for the web
stage. Memory: survivors wait in ``filter/.pending/`` shards; only signatures stay in memory.
A killed run leaves no finished manifest; the rerun clears partial outputs and redoes the work.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from filters.base import DocFilter, apply_filters
from filters.classifier import QualityClassifier
from filters.constraints import ConstraintFilter
from filters.decontam import Decontaminator
from filters.dedup import ExactDeduper, MinHashDeduper, MinHashParams, exact_hash
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from filters.heuristics import LengthFilter, StockOpenerFilter, TruncationFilter
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.records import Document
from pipeline.runs import Run, ShardWriter, read_jsonl, read_shards, shard_paths
from pipeline.stages.train_classifier import MODEL

CONFIG_KEYS = ("filter", "dedup", "decontam", "classifier.min_score", "seed")


def preflight(cfg: PipelineConfig) -> None:
    """Config checks that need no upstream output (the driver runs them before any stage)."""
    d = cfg.dedup
    MinHashParams(
        num_perm=d.num_perm, ngram=d.ngram, threshold=d.threshold, bands=d.bands, seed=cfg.seed
    ).bands_rows()
    dc = cfg.decontam
    if dc.enabled and dc.on_missing == "error":
        for b in dc.benchmarks:
            if not (b.path and cfg.project_path(b.path).exists()) and not (
                b.hf and dc.allow_download
            ):
                raise DatagenError(
                    f"decontam.benchmarks.{b.name}: {b.path or 'no path'} "
                    "not found (and no hf download allowed)"
                )


def build_filters(cfg: PipelineConfig) -> list[DocFilter]:
    f = cfg.filter
    out: list[DocFilter] = [LengthFilter(f.min_chars, f.max_chars)]
    if f.drop_truncated:
        out.append(TruncationFilter())
    out += [
        StockOpenerFilter(f.stock_openers),
        GopherQualityFilter(f.gopher_quality),
        GopherRepetitionFilter(f.gopher_repetition),
        ConstraintFilter(f.min_constraint_coverage),
    ]
    return out


def load_classifier(
    cfg: PipelineConfig, run: Run
) -> tuple[QualityClassifier | None, bool, str | None]:
    """The model train_classifier chose (or None), whether it makes keep decisions (a model
    that is not demonstrably useful only scores), and the note saying why not."""
    m = run.read_manifest("train_classifier") or {}
    if m.get("trained"):
        # by name inside the run (a moved run still loads); model.bin before the .ftz default
        path = run.path / "train_classifier" / m.get("model_file", MODEL)
    elif m.get("model_path"):
        path = Path(m["model_path"])
    else:
        return None, False, m.get("note", "train_classifier produced no model")
    clf = QualityClassifier(path, m.get("positive_label") or cfg.classifier.positive_label)
    applied = bool(m.get("applied", True))
    return clf, applied, None if applied else m.get("note")


def _clear_outputs(folder: Path) -> None:
    """Remove what an earlier (killed) run of this stage may have left."""
    for p in shard_paths(folder):
        p.unlink()
    for p in folder.glob(".part-*.tmp"):
        p.unlink()
    for sub in ("dropped", ".pending", "dedup_index"):
        if (folder / sub).exists():
            shutil.rmtree(folder / sub)


def _batches(it: Iterator[Document], n: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for d in it:
        batch.append(d)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} docs/s" if speed else "- docs/s", style="progress.data.speed")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("kept={task.fields[kept]}"),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    gen = run.require_finished("generate", "filter")
    run.require_finished("train_classifier", "filter")
    src = gen / "outputs.jsonl"
    if not src.exists():
        raise DatagenError(f"{src}: generate outputs not found")
    folder = run.stage_dir("filter")
    _clear_outputs(folder)
    pending_dir, dropped_dir = folder / ".pending", folder / "dropped"

    filters = build_filters(cfg)
    constraint = ConstraintFilter(cfg.filter.min_constraint_coverage)
    decon = Decontaminator(cfg.decontam)
    for name, why in decon.unavailable.items():
        console.print(f"[yellow]decontam: benchmark '{name}' skipped: {why}[/]")
    clf, clf_applied, clf_note = load_classifier(cfg, run)
    if clf_note:
        console.print(f"[yellow]filter: no classifier decision ({clf_note})[/]")
    d = cfg.dedup
    mh = MinHashDeduper(
        MinHashParams(
            num_perm=d.num_perm, ngram=d.ngram, threshold=d.threshold, bands=d.bands, seed=cfg.seed
        )
    )

    total = sum(1 for line in src.open("rb") if line.strip())
    reasons: Counter[str] = Counter()
    bench: dict[str, Counter[str]] = {b: Counter() for b in decon.loaded}
    cov_req = cov_sat = cov_docs = 0
    cov_sum = 0.0
    probs: list[float] = []
    exact = ExactDeduper()
    sig_ids: list[str] = []
    sig_rows: list[np.ndarray] = []
    sig_quality: list[float] = []
    sig_empty: list[bool] = []
    n_in = 0

    dropped_w = ShardWriter(dropped_dir) if cfg.filter.keep_dropped else None
    pending_w = ShardWriter(pending_dir)
    with _progress(console) as progress:
        task = progress.add_task("filter", total=total, kept=0)
        for batch in _batches(read_jsonl(src, Document), d.batch_size):
            n_in += len(batch)
            alive: list[Document] = []
            for doc in batch:
                doc.scores = {}
                doc.drop_reason = None
                res = decon.check(doc.text)
                doc.scores["decontam.matches"] = float(sum(res.matches.values()))
                for b in res.matches:
                    bench[b]["docs_matched"] += 1
                if res.reason:
                    doc.drop_reason = res.reason
                    reasons[res.reason] += 1
                    bench[res.reason.split(".", 1)[1]]["docs_dropped"] += 1
                else:
                    if res.text is not None:
                        doc.text = res.text
                        doc.scores["decontam.pieces"] = float(res.pieces)
                        for b in res.matches:
                            bench[b]["docs_cut"] += 1
                    alive.append(doc)
            if clf is not None:
                p = clf.predict_proba([x.text for x in batch])
                for doc, v in zip(batch, p, strict=True):
                    doc.scores["classifier.prob"] = round(float(v), 6)
                    probs.append(float(v))
            survivors: list[Document] = []
            for doc in alive:
                if not apply_filters(doc, filters, reasons):
                    continue
                if clf_applied and doc.scores["classifier.prob"] < cfg.classifier.min_score:
                    doc.drop_reason = "classifier.min_score"
                    reasons[doc.drop_reason] += 1
                    continue
                survivors.append(doc)
            for doc in batch:  # satisfaction over every record, whatever dropped it
                # records that reached the constraint filter carry its scores already
                cs = {
                    k.removeprefix("constraints."): v
                    for k, v in doc.scores.items()
                    if k.startswith("constraints.")
                }
                if not cs:
                    cs = constraint.score(doc)
                    doc.scores.update({f"constraints.{k}": v for k, v in cs.items()})
                if cs["required"]:
                    cov_docs += 1
                    cov_req += int(cs["required"])
                    cov_sat += int(cs["satisfied"])
                    cov_sum += cs["coverage"]
            for doc in batch:
                if doc.drop_reason and dropped_w is not None:
                    dropped_w.write(doc)
            if survivors:
                if d.near:
                    sigs = mh.signatures([x.text for x in survivors])
                    sig_rows.extend(sigs)
                for doc in survivors:
                    exact.add_hash(doc.id, exact_hash(doc.text))
                    sig_ids.append(doc.id)
                    sig_quality.append(doc.scores.get("classifier.prob", 0.0))
                    sig_empty.append(not any(ch.isalnum() for ch in doc.text))
                    pending_w.write(doc)
            progress.update(task, advance=len(batch), kept=len(sig_ids))
    pending_w.close()

    # dedup decisions: exact first (smallest id kept), then near-duplicate clusters
    exact_dropped = exact.duplicates() if d.exact else {}
    near_dropped: dict[str, tuple[str, str]] = {}
    kept_cluster: dict[str, str] = {}
    n_clusters = 0
    if d.near and sig_ids:
        live = [k for k, i in enumerate(sig_ids) if i not in exact_dropped]
        mh.add_signatures(
            [sig_ids[k] for k in live],
            np.stack([sig_rows[k] for k in live]),
            [sig_quality[k] for k in live],
            [sig_empty[k] for k in live],
        )
        clusters = mh.clusters()
        n_clusters = len(clusters)
        for c in clusters:
            kept_cluster[c.kept_id] = c.cluster_id
            for i in c.members:
                if i != c.kept_id:
                    near_dropped[i] = (c.cluster_id, c.kept_id)

    kept_ids: set[str] = set()
    kept_w = ShardWriter(folder)
    for doc in read_shards(pending_dir, Document):
        if doc.id in exact_dropped:
            h = exact_hash(doc.text)
            # the group's smallest id may itself be a near duplicate: point at the document
            # actually kept (a near cluster's kept id is never dropped)
            first = exact_dropped[doc.id]
            doc.drop_reason = "dedup.exact"
            doc.kept_id = near_dropped[first][1] if first in near_dropped else first
            doc.cluster_id = f"ex-{h[:16]}"
        elif doc.id in near_dropped:
            doc.drop_reason = "dedup.near"
            doc.cluster_id, doc.kept_id = near_dropped[doc.id]
        else:
            if doc.id in kept_cluster:
                doc.cluster_id, doc.kept_id = kept_cluster[doc.id], doc.id
            kept_ids.add(doc.id)
            kept_w.write(doc)
            continue
        reasons[doc.drop_reason] += 1
        if dropped_w is not None:
            dropped_w.write(doc)
    kept_w.close()
    if dropped_w is not None:
        dropped_w.close()

    index_dir = folder / "dedup_index"
    index_dir.mkdir(exist_ok=True)
    if d.near:
        mh.save(index_dir, only=kept_ids)
    exact.save(index_dir, only=kept_ids)
    shutil.rmtree(pending_dir, ignore_errors=True)

    n_drop = sum(reasons.values())
    if len(kept_ids) + n_drop != n_in:
        raise AssertionError(f"filter: {n_in} in, {len(kept_ids)} kept + {n_drop} dropped")
    return {
        "summary": {
            "in": n_in,
            "kept": len(kept_ids),
            "dropped": n_drop,
            **({"top_reason": reasons.most_common(1)[0][0]} if reasons else {}),
        },
        "input": n_in,
        "kept": len(kept_ids),
        "dropped": n_drop,
        "drop_reasons": dict(sorted(reasons.items())),
        "keep_dropped": cfg.filter.keep_dropped,
        "classifier_model": str(clf.model_path) if clf else None,
        "classifier": {
            "positive_label": clf.positive_label if clf else None,
            "min_score": cfg.classifier.min_score,
            "applied": clf_applied,
            "note": clf_note,
            "mean_prob": round(float(np.mean(probs)), 4) if probs else None,
            "above_min_score": sum(1 for p in probs if p >= cfg.classifier.min_score),
        },
        "constraints": {
            "min_coverage": cfg.filter.min_constraint_coverage,
            "docs_with_required_words": cov_docs,
            "words_required": cov_req,
            "words_satisfied": cov_sat,
            "satisfaction": round(cov_sat / cov_req, 4) if cov_req else None,
            "mean_coverage": round(cov_sum / cov_docs, 4) if cov_docs else None,
        },
        "dedup": {
            "exact_dropped": len(exact_dropped),
            "near_dropped": len(near_dropped),
            "near_clusters": n_clusters,
            "num_perm": d.num_perm,
            "ngram": d.ngram,
            "threshold": d.threshold,
            "bands": mh.bands,
            "rows": mh.rows,
            # P(a pair at exact Jaccard J is dropped as a near duplicate): LSH candidate AND
            # verified estimated J >= threshold; the candidate curve alone overstates recall
            "decision_curve": mh.s_curve(),
            "candidate_curve": mh.candidate_curve(),
            "index": "dedup_index",
        },
        "decontam": {
            "mode": cfg.decontam.mode,
            "ngram": cfg.decontam.ngram,
            "benchmarks": {
                b: {
                    **decon.loaded[b],
                    "docs_matched": bench[b]["docs_matched"],
                    "docs_dropped": bench[b]["docs_dropped"],
                    "docs_cut": bench[b]["docs_cut"],
                }
                for b in decon.loaded
            },
            "unavailable": decon.unavailable,
        },
        "outputs": {
            "kept": "part-*.jsonl.zst",
            "dropped": "dropped/part-*.jsonl.zst" if cfg.filter.keep_dropped else None,
        },
    }
