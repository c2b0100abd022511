"""`datagen review`: one self-contained HTML page to read sampled outputs of a stage.

The page shows sampled kept AND dropped documents (topic, audience, format, the required words
highlighted, teacher model, scores, keep/drop reason), the funnel of every stage, histograms of
length and quality, the quality classifier (held-out metrics, the held-out score histogram of
each class, the score of kept vs dropped documents with the run's cut), the ``datagen ablate``
table and plot when it ran, the most frequent first sentences and openers, distinct-1/2/3
ratios and the near-duplicate rate. Plots are inline SVG and styles inline CSS: no network needed
to open it.

It streams: one pass over the output keeps, per side (kept, dropped), mergeable counters
(documents, length and quality histograms, drops per reason) and a bottom-k sample of documents,
never the whole output. The pass runs in parallel on the configured executor
(``executor.kind``, ``executor.workers``): one job per run of consecutive files of a side (the
stage's shard files, its ``dropped/`` shards, emit's parquet parts, generate's JSONL files),
each returning its :class:`Counts` and :class:`Sample`; they merge, in whatever order the jobs
finish, into exactly the result of one serial pass. The jobs write nothing (no completion
markers: a report is recomputed, never resumed). The text statistics then work on the merged
sample. The funnel table comes from ``pipeline.card``, which the emit stage's dataset card uses
too.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import html
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from jinja2 import Environment
from markupsafe import Markup
from rich.console import Console

from filters.dedup import MinHashParams, WordHashes, find_duplicates
from filters.ngrams import multipliers, windows_within
from pipeline.card import funnel, reasons_text
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.executor import ShardJob, make_executor, map_jobs
from pipeline.records import Document, quality_of, utc_now
from pipeline.runs import Run, atomic_write_text, read_jsonl, shard_paths
from pipeline.stages.dedup import params_of

# the stages whose output folders hold documents (kept in the folder, dropped in dropped/)
DOC_STAGES = ("generate", "filter", "web", "dedup", "emit")
DEFAULT_STAGES = ("filter", "web", "dedup")  # what `datagen review` shows without stage=
WORD = re.compile(r"\w+", re.UNICODE)


# --------------------------------------------------------------------------- documents
def _doc_view(d: Document, stage: str, kept: bool) -> dict[str, Any]:
    return {
        "id": d.id,
        "text": d.text,
        "origin": d.source,
        "topic": d.topic,
        "subject": d.subject,
        "audience": d.audience,
        "format": d.format,
        "style": d.style,
        "required_words": list(d.required_words),
        "model": d.model,
        "url": d.url,
        "scores": dict(d.scores),
        "drop_reason": d.drop_reason,
        "kept": kept,
        "stage": stage,
    }


def _emit_docs(path: Path) -> Iterator[dict[str, Any]]:
    for b in pq.ParquetFile(path).iter_batches(batch_size=1000):
        for row in b.to_pylist():
            if row.get("repeat", 0):
                continue  # a repeated copy: the document was already shown
            scores = {"quality": row["quality"]} if row.get("quality") is not None else {}
            yield {
                "id": row["id"],
                "text": row["text"],
                "origin": row["origin"],
                "topic": row["topic"],
                "subject": row["subject"],
                "audience": row["audience"],
                "format": row["format"],
                "style": row.get("style"),
                "required_words": row["required_words"] or [],
                "model": row["model"],
                "url": row["url"],
                "scores": scores,
                "drop_reason": None,
                "kept": True,
                "stage": "emit",
            }


def _side_files(run: Run, stage: str, kept: bool) -> list[Path]:
    """The files that hold one side (kept or dropped) of a stage's documents, in order."""
    if stage == "emit":  # the emitted text, as parquet parts; nothing dropped
        return sorted((run.path / "emit" / "text" / "train").glob("part-*.parquet")) if kept else []
    if stage == "generate":  # generate appends Documents to numbered JSONL files; nothing dropped
        from pipeline.stages.generate import output_files

        # generate's own drafts (synthetic_files would give revise's rewrites)
        return output_files(run.path / "generate") if kept else []
    return shard_paths(run.path / stage if kept else run.path / stage / "dropped")


def _file_docs(path: Path, stage: str, kept: bool) -> Iterator[dict[str, Any]]:
    """The documents of one file of ``_side_files``, as the page shows them."""
    if path.suffix == ".parquet":
        yield from _emit_docs(path)
        return
    for d in read_jsonl(path, Document):
        yield _doc_view(d, stage, kept)


