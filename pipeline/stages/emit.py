"""emit: kept synthetic + web documents -> a mixed, shuffled, tokenized pretraining corpus.

Sources are the synthetic formats (textbook, exercises, ...) and ``web``. ``emit.mix`` gives each
source a weight (a multiple of its own size) or a token budget; whole copies repeat documents,
the remainder is a seeded sample. A validation split holds out whole documents. Optional
``emit.phases`` write extra splits drawn from the best documents of each source (annealing).

The input is the dedup stage's kept documents (``dedup/part-*.jsonl.zst``, in order; document
number ``g`` is its position there). Streaming, in bounded memory, as two ``run_shards`` rounds
around a plan (a killed emit resumes in the round it was in and redoes only unfinished tasks):

  tokenize  per input shard (``executor.shard_docs`` documents): token ids, a metadata table
            (id, source, n_tokens, quality, the validation hash of the id) and every row's
            columns and text (a JSON heap with offsets) -> ``emit/.work/tokenize-<docs>/NNNNN/``
  plan      (driver) over the metadata only (no text): validation split, mix, phases, the
            seeded global shuffle, the output shards cut at ``emit.shard_tokens``
  write     per output shard: its rows read at their offsets from the work files, streamed
            into the parquet and token shards batch by batch (``emit.batch_size`` documents)

Output, under ``<run>/emit/``:
- ``text/<split>/part-NNNNN.parquet`` (zstd) with id, text, source, format, quality, provenance;
- ``tokens/<split>/part-NNNNN.ds`` (+ ``.ds.index``, ``.ds.metadata``): datatrove's layout, the
  same documents in the same order as the text shard with the same number;
- ``tokenizer.json`` (the tokenizer used), ``README.md`` (dataset card), ``manifest.json``.
The same files, byte for byte, whichever executor and however many workers or input shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from pipeline import token_scores
from pipeline.card import dataset_card
from pipeline.config import MixEntry, PipelineConfig
from pipeline.errors import DatagenError
from pipeline.executor import (
    COMPLETIONS,
    Executor,
    JobFn,
    ShardJob,
    make_executor,
    run_shards,
    worker_cached,
)
from pipeline.records import QUALITY_KEY, Document
from pipeline.records import quality_of as scores_quality
from pipeline.runs import (
    Run,
    atomic_write_text,
    file_mode,
    read_shards,
    remove_stale_temps,
    shard_paths,
)
from pipeline.shards import BinaryWriter, ShardSpec, batched, plan_shards, read_slices, save_npy
from pipeline.steps import Stats
from pipeline.tokenize import LoadedTokenizer, TokenShardWriter, load_tokenizer

# filter's and web's settings reach emit's identity through the driver (emit needs dedup);
# executor.shard_docs only shapes the work (the tokenize round's folder is named after it)
CONFIG_KEYS = ("seed", "emit")

WEB = "web"
TRAIN, VAL = "train", "val"
WORK = ".work"

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
OUT_SCHEMA = SCHEMA.append(pa.field("n_tokens", pa.int64())).append(pa.field("repeat", pa.int32()))
# the document columns emit copies from the record as they are
_COPIED = [f.name for f in SCHEMA if f.name not in ("source", "origin", "quality")]


def source_of(doc: Document) -> str:
    """The mix source of a document: ``web`` for web documents, else its format."""
    return WEB if doc.source == "web" else (doc.format or "synthetic")


def quality_of(doc: Document, key: str) -> float | None:
    """The document's quality score (``emit.quality_key``, else the classifier probability)."""
    return scores_quality(doc.scores, key)


def val_key(seed: int, doc_id: str) -> int:
    """The seeded hash of an id that orders documents for the validation split."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{doc_id}".encode()).digest()[:8], "big")


# --------------------------------------------------------------------------- inputs
def _input_files(run: Run) -> tuple[list[Path], dict[str, Any]]:
    """The dedup stage's kept documents (synthetic and web); its notes (web not run) too."""
    folder = run.require_finished("dedup", "emit")
    notes: dict[str, Any] = dict((run.read_manifest("dedup") or {}).get("notes", {}))
    return shard_paths(folder), notes


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
    _input_files(run)
    docs = read_shards(run.path / "dedup", Document)
    _check_inputs(
        cfg, run.path / "dedup", (quality_of(d, cfg.emit.quality_key) is not None for d in docs)
    )


