"""emit: kept synthetic + web documents -> a mixed, shuffled, tokenized pretraining corpus.

Sources are the synthetic formats (textbook, exercises, ...) and ``web``. ``emit.mix`` gives each
source a weight (a multiple of its own size) or a token budget; whole copies repeat documents,
the remainder is a seeded sample. A validation split holds out whole documents. Optional
``emit.phases`` write extra splits drawn from the best documents of each source (annealing).

Output, under ``<run>/emit/``:
- ``text/<split>/part-NNNNN.parquet`` (zstd) with id, text, source, format, quality, provenance;
- ``tokens/<split>/part-NNNNN.ds`` (+ ``.ds.index``, ``.ds.metadata``): datatrove's layout, the
  same documents in the same order as the text shard with the same number;
- ``tokenizer.json`` (the tokenizer used), ``README.md`` (dataset card), ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline import token_scores
from pipeline.config import MixEntry, PipelineConfig
from pipeline.errors import DatagenError
from pipeline.records import Document
from pipeline.review import QUALITY_KEYS, dataset_card
from pipeline.review import quality_of as review_quality
from pipeline.runs import Run, atomic_write_text, read_shards
from pipeline.tokenize import LoadedTokenizer, load_tokenizer, write_token_shard

# filter's and web's settings reach emit's identity through the driver (emit needs dedup)
CONFIG_KEYS = ("seed", "emit")

WEB = "web"
TRAIN, VAL = "train", "val"

# parquet columns besides the ones emit computes (n_tokens, repeat)
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),  # mix source: a synthetic format or "web"
        ("origin", pa.string()),  # "synthetic" or "web"
        ("format", pa.string()),
        ("quality", pa.float64()),
        ("topic", pa.string()),
        ("subject", pa.string()),
        ("audience", pa.string()),
        ("required_words", pa.list_(pa.string())),
        ("model", pa.string()),
        ("template", pa.string()),
        ("created_at", pa.string()),
        ("url", pa.string()),
        ("source_file", pa.string()),
        ("warc_record_id", pa.string()),
        ("fetch_date", pa.string()),
        ("language", pa.string()),
    ]
)


def source_of(doc: Document) -> str:
    """The mix source of a document: ``web`` for web documents, else its format."""
    return WEB if doc.source == "web" else (doc.format or "synthetic")


def quality_of(doc: Document, key: str) -> float | None:
    """The document's quality score (``emit.quality_key``, else the classifier probability)."""
    return review_quality(doc.scores, key)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


# --------------------------------------------------------------------------- inputs
def _input_folders(run: Run) -> tuple[list[tuple[str, Path]], dict[str, Any]]:
    """The dedup stage's kept documents (synthetic and web); its notes (web not run) too."""
    folder = run.require_finished("dedup", "emit")
    notes: dict[str, Any] = dict((run.read_manifest("dedup") or {}).get("notes", {}))
    return [("dedup", folder)], notes


def _known_sources(cfg: PipelineConfig) -> set[str]:
    return set(cfg.plan.formats) | {WEB}


def _check_mix(cfg: PipelineConfig, known: set[str]) -> None:
    mixes = [("emit.mix", cfg.emit.mix)] + [
        (f"emit.phases[{i}].mix", p.mix) for i, p in enumerate(cfg.emit.phases)
    ]
    for where, mix in mixes:
        unknown = sorted(set(mix) - known)
        if unknown:
            raise DatagenError(
                f"{where}: unknown source '{unknown[0]}' (known: {', '.join(sorted(known))})"
            )
    names = [p.name for p in cfg.emit.phases]
    clash = {TRAIN, VAL} & set(names) or {n for n in names if names.count(n) > 1}
    if clash:
        raise DatagenError(
            f"emit.phases: phase name '{sorted(clash)[0]}' is taken "
            f"(train and val are built in; names must be distinct)"
        )


def preflight(cfg: PipelineConfig) -> None:
    """Config checks that need no upstream output: before any stage runs."""
    _check_mix(cfg, _known_sources(cfg))


def validate(cfg: PipelineConfig, run: Run) -> None:
    """Checks on the inputs, run by the driver before an earlier emit/ is moved aside: a bad
    config must not leave the run without its corpus. Reads only until the answer is known."""
    preflight(cfg)
    tok = load_tokenizer(cfg.emit.tokenizer, cfg.emit.eot_token)  # a missing file, a bad eot
    if cfg.emit.token_scores.enabled:  # a reference model with another tokenizer is refused
        token_scores.open_reference(cfg.emit.token_scores, tok, check_only=True)
    folders, _ = _input_folders(run)
    docs = (d for _, f in folders for d in read_shards(f, Document))
    _check_inputs(cfg, folders, (quality_of(d, cfg.emit.quality_key) for d in docs))


