"""Benchmark decontamination by word n-gram overlap (GPT-3: Brown et al. 2020, Appendix C).

``Decontaminator(cfg: DecontamConfig)`` loads every benchmark once (local jsonl / json / csv /
parquet, gzip ok; or a Hugging Face dataset name for users online) into a set of n-gram hashes,
then answers per document::

    dc = Decontaminator(cfg.decontam)
    res = dc.check(text)      # DecontamResult(matches={"gsm8k": 3}, reason, text, pieces)
    # mode "drop": reason = "decontam.<benchmark>" when any n-gram matches, text unchanged
    # mode "cut":  the GPT-3 rule: remove a 200-char window around each match, drop pieces under
    #              200 chars, drop the document (reason "decontam.<benchmark>") if it splits
    #              into more than 10 pieces or nothing is left; else res.text is the cut text
    dc.loaded                 # {benchmark: {"items": n, "ngrams": n, "source": path_or_hf}}
    dc.unavailable            # {benchmark: why} (with on_missing="warn")

Words are ``\\w+`` runs of the original text, each lower-cased, so punctuation and spacing
differences do not hide a match.
"""

from __future__ import annotations

import csv
import gzip
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

_TOKEN = re.compile(r"\w+")


def _resolve(p: str) -> Path:
    """Like ``PipelineConfig.project_path``: absolute, relative to cwd, else the project root."""
    path = Path(p).expanduser()
    return path if path.is_absolute() or path.exists() else PROJECT_ROOT / path


class _NgramKeys:
    """64-bit keys of word n-grams (xxh3 per word, memoized; combined in numpy)."""

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

    def __call__(self, words: list[str]) -> np.ndarray:
        m = len(words) - self.n + 1
        if m <= 0:
            return np.zeros(0, dtype=np.uint64)
        wh = np.fromiter(map(self._hash, words), dtype=np.uint64, count=len(words))
        acc = wh[0:m] * self._mult[0]
        for k in range(1, self.n):
            acc = acc + wh[k : k + m] * self._mult[k]
        return acc


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


def _open(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 - closed by caller


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a jsonl / json / csv / parquet file (optionally .gz) as dicts."""
    name = path.name.lower().removesuffix(".gz")
    try:
        if name.endswith(".jsonl"):
            with _open(path) as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as e:
                            raise DatagenError(
                                f"{path}:{lineno}: not valid JSON ({e.msg})"
                            ) from None
        elif name.endswith(".json"):
            with _open(path) as f:
                data = json.load(f)
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
        elif name.endswith(".csv"):
            with _open(path) as f:
                yield from csv.DictReader(f)
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq

            yield from pq.read_table(path).to_pylist()
        else:
            raise DatagenError(f"{path}: unknown benchmark format (jsonl, json, csv, parquet)")
    except (OSError, UnicodeDecodeError) as e:
        raise DatagenError(f"{path}: cannot read ({e})") from None


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
        self._keys = _NgramKeys(self.n)
        self.index: dict[int, str] = {}  # n-gram key -> first benchmark that has it
        self.loaded: dict[str, dict[str, Any]] = {}
        self.unavailable: dict[str, str] = {}
        for b in self.cfg.benchmarks if self.cfg.enabled else []:
            self._load(b)

    def _load(self, b: BenchmarkSource) -> None:
        if not b.fields:
            raise DatagenError(f"decontam.benchmarks.{b.name}.fields: name at least one field")
        path = _resolve(b.path) if b.path else None
        if path is not None and path.exists():
            rows, source = read_records(path), str(path)
        elif b.hf and self.cfg.allow_download:
            rows, source = read_hf(b.hf, b.hf_config, b.split), f"hf:{b.hf}"
        else:
            why = (f"{path} not found" if path else "no path") + (
                "" if not b.hf else f"; hf '{b.hf}' not loaded (decontam.allow_download=false)"
            )
            if self.cfg.on_missing == "error":
                raise DatagenError(f"decontam.benchmarks.{b.name}: {why}")
            self.unavailable[b.name] = why
            return
        items = grams = values = 0
        for row in rows:
            if not isinstance(row, dict):
                continue
            items += 1
            for fld in b.fields:
                for value in _walk(row, fld.split(".")):
                    values += 1
                    words = [m.group().lower() for m in _TOKEN.finditer(value)]
                    for key in self._keys(words).tolist():
                        if key not in self.index:
                            self.index[key] = b.name
                            grams += 1
        if items == 0:
            raise DatagenError(f"{source}: benchmark '{b.name}' has no records")
        if values == 0:
            raise DatagenError(
                f"decontam.benchmarks.{b.name}.fields: none of "
                f"{', '.join(b.fields)} found in the records of {source}"
            )
        self.loaded[b.name] = {"items": items, "ngrams": grams, "source": source}

    def _matches(self, text: str) -> list[tuple[int, int, str]]:
        """(char start, char end, benchmark) of each matching n-gram in text."""
        if not self.index:
            return []
        # tokenize the original text and lower-case per token, so char positions are the
        # original's even where lower() changes length ("İ".lower() is 2 chars)
        ms = list(_TOKEN.finditer(text))
        words = [m.group().lower() for m in ms]
        get = self.index.get
        hits = [
            (i, b) for i, k in enumerate(self._keys(words).tolist()) if (b := get(k)) is not None
        ]
        return [(ms[i].start(), ms[i + self.n - 1].end(), b) for i, b in hits]

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
            "decontam", {"loaded": self.decon.loaded, "unavailable": self.decon.unavailable}
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