def _has_docs(run: Run, stage: str) -> bool:
    return bool(_side_files(run, stage, True) or _side_files(run, stage, False))


Position = tuple[str, int]  # (file, record number): where a document is in the pass


class Sample:
    """A uniform sample of ``k`` documents in one pass: the ``k`` whose seeded hash of
    (stage, side, id) is smallest (bottom-k sampling), ties broken by id and then by position.
    It is a function of the set of documents seen, not of their order, so the samples of
    disjoint parts, merged in any order, are the sample of the whole."""

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.seed = seed
        self._items: list[tuple[int, str, Position, dict[str, Any]]] = []  # (key, id, at, doc)
        self._cut: tuple[int, str, Position] | None = None  # the k-th smallest rank so far

    def key(self, d: dict[str, Any]) -> int:
        raw = f"{self.seed}\x1f{d['stage']}\x1f{d['kept']}\x1f{d['id']}".encode()
        return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")

    def add(self, d: dict[str, Any], at: Position) -> None:
        item = (self.key(d), d["id"], at, d)
        if self._cut is not None and item[:3] > self._cut:
            return  # k documents rank before it
        self._items.append(item)
        if len(self._items) >= 2 * self.k:
            self._prune()

    def _prune(self) -> None:
        if len(self._items) > self.k:
            self._items = heapq.nsmallest(self.k, self._items, key=lambda t: t[:3])
            self._cut = self._items[-1][:3]

    def __getstate__(self) -> dict[str, Any]:
        self._prune()  # a job sends its k documents, not up to 2k
        return self.__dict__

    def merge(self, other: Sample) -> Sample:
        self._items.extend(t for t in other._items if self._cut is None or t[:3] <= self._cut)
        self._prune()
        return self

    def items(self) -> list[dict[str, Any]]:
        """The sampled documents, smallest hash first (the first ``n`` are a sample too)."""
        self._prune()
        return [t[3] for t in sorted(self._items, key=lambda t: t[:3])]


LENGTH_BIN = 0.1  # length histogram bins: a tenth of a decade of words
QUALITY_BINS = 20  # quality histogram bins over [0, 1]


class Counts:
    """Mergeable counters over every document of one side (kept or dropped): the number of
    documents, histograms of length (log words) and quality, and drops per reason."""

    def __init__(self) -> None:
        self.n = 0
        self.length: Counter[int] = Counter()
        self.quality: Counter[int] = Counter()
        self.reasons: Counter[str] = Counter()
        # the quality classifier's score per origin (web / synthetic): the review's classifier
        # section shows each against the cut of the stage that made it
        self.by_origin: dict[str, Counter[int]] = {}

    def add(self, d: dict[str, Any]) -> None:
        self.n += 1
        words = len(WORD.findall(d["text"]))
        self.length[int(math.log10(max(words, 1)) / LENGTH_BIN)] += 1
        q = quality_of(d["scores"])
        if q is not None and math.isfinite(q):
            b = min(QUALITY_BINS - 1, max(0, int(q * QUALITY_BINS)))
            self.quality[b] += 1
            self.by_origin.setdefault(d["origin"], Counter())[b] += 1
        if not d["kept"]:
            self.reasons[d["drop_reason"] or "?"] += 1

    def merge(self, other: Counts) -> Counts:
        self.n += other.n
        self.length.update(other.length)
        self.quality.update(other.quality)
        self.reasons.update(other.reasons)
        for origin, c in other.by_origin.items():
            self.by_origin.setdefault(origin, Counter()).update(c)
        return self


# --------------------------------------------------------------------------- statistics
def distinct_ns(texts: list[str], ns: tuple[int, ...] = (1, 2, 3)) -> dict[int, float]:
    """Distinct n-grams / all n-grams over the texts (Li et al. 2016, distinct-n) for each n;
    words are ``\\w+`` runs of the lower-cased text. N-grams are counted by a 64-bit key
    (``filters.ngrams``) of xxh3 word hashes (``filters.dedup``): all texts in one array, one
    sort per n; two distinct n-grams share a key with probability ~2**-64."""
    hashes = WordHashes()
    parts = [hashes.of(t.lower()) for t in texts]
    words = np.concatenate([np.zeros(0, dtype=np.uint64), *parts])
    bounds = np.concatenate(([0], np.cumsum([len(p) for p in parts], dtype=np.int64)))
    out = dict.fromkeys(ns, 0.0)
    if not ns:
        return out
    for n, _, inside in windows_within(words, bounds, ns, multipliers(max(ns), seed=7)):
        if len(inside):
            inside = np.sort(inside)
            out[n] = (1 + int((inside[1:] != inside[:-1]).sum())) / len(inside)
    return out


