"""`datagen ablate` end to end at a tiny size, on a run built by the real stages: the embedded
llama.cpp teacher writes the synthetic documents, the web pages are real (Common Crawl WARC,
Dolma CC JSONL, web_large HTML pages packed by scripts/web_large_warc.py), train_classifier
trains the default reference classifier; then the ablation trains real proxy models."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA, datagen

from pipeline.ablate import web_level
from pipeline.config import load_config
from pipeline.errors import DatagenError
from pipeline.records import Document

pytest.importorskip("llama_cpp", reason="the embedded teacher needs: pip install -e '.[local]'")
if importlib.util.find_spec("torch") is None:
    if os.environ.get("CI") == "true":
        pytest.fail("torch is not installed (CI must pip install torch==2.13.0)")
    pytest.skip("torch not installed (pip install torch==2.13.0)", allow_module_level=True)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CORPORA = ["raw", "heuristics", "classifier", "synthetic+web"]
# a tiny proxy model and few steps: the command end to end, not a measurement
TINY = [
    "ablate.steps=12",
    "ablate.seq_len=32",
    "ablate.batch=4",
    "ablate.d_model=32",
    "ablate.heads=2",
    "ablate.layers=1",
    "ablate.eval_windows=16",
]


def _run_args(pool: Path) -> list[str]:
    web = [
        SHARED_DATA / "web/commoncrawl_warc/resiliparse_CC-MAIN-2020-34_subset.warc.gz",
        SHARED_DATA
        / "web_large/cc_samples/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz",
        pool,
    ]
    return [
        "plan.n=4",
        "annotate.n=0",
        "teacher.max_tokens=160",
        "teacher.concurrency=2",
        "filter.drop_truncated=false",
        # most web pages score under 0.01 with the reference classifier, and the 135M teacher's
        # short documents under 0.001 (measured): a cut at 0.05 keeps a few pages, so that the
        # mix and its val split have documents, and still drops many as quality.low_score
        "web.min_quality=0.05",
        "emit.val_fraction=0.1",
        f"web.inputs=[{', '.join(map(str, web))}]",
    ]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """cwd of a run on which every stage finished (default run.name, runs/default)."""
    cwd = tmp_path_factory.mktemp("ablate")
    spec = importlib.util.spec_from_file_location("wl", ROOT / "scripts" / "web_large_warc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pool = mod.main(["--out", str(cwd / "pool" / "web_large.warc.gz"), "--limit", "40"])
    r = datagen("run", *_run_args(cwd / pool), cwd=cwd, timeout=1500)
    assert r.returncode == 0, r.stderr
    return cwd


def _manifest(cwd: Path, stage: str) -> dict:
    return json.loads((cwd / "runs/default" / stage / "manifest.json").read_text())


def test_the_default_reference_classifier_filters_the_run_and_web_drops_as_quality(
    finished_run,
):
    tc = _manifest(finished_run, "train_classifier")
    assert tc["source"] == "reference" and tc["applied"] and tc["heldout"]["f1"] >= 0.8
    web = _manifest(finished_run, "web")
    assert web["drop_reasons"].get("quality.low_score", 0) > 0
    assert (finished_run / "runs/default/web/dropped").is_dir()  # web.keep_dropped default


@pytest.fixture(scope="module")
def ablated(finished_run) -> tuple[Path, subprocess.CompletedProcess]:
    r = datagen("ablate", *TINY, cwd=finished_run, timeout=1200)
    assert r.returncode == 0, r.stderr
    return finished_run, r


def test_ablate_trains_every_corpus_at_one_budget_with_three_seeds(ablated):
    cwd, r = ablated
    folder = cwd / "runs/default/ablate"
    assert r.stdout.strip().splitlines()[-2:] == [
        "runs/default/ablate/manifest.json",
        "runs/default/ablate/ablation.svg",
    ]
    assert "reference eval" in r.stdout and "±" in r.stdout  # the table
    m = json.loads((folder / "manifest.json").read_text())
    assert m["status"] == "finished" and m["seeds"] == [1, 2, 3]
    budget = m["token_budget"]
    sizes = {c: v["tokens_available"] for c, v in m["corpora"].items()}
    assert sorted(sizes) == sorted(CORPORA) and budget == min(sizes.values())
    assert all(v["tokens"] == budget for v in m["corpora"].values())
    # each filter keeps a subset of the one before
    docs = {c: v["documents"] for c, v in m["corpora"].items()}
    assert docs["raw"] >= docs["heuristics"] >= docs["classifier"] > 0
    assert [row["corpus"] for row in m["table"]] == CORPORA
    for row in m["table"]:
        for ev in ("reference", "val"):
            assert row[ev]["n"] == 3 and row[ev]["std"] is not None
            assert math.isfinite(row[ev]["mean"])
    assert len(m["runs"]) == 12 and m["shards_run"] == list(range(12))
    for run in m["runs"]:
        assert run["tokens_seen"] == 12 * 4 * 32
        for ev in ("reference", "val"):
            assert run["eval_after"][ev] < run["eval_before"][ev]  # the model learned
    # the eval text: the documents train_classifier held out, and the emitted val split
    tc = _manifest(cwd, "train_classifier")
    ref = m["eval_sets"]["reference"]
    assert ref["source"].endswith("train_classifier/reference_eval.jsonl.zst")
    assert ref["documents"] == tc["reference"]["documents_per_split"]["eval"]
    emit = _manifest(cwd, "emit")
    assert m["eval_sets"]["val"]["documents"] == emit["splits"]["val"]["documents"]
    assert m["excluded_val_documents"] == emit["splits"]["val"]["documents"]
    svg = (folder / "ablation.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg
    # a finished ablation is not redone
    again = datagen("ablate", *TINY, cwd=cwd)
    assert again.returncode == 0 and "finished earlier" in again.stderr
    assert json.loads((folder / "manifest.json").read_text())["table"] == m["table"]


def test_the_review_page_shows_the_classifier_and_the_ablation(ablated):
    """`datagen review` on the ablated run: the reference classifier's held-out metrics and
    score histogram of each class, the web pages' scores kept vs dropped, and the ablation's
    table and plot, all as the manifests hold them."""
    from test_review import bars, plots, table

    from pipeline.ablate import fmt_summary

    cwd, _ = ablated
    r = datagen("review", cwd=cwd)
    assert r.returncode == 0, r.stderr
    page = (cwd / r.stdout.strip().splitlines()[-1]).read_text()
    tc = _manifest(cwd, "train_classifier")
    held, hs = tc["heldout"], tc["heldout_scores"]
    c = held["confusion"]
    assert table(page, "classifier-heldout")[1] == [
        str(held["n"]),
        str(held["precision"]),
        str(held["recall"]),
        str(held["f1"]),
        f"{held['accuracy']} ({held['majority_baseline_accuracy']})",
        f"{c['tp']} {c['fp']} {c['fn']} {c['tn']}",
    ]
    svgs = plots(page)
    heldout = svgs["held-out split: P(reference) of reference vs web examples"]
    assert bars(heldout) == {
        "reference": {i: n for i, n in enumerate(hs["positive"]) if n},
        "web": {i: n for i, n in enumerate(hs["negative"]) if n},
    }
    web = bars(svgs["web: classifier score of the reviewed documents, kept vs dropped"])
    assert sum(web["kept"].values()) > 0 and sum(web["dropped"].values()) > 0  # both sides
    m = json.loads((cwd / "runs/default/ablate/manifest.json").read_text())
    rows = table(page, "ablation-table")
    assert rows[0] == [
        "corpus", "documents (tokens) available", "reference eval loss", "val eval loss",
        "train loss (end)",
    ]  # fmt: skip
    assert rows[1:] == [
        [
            row["corpus"],
            f"{m['corpora'][row['corpus']]['documents']:,} "
            f"({m['corpora'][row['corpus']]['tokens_available']:,})",
            fmt_summary(row["reference"]),
            fmt_summary(row["val"]),
            fmt_summary(row["train_loss_end"]),
        ]
        for row in m["table"]
    ]
    plot = (cwd / "runs/default/ablate/ablation.svg").read_text()
    inline = page.split('id="ablation-plot">', 1)[1]
    assert inline.startswith("<svg") and plot[plot.find("<svg") :].strip() in page


def test_web_levels_follow_the_drop_reason_of_each_page(finished_run):
    """The corpora are read from the run's real web outputs: every page falls in one level."""
    from pipeline.runs import read_shards

    web = finished_run / "runs/default/web"
    pages = list(read_shards(web, Document)) + list(read_shards(web / "dropped", Document))
    levels = {web_level(d) for d in pages}
    assert levels == {0, 1, 2, 3}
    for d in pages:
        fam = (d.drop_reason or "").split(".")[0]
        if fam in ("extract", "lid") or d.drop_reason in ("precheck.language", "precheck.empty"):
            assert web_level(d) == 0
        elif fam == "precheck":  # Gopher's bounds before extraction: raw, with the visible text
            assert web_level(d) == (1 if d.text.strip() else 0)
        elif fam == "quality":
            assert web_level(d) == 2
        elif d.drop_reason is None:
            assert web_level(d) == 3


