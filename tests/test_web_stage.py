"""The web stage end to end on real WARCs: funnel accounting, provenance, the shared dedup
index with the synthetic data, the quality classifier, bad input."""

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
from web_testdata import DOLMA0, DOLMA1, RESILIPARSE, WAYBACK, openstax_texts

from filters.classifier import train_classifier
from filters.dedup import ExactDeduper, MinHashDeduper, MinHashParams
from pipeline.config import ClassifierConfig, PipelineConfig, load_config
from pipeline.errors import DatagenError
from pipeline.records import Document
from pipeline.runs import Run, read_shards, shard_paths
from pipeline.stages import web as web_stage
from pipeline.web.extract import Extractor, decode_html
from pipeline.web.readers import ReadStats, iter_warc

INPUTS = [DOLMA0, DOLMA1, RESILIPARSE]


def config(root: Path, *overrides: str, inputs: list[Path] | None = None) -> PipelineConfig:
    paths = ",".join(f"'{p}'" for p in (INPUTS if inputs is None else inputs))
    return load_config(
        [f"run.root={root}", "run.name=t", f"web.inputs=[{paths}]", "web.workers=1", *overrides]
    )


def finish_filter_stage(
    cfg: PipelineConfig, synthetic: dict[str, str] | None = None, model: Path | None = None
) -> Run:
    """A finished filter stage as the web stage reads it: the dedup index of kept synthetic
    docs (real ExactDeduper / MinHashDeduper) and the classifier model it used."""
    run = Run(cfg.run.root, cfg.run.name)
    folder = run.stage_dir("filter")
    if synthetic is not None:
        d = cfg.dedup
        ex = ExactDeduper()
        md = MinHashDeduper(
            MinHashParams(
                num_perm=d.num_perm,
                ngram=d.ngram,
                threshold=d.threshold,
                bands=d.bands,
                seed=cfg.seed,
            )
        )
        for doc_id, text in synthetic.items():
            ex.add(doc_id, text)
        md.add_batch(list(synthetic), list(synthetic.values()), [1.0] * len(synthetic))
        ex.save(folder / "dedup_index")
        md.save(folder / "dedup_index")
    run.write_manifest(
        "filter",
        {
            "stage": "filter",
            "status": "finished",
            "config_hash": "t",
            "classifier_model": str(model) if model else None,
        },
    )
    return run


