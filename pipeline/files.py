"""Opening input files: plain, gzip or zstd (told by their first bytes, not their name), and
reading text and JSONL from them with one-line errors that name the file and line.

Every reader of user files (plan's topic lists and seed texts, decontam's benchmarks, the web
readers) and of the run directory's shards goes through here, so a truncated ``.gz``, a
damaged ``.zst`` or a stray non-UTF-8 byte is reported the same way everywhere::

    text = read_text(path)                    # whole file, BOM dropped; DatagenError path:line
    for line in iter_jsonl(path):             # JsonLine(number, value, pos)
        ...
    for line in iter_jsonl(path, on_error=lambda number, why: ...):   # skip bad lines
        ...

Damaged compressed data raises :class:`FileDamage` (a :class:`DatagenError`) naming the line
where reading stopped; readers that keep going past damage (the web stage) catch it.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import zstandard

from pipeline.errors import DatagenError

GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, as Excel and Notepad save CSV / text
# names read as JSON lines (the web readers' jsonl format, plan.seed_texts folders)
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson", ".json", ".json.zst")
# what gzip / zlib / zstandard raise on cut or damaged data (gzip.BadGzipFile is an OSError)
DAMAGE_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    zstandard.ZstdError,
)


class FileDamage(DatagenError):
    """Compressed data that is cut short or damaged; ``where`` is ``path`` or ``path:line``."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")
        self.where = where
        self.what = what

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across worker processes
        return (type(self), (self.where, self.what))


class JsonLine(NamedTuple):
    number: int  # 1-based line number
    value: Any  # the parsed JSON value
    pos: int  # bytes of the (compressed) file consumed so far, for progress


def one_line(e: BaseException) -> str:
    """An exception as one short printable line (libraries quote raw bytes in messages)."""
    text = " ".join(str(e).split())
    text = "".join(ch if ch.isprintable() and ord(ch) < 0x7F else "?" for ch in text)
    return text[:120] or type(e).__name__


def is_jsonl_name(name: str) -> bool:
    return name.lower().endswith(JSONL_SUFFIXES)


def open_binary(path: Path | str) -> IO[bytes]:
    """Open ``path`` for reading bytes, decompressing gzip (every member) or zstd (every
    frame). A path that cannot be opened (missing, a folder, no permission) raises a
    DatagenError naming it."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - returned to the caller
    except IsADirectoryError:
        raise DatagenError(f"{path}: is a folder, not a file") from None
    except FileNotFoundError:
        raise DatagenError(f"{path}: file not found") from None
    except OSError as e:
        raise DatagenError(f"{path}: cannot open ({e.strerror or one_line(e)})") from None
    head = raw.read(4)
    raw.seek(0)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if head.startswith(ZSTD_MAGIC):
        return io.BufferedReader(_ZstdReader(raw), buffer_size=1 << 16)  # type: ignore[return-value]
    return raw


def raw_pos(f: IO[bytes]) -> int:
    """Bytes of the underlying file consumed so far (compressed bytes for .gz / .zst)."""
    inner: Any = getattr(f, "fileobj", None) or getattr(getattr(f, "raw", None), "fileobj", None)
    try:
        return int(inner.tell() if inner is not None else f.tell())
    except (OSError, ValueError, AttributeError):
        return 0


class _ZstdReader(io.RawIOBase):
    """zstd frames (one or more) as a raw stream; raises EOFError when the input ends inside
    a frame (python-zstandard's stream_reader just stops, hiding a truncated file)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.fileobj = raw  # for raw_pos
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._buf = b""
        self._at = 0  # read position in _buf (slicing per read would copy it each time)
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._at >= len(self._buf):
            chunk = self.fileobj.read(1 << 16)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd stream ends before the end of its frame")
                return 0
            out = []
            while chunk:
                self._in_frame = True
                out.append(self._d.decompress(chunk))
                if self._d.eof:  # a frame ended: the rest starts a new one
                    self._in_frame = False
                    chunk = self._d.unused_data
                    self._d = zstandard.ZstdDecompressor().decompressobj()
                else:
                    chunk = b""
            self._buf, self._at = b"".join(out), 0
        n = min(len(b), len(self._buf) - self._at)
        b[:n] = self._buf[self._at : self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        self.fileobj.close()
        super().close()


def _utf8_error(path: Path | str, data: bytes, e: UnicodeDecodeError, line: int = 0) -> str:
    """``path:line: not valid UTF-8 ...``; the line is counted in ``data`` unless given."""
    line = line or data[: e.start].count(b"\n") + 1
    column = e.start - data.rfind(b"\n", 0, e.start)
    return (
        f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at byte {column} "
        "of the line); save the file as UTF-8"
    )


def read_text(path: Path | str) -> str:
    """The whole (possibly compressed) file as UTF-8 text, a leading BOM dropped.
    Invalid UTF-8 or damaged compressed data raise a DatagenError naming the file (and line)."""
    with open_binary(path) as f:
        try:
            data = f.read()
        except DAMAGE_ERRORS as e:
            raise FileDamage(
                str(path), f"compressed data cut short or damaged ({one_line(e)})"
            ) from None
    data = data.removeprefix(BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatagenError(_utf8_error(path, data, e)) from None


def iter_lines(path: Path | str) -> Iterator[tuple[int, bytes, int]]:
    """(line number, raw line, raw position) of a possibly compressed file, streamed.
    Damaged compressed data raises FileDamage naming ``path:line`` where reading stopped."""
    number = 0
    with open_binary(path) as f:
        try:
            for number, line in enumerate(f, 1):  # noqa: B007 - number is used after the loop
                yield number, line, raw_pos(f)
        except DAMAGE_ERRORS as e:
            raise FileDamage(
                f"{path}:{number + 1}",
                f"compressed data cut short or damaged ({one_line(e)}); "
                f"the {number} lines before it were read",
            ) from None


def parse_json_line(path: Path | str, number: int, raw: bytes) -> tuple[Any, str | None]:
    """One raw JSONL line -> (value, None), or (None, why) when it is not UTF-8 or not JSON.
    A BOM on line 1 is dropped."""
    try:
        raw = raw.removeprefix(BOM) if number == 1 else raw
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError as e:
        return None, _utf8_error(path, raw, e, number).split(": ", 1)[1]
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno})"


def iter_jsonl(
    path: Path | str, on_error: Callable[[int, str], None] | None = None
) -> Iterator[JsonLine]:
    """Each non-blank line of a (possibly compressed) JSONL file, parsed.

    A line that is not UTF-8 or not JSON raises ``DatagenError("path:line: why")``, or, with
    ``on_error``, is passed to ``on_error(line_number, why)`` and skipped. A BOM on the first
    line is dropped."""
    for number, raw, pos in iter_lines(path):
        if not raw.strip():
            continue
        value, why = parse_json_line(path, number, raw)
        if why is not None:
            if on_error is None:
                raise DatagenError(f"{path}:{number}: {why}")
            on_error(number, why)
            continue
        yield JsonLine(number, value, pos)