def _check_inputs(cfg: PipelineConfig, folder: Path, has_quality: Iterable[bool]) -> None:
    """At least one document, and a quality score on one if emit.phases needs them."""
    seen = False
    for q in has_quality:
        seen = True
        if q or not cfg.emit.phases:
            return
    if not seen:
        raise DatagenError(f"{folder}: no kept documents to emit (did every document get dropped?)")
    raise DatagenError(
        f"emit.phases: no input document has a quality score "
        f"({cfg.emit.quality_key or QUALITY_KEY}); set emit.quality_key or drop "
        f"emit.phases"
    )


# --------------------------------------------------------------------------- tokenize
def _tokenizer(path: str, sha: str, eot: str) -> LoadedTokenizer:
    """The run's ``emit/tokenizer.json`` (the driver wrote it), loaded once per worker: a
    second's work, where rebuilding the bundled tokenizer from its GGUF takes several."""
    return worker_cached(f"emit:tokenizer:{sha}:{eot}", lambda: load_tokenizer(path, eot))


def _row(d: Document, quality_key: str) -> dict[str, Any]:
    row = {k: getattr(d, k) for k in _COPIED}
    row.update(source=source_of(d), origin=d.source, quality=quality_of(d, quality_key))
    return row


def tokenize_shard(job: ShardJob) -> Stats:
    """One input shard: tokens, metadata and rows (the text with its columns) to the work
    folder; memory is one batch of documents plus the shard's per-document numbers."""
    p = job.payload
    tok = _tokenizer(p["tokenizer"], p["tokenizer_sha"], p["eot_token"])
    spec = ShardSpec.model_validate(p["shard"])
    out = Path(job.stage_dir) / job.name
    out.mkdir(parents=True, exist_ok=True)
    stats = Stats()
    tok_ends: list[int] = []
    row_ends: list[int] = []
    meta: dict[str, list[Any]] = {"id": [], "source": [], "quality": [], "val_key": []}
    with (
        BinaryWriter(out / "tokens.bin") as tokens,
        BinaryWriter(out / "rows.jsonl") as rows,
    ):
        for batch in batched(read_slices(spec.slices, Document), p["batch_size"]):
            for d, ids in zip(batch, tok.encode([d.text for d in batch]), strict=True):
                tokens.write(ids)
                tok_ends.append(tokens.size // tok.dtype.itemsize)
                row = _row(d, p["quality_key"])
                rows.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
                row_ends.append(rows.size)
                meta["id"].append(d.id)
                meta["source"].append(row["source"])
                meta["quality"].append(row["quality"])
                meta["val_key"].append(val_key(p["seed"], d.id))
            stats.add("input", len(batch))
    n_tokens = np.diff(np.array([0, *tok_ends], dtype=np.int64))
    save_npy(out / "token_offsets.npy", np.array([0, *tok_ends], dtype=np.int64))
    save_npy(out / "row_offsets.npy", np.array([0, *row_ends], dtype=np.int64))
    table = pa.table(
        {
            "id": pa.array(meta["id"], pa.string()),
            "source": pa.array(meta["source"], pa.string()),
            "n_tokens": pa.array(n_tokens, pa.int64()),
            "quality": pa.array(meta["quality"], pa.float64()),
            "val_key": pa.array(meta["val_key"], pa.uint64()),
        }
    )
    _write_parquet(out / "meta.parquet", [table], table.schema)
    stats.add("tokens", int(n_tokens.sum()))
    return stats


def _write_parquet(path: Path, tables: Iterable[pa.Table], schema: pa.Schema) -> str:
    """Write the tables as row groups of one zstd parquet file (temp + fsync + rename);
    returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            for t in tables:
                w.write_table(t)
        os.chmod(tmp, file_mode())
        sha = hashlib.sha256()
        with open(tmp, "rb+") as f:  # durable before it gets its final name
            while chunk := f.read(1 << 20):
                sha.update(chunk)
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sha.hexdigest()


class Meta:
    """Every input document's numbers (no text): what the plan is computed over."""

    def __init__(self, folders: list[Path]) -> None:
        cols: dict[str, list[np.ndarray]] = {"n_tokens": [], "quality": [], "val_key": []}
        sources: list[np.ndarray] = []
        names: list[str] = []
        for f in folders:
            t = pq.read_table(f / "meta.parquet", columns=["source", *cols])
            for k in cols:
                cols[k].append(t.column(k).to_numpy(zero_copy_only=False))
            enc = t.column("source").combine_chunks().dictionary_encode()
            local = enc.dictionary.to_pylist()
            for s in local:
                if s not in names:
                    names.append(s)
            remap = np.array([names.index(s) for s in local] or [0], dtype=np.int32)
            sources.append(remap[enc.indices.to_numpy(zero_copy_only=False)])
        self.source_names = sorted(names)
        order = np.array([self.source_names.index(s) for s in names] or [0], dtype=np.int32)
        cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
        self.n_tokens = cat["n_tokens"].astype(np.int64)
        self.quality = np.asarray(cat["quality"], dtype=np.float64)  # NaN where missing
        self.val_key = cat["val_key"].astype(np.uint64)
        self.source = order[np.concatenate(sources)] if sources else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.n_tokens)


