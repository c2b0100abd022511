"""Shards on disk: how a stage's input is cut into shards, and how a shard's output is written.

A stage reads records (one JSON document per line, in plain, ``.gz`` or ``.zst`` JSONL files)
and cuts the concatenation of its input files, in order, into shards of ``shard_docs``
records: :func:`plan_shards` returns :class:`ShardSpec` s naming the line ranges of each file
that belong to a shard. The cut depends only on the input and ``shard_docs``, never on how many
workers run, so the output is the same files, byte for byte, on any executor.

A shard job writes each output with a :class:`RecordWriter` (streamed zstd JSONL under a
temporary name, renamed when complete), then the executor writes the shard's completion
marker (``pipeline.executor``). Memory per shard is one batch of records, not the shard.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import zstandard
from pydantic import BaseModel, ValidationError

from pipeline.errors import DatagenError
from pipeline.files import GZIP_MAGIC, ZSTD_MAGIC, open_binary
from pipeline.runs import atomic_write_bytes, file_mode

M = TypeVar("M", bound=BaseModel)
_CHUNK = 1 << 20


class Slice(BaseModel):
    """Records ``start`` (inclusive) to ``stop`` (exclusive) of one file, counted in lines.
    For an uncompressed file ``byte_start`` lets a worker seek to the first line."""

    path: str
    start: int
    stop: int
    byte_start: int | None = None


class ShardSpec(BaseModel):
    """One shard: its number (output files are named after it) and the slices it reads."""

    index: int
    slices: list[Slice]

    @property
    def name(self) -> str:
        return f"{self.index:05d}"

    @property
    def records(self) -> int:
        return sum(s.stop - s.start for s in self.slices)


def _compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith((GZIP_MAGIC, ZSTD_MAGIC))


def _line_offsets(path: Path, first: int, every: int) -> tuple[int, dict[int, int]]:
    """(lines in a plain file, {line: byte offset} for line 0 and lines ``first``,
    ``first + every``, ...): the lines where the shards that cover this file start."""
    offsets = {0: 0}
    want = first
    n = pos = 0
    last = b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            k = chunk.count(b"\n")
            i = 0
            while n + k >= want:  # line ``want`` starts after the (want - n)-th newline here
                for _ in range(want - n):
                    i = chunk.index(b"\n", i) + 1
                k -= want - n
                n = want
                offsets[want] = pos + i
                want += every
            n += k
            pos += len(chunk)
            last = chunk[-1:]
    n += last != b"\n"  # a last line without its newline
    offsets = {line: off for line, off in offsets.items() if line < n}
    return n, offsets


def count_lines(path: Path) -> int:
    """Lines of a (possibly compressed) file; a last line without a newline counts."""
    n = 0
    last = b"\n"
    with open_binary(path) as f:
        while chunk := f.read(_CHUNK):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def plan_shards(files: Sequence[Path], shard_docs: int) -> list[ShardSpec]:
    """Cut the records of ``files`` (in this order) into shards of ``shard_docs`` lines."""
    if shard_docs < 1:
        raise ValueError("shard_docs must be >= 1")
    shards: list[ShardSpec] = []
    current: list[Slice] = []
    room = shard_docs
    for path in files:
        offsets: dict[int, int] = {}
        if _compressed(path):
            n = count_lines(path)
        else:
            n, offsets = _line_offsets(path, room, shard_docs)
        line = 0
        while line < n:
            take = min(room, n - line)
            current.append(
                Slice(path=str(path), start=line, stop=line + take, byte_start=offsets.get(line))
            )
            line += take
            room -= take
            if room == 0:
                shards.append(ShardSpec(index=len(shards), slices=current))
                current, room = [], shard_docs
    if current:
        shards.append(ShardSpec(index=len(shards), slices=current))
    return shards


def iter_lines(s: Slice) -> Iterator[bytes]:
    """The lines (without newline) of one slice."""
    path = Path(s.path)
    with open_binary(path) as f:
        line = 0
        if s.byte_start is not None and not _compressed(path):
            f.seek(s.byte_start)
            line = s.start
        reader = io.BufferedReader(f, _CHUNK) if not isinstance(f, io.BufferedReader) else f  # type: ignore[arg-type]
        for raw in reader:
            if line >= s.stop:
                return
            if line >= s.start:
                yield raw.rstrip(b"\r\n")
            line += 1


def read_slices(slices: Iterable[Slice], model: type[M]) -> Iterator[M]:
    """Records of ``model`` from the slices; a bad line stops with file:line and the field."""
    for s in slices:
        for i, raw in enumerate(iter_lines(s), s.start + 1):
            if not raw.strip():
                continue
            try:
                yield model.model_validate_json(raw)
            except ValidationError as e:
                err = e.errors()[0]
                loc = ".".join(str(x) for x in err["loc"]) or "record"
                raise DatagenError(f"{s.path}:{i}: bad record ({loc}: {err['msg']})") from None


def batched(items: Iterable[M], n: int) -> Iterator[list[M]]:
    batch: list[M] = []
    for x in items:
        batch.append(x)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


class RecordWriter:
    """Stream records into one zstd JSONL file that appears under ``path`` only when closed.

    Until ``close()`` the data sits in ``.<name>.<pid>.tmp`` beside it; a killed writer leaves
    only that temp file, which the next attempt of the stage removes."""

    def __init__(self, path: Path, level: int = 3) -> None:
        self.path = path
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        os.chmod(self._tmp, file_mode())
        self._zst = zstandard.ZstdCompressor(level=level).stream_writer(self._file, closefd=False)

    def write(self, record: BaseModel) -> None:
        self._zst.write(record.model_dump_json().encode("utf-8") + b"\n")
        self.count += 1

    def close(self) -> Path:
        self._zst.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._zst.close()
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_npy(path: Path, arr: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (temp + fsync + rename)."""
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


class BinaryWriter:
    """Stream raw bytes (arrays or ``bytes``) into ``path``, which appears only when complete:
    until then the data sits in ``.<name>.<pid>.tmp`` (as ``RecordWriter`` does for records).
    ``sha256`` (when asked for) and ``size`` cover what was written."""

    def __init__(self, path: Path, sha256: bool = False) -> None:
        self.path = path
        self.size = 0
        self._hash = hashlib.sha256() if sha256 else None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._f = open(self._tmp, "wb")  # noqa: SIM115 - closed in __exit__
        os.chmod(self._tmp, file_mode())

    def write(self, data: np.ndarray | bytes) -> None:
        b = data.tobytes() if isinstance(data, np.ndarray) else data
        self._f.write(b)
        self.size += len(b)
        if self._hash is not None:
            self._hash.update(b)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest() if self._hash is not None else ""

    def __enter__(self) -> BinaryWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
