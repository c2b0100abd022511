"""``datagen ablate``: what each filter buys, measured by training proxy models (DataComp-LM,
Li et al. 2024, and FineWeb, Penedo et al. 2024, decided their filters this way).

From one finished run it builds k corpora at the SAME token budget (``ablate.tokens``, or the
smallest corpus's size), from the run's stage outputs:

- ``raw``: every web page with extracted text in the wanted language (``web/`` kept and
  ``web/dropped/`` side output, except the ``extract.*``, ``lid.*``, ``precheck.language`` and
  ``precheck.empty`` drops; a page the pre-extraction Gopher checks dropped counts with its
  visible text): no quality filter;
- ``heuristics``: the pages that passed the Gopher / C4 / FineWeb / blocklist steps (kept, or
  dropped later as ``quality.*`` or ``decontam.*``);
- ``classifier``: the pages that passed the quality classifier too (kept, or dropped later as
  ``decontam.*``; the dedup stage's drops are not removed: dedup comes after every corpus
  but the emitted mix);
- ``synthetic``: the filter stage's kept synthetic documents;
- ``synthetic+web``: the emitted mix (``emit/tokens/train``, repeats as emitted).

Documents of the emitted val split are left out of every corpus. Documents are cut into pieces
of at most ``ablate.piece_tokens`` and each corpus sample is the same number of tokens (pieces in
an order seeded by the model's seed, the last one cut), so every token of a corpus is equally
likely to be drawn. The same tiny GPT (``pipeline.proxy_train``) trains on each sample for the
same steps (``ablate.steps``, or ``ablate.epochs`` passes over the budget) with each of
``ablate.seeds`` (sample, init and batch order) and is evaluated on held-out clean text no
classifier saw (the run's held-out reference documents, or ``ablate.eval``) and on the emitted
val split. Token ids are remapped to the ids that occur in any sample or eval set: one
vocabulary for every model, and a smaller output layer on CPU.

Output in ``<run>/ablate/``: ``manifest.json`` (the table: mean and sample std of the eval loss
per corpus and eval set, every model's numbers, the corpora's sizes), ``ablation.svg`` (the
plot), ``runs/completions/`` (one marker per model: a killed ablation resumes where it was).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.classifier_data import document_files, read_documents, read_reference, reference_split
from pipeline.config import ABLATION_CORPORA, PipelineConfig
from pipeline.errors import DatagenError
from pipeline.executor import ShardJob, make_executor, run_shards
from pipeline.records import Document, utc_now
from pipeline.runs import (
    Run,
    RunLock,
    atomic_write_bytes,
    read_jsonl,
    read_shards,
    remove_stale_temps,
)
from pipeline.steps import Stats

FOLDER = "ablate"
PLOT = "ablation.svg"
WORK = ".work"
RUNS = "runs"
# drop-reason families by web step: before these, no text to train on; after the quality step
PRE_RAW = ("extract", "lid")
# the web stage's checks before extraction: a page confidently in another language (or with no
# visible text) has no text to train on; one under Gopher's word / stop-word / top n-gram bounds
# (precheck.n_words, ...) fails the heuristics and counts as raw with the visible text it keeps
PRE_RAW_PRECHECK = ("precheck.language", "precheck.empty")
QUALITY = ("quality",)
AFTER_QUALITY = ("decontam",)
REFERENCE, VAL = "reference", "val"
ABOUT = {
    "raw": "web pages with extracted text in web.languages, no quality filter",
    "heuristics": "web pages after blocklist, Gopher, C4 and FineWeb rules",
    "classifier": "web pages after the quality classifier too",
    "synthetic": "the filter stage's kept synthetic documents",
    "synthetic+web": "the emitted train split (the mix)",
}


# --------------------------------------------------------------------------- corpora
def _family(reason: str | None) -> str:
    return (reason or "").split(".", 1)[0]


def web_level(doc: Document) -> int:
    """How far a web page got: 0 = no usable text, 1 = raw, 2 = passed the heuristics,
    3 = passed the quality classifier (kept, or dropped by a later step)."""
    if not doc.text.strip():
        return 0
    fam = _family(doc.drop_reason)
    if doc.drop_reason is None or fam in AFTER_QUALITY:
        return 3
    if fam in QUALITY:
        return 2
    return 0 if fam in PRE_RAW or doc.drop_reason in PRE_RAW_PRECHECK else 1


LEVELS = {"raw": 1, "heuristics": 2, "classifier": 3}


def _web_docs(run: Run, need_dropped: bool) -> Iterator[Document]:
    web = run.require_finished("web", "ablate")
    dropped = web / "dropped"
    if need_dropped and not any(dropped.glob("part-*.jsonl*")):
        raise DatagenError(
            f"{dropped}: no dropped web pages; the raw and heuristics corpora need them: rerun "
            "the web stage with web.keep_dropped=true (the default), or set ablate.corpora "
            "without raw and heuristics"
        )
    yield from read_shards(web, Document)
    if dropped.exists():
        yield from read_shards(dropped, Document)


def _val_ids(emit: Path) -> set[str]:
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for p in sorted((emit / "text" / VAL).glob("part-*.parquet")):
        ids.update(pq.read_table(p, columns=["id"]).column("id").to_pylist())
    return ids


def _emitted_docs(emit: Path, split: str, dtype: str) -> list[np.ndarray]:
    """The documents of an emitted split as token arrays (each ends with end-of-text)."""
    from pipeline.tokenize import read_token_shard

    out = []
    for p in sorted((emit / "tokens" / split).glob("part-*.ds")):
        tokens, ends = read_token_shard(p, dtype)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        out += [np.asarray(tokens[s:e]) for s, e in zip(starts, ends.astype(np.int64), strict=True)]
    return out


def _pieces(docs: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Documents cut into consecutive pieces of at most ``size`` tokens."""
    return [d[i : i + size] for d in docs for i in range(0, len(d), size)]