# --------------------------------------------------------------------------- planning
def _rng(seed: int, *names: str) -> np.random.Generator:
    salt = [int(hashlib.sha256(n.encode()).hexdigest()[:8], 16) for n in names]
    return np.random.default_rng(np.random.SeedSequence([seed, *salt]))


def _val_mask(meta: Meta, fraction: float) -> np.ndarray:
    """Hold out whole documents: the ``fraction`` (at least one, if > 0) whose seeded hash of
    the id is smallest; independent of input order."""
    mask = np.zeros(len(meta), dtype=bool)
    if fraction <= 0 or len(meta) < 2:
        return mask
    n_val = min(len(meta) - 1, max(1, round(fraction * len(meta))))
    mask[np.argsort(meta.val_key, kind="stable")[:n_val]] = True
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
    meta: Meta, pool: np.ndarray, mix: dict[str, MixEntry], seed: int, split: str
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    docs, reps, mult = [], [], {}
    for code, name in enumerate(meta.source_names):
        idx = pool[meta.source[pool] == code]
        if len(idx) == 0:
            continue
        d, r, m = _sample_source(idx, meta.n_tokens, mix.get(name), _rng(seed, split, name))
        docs.append(d)
        reps.append(r)
        mult[name] = round(m, 6)
    if not docs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), mult
    d, r = np.concatenate(docs), np.concatenate(reps)
    perm = _rng(seed, split, "shuffle").permutation(len(d))  # the seeded global shuffle
    return d[perm], r[perm], mult


def _best(meta: Meta, pool: np.ndarray, top_fraction: float) -> np.ndarray:
    """The best ``top_fraction`` of each source's documents by quality (missing scores last)."""
    chosen = []
    for code in range(len(meta.source_names)):
        idx = pool[meta.source[pool] == code]
        if len(idx) == 0:
            continue
        q = np.nan_to_num(meta.quality[idx], nan=-np.inf)
        order = idx[np.argsort(-q, kind="stable")]
        chosen.append(order[: max(1, math.ceil(top_fraction * len(idx)))])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def plan(cfg: PipelineConfig, meta: Meta) -> tuple[dict[str, tuple], dict[str, dict]]:
    """Per split: (documents in output order, their repeat numbers); and the multipliers."""
    ecfg = cfg.emit
    val = _val_mask(meta, ecfg.val_fraction)
    train_pool = np.flatnonzero(~val)
    plans: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    multipliers: dict[str, dict[str, float]] = {}
    d, r, multipliers[TRAIN] = _plan_split(meta, train_pool, ecfg.mix, cfg.seed, TRAIN)
    plans[TRAIN] = (d, r)
    if val.any():
        vd = np.flatnonzero(val)
        vd = vd[_rng(cfg.seed, VAL, "shuffle").permutation(len(vd))]
        plans[VAL] = (vd, np.zeros(len(vd), np.int64))
    for phase in ecfg.phases:
        pool = _best(meta, train_pool, phase.top_fraction)
        d, r, multipliers[phase.name] = _plan_split(meta, pool, phase.mix, cfg.seed, phase.name)
        plans[phase.name] = (d, r)
    return plans, multipliers


