"""The emit stage on the session's real run (tests/emit_testdata.py): mixing, splits, text and
token shards, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import datagen
from emit_testdata import EMIT, copy_run, pipeline_overrides
from rich.console import Console

from pipeline.config import load_config
from pipeline.errors import DatagenError
from pipeline.runs import Run
from pipeline.stages import StageSpec, _run_one
from pipeline.stages import emit as emit_stage
from pipeline.tokenize import load_tokenizer, read_token_shard

QUIET = Console(quiet=True)


def run_emit(root: Path, *overrides: str, name: str = "t") -> dict:
    """Run the emit stage through the stage driver (so its manifest is written)."""
    cfg = load_config([f"run.root={root}", f"run.name={name}", *overrides])
    return _run_one(cfg, Run(root, name), StageSpec("emit", needs=("dedup",)), "test", QUIET)


@pytest.fixture(scope="module")
def built(real_run):
    """The emit stage as `datagen run` ran it (overrides emit_testdata.EMIT)."""
    return real_run.path.parent, real_run.path / "emit", real_run.read_manifest("emit")


def rows(emit_dir: Path, split: str) -> list[dict]:
    return [
        r for p in emit_stage.text_shards(emit_dir, split) for r in pq.read_table(p).to_pylist()
    ]


def test_text_shards_load_with_datasets(built):
    datasets = pytest.importorskip("datasets")
    _, out, manifest = built
    ds = datasets.load_dataset(
        "parquet",
        data_files={
            "train": str(out / "text" / "train" / "*.parquet"),
            "validation": str(out / "text" / "val" / "*.parquet"),
        },
        cache_dir=str(out.parent / "hf"),
    )
    assert ds["train"].num_rows == manifest["splits"]["train"]["documents"]
    assert ds["validation"].num_rows == manifest["splits"]["val"]["documents"]
    for col in ("id", "text", "source", "format", "quality", "url", "topic", "model", "n_tokens"):
        assert col in ds["train"].column_names
    assert set(ds["train"]["source"]) == {"textbook", "exercises", "web"}


def test_token_shards_hold_the_text_shards_documents_in_order(built):
    _, out, manifest = built
    tok = load_tokenizer("smollm2")
    assert manifest["tokenizer"]["vocab_size"] == 49152 and manifest["tokenizer"]["dtype"] == "<u2"
    for split in ("train", "val", "anneal"):
        texts, toks = emit_stage.text_shards(out, split), emit_stage.token_shards(out, split)
        assert len(texts) == len(toks) == len(manifest["shards"][split]) >= 1
        for tp, kp in zip(texts, toks, strict=True):
            table = pq.read_table(tp).to_pylist()
            tokens, ends = read_token_shard(kp)
            assert len(ends) == len(table) and int(ends[-1]) == len(tokens)
            ends = ends.astype(np.int64)
            starts = np.concatenate([[0], ends[:-1]])
            for r, s, e in list(zip(table, starts, ends, strict=True))[:8]:
                assert int(tokens[e - 1]) == tok.eot_id and r["n_tokens"] == e - s
                assert tok.tokenizer.decode(tokens[s : e - 1].tolist()) == r["text"]
    # a shard closes once it holds emit.shard_tokens=1000 tokens: every train shard but the last
    # reached it, and only with its last document
    train = manifest["shards"]["train"]
    assert len(train) >= 2
    for s, tp in zip(train[:-1], emit_stage.text_shards(out, "train")[:-1], strict=True):
        n = [r["n_tokens"] for r in pq.read_table(tp).to_pylist()]
        assert sum(n) == s["tokens"]["tokens"] and sum(n) - n[-1] < 1000 <= sum(n)


def test_manifest_checksums_match_the_files(built):
    _, out, manifest = built
    for split, shards in manifest["shards"].items():
        for s in shards:
            for part in ("text", "tokens"):
                p = out / s[part]["path"]
                assert hashlib.sha256(p.read_bytes()).hexdigest() == s[part]["sha256"], split
    total = sum(s["tokens"]["tokens"] for s in manifest["shards"]["train"])
    assert total == manifest["splits"]["train"]["tokens"] == manifest["summary"]["train_tokens"]
    by = manifest["splits"]["train"]["by_source"]
    assert sum(v["tokens"] for v in by.values()) == total


def test_weight_two_repeats_each_exercise_twice_and_half_web_is_sampled(built):
    _, out, manifest = built
    train, val = rows(out, "train"), rows(out, "val")
    val_ids = {r["id"] for r in val}
    ex_ids = [r["id"] for r in train if r["source"] == "exercises"]
    avail = {s: v for s, v in manifest["sources"].items()}
    assert ex_ids and all(ex_ids.count(i) == 2 for i in ex_ids)
    n_ex_pool = avail["exercises"]["documents"] - sum(1 for r in val if r["source"] == "exercises")
    assert len(set(ex_ids)) == n_ex_pool
    web = [r for r in train if r["source"] == "web"]
    web_pool_tokens = avail["web"]["tokens"] - sum(
        r["n_tokens"] for r in val if r["source"] == "web"
    )
    got = sum(r["n_tokens"] for r in web)
    assert 0.5 * web_pool_tokens <= got < 0.5 * web_pool_tokens + max(r["n_tokens"] for r in web)
    assert len({r["id"] for r in web}) == len(web)  # downsampling never repeats
    assert not val_ids & {r["id"] for r in train}


def test_validation_split_holds_out_whole_documents(built):
    _, out, manifest = built
    n = sum(v["documents"] for v in manifest["sources"].values())
    val = rows(out, "val")
    assert len(val) == round(0.1 * n)
    assert not {r["id"] for r in val} & {r["id"] for r in rows(out, "train")}
    assert not {r["id"] for r in val} & {r["id"] for r in rows(out, "anneal")}


def test_anneal_split_takes_the_best_quarter_of_each_source(built):
    _, out, _ = built
    pool = [r for r in rows(out, "train") if r["repeat"] == 0]
    pool += [r for r in rows(out, "train") if r["source"] == "web"]  # web was sampled
    anneal = rows(out, "anneal")
    assert anneal
    for src in ("textbook", "exercises"):
        a = [r["quality"] for r in anneal if r["source"] == src]
        rest = [
            r["quality"]
            for r in pool
            if r["source"] == src and r["id"] not in {x["id"] for x in anneal}
        ]
        assert a and rest and min(a) >= max(rest)
    mean_a = np.mean([r["quality"] for r in anneal if r["source"] == "textbook"])
    mean_t = np.mean([r["quality"] for r in pool if r["source"] == "textbook"])
    assert mean_a > mean_t


def test_shuffle_is_seeded_and_reproducible(built, real_run, tmp_path):
    _, out, manifest = built
    same = run_emit(copy_run(real_run, tmp_path / "a").path.parent, *EMIT)
    assert [s["tokens"]["sha256"] for s in same["shards"]["train"]] == [
        s["tokens"]["sha256"] for s in manifest["shards"]["train"]
    ]
    other = run_emit(copy_run(real_run, tmp_path / "b").path.parent, *EMIT, "seed=99")
    assert (
        other["shards"]["train"][0]["tokens"]["sha256"]
        != manifest["shards"]["train"][0]["tokens"]["sha256"]
    )
    ids = [r["id"] for r in rows(out, "train")]
    assert ids != sorted(ids)  # shuffled, not in input order


def test_token_budget_sets_a_sources_size(real_run, tmp_path):
    root = copy_run(real_run, tmp_path).path.parent
    have = real_run.read_manifest("emit")["sources"]["textbook"]["tokens"]
    budget = 3 * have + have // 2  # three whole copies and a sample
    m = run_emit(
        root, f"emit.mix.textbook.tokens={budget}", "emit.val_fraction=0", "emit.mix.web.weight=0"
    )
    assert "web" not in m["splits"]["train"]["by_source"] and m["sources"]["web"]["tokens"] > 0
    assert "val" not in m["splits"]
    got = m["splits"]["train"]["by_source"]["textbook"]
    train = rows(root / "t" / "emit", "train")
    longest = max(r["n_tokens"] for r in train if r["source"] == "textbook")
    assert budget <= got["tokens"] < budget + longest
    assert got["documents"] > 3 * got["unique_documents"]


def test_without_web_stage_emits_synthetic_only_and_says_so(real_run, tmp_path):
    root = copy_run(real_run, tmp_path, without=("web", "dedup", "emit")).path.parent
    cfg = load_config([f"run.root={root}", "run.name=t"])
    _run_one(cfg, Run(root, "t"), StageSpec("dedup", needs=("filter", "web")), "test", QUIET)
    m = run_emit(root)
    assert set(m["sources"]) == {"textbook", "exercises"}
    assert "web stage not finished" in m["inputs"]["notes"]["web"]
    card = (root / "t" / "emit" / "README.md").read_text()
    assert "web stage not finished" in card and "| filter | finished |" in card


def _cfg(root: Path, *ov: str):
    return load_config([f"run.root={root}", "run.name=t", *ov])


def test_unknown_mix_source_fails_before_writing(real_run, tmp_path):
    run = copy_run(real_run, tmp_path, without=("emit",))
    with pytest.raises(DatagenError, match=r"emit.mix: unknown source 'blogs'"):
        emit_stage.run(_cfg(tmp_path, "emit.mix.blogs.weight=1"), run, QUIET)
    assert not (run.path / "emit").exists()


def test_missing_tokenizer_fails_before_writing(real_run, tmp_path):
    run = copy_run(real_run, tmp_path, without=("emit",))
    with pytest.raises(DatagenError, match="does not exist"):
        emit_stage.run(_cfg(tmp_path, f"emit.tokenizer={tmp_path}/tok.json"), run, QUIET)
    assert not (run.path / "emit").exists()


def test_no_kept_documents_fails_before_writing(real_run, tmp_path):
    """The real filter and web stages rerun so that they keep nothing (every synthetic text is
    under filter.min_chars, no web inputs): emit stops with one line and writes no shard."""
    run = copy_run(real_run, tmp_path)
    model = real_run.read_manifest("train_classifier")["model_path"]
    r = datagen(
        "run",
        "stage=emit",
        f"run.root={tmp_path}",
        *pipeline_overrides(Path(model)),
        "filter.min_chars=100000",
        "web.inputs=[]",
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("datagen: error:") == 1 and "no kept documents to emit" in r.stderr
    # generate was not redone: the teacher was not asked again
    assert run.read_manifest("generate") == real_run.read_manifest("generate")
    assert run.read_manifest("filter")["kept"] == 0 and run.read_manifest("web")["documents"] == 0
    # the check ran before the earlier corpus was moved aside: it stays in place, untouched
    assert run.read_manifest("emit")["status"] == "finished"
    assert run.read_manifest("emit")["config_hash"] == real_run.read_manifest("emit")["config_hash"]
    assert list((run.path / "emit" / "text" / "train").glob("part-*.parquet"))
    assert not list((run.path / ".superseded").glob("emit-*"))


def test_unfinished_dedup_stage_is_an_error(tmp_path):
    run = Run(tmp_path, "t")
    with pytest.raises(DatagenError, match="stage 'dedup' has not finished"):
        emit_stage.run(_cfg(tmp_path), run, QUIET)


def test_phases_without_quality_scores_is_an_error(real_run, tmp_path):
    root = copy_run(real_run, tmp_path).path.parent
    with pytest.raises(DatagenError, match="emit.phases: no input document has a quality"):
        run_emit(root, "emit.quality_key=nope.quality", "emit.phases=[{name: anneal}]")


def test_dataset_card_shows_the_real_funnels(built, real_run):
    """The card's funnel: every stage's drop counts and the web funnel step by step."""
    _, out, _ = built
    card = (out / "README.md").read_text()
    for reason, n in real_run.read_manifest("filter")["drop_reasons"].items():
        assert f"{reason}={n}" in card
    steps = real_run.read_manifest("web")["funnel"]
    for s in steps:
        assert f"| {s['step']} | {s['documents']:,} | {s['tokens']:,} |" in card, s["step"]
    low = next(s for s in steps if s["step"] == "quality")["dropped"]["quality.low_score"]
    assert low > 0 and f"| quality.low_score={low} |" in card


def test_manifest_is_json_with_config_hash(built):
    root, out, _ = built
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "finished" and m["config_hash"]
    assert m["tokenizer"]["name"] == "smollm2" and len(m["tokenizer"]["sha256"]) == 16
