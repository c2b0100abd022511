"""The web stage end to end on real web data: funnel accounting, provenance, the pre-extraction
checks, the quality classifier, sharding (one shard per file, large JSONL split by rows), bad
input. Executors (local 1 / 2 workers, Ray) and kills are in test_web_executor.py."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from web_testdata import (
    ARC,
    DOLMA0,
    DOLMA1,
    DOLMA_JSONL,
    POSTLIGHT,
    RESILIPARSE,
    train_quality_model,
)

from filters.c4 import C4Filter
from filters.fineweb import FineWebQualityFilter
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from pipeline.config import PipelineConfig, load_config
from pipeline.errors import DatagenError
from pipeline.records import Document
from pipeline.runs import Run, read_jsonl, read_shards, shard_paths
from pipeline.stages import BY_NAME, run_pipeline, stage_hash
from pipeline.stages import web as web_stage

INPUTS = [DOLMA0, DOLMA1, RESILIPARSE]
PRECHECK_OFF = ("web.precheck_language=false", "web.precheck_heuristics=false")


def config(root: Path, *overrides: str, inputs: list[Path] | None = None) -> PipelineConfig:
    paths = ",".join(f"'{p}'" for p in (INPUTS if inputs is None else inputs))
    # the teacher-labelled classifier, which without labels gives no model: these tests check
    # the web steps themselves (the reference classifier's cut: test_reference_classifier.py)
    source = (
        [] if any(o.startswith("classifier.") for o in overrides) else ["classifier.source=teacher"]
    )
    return load_config(
        [
            f"run.root={root}",
            "run.name=t",
            f"web.inputs=[{paths}]",
            "executor.workers=1",
            *source,
            *overrides,
        ]
    )


def prepare(cfg: PipelineConfig, stages: tuple[str, ...] = ("plan", "generate", "annotate")) -> Run:
    """``stages`` marked finished (hashes as the driver computes them), as if they had run; the
    driver then runs train_classifier (real: a model file, or no model without labels)."""
    run = Run(cfg.run.root, cfg.run.name)
    for name in stages:
        run.stage_dir(name)
        h = stage_hash(cfg, run, BY_NAME[name])
        run.write_manifest(name, {"stage": name, "status": "finished", "config_hash": h})
    return run


def run_web(cfg: PipelineConfig) -> tuple[Run, dict[str, Any]]:
    """train_classifier and web through the real driver (one in-process worker)."""
    run = prepare(cfg)
    return run, run_pipeline(cfg, "web", Console(file=io.StringIO()))[-1]


def kept_docs(run: Run) -> list[Document]:
    return list(read_shards(run.path / "web", Document))


def dropped_docs(run: Run) -> list[Document]:
    return list(read_shards(run.path / "web" / "dropped", Document))


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_quality_model(tmp_path_factory.mktemp("clf") / "model.bin")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, Any]]:
    return run_web(config(tmp_path_factory.mktemp("web"), "web.keep_dropped=true"))


def test_funnel_adds_up_every_record_kept_or_dropped_once(first_run: tuple) -> None:
    run, m = first_run
    kept, dropped = kept_docs(run), dropped_docs(run)
    steps = {s["step"]: s for s in m["funnel"]}
    assert [s["step"] for s in m["funnel"]] == [
        "read",
        "record",
        "blocklist",
        "precheck",
        "extract",
        "language",
        "heuristics",
        "clean",
        "decontam",
    ]  # no quality step: train_classifier had no labels, so no model
    assert steps["read"]["documents"] == len(kept) + len(dropped)
    assert m["funnel"][-1]["documents"] == len(kept) == m["documents"] > 0
    assert len({d.id for d in kept} | {d.id for d in dropped}) == steps["read"]["documents"]
    assert Counter(d.drop_reason for d in dropped) == Counter(m["drop_reasons"])
    for prev, s in zip(m["funnel"], m["funnel"][1:], strict=False):
        assert s["documents"] == prev["documents"] - sum(s["dropped"].values())
    assert m["funnel"][-1]["tokens"] == m["tokens"] == sum(len(d.text.split()) for d in kept)
    # the records read are exactly the content records the readers saw
    types = m["reader"]["record_types"]
    assert steps["read"]["documents"] == sum(
        types.get(t, 0) for t in ("response", "resource", "conversion")
    )
    assert m["shards_total"] == 3 and m["shards_run"] == [0, 1, 2]  # one shard per file
    assert "quality: no classifier" in m["notes"][0]


def test_heavy_filtering_drops_non_english_and_low_quality(first_run: tuple) -> None:
    _, m = first_run
    reasons = m["drop_reasons"]
    # the multilingual CC 2020 subset: most of it goes before extraction
    assert reasons.get("precheck.language", 0) > 0
    assert any(r.startswith(("gopher_", "c4.", "fineweb.")) for r in reasons)
    assert 0 < m["documents"] < m["funnel"][0]["documents"]


def test_kept_web_documents_carry_provenance_and_scores(first_run: tuple) -> None:
    run, m = first_run
    kept = kept_docs(run)
    for d in kept:
        assert d.source == "web" and d.language == "en" and d.drop_reason is None
        assert d.url and d.url.startswith("http")
        assert d.source_file and Path(d.source_file).name in {p.name for p in INPUTS}
        assert d.warc_record_id and d.warc_record_id.startswith("<urn:uuid:")
        assert d.offset is not None and d.fetch_date
        assert d.scores["lid.en"] >= 0.65 and d.scores["precheck.lid_en"] >= 0.1
        assert {
            "gopher_quality.n_words",
            "c4.sentences",
            "fineweb.line_punct_ratio",
            "pii.emails",
            "decontam.matches",
        } <= set(d.scores)
        assert "@" not in d.text or "<EMAIL>" in d.text
    assert m["pii_masked"]["emails"] == sum(d.scores["pii.emails"] for d in kept) > 0
    assert sum(m["c4_lines_removed"].values()) > 0


def test_dropped_documents_keep_reason_and_scores(first_run: tuple) -> None:
    run, _ = first_run
    dropped = dropped_docs(run)
    assert all(d.drop_reason for d in dropped)
    pre = [d for d in dropped if d.drop_reason == "precheck.language"]
    assert pre and all(d.scores["precheck.lid_en"] < 0.1 for d in pre)
    # dropped before extraction: the page's visible text is kept for review, not its HTML
    assert all(d.text and "<" not in d.text[:200] and "lid.en" not in d.scores for d in pre)
    binary = [d for d in dropped if d.drop_reason.startswith("extract.")]
    assert all(d.text == "" for d in binary)


def test_the_prechecks_drop_only_pages_extraction_would_drop(tmp_path: Path) -> None:
    """On real pages (a multilingual CC 2020 subset, a 2008 CC crawl), checking before
    extraction keeps exactly the documents that extracting everything keeps."""
    inputs = [RESILIPARSE, ARC]
    _, on = run_web(config(tmp_path / "on", "web.keep_dropped=true", inputs=inputs))
    run_off, off = run_web(config(tmp_path / "off", *PRECHECK_OFF, inputs=inputs))
    run_on = Run(tmp_path / "on", "t")
    pre = Counter(r for r in on["drop_reasons"] if r.startswith("precheck."))
    assert {"precheck.language", "precheck.n_words", "precheck.top_2gram_char_frac"} <= set(pre)
    assert not any(r.startswith("precheck.") for r in off["drop_reasons"])
    kept_on = {d.id: d.text for d in kept_docs(run_on)}
    assert kept_on == {d.id: d.text for d in kept_docs(run_off)}
    assert len(kept_on) == on["documents"] > 5
    # every page the prechecks dropped is dropped by a later step when they are off
    off_steps = {s["step"] for s in off["funnel"]}
    assert "precheck" not in off_steps and off["precheck"]["language"] is False
    assert on["funnel"][0] == off["funnel"][0]


def test_the_heuristics_precheck_drops_pages_whose_visible_text_fails_most_families(
    tmp_path: Path,
) -> None:
    """The real pages it drops before extraction fail at least 3 of the 4 heuristic families on
    their visible text (the text a dropped page keeps), scored here filter by filter; with the
    rule off the same documents are kept, and those pages are extracted and dropped later."""
    inputs = [RESILIPARSE, ARC, DOLMA0]
    cfg = config(tmp_path / "on", "web.keep_dropped=true", inputs=inputs)
    run_on, on = run_web(cfg)
    pre = [d for d in dropped_docs(run_on) if d.drop_reason == "precheck.heuristics"]
    assert len(pre) >= 3 and on["precheck"]["failed_families"] == 3
    w = cfg.web
    families = [
        GopherRepetitionFilter(w.gopher_repetition),
        GopherQualityFilter(w.gopher_quality),
        FineWebQualityFilter(w.fineweb),
        C4Filter(w.c4),
    ]
    for d in pre:
        failed = [f.family for f in families if f.keep(f.score(d.text)) is not None]
        assert len(failed) >= 3 and d.scores["precheck.failed_families"] >= 3, (d.id, failed)
    off_cfg = config(
        tmp_path / "off", "web.keep_dropped=true", "web.precheck_failed_families=0", inputs=inputs
    )
    run_off, off = run_web(off_cfg)
    assert "precheck.heuristics" not in off["drop_reasons"]
    assert {d.id: d.text for d in kept_docs(run_on)} == {d.id: d.text for d in kept_docs(run_off)}
    later = {d.id: d.drop_reason or "" for d in dropped_docs(run_off)}
    assert all(d.id in later and not later[d.id].startswith("precheck.") for d in pre)


def test_the_heuristics_precheck_decides_as_scoring_every_family_would(tmp_path: Path) -> None:
    """Scoring only the undecided pages filter after filter gives the decision of counting
    every family's failure on every real page of two crawls."""
    from pipeline.steps import Stats
    from pipeline.web.pages import PageHeuristicsFilter, RecordStep, read_pages
    from pipeline.web.readers import ReadStats, plan_parts, resolve_inputs

    w = config(tmp_path, inputs=[RESILIPARSE, ARC]).web
    families = [
        GopherQualityFilter(w.gopher_quality),
        FineWebQualityFilter(w.fineweb),
        C4Filter(w.c4),
        GopherRepetitionFilter(w.gopher_repetition),
    ]
    pages = [
        p
        for src in plan_parts(resolve_inputs(w.inputs, w.format), 1000)
        for p in RecordStep().process(list(read_pages(src, ReadStats(), w)), Stats())
        if p.drop_reason is None
    ]
    assert len(pages) > 50
    for bar in (1, 2, 3, 4):
        rule = PageHeuristicsFilter(families, bar)
        got = [rule.keep(s) for s in rule.score_batch(pages)]
        want = [
            "precheck.heuristics"
            if sum(f.keep(f.score(p.page_text())) is not None for f in families) >= bar
            else None
            for p in pages
        ]
        assert got == want, bar
        if bar == 3:  # the default drops some of these pages and keeps others
            assert 0 < got.count(None) < len(pages)


