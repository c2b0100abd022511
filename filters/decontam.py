"""Benchmark decontamination by word n-gram overlap (GPT-3: Brown et al. 2020, Appendix C).

``Decontaminator(cfg: DecontamConfig)`` loads every benchmark once (``decontam.benchmarks`` and
``decontam.extra_benchmarks``: local jsonl / json / csv / parquet files, gzip or zstd ok, a
folder or glob of them; or a Hugging Face dataset name for users online) into sets of word
sequence hashes, then answers per document::

    dc = Decontaminator(cfg.decontam)
    res = dc.check(text)      # DecontamResult(matches={"gsm8k": 3}, reason, text, pieces)
    # mode "drop": reason = "decontam.<benchmark>" when any sequence matches, text unchanged
    # mode "cut":  the GPT-3 rule: remove a 200-char window around each match, drop pieces under
    #              200 chars, drop the document (reason "decontam.<benchmark>") if it splits
    #              into more than 10 pieces or nothing is left; else res.text is the cut text
    dc.loaded                 # {benchmark: {"items", "values", "values_ngram", "values_whole",
                              #   "values_too_short", "items_too_short", "ngrams", "source"}}
    dc.unavailable            # {benchmark: why} (with on_missing="warn")
    dc.warnings()             # one line per benchmark with values too short to check

Each value (one field of one item) is indexed by its word ``ngram``-grams; a value with fewer
words but at least ``min_short_words`` is indexed as its whole word sequence (a document
matches when it contains exactly those words in a row); a shorter one is too short to check
without matching common phrases and is only counted. Words are ``\\w+`` runs of the original
text, each lower-cased, so punctuation and spacing differences do not hide a match.
"""

from __future__ import annotations

import csv
import glob as globlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from pipeline import PROJECT_ROOT
from pipeline.config import BenchmarkSource, DecontamConfig
from pipeline.errors import DatagenError
from pipeline.files import iter_jsonl, one_line, read_text

_TOKEN = re.compile(r"\w+")
FORMATS = (".jsonl", ".json", ".csv", ".parquet")
_COMPRESSED = (".gz", ".zst")


def _resolve(p: str) -> Path:
    """Like ``PipelineConfig.project_path``: absolute, relative to cwd, else the project root."""
    path = Path(p).expanduser()
    return path if path.is_absolute() or path.exists() else PROJECT_ROOT / path


def _format(path: Path) -> str | None:
    name = path.name.lower()
    for c in _COMPRESSED:
        name = name.removesuffix(c)
    return next((f for f in FORMATS if name.endswith(f)), None)


def benchmark_files(path: str) -> list[Path]:
    """A benchmark's ``path`` as files: the file, every benchmark file in a folder (recursive)
    or the files a glob matches (relative globs: cwd, else the project root); [] if none."""
    if any(ch in path for ch in "*?["):
        p = Path(path).expanduser()
        hits = sorted(globlib.glob(str(p), recursive=True))
        if not hits and not p.is_absolute():
            hits = sorted(globlib.glob(str(PROJECT_ROOT / p), recursive=True))
        return [Path(h) for h in hits if Path(h).is_file()]
    p = _resolve(path)
    if p.is_dir():
        return sorted(
            f
            for f in p.rglob("*")
            if f.is_file() and _format(f) is not None and not f.name.startswith(".")
        )
    return [p] if p.exists() else []


class _NgramKeys:
    """64-bit keys of word sequences (xxh3 per word, memoized; combined in numpy). The key of
    a sequence of L <= n words uses the first L multipliers, so all lengths come from one
    pass over a document."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._cache: dict[str, int] = {}
        rng = np.random.default_rng(13)
        self._mult = rng.integers(1, 2**62, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    def _hash(self, w: str) -> int:
        h = self._cache.get(w)
        if h is None:
            if len(self._cache) > 1 << 20:
                self._cache.clear()
            h = self._cache[w] = xxhash.xxh3_64_intdigest(w.encode("utf-8"))
        return h

    def windows(self, words: list[str], lengths: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(L, keys of every L-word window) for each L in ``lengths`` (each <= n) that fits."""
        if not words or not lengths:
            return
        wh = np.fromiter(map(self._hash, words), dtype=np.uint64, count=len(words))
        acc = np.zeros(0, dtype=np.uint64)
        for k in range(min(max(lengths), len(words))):
            m = len(words) - k  # windows of k + 1 words
            term = wh[k : k + m] * self._mult[k]
            acc = term if k == 0 else acc[:m] + term
            if k + 1 in lengths:
                yield k + 1, acc

    def __call__(self, words: list[str], length: int | None = None) -> np.ndarray:
        """Keys of every window of ``length`` (default n) words."""
        want = length or self.n
        return next((keys for _, keys in self.windows(words, {want})), np.zeros(0, dtype=np.uint64))


