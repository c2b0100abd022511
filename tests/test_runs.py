"""The run directory's writers: atomic files, durable JSONL appends."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.errors import DatagenError
from pipeline.records import Failure
from pipeline.runs import JsonlAppender, atomic_write_text, read_jsonl


def test_outputs_are_readable_like_plainly_created_files(tmp_path):
    atomic_write_text(tmp_path / "x.json", "{}")
    plain = tmp_path / "plain"
    plain.write_text("")
    mode = stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(plain).st_mode)  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_appender_cuts_a_partial_last_line_left_by_a_kill(tmp_path):
    path = tmp_path / "f.jsonl"
    with JsonlAppender(path) as out:
        out.write(Failure(id="a", reason="x", attempts=1))
    with open(path, "ab") as f:
        f.write(b'{"id": "b", "reas')  # what a kill -9 mid-write leaves
    with JsonlAppender(path) as out:
        out.write(Failure(id="c", reason="y", attempts=2))
    assert [r.id for r in read_jsonl(path, Failure)] == ["a", "c"]


def test_a_bad_record_is_one_error_naming_file_and_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"id": "a", "reason": "x", "attempts": 1}\n{"id": "b"}\n')
    with pytest.raises(DatagenError, match=r"f\.jsonl:2: bad record \(reason: Field required\)"):
        list(read_jsonl(path, Failure))
