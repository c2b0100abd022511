"""The filter stage end to end (`datagen run stage=filter` in a subprocess) on Documents built from
real text, with a fastText model trained in the test; and a killed stage rerunning to the same
output."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard
from conftest import datagen
from filters_testdata import chunks, gsm8k_items, openstax_modules, web_pages, wikitext_articles

from filters.classifier import train_classifier
from pipeline.config import load_config
from pipeline.records import Document
from pipeline.runs import Run, read_shards
from pipeline.stages import BY_NAME, stage_hash


def prepare_run(
    root: Path,
    docs: list[Document],
    overrides: list[str],
    stages: tuple[str, ...] = ("plan", "generate"),
) -> Run:
    """Write generate's outputs and finished manifests for ``stages`` (hashes as the driver
    computes them), as if those stages had run."""
    cfg = load_config(overrides)
    run = Run(cfg.run.root, cfg.run.name)
    gen = run.stage_dir("generate")
    (gen / "outputs.jsonl").write_text("".join(d.model_dump_json() + "\n" for d in docs))
    for name in stages:
        run.stage_dir(name)
        h = stage_hash(cfg, run, BY_NAME[name])
        run.write_manifest(name, {"stage": name, "status": "finished", "config_hash": h})
    return run


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    pos = [c for m in openstax_modules() for c in chunks(m["text"])]
    neg = [c for t in web_pages() for c in chunks(t)]
    path = tmp_path_factory.mktemp("model") / "quality.bin"
    train_classifier(pos + neg, [True] * len(pos) + [False] * len(neg), path, seed=3)
    return path


def edit(text: str, rate: float, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, int(rate * len(words)))):
        words[i] = words[rng.randrange(len(words))]
    return " ".join(words)


def base_docs() -> list[Document]:
    mods = [m for m in openstax_modules() if len(m["text"]) > 1500][:30]
    docs = [
        Document(
            id=f"s{i:03d}",
            text=m["text"],
            topic=m["title"],
            finish_reason="stop",
            required_words=m["text"].split()[10:12] + ["zebra"],
        )
        for i, m in enumerate(mods)
    ]
    q = gsm8k_items()[42]
    docs += [
        Document(id="zz-exact", text="  " + mods[1]["text"].upper() + "\n", finish_reason="stop"),
        Document(id="zz-near", text=edit(mods[2]["text"], 0.01, 1), finish_reason="stop"),
        Document(
            id="zz-gsm8k",
            text=mods[3]["text"] + "\n\nExercise. " + q["question"] + "\n" + q["answer"],
            finish_reason="stop",
        ),
        Document(id="zz-trunc", text=mods[4]["text"], finish_reason="length"),
        Document(
            id="zz-lines",
            text="\n".join([ln for ln in mods[5]["text"].splitlines() if ln.strip()][:6] * 5),
            finish_reason="stop",
        ),
    ]
    return docs


def read_zst_lines(folder: Path) -> list[str]:
    out = []
    for p in sorted(folder.glob("part-*.jsonl.zst")):
        raw = zstandard.ZstdDecompressor().decompress(p.read_bytes(), max_output_size=1 << 30)
        out += raw.decode().splitlines()
    return out


def test_filter_stage_keeps_and_drops_with_reasons_and_scores_every_record(tmp_path, model):
    overrides = [
        f"run.root={tmp_path / 'runs'}",
        f"classifier.model_path={model}",
        "classifier.min_score=0.0",
    ]
    docs = base_docs()
    run = prepare_run(tmp_path, docs, overrides)
    r = datagen("run", "stage=filter", *overrides, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((run.path / "filter/manifest.json").read_text())
    assert m["status"] == "finished"
    reasons = m["drop_reasons"]
    assert reasons["decontam.gsm8k"] == 1
    assert not any(r.startswith("dedup.") for r in reasons)  # dedup is its own stage
    assert m["kept"] + m["dropped"] == m["input"] == len(docs)
    assert m["decontam"]["benchmarks"]["gsm8k"]["docs_dropped"] == 1
    assert m["classifier_model"] == str(model)
    assert m["constraints"]["satisfaction"] < 1.0  # "zebra" is in none of the texts
    steps = [row["step"] for row in m["funnel"]]
    assert steps == ["scores", "decontam", "code", "heuristics", "constraints", "quality"]
    assert m["funnel"][-1]["documents"] == m["kept"]

    kept = list(read_shards(run.path / "filter", Document))
    dropped = {d.id: d for d in read_shards(run.path / "filter/dropped", Document)}
    assert len(kept) == m["kept"] and len(dropped) == m["dropped"]
    # the classifier probability and the constraint coverage are on every record
    for d in [*kept, *dropped.values()]:
        assert "classifier.prob" in d.scores and "constraints.coverage" in d.scores
    assert all(d.drop_reason is None for d in kept)
    counted: dict[str, int] = {}
    for d in dropped.values():
        counted[d.drop_reason] = counted.get(d.drop_reason, 0) + 1
    assert counted == reasons
    assert dropped["zz-gsm8k"].drop_reason == "decontam.gsm8k"
    assert dropped["zz-trunc"].drop_reason == "truncated.finish_length"
    assert dropped["zz-lines"].drop_reason == "gopher_repetition.dup_line_frac"


def test_classifier_min_score_drops_low_probability_records(tmp_path, model):
    docs = base_docs()[:20] + [
        Document(id=f"w{i:02d}", text=t, finish_reason="stop")
        for i, t in enumerate(web_pages()[:20])
    ]
    overrides = [
        f"run.root={tmp_path / 'runs'}",
        f"classifier.model_path={model}",
        "classifier.min_score=0.5",
        "filter.gopher_quality.min_words=0",
        "decontam.enabled=false",
    ]
    run = prepare_run(tmp_path, docs, overrides)
    r = datagen("run", "stage=filter", *overrides, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    kept = list(read_shards(run.path / "filter", Document))
    dropped = list(read_shards(run.path / "filter/dropped", Document))
    assert all(d.scores["classifier.prob"] >= 0.5 for d in kept)
    low = [d for d in dropped if d.drop_reason == "quality.low_score"]
    assert low and all(d.scores["classifier.prob"] < 0.5 for d in low)
    assert sum(d.id.startswith("s") for d in kept) > sum(d.id.startswith("w") for d in kept)


def test_missing_classifier_model_is_a_one_line_error(tmp_path):
    overrides = [f"run.root={tmp_path / 'runs'}", f"classifier.model_path={tmp_path}/none.bin"]
    prepare_run(tmp_path, base_docs()[:3], overrides)
    r = datagen("run", "stage=filter", *overrides, cwd=tmp_path)
    assert r.returncode == 2
    assert "none.bin: fastText model file not found" in r.stderr
    assert "Traceback" not in r.stderr


def big_docs() -> list[Document]:
    texts = [p for a in wikitext_articles() for p in a.split("\n\n") if len(p) > 400]
    texts += [c for m in openstax_modules() for c in chunks(m["text"], 400)]
    docs = []
    for k in range(4):  # originals and edited copies: real dedup work
        docs += [
            Document(
                id=f"d{k}-{i:05d}", text=t if k == 0 else edit(t, 0.02 * k, i), finish_reason="stop"
            )
            for i, t in enumerate(texts)
        ]
    return docs


def test_killed_filter_stage_reruns_to_the_same_output(tmp_path, model):
    docs = big_docs()
    outs = []
    for name, kill in (("killed", True), ("clean", False)):
        base = tmp_path / name
        base.mkdir()
        overrides = [
            f"run.root={base / 'runs'}",
            f"classifier.model_path={model}",
            "classifier.min_score=0.2",
        ]
        run = prepare_run(base, docs, overrides)
        if kill:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "run", "stage=filter", *overrides],
                cwd=base,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ},
                start_new_session=True,
            )
            manifest = run.path / "filter/manifest.json"
            while proc.poll() is None and not (
                manifest.exists() and "running" in manifest.read_text()
            ):
                time.sleep(0.05)
            time.sleep(1.5)  # let it write part of its output
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            assert json.loads(manifest.read_text())["status"] == "running"  # it did not finish
        r = datagen("run", "stage=filter", *overrides, cwd=base)
        assert r.returncode == 0, r.stderr
        folder = run.path / "filter"
        outs.append(
            (
                read_zst_lines(folder),
                read_zst_lines(folder / "dropped"),
            )
        )
        m = json.loads((folder / "manifest.json").read_text())
        assert m["status"] == "finished" and m["input"] == len(docs)
    assert outs[0] == outs[1]


def test_unparseable_teacher_ratings_are_failures_and_the_pipeline_still_filters(tmp_path):
    """Fault injection: a teacher that never writes a score line (and fails some requests
    once) -> every sampled doc is a recorded failure, never a 0; train_classifier finishes with
    a note and no model; filter runs without the classifier decision."""
    from fake_openai import FakeOpenAI, ServerThread

    fake = FakeOpenAI(script=lambda key: ["500"] if int(key, 16) % 3 == 0 else [])
    with ServerThread(fake) as srv:
        overrides = [
            f"run.root={tmp_path / 'runs'}",
            f"teacher.base_url={srv.url}",
            "teacher.model=fake-model",
            "annotate.n=6",
            "teacher.max_retries=2",
            "teacher.backoff_initial_s=0.05",
            "teacher.backoff_max_s=0.1",
        ]
        run = prepare_run(tmp_path, base_docs()[:10], overrides)
        r = datagen("run", "stage=filter", *overrides, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        ann = json.loads((run.path / "annotate/manifest.json").read_text())
        assert ann["sampled"] == 6 and ann["rated"] == 0 and ann["failed"] == 6
        assert ann["failure_reasons"] == {"unparseable": 6}
        assert ann["score_histogram"] == {str(k): 0 for k in range(6)}
        tc = json.loads((run.path / "train_classifier/manifest.json").read_text())
        assert tc["status"] == "finished" and tc["model_path"] is None
        assert "no parseable ratings" in tc["note"]
        flt = json.loads((run.path / "filter/manifest.json").read_text())
        assert flt["classifier"]["applied"] is False and flt["classifier_model"] is None
        assert flt["kept"] > 0
        requests = fake.total
        r2 = datagen("run", "stage=annotate", *overrides, cwd=tmp_path)
        assert r2.returncode == 0 and fake.total == requests  # finished: nothing re-requested


def test_train_classifier_learns_from_ratings_and_filter_uses_the_run_model(tmp_path):
    """Ratings by source (OpenStax pieces rated 4, Common Crawl page text rated 1) stand in for
    the teacher's; train_classifier trains on them with a held-out split, filter scores with
    the model in the run directory."""
    from pipeline.records import utc_now
    from pipeline.stages.annotate import ANNOTATIONS, Annotation

    pos = [c for m in openstax_modules() for c in chunks(m["text"], 800)][:150]
    neg = [c for t in web_pages() for c in chunks(t, 800)][:100]
    docs = [Document(id=f"p{i:03d}", text=t, finish_reason="stop") for i, t in enumerate(pos)]
    docs += [Document(id=f"n{i:03d}", text=t, finish_reason="stop") for i, t in enumerate(neg)]
    overrides = [f"run.root={tmp_path / 'runs'}", "annotate.n=250", "decontam.enabled=false"]
    run = prepare_run(tmp_path, docs, overrides, stages=("plan", "generate", "annotate"))
    anns = [
        Annotation(
            id=d.id,
            score=4 if d.id.startswith("p") else 1,
            justification="",
            response="",
            created_at=utc_now(),
        )
        for d in docs
    ]
    (run.path / "annotate" / ANNOTATIONS).write_text(
        "".join(a.model_dump_json() + "\n" for a in anns)
    )
    r = datagen("run", "stage=filter", *overrides, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tc = json.loads((run.path / "train_classifier/manifest.json").read_text())
    assert tc["trained"] and tc["n_labels"] == len(docs) and tc["n_positive"] == len(pos)
    held = tc["heldout"]
    assert held["n"] == tc["n_test"] > 0
    assert held["accuracy"] > held["majority_baseline_accuracy"]
    assert set(held["confusion"]) == {"tp", "fp", "fn", "tn"}
    # 250 labels: a quantized model of a few MB (fastText's defaults wrote 515 MB here); the
    # filter stage loads it by the name in the manifest
    model = run.path / "train_classifier/model.ftz"
    assert tc["model_file"] == "model.ftz" and tc["quantized"]
    assert model.stat().st_size == tc["model_bytes"] < 8_000_000
    assert not (run.path / "train_classifier/model.bin").exists()
    flt = json.loads((run.path / "filter/manifest.json").read_text())
    assert flt["classifier_model"] == str(model) and flt["classifier"]["applied"]
    kept = list(read_shards(run.path / "filter", Document))
    assert sum(d.id.startswith("p") for d in kept) > sum(d.id.startswith("n") for d in kept)
