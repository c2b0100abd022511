"""Streaming readers for web data: WARC/WET (warcio), ARC v1/v2, HTML files, tar archives of
HTML files (.tar, .tar.gz, .tar.xz, .tar.bz2), JSONL (plain, .gz, .zst), parquet and Hugging
Face ``datasets`` (streaming).

:func:`plan_parts` cuts the inputs into the web stage's shards: one per file (or dataset), a
JSONL or parquet file with more than ``executor.shard_docs`` rows into row ranges of that many,
a per-record-gzip WARC (as Common Crawl writes them) with more documents into byte ranges that
start at gzip members and hold about that many. Records keep their offsets in the whole file.

Every reader yields :class:`WebRecord` one at a time and never holds a file in memory. Damage
is counted in :class:`ReadStats` (one line per problem naming the file and offset) and the
rest of the file is still read where the format allows it:

- a corrupt record in a per-record-gzip WARC (a gzip member that does not decompress, or
  bytes that are not a WARC record): skipped, reading resumes at the next gzip member that
  starts a WARC record (found by scanning for the gzip magic);
- a truncated file: the records before the damage are yielded, the cut record is counted;
- a WARC that is ONE gzip stream (warcio refuses those): read again as a decompressed stream;
- ARC v1 (warcio rejects it): parsed here from its ``URL IP date mime length`` header lines;
- records without an HTTP header block (Wayback exports): the block is the payload.

Input problems found before reading (missing path, a folder or glob with no input files,
unknown format, every input file empty) raise :class:`DatagenError` so a run fails before any
work starts; an empty file among others is only counted (``empty_file``) and skipped.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import gzip
import io
import lzma
import os
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any

from warcio.archiveiterator import ArchiveIterator
from warcio.bufferedreaders import (
    BufferedReader,
    ChunkedDataReader,
    DecompressingBufferedReader,
)
from warcio.exceptions import ArchiveLoadFailed
from warcio.statusandheaders import StatusAndHeadersParser, StatusAndHeadersParserException

from pipeline import PROJECT_ROOT
from pipeline.errors import DatagenError
from pipeline.files import (
    DAMAGE_ERRORS,
    GZIP_MAGIC,
    JSONL_SUFFIXES,
    FileDamage,
    one_line,
    open_binary,
    parse_json_line,
)
from pipeline.files import iter_lines as iter_file_lines
from pipeline.shards import Slice, count_lines, iter_lines, plan_shards

FORMATS = ("warc", "arc", "html", "tar", "jsonl", "parquet", "hf")

# name endings -> format; WET is WARC with "conversion" records, WAT is WARC metadata only
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".warc.gz", "warc"),
    (".warc", "warc"),
    (".wet.gz", "warc"),
    (".wet", "warc"),
    (".wat.gz", "warc"),
    (".arc.gz", "arc"),
    (".arc", "arc"),
    (".html", "html"),
    (".htm", "html"),
    (".html.gz", "html"),
    (".xhtml", "html"),
    (".tar", "tar"),
    (".tar.gz", "tar"),
    (".tgz", "tar"),
    (".tar.xz", "tar"),
    (".tar.bz2", "tar"),
    *((suffix, "jsonl") for suffix in JSONL_SUFFIXES),
    (".parquet", "parquet"),
)
# WARC record types that carry a document; the rest (warcinfo, request, metadata, revisit)
# are counted but not yielded
CONTENT_TYPES = ("response", "resource", "conversion")
_ARC_HEADER = re.compile(rb"^(\S+) (\S+) (\d{14}) (\S*) (?:.* )?(\d+)\r?\n?$")
MAX_MESSAGES = 50
# WARC splitting: records (and at most about these bytes) sampled for the bytes per document;
# fewer compressed bytes than a gzip member holding a document record can have (the smallest
# in the real data: 240)
_SAMPLE_RECORDS = 48
_SAMPLE_BYTES = 1 << 22
_MIN_DOC_BYTES = 128
_HINT = " (set web.inputs=[PATH,...], or web.inputs=[] to skip web data)"
_HTTP_PARSER = StatusAndHeadersParser(["HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/2.0"], verify=False)


@dataclass
class WebRecord:
    """One candidate document as read from an input, before extraction."""

    source_file: str
    offset: int | None
    url: str | None = None
    record_id: str | None = None
    fetch_date: str | None = None
    content_type: str | None = None  # mime type, lower case, no parameters
    charset: str | None = None  # declared charset (HTTP header), if any
    http_status: int | None = None
    payload: bytes | None = None  # raw bytes to extract from (HTML)
    text: str | None = None  # already plain text (WET conversion, JSONL, parquet, HF)


@dataclass
class ReadStats:
    """Counts of what the readers saw: record types, errors per kind, first messages."""

    record_types: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0

    def error(self, kind: str, where: str, what: str) -> None:
        self.errors[kind] += 1
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(f"{where}: {what}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "record_types": dict(sorted(self.record_types.items())),
            "errors": dict(sorted(self.errors.items())),
            "error_messages": self.messages,
        }


@dataclass(frozen=True)
class InputSource:
    """A resolved input: a file with its format, or a HF dataset name; for a file split into
    shards, its records ``start`` to ``stop`` (exclusive; None = to the end): rows of a JSONL
    or parquet file (``byte_start``: where row ``start`` begins in a plain JSONL file), the
    records starting at these byte offsets of a WARC."""

    path: str
    format: str
    start: int = 0
    stop: int | None = None
    byte_start: int | None = None

    @property
    def size(self) -> int:
        return 0 if self.format == "hf" else os.path.getsize(self.path)

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop is None


# --------------------------------------------------------------------------- resolving
def format_of(name: str) -> str | None:
    low = name.lower()
    for suffix, fmt in _SUFFIXES:
        if low.endswith(suffix):
            return fmt
    return None


def sniff_format(path: Path) -> str | None:
    """Guess a format from the first bytes (after gzip/zstd decompression)."""
    try:
        with open_binary(path) as f:
            head = f.read(512)
    except (DatagenError, OSError, *DAMAGE_ERRORS):
        return None
    if head[257:262] == b"ustar":
        return "tar"
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"WARC/"):
        return "warc"
    if head.startswith(b"filedesc://"):
        return "arc"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"{"):
        return "jsonl"
    if head.startswith(b"<"):
        return "html"
    return None


def _glob(pattern: str) -> list[str]:
    """Expand a glob relative to the cwd, else to the project root (like cfg.project_path)."""
    p = Path(pattern).expanduser()
    if p.is_absolute():
        return sorted(globlib.glob(str(p), recursive=True))
    hits = sorted(globlib.glob(str(p), recursive=True))
    return hits or sorted(globlib.glob(str(PROJECT_ROOT / p), recursive=True))


def _resolve_path(item: str) -> Path | None:
    p = Path(item).expanduser()
    if p.is_absolute() or p.exists():
        return p if p.exists() else None
    q = PROJECT_ROOT / p
    return q if q.exists() else None


def resolve_inputs(inputs: list[str], fmt: str = "auto") -> list[InputSource]:
    """Expand paths, globs and folders into input files, all checked before any work.

    ``hf:NAME`` names a Hugging Face dataset (name or local path); everything else is a file,
    a folder (searched recursively for known input files) or a glob.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise DatagenError(
            f"web.format: unknown format '{fmt}' (allowed: auto, {', '.join(FORMATS)})"
        )
    out: list[InputSource] = []
    for item in inputs:
        if item.startswith("hf:") or fmt == "hf":
            name = item.removeprefix("hf:")
            if not name:
                raise DatagenError("web.inputs: 'hf:' needs a dataset name or path (hf:NAME)")
            out.append(InputSource(name, "hf"))
            continue
        if any(ch in item for ch in "*?["):
            files = [f for f in _glob(item) if os.path.isfile(f)]
            if not files:
                raise DatagenError(f"web.inputs: {item}: matches no file{_HINT}")
            out.extend(_source(Path(f), fmt, where=item) for f in files)
            continue
        p = _resolve_path(item)
        if p is None:
            raise DatagenError(f"web.inputs: {item}: no such file or folder{_HINT}")
        if p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and (format_of(f.name) == fmt if fmt != "auto" else format_of(f.name))
            )
            if not files:
                kinds = fmt if fmt != "auto" else ", ".join(sorted({s for s, _ in _SUFFIXES}))
                raise DatagenError(f"{p}: folder has no input files (looked for {kinds})")
            out.extend(_source(f, fmt, where=str(p)) for f in files)
        else:
            out.append(_source(p, fmt, where=str(p)))
    empty = [s for s in out if s.format == "empty"]
    if empty and len(empty) == len(out):
        # one empty file among thousands is common and only skipped (counted, warned about
        # when read); with nothing else to read the inputs are surely wrong
        what = "is empty" if len(empty) == 1 else f"and the other {len(empty) - 1} are all empty"
        raise DatagenError(f"web.inputs: {empty[0].path} {what}; nothing to read{_HINT}")
    return out


