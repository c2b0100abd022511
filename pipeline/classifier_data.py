"""Training data for the reference-text quality classifier (``classifier.source=reference``).

DCLM (Li et al. 2024, DataComp-LM, Sec. 4.4) trains its fastText filter on reference text as
positives and random web pages as negatives. Here:

- **reference documents** (``classifier.reference``: JSONL / parquet / plain text files or
  folders) are split whole, by a seeded hash of their id, into ``eval`` (held out for the
  ablation: the classifier never sees them), ``test`` (the classifier's held-out split) and
  ``train``;
- **negative pages** are the web stage's extracted pages (read by the stage with the web
  readers and extractor), split whole into ``test`` and ``train`` the same way;
- both are cut into near-equal pieces of at most ``chunk_words`` words, deduplicated against
  each other (exact hash, then MinHash; a piece found in both classes stays a positive and
  leaves the negatives), then **paired**: per split, as many positives as negatives (at most
  ``max_examples`` each), the i-th longest positive with the i-th longest negative, both cut
  to the shorter of the two, so that length tells the classes nothing.
"""

from __future__ import annotations

import glob as globlib
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.files import JSONL_SUFFIXES, iter_jsonl, one_line, read_text
from pipeline.records import stable_id

TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")  # not .md: a folder's README or PROVENANCE
PARQUET_SUFFIXES = (".parquet",)
EVAL, TEST, TRAIN = "eval", "test", "train"


class RefDoc(BaseModel):
    """One reference document (``attribution`` kept when the source has one)."""

    id: str
    text: str
    attribution: str | None = None


class Example(BaseModel):
    """One classifier example: a piece of a reference document or of a web page."""

    text: str
    label: bool  # True: reference (positive)
    split: str  # train | test
    doc: str  # id of the document or page it was cut from
    words: int


# --------------------------------------------------------------------------- reference files
def _kind(name: str) -> str | None:
    low = name.lower()
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def document_files(items: Sequence[str], key: str, cfg: PipelineConfig) -> list[Path]:
    """The files of a list of paths, globs and folders (JSONL, parquet, plain text), each
    checked; one error line names ``key`` and the item."""
    out: list[Path] = []
    for item in items:
        if any(ch in item for ch in "*?["):
            hits = sorted(globlib.glob(item, recursive=True)) or sorted(
                globlib.glob(str(cfg.project_path(item)), recursive=True)
            )
            files = [Path(h) for h in hits if Path(h).is_file() and _kind(h)]
            if not files:
                raise DatagenError(f"{key}: {item}: matches no JSONL, parquet or text file")
            out += files
            continue
        p = cfg.project_path(item)
        if not p.exists():
            raise DatagenError(f"{key}: {item}: no such file or folder")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f.name))
            if not files:
                raise DatagenError(f"{key}: {p}: folder has no JSONL, parquet or text files")
            out += files
        elif _kind(p.name) is None:
            kinds = ", ".join((*JSONL_SUFFIXES, *PARQUET_SUFFIXES, *TEXT_SUFFIXES))
            raise DatagenError(f"{key}: {p}: not a JSONL, parquet or text file ({kinds})")
        else:
            out.append(p)
    return out


def reference_files(cfg: PipelineConfig) -> list[Path]:
    return document_files(cfg.classifier.reference, "classifier.reference", cfg)


def read_documents(files: Sequence[Path], field: str, field_key: str) -> Iterator[RefDoc]:
    """Every document of the files, in order. A record's id is its ``id`` field, else
    ``<file name>:<line or row>``; a record without a string ``field`` is an error naming it
    (``field_key`` is the config key that names the field)."""
    for path in files:
        kind = _kind(path.name)
        if kind == "text":
            text = read_text(path)
            if text.strip():
                yield RefDoc(id=path.name, text=text)
        elif kind == "jsonl":
            for line in iter_jsonl(path):
                yield _ref_record(line.value, field, field_key, f"{path}:{line.number}", path.name)
        else:
            yield from _read_parquet(path, field, field_key)


def read_reference(cfg: PipelineConfig) -> Iterator[RefDoc]:
    c = cfg.classifier
    return read_documents(
        reference_files(cfg), c.reference_text_field, "classifier.reference_text_field"
    )


def _ref_record(obj: Any, field: str, field_key: str, where: str, name: str) -> RefDoc:
    text = obj.get(field) if isinstance(obj, dict) else None
    if not isinstance(text, str):
        raise DatagenError(f"{where}: no string field '{field}' ({field_key})")
    rid = obj.get("id")
    return RefDoc(
        id=str(rid) if rid is not None else f"{name}:{where.rsplit(':', 1)[-1]}",
        text=text,
        attribution=obj.get("attribution") if isinstance(obj.get("attribution"), str) else None,
    )


