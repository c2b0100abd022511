"""Shard planning and reading (pipeline.shards) on real text: every record lands in exactly one
shard, in order, whatever the shard size, for plain and compressed files."""

from __future__ import annotations

import gzip
import json

import pytest
import zstandard
from conftest import SHARED_DATA

from filters.heuristics import LengthFilter
from pipeline.records import Document
from pipeline.shards import RecordWriter, plan_shards, read_slices
from pipeline.steps import FilterStep, Stats, run_steps


@pytest.fixture(scope="module")
def docs(shared_data_module) -> list[Document]:
    path = (
        shared_data_module
        / "text/openstax_python/introduction-python-programming.modules_text.jsonl"
    )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [
        Document(id=f"os-{i:04d}", text=r["text"], topic=r["title"]) for i, r in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def shared_data_module():

    return SHARED_DATA


def _write(path, docs, compress: str = "", trailing_newline: bool = True) -> None:
    data = "".join(d.model_dump_json() + "\n" for d in docs).encode()
    if not trailing_newline:
        data = data[:-1]
    if compress == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    elif compress == "gz":
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("compress", ["", "zst", "gz"])
@pytest.mark.parametrize("shard_docs", [1, 7, 50, 1000])
def test_every_record_is_in_exactly_one_shard_in_order(tmp_path, docs, compress, shard_docs):
    # three files of different sizes; the last one without a final newline
    a, b, c = docs[:40], docs[40:41], docs[41:]
    suffix = {"": ".jsonl", "zst": ".jsonl.zst", "gz": ".jsonl.gz"}[compress]
    files = [tmp_path / f"{n}{suffix}" for n in "abc"]
    _write(files[0], a, compress)
    _write(files[1], b, compress)
    _write(files[2], c, compress, trailing_newline=False)
    shards = plan_shards(files, shard_docs)
    assert [s.index for s in shards] == list(range(len(shards)))
    assert all(s.records == shard_docs for s in shards[:-1])
    assert 0 < shards[-1].records <= shard_docs
    got = [d.id for s in shards for d in read_slices(s.slices, Document)]
    assert got == [d.id for d in docs]
    if not compress:  # uncompressed slices seek to their first line
        assert all(sl.byte_start is not None for s in shards for sl in s.slices)


def test_a_record_writer_publishes_its_file_only_when_closed(tmp_path, docs):
    out = tmp_path / "part-00000.jsonl.zst"
    w = RecordWriter(out)
    for d in docs[:5]:
        w.write(d)
    assert not out.exists() and len(list(tmp_path.glob(".*.tmp"))) == 1
    w.close()
    assert not list(tmp_path.glob(".*.tmp"))
    back = [d.id for s in plan_shards([out], 100) for d in read_slices(s.slices, Document)]
    assert back == [d.id for d in docs[:5]]


def test_an_aborted_writer_leaves_nothing(tmp_path, docs):
    out = tmp_path / "part-00000.jsonl.zst"
    with pytest.raises(RuntimeError), RecordWriter(out) as w:
        w.write(docs[0])
        raise RuntimeError("killed")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_stats_from_shards_add_up_to_the_stats_of_one_pass(docs):
    step = FilterStep("length", [LengthFilter(min_chars=2000, max_chars=30_000)])
    step.setup()
    whole = Stats()
    kept_all, dropped_all = run_steps([step], [d.model_copy(deep=True) for d in docs], whole)
    parts = []
    for i in range(0, len(docs), 9):
        s = Stats()
        run_steps([step], [d.model_copy(deep=True) for d in docs[i : i + 9]], s)
        parts.append(s)
    merged = Stats.merged(parts)
    assert merged.model_dump() == whole.model_dump()
    assert merged.funnel_list()[0]["documents"] == len(kept_all)
    assert sum(merged.drop_reasons().values()) == len(dropped_all) > 0
    assert set(merged.drop_reasons()) <= {"length.too_short", "length.too_long"}