def distinct_n(texts: list[str], n: int) -> float:
    return distinct_ns(texts, (n,))[n]


def diversity_by_axis(
    docs: list[dict[str, Any]], axes: tuple[str, ...] = ("format", "style"), openers: int = 3
) -> list[dict[str, Any]]:
    """Output diversity per value of each plan axis: documents, distinct-1/2/3 of their texts
    and their most frequent openers (documents without the axis are left out)."""
    rows = []
    for axis in axes:
        groups: dict[str, list[str]] = {}
        for d in docs:
            if d.get(axis):
                groups.setdefault(str(d[axis]), []).append(d["text"])
        for value, texts in sorted(groups.items()):
            rows.append(
                {
                    "axis": axis,
                    "value": value,
                    "docs": len(texts),
                    "d": list(distinct_ns(texts).values()),
                    "openers": Counter(opener(t) for t in texts).most_common(openers),
                }
            )
    return rows


def near_dup_rate(texts: list[str], params: MinHashParams) -> float:
    """Share of documents with at least one other that the dedup stage's rule joins to it
    (``filters.dedup``: an exact copy, or an LSH candidate whose exact word n-gram Jaccard is
    at least the threshold): the same functions the dedup stage runs."""
    if len(texts) < 2:
        return 0.0
    found = find_duplicates(texts, params)
    return sum(len(c.members) for c in found.clusters) / len(texts)


_SENT = re.compile(r"(?<=[.!?])\s+")


def first_sentence(text: str) -> str:
    s = text.strip().split("\n", 1)[0]
    return _SENT.split(s, 1)[0][:140]


def opener(text: str, words: int = 3) -> str:
    return " ".join(WORD.findall(text.lower())[:words])


SERIES_COLORS = {"kept": "#2e7d32", "dropped": "#c62828", "reference": "#1565c0", "web": "#ef6c00"}


def histogram_svg(
    series: dict[str, Counter[int]],
    title: str,
    width: float,
    log_x: bool = False,
    cut: float | None = None,
) -> Markup:
    """Side-by-side bar histogram of binned counts (bin ``i`` covers ``[i*width,
    (i+1)*width)``, of log10 values when ``log_x``) as inline SVG; from the first to the last
    non-empty bin; ``cut`` draws a dashed line at that value."""
    colors = SERIES_COLORS
    used = [i for c in series.values() for i, n in c.items() if n]
    w, h, pad = 560, 200, 34
    if not used:
        return Markup(
            f'<svg class="hist" width="{w}" height="40" role="img" '
            f'aria-label="{html.escape(title)}"><text x="4" y="24">{html.escape(title)}'
            f": no values</text></svg>"
        )
    first, last = min(used), max(used)
    bins = last - first + 1
    top = max(n for c in series.values() for n in c.values()) or 1
    bw = (w - 2 * pad) / bins
    parts = [
        f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 30}"'
        f' role="img" aria-label="{html.escape(title)}">',
        f'<text x="{pad}" y="14" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    k = len(series)
    for j, (name, c) in enumerate(series.items()):
        for i in range(first, last + 1):
            n = c.get(i, 0)
            if not n:
                continue
            bh = (h - 40) * n / top
            x = pad + (i - first) * bw + j * bw / k
            parts.append(
                f'<rect x="{x:.1f}" y="{h - bh:.1f}" width="{max(bw / k - 1, 0.5):.1f}" '
                f'height="{bh:.1f}" fill="{colors.get(name, "#1565c0")}" '
                f'data-series="{html.escape(name)}" data-bin="{i}" data-count="{n}">'
                f"<title>{name}: {n}</title></rect>"
            )
    parts.append(f'<line x1="{pad}" y1="{h}" x2="{w - pad}" y2="{h}" stroke="#333"/>')
    lo, hi = first * width, (last + 1) * width
    if cut is not None and lo <= cut <= hi:
        x = pad + (cut - lo) / (hi - lo) * (w - 2 * pad)
        parts.append(
            f'<line class="cut" x1="{x:.1f}" y1="24" x2="{x:.1f}" y2="{h}" stroke="#333" '
            f'stroke-dasharray="4 3"><title>cut at {cut:g}</title></line>'
        )
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        label = f"{10**v:,.0f}" if log_x else f"{v:.3g}"
        parts.append(
            f'<text x="{pad + frac * (w - 2 * pad):.0f}" y="{h + 16}" font-size="11" '
            f'text-anchor="middle">{label}</text>'
        )
    parts.append(
        f'<text x="{pad}" y="{h + 30}" font-size="11">max bar {top}; '
        + ", ".join(
            f'<tspan fill="{colors.get(n, "#1565c0")}">{n} {sum(c.values())}</tspan>'
            for n, c in series.items()
        )
        + "</text>"
    )
    parts.append("</svg>")
    return Markup("".join(parts))


