"""User input files read through pipeline.files: plan's seed texts and topic lists, the run
directory's shards. Real files from ../shared/data and data/, damaged copies in tmp_path."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, datagen
from web_testdata import CC, CCNET, openstax_texts

from pipeline.config import load_config
from pipeline.errors import DatagenError
from pipeline.files import BOM, read_text
from pipeline.records import Document
from pipeline.runs import ShardWriter, read_jsonl
from pipeline.stages.plan import MAX_SEED_CHARS, _read_seed_texts, build_plan

TOPICS = ROOT / "data" / "topics.tsv"


def ccnet_texts(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"].strip()[:MAX_SEED_CHARS] for line in f if line.strip()]


def test_seed_texts_are_read_from_a_jsonl_gz(tmp_path: Path) -> None:
    cfg = load_config(["plan.n=40", f"plan.seed_texts={CCNET[0]}", "plan.seed_fraction=1.0"])
    items = build_plan(cfg)
    assert {i.seed_text for i in items} <= set(ccnet_texts(CCNET[0]))
    assert all(i.seed_text for i in items)
    # the real command: no traceback, the plan is written
    r = datagen(
        "run", "stage=plan", f"plan.seed_texts={CCNET[0]}", "plan.seed_fraction=0.5", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs/default/plan/plan.jsonl").exists()


def test_seed_texts_folder_reads_every_jsonl_file_in_it(tmp_path: Path) -> None:
    folder = tmp_path / "seeds"
    (folder / "more").mkdir(parents=True)
    shutil.copy(CCNET[0], folder / "a.jsonl.gz")
    (folder / "more" / "b.jsonl").write_bytes(gzip.decompress(CCNET[1].read_bytes()))
    shutil.copy(CC / "PROVENANCE.txt", folder / "PROVENANCE.txt")  # not JSONL: left alone
    assert _read_seed_texts(folder) == ccnet_texts(CCNET[0]) + ccnet_texts(CCNET[1])
    cfg = load_config(["plan.n=60", f"plan.seed_texts={folder}", "plan.seed_fraction=1.0"])
    assert {i.seed_text for i in build_plan(cfg)} <= set(_read_seed_texts(folder))
    nothing = tmp_path / "docs"
    nothing.mkdir()
    shutil.copy(CC / "PROVENANCE.txt", nothing / "PROVENANCE.txt")
    with pytest.raises(DatagenError, match=r"plan.seed_texts: .*docs: folder has no JSONL files"):
        _read_seed_texts(nothing)


def test_seed_texts_with_invalid_utf8_name_the_file_and_line(tmp_path: Path) -> None:
    lines = gzip.decompress(CCNET[0].read_bytes()).splitlines(keepends=True)
    at = lines[2].index(b'"text"') + 12
    lines[2] = lines[2][:at] + b"\xff" + lines[2][at + 1 :]  # one byte of line 3 garbled
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join(lines))
    with pytest.raises(DatagenError, match=r"bad.jsonl:3: not valid UTF-8 \(byte 0xff"):
        _read_seed_texts(bad)


def test_truncated_seed_gz_names_the_file_and_line(tmp_path: Path) -> None:
    data = CCNET[1].read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatagenError, match=r"cut.jsonl.gz:\d+: compressed data cut short"):
        _read_seed_texts(cut)


def test_topics_file_with_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    lines = TOPICS.read_bytes().splitlines(keepends=True)
    lines[9] = b"\xe9" + lines[9][1:]  # a latin-1 byte where UTF-8 is expected, line 10
    bad = tmp_path / "topics.tsv"
    bad.write_bytes(b"".join(lines))
    with pytest.raises(DatagenError, match=r"topics.tsv:10: not valid UTF-8 \(byte 0xe9 at byte 1"):
        build_plan(load_config([f"plan.topics_file={bad}"]))


def test_topics_file_saved_with_a_bom_still_has_its_header(tmp_path: Path) -> None:
    bommed = tmp_path / "topics.tsv"
    bommed.write_bytes(BOM + TOPICS.read_bytes())
    a = build_plan(load_config([f"plan.topics_file={bommed}"]))
    b = build_plan(load_config([f"plan.topics_file={TOPICS}"]))
    assert [i.model_dump() for i in a] == [i.model_dump() for i in b]
    assert read_text(bommed) == TOPICS.read_text(encoding="utf-8")


def test_truncated_run_shard_names_the_file_and_line(tmp_path: Path) -> None:
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(openstax_texts())]
    with ShardWriter(tmp_path / "filter", max_records=len(docs)) as w:
        for d in docs:
            w.write(d)
    shard = w.paths[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 3 // 4])
    got: list[Document] = []
    with pytest.raises(
        DatagenError, match=r"part-00000.jsonl.zst:\d+: compressed data cut short or damaged"
    ):
        got.extend(read_jsonl(shard, Document))
    assert 0 < len(got) < len(docs)
    assert [d.text for d in got] == [d.text for d in docs[: len(got)]]