def is_empty_file(path: Path) -> bool:
    """0 bytes, or a small .gz / .zst with nothing inside (an empty gzip is 20 bytes; only
    files under 4 KiB are opened, so checking thousands of inputs stays cheap)."""
    size = path.stat().st_size
    if size == 0:
        return True
    if size > 4096:
        return False
    try:
        with open_binary(path) as f:
            return not f.read(1)
    except (DatagenError, OSError, *DAMAGE_ERRORS):
        return False  # damaged: reported when read


def _source(path: Path, fmt: str, where: str) -> InputSource:
    if is_empty_file(path):
        return InputSource(str(path), "empty")
    if fmt != "auto":
        return InputSource(str(path), fmt)
    found = format_of(path.name) or sniff_format(path)
    if found is None:
        raise DatagenError(
            f"{path}: unknown input format (from {where}); "
            f"set web.format to one of {', '.join(FORMATS)}"
        )
    return InputSource(str(path), found)


# --------------------------------------------------------------------------- helpers
def iso_date(value: str | None) -> str | None:
    """WARC-Date (ISO), an HTTP date, or an ARC ``YYYYMMDDhhmmss`` stamp -> ISO 8601 UTC."""
    if not value or value.strip().lower() in ("null", "none", "-"):
        return None
    v = value.strip()
    if re.fullmatch(r"\d{14}", v):
        with contextlib.suppress(ValueError):
            return datetime.strptime(v, "%Y%m%d%H%M%S").replace(tzinfo=UTC).isoformat()
        return None
    if v[:4].isdigit() and "T" in v:
        return v
    try:
        d = parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def split_content_type(value: str | None) -> tuple[str | None, str | None]:
    """``text/html; charset=UTF-8`` -> (``text/html``, ``utf-8``)."""
    if not value:
        return None, None
    parts = [p.strip() for p in value.split(";")]
    mime = parts[0].lower() or None
    charset = None
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k.strip().lower() == "charset" and v.strip():
            charset = v.strip().strip("\"'").lower()
    return mime, charset