def _budgeted(pieces: list[np.ndarray], budget: int, *seed: object) -> tuple[np.ndarray, int]:
    """``budget`` tokens of pieces in a seeded order, the last one cut: (tokens, pieces)."""
    key = [
        int(x) if isinstance(x, int) else int.from_bytes(str(x).encode(), "little") for x in seed
    ]
    order = np.random.default_rng(key).permutation(len(pieces))
    parts, n = [], 0
    for i in order:
        if n >= budget:
            break
        d = pieces[i][: budget - n]
        parts.append(d)
        n += len(d)
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), len(parts)


def resolve_steps(a: Any, budget: int) -> int:
    """ablate.steps, or (0) ``epochs`` passes over the budget, 10 to ``max_steps`` steps."""
    if a.steps:
        return int(a.steps)
    return int(min(a.max_steps, max(10, math.ceil(a.epochs * budget / (a.batch * a.seq_len)))))


def _encode(tok: Any, texts: Iterable[str], batch: int = 512) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            out += tok.encode(buf)
            buf = []
    return out + (tok.encode(buf) if buf else [])


def _eval_texts(cfg: PipelineConfig, run: Run) -> tuple[list[str], str]:
    a = cfg.ablate
    if a.eval:
        files = document_files(a.eval, "ablate.eval", cfg)
        return [
            d.text for d in read_documents(files, a.eval_text_field, "ablate.eval_text_field")
        ], (", ".join(a.eval))
    held = run.path / "train_classifier" / "reference_eval.jsonl.zst"
    if held.exists():
        from pipeline.classifier_data import RefDoc

        return [d.text for d in read_jsonl(held, RefDoc)], str(held)
    # the run did not train on reference text: the same held-out split of classifier.reference
    c = cfg.classifier
    texts = [
        d.text
        for d in read_reference(cfg)
        if reference_split(d.id, cfg.seed, c.eval_fraction, c.test_fraction) == "eval"
    ]
    return texts, "classifier.reference (held-out split)"


# --------------------------------------------------------------------------- one model
def train_job(job: ShardJob) -> Stats:
    """Train one proxy model (corpus x seed) and evaluate it; the result goes to the marker."""
    from pipeline.config import AblateConfig
    from pipeline.proxy_train import train_model

    p = job.payload
    hp = AblateConfig.model_validate(p["ablate"])
    work = Path(p["work"])
    train = np.load(work / f"corpus-{p['corpus']}-{p['seed']}.npy", mmap_mode="r")
    evals = {name: np.load(work / f"eval-{name}.npy") for name in p["evals"]}
    res = train_model([train], evals, int(p["vocab"]), hp, int(p["seed"]), threads=hp.threads)
    stats = Stats()
    stats.info["result"] = {"corpus": p["corpus"], "seed": p["seed"], **res}
    stats.add("models")
    return stats