def _check_inputs(
    cfg: PipelineConfig, folders: list[tuple[str, Path]], qualities: Iterable[float | None]
) -> None:
    """At least one document, and a quality score on one if emit.phases needs them."""
    seen = False
    for q in qualities:
        seen = True
        if q is not None or not cfg.emit.phases:
            return
    if not seen:
        where = " and ".join(str(f) for _, f in folders)
        raise DatagenError(f"{where}: no kept documents to emit (did every document get dropped?)")
    raise DatagenError(
        f"emit.phases: no input document has a quality score "
        f"({cfg.emit.quality_key or ', '.join(QUALITY_KEYS)}); set emit.quality_key or drop "
        f"emit.phases"
    )


class Corpus:
    """Every input document once: an Arrow table of columns + flat tokens with offsets."""

    def __init__(
        self, table: pa.Table, tokens: np.ndarray, offsets: np.ndarray, sources: list[str]
    ) -> None:
        self.table = table
        self.tokens = tokens
        self.offsets = offsets  # tokens of doc i: tokens[offsets[i]:offsets[i+1]] (with eot)
        self.n_tokens = np.diff(offsets)
        self.source_names = sorted(set(sources))
        code = {s: i for i, s in enumerate(self.source_names)}
        self.source = np.array([code[s] for s in sources], dtype=np.int32)
        q = table.column("quality").to_numpy(zero_copy_only=False)
        self.quality = np.asarray(q, dtype=np.float64)  # NaN where missing
        self.ids = table.column("id").to_pylist()

    def __len__(self) -> int:
        return len(self.ids)

    def doc_tokens(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def _read_docs(folders: list[tuple[str, Path]], quality_key: str) -> tuple[list[dict], Counter]:
    rows: list[dict[str, Any]] = []
    counts: Counter[str] = Counter({stage: 0 for stage, _ in folders})
    for stage, folder in folders:
        for doc in read_shards(folder, Document):
            counts[stage] += 1
            rows.append(
                {
                    "id": doc.id,
                    "text": doc.text,
                    "source": source_of(doc),
                    "origin": doc.source,
                    "format": doc.format,
                    "quality": quality_of(doc, quality_key),
                    "topic": doc.topic,
                    "subject": doc.subject,
                    "audience": doc.audience,
                    "required_words": doc.required_words,
                    "model": doc.model,
                    "template": doc.template,
                    "created_at": doc.created_at,
                    "url": doc.url,
                    "source_file": doc.source_file,
                    "warc_record_id": doc.warc_record_id,
                    "fetch_date": doc.fetch_date,
                    "language": doc.language,
                }
            )
    return rows, counts


def _tokenize(
    rows: list[dict], tok: LoadedTokenizer, batch_size: int, console: Console
) -> tuple[np.ndarray, np.ndarray]:
    parts: list[np.ndarray] = []
    lengths = np.zeros(len(rows), dtype=np.int64)
    n_tok = 0
    with _progress(console) as prog:
        task = prog.add_task("tokenize", total=len(rows), rate="")
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            arrs = tok.encode([r["text"] for r in batch])
            for j, a in enumerate(arrs):
                lengths[start + j] = len(a)
            parts.extend(arrs)
            n_tok += int(sum(len(a) for a in arrs))
            elapsed = prog.tasks[task].elapsed or 1e-9
            prog.update(task, advance=len(batch), rate=f"{n_tok / elapsed:,.0f} tok/s")
    tokens = np.concatenate(parts) if parts else np.zeros(0, tok.dtype)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return tokens, offsets


# --------------------------------------------------------------------------- planning
def _rng(seed: int, *names: str) -> np.random.Generator:
    salt = [int(hashlib.sha256(n.encode()).hexdigest()[:8], 16) for n in names]
    return np.random.default_rng(np.random.SeedSequence([seed, *salt]))


def _val_mask(corpus: Corpus, fraction: float, seed: int) -> np.ndarray:
    """Hold out whole documents: the ``fraction`` (at least one, if > 0) whose seeded hash of
    the id is smallest; independent of input order."""
    mask = np.zeros(len(corpus), dtype=bool)
    if fraction <= 0 or len(corpus) < 2:
        return mask
    n_val = min(len(corpus) - 1, max(1, round(fraction * len(corpus))))
    keys = [hashlib.sha256(f"{seed}\x1f{i}".encode()).digest() for i in corpus.ids]
    order = sorted(range(len(corpus)), key=keys.__getitem__)
    mask[order[:n_val]] = True
    return mask


def _sample_source(
    idx: np.ndarray, ntok: np.ndarray, entry: MixEntry | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """(doc indices, repeat numbers, multiplier) for one source: whole copies, then a seeded
    sample of documents in random order until the remaining token target is reached."""
    total = int(ntok[idx].sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0.0
    if entry is None or (entry.weight is None and entry.tokens is None):
        target = float(total)
    elif entry.tokens is not None:
        target = float(entry.tokens)
    else:
        target = float(entry.weight) * total
    copies = int(target // total)
    rest = target - copies * total
    docs = [np.tile(idx, copies)]
    reps = [np.repeat(np.arange(copies), len(idx))]
    if rest > 0:
        perm = rng.permutation(idx)
        cum = np.cumsum(ntok[perm])
        take = int(np.searchsorted(cum, rest, side="left")) + 1  # until the target is reached
        docs.append(perm[: min(take, len(perm))])
        reps.append(np.full(min(take, len(perm)), copies))
    return np.concatenate(docs), np.concatenate(reps), target / total


def _plan_split(
    corpus: Corpus, pool: np.ndarray, mix: dict[str, MixEntry], seed: int, split: str
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    docs, reps, mult = [], [], {}
    for code, name in enumerate(corpus.source_names):
        idx = pool[corpus.source[pool] == code]
        if len(idx) == 0:
            continue
        d, r, m = _sample_source(idx, corpus.n_tokens, mix.get(name), _rng(seed, split, name))
        docs.append(d)
        reps.append(r)
        mult[name] = round(m, 6)
    if not docs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), mult
    d, r = np.concatenate(docs), np.concatenate(reps)
    perm = _rng(seed, split, "shuffle").permutation(len(d))  # deterministic shuffle
    return d[perm], r[perm], mult


def _best(corpus: Corpus, pool: np.ndarray, top_fraction: float) -> np.ndarray:
    """The best ``top_fraction`` of each source's documents by quality (missing scores last)."""
    chosen = []
    for code in range(len(corpus.source_names)):
        idx = pool[corpus.source[pool] == code]
        if len(idx) == 0:
            continue
        q = np.nan_to_num(corpus.quality[idx], nan=-np.inf)
        order = idx[np.argsort(-q, kind="stable")]
        chosen.append(order[: max(1, math.ceil(top_fraction * len(idx)))])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


# --------------------------------------------------------------------------- writing
def _write_split(
    out: Path,
    split: str,
    corpus: Corpus,
    docs: np.ndarray,
    reps: np.ndarray,
    tok: LoadedTokenizer,
    shard_tokens: int,
    prog: Progress,
) -> list[dict]:
    text_dir = out / "text" / split
    tok_dir = out / "tokens" / split
    text_dir.mkdir(parents=True, exist_ok=True)
    tok_dir.mkdir(parents=True, exist_ok=True)
    task = prog.add_task(f"write {split}", total=len(docs), rate="")
    shards: list[dict] = []
    start = 0
    cum = np.cumsum(corpus.n_tokens[docs])
    while start < len(docs):
        base = int(cum[start - 1]) if start else 0
        end = int(np.searchsorted(cum, base + shard_tokens, side="left")) + 1
        end = min(end, len(docs))
        sel, rep = docs[start:end], reps[start:end]
        name = f"part-{len(shards):05d}"
        tinfo = write_token_shard(
            tok_dir / f"{name}.ds",
            [corpus.doc_tokens(i) for i in sel],
            tok.dtype,
            f"{tok.name}@{tok.sha256}",
        )
        table = (
            corpus.table.take(pa.array(sel))
            .append_column("n_tokens", pa.array(corpus.n_tokens[sel], pa.int64()))
            .append_column("repeat", pa.array(rep, pa.int32()))
        )
        ppath = text_dir / f"{name}.parquet"
        tmp = ppath.with_name(f".{ppath.name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb+") as f:  # durable before it gets its final name
            sha = hashlib.sha256(f.read()).hexdigest()
            os.fsync(f.fileno())
        tmp.replace(ppath)
        shards.append(
            {
                "text": {
                    "path": str(ppath.relative_to(out)),
                    "sha256": sha,
                    "bytes": ppath.stat().st_size,
                    "documents": len(sel),
                },
                "tokens": {
                    **tinfo,
                    "path": str((tok_dir / tinfo["path"]).relative_to(out)),
                    "index": str((tok_dir / tinfo["index"]).relative_to(out)),
                },
            }
        )
        elapsed = prog.tasks[task].elapsed or 1e-9
        prog.update(task, advance=len(sel), rate=f"{int(cum[end - 1]) / elapsed:,.0f} tok/s")
        start = end
    return shards


def _split_stats(corpus: Corpus, docs: np.ndarray, reps: np.ndarray) -> dict[str, Any]:
    by: dict[str, Any] = {}
    for code, name in enumerate(corpus.source_names):
        m = corpus.source[docs] == code
        if m.any():
            by[name] = {
                "documents": int(m.sum()),
                "unique_documents": int((reps[m] == 0).sum()),
                "tokens": int(corpus.n_tokens[docs[m]].sum()),
            }
    return {"documents": len(docs), "tokens": int(corpus.n_tokens[docs].sum()), "by_source": by}


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    ecfg = cfg.emit
    # --- checks first: nothing is written before the inputs, mix and tokenizer are good
    preflight(cfg)
    tok = load_tokenizer(ecfg.tokenizer, ecfg.eot_token)
    ref = token_scores.open_reference(ecfg.token_scores, tok) if ecfg.token_scores.enabled else None
    folders, notes = _input_folders(run)
    rows, in_counts = _read_docs(folders, ecfg.quality_key)
    _check_inputs(cfg, folders, (r["quality"] for r in rows))
    sources = [r["source"] for r in rows]
    missing = sorted(set(ecfg.mix) - set(sources))
    if missing:
        notes["mix_sources_without_documents"] = missing

    # --- tokenize every input document once
    tokens, offsets = _tokenize(rows, tok, ecfg.batch_size, console)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    del rows
    corpus = Corpus(table, tokens, offsets, sources)

    # --- plan the splits
    val = _val_mask(corpus, ecfg.val_fraction, cfg.seed)
    train_pool = np.flatnonzero(~val)
    plans: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    multipliers: dict[str, dict[str, float]] = {}
    d, r, multipliers[TRAIN] = _plan_split(corpus, train_pool, ecfg.mix, cfg.seed, TRAIN)
    plans[TRAIN] = (d, r)
    if val.any():
        vd = np.flatnonzero(val)
        vd = vd[_rng(cfg.seed, VAL, "shuffle").permutation(len(vd))]
        plans[VAL] = (vd, np.zeros(len(vd), np.int64))
    for phase in ecfg.phases:
        pool = _best(corpus, train_pool, phase.top_fraction)
        d, r, multipliers[phase.name] = _plan_split(corpus, pool, phase.mix, cfg.seed, phase.name)
        plans[phase.name] = (d, r)

    # --- write: stale shards of a killed run go first; each file is temp + rename
    out = run.stage_dir("emit")
    shutil.rmtree(out / "text", ignore_errors=True)
    token_scores.clear_keeping_scores(out / "tokens")  # a killed run's scores are reused
    atomic_write_text(out / "tokenizer.json", tok.tokenizer.to_str(pretty=False))
    shards: dict[str, list[dict]] = {}
    with _progress(console) as prog:
        for split, (d, r) in plans.items():
            shards[split] = _write_split(out, split, corpus, d, r, tok, ecfg.shard_tokens, prog)
    splits = {s: _split_stats(corpus, d, r) for s, (d, r) in plans.items()}

    scores = None
    if ref is not None:  # Rho-1 reference losses beside each train token shard
        scores = token_scores.score_shards(
            token_shards(out, TRAIN), ecfg.token_scores, tok, console, ref
        )

    tokens_by_split = {s: v["tokens"] for s, v in splits.items()}
    result: dict[str, Any] = {
        "summary": {
            "documents": len(corpus),
            **{f"{s}_tokens": t for s, t in tokens_by_split.items()},
        },
        "inputs": {**{k: v for k, v in in_counts.items()}, "notes": notes},
        "sources": {
            n: {
                "documents": int((corpus.source == c).sum()),
                "tokens": int(corpus.n_tokens[corpus.source == c].sum()),
            }
            for c, n in enumerate(corpus.source_names)
        },
        "quality_key": ecfg.quality_key or "auto (" + ", ".join(QUALITY_KEYS) + ", *.quality)",
        "documents_with_quality": int(np.isfinite(corpus.quality).sum()),
        "tokenizer": tok.info(),
        "multipliers": multipliers,
        "splits": splits,
        "shards": shards,
        **({"token_scores": scores} if scores else {}),
        "layout": {
            "text": "text/<split>/part-NNNNN.parquet (zstd)",
            "tokens": "tokens/<split>/part-NNNNN.ds: flat little-endian "
            f"{tok.dtype.name}, eot after every document; .ds.index: "
            "little-endian uint64 document end offsets (datatrove layout)",
        },
    }
    atomic_write_text(out / "README.md", dataset_card(cfg, run, result))
    console.print(
        f"emit: {len(corpus)} documents -> "
        + ", ".join(
            f"{s} {v['documents']} docs / {v['tokens']:,} tokens" for s, v in splits.items()
        )
    )
    return result


def text_shards(emit_dir: Path, split: str) -> list[Path]:
    """The parquet text shards of a split, in order."""
    return sorted((emit_dir / "text" / split).glob("part-*.parquet"))


def token_shards(emit_dir: Path, split: str) -> list[Path]:
    """The ``.ds`` token shards of a split, in order."""
    return sorted((emit_dir / "tokens" / split).glob("part-*.ds"))