def _read_parquet(path: Path, field: str, field_key: str) -> Iterator[RefDoc]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatagenError(f"{path}: not a readable parquet file ({one_line(e)})") from None
    names = set(pf.schema_arrow.names)
    if field not in names:
        raise DatagenError(f"{path}: parquet has no column '{field}' ({field_key})")
    cols = [c for c in (field, "id", "attribution") if c in names]
    row = 0
    for batch in pf.iter_batches(batch_size=256, columns=cols):
        for rec in batch.to_pylist():
            row += 1
            yield _ref_record(rec, field, field_key, f"{path}:{row}", path.name)


# --------------------------------------------------------------------------- splits
def unit_hash(*parts: object) -> float:
    """A seeded, machine-independent number in [0, 1) for an id."""
    return int(stable_id(*parts), 16) / 16**16


def reference_split(doc_id: str, seed: int, eval_fraction: float, test_fraction: float) -> str:
    """eval (the ablation's held-out text), test (the classifier's held-out split) or train."""
    u = unit_hash(seed, "reference", doc_id)
    if u < eval_fraction:
        return EVAL
    return TEST if u < eval_fraction + (1 - eval_fraction) * test_fraction else TRAIN


def page_split(page_id: str, seed: int, test_fraction: float) -> str:
    return TEST if unit_hash(seed, "negative", page_id) < test_fraction else TRAIN


# --------------------------------------------------------------------------- examples
def pieces(text: str, max_words: int, min_words: int) -> list[list[str]]:
    """The words of ``text`` in near-equal consecutive pieces of at most ``max_words``;
    pieces under ``min_words`` are left out."""
    words = text.split()
    if len(words) < min_words:
        return []
    k = math.ceil(len(words) / max_words)
    size = math.ceil(len(words) / k)
    return [
        p for p in (words[i : i + size] for i in range(0, len(words), size)) if len(p) >= min_words
    ]


def cut_examples(
    docs: Iterable[tuple[str, str, str]], label: bool, max_words: int, min_words: int
) -> list[Example]:
    """(doc id, split, text) -> examples of that label."""
    return [
        Example(text=" ".join(p), label=label, split=split, doc=doc_id, words=len(p))
        for doc_id, split, text in docs
        for p in pieces(text, max_words, min_words)
    ]


def deduplicate(examples: list[Example], cfg: PipelineConfig) -> tuple[list[Example], Counter]:
    """The dedup stage's rule (``filters.dedup.find_duplicates``: exact copies, and near
    copies by the exact Jaccard of word shingles, ``dedup.*`` parameters) over all examples of
    both classes; a duplicate cluster keeps a positive if it has one."""
    from filters.dedup import MinHashParams, find_duplicates

    d = cfg.dedup
    params = MinHashParams(
        num_perm=d.num_perm, ngram=d.ngram, threshold=d.threshold, bands=d.bands, seed=cfg.seed
    )
    found = find_duplicates(
        [e.text for e in examples],
        params,
        ids=[f"{i:08d}" for i in range(len(examples))],
        quality=[1.0 if e.label else 0.0 for e in examples],
    )
    counts: Counter[str] = Counter()
    dropped: set[int] = set()
    for c in found.clusters:
        for gid, why in c.reasons.items():
            counts[f"{why}_{_cls(examples[c.kept.gid])}_{_cls(examples[gid])}"] += 1
            dropped.add(gid)
    return [e for i, e in enumerate(examples) if i not in dropped], counts


def _cls(e: Example) -> str:
    return "positive" if e.label else "negative"


def pair(examples: Sequence[Example], max_per_class: int, seed: int) -> list[Example]:
    """Per split: n = min(positives, negatives, max_per_class) of each, drawn seeded; the i-th
    longest positive and the i-th longest negative are both cut to the shorter one's length."""
    out: list[Example] = []
    for split in (TRAIN, TEST):
        pos = [e for e in examples if e.split == split and e.label]
        neg = [e for e in examples if e.split == split and not e.label]
        rng = random.Random(f"{seed}:pair:{split}")
        rng.shuffle(pos)
        rng.shuffle(neg)
        n = min(len(pos), len(neg), max_per_class)
        pos = sorted(pos[:n], key=lambda e: -e.words)  # stable: ties stay in seeded order
        neg = sorted(neg[:n], key=lambda e: -e.words)
        for p, q in zip(pos, neg, strict=True):
            k = min(p.words, q.words)
            out += [_truncate(p, k), _truncate(q, k)]
    return out


def _truncate(e: Example, k: int) -> Example:
    if e.words == k:
        return e
    return e.model_copy(update={"text": " ".join(e.text.split()[:k]), "words": k})


def length_summary(examples: Sequence[Example]) -> dict[str, Any]:
    """Mean and quartiles of example lengths per class (equal by construction)."""
    out: dict[str, Any] = {}
    for name, label in (("positive", True), ("negative", False)):
        w = sorted(e.words for e in examples if e.label == label)
        if w:
            out[name] = {
                "n": len(w),
                "mean_words": round(sum(w) / len(w), 1),
                "p25": w[len(w) // 4],
                "median": w[len(w) // 2],
                "p75": w[(3 * len(w)) // 4],
            }
    return out