def _where(path: str, offset: int | None) -> str:
    return f"{path}" if offset is None else f"{path} @ offset {offset}"


# --------------------------------------------------------------------------- WARC / WET
# warcio raises assorted types on damaged bytes (AttributeError on a cut header, ValueError,
# zlib.error, EOFError)
_WARCIO_ERRORS = (EOFError, zlib.error, OSError, ValueError, AttributeError, KeyError, IndexError)


class _GzipMemberDamage(Exception):
    """A gzip member of a WARC that does not decompress (bad CRC, garbled deflate data)."""


class _StrictGzipReader(DecompressingBufferedReader):
    """warcio's reader for a file known to be gzip, except that a member that fails to
    decompress raises: warcio writes "Error -3 while decompressing data" to stderr and ends
    the file there, or, when the damage is in a member's first block, reads the compressed
    bytes as if they were plain WARC."""

    def _decompress(self, data: bytes) -> bytes:
        if not self.decompressor or not data:
            return data
        try:
            return self.decompressor.decompress(data)
        except zlib.error as e:
            raise _GzipMemberDamage(one_line(e)) from None


def _archive_iterator(raw: IO[bytes], gz: bool) -> ArchiveIterator:
    it = ArchiveIterator(raw, no_record_parse=True)
    if gz:  # nothing is read before the first record is asked for: the reader can be swapped
        it.reader = _StrictGzipReader(it.fh, block_size=it.reader.block_size)
    return it


class _Window:
    """A seekable binary file that ends at ``stop``: warcio and the damage scan, reading a
    part of a split WARC, never see the bytes of the next part."""

    def __init__(self, f: IO[bytes], stop: int) -> None:
        self._f = f
        self._stop = stop

    def read(self, size: int = -1) -> bytes:
        left = self._stop - self._f.tell()
        if left <= 0:
            return b""
        return self._f.read(left if size < 0 else min(size, left))

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)