def _cut(n_tokens: np.ndarray, shard_tokens: int) -> list[tuple[int, int]]:
    """[start, end) of each output shard: a shard closes once it holds ``shard_tokens``."""
    cum = np.cumsum(n_tokens)
    out, start = [], 0
    while start < len(n_tokens):
        base = int(cum[start - 1]) if start else 0
        end = min(int(np.searchsorted(cum, base + shard_tokens, side="left")) + 1, len(cum))
        out.append((start, end))
        start = end
    return out


def _split_stats(meta: Meta, docs: np.ndarray, reps: np.ndarray) -> dict[str, Any]:
    by: dict[str, Any] = {}
    for code, name in enumerate(meta.source_names):
        m = meta.source[docs] == code
        if m.any():
            by[name] = {
                "documents": int(m.sum()),
                "unique_documents": int((reps[m] == 0).sum()),
                "tokens": int(meta.n_tokens[docs[m]].sum()),
            }
    return {"documents": len(docs), "tokens": int(meta.n_tokens[docs].sum()), "by_source": by}


# --------------------------------------------------------------------------- write
class _WorkFiles:
    """Documents' tokens and rows by number, read from the tokenize round's work files at
    their offsets (``pread``: what a task holds is what it asked for, where memory-mapped pages
    would stay resident as it walks the corpus); the last ``size`` input shards kept open."""

    def __init__(
        self, folders: list[str], starts: np.ndarray, dtype: np.dtype, size: int = 64
    ) -> None:
        self.folders = folders
        self.starts = starts
        self.dtype = dtype
        self.size = size
        self._open: OrderedDict[int, tuple[np.ndarray, int, np.ndarray, int]] = OrderedDict()

    def _shard(self, shard: int) -> tuple[np.ndarray, int, np.ndarray, int]:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        f = Path(self.folders[shard])
        t_off, r_off = np.load(f / "token_offsets.npy"), np.load(f / "row_offsets.npy")
        t_fd, r_fd = os.open(f / "tokens.bin", os.O_RDONLY), os.open(f / "rows.jsonl", os.O_RDONLY)
        self._open[shard] = (t_off * self.dtype.itemsize, t_fd, r_off, r_fd)
        if len(self._open) > self.size:
            _, (_, a, _, b) = self._open.popitem(last=False)
            os.close(a)
            os.close(b)
        return self._open[shard]

    def get(self, g: int) -> tuple[np.ndarray, dict[str, Any]]:
        shard = int(np.searchsorted(self.starts, g, side="right")) - 1
        t_off, t_fd, r_off, r_fd = self._shard(shard)
        k = g - int(self.starts[shard])
        a, b = int(t_off[k]), int(t_off[k + 1])
        tokens = np.frombuffer(os.pread(t_fd, b - a, a), dtype=self.dtype)
        a, b = int(r_off[k]), int(r_off[k + 1])
        return tokens, json.loads(os.pread(r_fd, b - a, a))

    def close(self) -> None:
        while self._open:
            _, (_, a, _, b) = self._open.popitem()
            os.close(a)
            os.close(b)