def test_a_killed_ablation_reruns_only_the_unfinished_models(ablated, tmp_path):
    cwd, _ = ablated
    shutil.copytree(cwd / "runs", tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs/default/ablate")
    args = [sys.executable, "-m", "pipeline.cli", "ablate", *TINY, "executor.workers=1"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    markers = tmp_path / "runs/default/ablate/runs/completions"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(list(markers.glob("*.json"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.stem) for p in markers.glob("*.json"))
    assert 2 <= len(done) < 12
    r = datagen("ablate", *TINY, "executor.workers=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "runs/default/ablate/manifest.json").read_text())
    assert m["shards_run"] == [i for i in range(12) if i not in done]
    first = json.loads((cwd / "runs/default/ablate/manifest.json").read_text())
    assert m["table"] == first["table"]  # the same models as an uninterrupted run


def test_corpora_that_need_dropped_pages_say_how_to_get_them(ablated, tmp_path):
    cwd, _ = ablated
    shutil.copytree(cwd / "runs", tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs/default/web/dropped")  # as web.keep_dropped=false leaves it
    shutil.rmtree(tmp_path / "runs/default/ablate")
    r = datagen("ablate", *TINY, cwd=tmp_path)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("datagen: error: ") and "web.keep_dropped=true" in line
    r = datagen("ablate", *TINY, "ablate.corpora=[classifier, synthetic+web]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_ablate_config_names_bad_corpora_in_one_line():
    with pytest.raises(DatagenError, match="corpora must be distinct names from raw, heuristics"):
        load_config(["ablate.corpora=[raw, cleaned]"])
    with pytest.raises(DatagenError, match="seeds must be distinct"):
        load_config(["ablate.seeds=[1, 1]"])