def iter_warc(
    path: str, stats: ReadStats, start: int = 0, stop: int | None = None
) -> Iterator[WebRecord]:
    """WARC and WET records via warcio; copes with damage as described in the module doc.
    ``start``/``stop``: the records that start in these bytes of a per-record-gzip file
    (``start`` is where one starts; a damaged record is skipped within the range)."""
    seen = 0
    with open(path, "rb") as f:
        gz = f.read(3) == GZIP_MAGIC
        raw: Any = f if stop is None else _Window(f, stop)
        pos = start
        while True:
            raw.seek(pos)
            it = _archive_iterator(raw, gz)
            off = pos
            try:
                for rec in it:
                    seen += 1
                    wr = _warc_record(rec, it, path, stats)
                    off = it.get_record_offset()
                    if wr is not None:
                        yield wr
                return
            except ArchiveLoadFailed as e:
                if "non-chunked gzip" in str(e):
                    # ONE gzip stream for the whole file: warcio refuses to seek in it, so read
                    # it as a decompressed stream (offsets are then decompressed offsets)
                    yield from _iter_warc_stream(path, stats, skip=seen)
                    return
                why = one_line(e)
            except _GzipMemberDamage as e:
                why = f"gzip member does not decompress ({e})"
            # count the damage and resume after it
            except _WARCIO_ERRORS as e:
                why = f"unreadable record ({type(e).__name__}: {one_line(e)})"
            off = max(off, int(getattr(it, "offset", off)))
            nxt = _next_member(raw, off + 1, gz)
            resume = f"reading resumes at offset {nxt}" if nxt is not None else "no record after it"
            stats.error("corrupt_record", _where(path, off), f"{why}; skipped, {resume}")
            if nxt is None:
                return
            pos = nxt


def _iter_warc_stream(path: str, stats: ReadStats, skip: int) -> Iterator[WebRecord]:
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
        it = ArchiveIterator(f, no_record_parse=True)
        off: int | None = 0
        n = 0
        try:
            for rec in it:
                n += 1
                if n <= skip:  # counted already by the first pass
                    continue
                wr = _warc_record(rec, it, path, stats)
                off = it.get_record_offset()
                if wr is not None:
                    yield wr
        except (ArchiveLoadFailed, *_WARCIO_ERRORS) as e:
            kind = "truncated" if isinstance(e, EOFError) else "corrupt_record"
            stats.error(
                kind,
                _where(path, off),
                f"stream ends in damage ({one_line(e)}); records before it were read",
            )


def _next_member(raw: IO[bytes], start: int, gz: bool) -> int | None:
    """Offset of the next gzip member (gzip files) or ``WARC/`` line (plain files) at or after
    ``start`` whose content starts a WARC record; None at the end of the file."""
    marker = GZIP_MAGIC if gz else b"WARC/1."
    raw.seek(start)
    base = start
    tail = b""
    while True:
        chunk = raw.read(1 << 20)
        if not chunk:
            return None
        buf = tail + chunk
        i = buf.find(marker)
        while i >= 0:
            at = base - len(tail) + i
            if not gz or _starts_warc(raw, at):
                return at
            i = buf.find(marker, i + 1)
        tail = buf[-(len(marker) - 1) :]
        base += len(chunk)
        raw.seek(base)


def _starts_warc(raw: IO[bytes], at: int) -> bool:
    here = raw.tell()
    try:
        raw.seek(at)
        d = zlib.decompressobj(31)
        head = d.decompress(raw.read(512), 16)
        return head.startswith(b"WARC/")
    except zlib.error:
        return False
    finally:
        raw.seek(here)


def _http_body(block: bytes) -> tuple[Any, bytes]:
    """Split an HTTP response block into parsed headers and the decoded body (chunked transfer
    and gzip/deflate/br content encodings undone by warcio's readers)."""
    bio = io.BytesIO(block)
    http = _HTTP_PARSER.parse(bio)
    enc = (http.get_header("Content-Encoding") or "").lower() or None
    if enc not in BufferedReader.get_supported_decompressors():
        enc = None
    if (http.get_header("Transfer-Encoding") or "").lower() == "chunked":
        return http, ChunkedDataReader(bio, decomp_type=enc).read()
    if enc:
        return http, BufferedReader(bio, decomp_type=enc).read()
    return http, bio.read()