# --------------------------------------------------------------------------- classifier, ablation
CLASS_NAMES = {"reference": ("reference", "web"), "teacher": ("positive", "negative")}


def classifier_view(
    cfg: PipelineConfig, run: Run, kept: Counts, dropped: Counts
) -> dict[str, Any] | None:
    """The quality classifier of the run (None when train_classifier made or took none): its
    held-out metrics, the held-out score histogram of each class, and the score of the reviewed
    web pages and synthetic documents, kept vs dropped, with the cut the run used."""
    m = run.read_manifest("train_classifier") or {}
    if m.get("status") != "finished" or not m.get("model_path"):
        return None
    plots = []
    hs = m.get("heldout_scores")
    if hs:
        pos, neg = CLASS_NAMES.get(m.get("source", ""), ("positive", "negative"))
        plots.append(
            histogram_svg(
                {
                    pos: Counter(dict(enumerate(hs["positive"]))),
                    neg: Counter(dict(enumerate(hs["negative"]))),
                },
                f"held-out split: P({pos}) of {pos} vs {neg} examples",
                (hs["bins"][-1] - hs["bins"][0]) / len(hs["positive"]),
                cut=hs["min_score"],
            )
        )
    # web pages are cut at web.min_quality, synthetic documents at classifier.min_score, as the
    # run's manifests say
    fm = (run.read_manifest("filter") or {}).get("classifier") or {}
    wm = (run.read_manifest("web") or {}).get("quality") or {}
    cuts = {
        "filter": ("synthetic", fm.get("min_score", cfg.classifier.min_score)),
        "web": ("web", wm.get("min_quality", cfg.web.min_quality)),
    }
    for stage, (origin, cut) in cuts.items():
        k, d = kept.by_origin.get(origin, Counter()), dropped.by_origin.get(origin, Counter())
        if sum(k.values()) + sum(d.values()):
            plots.append(
                histogram_svg(
                    {"kept": k, "dropped": d},
                    f"{stage}: classifier score of the reviewed documents, kept vs dropped",
                    1 / QUALITY_BINS,
                    cut=cut,
                )
            )
    return {
        "source": m.get("source", "teacher"),
        "model": m.get("model_file") or Path(m["model_path"]).name,
        "applied": m.get("applied", False),
        "note": m.get("note"),
        "heldout": m.get("heldout") or None,
        "examples": m.get("n_labels"),
        "plots": plots,
    }


def ablation_view(run: Run) -> dict[str, Any] | None:
    """The table and plot of ``datagen ablate`` on this run (None when it has not finished)."""
    from pipeline.ablate import FOLDER, fmt_summary

    m = run.read_manifest(FOLDER) or {}
    if m.get("status") != "finished":
        return None
    evals = list(m["eval_sets"])
    rows = [
        {
            "corpus": r["corpus"],
            "documents": m["corpora"][r["corpus"]]["documents"],
            "tokens": m["corpora"][r["corpus"]]["tokens_available"],
            "evals": [fmt_summary(r[ev]) for ev in evals],
            "train": fmt_summary(r["train_loss_end"]),
        }
        for r in m["table"]
    ]
    plot = run.path / FOLDER / m["plot"]
    svg = plot.read_text(encoding="utf-8") if plot.suffix == ".svg" and plot.exists() else ""
    return {
        "evals": evals,
        "rows": rows,
        "seeds": m["seeds"],
        "budget": m["token_budget"],
        "params": m["model"]["params"],
        "steps": m["model"]["steps"],
        "notes": m.get("notes", []),
        # matplotlib's own SVG (no scripts), inlined without its XML prolog and doctype
        "svg": Markup(svg[svg.find("<svg") :]) if "<svg" in svg else None,
    }