def _walk(obj: Any, parts: list[str]) -> Iterator[str]:
    """Values at a dotted path; lists are walked element by element."""
    if isinstance(obj, list):
        for x in obj:
            yield from _walk(x, parts)
        return
    if not parts:
        if obj is not None and not isinstance(obj, dict):
            yield str(obj)
        return
    if isinstance(obj, dict) and parts[0] in obj:
        yield from _walk(obj[parts[0]], parts[1:])


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a jsonl / json / csv / parquet file (optionally .gz / .zst) as dicts; a damaged,
    non-UTF-8 or malformed file stops with one line naming it (and the line)."""
    fmt = _format(path)
    if fmt == ".jsonl":
        yield from (line.value for line in iter_jsonl(path))
    elif fmt == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise DatagenError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        rows = (
            data
            if isinstance(data, list)
            else next((v for v in data.values() if isinstance(v, list)), None)
            if isinstance(data, dict)
            else None
        )
        if rows is None:
            raise DatagenError(f"{path}: expected a JSON list of records")
        yield from rows
    elif fmt == ".csv":
        # read_text drops a UTF-8 BOM (Excel's "CSV UTF-8"): else the first column would be
        # named "\ufeffquestion" and never match its field
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        try:
            yield from reader
        except csv.Error as e:
            raise DatagenError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
    elif fmt == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DatagenError(f"{path}: not a readable parquet file ({one_line(e)})") from None
        yield from table.to_pylist()
    else:
        raise DatagenError(f"{path}: unknown benchmark format (jsonl, json, csv, parquet)")


def read_hf(name: str, config: str, split: str) -> Iterator[dict[str, Any]]:
    """Rows of a Hugging Face dataset (online users; ``datasets`` caches it)."""
    import datasets

    ds = datasets.load_dataset(name, config or None, split=split)
    yield from ds


@dataclass
class DecontamResult:
    matches: dict[str, int] = field(default_factory=dict)  # benchmark -> matched n-grams
    reason: str | None = None
    text: str | None = None  # cut text (mode "cut", document kept); None when unchanged
    pieces: int = 0


class Decontaminator:
    def __init__(self, cfg: DecontamConfig | None = None) -> None:
        self.cfg = cfg or DecontamConfig()
        self.n = self.cfg.ngram
        self.min_short = min(self.cfg.min_short_words, self.n)
        self._keys = _NgramKeys(self.n)
        self.names: list[str] = []  # benchmark number -> name
        # while loading: sequence length -> key -> number of the first benchmark that has it
        self._building: dict[int, dict[int, int]] = {}
        self.loaded: dict[str, dict[str, Any]] = {}
        self.unavailable: dict[str, str] = {}
        for b in self.cfg.all_benchmarks() if self.cfg.enabled else []:
            self._load(b)
        # length -> (sorted keys, benchmark numbers): a document's windows are looked up with
        # one vectorised searchsorted per length
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for length, table in self._building.items():
            keys = np.fromiter(table.keys(), dtype=np.uint64, count=len(table))
            ids = np.fromiter(table.values(), dtype=np.int32, count=len(table))
            order = np.argsort(keys)
            self._tables[length] = (keys[order], ids[order])
        self._building = {}

    def _source(self, b: BenchmarkSource) -> tuple[Iterator[dict[str, Any]], str] | str:
        """(rows, source) of a benchmark, or why it is unavailable."""
        files = benchmark_files(b.path) if b.path else []
        if files:
            single = len(files) == 1 and files[0] == _resolve(b.path)
            source = str(files[0]) if single else f"{b.path} ({len(files)} files)"
            return (row for f in files for row in read_records(f)), source
        if b.hf and self.cfg.allow_download:
            return read_hf(b.hf, b.hf_config, b.split), f"hf:{b.hf}"
        if not b.path:
            why = "no path"
        elif any(ch in b.path for ch in "*?["):
            why = f"{b.path} matches no file"
        elif _resolve(b.path).is_dir():
            why = f"{_resolve(b.path)} has no {'/'.join(f[1:] for f in FORMATS)} files"
        else:
            why = f"{_resolve(b.path)} not found"
        if b.hf:
            why += f"; hf '{b.hf}' not loaded (decontam.allow_download=false)"
        return why

    def _load(self, b: BenchmarkSource) -> None:
        if not b.fields:
            raise DatagenError(f"decontam.benchmarks.{b.name}.fields: name at least one field")
        got = self._source(b)
        if isinstance(got, str):
            if self.cfg.on_missing == "error":
                raise DatagenError(f"decontam.benchmarks.{b.name}: {got}")
            self.unavailable[b.name] = got
            return
        rows, source = got
        number = len(self.names)
        self.names.append(b.name)
        c = dict.fromkeys(
            ("items", "values", "values_ngram", "values_whole", "values_too_short"), 0
        )
        c |= {"items_too_short": 0, "ngrams": 0, "whole": 0}
        for row in rows:
            if not isinstance(row, dict):
                continue
            c["items"] += 1
            indexed = False
            for fld in b.fields:
                for value in _walk(row, fld.split(".")):
                    c["values"] += 1
                    words = [m.group().lower() for m in _TOKEN.finditer(value)]
                    if len(words) >= self.n:
                        c["values_ngram"] += 1
                        length, counter = self.n, "ngrams"
                    elif len(words) >= self.min_short:
                        c["values_whole"] += 1
                        length, counter = len(words), "whole"
                    else:
                        c["values_too_short"] += 1
                        continue
                    indexed = True
                    table = self._building.setdefault(length, {})
                    for key in self._keys(words, length).tolist():
                        if key not in table:
                            table[key] = number
                            c[counter] += 1
            c["items_too_short"] += not indexed
        if c["items"] == 0:
            raise DatagenError(f"{source}: benchmark '{b.name}' has no records")
        if c["values"] == 0:
            raise DatagenError(
                f"decontam.benchmarks.{b.name}.fields: none of "
                f"{', '.join(b.fields)} found in the records of {source}"
            )
        self.loaded[b.name] = {**c, "source": source}

    def warnings(self) -> list[str]:
        """One line per benchmark with values too short to check (the stages print them)."""
        return [
            f"decontam: {name}: {c['values_too_short']} of {c['values']} values "
            f"({c['items_too_short']} of {c['items']} items entirely) have fewer than "
            f"{self.min_short} words and are not checked (decontam.min_short_words)"
            for name, c in self.loaded.items()
            if c["values_too_short"]
        ]

    def _matches(self, text: str) -> list[tuple[int, int, str]]:
        """(char start, char end, benchmark) of each matching word sequence, by start."""
        if not self._tables:
            return []
        # tokenize the original text and lower-case per token, so char positions are the
        # original's even where lower() changes length ("İ".lower() is 2 chars)
        ms = list(_TOKEN.finditer(text))
        words = [m.group().lower() for m in ms]
        found = []
        for length, keys in self._keys.windows(words, set(self._tables)):
            table, ids = self._tables[length]
            pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
            for i in np.flatnonzero(table[pos] == keys).tolist():
                found.append((ms[i].start(), ms[i + length - 1].end(), self.names[ids[pos[i]]]))
        return sorted(found)

    def check(self, text: str) -> DecontamResult:
        found = self._matches(text)
        if not found:
            return DecontamResult()
        counts: dict[str, int] = {}
        for _, _, bench in found:
            counts[bench] = counts.get(bench, 0) + 1
        top = max(sorted(counts), key=lambda k: counts[k])
        reason = f"decontam.{top}"
        if self.cfg.mode == "drop":
            return DecontamResult(matches=counts, reason=reason)
        # GPT-3 rule: cut a window around each match, keep pieces >= min_piece_chars
        w = self.cfg.cut_window
        cuts: list[list[int]] = []
        for s, e, _ in found:
            lo, hi = max(0, s - w), min(len(text), e + w)
            if cuts and lo <= cuts[-1][1]:
                cuts[-1][1] = max(cuts[-1][1], hi)
            else:
                cuts.append([lo, hi])
        pieces, pos = [], 0
        for lo, hi in cuts:
            pieces.append(text[pos:lo])
            pos = hi
        pieces.append(text[pos:])
        n_pieces = sum(1 for p in pieces if p.strip())
        kept = [p.strip() for p in pieces if len(p.strip()) >= self.cfg.min_piece_chars]
        if n_pieces > self.cfg.max_pieces or not kept:
            return DecontamResult(matches=counts, reason=reason, pieces=n_pieces)
        return DecontamResult(matches=counts, text="\n\n".join(kept), pieces=n_pieces)


class DecontamStep:
    """Decontamination as a step over a batch: drop mode filters (reason
    ``decontam.<benchmark>``), cut mode rewrites the text with the GPT-3 rule and drops only
    what the rule leaves unusable. Scores ``decontam.matches`` (and ``decontam.pieces`` after
    a cut) stay on the record; per-benchmark document counts go to the stats. The benchmark
    index is built in ``setup``, once per worker."""

    name = "decontam"

    def __init__(self, cfg: DecontamConfig) -> None:
        self.cfg = cfg
        self.decon: Decontaminator | None = None

    def setup(self) -> None:
        if self.decon is None:
            self.decon = Decontaminator(self.cfg)

    def process(self, batch: list[Any], stats: Any) -> list[Any]:
        self.setup()
        assert self.decon is not None
        stats.info.setdefault(
            "decontam",
            {
                "loaded": self.decon.loaded,
                "unavailable": self.decon.unavailable,
                "warnings": self.decon.warnings(),
            },
        )
        for doc in batch:
            res = self.decon.check(doc.text)
            doc.scores["decontam.matches"] = float(sum(res.matches.values()))
            for b in res.matches:
                stats.add(f"decontam.{b}.docs_matched")
            if res.reason:
                doc.drop_reason = res.reason
                stats.add(f"decontam.{res.reason.split('.', 1)[1]}.docs_dropped")
            elif res.text is not None:
                doc.text = res.text
                doc.scores["decontam.pieces"] = float(res.pieces)
                for b in res.matches:
                    stats.add(f"decontam.{b}.docs_cut")
        return batch