def _warc_record(rec: Any, it: ArchiveIterator, path: str, stats: ReadStats) -> WebRecord | None:
    """Read one record's block, then its offset (warcio's get_record_offset reads the record
    to its end, so it must come after the content).

    Records are read with ``no_record_parse``: the HTTP header block is parsed here only when
    the block starts with ``HTTP/``, so Wayback-style records without one keep their first
    HTML lines (warcio would take them for a status line and headers)."""
    rtype = rec.rec_type or "unknown"
    stats.record_types[rtype] += 1
    if rtype not in CONTENT_TYPES:
        return None
    h = rec.rec_headers
    declared = int(h.get_header("Content-Length") or 0)
    block = rec.raw_stream.read()
    offset = it.get_record_offset()
    if len(block) < declared:
        stats.error(
            "truncated",
            _where(path, offset),
            f"record cut short ({len(block)} of {declared} bytes); skipped",
        )
        return None
    status = None
    if rtype == "response" and block.startswith(b"HTTP/"):
        try:
            http, data = _http_body(block)
        except (StatusAndHeadersParserException, EOFError, zlib.error, OSError, ValueError) as e:
            stats.error(
                "corrupt_record",
                _where(path, offset),
                f"bad HTTP block ({one_line(e)}); skipped",
            )
            return None
        with contextlib.suppress(ValueError, TypeError):
            status = int(http.get_statuscode())
        mime, charset = split_content_type(http.get_header("Content-Type"))
    else:  # resource/conversion records, or Wayback-style records without HTTP headers
        data = block
        mime, charset = split_content_type(h.get_header("Content-Type"))
        if not mime or mime.startswith("application/http"):
            mime, charset = split_content_type(h.get_header("X-Archive-Guessed-Content-Type"))
    date = iso_date(h.get_header("WARC-Date")) or iso_date(h.get_header("Memento-Datetime"))
    wr = WebRecord(
        source_file=path,
        offset=offset,
        url=h.get_header("WARC-Target-URI"),
        record_id=h.get_header("WARC-Record-ID"),
        fetch_date=date,
        content_type=mime,
        charset=charset,
        http_status=status,
    )
    if rtype == "conversion":  # WET: already plain text (UTF-8 by the CC spec)
        wr.text = data.decode("utf-8", errors="replace")
        wr.content_type = "text/plain"
    else:
        wr.payload = data
    return wr


# --------------------------------------------------------------------------- ARC
def iter_arc(path: str, stats: ReadStats) -> Iterator[WebRecord]:
    """ARC v1 (``URL IP date mime length``) and v2 (10 fields, length last) files."""
    with open_binary(path) as f:
        off = 0
        try:
            line = f.readline()
            while line:
                if not line.strip():
                    off += len(line)
                    line = f.readline()
                    continue
                m = _ARC_HEADER.match(line)
                if m is None:
                    stats.error(
                        "corrupt_record",
                        _where(path, off),
                        "not an ARC header line; skipping to the next one",
                    )
                    off += len(line)
                    line = f.readline()
                    while line and not _ARC_HEADER.match(line):
                        off += len(line)
                        line = f.readline()
                    continue
                url, _ip, date, mime, length = m.groups()
                size = int(length)
                body = f.read(size)
                rec_off = off
                off += len(line) + len(body)
                if len(body) < size:
                    stats.error(
                        "truncated",
                        _where(path, rec_off),
                        f"record cut short ({len(body)} of {size} bytes); skipped",
                    )
                    return
                if url.startswith(b"filedesc://"):
                    stats.record_types["arc_header"] += 1
                else:
                    stats.record_types["arc_record"] += 1
                    yield _arc_record(path, rec_off, url, date, mime, body)
                line = f.readline()
        except (OSError, *DAMAGE_ERRORS) as e:
            stats.error(
                "truncated",
                _where(path, off),
                f"compressed stream ends in damage ({one_line(e)}); records before it were read",
            )


def _arc_record(
    path: str, off: int, url: bytes, date: bytes, mime: bytes, body: bytes
) -> WebRecord:
    status = None
    charset = None
    ctype = mime.decode("latin-1").lower()
    payload = body
    if body.startswith(b"HTTP/"):
        cut = _header_end(body)
        head, payload = body[:cut], body[cut:]
        lines = head.decode("latin-1").splitlines()
        with contextlib.suppress(IndexError, ValueError):
            status = int(lines[0].split()[1])
        for hl in lines[1:]:
            k, _, v = hl.partition(":")
            if k.strip().lower() == "content-type":
                m2, charset = split_content_type(v)
                ctype = m2 or ctype
    return WebRecord(
        source_file=path,
        offset=off,
        url=url.decode("utf-8", "replace"),
        fetch_date=iso_date(date.decode("ascii")),
        content_type=split_content_type(ctype)[0],
        charset=charset,
        http_status=status,
        payload=payload,
    )


