"""`datagen review`: one self-contained HTML page to read sampled outputs of a stage.

The page shows sampled kept AND dropped documents (topic, audience, format, the required words
highlighted, teacher model, scores, keep/drop reason), the funnel of every stage, histograms of
length and quality, the most frequent first sentences and openers, distinct-1/2/3 ratios and the
near-duplicate rate. Plots are inline SVG and styles inline CSS: no network needed to open it.

It streams: one pass over each side keeps mergeable counters (documents, length and quality
histograms, drops per reason) and a bottom-k sample of documents, never the whole output. The
funnel table comes from ``pipeline.card``, which the emit stage's dataset card uses too.
"""

from __future__ import annotations

import hashlib
import heapq
import html
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from jinja2 import Environment
from markupsafe import Markup

from pipeline.card import funnel, reasons_text
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.records import Document, quality_of, utc_now
from pipeline.runs import Run, atomic_write_text, read_jsonl, read_shards, shard_paths

# the stages whose output folders hold documents (kept in the folder, dropped in dropped/)
DOC_STAGES = ("generate", "filter", "web", "dedup", "emit")
DEFAULT_STAGES = ("filter", "web", "dedup")  # what `datagen review` shows without stage=
NEAR_DUP_THRESHOLD = 0.8  # Jaccard on word 5-grams, Lee et al. 2022 (arXiv:2107.06499)
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


def _emit_docs(run: Run) -> Iterator[dict[str, Any]]:
    for p in sorted((run.path / "emit" / "text" / "train").glob("part-*.parquet")):
        rows = (r for b in pq.ParquetFile(p).iter_batches(batch_size=1000) for r in b.to_pylist())
        for row in rows:
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


def _stage_docs(run: Run, stage: str, kept: bool) -> Iterator[dict[str, Any]]:
    if stage == "emit":
        if kept:
            yield from _emit_docs(run)
        return
    if stage == "generate":  # generate appends Documents to numbered JSONL files; nothing dropped
        if kept:  # generate's own drafts (iter_outputs would give revise's rewrites)
            from pipeline.stages.generate import output_files

            for path in output_files(run.path / "generate"):
                for d in read_jsonl(path, Document):
                    yield _doc_view(d, stage, kept)
        return
    folder = run.path / stage if kept else run.path / stage / "dropped"
    for d in read_shards(folder, Document):
        yield _doc_view(d, stage, kept)


def _has_docs(run: Run, stage: str) -> bool:
    if stage == "emit":
        return any((run.path / "emit" / "text" / "train").glob("part-*.parquet"))
    if stage == "generate":
        from pipeline.stages.generate import output_files

        return bool(output_files(run.path / "generate"))
    return bool(shard_paths(run.path / stage)) or bool(shard_paths(run.path / stage / "dropped"))


class Sample:
    """A uniform sample of ``k`` documents in one pass: the ``k`` whose seeded hash of
    (stage, side, id) is smallest (bottom-k sampling). It does not depend on the order the
    documents come in, and two samples of disjoint parts merge into the sample of the whole."""

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.seed = seed
        # (-key, id, arrival, doc): the largest key on top; arrival breaks ties of equal ids
        self._heap: list[tuple[int, str, int, dict[str, Any]]] = []
        self._seen = 0

    def key(self, d: dict[str, Any]) -> int:
        raw = f"{self.seed}\x1f{d['stage']}\x1f{d['kept']}\x1f{d['id']}".encode()
        return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")

    def add(self, d: dict[str, Any], key: int | None = None) -> None:
        self._seen += 1
        item = (-(self.key(d) if key is None else key), d["id"], self._seen, d)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def merge(self, other: Sample) -> Sample:
        for neg, _, _, d in other._heap:
            self.add(d, -neg)
        return self

    def items(self) -> list[dict[str, Any]]:
        """The sampled documents, smallest hash first (the first ``n`` are a sample too)."""
        return [t[3] for t in sorted(self._heap, key=lambda t: (-t[0], t[1], t[2]))]


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

    def add(self, d: dict[str, Any]) -> None:
        self.n += 1
        words = len(WORD.findall(d["text"]))
        self.length[int(math.log10(max(words, 1)) / LENGTH_BIN)] += 1
        q = quality_of(d["scores"])
        if q is not None and math.isfinite(q):
            self.quality[min(QUALITY_BINS - 1, max(0, int(q * QUALITY_BINS)))] += 1
        if not d["kept"]:
            self.reasons[d["drop_reason"] or "?"] += 1

    def merge(self, other: Counts) -> Counts:
        self.n += other.n
        self.length.update(other.length)
        self.quality.update(other.quality)
        self.reasons.update(other.reasons)
        return self


