"""dedup: exact and near-duplicate removal over synthetic AND web documents, one rule.

The input is the kept output of filter and web (``part-*.jsonl.zst``, in that order), cut
into shards of ``executor.shard_docs`` documents; document number ``gid`` is its position in
that order. Rounds, each a ``run_shards`` round with completion markers (a killed stage
resumes in the round it was in and redoes only that round's unfinished tasks):

  sign     per input shard: exact hash of the normalised text, shingle set, MinHash band keys
           (``filters.dedup.Signer``) -> ``dedup/.work/sign/NNNNN/``; no text is kept
  buckets  per band (and the exact hash) and key range: the keys of that band from every
           shard; documents sharing a key -> candidate pairs (exact copies: exact edges)
  verify   per range of ``gid``: the distinct candidates, kept if the EXACT Jaccard of their
           shingle sets is >= ``dedup.threshold``
  reduce   (driver) connected components of exact edges + verified pairs; each cluster keeps
           its highest ``classifier.prob`` member (missing = 0; ties by id) -> drop lists
  apply    per input shard: ``dedup/part-NNNNN.jsonl.zst`` (kept, records unchanged) and
           ``dedup/dropped/part-NNNNN.jsonl.zst`` (``drop_reason`` ``dedup.exact`` or
           ``dedup.near``, ``cluster_id``, ``kept_id`` = the cluster's kept document)

What grows with the corpus: the sign artefacts on disk (4 bytes per shingle ~ per word, 24
bytes per document per band; removed when the stage finishes), a buckets task's keys (at most
~``dedup.reduce_docs`` documents x 24 bytes), a verify task's candidate pairs, and in the
driver the documents that have a duplicate (their id, quality, exact hash) and the pairs.
A shard's own work is one batch of texts plus its per-document keys.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from filters.dedup import (
    Member,
    MinHashParams,
    Signer,
    bucket_pairs,
    candidate_curve,
    components,
    decision_curve,
    distinct_pairs,
    exact_groups,
    pair_jaccards,
    resolve,
)
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.executor import (
    Executor,
    JobFn,
    ShardJob,
    make_executor,
    run_shards,
    worker_cached,
)
from pipeline.records import QUALITY_KEY, Document
from pipeline.runs import Run, atomic_write_bytes, atomic_write_json, read_json, shard_paths
from pipeline.shards import (
    BinaryWriter,
    RecordWriter,
    ShardSpec,
    batched,
    plan_shards,
    read_slices,
    save_npy,
)
from pipeline.steps import Stats

# what defines the output: every dedup key but batch_size and reduce_docs (they shape the work,
# not the result), the shards (output files are named after them) and the seed (permutations)
CONFIG_KEYS = (
    "dedup.exact",
    "dedup.near",
    "dedup.num_perm",
    "dedup.ngram",
    "dedup.threshold",
    "dedup.bands",
    "executor.shard_docs",
    "seed",
)
WORK = ".work"
SOURCES = ("synthetic", "web")
_MAX_GID = 2**32  # document numbers are packed two to a uint64 in the bucket round


def params_of(cfg: PipelineConfig) -> MinHashParams:
    d = cfg.dedup
    return MinHashParams(
        num_perm=d.num_perm, ngram=d.ngram, threshold=d.threshold, bands=d.bands, seed=cfg.seed
    )


def preflight(cfg: PipelineConfig) -> None:
    params_of(cfg).bands_rows()  # dedup.bands out of range: one line before any stage runs


# --------------------------------------------------------------------------- sign
def sign_shard(job: ShardJob) -> Stats:
    """Exact hashes, shingle sets and band keys of one input shard (no text)."""
    p = job.payload
    cfg = PipelineConfig.model_validate(p["config"])
    params = params_of(cfg)
    signer: Signer = worker_cached(f"dedup:{p['key']}", lambda: Signer(params))
    spec = ShardSpec.model_validate(p["shard"])
    out = Path(job.stage_dir) / job.name
    out.mkdir(parents=True, exist_ok=True)
    stats = Stats()
    ids: list[str] = []
    quality: list[float] = []
    source: list[int] = []
    exact: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    with BinaryWriter(out / "shingles.u32") as shingles:
        for batch in batched(read_slices(spec.slices, Document), cfg.dedup.batch_size):
            s = signer.sign([d.text for d in batch])
            shingles.write(s.shingles)
            counts.append(np.diff(s.offsets))
            exact.append(s.exact)
            keys.append(s.band_keys)
            for d in batch:
                ids.append(d.id)
                quality.append(float(d.scores.get(QUALITY_KEY, 0.0)))
                source.append(SOURCES.index(d.source))
                stats.add(f"input.{d.source}")
            stats.add("input", len(batch))
    n = len(ids)
    nsh = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(nsh, out=offsets[1:])
    ex = np.concatenate(exact) if exact else np.zeros((0, 2), np.uint64)
    bk = np.concatenate(keys, axis=1) if keys else np.zeros((signer.bands, 0), np.uint64)
    local = np.arange(n, dtype=np.uint64)
    # exact hashes sorted: a buckets task reads its hash range with a binary search
    order = np.lexsort((local, ex[:, 1], ex[:, 0]))
    save_npy(out / "exact.npy", np.stack([ex[order, 0], ex[order, 1], local[order]]))
    # band keys sorted per band (documents with shingles only), with each one's exact group
    alive = np.flatnonzero(nsh > 0)
    rows = []
    for b in range(signer.bands):
        k, g = bk[b, alive], ex[alive, 0]
        o = np.lexsort((alive, g, k))
        rows.append(np.stack([k[o], g[o], alive[o].astype(np.uint64)]))
    bands = np.stack(rows) if rows else np.zeros((0, 3, 0), np.uint64)
    save_npy(out / "bands.npy", bands)
    save_npy(out / "offsets.npy", offsets)
    buf = io.BytesIO()
    np.savez(
        buf,
        quality=np.array(quality, dtype=np.float64),
        source=np.array(source, dtype=np.uint8),
        exact=ex,
    )
    atomic_write_bytes(out / "meta.npz", buf.getvalue())
    atomic_write_json(out / "ids.json", ids)
    stats.add("shingles", int(offsets[-1]))
    stats.add("empty", int(n - len(alive)))
    return stats


# --------------------------------------------------------------------------- buckets
def _key_slice(rows: np.ndarray, lo: int, hi: int | None) -> np.ndarray:
    """Columns of ``rows`` (sorted by its first row) whose first-row key is in [lo, hi)."""
    keys = rows[0]
    a = int(np.searchsorted(keys, np.uint64(lo), side="left"))
    b = len(keys) if hi is None else int(np.searchsorted(keys, np.uint64(hi), side="left"))
    return np.asarray(rows[:, a:b])


def buckets_task(job: ShardJob) -> Stats:
    """One band (or the exact hash) and one key range, over every shard: exact edges or the
    candidate pairs of the documents that share a key."""
    p = job.payload
    sign = Path(p["sign"])
    starts = np.array(p["starts"], dtype=np.int64)
    lo, hi = p["lo"], p["hi"]
    stats = Stats()
    parts = []
    for shard in range(len(starts)):
        folder = sign / f"{shard:05d}"
        if p["band"] < 0:
            rows = _key_slice(np.load(folder / "exact.npy", mmap_mode="r"), lo, hi)
        else:
            rows = _key_slice(np.load(folder / "bands.npy", mmap_mode="r")[p["band"]], lo, hi)
        gid = rows[2].astype(np.int64) + starts[shard]
        parts.append(np.stack([rows[0], rows[1], gid.astype(np.uint64)]))
        stats.add("keys", rows.shape[1])
    cols = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), np.uint64)
    gids = cols[2].astype(np.int64)
    if p["band"] < 0:
        a, b = exact_groups(cols[0], cols[1], gids)  # (copy, first copy)
        stats.add("exact_copies", len(a))
    else:
        # exact copies stand in for each other only when exact edges join them
        groups = cols[1] if p["exact"] else cols[2]
        a, b, capped = bucket_pairs(cols[0], groups, gids)
        stats.add("bucket_pairs", len(a))
        stats.add("capped_buckets", capped)
    save_npy(Path(job.stage_dir) / f"{job.name}.npy", np.stack([a, b]).astype(np.int64))
    return stats


# --------------------------------------------------------------------------- verify
class _ShingleFiles:
    """The shingle sets of the sign artefacts, memory-mapped, the last ``size`` shards open
    (one task's cache: a worker may later see another run's files under the same path)."""

    def __init__(self, sign: Path, starts: np.ndarray, size: int = 64) -> None:
        self.sign = sign
        self.starts = starts
        self.size = size
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        folder = self.sign / f"{shard:05d}"
        offsets = np.load(folder / "offsets.npy")
        data = (
            np.memmap(folder / "shingles.u32", dtype=np.uint32, mode="r")
            if offsets[-1]
            else np.zeros(0, np.uint32)
        )
        self._open[shard] = (offsets, data)
        if len(self._open) > self.size:
            self._open.popitem(last=False)
        return offsets, data

    def __call__(self, gid: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, gid, side="right")) - 1
        offsets, data = self._shard(shard)
        k = gid - int(self.starts[shard])
        return np.asarray(data[offsets[k] : offsets[k + 1]])


def verify_task(job: ShardJob) -> Stats:
    """The distinct candidates whose first document is in [lo, hi): exact Jaccard."""
    p = job.payload
    sign = Path(p["sign"])
    starts = np.array(p["starts"], dtype=np.int64)
    lo, hi = p["lo"], p["hi"]
    parts = []
    for path in p["inputs"]:
        ab = np.load(path, mmap_mode="r")
        i, j = np.searchsorted(ab[0], [lo, hi], side="left")
        parts.append((np.asarray(ab[0, i:j]), np.asarray(ab[1, i:j])))
    a, b = distinct_pairs(parts)
    js = pair_jaccards(a, b, _ShingleFiles(sign, starts))
    ok = js >= p["threshold"]
    stats = Stats()
    stats.add("candidate_pairs", len(a))
    stats.add("verified_pairs", int(ok.sum()))
    for k, c in enumerate(np.bincount(np.minimum((js * 10).astype(np.int64), 9), minlength=10)):
        stats.add(f"candidates_j.{k / 10:.1f}", int(c))
    rec = np.zeros(int(ok.sum()), dtype=[("a", "<i8"), ("b", "<i8"), ("j", "<f8")])
    rec["a"], rec["b"], rec["j"] = a[ok], b[ok], js[ok]
    save_npy(Path(job.stage_dir) / f"{job.name}.npy", rec)
    return stats


# --------------------------------------------------------------------------- reduce
def _members(sign: Path, starts: np.ndarray, nodes: np.ndarray) -> list[Member]:
    """id, quality, exact hash and source of each document in ``nodes`` (sorted gids), read
    shard by shard from the sign artefacts."""
    out: list[Member] = []
    shard_of = np.searchsorted(starts, nodes, side="right") - 1
    for shard in np.unique(shard_of).tolist():
        folder = sign / f"{shard:05d}"
        with np.load(folder / "meta.npz") as meta:
            quality, exact, source = meta["quality"], meta["exact"], meta["source"]
        ids = read_json(folder / "ids.json")
        for gid in nodes[shard_of == shard].tolist():
            k = gid - int(starts[shard])
            out.append(
                Member(
                    gid=gid,
                    id=ids[k],
                    quality=float(quality[k]),
                    exact=(int(exact[k, 0]), int(exact[k, 1])),
                    source=SOURCES[int(source[k])],
                )
            )
    return out


def reduce_clusters(
    work: Path,
    starts: np.ndarray,
    exact_files: list[Path],
    verify_files: list[Path],
    exact: bool,
) -> dict[str, Any]:
    """Clusters over exact edges and verified pairs; writes each shard's drop list to
    ``.work/drops/NNNNN.json`` ({local number: [reason, cluster_id, kept_id]}) and returns the
    counts for the manifest."""
    ea = [np.load(f) for f in exact_files]
    va = [np.load(f) for f in verify_files]
    none = [np.zeros(0, np.int64)]
    a = np.concatenate([e[0] for e in ea] + [v["a"] for v in va] + none).astype(np.int64)
    b = np.concatenate([e[1] for e in ea] + [v["b"] for v in va] + none).astype(np.int64)
    nodes, labels = components(a, b)
    clusters = resolve(labels, _members(work / "sign", starts, nodes), exact)
    drops: dict[int, dict[int, list[str]]] = {}
    by_source: Counter[str] = Counter()
    cross: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    sizes: list[int] = []
    for c in clusters:
        sizes.append(len(c.members))
        for m in c.members:
            if m is c.kept:
                continue
            reason = f"dedup.{c.reasons[m.gid]}"
            reasons[reason] += 1
            by_source[f"{m.source}.{reason}"] += 1
            if m.source != c.kept.source:
                cross[f"{m.source}_dropped_for_{c.kept.source}"] += 1
            shard = int(np.searchsorted(starts, m.gid, side="right")) - 1
            drops.setdefault(shard, {})[m.gid - int(starts[shard])] = [
                reason,
                c.cluster_id,
                c.kept.id,
            ]
    folder = work / "drops"
    if folder.exists():
        shutil.rmtree(folder)  # recomputed on every attempt: the same lists, deterministic
    for shard, rows in drops.items():
        atomic_write_json(folder / f"{shard:05d}.json", {str(k): v for k, v in rows.items()})
    return {
        "clusters": len(clusters),
        "documents_in_clusters": int(sum(sizes)),
        "largest_cluster": max(sizes, default=0),
        "reasons": dict(reasons),
        "by_source": dict(by_source),
        "cross_source": dict(cross),
    }


# --------------------------------------------------------------------------- apply
def apply_shard(job: ShardJob) -> Stats:
    """Write a shard's kept documents and its dropped ones (reason, cluster, kept id)."""
    p = job.payload
    spec = ShardSpec.model_validate(p["shard"])
    path = Path(p["drops"])
    drops = {int(k): v for k, v in read_json(path).items()} if path.exists() else {}
    out = Path(job.stage_dir)
    stats = Stats()
    with contextlib.ExitStack() as stack:
        kept_w = stack.enter_context(RecordWriter(out / f"part-{job.name}.jsonl.zst"))
        drop_w = stack.enter_context(RecordWriter(out / "dropped" / f"part-{job.name}.jsonl.zst"))
        k = 0
        for batch in batched(read_slices(spec.slices, Document), p["batch_size"]):
            for d in batch:
                stats.add("input")
                hit = drops.get(k)
                k += 1
                if hit is None:
                    stats.add(f"kept.{d.source}")
                    kept_w.write(d)
                    continue
                d.drop_reason, d.cluster_id, d.kept_id = hit
                stats.add(f"drop.{d.drop_reason}")
                drop_w.write(d)
    if k < len(drops) or (drops and max(drops) >= k):
        raise DatagenError(f"{path}: drop list does not match shard {job.name} (rerun dedup)")
    return stats