def write_shard(job: ShardJob) -> Stats:
    """One output shard: gather its documents (in plan order) from the work files and stream
    them, ``batch_size`` at a time, into its parquet and token shards."""
    p = job.payload
    out = Path(p["out"])
    lo, hi = p["range"]
    planned = np.load(p["plan"], mmap_mode="r")
    docs, reps = np.asarray(planned[0, lo:hi]), np.asarray(planned[1, lo:hi])
    dtype = np.dtype(p["dtype"])
    files = _WorkFiles(p["folders"], np.array(p["starts"], dtype=np.int64), dtype)
    text_path = out / "text" / p["split"] / f"{p['name']}.parquet"
    tok_path = out / "tokens" / p["split"] / f"{p['name']}.ds"
    n_tok = 0

    def tables() -> Iterable[pa.Table]:
        nonlocal n_tok
        n = p["batch_size"]
        for s in range(0, len(docs), n):
            rows = []
            for g, rep in zip(docs[s : s + n], reps[s : s + n], strict=True):
                ids, row = files.get(int(g))
                tw.write(ids)
                n_tok += len(ids)
                rows.append({**row, "n_tokens": len(ids), "repeat": int(rep)})
            yield pa.Table.from_pylist(rows, schema=OUT_SCHEMA)

    with contextlib.closing(files), TokenShardWriter(tok_path, dtype, p["tokenizer_id"]) as tw:
        sha = _write_parquet(text_path, tables(), OUT_SCHEMA)
    stats = Stats()
    stats.add("documents", len(docs))
    stats.add("tokens", n_tok)
    stats.info["shard"] = {
        "text": {
            "path": str(text_path.relative_to(out)),
            "sha256": sha,
            "bytes": text_path.stat().st_size,
            "documents": len(docs),
        },
        "tokens": {
            **tw.info,
            "path": str(tok_path.relative_to(out)),
            "index": str(tok_path.with_name(tok_path.name + ".index").relative_to(out)),
        },
    }
    return stats


# --------------------------------------------------------------------------- driver
def _upstream_key(run: Run) -> str:
    return str((run.read_manifest("dedup") or {}).get("config_hash", ""))


def _start_over_unless(out: Path, key: str) -> None:
    """Resume only shards finished for this config and input: otherwise remove what an earlier
    emit left (the driver moves a stale stage's folder away first; this guards direct calls)."""
    stamp = out / ".identity"
    if stamp.exists() and stamp.read_text() == key:
        return
    for sub in ("text", "tokens", COMPLETIONS, WORK):
        shutil.rmtree(out / sub, ignore_errors=True)
    atomic_write_text(stamp, key)