# --------------------------------------------------------------------------- statistics
def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the texts (Li et al. 2016, distinct-n)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for t in texts:
        w = WORD.findall(t.lower())
        grams = list(zip(*(w[i:] for i in range(n)), strict=False))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


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
                    "d": [distinct_n(texts, n) for n in (1, 2, 3)],
                    "openers": Counter(opener(t) for t in texts).most_common(openers),
                }
            )
    return rows


def near_dup_rate(texts: list[str], seed: int) -> float:
    """Share of documents with at least one other document above the MinHash Jaccard
    threshold (word 5-gram shingles, 128 permutations, LSH from datasketch)."""
    from datasketch import MinHash, MinHashLSH

    if len(texts) < 2:
        return 0.0
    lsh = MinHashLSH(threshold=NEAR_DUP_THRESHOLD, num_perm=128)
    hashes = []
    for i, t in enumerate(texts):
        w = WORD.findall(t.lower())
        shingles = {" ".join(w[j : j + 5]) for j in range(max(1, len(w) - 4))}
        m = MinHash(num_perm=128, seed=seed)
        m.update_batch([s.encode() for s in shingles])
        lsh.insert(str(i), m)
        hashes.append(m)
    dup = sum(1 for i, m in enumerate(hashes) if any(k != str(i) for k in lsh.query(m)))
    return dup / len(texts)


_SENT = re.compile(r"(?<=[.!?])\s+")


def first_sentence(text: str) -> str:
    s = text.strip().split("\n", 1)[0]
    return _SENT.split(s, 1)[0][:140]


def opener(text: str, words: int = 3) -> str:
    return " ".join(WORD.findall(text.lower())[:words])


def histogram_svg(
    series: dict[str, Counter[int]], title: str, width: float, log_x: bool = False
) -> Markup:
    """Side-by-side bar histogram of binned counts (bin ``i`` covers ``[i*width,
    (i+1)*width)``, of log10 values when ``log_x``) as inline SVG; from the first to the last
    non-empty bin."""
    colors = {"kept": "#2e7d32", "dropped": "#c62828"}
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
                f'height="{bh:.1f}" fill="{colors.get(name, "#1565c0")}">'
                f"<title>{name}: {n}</title></rect>"
            )
    parts.append(f'<line x1="{pad}" y1="{h}" x2="{w - pad}" y2="{h}" stroke="#333"/>')
    lo, hi = first * width, (last + 1) * width
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

<h2 id="diversity">Diversity (kept)</h2>
<p class="meta">over the sample of {{ n_stats_kept }} kept documents</p>
<table><tr><th>distinct-1</th><th>distinct-2</th><th>distinct-3</th>
<th>near-duplicate rate (MinHash Jaccard &ge; {{ near_dup_threshold }})</th></tr>
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


def _side(run: Run, stages: list[str], kept: bool, k: int, seed: int) -> tuple[Counts, Sample]:
    """One pass over one side of the stages' documents: counters over all, a sample of k
    (per stage, then merged: the same as one pass over all of them)."""
    counts, sample = Counts(), Sample(k, seed)
    for s in stages:
        c, smp = Counts(), Sample(k, seed)
        for d in _stage_docs(run, s, kept):
            c.add(d)
            smp.add(d)
        counts.merge(c)
        sample.merge(smp)
    return counts, sample


def write_review(cfg: PipelineConfig, stage: str | None) -> Path:
    """Write the review page for ``stage`` (default: filter, web and dedup) and return its path.

    One streaming pass per side: counts and histograms over every document, text statistics
    (distinct-n, near duplicates, first sentences) over a seeded sample of at most
    ``review.max_stats_docs``; the documents shown are the first ``review.n`` of that sample."""
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
    kept_c, kept_s = _side(run, kept_from, True, rcfg.max_stats_docs, cfg.seed)
    drop_c, drop_s = _side(run, stages, False, rcfg.max_stats_docs, cfg.seed)
    kept, dropped = kept_s.items(), drop_s.items()
    show_kept, show_dropped = kept[: rcfg.n], dropped[: rcfg.n]
    for d in show_kept + show_dropped:
        d["html"] = highlight(d["text"], d["required_words"])

    kept_texts = [d["text"] for d in kept]
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
            drop_reasons=drop_c.reasons.most_common(),
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
            d1=distinct_n(kept_texts, 1),
            d2=distinct_n(kept_texts, 2),
            d3=distinct_n(kept_texts, 3),
            near_dup=near_dup_rate(kept_texts, cfg.seed),
            near_dup_threshold=NEAR_DUP_THRESHOLD,
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