def _forms(word: str) -> set[str]:
    """Every form the constraint filter accepts for ``word`` (its lemmas and inflections)."""
    try:
        from filters.constraints import word_forms

        return set(word_forms(word))
    except ImportError:
        pass
    forms = {word}
    try:
        from lemminflect import getAllInflections, getAllLemmas

        for lemma_set in getAllLemmas(word).values():
            forms.update(lemma_set)
        for lemma in list(forms):
            for fs in getAllInflections(lemma).values():
                forms.update(fs)
    except ImportError:
        pass
    return {f for f in forms if f}


def highlight(text: str, words: list[str]) -> Markup:
    """HTML-escaped text with every form of each required word wrapped in <mark>. Words are
    found in the raw text and each piece is escaped afterwards, so a required word such as
    ``lt`` or ``amp`` never matches inside an entity (``&lt;``, ``&amp;``)."""
    forms = sorted({f for w in words for f in _forms(w.lower())}, key=len, reverse=True)
    if not forms:
        return Markup(html.escape(text))
    pat = re.compile(r"\b(" + "|".join(re.escape(f) for f in forms) + r")\b", re.IGNORECASE)
    pieces, last = [], 0
    for m in pat.finditer(text):
        pieces += [html.escape(text[last : m.start()]), f"<mark>{html.escape(m.group(0))}</mark>"]
        last = m.end()
    pieces.append(html.escape(text[last:]))
    return Markup("".join(pieces))


