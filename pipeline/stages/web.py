"""web: read web data, filter it hard (phi-3 style), write Documents like the synthetic ones,
one shard per input file.

Steps, per batch of a shard (each counted in the manifest's funnel; the first failing keep
decision names the drop reason):

  record      HTTP status, empty / binary / non-HTML payloads; decode (charset fixes counted)
  blocklist   domains / URL prefixes from ``web.blocklist``
  precheck    on the page's whole visible text, before the expensive extraction: pages
              confidently in another language (``web.precheck_language``), under Gopher's
              word-count / stop-word bounds or over its top n-gram limits, or failing
              most heuristic families (``web.precheck_heuristics``)
  extract     HTML -> main text (trafilatura by default)
  language    fastText lid.176: ``web.languages`` at >= ``web.lang_min_score``
  heuristics  Gopher repetition + quality, FineWeb quality, C4 page rules
  clean       modifiers: C4 line removal, PII masking (e-mail and IP addresses)
  quality     the classifier train_classifier chose: ``classifier.prob`` >= ``web.min_quality``
  decontam    benchmark n-gram overlap (``cfg.decontam``)

Deduplication is the ``dedup`` stage's (one rule for synthetic and web documents).

Shards: one per input file (a WARC, ARC, HTML file, tar archive or HF dataset); a JSONL or
parquet file with more than ``executor.shard_docs`` rows is cut into row ranges, a
per-record-gzip WARC with more documents into byte ranges of about that many (one big file
no longer keeps one worker busy while the others wait; document ids do not change). Each shard
writes ``web/part-NNNNN.jsonl.zst`` (kept) and, with ``web.keep_dropped``,
``web/dropped/part-NNNNN.jsonl.zst`` (reason + scores), then its completion marker; a killed
stage reruns only the unfinished shards, and any executor gives the same bytes.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from filters.blocklist import BlocklistFilter
from filters.c4 import C4Filter, C4LineRemover
from filters.classifier import ClassifierFilter
from filters.decontam import DecontamStep
from filters.fineweb import FineWebQualityFilter
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from filters.lid import LanguageIdFilter, default_lid_model
from filters.pii import PIIMasker
from pipeline.config import PipelineConfig, WebConfig
from pipeline.errors import DatagenError
from pipeline.executor import ShardJob, make_executor, run_shards, worker_cached
from pipeline.runs import Run
from pipeline.shards import RecordWriter, batched
from pipeline.steps import FilterStep, ModifierStep, Stats, Step, run_steps, setup_all
from pipeline.web import funnel
from pipeline.web.extract import Extractor, ExtractStep
from pipeline.web.pages import (
    LanguageStep,
    PageHeuristicsFilter,
    PageLanguageFilter,
    PageRepetitionFilter,
    PageWordsFilter,
    RecordStep,
    raw_words,
    read_pages,
)
from pipeline.web.readers import InputSource, ReadStats, plan_parts, resolve_inputs

# web.batch_size shapes memory, not output: it is left out of the stage's identity
CONFIG_KEYS = (
    *(f"web.{k}" for k in WebConfig.model_fields if k != "batch_size"),
    "decontam",
    "classifier.positive_label",
    "executor.shard_docs",
    "seed",
)
FUNNEL_NOTE = (
    "tokens are whitespace words; at 'read' and until 'extract' they are words of the raw "
    "record (HTML markup included), after it words of the text"
)


def build_steps(cfg: PipelineConfig, clf: dict[str, Any]) -> list[Step]:
    """The web stage as a list of steps (models load in each worker's ``setup``)."""
    w = cfg.web
    lid = LanguageIdFilter(
        w.languages, w.lang_min_score, cfg.project_path(w.lid_model) if w.lid_model else ""
    )
    blocklist = BlocklistFilter(cfg.project_path(w.blocklist)) if w.blocklist else BlocklistFilter()
    steps: list[Step] = [RecordStep(), FilterStep("blocklist", [blocklist])]
    heuristics: list[Any] = [
        GopherRepetitionFilter(w.gopher_repetition),
        GopherQualityFilter(w.gopher_quality),
    ]
    # FineWeb's rules read the page as extracted: after C4's line removal (no lines without
    # terminal punctuation left) its line-punctuation and short-line ratios could not fire
    if w.fineweb.enabled:
        heuristics.append(FineWebQualityFilter(w.fineweb))
    modifiers: list[Any] = []
    if w.c4.enabled:
        c4 = C4Filter(w.c4)
        heuristics.append(c4)
        modifiers.append(C4LineRemover(c4))
    if w.pii:
        modifiers.append(PIIMasker(w.email_placeholder, w.ip_placeholder))
    pre: list[Any] = []
    if w.precheck_language:
        pre.append(PageLanguageFilter(lid, w.precheck_lang_score))
    if w.precheck_heuristics:
        pre += [PageWordsFilter(w.gopher_quality), PageRepetitionFilter(w.gopher_repetition)]
        if w.precheck_failed_families:
            # the costliest (Gopher repetition) last: it scores only pages that may reach the bar
            pre.append(
                PageHeuristicsFilter([*heuristics[1:], heuristics[0]], w.precheck_failed_families)
            )
    if pre:
        steps.append(FilterStep("precheck", pre))
    steps += [
        ExtractStep(w.extractor, w.include_tables, w.trafilatura_fast),
        LanguageStep(lid),
        FilterStep("heuristics", heuristics),
    ]
    if modifiers:
        steps.append(ModifierStep("clean", modifiers))
    if clf["path"]:
        model = ClassifierFilter(clf["path"], clf["label"], w.min_quality, clf["applied"])
        steps.append(FilterStep("quality", [model]))
    if w.decontam and cfg.decontam.enabled:
        steps.append(DecontamStep(cfg.decontam))
    return steps


def web_shard(job: ShardJob) -> Stats:
    """One input part: read it, run the steps batch by batch, write kept and dropped."""
    p = job.payload
    cfg = PipelineConfig.model_validate(p["config"])
    steps = worker_cached(f"web:{p['key']}", lambda: setup_all(build_steps(cfg, p["classifier"])))
    src = InputSource(**p["input"])
    out = Path(job.stage_dir)
    stats = Stats()
    for name in (funnel.READ, *(s.name for s in steps)):
        stats.step(name)  # every shard's funnel has every row, in order
    read = ReadStats()
    with contextlib.ExitStack() as stack:
        kept_w = stack.enter_context(RecordWriter(out / f"part-{job.name}.jsonl.zst"))
        dropped_w = (
            stack.enter_context(RecordWriter(out / "dropped" / f"part-{job.name}.jsonl.zst"))
            if cfg.web.keep_dropped
            else None
        )
        for batch in batched(read_pages(src, read, cfg.web), cfg.web.batch_size):
            stats.passed(funnel.READ, batch, raw_words(batch))
            stats.add("read", len(batch))
            position = {id(d): i for i, d in enumerate(batch)}
            kept, dropped = run_steps(steps, batch, stats)
            for d in kept:
                kept_w.write(d)
            if dropped_w is not None:  # in reading order, whichever step dropped them
                for d in sorted(dropped, key=lambda d: position[id(d)]):
                    dropped_w.write(d.output())
    funnel.add_read_stats(stats, read)
    stats.info["read_messages"] = read.messages
    return stats


def preflight(cfg: PipelineConfig) -> None:
    """Checks that need no upstream output (input paths, extractor, lid model, blocklist): the
    driver calls this before running any stage, so a bad path fails before any work starts."""
    w = cfg.web
    resolve_inputs(w.inputs, w.format)
    if not w.inputs:
        return
    Extractor(w.extractor)  # the extractor's package imports
    if w.precheck_language or w.precheck_heuristics:
        try:
            import resiliparse  # noqa: F401 - the pre-checks read page text with it
        except ImportError:
            raise DatagenError(
                "web.precheck_language/web.precheck_heuristics: resiliparse is not installed "
                "(reinstall datagen with `pip install -e .`), or set both to false"
            ) from None
    if w.lid_model:
        if not cfg.project_path(w.lid_model).is_file():
            raise DatagenError(f"web.lid_model: {w.lid_model}: no such model file")
    else:
        default_lid_model()
    if w.blocklist:
        BlocklistFilter(cfg.project_path(w.blocklist))


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    sources = resolve_inputs(cfg.web.inputs, cfg.web.format)  # a bad path fails first
    run.require_finished("train_classifier", "web")
    folder = run.stage_dir("web")
    if not sources:
        console.print("[yellow]web: no inputs (web.inputs is empty); nothing to do[/]")
        return {
            "inputs": [],
            "note": "no inputs (web.inputs is empty)",
            "funnel": [],
            "drop_reasons": {},
            "documents": 0,
            "tokens": 0,
            "shards": [],
            "shards_total": 0,
            "shards_run": [],
            "summary": {"read": 0, "kept": 0, "note": "no inputs"},
        }
    # a local executor starts its worker server now: it imports the stage while we plan
    with contextlib.closing(make_executor(cfg.executor, job=web_shard)) as ex:
        from pipeline.stages.filter import classifier_choice

        clf = classifier_choice(run, cfg)
        parts = plan_parts(sources, cfg.executor.shard_docs)
        config = cfg.model_dump(mode="json")
        key = cfg.section_hash(*CONFIG_KEYS) + str(clf)
        jobs = [
            ShardJob(
                index=i,
                stage_dir=str(folder),
                payload={"config": config, "classifier": clf, "input": vars(src), "key": key},
            )
            for i, src in enumerate(parts)
        ]
        # the largest inputs first: a big file started last would leave the other workers idle
        order = sorted(jobs, key=lambda j: (-_size(parts[j.index]), j.index))
        t0 = time.perf_counter()
        result = run_shards(ex, web_shard, order, console, "web", unit="pages", count_key="read")
    elapsed = time.perf_counter() - t0
    per_shard = sorted(result.per_shard, key=lambda r: r["shard"])
    messages = [m for r in per_shard for m in r["stats"]["info"].get("read_messages", [])]
    stats = result.stats
    stats.info.pop("read_messages", None)
    ran = set(result.ran)
    read_now = sum(
        r["stats"]["funnel"][funnel.READ]["documents"] for r in per_shard if r["shard"] in ran
    )
    m = _manifest(cfg, clf, sources, stats, messages, len(jobs), result.ran)
    m["docs_per_s"] = round(read_now / elapsed, 2) if elapsed > 0 and read_now else None
    reader = m["reader"]
    for msg in reader["error_messages"][:10]:
        console.print(f"[yellow]web: {msg}[/]")
    if sum(reader["errors"].values()) > 10:
        problems = ", ".join(f"{n} {kind}" for kind, n in reader["errors"].items())
        console.print(f"[yellow]web: read problems in all: {problems} (web/manifest.json)[/]")
    return m


def _size(src: InputSource) -> float:
    """A shard's expected work: its file's bytes (a byte or row range: its share of them)."""
    if src.format == "hf":
        return 0.0
    size = float(src.size)
    if src.whole:
        return size
    if src.format == "warc":
        return (src.stop or size) - src.start
    return size / 2  # a row range of a split file: about shard_docs rows


def _manifest(
    cfg: PipelineConfig,
    clf: dict[str, Any],
    sources: list[InputSource],
    st: Stats,
    messages: list[str],
    n_shards: int,
    ran: list[int],
) -> dict[str, Any]:
    w = cfg.web
    rows = st.funnel_list()
    funnel.check(rows)
    c = st.counts
    read, kept = rows[0]["documents"], rows[-1]["documents"]
    tokens = rows[-1]["tokens"]
    reader = funnel.reader_summary(st, messages)

    decon = st.info.get("decontam")
    notes = []
    if not clf["path"]:
        notes.append(f"quality: no classifier ({clf['note']}); step skipped")
    elif not clf["applied"]:
        notes.append(f"quality: scores only, no keep decision ({clf['note']})")
    return {
        "inputs": [{"path": s.path, "format": s.format} for s in sources],
        "reader": reader,
        "funnel": rows,
        "funnel_note": FUNNEL_NOTE,
        "drop_reasons": st.drop_reasons(),
        "precheck": {
            "language": w.precheck_language,
            "lang_score": w.precheck_lang_score,
            "heuristics": w.precheck_heuristics,
            "failed_families": w.precheck_failed_families if w.precheck_heuristics else 0,
        },
        "charset": funnel.counts_under(st, "charset."),
        "pii_masked": funnel.counts_under(st, "pii."),
        "c4_lines_removed": funnel.counts_under(st, "c4_lines."),
        "language": {
            "model": str(cfg.project_path(w.lid_model) if w.lid_model else default_lid_model()),
            "languages": w.languages,
            "min_score": w.lang_min_score,
        },
        "blocklist": {"path": w.blocklist or None},
        "quality": (
            {
                "model": clf["path"],
                "min_quality": w.min_quality,
                "applied": clf["applied"],
                "score": "classifier.prob",
            }
            if clf["path"]
            else {"skipped": True}
        ),
        "decontam": (
            {
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
                "warnings": decon["warnings"],
            }
            if decon
            else {"skipped": True}
        ),
        "notes": notes,
        "documents": kept,
        "tokens": tokens,
        "shards": [f"part-{i:05d}.jsonl.zst" for i in range(n_shards)],
        "shards_total": n_shards,
        "shards_run": ran,
        "keep_dropped": w.keep_dropped,
        "outputs": {
            "kept": "part-*.jsonl.zst",
            "dropped": "dropped/part-*.jsonl.zst" if w.keep_dropped else None,
        },
        "summary": {
            "read": read,
            "kept": kept,
            "tokens": tokens,
            "read_errors": sum(reader["errors"].values()),
        },
    }