def run_web(cfg: PipelineConfig, run: Run) -> dict[str, Any]:
    return web_stage.run(cfg, run, Console(file=io.StringIO()))


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fastText classifier: OpenStax textbook modules (positive) vs Wayback SEO
    directory pages (negative)."""
    ex = Extractor()
    seo = []
    for r in iter_warc(str(WAYBACK), ReadStats()):
        text = ex(decode_html(r.payload or b"", r.charset).text, r.url)
        if text:
            seo.append(text)
        if len(seo) == 40:
            break
    good = openstax_texts()[:40]
    path = tmp_path_factory.mktemp("clf") / "model.bin"
    train_classifier(
        good + seo,
        [True] * len(good) + [False] * len(seo),
        path,
        ClassifierConfig(dim=16, epoch=10),
        seed=1,
    )
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, Any]]:
    root = tmp_path_factory.mktemp("web")
    cfg = config(root, "web.keep_dropped=true", "web.workers=2")
    run = finish_filter_stage(cfg, synthetic={})
    return run, run_web(cfg, run)


def test_funnel_adds_up_every_record_kept_or_dropped_once(first_run: tuple) -> None:
    run, m = first_run
    kept = list(read_shards(run.path / "web", Document))
    dropped = list(read_shards(run.path / "web" / "dropped", Document))
    steps = {s["step"]: s for s in m["funnel"]}
    assert [s["step"] for s in m["funnel"]] == list(web_stage.Funnel().steps)
    assert steps["read"]["documents"] == len(kept) + len(dropped)
    assert steps["kept"]["documents"] == len(kept) == m["documents"] > 0
    assert len({d.id for d in kept} | {d.id for d in dropped}) == steps["read"]["documents"]
    assert Counter(d.drop_reason for d in dropped) == Counter(m["drop_reasons"])
    prev = None
    for s in m["funnel"]:
        if prev is not None:
            assert s["documents"] == prev["documents"] - sum(s["dropped"].values())
        prev = s
    assert steps["kept"]["tokens"] == sum(len(d.text.split()) for d in kept)
    # the records read are exactly the content records the readers saw
    types = m["reader"]["record_types"]
    assert steps["read"]["documents"] == sum(
        types.get(t, 0) for t in ("response", "resource", "conversion")
    )


def test_heavy_filtering_drops_non_english_and_low_quality(first_run: tuple) -> None:
    _, m = first_run
    reasons = m["drop_reasons"]
    assert reasons.get("lid.other_language", 0) > 0  # the multilingual CC 2020 subset
    assert any(r.startswith(("gopher_", "c4.", "fineweb.")) for r in reasons)
    steps = {s["step"]: s for s in m["funnel"]}
    assert 0 < steps["kept"]["documents"] < steps["read"]["documents"]


def test_kept_web_documents_carry_provenance_and_scores(first_run: tuple) -> None:
    run, _ = first_run
    kept = list(read_shards(run.path / "web", Document))
    for d in kept:
        assert d.source == "web" and d.language == "en" and d.drop_reason is None
        assert d.url and d.url.startswith("http")
        assert d.source_file and Path(d.source_file).name in {p.name for p in INPUTS}
        assert d.warc_record_id and d.warc_record_id.startswith("<urn:uuid:")
        assert d.offset is not None and d.fetch_date
        assert d.scores["lid.en"] >= 0.65
        assert {
            "gopher_quality.n_words",
            "c4.sentences",
            "fineweb.line_punct_ratio",
            "pii.emails",
        } <= set(d.scores)
        assert "@" not in d.text or "<EMAIL>" in d.text


def test_dropped_documents_keep_reason_and_scores(first_run: tuple) -> None:
    run, _ = first_run
    dropped = list(read_shards(run.path / "web" / "dropped", Document))
    lid_dropped = [d for d in dropped if d.drop_reason == "lid.other_language"]
    assert lid_dropped and all(d.scores["lid.en"] < 0.65 for d in lid_dropped)
    assert all(d.drop_reason for d in dropped)


def test_web_page_near_duplicating_a_synthetic_text_is_dropped(
    first_run: tuple, tmp_path: Path
) -> None:
    run, _ = first_run
    kept = sorted(read_shards(run.path / "web", Document), key=lambda d: -len(d.text))
    near, exact = kept[0], kept[1]
    words = near.text.split(" ")
    for i in (len(words) // 3, 2 * len(words) // 3):
        words[i] = words[i] + "s"  # two words changed: still a near duplicate
    synthetic = {"syn-near": " ".join(words), "syn-exact": exact.text.upper()}
    cfg = config(tmp_path, "web.keep_dropped=true")
    run2 = finish_filter_stage(cfg, synthetic=synthetic)
    m = run_web(cfg, run2)
    dropped = {d.id: d for d in read_shards(run2.path / "web" / "dropped", Document)}
    assert dropped[near.id].drop_reason == "dedup.near_synthetic"
    assert dropped[near.id].kept_id == "syn-near"
    assert dropped[exact.id].drop_reason == "dedup.exact_synthetic"
    assert dropped[exact.id].kept_id == "syn-exact"
    assert m["dedup"]["synthetic_in_index"] == 2
    # one index: the saved web index holds the synthetic docs and the kept web docs
    md = MinHashDeduper.load(run2.path / "web" / "dedup_index")
    assert {"syn-near", "syn-exact"} <= set(md.ids)
    assert len(md) == 2 + m["documents"]


def test_repeated_input_is_caught_as_web_duplicates(tmp_path: Path) -> None:
    copy = tmp_path / "again.warc.gz"
    shutil.copy(DOLMA0, copy)
    cfg = config(tmp_path, inputs=[DOLMA0, copy])
    run = finish_filter_stage(cfg)
    m = run_web(cfg, run)
    once = m["documents"]
    assert once > 0
    assert m["drop_reasons"]["dedup.exact_web"] == once
    assert m["notes"] and "not found" in m["notes"][0] + m["notes"][-1]


def test_quality_classifier_keeps_only_scores_above_min_quality(
    tmp_path: Path, quality_model: Path
) -> None:
    # min_quality=0: every document gets P(positive) stored, none is dropped for it
    cfg0 = config(tmp_path / "a", "web.min_quality=0")
    run0 = finish_filter_stage(cfg0, synthetic={}, model=quality_model)
    m0 = run_web(cfg0, run0)
    assert m0["quality"]["model"] == str(quality_model)
    probs = sorted(d.scores["quality.p_positive"] for d in read_shards(run0.path / "web", Document))
    assert len(probs) >= 4 and "quality.low_score" not in m0["drop_reasons"]
    cut = round((probs[len(probs) // 2 - 1] + probs[len(probs) // 2]) / 2, 6)
    cfg = config(tmp_path / "b", "web.keep_dropped=true", f"web.min_quality={cut}")
    run = finish_filter_stage(cfg, synthetic={}, model=quality_model)
    m = run_web(cfg, run)
    kept = list(read_shards(run.path / "web", Document))
    low = [
        d
        for d in read_shards(run.path / "web" / "dropped", Document)
        if d.drop_reason == "quality.low_score"
    ]
    assert kept and low
    assert all(d.scores["quality.p_positive"] >= cut for d in kept)
    assert all(d.scores["quality.p_positive"] < cut for d in low)
    assert len(kept) + len(low) == len(probs)
    steps = {s["step"]: s for s in m["funnel"]}
    assert steps["quality"]["dropped"] == {"quality.low_score": len(low)}


def test_truncated_input_is_counted_and_the_stage_finishes(tmp_path: Path) -> None:
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(DOLMA0.read_bytes()[: DOLMA0.stat().st_size // 2])
    cfg = config(tmp_path, inputs=[cut, DOLMA1])
    run = finish_filter_stage(cfg)
    m = run_web(cfg, run)
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
    run = finish_filter_stage(cfg)
    out = io.StringIO()
    m = web_stage.run(cfg, run, Console(file=out, width=300))
    assert m["reader"]["errors"] == {"empty_file": 1}
    assert f"web: {hollow}: empty file (nothing to read); skipped" in out.getvalue()
    assert m["funnel"][0]["documents"] > 0


def test_missing_input_fails_before_any_work(tmp_path: Path) -> None:
    cfg = config(tmp_path, inputs=[DOLMA0, tmp_path / "missing.warc.gz"])
    run = finish_filter_stage(cfg)
    with pytest.raises(DatagenError, match="missing.warc.gz: no such file"):
        run_web(cfg, run)
    assert not (run.path / "web").exists()


def test_web_needs_a_finished_filter_stage(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    with pytest.raises(DatagenError, match="stage 'filter' has not finished"):
        run_web(cfg, Run(cfg.run.root, cfg.run.name))


def test_no_inputs_finishes_with_an_empty_output(tmp_path: Path) -> None:
    cfg = config(tmp_path, inputs=[])
    run = finish_filter_stage(cfg)
    m = run_web(cfg, run)
    assert m["documents"] == 0 and "no inputs" in m["note"]
    assert shard_paths(run.path / "web") == []


def test_rerun_after_a_kill_removes_stale_shards(tmp_path: Path) -> None:
    cfg = config(tmp_path, inputs=[DOLMA1])
    run = finish_filter_stage(cfg)
    folder = run.stage_dir("web")
    stale = folder / "part-00042.jsonl.zst"
    stale.write_bytes(b"partial")
    m = run_web(cfg, run)
    assert not stale.exists()
    assert sum(1 for _ in read_shards(folder, Document)) == m["documents"]
    json.dumps(m)  # the manifest is plain JSON


def test_preflight_rejects_a_missing_input_before_any_stage_runs(tmp_path: Path) -> None:
    cfg = config(tmp_path, inputs=[tmp_path / "nowhere"])
    with pytest.raises(DatagenError, match="nowhere: no such file or folder"):
        web_stage.preflight(cfg)
    bad = tmp_path / "block.txt"
    bad.write_text("a b c\n", encoding="utf-8")
    with pytest.raises(DatagenError, match="block.txt:1"):
        web_stage.preflight(config(tmp_path, f"web.blocklist={bad}"))
    web_stage.preflight(config(tmp_path))  # the real inputs pass


def test_extraction_pool_shuts_down_when_the_consumer_stops_early() -> None:
    records = iter_warc(str(DOLMA0), ReadStats())
    stream = web_stage.prepared_stream(records, 2, "trafilatura", True, False)
    first = [next(stream) for _ in range(3)]
    stream.close()  # returns (the feeder thread is released), no hang
    assert len(first) == 3 and all(p.rec.url for p in first)


def test_a_lone_surrogate_in_jsonl_text_is_replaced_not_a_crash() -> None:
    from pipeline.web.readers import WebRecord

    web_stage._init_worker("trafilatura", True, False)
    text = json.loads('"Real text\\ud800 with a lone surrogate.\\n\\n  second line  "')
    p = web_stage.prepare(WebRecord(source_file="x.jsonl", offset=1, text=text))
    assert p.text == "Real text? with a lone surrogate.\nsecond line"
    Document(id="x", text=p.text).model_dump_json()  # serialisable


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


def test_a_missing_extractor_package_in_the_workers_is_one_error(tmp_path: Path) -> None:
    script = NO_LXML_HTML_CLEAN + (
        "from pipeline.errors import DatagenError\n"
        "from pipeline.stages import web\n"
        "from pipeline.web.readers import ReadStats, iter_warc\n"
        f"records = iter_warc({str(DOLMA0)!r}, ReadStats())\n"
        "try:\n"
        "    next(web.prepared_stream(records, 2, 'trafilatura', True, False))\n"
        "except DatagenError as e:\n"
        "    print('pool:', e)\n"
        "web._init_worker('trafilatura', True, False)  # what each worker runs first\n"
        "try:\n"
        "    web.prepare(next(records))\n"
        "except DatagenError as e:\n"
        "    print('worker:', e)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    out = r.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in out] == ["pool", "worker"]
    assert all("web.extractor=trafilatura: cannot import it" in ln for ln in out)