# --------------------------------------------------------------------------- page
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>datagen review: {{ run_name }} / {{ stages|join(", ") }}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}
h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;
vertical-align:top;text-align:left} th{background:#f4f4f4}
.num{text-align:right;font-variant-numeric:tabular-nums}
.doc{border:1px solid #ccc;border-radius:6px;margin:12px 0;padding:10px}
.doc.kept{border-left:6px solid #2e7d32} .doc.dropped{border-left:6px solid #c62828}
.meta{color:#555;font-size:13px} .badge{display:inline-block;padding:1px 6px;border-radius:4px;
color:#fff;font-size:12px} .badge.kept{background:#2e7d32} .badge.dropped{background:#c62828}
pre.text{white-space:pre-wrap;background:#fafafa;padding:8px;max-height:320px;overflow:auto;
font:13px/1.4 ui-monospace,monospace} mark{background:#ffe082}
.plots{display:flex;flex-wrap:wrap;gap:16px}
.scores{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0;font-size:12px}
.scores span{background:#eef;border-radius:4px;padding:1px 6px}
</style></head><body>
<h1>datagen review: run <code>{{ run_name }}</code>, stage {{ stages|join(" + ") }}</h1>
<p class="meta">{{ created }} &middot; {{ n_kept }} kept and {{ n_dropped }} dropped documents
in the stage output; counts, histograms and drop reasons over all of them, text statistics over
{{ n_stats_kept }} kept / {{ n_stats_dropped }} dropped (sampled with seed {{ seed }}).</p>

<h2 id="funnel">Funnel</h2>
<table id="funnel-stages"><tr><th>stage</th><th>status</th><th>result</th>
<th>counts per reason</th></tr>
{% for row in funnel %}<tr><td>{{ row.stage }}</td><td>{{ row.status }}</td>
<td>{% for k, v in row.summary.items() %}{{ k }}={{ v }}<br>{% endfor %}</td>
<td>{% for k, d in row.counts.items() %}<b>{{ k }}</b>: {{ reasons(d) }}<br>{% endfor %}</td></tr>
{% endfor %}</table>
{% for row in funnel if row.steps %}
<h3>{{ row.stage }} funnel: documents and words left after each step</h3>
<table id="funnel-{{ row.stage }}"><tr><th>step</th><th>documents</th><th>tokens</th>
<th>dropped here (per reason)</th></tr>
{% for s in row.steps %}<tr><td>{{ s.step }}</td>
<td class="num">{{ "{:,}".format(s.documents) }}</td>
<td class="num">{{ "{:,}".format(s.tokens) }}</td><td>{{ reasons(s.dropped) }}</td></tr>
{% endfor %}</table>{% endfor %}
{% if drop_reasons %}<table><tr><th>drop reason (stage output)</th><th>documents</th></tr>
{% for r, c in drop_reasons %}<tr><td>{{ r }}</td><td class="num">{{ c }}</td></tr>{% endfor %}
</table>{% endif %}

<h2 id="plots">Length and quality</h2>
<div class="plots">{{ hist_len }}{{ hist_q }}</div>

{% if clf %}<h2 id="classifier">Quality classifier</h2>
<p class="meta">source <code>{{ clf.source }}</code> &middot; model {{ clf.model }}
&middot; {{ "keeps and drops" if clf.applied else "scores only: " ~ clf.note }}
{% if clf.examples %}&middot; {{ clf.examples }} examples{% endif %}</p>
{% if clf.heldout %}{% set c = clf.heldout.confusion %}
<table id="classifier-heldout"><tr><th>held-out examples</th><th>precision</th><th>recall</th>
<th>F1</th><th>accuracy (majority baseline)</th><th>confusion (tp fp fn tn)</th></tr>
<tr><td class="num">{{ clf.heldout.n }}</td><td class="num">{{ clf.heldout.precision }}</td>
<td class="num">{{ clf.heldout.recall }}</td><td class="num">{{ clf.heldout.f1 }}</td>
<td class="num">{{ clf.heldout.accuracy }} ({{ clf.heldout.majority_baseline_accuracy }})</td>
<td class="num">{{ c.tp }} {{ c.fp }} {{ c.fn }} {{ c.tn }}</td></tr></table>{% endif %}
<div class="plots">{% for p in clf.plots %}{{ p }}{% endfor %}</div>
{% endif %}
{% if ablation %}<h2 id="ablation">Ablation: proxy models per corpus</h2>
<p class="meta">eval loss (nats per token), mean &plusmn; std over seeds
{{ ablation.seeds|join(", ") }}; {{ "{:,}".format(ablation.budget) }} tokens per corpus,
{{ ablation.steps }} steps, a {{ "%.2f"|format(ablation.params / 1e6) }}M-parameter GPT
(<code>datagen ablate</code>)</p>
<table id="ablation-table"><tr><th>corpus</th><th>documents (tokens) available</th>
{% for ev in ablation.evals %}<th>{{ ev }} eval loss</th>{% endfor %}<th>train loss (end)</th></tr>
{% for r in ablation.rows %}<tr><td>{{ r.corpus }}</td>
<td class="num">{{ "{:,}".format(r.documents) }} ({{ "{:,}".format(r.tokens) }})</td>
{% for v in r.evals %}<td class="num">{{ v }}</td>{% endfor %}
<td class="num">{{ r.train }}</td></tr>{% endfor %}</table>
{% for n in ablation.notes %}<p class="meta">{{ n }}</p>{% endfor %}
{% if ablation.svg %}<div class="plots" id="ablation-plot">{{ ablation.svg }}</div>{% endif %}
{% endif %}

<h2 id="diversity">Diversity (kept)</h2>
<p class="meta">over the sample of {{ n_stats_kept }} kept documents</p>
<table><tr><th>distinct-1</th><th>distinct-2</th><th>distinct-3</th>
<th>near-duplicate rate (the dedup rule: {{ near_dup_rule }})</th></tr>
<tr><td class="num">{{ "%.3f"|format(d1) }}</td><td class="num">{{ "%.3f"|format(d2) }}</td>
<td class="num">{{ "%.3f"|format(d3) }}</td>
<td class="num">{{ "%.1f"|format(100 * near_dup) }}%</td></tr>
</table>
<div class="plots"><table><tr><th>most frequent first sentences</th><th>docs</th></tr>
{% for s, c in first_sentences %}<tr><td>{{ s }}</td><td class="num">{{ c }}</td></tr>{% endfor %}
</table>
<table><tr><th>most frequent openers (first 3 words)</th><th>docs</th></tr>
{% for s, c in openers %}<tr><td>{{ s }}</td><td class="num">{{ c }}</td></tr>{% endfor %}
</table></div>
{% if by_axis %}<table><tr><th>axis</th><th>value</th><th>docs</th><th>distinct-1</th>
<th>distinct-2</th><th>distinct-3</th><th>most frequent openers</th></tr>
{% for r in by_axis %}<tr><td>{{ r.axis }}</td><td>{{ r.value }}</td>
<td class="num">{{ r.docs }}</td>{% for x in r.d %}<td class="num">{{ "%.3f"|format(x) }}</td>
{% endfor %}<td>{% for s, c in r.openers %}{{ s }} ({{ c }}){% if not loop.last %}; {% endif %}
{% endfor %}</td></tr>{% endfor %}
</table>{% endif %}

{% for title, docs in sections %}
<h2 id="{{ title.split()[0]|lower }}">{{ title }}</h2>
{% if not docs %}<p>none</p>{% endif %}
{% for d in docs %}<div class="doc {{ 'kept' if d.kept else 'dropped' }}">
<span class="badge {{ 'kept' if d.kept else 'dropped' }}">
{{ 'kept' if d.kept else 'dropped: ' ~ d.drop_reason }}</span>
<b>{{ d.topic or d.url or d.id }}</b>
<div class="meta">id {{ d.id }} &middot; {{ d.stage }} &middot; {{ d.origin }}
{% if d.format %}&middot; format {{ d.format }}{% endif %}
{% if d.audience %}&middot; audience {{ d.audience }}{% endif %}
{% if d.subject %}&middot; subject {{ d.subject }}{% endif %}
{% if d.model %}&middot; teacher {{ d.model }}{% endif %}
{% if d.url and d.url.startswith(("http://", "https://")) -%}
&middot; <a href="{{ d.url }}">{{ d.url }}</a>
{%- elif d.url %}&middot; {{ d.url }}{% endif %}
{% if d.required_words %}<br>required words:
{% for w in d.required_words %}<mark>{{ w }}</mark> {% endfor %}{% endif %}
</div>
{% if d.scores %}<div class="scores">{% for k, v in d.scores.items() %}
<span>{{ k }} <b>{{ "%.4g"|format(v) }}</b></span>{% endfor %}</div>{% endif %}
<pre class="text">{{ d.html }}</pre></div>
{% endfor %}{% endfor %}
</body></html>
"""


def _resolve_stages(run: Run, stage: str | None) -> list[str]:
    if stage is not None:
        if stage not in DOC_STAGES:
            raise DatagenError(
                f"review: stage '{stage}' has no documents to review "
                f"(choose one of: {', '.join(DOC_STAGES)}, revise, reverse, preferences)"
            )
        if not _has_docs(run, stage):
            raise DatagenError(
                f"{run.path / stage}: no documents to review; run `datagen run stage={stage}` first"
            )
        return [stage]
    chosen = [s for s in DEFAULT_STAGES if _has_docs(run, s)]
    if not chosen:
        chosen = [s for s in reversed(DOC_STAGES) if _has_docs(run, s)][:1]
    if not chosen:
        raise DatagenError(
            f"{run.path}: no stage output with documents to review; run `datagen run` first"
        )
    return chosen


JOBS_PER_WORKER = 4  # jobs per worker and side: a slow last job leaves the others less idle


def _groups(files: list[tuple[str, str]], parts: int) -> list[list[tuple[str, str]]]:
    """``files`` ((stage, path) pairs) cut into at most ``parts`` runs of consecutive files of
    about equal bytes."""
    sizes = [Path(f).stat().st_size for _, f in files]
    total = sum(sizes) or 1
    groups: list[list[tuple[str, str]]] = []
    acc = 0
    for file, size in zip(files, sizes, strict=True):
        if not groups or acc >= total * len(groups) / parts:
            groups.append([])
        groups[-1].append(file)
        acc += size
    return groups


def _read_part(job: ShardJob) -> tuple[Counts, Sample]:
    """One job of the review's pass: the counters and the sample of some files of one side."""
    p = job.payload
    counts, sample = Counts(), Sample(p["k"], p["seed"])
    for stage, path in p["files"]:
        for i, d in enumerate(_file_docs(Path(path), stage, p["kept"])):
            counts.add(d)
            sample.add(d, (path, i))
    return counts, sample


def _sides(
    cfg: PipelineConfig, run: Run, sides: dict[bool, list[str]], console: Console
) -> dict[bool, tuple[Counts, Sample]]:
    """The review's pass: for each side (kept: True, dropped: False) and its stages, counters
    over every document and a sample of ``review.max_stats_docs``. Jobs of consecutive files run
    on the configured executor, without completion markers (a report is redone, never resumed),
    and their parts merge into the result of one pass over all the files, in any order."""
    k, seed = cfg.review.max_stats_docs, cfg.seed
    out = {kept: (Counts(), Sample(k, seed)) for kept in sides}
    with contextlib.closing(make_executor(cfg.executor)) as ex:
        jobs = []
        for kept, stages in sides.items():
            files = [(s, str(f)) for s in stages for f in _side_files(run, s, kept)]
            for group in _groups(files, JOBS_PER_WORKER * ex.workers):
                part = {"kept": kept, "files": group, "k": k, "seed": seed}
                jobs.append(ShardJob(index=len(jobs), stage_dir=str(run.path), payload=part))
        side = {j.index: j.payload["kept"] for j in jobs}
        parts = map_jobs(ex, _read_part, jobs, console, "review", count=lambda r: r[0].n)
        for idx, (counts, sample) in parts:
            out[side[idx]][0].merge(counts)
            out[side[idx]][1].merge(sample)
    return out


def write_review(cfg: PipelineConfig, stage: str | None, console: Console | None = None) -> Path:
    """Write the review page for ``stage`` (default: filter, web and dedup) and return its path.

    One streaming pass over both sides, in parallel on the executor: counts and histograms over
    every document, text statistics (distinct-n, near duplicates, first sentences) over a
    seeded sample of at most ``review.max_stats_docs`` per side; the documents shown are the
    first ``review.n`` of that sample. Progress goes to ``console`` (default: stderr)."""
    from pipeline.review_recipes import STAGES as RECIPE_STAGES
    from pipeline.review_recipes import write_recipe_review

    if stage in RECIPE_STAGES:  # revise, reverse, preferences: pairs side by side
        return write_recipe_review(cfg, stage)
    run = Run(cfg.run.root, cfg.run.name)
    stages = _resolve_stages(run, stage)
    rcfg = cfg.review
    # dedup reads the kept documents of filter and web: when it ran, its kept set is the
    # final one (each document counted once), and every stage's dropped ones are shown
    kept_from = ["dedup"] if "dedup" in stages else stages
    sides = _sides(cfg, run, {True: kept_from, False: stages}, console or Console(stderr=True))
    (kept_c, kept_s), (drop_c, drop_s) = sides[True], sides[False]
    kept, dropped = kept_s.items(), drop_s.items()
    show_kept, show_dropped = kept[: rcfg.n], dropped[: rcfg.n]
    for d in show_kept + show_dropped:
        d["html"] = highlight(d["text"], d["required_words"])

    kept_texts = [d["text"] for d in kept]
    distinct = distinct_ns(kept_texts)
    page = (
        Environment(autoescape=True)
        .from_string(PAGE)
        .render(
            run_name=run.name,
            stages=stages,
            created=utc_now(),
            seed=cfg.seed,
            n_kept=kept_c.n,
            n_dropped=drop_c.n,
            n_stats_kept=len(kept),
            n_stats_dropped=len(dropped),
            funnel=funnel(run),
            reasons=reasons_text,
            drop_reasons=sorted(drop_c.reasons.items(), key=lambda rc: (-rc[1], rc[0])),
            hist_len=histogram_svg(
                {"kept": kept_c.length, "dropped": drop_c.length},
                "length (words, log scale)",
                LENGTH_BIN,
                log_x=True,
            ),
            hist_q=histogram_svg(
                {"kept": kept_c.quality, "dropped": drop_c.quality},
                "quality score",
                1 / QUALITY_BINS,
            ),
            clf=classifier_view(cfg, run, kept_c, drop_c),
            ablation=ablation_view(run),
            d1=distinct[1],
            d2=distinct[2],
            d3=distinct[3],
            near_dup=near_dup_rate(kept_texts, params_of(cfg)),
            near_dup_rule=f"word {cfg.dedup.ngram}-gram Jaccard ≥ {cfg.dedup.threshold}",
            first_sentences=Counter(first_sentence(t) for t in kept_texts).most_common(10),
            openers=Counter(opener(t) for t in kept_texts).most_common(10),
            by_axis=diversity_by_axis(kept),
            sections=[
                (f"Kept documents ({len(show_kept)} sampled)", show_kept),
                (f"Dropped documents ({len(show_dropped)} sampled)", show_dropped),
            ],
        )
    )
    out = Path(rcfg.out) if rcfg.out else run.path / "review" / f"{'+'.join(stages)}.html"
    atomic_write_text(out, page)
    return out
