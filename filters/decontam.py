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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from filters.codepoints import chunks, code_points, joined, lowered, text_bounds, word_spans
from filters.ngrams import WordHasher, multipliers, windows, windows_within
from pipeline import PROJECT_ROOT, dotted
from pipeline.config import BenchmarkSource, DecontamConfig, project_path
from pipeline.errors import DatagenError
from pipeline.files import iter_jsonl, one_line, read_text

FORMATS = (".jsonl", ".json", ".csv", ".parquet")
_CHUNK_CHARS = 1 << 22  # benchmark values hashed together, at most this many chars
_COMPRESSED = (".gz", ".zst")


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
    p = project_path(path)
    if p.is_dir():
        return sorted(
            f
            for f in p.rglob("*")
            if f.is_file() and _format(f) is not None and not f.name.startswith(".")
        )
    return [p] if p.exists() else []


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
        self._hasher = WordHasher()
        self._mult = multipliers(self.n, seed=13)
        # a key per sequence length: an L-word sequence and an L'-word one never share a key
        self._salt = multipliers(self.n + 1, seed=14)
        self.names: list[str] = []  # benchmark number -> name
        # while loading: the sorted distinct keys of each benchmark that no earlier one has
        self._new_keys: list[np.ndarray] = []
        self.lengths: list[int] = []  # the sequence lengths indexed
        self.loaded: dict[str, dict[str, Any]] = {}
        self.unavailable: dict[str, str] = {}
        seen: set[int] = set()
        for b in self.cfg.all_benchmarks() if self.cfg.enabled else []:
            self._load(b, seen)
        self.lengths = sorted(seen)
        self._index = _KeyIndex(self._new_keys)
        self._new_keys = []

    def _source(self, b: BenchmarkSource) -> tuple[Iterator[dict[str, Any]], str] | str:
        """(rows, source) of a benchmark, or why it is unavailable."""
        files = benchmark_files(b.path) if b.path else []
        if files:
            single = len(files) == 1 and files[0] == project_path(b.path)
            source = str(files[0]) if single else f"{b.path} ({len(files)} files)"
            return (row for f in files for row in read_records(f)), source
        if b.hf and self.cfg.allow_download:
            return read_hf(b.hf, b.hf_config, b.split), f"hf:{b.hf}"
        if not b.path:
            why = "no path"
        elif any(ch in b.path for ch in "*?["):
            why = f"{b.path} matches no file"
        elif project_path(b.path).is_dir():
            why = f"{project_path(b.path)} has no {'/'.join(f[1:] for f in FORMATS)} files"
        else:
            why = f"{project_path(b.path)} not found"
        if b.hf:
            why += f"; hf '{b.hf}' not loaded (decontam.allow_download=false)"
        return why

    def _load(self, b: BenchmarkSource, lengths: set[int]) -> None:
        if not b.fields:
            raise DatagenError(f"decontam.benchmarks.{b.name}.fields: name at least one field")
        got = self._source(b)
        if isinstance(got, str):
            if self.cfg.on_missing == "error":
                raise DatagenError(f"decontam.benchmarks.{b.name}: {got}")
            self.unavailable[b.name] = got
            return
        rows, source = got
        self.names.append(b.name)  # its number: the index of its keys in _new_keys
        c = dict.fromkeys(
            ("items", "values", "values_ngram", "values_whole", "values_too_short"), 0
        )
        c |= {"items_too_short": 0, "ngrams": 0, "whole": 0}
        values: list[str] = []
        item_of: list[int] = []
        size = 0
        kinds: dict[str, list[np.ndarray]] = {"ngrams": [], "whole": []}
        indexed: list[np.ndarray] = []  # items with a value long enough to check

        def flush() -> None:
            counts, ngram_keys, whole_keys = self._value_keys(values, lengths)
            items = np.asarray(item_of)
            long_ = counts >= self.n
            short = ~long_ & (counts >= self.min_short)
            c["values"] += len(values)
            c["values_ngram"] += int(long_.sum())
            c["values_whole"] += int(short.sum())
            c["values_too_short"] += int((~long_ & ~short).sum())
            indexed.append(items[long_ | short])
            kinds["ngrams"].append(ngram_keys)
            kinds["whole"].append(whole_keys)
            values.clear()
            item_of.clear()

        for row in rows:
            if not isinstance(row, dict):
                continue
            c["items"] += 1
            for fld in b.fields:
                for value in dotted.walk(row, fld):
                    if value is not None and not isinstance(value, dict):
                        values.append(str(value))
                        item_of.append(c["items"])
                        size += len(values[-1])
            if size > _CHUNK_CHARS:
                flush()
                size = 0
        if values:
            flush()
        c["items_too_short"] = c["items"] - len(np.unique(np.concatenate([[0], *indexed]))) + 1
        earlier = np.sort(np.concatenate([np.zeros(0, dtype=np.uint64), *self._new_keys]))
        new = []
        for counter, parts in kinds.items():
            keys = _distinct(np.concatenate([np.zeros(0, dtype=np.uint64), *parts]))
            if len(earlier):
                pos = np.minimum(np.searchsorted(earlier, keys), len(earlier) - 1)
                keys = keys[earlier[pos] != keys]
            c[counter] = len(keys)
            new.append(keys)
        self._new_keys.append(_distinct(np.concatenate(new)))
        if c["items"] == 0:
            raise DatagenError(f"{source}: benchmark '{b.name}' has no records")
        if c["values"] == 0:
            raise DatagenError(
                f"decontam.benchmarks.{b.name}.fields: none of "
                f"{', '.join(b.fields)} found in the records of {source}"
            )
        self.loaded[b.name] = {**c, "source": source}

    def _value_keys(
        self, values: list[str], lengths: set[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(word count of each value, keys of the n-grams of the values with >= n words, keys
        of the whole word sequence of the values with min_short..n-1 words), all values
        tokenised and hashed at once; ``lengths`` gets the sequence lengths indexed."""
        n = self.n
        hashes, _, _, bounds = self._words(values)
        counts = np.diff(bounds)
        value = np.repeat(np.arange(len(values)), counts)  # of each word
        first = np.cumsum(counts) - counts  # each value's first word
        ngram = whole = np.zeros(0, dtype=np.uint64)
        short_lengths = set(np.unique(counts[(counts >= self.min_short) & (counts < n)]).tolist())
        for length, keys in windows(hashes, short_lengths | {n}, self._mult):
            if length == n:
                inside = value[: len(keys)] == value[n - 1 :]  # all n words in one value
                ngram = keys[inside] ^ self._salt[n]
                if inside.any():
                    lengths.add(n)
            if length in short_lengths:
                whole = np.concatenate([whole, keys[first[counts == length]] ^ self._salt[length]])
                lengths.add(length)
        return counts, ngram, whole

    def warnings(self) -> list[str]:
        """One line per benchmark with values too short to check (the stages print them)."""
        return [
            f"decontam: {name}: {c['values_too_short']} of {c['values']} values "
            f"({c['items_too_short']} of {c['items']} items entirely) have fewer than "
            f"{self.min_short} words and are not checked (decontam.min_short_words)"
            for name, c in self.loaded.items()
            if c["values_too_short"]
        ]

    def _words(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(hash, start, end, bounds) of the words of ``texts`` end to end (text j's are
        ``bounds[j]:bounds[j + 1]``): ``\\w+`` runs of the original text, each lower-cased on
        its own, start and end char positions in their own text even where lower() changes
        length ("İ".lower() is 2 chars). Texts that lower-case in place are hashed together."""
        # pieces of texts in order: (hashes, starts, ends, words per text)
        pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        run: list[str] = []  # consecutive texts that lower-case in place

        def flush() -> None:
            for part in chunks(run, _CHUNK_CHARS):
                cp, first = joined(part)
                starts, ends = word_spans(cp)
                counts = np.diff(text_bounds(starts, first))
                off = np.repeat(first, counts)  # positions in each word's own text
                pieces.append(
                    (self._hasher.spans(cp, starts, ends), starts - off, ends - off, counts)
                )
            run.clear()

        for text in texts:
            low, in_place = lowered(text)
            if in_place:
                run.append(low)
                continue
            flush()
            starts, ends = word_spans(code_points(text))
            words = [text[s:e].lower() for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
            pieces.append((self._hasher.words(words), starts, ends, np.array([len(words)])))
        flush()
        hashes, starts, ends, counts = (
            np.concatenate([np.zeros(0, dtype=dtype), *(p[k] for p in pieces)])
            for k, dtype in enumerate((np.uint64, np.int64, np.int64, np.int64))
        )
        return hashes, starts, ends, np.concatenate(([0], np.cumsum(counts)))

    def _matches(self, texts: Sequence[str]) -> list[list[tuple[int, int, str]]]:
        """Per text, (char start, char end, benchmark) of each matching word sequence, by
        start. One lookup for every sequence of every text."""
        found: list[list[tuple[int, int, str]]] = [[] for _ in texts]
        if not self.lengths or not texts:
            return found
        hashes, starts, ends, bounds = self._words(texts)
        text_of = np.repeat(np.arange(len(texts)), np.diff(bounds))
        lengths, firsts, parts = [], [], []
        for length, first, keys in windows_within(hashes, bounds, self.lengths, self._mult):
            lengths.append(length)
            firsts.append(first)  # sequences inside one text
            parts.append(keys ^ self._salt[length])
        if not parts:
            return found
        offsets = np.cumsum([0] + [len(p) for p in parts])
        for q, bench in self._index.lookup(np.concatenate(parts)):
            j = int(np.searchsorted(offsets, q, side="right")) - 1
            i, length = int(firsts[j][q - int(offsets[j])]), lengths[j]
            hit = (int(starts[i]), int(ends[i + length - 1]), self.names[bench])
            found[int(text_of[i])].append(hit)
        return [sorted(f) for f in found]

    def check(self, text: str) -> DecontamResult:
        return self.check_batch([text])[0]

    def check_batch(self, texts: Sequence[str]) -> list[DecontamResult]:
        """:meth:`check` of each text; the hashing and the index lookup of all in one batch."""
        return [self._result(t, f) for t, f in zip(texts, self._matches(texts), strict=True)]

    def _result(self, text: str, found: list[tuple[int, int, str]]) -> DecontamResult:
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


def _distinct(keys: np.ndarray) -> np.ndarray:
    """The distinct values of ``keys``, sorted (one sort: faster than np.unique here)."""
    keys = np.sort(keys)
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys


class _KeyIndex:
    """A set of uint64 keys with a value each, for vectorised lookups: the keys sorted (one
    searchsorted per query array), behind a bitmap of their top bits that rejects almost
    every key of a clean document without touching the sorted array."""

    def __init__(self, keys_by_value: list[np.ndarray]) -> None:
        """``keys_by_value[v]``: the keys whose value is v (disjoint sets)."""
        keys = np.concatenate([np.zeros(0, dtype=np.uint64), *keys_by_value])
        values = np.repeat(
            np.arange(len(keys_by_value), dtype=np.int32), [len(k) for k in keys_by_value]
        )
        order = np.argsort(keys)
        self.keys, self.values = keys[order], values[order]
        # >= 32 bits per key: ~3% of absent keys pass the bitmap
        self._bits = max(16, int(len(keys) * 32).bit_length())
        self._shift = np.uint64(64 - self._bits)
        seen = np.zeros(1 << self._bits, dtype=bool)
        seen[(keys >> self._shift).astype(np.intp)] = True
        self._seen = seen

    def lookup(self, queries: np.ndarray) -> list[tuple[int, int]]:
        """(position in ``queries``, value) of each query that is a key."""
        if not len(self.keys) or not len(queries):
            return []
        maybe = np.flatnonzero(self._seen[(queries >> self._shift).astype(np.intp)])
        if not len(maybe):
            return []
        q = queries[maybe]
        pos = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        hit = self.keys[pos] == q
        return list(zip(maybe[hit].tolist(), self.values[pos[hit]].tolist(), strict=True))


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
        for doc, res in zip(batch, self.decon.check_batch([d.text for d in batch]), strict=True):
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