def _round(
    ex: Executor,
    console: Console,
    label: str,
    fn: JobFn,
    folder: Path,
    payloads: list[dict[str, Any]],
    count_key: str,
    unit: str,
) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [ShardJob(index=i, stage_dir=str(folder), payload=p) for i, p in enumerate(payloads)]
    return run_shards(ex, fn, jobs, console, label, unit, count_key)


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    ecfg = cfg.emit
    # --- checks first: nothing is written before the inputs, mix and tokenizer are good
    preflight(cfg)
    tok = load_tokenizer(ecfg.tokenizer, ecfg.eot_token)
    ref = token_scores.open_reference(ecfg.token_scores, tok) if ecfg.token_scores.enabled else None
    files, notes = _input_files(run)
    out = run.stage_dir("emit")
    work = out / WORK
    _start_over_unless(out, cfg.section_hash(*CONFIG_KEYS) + _upstream_key(run))
    shards = plan_shards(files, cfg.executor.shard_docs)
    starts = np.cumsum([0] + [s.records for s in shards]).tolist()
    # the tokenize round's tasks are the input shards: their folder is named after the cut
    tok_dir = work / f"tokenize-{cfg.executor.shard_docs}"
    folders = [str(tok_dir / f"{s.index:05d}") for s in shards]
    atomic_write_text(out / "tokenizer.json", tok.tokenizer.to_str(pretty=False))
    common = {
        "tokenizer": str(out / "tokenizer.json"),
        "tokenizer_sha": tok.sha256,
        "eot_token": ecfg.eot_token,
        "batch_size": ecfg.batch_size,
        "quality_key": ecfg.quality_key,
        "seed": cfg.seed,
    }
    with contextlib.closing(make_executor(cfg.executor)) as ex:
        tok_run = _round(
            ex,
            console,
            "emit: tokenize",
            tokenize_shard,
            tok_dir,
            [{**common, "shard": s.model_dump()} for s in shards],
            "input",
            "docs",
        )
        meta = Meta([Path(f) for f in folders])
        _check_inputs(cfg, run.path / "dedup", (bool(x) for x in np.isfinite(meta.quality)))
        missing = sorted(set(ecfg.mix) - set(meta.source_names))
        if missing:
            notes["mix_sources_without_documents"] = missing

        # --- plan over the metadata; each split's order saved for the write tasks
        plans, multipliers = plan(cfg, meta)
        writes: list[dict[str, Any]] = []
        for split, (d, r) in plans.items():
            path = work / "plan" / f"{split}.npy"
            save_npy(path, np.stack([d, r]).astype(np.int64))
            for k, rng in enumerate(_cut(meta.n_tokens[d], ecfg.shard_tokens)):
                writes.append(
                    {
                        "split": split,
                        "name": f"part-{k:05d}",
                        "range": list(rng),
                        "plan": str(path),
                        "out": str(out),
                        "folders": folders,
                        "starts": starts,
                        "dtype": tok.dtype.str,
                        "tokenizer_id": f"{tok.name}@{tok.sha256}",
                        "batch_size": ecfg.batch_size,
                    }
                )
        write_run = _round(ex, console, "emit: write", write_shard, out, writes, "tokens", "tokens")
    # what a worker that died mid-shard left (its shard was written again since): every task
    # has finished, and nothing else writes here
    for sub in ("text", "tokens"):
        remove_stale_temps(out / sub)
    out_shards: dict[str, list[dict]] = {s: [] for s in plans}
    for w, rec in zip(writes, write_run.per_shard, strict=True):
        out_shards[w["split"]].append(rec["stats"]["info"]["shard"])
    splits = {s: _split_stats(meta, d, r) for s, (d, r) in plans.items()}
    result = _manifest(cfg, tok, meta, splits, multipliers, out_shards, notes)
    if ref is not None:  # Rho-1 reference losses beside each train token shard
        ts = token_scores.score_shards(
            token_shards(out, TRAIN), ecfg.token_scores, tok, console, ref
        )
        result["token_scores"] = ts
        # in the summary, so the review's stage table shows them
        result["summary"].update(scored_tokens=ts["tokens"], ref_loss_mean=ts["mean_loss"])
    result["rounds"] = {
        "tokenize": {"tasks": tok_run.shards, "ran": tok_run.ran},
        "write": {"tasks": write_run.shards, "ran": write_run.ran},
    }
    result["shards_total"] = write_run.shards
    result["shards_run"] = write_run.ran
    atomic_write_text(out / "README.md", dataset_card(cfg, run, result))
    shutil.rmtree(work, ignore_errors=True)  # as large as the corpus
    console.print(
        f"emit: {len(meta)} documents -> "
        + ", ".join(
            f"{s} {v['documents']} docs / {v['tokens']:,} tokens" for s, v in splits.items()
        )
    )
    return result


def _manifest(
    cfg: PipelineConfig,
    tok: Any,
    meta: Meta,
    splits: dict[str, Any],
    multipliers: dict[str, dict[str, float]],
    shards: dict[str, list[dict]],
    notes: dict[str, Any],
) -> dict[str, Any]:
    return {
        "summary": {
            "documents": len(meta),
            **{f"{s}_tokens": v["tokens"] for s, v in splits.items()},
        },
        "inputs": {"dedup": len(meta), "notes": notes},
        "sources": {
            n: {
                "documents": int((meta.source == c).sum()),
                "tokens": int(meta.n_tokens[meta.source == c].sum()),
            }
            for c, n in enumerate(meta.source_names)
        },
        "quality_key": cfg.emit.quality_key or QUALITY_KEY,
        "documents_with_quality": int(np.isfinite(meta.quality).sum()),
        "tokenizer": tok.info(),
        "multipliers": multipliers,
        "splits": splits,
        "shards": shards,
        "layout": {
            "text": "text/<split>/part-NNNNN.parquet (zstd)",
            "tokens": "tokens/<split>/part-NNNNN.ds: flat little-endian "
            f"{tok.dtype.name}, eot after every document; .ds.index: "
            "little-endian uint64 document end offsets (datatrove layout)",
        },
    }


def text_shards(emit_dir: Path, split: str) -> list[Path]:
    """The parquet text shards of a split, in order."""
    return sorted((emit_dir / "text" / split).glob("part-*.parquet"))


def token_shards(emit_dir: Path, split: str) -> list[Path]:
    """The ``.ds`` token shards of a split, in order."""
    return sorted((emit_dir / "tokens" / split).glob("part-*.ds"))