def _header_end(body: bytes) -> int:
    ends = [(i, n) for i, n in ((body.find(b"\r\n\r\n"), 4), (body.find(b"\n\n"), 2)) if i >= 0]
    if not ends:
        return len(body)
    i, n = min(ends)
    return i + n


# --------------------------------------------------------------------------- HTML files
def iter_html(path: str, stats: ReadStats) -> Iterator[WebRecord]:
    try:
        with open_binary(path) as f:
            data = f.read()
    except (OSError, *DAMAGE_ERRORS) as e:
        stats.error("truncated", path, f"cannot read ({one_line(e)})")
        return
    stats.record_types["html_file"] += 1
    mtime = datetime.fromtimestamp(os.path.getmtime(path), UTC).isoformat(timespec="seconds")
    yield WebRecord(
        source_file=path,
        offset=0,
        url=Path(path).resolve().as_uri(),
        fetch_date=mtime,
        content_type="text/html",
        payload=data,
    )


# --------------------------------------------------------------------------- tar archives
def iter_tar(path: str, stats: ReadStats) -> Iterator[WebRecord]:
    """The HTML files (``.html``, ``.htm``, ``.xhtml``, ``.html.gz``) in a tar archive (plain,
    gzip, xz or bzip2), streamed member by member; other members are counted as
    ``tar_other``. A record's offset is the member's position in the archive, its record id
    the member's path."""
    base = Path(path).resolve().as_uri()
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for i, member in enumerate(tar):
                if not member.isfile() or format_of(member.name) != "html":
                    stats.record_types["tar_other"] += 1
                    continue
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if data.startswith(GZIP_MAGIC):
                    data = gzip.decompress(data)
                stats.record_types["tar_html"] += 1
                yield WebRecord(
                    source_file=path,
                    offset=i,
                    url=f"{base}#{member.name}",
                    record_id=member.name,
                    fetch_date=datetime.fromtimestamp(member.mtime, UTC).isoformat(),
                    content_type="text/html",
                    payload=data,
                )
    except (tarfile.TarError, lzma.LZMAError, OSError, *DAMAGE_ERRORS) as e:
        stats.error(
            "truncated",
            path,
            f"archive ends in damage ({one_line(e)}); the members before it were read",
        )


