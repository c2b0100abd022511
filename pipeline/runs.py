"""Run directory layout, manifests, and atomic/durable shard readers and writers.

Layout: ``<run.root>/<run.name>/<stage>/`` holds the stage's data shards and ``manifest.json``.
Stages talk only through these files.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import zstandard
from pydantic import BaseModel, ValidationError

from pipeline.errors import DatagenError
from pipeline.files import iter_lines
from pipeline.records import utc_now

M = TypeVar("M", bound=BaseModel)

# a stage the budget stopped: its records are whole, later stages may use them, and the next
# run continues it (with a larger budget.max_cost_usd)
STOPPED_BUDGET = "stopped: budget"


def file_mode() -> int:
    """The mode a plainly created file would get (0666 less the umask); mkstemp's is 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the ``.*.tmp`` files a killed atomic write left under ``folder``; only safe while
    the run lock is held (no other process is writing there)."""
    stale = sorted(p for p in folder.rglob(".*.tmp") if p.is_file()) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatagenError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


class JsonlAppender:
    """Append records to a JSONL file durably, one complete line per record.

    A process killed mid-write can leave a partial last line; opening the appender cuts it
    off, so the file always holds whole records only.
    """

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl_tail(path)
        self._f = open(path, "ab")  # noqa: SIM115 - closed in close()

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        line = record.model_dump_json() if isinstance(record, BaseModel) else json.dumps(record)
        self._f.write(line.encode("utf-8") + b"\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair_jsonl_tail(path: Path) -> None:
    """Cut a trailing partial line (left by a kill -9 mid-write) so appends stay line-aligned."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        # find the last newline and truncate after it
        pos = size
        chunk = 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            i = buf.rfind(b"\n")
            if i >= 0:
                f.truncate(start + i + 1)
                return
            pos = start
        f.truncate(0)


def read_jsonl(path: Path, model: type[M]) -> Iterator[M]:
    """Read records of ``model`` from a .jsonl / .jsonl.zst / .jsonl.gz file; a bad line or
    damaged compressed data names file:line."""
    for lineno, line, _ in iter_lines(path):
        if not line.strip():
            continue
        try:
            yield model.model_validate_json(line)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "record"
            raise DatagenError(f"{path}:{lineno}: bad record ({loc}: {err['msg']})") from None


class ShardWriter:
    """Write records into numbered zstd JSONL shards; each shard appears under its final name
    only when complete (temp file + rename)."""

    def __init__(self, folder: Path, prefix: str = "part", max_records: int = 10_000) -> None:
        self.folder = folder
        self.prefix = prefix
        self.max_records = max_records
        self.paths: list[Path] = []
        self.count = 0
        self._buf: list[bytes] = []
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, record: BaseModel) -> None:
        self._buf.append(record.model_dump_json().encode("utf-8") + b"\n")
        self.count += 1
        if len(self._buf) >= self.max_records:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}.jsonl.zst"
        atomic_write_bytes(path, zstandard.ZstdCompressor(level=3).compress(b"".join(self._buf)))
        self.paths.append(path)
        self._buf = []

    def close(self) -> list[Path]:
        self._flush()
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()


def write_shards(
    folder: Path, records: Iterable[BaseModel], prefix: str = "part", max_records: int = 10_000
) -> list[Path]:
    with ShardWriter(folder, prefix, max_records) as w:
        for r in records:
            w.write(r)
    return w.paths


def shard_paths(folder: Path, prefix: str = "part") -> list[Path]:
    return sorted(p for p in folder.glob(f"{prefix}-*.jsonl*") if not p.name.startswith("."))


def read_shards(folder: Path, model: type[M], prefix: str = "part") -> Iterator[M]:
    for p in shard_paths(folder, prefix):
        yield from read_jsonl(p, model)


class Run:
    """A run directory: ``<root>/<name>/``, one sub-folder per stage."""

    def __init__(self, root: Path | str, name: str) -> None:
        self.root = Path(root)
        self.name = name
        self.path = self.root / name

    def stage_dir(self, stage: str) -> Path:
        d = self.path / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def manifest_path(self, stage: str) -> Path:
        return self.path / stage / "manifest.json"

    def read_manifest(self, stage: str) -> dict[str, Any] | None:
        p = self.manifest_path(stage)
        return read_json(p) if p.exists() else None

    def write_manifest(self, stage: str, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path(stage), manifest)

    def is_finished(self, stage: str) -> bool:
        m = self.read_manifest(stage)
        return bool(m and m.get("status") == "finished")

    def require_finished(self, stage: str, needed_by: str) -> Path:
        """The stage's folder, when it finished (or the budget stopped it: usable output)."""
        m = self.read_manifest(stage)
        if not (m and m.get("status") in ("finished", STOPPED_BUDGET)):
            raise DatagenError(
                f"{self.path / stage}: stage '{stage}' has not finished; "
                f"run `datagen run stage={stage}` before '{needed_by}'"
            )
        return self.path / stage


LOCK_FILE = ".lock"


class RunLock:
    """Exclusive lock on a run directory, held for a whole ``datagen run``.

    ``fcntl.flock`` on ``<run>/.lock``: the kernel releases it when the holder exits, even on
    ``kill -9``, so a lock can never be left held. The file records the holder (pid, host,
    start time) for the refusal message; a record left by a killed holder is taken over.
    """

    def __init__(self, run_path: Path) -> None:
        self.path = run_path / LOCK_FILE
        self._fd: int | None = None
        self.took_over: str | None = None  # the stale holder's record, if one was left

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        except OSError as e:
            raise DatagenError(f"{self.path}: cannot create the run lock ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DatagenError(
                f"{self.path.parent}: in use by another datagen run ({holder}); wait for it "
                f"to finish or stop it, or use another run.name"
            ) from None
        except OSError as e:  # a file system without locks
            os.close(fd)
            raise DatagenError(f"{self.path}: cannot lock the run ({e.strerror})") from None
        left = os.pread(fd, 4096, 0)
        if left.strip():
            self.took_over = _describe(left)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty file: released cleanly, nothing to take over
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    try:
        r = json.loads(raw)
        return f"pid {r['pid']} on {r['host']}, since {r['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _read_holder(fd: int) -> str:
    # the holder writes its record right after it gets the lock: give it a moment
    for _ in range(20):
        raw = os.pread(fd, 4096, 0)
        if raw.strip():
            return _describe(raw)
        time.sleep(0.05)
    return "holder unknown"
