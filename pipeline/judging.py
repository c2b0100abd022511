"""What the teacher stages that judge or rewrite share (annotate, revise, reverse,
preferences): their prompt template, reading a JSON answer, the ids a stage already recorded,
and the parquet dataset they write. The schema's ``response_format`` is
:mod:`pipeline.teacher.structured`'s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.prompting import PromptLibrary
from pipeline.runs import atomic_write_bytes, read_jsonl, repair_jsonl_tail


def template(cfg: PipelineConfig, path: str, key: str) -> tuple[PromptLibrary, str]:
    """The library and name of the template at config key ``key`` (one line if missing)."""
    p = cfg.project_path(path).resolve()
    if not p.is_file():
        raise DatagenError(f"{key}: template {p} not found")
    return PromptLibrary(p.parent), p.name.removesuffix(".j2")


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in an answer: the whole text, else the outermost ``{...}`` in it (a
    model not under a grammar wraps it in prose or a code fence); None when there is none."""
    text = (text or "").strip()
    for candidate in (text, text[text.find("{") : text.rfind("}") + 1]):
        if not candidate:
            continue
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def int_field(obj: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    """``obj[key]`` as an integer in [lo, hi] (3.0 is a 3; 3.5 and True are not), else None."""
    v = obj.get(key)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        return None
    return v


def recorded_ids(path: Path, model: type[BaseModel]) -> set[str]:
    """The ids in a stage's JSONL file (its last line repaired if a kill cut it)."""
    if not path.exists():
        return set()
    repair_jsonl_tail(path)
    return {r.id for r in read_jsonl(path, model)}  # type: ignore[attr-defined]


def write_dataset(path: Path, table: pa.Table) -> str | None:
    """``table`` as a zstd parquet file (atomic), its name; with no rows there is no file
    (``datasets`` cannot load a parquet file without rows) and None."""
    if table.num_rows == 0:
        path.unlink(missing_ok=True)
        return None
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path.name