# --------------------------------------------------------------------------- driver
def input_files(run: Run) -> tuple[list[Path], dict[str, Any]]:
    """filter's kept shards, then web's (when the web stage finished)."""
    files = shard_paths(run.require_finished("filter", "dedup"))
    notes: dict[str, Any] = {}
    if run.is_finished("web"):
        files += shard_paths(run.path / "web")
    else:
        notes["web"] = "web stage not finished: synthetic documents only"
    return files, notes


def _ranges(n: int) -> list[tuple[int, int | None]]:
    """n equal ranges of the uint64 key space (the last one open-ended)."""
    bounds = [r * 2**64 // n for r in range(n)]
    return [(lo, bounds[r + 1] if r + 1 < n else None) for r, lo in enumerate(bounds)]


class _Rounds:
    """Runs one ``run_shards`` round per call, each under its own folder (its completion
    markers), and records what each ran for the manifest."""

    def __init__(self, ex: Executor, console: Console) -> None:
        self.ex = ex
        self.console = console
        self.ran: dict[str, dict[str, Any]] = {}

    def __call__(
        self,
        name: str,
        fn: JobFn,
        folder: Path,
        payloads: list[dict[str, Any]],
        count_key: str,
        unit: str,
    ) -> Stats:
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [ShardJob(index=i, stage_dir=str(folder), payload=p) for i, p in enumerate(payloads)]
        r = run_shards(self.ex, fn, jobs, self.console, f"dedup: {name}", unit, count_key)
        self.ran[name] = {"tasks": r.shards, "ran": r.ran}
        return r.stats


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("dedup")
    work = folder / WORK
    files, notes = input_files(run)
    params = params_of(cfg)
    bands, _ = params.bands_rows()
    shards = plan_shards(files, cfg.executor.shard_docs)
    starts = np.cumsum([0] + [s.records for s in shards]).tolist()
    n_docs = starts.pop()
    if n_docs >= _MAX_GID:
        raise DatagenError(f"dedup: {n_docs:,} documents; at most {_MAX_GID - 1:,} per run")
    n_ranges = max(1, math.ceil(n_docs / cfg.dedup.reduce_docs))
    # the reduce rounds' tasks depend on n_ranges (dedup.reduce_docs, not part of the stage's
    # identity): their folders (completion markers) are named after it, so a rerun with
    # another value does not take a task of one split for a task of the other
    sign_dir = work / "sign"
    bucket_dir, verify_dir = work / f"buckets-{n_ranges}", work / f"verify-{n_ranges}"
    common = {"sign": str(sign_dir), "starts": starts, "exact": cfg.dedup.exact}
    config = cfg.model_dump(mode="json")
    key = cfg.section_hash(*CONFIG_KEYS)
    # buckets: the exact hash, then each band, each over n_ranges ranges of its keys
    kinds = ([-1] if cfg.dedup.exact else []) + (list(range(bands)) if cfg.dedup.near else [])
    buckets = [
        {**common, "band": b, "lo": lo, "hi": hi} for b in kinds for lo, hi in _ranges(n_ranges)
    ]
    exact_out = [bucket_dir / f"{i:05d}.npy" for i, t in enumerate(buckets) if t["band"] < 0]
    band_out = [str(bucket_dir / f"{i:05d}.npy") for i, t in enumerate(buckets) if t["band"] >= 0]
    # verify: candidates by ranges of their first document
    bounds = [r * n_docs // n_ranges for r in range(n_ranges + 1)]
    verify = [
        {**common, "inputs": band_out, "lo": lo, "hi": hi, "threshold": params.threshold}
        for lo, hi in zip(bounds, bounds[1:], strict=False)
        if band_out
    ]
    with contextlib.closing(make_executor(cfg.executor)) as ex:
        rounds = _Rounds(ex, console)
        sign_st = rounds(
            "sign",
            sign_shard,
            sign_dir,
            [{"config": config, "key": key, "shard": s.model_dump()} for s in shards],
            "input",
            "docs",
        )
        bucket_st = rounds("buckets", buckets_task, bucket_dir, buckets, "keys", "keys")
        verify_st = rounds("verify", verify_task, verify_dir, verify, "candidate_pairs", "pairs")
        verified = [verify_dir / f"{i:05d}.npy" for i in range(len(verify))]
        red = reduce_clusters(
            work, np.array(starts, dtype=np.int64), exact_out, verified, cfg.dedup.exact
        )
        drops = work / "drops"
        apply_st = rounds(
            "apply",
            apply_shard,
            folder,
            [
                {
                    "shard": s.model_dump(),
                    "drops": str(drops / f"{s.index:05d}.json"),
                    "batch_size": cfg.dedup.batch_size,
                }
                for s in shards
            ],
            "input",
            "docs",
        )
    manifest = _manifest(
        cfg, params, sign_st, bucket_st, verify_st, apply_st, red, rounds.ran, notes
    )
    shutil.rmtree(work, ignore_errors=True)  # the artefacts are as large as the corpus
    return manifest


def _manifest(
    cfg: PipelineConfig,
    params: MinHashParams,
    sign: Stats,
    buckets: Stats,
    verify: Stats,
    apply: Stats,
    red: dict[str, Any],
    rounds: dict[str, dict[str, Any]],
    notes: dict[str, Any],
) -> dict[str, Any]:
    c, a = sign.counts, apply.counts
    n_in = int(a.get("input", 0))
    reasons = apply.drop_reasons()
    if reasons != dict(sorted(red["reasons"].items())):
        raise AssertionError(f"dedup: drops written {reasons} != decided {red['reasons']}")
    n_drop = sum(reasons.values())
    n_kept = n_in - n_drop
    bands, rows = params.bands_rows()
    by_source = {
        s: {
            "input": int(c.get(f"input.{s}", 0)),
            "kept": int(a.get(f"kept.{s}", 0)),
            "exact_dropped": int(red["by_source"].get(f"{s}.dedup.exact", 0)),
            "near_dropped": int(red["by_source"].get(f"{s}.dedup.near", 0)),
        }
        for s in SOURCES
    }
    vc = verify.counts
    return {
        "summary": {
            "in": n_in,
            "kept": n_kept,
            "exact_dropped": reasons.get("dedup.exact", 0),
            "near_dropped": reasons.get("dedup.near", 0),
        },
        "input": n_in,
        "kept": n_kept,
        "dropped": n_drop,
        "drop_reasons": reasons,
        "exact_dropped": reasons.get("dedup.exact", 0),
        "near_dropped": reasons.get("dedup.near", 0),
        "clusters": red["clusters"],
        "documents_in_clusters": red["documents_in_clusters"],
        "largest_cluster": red["largest_cluster"],
        "exact_copies": int(buckets.counts.get("exact_copies", 0)),
        "candidate_pairs": int(vc.get("candidate_pairs", 0)),
        "verified_pairs": int(vc.get("verified_pairs", 0)),
        # candidates by exact Jaccard (bins of 0.1, "0.8" = [0.8, 0.9)): what verification saw
        "candidates_by_jaccard": {
            f"{k / 10:.1f}": int(vc.get(f"candidates_j.{k / 10:.1f}", 0)) for k in range(10)
        },
        "capped_buckets": int(buckets.counts.get("capped_buckets", 0)),
        "by_source": by_source,
        "cross_source": {
            "web_dropped_for_synthetic": int(
                red["cross_source"].get("web_dropped_for_synthetic", 0)
            ),
            "synthetic_dropped_for_web": int(
                red["cross_source"].get("synthetic_dropped_for_web", 0)
            ),
        },
        "exact": cfg.dedup.exact,
        "near": cfg.dedup.near,
        "num_perm": params.num_perm,
        "ngram": params.ngram,
        "threshold": params.threshold,
        "bands": bands,
        "rows": rows,
        # P(a pair at exact Jaccard J becomes a candidate) and P(it is judged a duplicate):
        # candidate AND exact J >= threshold (verification is exact: 0 below the threshold)
        "candidate_curve": candidate_curve(params),
        "decision_curve": decision_curve(params),
        "quality_key": QUALITY_KEY,
        "notes": notes,
        "rounds": rounds,
        "shards_total": rounds["apply"]["tasks"],
        "shards_run": rounds["apply"]["ran"],
        "outputs": {"kept": "part-*.jsonl.zst", "dropped": "dropped/part-*.jsonl.zst"},
    }
