"""filter: score every generated document and keep or drop it with a reason, shard by shard.

Steps, per batch of a shard (the first failing keep decision names the drop reason):

  scores       the classifier probability (``classifier.prob``) and the vocabulary-constraint
               coverage of EVERY record, dropped or not (thresholds apply later)
  decontam     benchmark n-gram overlap: drop, or cut with the GPT-3 rule (a modifier)
  code         code exercises: their tests run in the sandbox (pipeline.sandbox) unless
               generate verified them; only passing ones are kept (filter.require_verified)
  heuristics   length, truncated generation, stock opener, Gopher quality, Gopher repetition
  constraints  coverage >= filter.min_constraint_coverage
  quality      classifier.prob >= classifier.min_score (when the model is demonstrably useful)

Deduplication is the ``dedup`` stage (one rule for synthetic and web documents).

The input (generate's outputs) is cut into shards of ``executor.shard_docs`` records; each
shard writes ``filter/part-NNNNN.jsonl.zst`` (kept) and, with ``filter.keep_dropped``,
``filter/dropped/part-NNNNN.jsonl.zst`` (scores + drop_reason), then its completion marker.
A killed stage reruns only the unfinished shards; any executor gives the same bytes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from rich.console import Console

from filters.classifier import ClassifierFilter
from filters.code_exec import CodeStep
from filters.constraints import ConstraintFilter
from filters.decontam import DecontamStep, benchmark_files
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from filters.heuristics import LengthFilter, StockOpenerFilter, TruncationFilter
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.executor import ShardJob, make_executor, run_shards, worker_cached
from pipeline.records import Document
from pipeline.runs import Run
from pipeline.shards import RecordWriter, ShardSpec, batched, plan_shards, read_slices
from pipeline.steps import FilterStep, KeepStep, Stats, Step, run_steps, setup_all

CONFIG_KEYS = (
    "filter",
    "decontam",
    "sandbox",
    "classifier.min_score",
    "executor.shard_docs",
    "seed",
)


def preflight(cfg: PipelineConfig) -> None:
    """Config checks that need no upstream output (the driver runs them before any stage)."""
    dc = cfg.decontam
    if dc.enabled and dc.on_missing == "error":
        for b in dc.all_benchmarks():
            if not (b.path and benchmark_files(b.path)) and not (b.hf and dc.allow_download):
                raise DatagenError(
                    f"decontam.benchmarks.{b.name}: {b.path or 'no path'} "
                    "not found (and no hf download allowed)"
                )


def classifier_choice(run: Run, cfg: PipelineConfig) -> dict[str, Any]:
    """The model train_classifier chose: {path, label, applied, note}; path None = no model.
    A model that is not demonstrably useful only scores (applied False, note says why)."""
    m = run.read_manifest("train_classifier") or {}
    if m.get("trained"):
        # by name inside the run (a moved run still loads); model.bin before the .ftz default
        path: str | None = str(run.path / "train_classifier" / m.get("model_file", "model.bin"))
    else:
        path = m.get("model_path")
    if not path:
        return {"path": None, "applied": False, "note": m.get("note", "no model")}
    applied = bool(m.get("applied", True))
    return {
        "path": path,
        "label": m.get("positive_label") or cfg.classifier.positive_label,
        "applied": applied,
        "note": None if applied else m.get("note"),
    }


def build_steps(cfg: PipelineConfig, clf: dict[str, Any]) -> list[Step]:
    """The filter stage as a list of steps (loaded in each worker by ``setup``)."""
    f = cfg.filter
    scorers: list[Any] = [ConstraintFilter(f.min_constraint_coverage)]
    quality: list[Any] = []
    if clf["path"]:
        model = ClassifierFilter(
            clf["path"], clf["label"], cfg.classifier.min_score, clf["applied"]
        )
        scorers.insert(0, model)
        quality = [model]
    heuristics: list[Any] = [LengthFilter(f.min_chars, f.max_chars)]
    if f.drop_truncated:
        heuristics.append(TruncationFilter())
    heuristics += [
        StockOpenerFilter(f.stock_openers),
        GopherQualityFilter(f.gopher_quality),
        GopherRepetitionFilter(f.gopher_repetition),
    ]
    steps: list[Step] = [
        FilterStep("scores", scorers, drop=False),
        DecontamStep(cfg.decontam),
        CodeStep(cfg.filter, cfg.sandbox),
        FilterStep("heuristics", heuristics),
        KeepStep("constraints", [scorers[-1]]),
    ]
    if quality:
        steps.append(KeepStep("quality", quality))
    return steps


def filter_shard(job: ShardJob) -> Stats:
    """One shard: read its records, run the steps batch by batch, write kept and dropped."""
    p = job.payload
    cfg = PipelineConfig.model_validate(p["config"])
    clf = p["classifier"]
    steps = worker_cached(f"filter:{p['key']}", lambda: setup_all(build_steps(cfg, clf)))
    spec = ShardSpec.model_validate(p["shard"])
    out = Path(job.stage_dir)
    stats = Stats()
    with contextlib.ExitStack() as stack:
        kept_w = stack.enter_context(RecordWriter(out / f"part-{job.name}.jsonl.zst"))
        dropped_w = (
            stack.enter_context(RecordWriter(out / "dropped" / f"part-{job.name}.jsonl.zst"))
            if cfg.filter.keep_dropped
            else None
        )
        for batch in batched(read_slices(spec.slices, Document), cfg.dedup.batch_size):
            for d in batch:  # a record is scored afresh (generate wrote none)
                d.scores, d.drop_reason = {}, None
            stats.add("input", len(batch))
            kept, dropped = run_steps(steps, batch, stats)
            for d in batch:
                _count_constraints(d, stats)
                if clf["path"]:
                    stats.add("classifier.prob_sum", d.scores.get("classifier.prob", 0.0))
                    stats.add(
                        "classifier.above_min_score",
                        d.scores.get("classifier.prob", 0.0) >= cfg.classifier.min_score,
                    )
            stats.add("kept", len(kept))
            for d in kept:
                kept_w.write(d)
            if dropped_w is not None:
                for d in dropped:
                    dropped_w.write(d)
    return stats


def _count_constraints(d: Document, stats: Stats) -> None:
    req = int(d.scores.get("constraints.required", 0))
    if req:
        stats.add("constraints.docs")
        stats.add("constraints.required", req)
        stats.add("constraints.satisfied", int(d.scores.get("constraints.satisfied", 0)))
        stats.add("constraints.coverage_sum", d.scores.get("constraints.coverage", 0.0))


def input_files(run: Run) -> list[Path]:
    """generate's (or revise's) output files, in order (the filter's input)."""
    from pipeline.stages.generate import OUTPUTS, synthetic_files

    files = synthetic_files(run)
    if not files:
        raise DatagenError(f"{run.path / 'generate' / OUTPUTS}: generate outputs not found")
    return files


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    run.require_finished("generate", "filter")
    run.require_finished("revise", "filter")
    run.require_finished("train_classifier", "filter")
    folder = run.stage_dir("filter")
    # a local executor starts its worker server now: it imports the stage while we plan
    with contextlib.closing(make_executor(cfg.executor, job=filter_shard)) as ex:
        clf = classifier_choice(run, cfg)
        if clf["note"]:
            console.print(f"[yellow]filter: no classifier decision ({clf['note']})[/]")
        shards = plan_shards(input_files(run), cfg.executor.shard_docs)
        config = cfg.model_dump(mode="json")
        key = cfg.section_hash(*CONFIG_KEYS) + str(clf)
        jobs = [
            ShardJob(
                index=s.index,
                stage_dir=str(folder),
                payload={"config": config, "classifier": clf, "shard": s.model_dump(), "key": key},
            )
            for s in shards
        ]
        result = run_shards(ex, filter_shard, jobs, console, "filter", count_key="input")
    decon = result.stats.info.get("decontam", {})
    for name, why in decon.get("unavailable", {}).items():
        console.print(f"[yellow]decontam: benchmark '{name}' skipped: {why}[/]")
    for line in decon.get("warnings", []):
        console.print(f"[yellow]{line}[/]")
    return _manifest(cfg, clf, result.stats, len(shards), result.ran)


def _manifest(
    cfg: PipelineConfig, clf: dict[str, Any], st: Stats, n_shards: int, ran: list[int]
) -> dict[str, Any]:
    c = st.counts
    n_in, n_kept = int(c.get("input", 0)), int(c.get("kept", 0))
    reasons = st.drop_reasons()
    n_drop = sum(reasons.values())
    if n_kept + n_drop != n_in:
        raise AssertionError(f"filter: {n_in} in, {n_kept} kept + {n_drop} dropped")
    decon = st.info.get("decontam", {"loaded": {}, "unavailable": {}})
    cov_docs, cov_req = int(c.get("constraints.docs", 0)), int(c.get("constraints.required", 0))
    cov_sat = int(c.get("constraints.satisfied", 0))
    return {
        "summary": {
            "in": n_in,
            "kept": n_kept,
            "dropped": n_drop,
            **({"top_reason": max(reasons, key=reasons.__getitem__)} if reasons else {}),
        },
        "input": n_in,
        "kept": n_kept,
        "dropped": n_drop,
        "drop_reasons": reasons,
        "funnel": st.funnel_list(),
        "keep_dropped": cfg.filter.keep_dropped,
        "classifier_model": clf["path"],
        "classifier": {
            "positive_label": clf.get("label"),
            "min_score": cfg.classifier.min_score,
            "applied": clf["applied"],
            "note": clf["note"],
            "mean_prob": round(c.get("classifier.prob_sum", 0.0) / n_in, 4)
            if clf["path"] and n_in
            else None,
            "above_min_score": int(c.get("classifier.above_min_score", 0)),
        },
        "constraints": {
            "min_coverage": cfg.filter.min_constraint_coverage,
            "docs_with_required_words": cov_docs,
            "words_required": cov_req,
            "words_satisfied": cov_sat,
            "satisfaction": round(cov_sat / cov_req, 4) if cov_req else None,
            "mean_coverage": round(c.get("constraints.coverage_sum", 0.0) / cov_docs, 4)
            if cov_docs
            else None,
        },
        "decontam": {
            "mode": cfg.decontam.mode,
            "ngram": cfg.decontam.ngram,
            "min_short_words": min(cfg.decontam.min_short_words, cfg.decontam.ngram),
            "benchmarks": {
                b: {
                    **info,
                    **{
                        k: int(c.get(f"decontam.{b}.{k}", 0))
                        for k in ("docs_matched", "docs_dropped", "docs_cut")
                    },
                }
                for b, info in decon["loaded"].items()
            },
            "unavailable": decon["unavailable"],
        },
        "code": {
            "require_verified": cfg.filter.require_verified,
            "verdicts": {
                k.removeprefix("code."): int(v)
                for k, v in sorted(c.items())
                if k.startswith("code.") and k != "code.verified_in_filter"
            },
            "verified_in_filter": int(c.get("code.verified_in_filter", 0)),
            "sandbox": st.info.get("sandbox"),
        },
        "shards_total": n_shards,
        "shards_run": ran,
        "outputs": {
            "kept": "part-*.jsonl.zst",
            "dropped": "dropped/part-*.jsonl.zst" if cfg.filter.keep_dropped else None,
        },
    }