# --------------------------------------------------------------------------- JSONL
def _field(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def iter_jsonl(
    path: str,
    stats: ReadStats,
    text_field: str,
    url_field: str,
    date_field: str,
    start: int = 0,
    stop: int | None = None,
    byte_start: int | None = None,
) -> Iterator[WebRecord]:
    """Lines ``start`` to ``stop`` (0-based, exclusive; None = to the end) of a JSONL file; a
    plain file seeks to ``byte_start``, a compressed one skips the lines before ``start``
    without parsing them. Damaged compressed data ends the range (counted as truncated)."""
    try:
        for number, raw in _numbered_lines(path, start, stop, byte_start):
            if not raw.strip():
                continue
            obj, why = parse_json_line(path, number, raw)
            if why is not None:
                stats.error("bad_json", f"{path}:{number}", f"{why}; skipped")
                continue
            text = _field(obj, text_field)
            if not isinstance(text, str):
                stats.error(
                    "missing_text",
                    f"{path}:{number}",
                    f"no string field '{text_field}' (web.text_field); skipped",
                )
                continue
            stats.record_types["jsonl_line"] += 1
            url = _field(obj, url_field)
            date = _field(obj, date_field)
            yield WebRecord(
                source_file=path,
                offset=number,
                url=url if isinstance(url, str) else None,
                fetch_date=iso_date(date) if isinstance(date, str) else None,
                content_type="text/plain",
                text=text,
            )
    except FileDamage as e:
        stats.error("truncated", e.where, e.what)


def _numbered_lines(
    path: str, start: int, stop: int | None, byte_start: int | None
) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) for lines ``start`` to ``stop`` of a file."""
    if byte_start is not None:  # a plain file: seek to the range
        end = _END if stop is None else stop
        yield from enumerate(
            iter_lines(Slice(path=path, start=start, stop=end, byte_start=byte_start)), start + 1
        )
        return
    for number, raw, _ in iter_file_lines(path):
        if stop is not None and number > stop:
            return
        if number > start:
            yield number, raw


_END = 1 << 62  # "to the end of the file" as a line number


# --------------------------------------------------------------------------- parquet
def iter_parquet(
    path: str,
    stats: ReadStats,
    text_field: str,
    url_field: str,
    date_field: str,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[WebRecord]:
    """Rows ``start`` to ``stop`` (0-based, exclusive; None = to the end) of a parquet file,
    reading only the row groups that hold them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        stats.error("corrupt_file", path, f"not a readable parquet file ({one_line(e)})")
        return
    names = set(pf.schema_arrow.names)
    if text_field not in names:
        raise DatagenError(
            f"{path}: parquet has no column '{text_field}' (web.text_field); "
            f"columns: {', '.join(sorted(names))}"
        )
    cols = [c for c in (text_field, url_field, date_field) if c in names]
    end = _END if stop is None else stop
    groups: list[int] = []
    row = first = 0  # row: index of the next row read
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if first + n > start and first < end:
            if not groups:
                row = first
            groups.append(g)
        first += n
    try:
        for batch in pf.iter_batches(batch_size=256, columns=cols, row_groups=groups):
            d = batch.to_pydict()
            for i in range(batch.num_rows):
                r, row = row, row + 1
                if r < start:
                    continue
                if r >= end:
                    return
                text = d[text_field][i]
                if not isinstance(text, str):
                    stats.error("missing_text", f"{path} row {r + 1}", "text is null; skipped")
                    continue
                stats.record_types["parquet_row"] += 1
                url = d[url_field][i] if url_field in d else None
                date = d[date_field][i] if date_field in d else None
                yield WebRecord(
                    source_file=path,
                    offset=r,
                    url=url,
                    fetch_date=iso_date(str(date)) if date is not None else None,
                    content_type="text/plain",
                    text=text,
                )
    except (pa.ArrowInvalid, OSError) as e:
        stats.error("corrupt_record", f"{path} row {row}", f"unreadable ({one_line(e)})")


def parquet_rows(path: str) -> int | None:
    """Rows of a parquet file from its footer; None when the file is not readable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowInvalid, OSError):
        return None


# --------------------------------------------------------------------------- HF datasets
def iter_hf(
    name: str,
    stats: ReadStats,
    text_field: str,
    url_field: str,
    date_field: str,
    split: str,
    config: str | None,
) -> Iterator[WebRecord]:
    """A Hugging Face dataset by name (online users) or local path, streamed row by row."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DatagenError(f"web.inputs: hf:{name}: cannot load dataset ({one_line(e)})") from None
    for i, row in enumerate(ds):
        text = _field(row, text_field)
        if not isinstance(text, str):
            stats.error("missing_text", f"hf:{name} row {i}", f"no field '{text_field}'")
            continue
        stats.record_types["hf_row"] += 1
        url = _field(row, url_field)
        date = _field(row, date_field)
        yield WebRecord(
            source_file=f"hf:{name}",
            offset=i,
            url=url if isinstance(url, str) else None,
            fetch_date=iso_date(str(date)) if date is not None else None,
            content_type="text/plain",
            text=text,
        )


# --------------------------------------------------------------------------- dispatch
def iter_source(
    src: InputSource,
    stats: ReadStats,
    text_field: str = "text",
    url_field: str = "url",
    date_field: str = "date",
    hf_split: str = "train",
    hf_config: str | None = None,
) -> Iterator[WebRecord]:
    """All records of one input (or of its rows ``src.start`` to ``src.stop``); an empty file
    is counted as ``empty_file`` and yields nothing. A file split into row ranges counts as a
    file (and its bytes) in the range that starts it."""
    if src.start == 0:
        stats.files += 1
    if src.format != "hf":
        size = src.size
        if src.start == 0:
            stats.bytes += size
        if src.format == "empty" or size == 0:
            stats.error("empty_file", src.path, "empty file (nothing to read); skipped")
            return
    fields = (text_field, url_field, date_field)
    if src.format == "warc":
        yield from iter_warc(src.path, stats, src.start, src.stop)
    elif src.format == "arc":
        yield from iter_arc(src.path, stats)
    elif src.format == "html":
        yield from iter_html(src.path, stats)
    elif src.format == "tar":
        yield from iter_tar(src.path, stats)
    elif src.format == "jsonl":
        yield from iter_jsonl(src.path, stats, *fields, src.start, src.stop, src.byte_start)
    elif src.format == "parquet":
        yield from iter_parquet(src.path, stats, *fields, src.start, src.stop)
    elif src.format == "hf":
        yield from iter_hf(src.path, stats, *fields, hf_split, hf_config)
    else:  # pragma: no cover - resolve_inputs only returns known formats
        raise DatagenError(f"{src.path}: unknown format '{src.format}'")