# --------------------------------------------------------------------------- driver
def _npy(path: Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def _summary(values: list[float]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "std": None, "n": 0}
    std = float(v.std(ddof=1)) if len(v) > 1 else None
    return {
        "mean": round(float(v.mean()), 4),
        "std": round(std, 4) if std is not None else None,
        "n": len(v),
    }


def config_hash(cfg: PipelineConfig, run: Run) -> str:
    import hashlib

    up = [
        str((run.read_manifest(s) or {}).get("config_hash"))
        for s in ("train_classifier", "web", "emit")
    ]
    own = cfg.section_hash("ablate", "seed")
    return hashlib.sha256("|".join([own, *up]).encode()).hexdigest()[:16]


def ablate(cfg: PipelineConfig, console: Console) -> dict[str, Any]:
    """Run (or resume) the ablation of ``cfg.run``; returns its manifest."""
    from pipeline.proxy_train import require_torch

    require_torch("datagen ablate")
    run = Run(cfg.run.root, cfg.run.name)
    if not run.path.is_dir():
        raise DatagenError(f"{run.path}: no such run; run `datagen run` first")
    with RunLock(run.path):
        return _ablate(cfg, run, console)


def _ablate(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    from pipeline.stages import _supersede

    for stage in ("web", "emit"):
        run.require_finished(stage, "ablate")
    h = config_hash(cfg, run)
    folder = run.path / FOLDER
    old = run.read_manifest(FOLDER)
    if old and old.get("status") == "finished" and old.get("config_hash") == h and not cfg.force:
        console.print(f"[dim]ablate: finished earlier, skipped ({folder})[/]")
        return old
    if old and (old.get("config_hash") != h or cfg.force) and folder.exists():
        why = "force=true" if old.get("config_hash") == h else "its config or the run changed"
        _supersede(run, FOLDER, old.get("config_hash", "unknown"), why, console)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    started, t0 = utc_now(), time.perf_counter()
    base = {"stage": FOLDER, "config_hash": h, "started_at": started, "run": str(run.path)}
    run.write_manifest(FOLDER, {**base, "status": "running"})
    try:
        out = _work(cfg, run, folder, console)
    except BaseException as e:
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        run.write_manifest(FOLDER, {**base, "status": "failed", "error": reason[:500]})
        raise
    manifest = {
        **base,
        "status": "finished",
        **out,
        "finished_at": utc_now(),
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    run.write_manifest(FOLDER, manifest)
    return manifest


def _work(cfg: PipelineConfig, run: Run, folder: Path, console: Console) -> dict[str, Any]:
    from pipeline.tokenize import load_tokenizer

    a = cfg.ablate
    emit = run.path / "emit"
    em = run.read_manifest("emit") or {}
    tinfo = em.get("tokenizer") or {}
    tok = load_tokenizer(str(emit / "tokenizer.json"), tinfo.get("eot_token", cfg.emit.eot_token))
    dtype = tinfo.get("dtype") or tok.dtype.str
    val_ids = _val_ids(emit)
    notes: list[str] = []

    # --- corpora: token arrays of whole documents
    docs: dict[str, list[np.ndarray]] = {}
    web_names = [c for c in a.corpora if c in LEVELS]
    if web_names:
        texts: dict[str, list[str]] = {c: [] for c in web_names}
        need_dropped = any(LEVELS[c] < 3 for c in web_names)
        for d in _web_docs(run, need_dropped):
            if d.id in val_ids:
                continue
            lvl = web_level(d)
            for c in web_names:
                if lvl >= LEVELS[c]:
                    texts[c].append(d.text)
        for c in web_names:
            docs[c] = _encode(tok, texts[c])
    if "synthetic" in a.corpora:
        filt = run.require_finished("filter", "ablate")
        docs["synthetic"] = _encode(
            tok, (d.text for d in read_shards(filt, Document) if d.id not in val_ids)
        )
    if "synthetic+web" in a.corpora:
        docs["synthetic+web"] = _emitted_docs(emit, "train", dtype)
    sizes = {c: int(sum(len(x) for x in docs[c])) for c in a.corpora}
    small = min(sizes.values())
    budget = a.tokens or small
    short = [c for c in a.corpora if sizes[c] < max(budget, a.seq_len + 2)]
    if short:
        c = short[0]
        raise DatagenError(
            f"ablate: corpus '{c}' has {sizes[c]:,} tokens, fewer than the budget of "
            f"{max(budget, a.seq_len + 2):,}"
            + (" (ablate.tokens)" if a.tokens else f" (seq_len + 2 = {a.seq_len + 2})")
            + f"; sizes: {', '.join(f'{k} {v:,}' for k, v in sizes.items())}"
        )
    # one sample per corpus and seed: the std over seeds covers the data sample too
    arrays: dict[tuple[str, int], np.ndarray] = {}
    used: dict[str, list[int]] = {}
    for c in a.corpora:
        pieces = _pieces(docs[c], a.piece_tokens)
        for s in a.seeds:
            arrays[c, s], n = _budgeted(pieces, budget, cfg.seed, s, c)
            used.setdefault(c, []).append(n)
    steps = resolve_steps(a, budget)
    tokens_seen = steps * a.batch * a.seq_len
    if tokens_seen > 4 * budget:
        notes.append(
            f"each model sees {tokens_seen:,} tokens, {tokens_seen / budget:.1f} passes over its "
            f"{budget:,}-token corpus: differences partly measure memorisation"
        )

    # --- eval sets
    eval_texts, eval_source = _eval_texts(cfg, run)
    eval_tokens: dict[str, np.ndarray] = {}
    eval_info: dict[str, Any] = {}
    if eval_texts:
        enc = _encode(tok, eval_texts)
        eval_tokens[REFERENCE] = np.concatenate(enc)
        eval_info[REFERENCE] = {"source": eval_source, "documents": len(enc)}
    else:
        notes.append(f"no held-out reference text ({eval_source}): reference eval skipped")
    val_docs = _emitted_docs(emit, VAL, dtype)
    if val_docs:
        eval_tokens[VAL] = np.concatenate(val_docs)
        eval_info[VAL] = {"source": str(emit / "tokens" / VAL), "documents": len(val_docs)}
    else:
        notes.append("the emitted val split is empty (emit.val_fraction=0): val eval skipped")
    if not eval_tokens:
        raise DatagenError("ablate: no eval text (no held-out reference text and no val split)")

    # --- one vocabulary: the ids that occur anywhere, remapped to 0..n-1
    ids = np.unique(np.concatenate([*arrays.values(), *eval_tokens.values()]).astype(np.int64))
    remap = {k: np.searchsorted(ids, v.astype(np.int64)) for k, v in arrays.items()}
    from pipeline.proxy_train import spread_windows

    windows = {
        k: spread_windows(np.searchsorted(ids, v.astype(np.int64)), a.seq_len, a.eval_windows)
        for k, v in eval_tokens.items()
    }
    for k, w in windows.items():
        eval_info[k].update({"tokens": int(len(eval_tokens[k])), "windows": len(w)})
    work = folder / WORK
    work.mkdir(parents=True, exist_ok=True)
    for (c, s), v in remap.items():
        _npy(work / f"corpus-{c}-{s}.npy", v.astype(np.int32))
    for k, w in windows.items():
        _npy(work / f"eval-{k}.npy", w)

    # --- train: one shard job per (corpus, seed), on the executor
    hp = {**a.model_dump(mode="json"), "steps": steps}
    jobs = [
        ShardJob(
            index=i * len(a.seeds) + j,
            stage_dir=str(folder / RUNS),
            payload={
                "ablate": hp,
                "work": str(work),
                "corpus": c,
                "seed": s,
                "evals": list(windows),
                "vocab": len(ids),
            },
        )
        for i, c in enumerate(a.corpora)
        for j, s in enumerate(a.seeds)
    ]
    console.print(
        f"ablate: {len(a.corpora)} corpora x {len(a.seeds)} seeds, {budget:,} tokens each, "
        f"{steps} steps of {a.batch}x{a.seq_len} tokens, vocabulary {len(ids):,}"
    )
    with contextlib.closing(make_executor(cfg.executor)) as ex:
        result = run_shards(ex, train_job, jobs, console, "ablate", "models", "models")
    runs = [r["stats"]["info"]["result"] for r in result.per_shard]
    table = []
    for c in a.corpora:
        mine = [r for r in runs if r["corpus"] == c]
        row: dict[str, Any] = {"corpus": c}
        for k in windows:
            row[k] = _summary([r["eval_after"][k] for r in mine])
        row["train_loss_end"] = _summary([r["train_loss_end"] for r in mine])
        table.append(row)
    first = runs[0]
    out = {
        "summary": {
            "corpora": len(a.corpora),
            "seeds": len(a.seeds),
            "tokens_per_corpus": budget,
            **{
                f"{row['corpus']}_{k}": row[k]["mean"]
                for row in table
                for k in windows
                if row[k]["mean"] is not None
            },
        },
        "table": table,
        "eval_sets": eval_info,
        "corpora": {
            c: {
                "about": ABOUT[c],
                "documents": len(docs[c]),
                "tokens_available": sizes[c],
                "pieces_used": used[c],
                "tokens": int(len(arrays[c, a.seeds[0]])),
            }
            for c in a.corpora
        },
        "token_budget": budget,
        "piece_tokens": a.piece_tokens,
        "tokens_seen_per_model": tokens_seen,
        "passes_over_corpus": round(tokens_seen / budget, 2),
        "seeds": a.seeds,
        "model": {
            "params": first["params"],
            "vocab_size": len(ids),
            "d_model": a.d_model,
            "layers": a.layers,
            "heads": a.heads,
            "seq_len": a.seq_len,
            "batch": a.batch,
            "steps": steps,
            "steps_rule": f"ablate.steps={a.steps}"
            if a.steps
            else f"{a.epochs:g} passes over the budget (ablate.epochs), at most ablate.max_steps",
            "lr": a.lr,
            "uniform_loss": round(math.log(len(ids)), 4),
        },
        "runs": runs,
        "excluded_val_documents": len(val_ids),
        "notes": notes,
        "shards_total": result.shards,
        "shards_run": result.ran,
        "plot": PLOT,
    }
    write_plot(folder / PLOT, table, list(windows), out)
    return out


def write_plot(path: Path, table: list[dict], evals: list[str], m: dict[str, Any]) -> None:
    """Grouped bars: mean eval loss per corpus for each eval set, sample std as error bars."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "datagen-ablate"  # the same plot gives the same bytes
    fig, ax = plt.subplots(figsize=(7.0, 3.8), dpi=100)
    names = [r["corpus"] for r in table]
    width = 0.8 / max(1, len(evals))
    x = np.arange(len(names))
    for k, ev in enumerate(evals):
        means = [r[ev]["mean"] or 0.0 for r in table]
        stds = [r[ev]["std"] or 0.0 for r in table]
        bars = ax.bar(x + (k - (len(evals) - 1) / 2) * width, means, width, yerr=stds, capsize=3)
        bars.set_label(f"{ev} eval")
        for b, mu in zip(bars, means, strict=True):
            ax.annotate(
                f"{mu:.3f}",
                (b.get_x() + b.get_width() / 2, mu),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
    lows = [r[ev]["mean"] for r in table for ev in evals if r[ev]["mean"] is not None]
    highs = [(r[ev]["mean"] or 0) + (r[ev]["std"] or 0) for r in table for ev in evals]
    if lows:
        span = max(highs) - min(lows)
        ax.set_ylim(max(0.0, min(lows) - max(0.5, span)), max(highs) + 0.25 * max(0.5, span))
    ax.set_xticks(x, names)
    ax.set_ylabel("eval loss (nats / token)")
    ax.set_title(
        f"Proxy GPT ({m['model']['params'] / 1e6:.2f}M params), {m['token_budget']:,} tokens per "
        f"corpus, {len(m['seeds'])} seeds (mean ± std)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fmt = path.suffix.lstrip(".").lower() or "svg"  # .svg (the manifest's), or .png
    fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def print_table(console: Console, m: dict[str, Any]) -> None:
    """The manifest's table: eval loss per corpus, mean ± std over seeds."""
    table, evals = m["table"], list(m["eval_sets"])
    t = Table(
        title=f"ablate: eval loss, mean ± std over {len(m['seeds'])} seeds "
        f"({m['token_budget']:,} tokens per corpus)"
    )
    t.add_column("corpus")
    for ev in evals:
        t.add_column(f"{ev} eval", justify="right")
    t.add_column("train loss (end)", justify="right")
    for r in table:
        cells = [fmt_summary(r[ev]) for ev in evals]
        t.add_row(r["corpus"], *cells, fmt_summary(r["train_loss_end"]))
    console.print(t)


def fmt_summary(s: dict[str, Any]) -> str:
    """``mean ± std`` of a table cell (``n/a`` without values)."""
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["std"] is not None else f"{s['mean']:.3f}"


__all__ = [
    "ABLATION_CORPORA",
    "ablate",
    "fmt_summary",
    "print_table",
    "train_job",
    "web_level",
    "write_plot",
]
