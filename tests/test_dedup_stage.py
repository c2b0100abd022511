"""The dedup stage end to end (`datagen run stage=dedup` in a subprocess, real filter and web
stages before it) on real text: exact and near copies, the highest classifier score kept, a
copy pointing at the document finally kept, a web page copying a synthetic textbook; and the
acceptance tests: local 1 and 2 workers and Ray write the same bytes, a killed stage reruns
only its unfinished tasks."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA, datagen
from filters_testdata import ccnet_docs, chunks, openstax_modules, web_pages, wikitext_articles
from test_filter_stage import base_docs, edit, prepare_run

from filters.classifier import train_classifier
from pipeline.records import Document
from pipeline.runs import read_shards

CCNET = sorted((SHARED_DATA / "web" / "ccnet_text").glob("*.jsonl.gz"))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    pos = [c for m in openstax_modules() for c in chunks(m["text"])]
    neg = [c for t in web_pages() for c in chunks(t)]
    path = tmp_path_factory.mktemp("model") / "quality.bin"
    train_classifier(pos + neg, [True] * len(pos) + [False] * len(neg), path, seed=3)
    return path


def edit_in_place(text: str, rate: float, seed: int) -> str:
    """Replace a fraction ``rate`` of the words by other words of the text, keeping the lines
    (a page's line structure is what the web filters look at)."""
    rng = random.Random(seed)
    lines = [ln.split(" ") for ln in text.split("\n")]
    spots = [(i, k) for i, ln in enumerate(lines) for k in range(len(ln)) if ln[k]]
    for i, k in rng.sample(spots, max(1, int(rate * len(spots)))):
        lines[i][k] = lines[rng.randrange(len(lines))][0] or "the"
    return "\n".join(" ".join(ln) for ln in lines)


def prose_textbook() -> str:
    """The prose lines (sentences, >= 5 words) of a real OpenStax module that base_docs does
    not use: a textbook whose every line a web page could carry through the C4 line rules."""
    used = {d.text for d in base_docs()}
    for m in openstax_modules():
        lines = [ln.strip() for ln in m["text"].split("\n")]
        prose = [ln for ln in lines if ln.endswith((".", "?", "!")) and len(ln.split()) >= 5]
        text = "\n".join(prose)
        if m["text"] not in used and "{" not in text and len(text.split()) > 600:
            return text
    raise AssertionError("no prose module")


def _prob(d: Document) -> float:
    return d.scores.get("classifier.prob", 0.0)


def _rank(d: Document) -> tuple[float, str]:
    return (-_prob(d), d.id)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_dedup_stage_drops_exact_and_near_copies_of_synthetic_and_web_documents(tmp_path, model):
    docs = base_docs()
    by_id = {d.id: d for d in docs}
    # an exact copy of each near-duplicate pair member: one of the pair is dropped as a near
    # duplicate, and its copy must point at the document finally kept, not at its original
    docs += [
        Document(id=f"zz-{i}-copy", text=by_id[i].text.upper() + "\n", finish_reason="stop")
        for i in ("s002", "zz-near")
    ]
    prose = Document(id="s-prose", text=prose_textbook(), format="textbook", finish_reason="stop")
    docs.append(prose)
    pages = tmp_path / "pages.jsonl"
    overrides = [
        f"run.root={tmp_path / 'runs'}",
        f"classifier.model_path={model}",
        "classifier.min_score=0.0",
        f"web.inputs=['{pages}', '{CCNET[0]}']",
        "web.min_quality=0",
        "executor.shard_docs=8",  # several shards, the pairs across shards
        "executor.workers=1",
    ]
    run = prepare_run(tmp_path, docs, overrides)
    r = datagen("run", "stage=filter", *overrides, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    filtered = {d.id: d for d in read_shards(run.path / "filter", Document)}
    assert prose.id in filtered
    # a web page copying a synthetic textbook: 1% of its words changed, and two lines of a
    # real Common Crawl page appended
    extra = [ln for ln in ccnet_docs()[0].split("\n") if len(ln.split()) >= 8][:2]
    page = edit_in_place(prose.text, 0.01, 9) + "\n" + "\n".join(extra)
    url = "https://example.org/copied-textbook"
    pages.write_text(json.dumps({"text": page, "url": url}) + "\n")
    r = datagen("run", "stage=dedup", *overrides, cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    web = {d.id: d for d in read_shards(run.path / "web", Document)}
    copied = next(d for d in web.values() if d.url == url)  # the web stage kept the page
    m = _manifest(run.path / "dedup")
    kept = {d.id: d for d in read_shards(run.path / "dedup", Document)}
    dropped = {d.id: d for d in read_shards(run.path / "dedup/dropped", Document)}
    assert m["input"] == len(filtered) + len(web) == len(kept) + len(dropped)
    assert m["kept"] == len(kept) and m["dropped"] == len(dropped)
    assert {**filtered, **web}.keys() == kept.keys() | dropped.keys()
    for d in kept.values():  # kept records pass through unchanged
        assert d == {**filtered, **web}[d.id]
    reasons: dict[str, int] = {}
    for d in dropped.values():
        reasons[d.drop_reason] = reasons.get(d.drop_reason, 0) + 1
        assert d.cluster_id and d.kept_id in kept
        assert _rank(kept[d.kept_id]) <= _rank(d)  # the highest classifier score is kept
    assert reasons == m["drop_reasons"] == {"dedup.exact": 3, "dedup.near": 2}
    assert m["exact_dropped"] == 3 and m["near_dropped"] == 2

    # exact: an upper-cased, re-spaced copy of s001
    pair = sorted((filtered["s001"], filtered["zz-exact"]), key=_rank)
    assert dropped[pair[1].id].drop_reason == "dedup.exact"
    assert dropped[pair[1].id].kept_id == pair[0].id
    # near: s002 and its 1% edit, each with an exact copy; one cluster, one document kept
    cluster = [filtered[i] for i in ("s002", "zz-near", "zz-s002-copy", "zz-zz-near-copy")]
    winner = min(cluster, key=_rank)
    assert winner.id in kept
    ids = {dropped[d.id].cluster_id for d in cluster if d is not winner}
    assert len(ids) == 1
    copies = {"s002": "zz-s002-copy", "zz-near": "zz-zz-near-copy"}
    copies |= {v: k for k, v in copies.items()}
    for d in cluster:
        if d is winner:
            continue
        assert dropped[d.id].kept_id == winner.id  # a copy points at the finally kept doc
        twin = filtered[copies[d.id]]
        best_of_two = min((d, twin), key=_rank)
        assert dropped[d.id].drop_reason == (
            "dedup.near" if best_of_two is d and twin is not winner else "dedup.exact"
        )
    # the web page copying a synthetic textbook: a cross-source near duplicate
    assert dropped[copied.id].drop_reason == "dedup.near"
    assert dropped[copied.id].kept_id == prose.id
    assert m["cross_source"] == {"web_dropped_for_synthetic": 1, "synthetic_dropped_for_web": 0}
    assert m["by_source"]["web"]["near_dropped"] == 1
    assert m["by_source"]["synthetic"]["input"] == len(filtered)
    assert m["candidate_pairs"] >= m["verified_pairs"] == 2
    assert (m["bands"], m["rows"], m["threshold"]) == (17, 6, 0.8)
    assert m["decision_curve"]["0.75"] == 0.0 and m["candidate_curve"]["0.8"] >= 0.99
    assert not (run.path / "dedup" / ".work").exists()  # artefacts removed when finished


def test_a_bad_dedup_config_is_one_error_line_before_any_stage_runs(tmp_path):
    r = datagen("run", "stage=dedup", f"run.root={tmp_path}", "dedup.bands=500", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "dedup.bands: 500 must be 2..dedup.num_perm (112)" in r.stderr
    assert not (tmp_path / "default").exists()


# --------------------------------------------------------------------------- acceptance
SHARD = "executor.shard_docs=20"
COUNTS = (
    "input",
    "kept",
    "dropped",
    "drop_reasons",
    "clusters",
    "candidate_pairs",
    "verified_pairs",
    "by_source",
    "cross_source",
    "candidates_by_jaccard",
)


def corpus_docs() -> list[Document]:
    """~1,000 real paragraphs: WikiText and OpenStax pieces, each with a lightly edited copy
    (J ~0.9), a heavily edited one (J ~0.5) and, for every fifth, an exact copy."""
    texts = [p for a in wikitext_articles()[:20] for p in a.split("\n\n") if len(p) > 600]
    texts += [c for m in openstax_modules()[:30] for c in chunks(m["text"], 800)]
    texts = texts[:250]
    docs = []
    for i, t in enumerate(texts):
        docs.append(Document(id=f"d-{i:04d}", text=t, finish_reason="stop"))
        docs.append(Document(id=f"e1-{i:04d}", text=edit(t, 0.02, i), finish_reason="stop"))
        docs.append(Document(id=f"e2-{i:04d}", text=edit(t, 0.12, i), finish_reason="stop"))
        if i % 5 == 0:
            docs.append(Document(id=f"x-{i:04d}", text=t.upper(), finish_reason="stop"))
    return docs


def _args(root: Path) -> list[str]:
    return [
        f"run.root={root / 'runs'}",
        "filter.min_chars=100",
        "filter.gopher_quality.min_words=20",
        "decontam.enabled=false",
        f"web.inputs=[{','.join(repr(str(p)) for p in CCNET)}]",
        SHARD,
    ]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A run whose filter and web stages finished on real text (the dedup stage's input)."""
    root = tmp_path_factory.mktemp("template")
    prepare_run(
        root,
        corpus_docs(),
        _args(root),
        stages=("plan", "generate", "annotate", "train_classifier"),
    )
    for stage in ("filter", "web"):  # web no longer needs filter: both are run
        r = datagen("run", f"stage={stage}", *_args(root), "executor.workers=2", cwd=root)
        assert r.returncode == 0, r.stderr
    return root


def _copy(template: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(template / "runs", dest / "runs")
    return dest


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("part-*.jsonl.zst"))
    }


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory) -> Path:
    """An uninterrupted run with one in-process worker."""
    root = _copy(template, tmp_path_factory.mktemp("ref"))
    r = datagen("run", "stage=dedup", *_args(root), "executor.workers=1", cwd=root)
    assert r.returncode == 0, r.stderr
    return root / "runs/default/dedup"


def _same_as_reference(template: Path, reference: Path, root: Path, *args: str) -> dict:
    _copy(template, root)
    r = datagen("run", "stage=dedup", *_args(root), *args, cwd=root)
    assert r.returncode == 0, r.stderr
    out = root / "runs/default/dedup"
    assert _files(out) == _files(reference)
    m, ref = _manifest(out), _manifest(reference)
    assert {k: m[k] for k in COUNTS} == {k: ref[k] for k in COUNTS}
    return m


def test_local_1_and_2_workers_and_more_reduce_tasks_write_the_same_bytes(
    template, reference, tmp_path
):
    ref = _manifest(reference)
    assert ref["shards_total"] > 10 and len(ref["shards_run"]) == ref["shards_total"]
    assert ref["exact_dropped"] > 0 and ref["near_dropped"] > 0 and ref["kept"] > 0
    assert ref["by_source"]["web"]["input"] > 0 and ref["by_source"]["synthetic"]["input"] > 0
    _same_as_reference(template, reference, tmp_path / "local2", "executor.workers=2")
    # several key ranges per band and several verify tasks: the same result
    m = _same_as_reference(
        template, reference, tmp_path / "ranges", "executor.workers=2", "dedup.reduce_docs=300"
    )
    assert m["rounds"]["verify"]["tasks"] > 1
    assert m["rounds"]["buckets"]["tasks"] > ref["rounds"]["buckets"]["tasks"]


def test_without_exact_dedup_the_copies_are_near_duplicates_of_the_same_clusters(
    template, reference, tmp_path
):
    root = _copy(template, tmp_path)
    r = datagen("run", "stage=dedup", *_args(root), "dedup.exact=false", cwd=root)
    assert r.returncode == 0, r.stderr
    out, ref = root / "runs/default/dedup", _manifest(reference)
    m = _manifest(out)
    assert m["exact_dropped"] == 0 and m["near_dropped"] == ref["dropped"]
    assert m["clusters"] == ref["clusters"]
    kept = {k: v for k, v in _files(out).items() if not k.startswith("dropped")}
    assert kept == {k: v for k, v in _files(reference).items() if not k.startswith("dropped")}
    dropped = {d.id: d for d in read_shards(out / "dropped", Document)}
    for d in read_shards(reference / "dropped", Document):
        assert dropped[d.id].kept_id == d.kept_id and dropped[d.id].drop_reason == "dedup.near"


def test_ray_writes_the_same_bytes_as_local(template, reference, tmp_path, ray_address):
    args = ("executor.kind=ray", f"executor.address={ray_address}")
    _same_as_reference(template, reference, tmp_path / "ray", *args)


def _start(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "stage=dedup", *_args(root), *args],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_markers(folder: Path, at_least: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if len(list((folder / "completions").glob("*.json"))) >= at_least:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.002)
    raise AssertionError(f"no completion markers appeared in {folder}")


def _snapshot(folder: Path, pattern: str) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of the output of each task that has a completion marker."""
    out = {}
    for m in (folder / "completions").glob("*.json"):
        for p in folder.glob(pattern.format(m.stem)):
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.mark.parametrize(
    ("round_", "folder", "outputs"),
    [
        ("sign", ".work/sign", "{}/*"),  # mid-way through the map over input shards
        ("apply", ".", "part-{}.jsonl.zst"),  # mid-way through writing the output shards
    ],
)
def test_a_killed_stage_reruns_only_its_unfinished_tasks(
    template, reference, tmp_path, round_, folder, outputs
):
    root = _copy(template, tmp_path)
    stage = root / "runs/default/dedup"
    where = stage / folder
    proc = _start(root, "executor.workers=2")
    _wait_markers(where, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    total = _manifest(reference)["rounds"][round_]["tasks"]
    done = {int(p.stem) for p in (where / "completions").glob("*.json")}
    assert 0 < len(done) < total, "the kill came too late or too early"
    before = _snapshot(where, outputs)
    r = datagen("run", "stage=dedup", *_args(root), "executor.workers=2", cwd=root)
    assert r.returncode == 0, r.stderr
    m = _manifest(stage)
    assert set(m["rounds"][round_]["ran"]) == set(range(total)) - done
    if round_ == "apply":  # the rounds before it had finished: nothing of them was redone
        assert all(m["rounds"][k]["ran"] == [] for k in ("sign", "buckets", "verify"))
        after = _snapshot(where, outputs)
        assert {k: after[k] for k in before} == before  # finished shards were not rewritten
    assert _files(stage) == _files(reference)
    assert {k: m[k] for k in COUNTS} == {k: _manifest(reference)[k] for k in COUNTS}


STAGE_ONLY = (
    "import json, sys; from rich.console import Console; from pipeline.config import load_config;"
    "from pipeline.runs import Run; from pipeline.stages import dedup;"
    "cfg = load_config(sys.argv[1:]);"
    "m = dedup.run(cfg, Run(cfg.run.root, cfg.run.name), Console(quiet=True));"
    "print(json.dumps(m))"
)


def test_a_rerun_with_another_reduce_split_after_a_kill_equals_an_uninterrupted_run(
    template, reference, tmp_path
):
    """dedup.reduce_docs shapes the reduce tasks, not the output (it is not part of the
    stage's identity): a killed stage resumed with another value must not take the finished
    tasks of one split for those of the other. (The stage alone, without the driver: the
    web stage's identity still holds every dedup key.)"""
    root = _copy(template, tmp_path)
    stage = root / "runs/default/dedup"
    cmd = [sys.executable, "-c", STAGE_ONLY, *_args(root), "executor.workers=2"]
    proc = subprocess.Popen(
        [*cmd, "dedup.reduce_docs=300"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_markers(stage, 2, proc)  # the apply round: buckets and verify have finished
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["rounds"]["sign"]["ran"] == []  # the shards' artefacts do not depend on the split
    assert m["rounds"]["buckets"]["ran"] == list(range(m["rounds"]["buckets"]["tasks"]))
    assert _files(stage) == _files(reference)
    assert {k: m[k] for k in COUNTS} == {k: _manifest(reference)[k] for k in COUNTS}