def warc_parts(src: InputSource, shard_docs: int) -> list[InputSource]:
    """A per-record-gzip WARC cut into byte ranges of about ``shard_docs`` documents: the
    compressed bytes per document of its first records times ``shard_docs``, each range
    ending at the first gzip member starting a WARC record at or after that length. A plain
    or single-gzip-stream WARC, one with fewer documents (sure when it has fewer than
    ``shard_docs`` x ``_MIN_DOC_BYTES`` bytes) or one whose first records are damaged is one
    part."""
    size = src.size
    if size < shard_docs * _MIN_DOC_BYTES:
        return [src]
    with open(src.path, "rb") as raw:
        if raw.read(3) != GZIP_MAGIC:
            return [src]
        raw.seek(0)
        per_doc = _bytes_per_doc(raw)
        if per_doc is None:
            return [src]
        step = max(1, round(shard_docs * per_doc))
        bounds = [0]
        while bounds[-1] + step < size:
            nxt = _next_member(raw, bounds[-1] + step, gz=True)
            if nxt is None:
                break
            bounds.append(nxt)
    stops: list[int | None] = [*bounds[1:], None]
    return [replace(src, start=a, stop=b) for a, b in zip(bounds, stops, strict=True)]


def _bytes_per_doc(raw: IO[bytes]) -> float | None:
    """Compressed bytes per document record in the first ``_SAMPLE_RECORDS`` records (or
    ``_SAMPLE_BYTES``) of a gzip WARC; None for a single gzip stream, damage, or no document
    among them."""
    it = _archive_iterator(raw, gz=True)
    docs = end = 0
    try:
        for n, rec in enumerate(it, 1):
            docs += rec.rec_type in CONTENT_TYPES
            end = it.get_record_offset() + it.get_record_length()
            if n == _SAMPLE_RECORDS or end >= _SAMPLE_BYTES:
                break
    except (ArchiveLoadFailed, _GzipMemberDamage, *_WARCIO_ERRORS):
        return None
    return end / docs if docs else None


def plan_parts(sources: list[InputSource], shard_docs: int) -> list[InputSource]:
    """The web stage's shards: one per input, except that a JSONL or parquet file with more
    than ``shard_docs`` rows becomes row ranges of ``shard_docs`` rows, and a per-record-gzip
    WARC with more than about ``shard_docs`` documents byte ranges of about that many
    (:func:`warc_parts`). Depends only on the inputs and ``shard_docs``. A compressed JSONL
    file that cannot be read to its end is one shard (its reader reports the damage)."""
    parts: list[InputSource] = []
    for src in sources:
        if src.format == "warc":
            parts += warc_parts(src, shard_docs)
            continue
        if src.format == "jsonl":
            try:
                n = count_lines(Path(src.path))
            except (OSError, *DAMAGE_ERRORS):
                n = 0
            if n > shard_docs:
                for spec in plan_shards([Path(src.path)], shard_docs):
                    s = spec.slices[0]
                    parts.append(replace(src, start=s.start, stop=s.stop, byte_start=s.byte_start))
                continue
        elif src.format == "parquet":
            rows = parquet_rows(src.path) or 0
            if rows > shard_docs:
                for start in range(0, rows, shard_docs):
                    parts.append(replace(src, start=start, stop=min(start + shard_docs, rows)))
                continue
        parts.append(src)
    return parts


__all__ = [
    "FORMATS",
    "InputSource",
    "ReadStats",
    "WebRecord",
    "format_of",
    "iter_source",
    "plan_parts",
    "resolve_inputs",
    "sniff_format",
]
