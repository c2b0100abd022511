"""The reference-text quality classifier (classifier.source=reference): its training data
(pieces, dedup, pairing, splits) on the shipped reference set and real web pages, and the
train_classifier stage run for real on the default Common Crawl WARCs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from filters_testdata import web_pages
from rich.console import Console

from pipeline.classifier_data import (
    EVAL,
    TEST,
    TRAIN,
    Example,
    RefDoc,
    cut_examples,
    deduplicate,
    pair,
    pieces,
    read_reference,
    reference_split,
)
from pipeline.config import load_config
from pipeline.errors import DatagenError
from pipeline.records import Document
from pipeline.runs import Run, read_jsonl, read_shards
from pipeline.stages import BY_NAME, _run_one, stage_hash

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "reference" / "openstax.jsonl.gz"


def shipped() -> list[dict]:
    with gzip.open(SHIPPED, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_the_shipped_reference_set_is_small_attributed_cc_by_text():
    rows = shipped()
    assert SHIPPED.stat().st_size < 3_000_000  # a few MB at most
    assert len({r["id"] for r in rows}) == len(rows)
    books = {r["book"] for r in rows}
    assert len(books) == 8 and "Introduction to Python Programming" in books
    for r in rows:
        assert r["license"] == "CC BY 4.0"
        assert r["attribution"] == f"{r['book']}, OpenStax, CC BY 4.0"
        assert len(r["text"].split()) >= 150
    provenance = (SHIPPED.parent / "PROVENANCE.md").read_text()
    assert all(f"{b}, OpenStax, CC BY 4.0" in provenance for b in books)


def test_pieces_are_near_equal_and_within_bounds():
    text = shipped()[0]["text"]
    n = len(text.split())
    got = pieces(text, 256, 50)
    assert sum(len(p) for p in got) == n  # nothing lost: pieces are consecutive
    assert all(len(p) <= 256 for p in got)
    assert max(map(len, got)) - min(map(len, got)) <= 1
    assert pieces("too short " * 10, 256, 50) == []


def test_pairs_are_balanced_per_split_and_equal_in_length():
    refs = [(r["id"], TRAIN if i % 4 else TEST, r["text"]) for i, r in enumerate(shipped()[:40])]
    pages = [(f"p{i}", TRAIN if i % 4 else TEST, t) for i, t in enumerate(web_pages())]
    ex = cut_examples(refs, True, 256, 50) + cut_examples(pages, False, 256, 50)
    out = pair(ex, 10_000, seed=3)
    for split in (TRAIN, TEST):
        pos = sorted(e.words for e in out if e.split == split and e.label)
        neg = sorted(e.words for e in out if e.split == split and not e.label)
        assert pos == neg and pos  # same count, same length distribution
        assert len(pos) == min(
            sum(e.split == split and e.label for e in ex),
            sum(e.split == split and not e.label for e in ex),
        )
    for e in out:  # a paired piece is a prefix of a piece that was cut
        assert len(e.text.split()) == e.words
    assert pair(ex, 10_000, seed=3) == out  # seeded
    assert len([e for e in pair(ex, 5, seed=3) if e.label]) == 10  # 5 per split


def test_dedup_drops_the_web_copy_of_reference_text_and_near_copies():
    ref = shipped()[5]
    page = web_pages()[0]
    words = ref["text"].split()[:200]
    near = list(words)
    near[100] = "different"  # one word changed: a near duplicate
    ex = [
        Example(text=" ".join(words), label=True, split=TRAIN, doc=ref["id"], words=200),
        Example(text=" ".join(words), label=False, split=TRAIN, doc="copy", words=200),
        Example(text=" ".join(near), label=False, split=TEST, doc="near", words=200),
        Example(text=page, label=False, split=TRAIN, doc="page", words=len(page.split())),
    ]
    kept, counts = deduplicate(ex, load_config())
    assert [e.doc for e in kept] == [ref["id"], "page"]
    assert counts == {"exact_positive_negative": 1, "near_positive_negative": 1}


def test_reference_split_holds_out_whole_documents_at_the_configured_fractions():
    ids = [r["id"] for r in shipped()]
    splits = [reference_split(i, 1234, 0.1, 0.2) for i in ids]
    assert splits == [reference_split(i, 1234, 0.1, 0.2) for i in ids]  # seeded, per id
    share = {s: splits.count(s) / len(ids) for s in (EVAL, TEST, TRAIN)}
    assert 0.04 < share[EVAL] < 0.18 and 0.1 < share[TEST] < 0.3
    assert {reference_split(i, 1234, 0.0, 0.2) for i in ids} <= {TEST, TRAIN}


def test_reference_inputs_are_checked_with_one_line_naming_the_key(tmp_path):
    with pytest.raises(DatagenError, match="classifier.reference: nope: no such file"):
        list(read_reference(load_config(["classifier.reference=[nope]"])))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatagenError, match="folder has no JSONL, parquet or text files"):
        list(read_reference(load_config([f"classifier.reference=[{tmp_path / 'empty'}]"])))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DatagenError, match=r"bad.jsonl:1: no string field 'text'"):
        list(read_reference(load_config([f"classifier.reference=[{bad}]"])))
    # a folder of plain text files: one document each, named by the file; .md is not read
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text(shipped()[0]["text"])
    (tmp_path / "txt" / "README.md").write_text("not a document")
    docs = list(read_reference(load_config([f"classifier.reference=[{tmp_path / 'txt'}]"])))
    assert [d.id for d in docs] == ["a.txt"]


def test_classifier_source_follows_model_path_and_rejects_contradictions():
    assert load_config().classifier.source == "reference"
    assert load_config(["classifier.model_path=m.bin"]).classifier.source == "model_path"
    with pytest.raises(DatagenError, match="needs classifier.model_path"):
        load_config(["classifier.source=model_path"])
    with pytest.raises(DatagenError, match="classifier.source is teacher"):
        load_config(["classifier.model_path=m.bin", "classifier.source=teacher"])


# --------------------------------------------------------------------------- the stage
def _train(root: Path, *overrides: str) -> tuple[Run, dict]:
    cfg = load_config([f"run.root={root}", "run.name=t", "executor.workers=1", *overrides])
    run = Run(cfg.run.root, cfg.run.name)
    spec = BY_NAME["train_classifier"]
    m = _run_one(cfg, run, spec, stage_hash(cfg, run, spec), Console(quiet=True))
    return run, m


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Run, dict]:
    """train_classifier with every default: the shipped reference set vs the pages of the
    default web.inputs (Common Crawl WARC samples), read and extracted by the stage."""
    return _train(tmp_path_factory.mktemp("tc"))


def test_reference_classifier_reaches_f1_0_8_on_its_held_out_split(trained):
    run, m = trained
    assert m["source"] == "reference" and m["trained"] and m["applied"]
    held = m["heldout"]
    assert held["f1"] >= 0.8, held
    c = held["confusion"]
    assert c["tp"] + c["fn"] == c["fp"] + c["tn"] == held["n"] // 2  # balanced test split
    hist = m["heldout_scores"]
    assert sum(hist["positive"]) == sum(hist["negative"]) == held["n"] // 2
    assert hist["negative_at_min_score"]["dropped"] == c["tn"]
    assert m["fasttext"]["wordNgrams"] == 2 and m["fasttext"]["lr"] == 0.1
    lengths = m["examples"]["lengths"]
    assert lengths["positive"] == lengths["negative"]  # length is not the signal
    pool = m["negative_pool"]
    assert pool["from"] == "web.inputs" and pool["pages"] > 50
    assert (
        pool["records"]
        == pool["sampled"]
        == pool["no_text"] + pool["other_language"] + pool["pages"]
    )
    assert (run.path / "train_classifier" / m["model_file"]).exists()
    assert m["model_file"] == "model.ftz" and m["quantized"]


def test_on_the_default_run_the_web_stage_drops_pages_as_quality(trained):
    """The web stage with every default after the default train_classifier: the reference
    classifier decides, pages under web.min_quality are dropped as quality.low_score."""
    run, m = trained
    cfg = load_config([f"run.root={run.path.parent}", "run.name=t", "executor.workers=1"])
    spec = BY_NAME["web"]
    wm = _run_one(cfg, run, spec, stage_hash(cfg, run, spec), Console(quiet=True))
    low = wm["drop_reasons"].get("quality.low_score", 0)
    assert low > 0 and m["applied"]
    kept = list(read_shards(run.path / "web", Document))
    dropped = [
        d
        for d in read_shards(run.path / "web" / "dropped", Document)  # web.keep_dropped default
        if d.drop_reason == "quality.low_score"
    ]
    assert len(dropped) == low
    assert all(d.scores["classifier.prob"] < cfg.web.min_quality for d in dropped)
    assert kept and all(d.scores["classifier.prob"] >= cfg.web.min_quality for d in kept)


def test_the_ablation_eval_documents_are_never_used_by_the_classifier(trained):
    run, m = trained
    folder = run.path / "train_classifier"
    held = list(read_jsonl(folder / "reference_eval.jsonl.zst", RefDoc))
    examples = list(read_jsonl(folder / "examples.jsonl.zst", Example))
    assert len(held) == m["reference"]["documents_per_split"]["eval"] > 0
    assert m["reference"]["eval_words"] == sum(len(d.text.split()) for d in held)
    held_ids = {d.id for d in held}
    positives = [e for e in examples if e.label]
    assert positives and not held_ids & {e.doc for e in examples}
    # every positive piece is a run of words from its own (train or test) document, and none
    # is found in a held-out document
    by_id = {d.id: " ".join(d.text.split()) for d in read_reference(load_config())}
    held_texts = [" ".join(d.text.split()) for d in held]
    for e in positives:
        assert e.text in by_id[e.doc]
        assert not any(e.text in t for t in held_texts)
    # the split the stage used is the documented function of (seed, id)
    assert all(reference_split(i, 1234, 0.1, 0.2) == EVAL for i in held_ids)


def test_no_negative_pool_means_no_model_and_a_note(tmp_path):
    _, m = _train(tmp_path, "web.inputs=[]")
    assert m["trained"] is False and m["model_path"] is None
    assert "no negative pages" in m["note"]


def test_the_pool_and_the_reference_files_are_part_of_the_stage_identity(tmp_path):
    """A new negative pool or reference set redoes train_classifier (and so filter, web and
    emit); with the teacher source the web inputs do not matter to it."""
    run = Run(tmp_path, "t")
    spec = BY_NAME["train_classifier"]

    def h(*o: str) -> str:
        return stage_hash(load_config(list(o)), run, spec)

    other_web = "web.inputs=[../shared/data/web/ccnet_text]"
    assert h() != h(other_web)
    assert h("web.batch_size=7") == h()  # how the web stage runs is not what the pool holds
    assert h("classifier.source=teacher") == h("classifier.source=teacher", other_web)
    ref = tmp_path / "ref.jsonl"
    ref.write_text(json.dumps({"text": shipped()[0]["text"]}) + "\n")
    before = h(f"classifier.reference=[{ref}]")
    ref.write_text(json.dumps({"text": shipped()[1]["text"]}) + "\n")
    assert h(f"classifier.reference=[{ref}]") != before


DOLMA_CC = (
    ROOT.parent
    / "shared/data/web_large/cc_samples/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"
)


def test_a_configured_pool_is_sampled_by_record_with_a_seed(tmp_path):
    pool = [f"classifier.negatives=[{DOLMA_CC}]", "classifier.negative_fraction=0.3"]
    _, m = _train(tmp_path / "a", *pool)
    p = m["negative_pool"]
    assert p["from"] == "classifier.negatives" and p["records"] == 697
    assert 0.2 * 697 < p["sampled"] < 0.4 * 697
    assert m["trained"] and 0 < p["pages"] < p["sampled"]
    run_b, m_b = _train(tmp_path / "b", *pool, "executor.workers=2")  # any worker count
    assert m_b["negative_pool"] == {**p, "shards_run": [0]}
    assert m_b["heldout"] == m["heldout"]  # the same pages, examples and model
    with pytest.raises(DatagenError, match="classifier.negatives: nope.warc.gz: no such file"):
        from pipeline.stages.train_classifier import preflight

        preflight(load_config(["classifier.negatives=[nope.warc.gz]"]))