def test_quality_classifier_keeps_only_probabilities_above_min_quality(
    tmp_path: Path, quality_model: Path
) -> None:
    model = f"classifier.model_path={quality_model}"
    # min_quality=0: every document gets classifier.prob, none is dropped for it
    run0, m0 = run_web(config(tmp_path / "a", model, "web.min_quality=0"))
    assert m0["quality"]["model"] == str(quality_model.resolve())
    assert m0["quality"]["score"] == "classifier.prob"
    probs = sorted(d.scores["classifier.prob"] for d in kept_docs(run0))
    assert len(probs) >= 4 and "quality.low_score" not in m0["drop_reasons"]
    cut = round((probs[len(probs) // 2 - 1] + probs[len(probs) // 2]) / 2, 6)
    run, m = run_web(
        config(tmp_path / "b", model, "web.keep_dropped=true", f"web.min_quality={cut}")
    )
    kept = kept_docs(run)
    low = [d for d in dropped_docs(run) if d.drop_reason == "quality.low_score"]
    assert kept and low
    assert all(d.scores["classifier.prob"] >= cut for d in kept)
    assert all(d.scores["classifier.prob"] < cut for d in low)
    assert len(kept) + len(low) == len(probs)
    steps = {s["step"]: s for s in m["funnel"]}
    assert steps["quality"]["dropped"] == {"quality.low_score": len(low)}
    assert not any("quality.p_positive" in d.scores for d in kept)  # one name: classifier.prob


def test_repeated_input_is_not_deduplicated_here(tmp_path: Path) -> None:
    """Dedup is the dedup stage's (one rule for web and synthetic documents): the web stage
    keeps both copies of a repeated file and writes no dedup index."""
    copy = tmp_path / "again.warc.gz"
    shutil.copy(DOLMA0, copy)
    run, m = run_web(config(tmp_path, inputs=[DOLMA0, copy]))
    kept = kept_docs(run)
    assert m["documents"] == len(kept) > 0 and m["shards_total"] == 2
    first = [d.text for d in kept if d.source_file == str(DOLMA0)]
    assert first == [d.text for d in kept if d.source_file == str(copy)]
    assert not any(r.startswith("dedup") for r in m["drop_reasons"])
    assert "dedup" not in m and not (run.path / "web" / "dedup_index").exists()


def test_a_large_jsonl_input_is_split_into_shards_that_add_up_to_the_whole(tmp_path: Path) -> None:
    run1, one = run_web(config(tmp_path / "one", inputs=[DOLMA_JSONL]))
    run4, four = run_web(config(tmp_path / "four", "executor.shard_docs=200", inputs=[DOLMA_JSONL]))
    assert (one["shards_total"], four["shards_total"]) == (1, 4)
    assert len(shard_paths(run4.path / "web")) == 4
    docs = kept_docs(run4)
    assert [d.model_dump_json() for d in docs] == [d.model_dump_json() for d in kept_docs(run1)]
    assert four["funnel"] == one["funnel"] and four["reader"] == one["reader"]
    assert one["funnel"][0]["documents"] == 697 and four["documents"] > 50


def test_warcs_split_into_byte_ranges_keep_and_drop_the_same_documents(tmp_path: Path) -> None:
    inputs = [RESILIPARSE, DOLMA0, DOLMA1]
    run1, one = run_web(config(tmp_path / "one", "web.keep_dropped=true", inputs=inputs))
    cfg = config(tmp_path / "many", "web.keep_dropped=true", "executor.shard_docs=6", inputs=inputs)
    run_n, many = run_web(cfg)
    assert one["shards_total"] == 3 < many["shards_total"]
    for docs in (kept_docs, dropped_docs):
        assert [d.model_dump_json() for d in docs(run_n)] == [
            d.model_dump_json() for d in docs(run1)
        ]
    assert many["funnel"] == one["funnel"] and many["reader"] == one["reader"]
    assert one["funnel"][0]["documents"] == 57 and many["documents"] > 0


def test_html_pages_in_a_tar_archive_are_read_and_filtered(tmp_path: Path) -> None:
    run, m = run_web(config(tmp_path, inputs=[POSTLIGHT]))
    kept = kept_docs(run)
    assert m["reader"]["record_types"]["tar_html"] == 170 == m["funnel"][0]["documents"]
    assert 50 < len(kept) < 170  # news pages: most kept; Japanese ones dropped
    assert m["drop_reasons"].get("precheck.language", 0) > 10
    assert all(d.url and d.url.startswith(POSTLIGHT.resolve().as_uri() + "#") for d in kept)


def test_truncated_input_is_counted_and_the_stage_finishes(tmp_path: Path) -> None:
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(DOLMA0.read_bytes()[: DOLMA0.stat().st_size // 2])
    _, m = run_web(config(tmp_path, inputs=[cut, DOLMA1]))
    assert sum(m["reader"]["errors"].values()) == 1
    assert str(cut) in m["reader"]["error_messages"][0]
    assert m["funnel"][0]["documents"] > 0


def test_an_empty_file_among_the_inputs_is_skipped_with_a_warning(tmp_path: Path) -> None:
    folder = tmp_path / "crawl"
    folder.mkdir()
    shutil.copy(DOLMA1, folder / "a.warc.gz")
    hollow = folder / "b.warc.gz"  # the real file with its content removed: an empty gzip
    hollow.write_bytes(gzip.compress(gzip.decompress(DOLMA1.read_bytes())[:0]))
    cfg = config(tmp_path, inputs=[folder])
    run = prepare(cfg)
    out = io.StringIO()
    m = run_pipeline(cfg, "web", Console(file=out, width=300))[-1]
    assert m["reader"]["errors"] == {"empty_file": 1} and m["shards_total"] == 2
    assert f"web: {hollow}: empty file (nothing to read); skipped" in out.getvalue()
    assert m["funnel"][0]["documents"] > 0 and run.is_finished("web")


def test_a_lone_surrogate_in_jsonl_text_is_replaced_not_a_crash(tmp_path: Path) -> None:
    # a real CCNet document with a lone surrogate escape (legal JSON, not encodable UTF-8)
    row = json.loads(gzip.decompress(DOLMA_JSONL.read_bytes()).splitlines()[0])
    row["text"] = row["text"].replace("A New Home?", "A New Home\ud800?", 1)
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert "\\ud800" in path.read_text(encoding="utf-8")
    run, _ = run_web(
        config(tmp_path, "web.keep_dropped=true", "web.c4.enabled=false", inputs=[path])
    )
    docs = kept_docs(run) + dropped_docs(run)
    assert len(docs) == 1 and docs[0].text.startswith("A New Home??")


def test_missing_input_fails_before_any_work(tmp_path: Path) -> None:
    cfg = config(tmp_path, inputs=[DOLMA0, tmp_path / "missing.warc.gz"])
    prepare(cfg)
    with pytest.raises(DatagenError, match="missing.warc.gz: no such file"):
        run_pipeline(cfg, "web", Console(file=io.StringIO()))
    assert not (Run(cfg.run.root, "t").path / "web").exists()


def test_web_needs_a_finished_train_classifier_stage(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(DatagenError, match="stage 'train_classifier' has not finished"):
        web_stage.run(cfg, Run(cfg.run.root, cfg.run.name), Console(file=io.StringIO()))


def test_no_inputs_finishes_with_an_empty_output(tmp_path: Path) -> None:
    run, m = run_web(config(tmp_path, inputs=[]))
    assert m["documents"] == 0 and "no inputs" in m["note"] and m["status"] == "finished"
    assert shard_paths(run.path / "web") == []


def test_web_workers_is_gone_and_says_where_parallelism_moved(tmp_path: Path) -> None:
    with pytest.raises(DatagenError, match="unknown config key 'web.workers'"):
        config(tmp_path, "web.workers=2")
    with pytest.raises(DatagenError, match="unknown config key 'web.dedup'"):
        config(tmp_path, "web.dedup=false")


def test_preflight_rejects_a_missing_input_before_any_stage_runs(tmp_path: Path) -> None:
    cfg = config(tmp_path, inputs=[tmp_path / "nowhere"])
    with pytest.raises(DatagenError, match="nowhere: no such file or folder"):
        web_stage.preflight(cfg)
    bad = tmp_path / "block.txt"
    bad.write_text("a b c\n", encoding="utf-8")
    with pytest.raises(DatagenError, match="block.txt:1"):
        web_stage.preflight(config(tmp_path, f"web.blocklist={bad}"))
    web_stage.preflight(config(tmp_path))  # the real inputs pass


def test_the_markers_hold_each_shards_stats_and_the_manifest_their_sum(first_run: tuple) -> None:
    run, m = first_run
    markers = sorted((run.path / "web" / "completions").glob("*.json"))
    per = [json.loads(p.read_text())["stats"] for p in markers]
    assert len(per) == m["shards_total"] == 3
    assert sum(s["funnel"]["read"]["documents"] for s in per) == m["funnel"][0]["documents"]
    kept = [
        sum(1 for _ in read_jsonl(run.path / f"web/part-{i:05d}.jsonl.zst", Document))
        for i in range(3)
    ]
    assert kept == [s["funnel"]["decontam"]["documents"] for s in per]


# as if pip had not installed lxml_html_clean (pip 23 on Python 3.11 skips it): importing
# trafilatura then fails inside lxml.html.clean, as it did for users
NO_LXML_HTML_CLEAN = "import sys; sys.modules['lxml_html_clean'] = None\n"


def test_a_missing_extractor_package_is_one_line_before_any_stage_runs(tmp_path: Path) -> None:
    script = NO_LXML_HTML_CLEAN + (
        "import runpy\n"
        # a teacher that fails fast: without the check, plan and generate would start
        f"sys.argv = ['datagen', 'run', 'stage=web', 'web.inputs=[{DOLMA0}]', 'plan.n=1', "
        "'teacher.base_url=http://127.0.0.1:9/v1', 'teacher.max_retries=0']\n"
        "runpy.run_module('pipeline.cli', run_name='__main__')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("datagen: error: web.extractor=trafilatura: cannot import it")
    assert "lxml_html_clean" in lines[0] and "pip install -e ." in lines[0]
    assert not (tmp_path / "runs").exists()  # no stage started
