"""web: read web data, filter it hard (phi-3 style), write Documents like the synthetic ones.

Steps, each counted in the manifest's funnel (documents and whitespace tokens left after each):

1. read       WARC/WET/ARC/HTML/JSONL/parquet/HF records (``pipeline.web.readers``), streamed
2. extract    HTML -> main text (trafilatura by default); non-HTML, binary, non-2xx and empty
              extractions are dropped; charset problems are replaced and counted
3. language   fastText lid.176: ``web.languages`` at >= ``web.lang_min_score``
4. blocklist  domains / URL prefixes from ``web.blocklist``
5. heuristics Gopher repetition + quality, C4 line rules (lines removed, text kept), FineWeb
              quality; then PII masking (e-mail and IP addresses -> placeholders, counted)
6. quality    the filter stage's fastText classifier: P(educational) >= ``web.min_quality``
7. dedup      exact + MinHash against ONE index: the filter stage's kept synthetic documents
              plus every web document kept so far (saved to ``web/dedup_index/``)
8. decontam   benchmark n-gram overlap (``cfg.decontam``)

Records are processed one at a time (HTML extraction in ``web.workers`` processes with a
bounded window) and written incrementally, so memory does not grow with the input (the dedup
signatures aside). Kept documents go to ``web/part-*.jsonl.zst``; with ``web.keep_dropped``
dropped ones go to ``web/dropped/`` with their reason and scores.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from filters.blocklist import BlocklistFilter
from filters.c4 import C4Filter
from filters.dedup import exact_hash
from filters.fineweb import FineWebQualityFilter
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from filters.lid import LanguageIdFilter
from filters.pii import PIIMasker
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.records import Document, stable_id
from pipeline.runs import Run, ShardWriter, shard_paths
from pipeline.web.extract import Extractor, decode_html, is_binary, is_html, nonblank_lines
from pipeline.web.funnel import Funnel
from pipeline.web.readers import InputSource, ReadStats, WebRecord, iter_source, resolve_inputs

CONFIG_KEYS = ("web", "dedup", "decontam", "classifier.positive_label", "seed")
INDEX_DIR = "dedup_index"


# --------------------------------------------------------------------------- extraction
@dataclass
class Prepared:
    """A record after step 2, as returned by a worker (payload dropped)."""

    rec: WebRecord
    text: str | None  # None when dropped
    reason: str | None
    raw_tokens: int
    replaced: int = 0
    unknown_charset: bool = False


_EXTRACTOR: Extractor | DatagenError | None = None


def _init_worker(name: str, include_tables: bool, fast: bool) -> None:
    global _EXTRACTOR
    try:
        _EXTRACTOR = Extractor(name, include_tables=include_tables, fast=fast)
    except DatagenError as e:
        # raised from prepare instead: the parent gets it as one error line, where a failing
        # Pool initializer would only be restarted, again and again
        _EXTRACTOR = e


def prepare(rec: WebRecord) -> Prepared:
    """Step 2 for one record: decide HTML or not, decode, extract. Pure; runs in workers."""
    if isinstance(_EXTRACTOR, DatagenError):
        raise _EXTRACTOR
    assert _EXTRACTOR is not None
    if rec.text is not None:
        # lone surrogates (legal in JSON escapes) break fastText and JSON output: replace them
        text = nonblank_lines(rec.text.encode("utf-8", "replace").decode("utf-8"))
        return Prepared(rec, text or None, None if text else "extract.empty", len(text.split()))
    payload = rec.payload or b""
    rec.payload = None  # nothing big travels back from the worker
    raw_tokens = len(payload.split())
    if rec.http_status is not None and not 200 <= rec.http_status < 300:
        return Prepared(rec, None, "extract.http_status", raw_tokens)
    if not payload.strip():
        return Prepared(rec, None, "extract.empty", raw_tokens)
    if is_binary(payload):
        return Prepared(rec, None, "extract.binary", raw_tokens)
    if not is_html(rec.content_type, payload):
        return Prepared(rec, None, "extract.non_html", raw_tokens)
    dec = decode_html(payload, rec.charset)
    try:
        text = _EXTRACTOR(dec.text, rec.url)
    # lxml and trafilatura raise assorted errors on pathological markup; one page must not
    # stop the run: it is dropped and counted as extract.error
    except (ValueError, TypeError, RecursionError, AttributeError, KeyError, IndexError):
        return Prepared(rec, None, "extract.error", raw_tokens, dec.replaced, dec.unknown_charset)
    return Prepared(
        rec,
        text or None,
        None if text else "extract.empty",
        raw_tokens,
        dec.replaced,
        dec.unknown_charset,
    )


def _bounded(
    items: Iterable[WebRecord], sem: threading.Semaphore, stop: threading.Event
) -> Iterator[WebRecord]:
    """Pool.imap reads its input eagerly; a semaphore keeps at most N records in flight."""
    for x in items:
        sem.acquire()
        if stop.is_set():
            return
        yield x


def prepared_stream(
    records: Iterable[WebRecord], workers: int, extractor: str, include_tables: bool, fast: bool
) -> Iterator[Prepared]:
    """Records -> Prepared in input order, extraction in ``workers`` processes."""
    if workers <= 1:
        _init_worker(extractor, include_tables, fast)
        yield from map(prepare, records)
        return
    Extractor(extractor, include_tables, fast)  # a missing package: one error, here
    window = workers * 16
    sem = threading.Semaphore(window)
    stop = threading.Event()
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(
        workers, initializer=_init_worker, initargs=(extractor, include_tables, fast)
    ) as pool:
        try:
            for p in pool.imap(prepare, _bounded(records, sem, stop), chunksize=2):
                sem.release()
                yield p
        finally:
            # on an early exit (error, interrupt) unblock the feeder thread so the pool can
            # shut down instead of waiting on the semaphore forever
            stop.set()
            for _ in range(window + 1):
                sem.release()


# --------------------------------------------------------------------------- stage
def words(text: str) -> int:
    return len(text.split())


def _clean_outputs(folder: Path) -> None:
    """A killed earlier attempt may have left shards: start this attempt from nothing."""
    for p in shard_paths(folder):
        p.unlink()
    for sub in ("dropped", INDEX_DIR):
        if (folder / sub).exists():
            shutil.rmtree(folder / sub)


def _load_classifier(cfg: PipelineConfig, run: Run, notes: list[str]) -> Any:
    fm = run.read_manifest("filter") or {}
    tm = run.read_manifest("train_classifier") or {}
    # the model the filter stage used (None: it used none); older manifests: train_classifier's
    model = fm["classifier_model"] if "classifier_model" in fm else tm.get("model_path")
    if not model:
        notes.append("quality: the filter stage used no classifier; step skipped")
        return None
    path = Path(model)
    if not path.is_absolute():
        path = next(
            (p for p in (run.path / "filter" / path, run.path / path, Path(model)) if p.exists()),
            path,
        )
    from filters.classifier import QualityClassifier

    label = tm.get("positive_label") or cfg.classifier.positive_label
    return QualityClassifier(path, label)


def _classifier_applied(run: Run, notes: list[str]) -> bool:
    """The filter stage's verdict: a model that is not demonstrably useful only scores."""
    info = (run.read_manifest("filter") or {}).get("classifier") or {}
    applied = bool(info.get("applied", True))
    if not applied:
        notes.append(f"quality: scores only, no keep decision ({info.get('note')})")
    return applied


class WebStage:
    def __init__(self, cfg: PipelineConfig, run: Run, console: Console) -> None:
        self.cfg = cfg
        self.run = run
        self.console = console
        w = cfg.web
        self.notes: list[str] = []
        self.funnel = Funnel()
        self.lid = LanguageIdFilter(
            w.languages, w.lang_min_score, cfg.project_path(w.lid_model) if w.lid_model else ""
        )
        self.blocklist = (
            BlocklistFilter(cfg.project_path(w.blocklist)) if w.blocklist else BlocklistFilter()
        )
        self.c4 = C4Filter(w.c4) if w.c4.enabled else None
        heur: list[Any] = [
            GopherRepetitionFilter(w.gopher_repetition),
            GopherQualityFilter(w.gopher_quality),
        ]
        # FineWeb's rules read the page as extracted: after C4's line removal (no lines without
        # terminal punctuation left) its line-punctuation and short-line ratios could not fire
        if w.fineweb.enabled:
            heur.append(FineWebQualityFilter(w.fineweb))
        if self.c4 is not None:
            heur.append(self.c4)
        self.heuristics = heur
        self.pii = PIIMasker(w.email_placeholder, w.ip_placeholder) if w.pii else None
        self.classifier = _load_classifier(cfg, run, self.notes)
        self.classifier_applied = self.classifier is not None and _classifier_applied(
            run, self.notes
        )
        self._load_dedup()
        self.decontam = None
        if w.decontam and cfg.decontam.enabled:
            from filters.decontam import Decontaminator

            self.decontam = Decontaminator(cfg.decontam)
        self.pii_counts: Counter[str] = Counter()
        self.c4_lines: Counter[str] = Counter()
        self.charset: Counter[str] = Counter()
        self.dedup_matches: Counter[str] = Counter()

    # ---- dedup index shared with the synthetic data
    def _load_dedup(self) -> None:
        from filters.dedup import ExactDeduper, MinHashDeduper, MinHashParams

        self.exact = self.minhash = None
        self.synthetic_ids: set[str] = set()
        self.web_ids: set[str] = set()  # web docs in the exact index
        if not self.cfg.web.dedup:
            return
        d = self.cfg.dedup
        idx = self.run.path / "filter" / INDEX_DIR
        if d.exact:
            if (idx / "exact_hashes.json").exists():
                self.exact = ExactDeduper.load(idx)
            else:
                self.exact = ExactDeduper()
                self.notes.append(
                    f"dedup: {idx}/exact_hashes.json not found; exact dedup "
                    "among web documents only"
                )
        if d.near:
            if (idx / "params.json").exists():
                self.minhash = MinHashDeduper.load(idx)
                self.synthetic_ids = set(self.minhash.ids)
            else:
                self.minhash = MinHashDeduper(
                    MinHashParams(
                        num_perm=d.num_perm,
                        ngram=d.ngram,
                        threshold=d.threshold,
                        bands=d.bands,
                        seed=self.cfg.seed,
                    )
                )
                self.notes.append(
                    f"dedup: {idx}/params.json not found; MinHash dedup among web documents only"
                )

    # ---- per record
    def _document(self, p: Prepared) -> Document:
        r = p.rec
        # the file's last path parts: the same on every machine for the same data layout, and
        # distinct for a/train-00000.parquet and b/train-00000.parquet
        name = "/".join(Path(r.source_file).parts[-3:])
        return Document(
            id=stable_id(name, r.offset, r.record_id, r.url, prefix="web-"),
            text=p.text or "",
            source="web",
            url=r.url,
            source_file=r.source_file,
            warc_record_id=r.record_id,
            offset=r.offset,
            fetch_date=r.fetch_date,
            created_at=None,
        )

    def _drop(self, doc: Document, step: str, reason: str) -> None:
        doc.drop_reason = reason
        self.funnel.drop(step, reason)
        if self.dropped is not None:
            self.dropped.write(doc)

    def _filter(self, doc: Document, filt: Any, step: str) -> bool:
        scores = filt.score(doc)
        doc.scores.update({f"{filt.family}.{k}": round(float(v), 6) for k, v in scores.items()})
        reason = filt.keep(scores)
        if reason is not None:
            self._drop(doc, step, reason)
            return False
        return True

    def handle(self, p: Prepared) -> Document | None:
        """Steps 2-5 for one record; returns the document when it goes on to the batch."""
        f = self.funnel
        f.passed("read", p.raw_tokens)
        if p.replaced:
            self.charset["records_with_replaced_bytes"] += 1
            self.charset["replaced_bytes"] += p.replaced
        if p.unknown_charset:
            self.charset["unknown_declared_charset"] += 1
        doc = self._document(p)
        if p.reason is not None:
            self._drop(doc, "extract", p.reason)
            return None
        f.passed("extract", words(doc.text))
        doc.language = self.lid.language(doc.text)[0]
        if not self._filter(doc, self.lid, "language"):
            return None
        f.passed("language", words(doc.text))
        if not self._filter(doc, self.blocklist, "blocklist"):
            return None
        f.passed("blocklist", words(doc.text))
        for h in self.heuristics:
            if not self._filter(doc, h, "heuristics"):
                return None
            if h is self.c4:
                res = self.c4.clean(doc.text)
                self.c4_lines.update(res.removed)
                doc.text = res.text
        if self.pii is not None:
            doc.text, counts = self.pii.mask(doc.text)
            self.pii_counts.update({k: v for k, v in counts.items() if v})
            doc.scores.update({f"pii.{k}": float(v) for k, v in counts.items()})
        f.passed("heuristics", words(doc.text))
        return doc

    # ---- per batch: quality, dedup, decontam, write
    def flush(self, batch: list[Document]) -> None:
        if not batch:
            return
        f = self.funnel
        w = self.cfg.web
        if self.classifier is not None:
            probs = self.classifier.predict_proba([d.text for d in batch])
            survivors = []
            for d, pr in zip(batch, probs, strict=True):
                d.scores["quality.p_positive"] = round(float(pr), 6)
                if self.classifier_applied and w.min_quality > 0 and pr < w.min_quality:
                    self._drop(d, "quality", "quality.low_score")
                else:
                    f.passed("quality", words(d.text))
                    survivors.append(d)
            batch = survivors
        else:
            for d in batch:
                f.passed("quality", words(d.text))
        batch = self._dedup(batch)
        kept: list[Document] = []
        for d in batch:
            if self.decontam is not None:
                res = self.decontam.check(d.text)
                for bench, n in res.matches.items():
                    d.scores[f"decontam.{bench}"] = float(n)
                if res.reason is not None:
                    self._drop(d, "decontam", res.reason)
                    continue
                if res.text is not None:
                    d.text = res.text
            f.passed("decontam", words(d.text))
            kept.append(d)
        self._index(kept)
        for d in kept:
            f.passed("kept", words(d.text))
            self.writer.write(d)

    def _dedup(self, batch: list[Document]) -> list[Document]:
        f = self.funnel
        out: list[Document] = []
        if self.exact is not None:
            # the index gets a page only once it is kept (_index), so a page dropped later
            # (near-dup, decontam) is never named as the kept copy; within a batch the first
            # copy stands in until then
            first_in_batch: dict[str, str] = {}
            for d in batch:
                h = exact_hash(d.text)
                prev = self.exact.kept_id(d.text) or first_in_batch.get(h)
                if prev is not None:
                    d.kept_id = prev
                    kind = "web" if prev in self.web_ids or h in first_in_batch else "synthetic"
                    self.dedup_matches[f"exact_{kind}"] += 1
                    self._drop(d, "dedup", f"dedup.exact_{kind}")
                    continue
                first_in_batch[h] = d.id
                out.append(d)
            batch, out = out, []
        if self.minhash is not None and batch:
            md = self.minhash
            sigs = md.signatures([d.text for d in batch])
            thr = md.params.threshold
            accepted: list[np.ndarray] = []
            accepted_ids: list[str] = []
            keep_sigs = []
            for d, sig in zip(batch, sigs, strict=True):
                hits = md.query_signature(sig)
                match = hits[0] if hits else None
                if match is None and accepted:
                    est = np.count_nonzero(np.stack(accepted) == sig[None, :], axis=1) / len(sig)
                    j = int(np.argmax(est))
                    if est[j] >= thr:
                        match = (accepted_ids[j], float(est[j]))
                if match is not None:
                    d.kept_id = match[0]
                    d.scores["dedup.est_jaccard"] = round(match[1], 4)
                    kind = "synthetic" if match[0] in self.synthetic_ids else "web"
                    self.dedup_matches[f"near_{kind}"] += 1
                    self._drop(d, "dedup", f"dedup.near_{kind}")
                    continue
                accepted.append(sig)
                accepted_ids.append(d.id)
                keep_sigs.append(sig)
                out.append(d)
            self._pending_sigs = dict(zip(accepted_ids, keep_sigs, strict=True))
        else:
            out = batch
            self._pending_sigs = {}
        for d in out:
            f.passed("dedup", words(d.text))
        return out

    def _index(self, kept: list[Document]) -> None:
        if self.exact is not None:
            for d in kept:
                self.exact.add(d.id, d.text)
                self.web_ids.add(d.id)
        if self.minhash is None or not kept:
            return
        ids = [d.id for d in kept if d.id in self._pending_sigs]
        if ids:
            sigs = np.stack([self._pending_sigs[i] for i in ids])
            q = [
                kept_d.scores.get("quality.p_positive", 0.0)
                for kept_d in kept
                if kept_d.id in self._pending_sigs
            ]
            self.minhash.add_signatures(ids, sigs, q, [False] * len(ids))

    # ---- driver
    def process(self, sources: list[InputSource], folder: Path) -> dict[str, Any]:
        w = self.cfg.web
        stats = ReadStats()
        self.dropped = ShardWriter(folder / "dropped") if w.keep_dropped else None
        self.writer = ShardWriter(folder)
        total = sum(s.size for s in sources)
        batch: list[Document] = []
        batch_size = self.cfg.dedup.batch_size
        t0 = time.perf_counter()
        progress = Progress(
            TextColumn("[bold]web[/]"),
            BarColumn(),
            TextColumn(
                "{task.fields[n]} records, {task.fields[kept]} kept, {task.fields[rate]} rec/s"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        done_bytes = [0]
        current = {"file": "", "pos": 0}

        def records() -> Iterator[WebRecord]:
            n = 0
            for src in sources:
                for rec in iter_source(
                    src,
                    stats,
                    w.text_field,
                    w.url_field,
                    w.date_field,
                    w.hf_split,
                    w.hf_config or None,
                ):
                    yield rec
                    n += 1
                    if w.max_records and n >= w.max_records:
                        return

        stream = prepared_stream(
            records(), w.workers, w.extractor, w.include_tables, w.trafilatura_fast
        )
        with progress:
            task = progress.add_task("web", total=total or None, n=0, kept=0, rate="0")
            n = 0
            for p in stream:
                n += 1
                if p.rec.source_file != current["file"]:
                    done_bytes[0] += current["pos"]
                    current["file"], current["pos"] = p.rec.source_file, 0
                current["pos"] = max(current["pos"], p.rec.pos)
                doc = self.handle(p)
                if doc is not None:
                    batch.append(doc)
                    if len(batch) >= batch_size:
                        self.flush(batch)
                        batch = []
                if n % 16 == 0:
                    el = time.perf_counter() - t0
                    progress.update(
                        task,
                        completed=done_bytes[0] + current["pos"],
                        n=n,
                        kept=self.writer.count,
                        rate=f"{n / el:.1f}" if el else "0",
                    )
            self.flush(batch)
            progress.update(task, completed=total, n=n, kept=self.writer.count)
        shards = self.writer.close()
        if self.dropped is not None:
            self.dropped.close()
        elapsed = time.perf_counter() - t0
        self._save_index(folder)
        self.funnel.check()
        return self._manifest(sources, stats, shards, elapsed)

    def _save_index(self, folder: Path) -> None:
        if self.exact is not None:
            self.exact.save(folder / INDEX_DIR)
        if self.minhash is not None:
            self.minhash.save(folder / INDEX_DIR)

    def _manifest(
        self, sources: list[InputSource], stats: ReadStats, shards: list[Path], elapsed: float
    ) -> dict[str, Any]:
        f = self.funnel
        read = f.docs["read"]
        kept = f.docs["kept"]
        errors = sum(stats.errors.values())
        out: dict[str, Any] = {
            "inputs": [{"path": s.path, "format": s.format} for s in sources],
            "reader": stats.as_dict(),
            "funnel": f.as_list(),
            "funnel_note": "tokens are whitespace words; at 'read' they are words of the raw "
            "payload (HTML markup included), after it words of the text",
            "drop_reasons": f.drop_reasons(),
            "charset": dict(sorted(self.charset.items())),
            "pii_masked": dict(sorted(self.pii_counts.items())),
            "c4_lines_removed": dict(sorted(self.c4_lines.items())),
            "language": {
                "model": str(self.lid.path),
                "languages": self.lid.languages,
                "min_score": self.lid.min_score,
            },
            "blocklist": {"entries": len(self.blocklist)},
            "quality": (
                {"model": str(self.classifier.model_path), "min_quality": self.cfg.web.min_quality}
                if self.classifier is not None
                else {"skipped": True}
            ),
            "dedup": {
                "matches": dict(sorted(self.dedup_matches.items())),
                "synthetic_in_index": len(self.synthetic_ids),
                "index_size": len(self.minhash) if self.minhash is not None else 0,
                "index": INDEX_DIR,
            },
            "decontam": (
                {
                    "benchmarks": self.decontam.loaded,
                    "unavailable": self.decontam.unavailable,
                    "warnings": self.decontam.warnings(),
                }
                if self.decontam is not None
                else {"skipped": True}
            ),
            "notes": self.notes,
            "documents": kept,
            "tokens": f.tokens["kept"],
            "shards": [p.name for p in shards],
            "docs_per_s": round(read / elapsed, 2) if elapsed > 0 else None,
            "summary": {
                "read": read,
                "kept": kept,
                "tokens": f.tokens["kept"],
                "read_errors": errors,
            },
        }
        return out


def preflight(cfg: PipelineConfig) -> None:
    """Checks that need no upstream output (input paths, lid model, blocklist): the driver can
    call this before running any stage, so a bad path fails before any work starts."""
    resolve_inputs(cfg.web.inputs, cfg.web.format)
    if cfg.web.inputs:
        from filters.lid import default_lid_model

        Extractor(cfg.web.extractor)  # the extractor's package imports

        if cfg.web.lid_model:
            if not cfg.project_path(cfg.web.lid_model).is_file():
                raise DatagenError(f"web.lid_model: {cfg.web.lid_model}: no such model file")
        else:
            default_lid_model()
        if cfg.web.blocklist:
            BlocklistFilter(cfg.project_path(cfg.web.blocklist))


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    sources = resolve_inputs(cfg.web.inputs, cfg.web.format)  # a bad path fails first
    run.require_finished("filter", "web")
    folder = run.stage_dir("web")
    _clean_outputs(folder)
    if not sources:
        console.print("[yellow]web: no inputs (web.inputs is empty); nothing to do[/]")
        f = Funnel()
        return {
            "inputs": [],
            "note": "no inputs (web.inputs is empty)",
            "funnel": f.as_list(),
            "drop_reasons": {},
            "documents": 0,
            "tokens": 0,
            "shards": [],
            "summary": {"read": 0, "kept": 0, "note": "no inputs"},
        }
    stage = WebStage(cfg, run, console)
    manifest = stage.process(sources, folder)
    reader = manifest["reader"]
    for msg in reader["error_messages"][:10]:
        console.print(f"[yellow]web: {msg}[/]")
    if sum(reader["errors"].values()) > 10:
        problems = ", ".join(f"{n} {kind}" for kind, n in reader["errors"].items())
        console.print(f"[yellow]web: read problems in all: {problems} (web/manifest.json)[/]")
    return manifest
