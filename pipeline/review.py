"""`datagen review`: one self-contained HTML page to read sampled outputs of a stage.

The page shows sampled kept AND dropped documents (topic, audience, format, the required words
highlighted, teacher model, scores, keep/drop reason), the funnel of every stage, histograms of
length and quality, the most frequent first sentences and openers, distinct-1/2/3 ratios and the
near-duplicate rate. Plots are inline SVG and styles inline CSS: no network needed to open it.

It also builds the funnel table the emit stage puts in its dataset card.
"""

from __future__ import annotations

import html
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from jinja2 import Environment
from markupsafe import Markup

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.records import Document, utc_now
from pipeline.runs import Run, atomic_write_text, read_shards, shard_paths

# the stages whose output folders hold documents (kept in the folder, dropped in dropped/)
DOC_STAGES = ("generate", "filter", "web", "dedup", "emit")
DEFAULT_STAGES = ("filter", "web", "dedup")  # what `datagen review` shows without stage=
NEAR_DUP_THRESHOLD = 0.8  # Jaccard on word 5-grams, Lee et al. 2022 (arXiv:2107.06499)
WORD = re.compile(r"\w+", re.UNICODE)


# --------------------------------------------------------------------------- funnel
def _stage_order(run: Run) -> list[str]:
    from pipeline.stages import STAGES

    names = [s.name for s in STAGES]
    present = (
        [p.name for p in sorted(run.path.iterdir()) if (p / "manifest.json").exists()]
        if run.path.exists()
        else []
    )
    return [n for n in names if n in present] + [n for n in present if n not in names]


# the per-reason counts the stages write: filter and web drop_reasons (every dropped document
# once), generate and annotate failure_reasons (requests lost), generate finish_reasons
COUNT_KEYS = ("drop_reasons", "failure_reasons", "finish_reasons")
STEP_KEYS = ("step", "documents", "tokens", "dropped")  # pipeline.web.funnel.Funnel.as_list()


def _counts(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The stage's per-reason counts (an empty dict: the stage reported none of that kind)."""
    return {k: dict(manifest[k]) for k in COUNT_KEYS if isinstance(manifest.get(k), dict)}


def _steps(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """A stage's step funnel (the web stage's ``funnel``): documents and tokens left after each
    step and the documents it dropped per reason; [] when the stage has none."""
    steps = manifest.get("funnel")
    if not isinstance(steps, list):
        return []
    return [s for s in steps if isinstance(s, dict) and all(k in s for k in STEP_KEYS)]


def funnel(run: Run) -> list[dict[str, Any]]:
    """One row per stage that wrote a manifest: status, summary numbers, per-reason counts and
    its step funnel (web)."""
    rows = []
    for name in _stage_order(run):
        m = run.read_manifest(name) or {}
        summary = m.get("summary") if isinstance(m.get("summary"), dict) else {}
        rows.append(
            {
                "stage": name,
                "status": m.get("status", "?"),
                "summary": summary,
                "counts": _counts(m),
                "steps": _steps(m),
                "elapsed_s": m.get("elapsed_s"),
            }
        )
    return rows


def _reasons(d: dict[str, int]) -> str:
    return ", ".join(f"{a}={b}" for a, b in d.items()) or "none"


def dataset_card(cfg: PipelineConfig, run: Run, emit: dict[str, Any]) -> str:
    """The README.md written beside the emitted corpus."""
    tok = emit["tokenizer"]
    lines = [
        f"# datagen corpus: {run.name}",
        "",
        f"Built {utc_now()} by `datagen run` (seed {cfg.seed}). Sources: "
        + ", ".join(
            f"{k} ({v['documents']} documents, {v['tokens']:,} tokens)"
            for k, v in emit["sources"].items()
        )
        + ".",
        "",
        "## Splits",
        "",
        "| split | source | documents | unique documents | tokens |",
        "|---|---|---:|---:|---:|",
    ]
    for split, s in emit["splits"].items():
        for src, v in s["by_source"].items():
            lines.append(
                f"| {split} | {src} | {v['documents']} | {v['unique_documents']} "
                f"| {v['tokens']:,} |"
            )
        lines.append(f"| **{split}** | all | {s['documents']} | | {s['tokens']:,} |")
    lines += [
        "",
        "Mix multipliers (tokens emitted / tokens available, per source): "
        + "; ".join(
            f"{split}: " + ", ".join(f"{k} x{v:g}" for k, v in m.items())
            for split, m in emit["multipliers"].items()
        ),
        "",
    ]
    notes = emit["inputs"].get("notes") or {}
    for k, v in notes.items():
        lines.append(f"- note ({k}): {v}")
    lines += [
        "",
        "## Tokenizer",
        "",
        f"`{tok['name']}` from `{tok['source']}` (sha256 {tok['sha256']}), vocab "
        f"{tok['vocab_size']}, end-of-text `{tok['eot_token']}` = {tok['eot_id']}, tokens stored "
        f"as {tok['dtype']}. The same tokenizer is saved as `tokenizer.json` here.",
        "",
        "## Files",
        "",
        "- `text/<split>/part-NNNNN.parquet`: id, text, source, origin, format, quality, topic, "
        "subject, audience, required_words, model, template, created_at, url, source_file, "
        "warc_record_id, fetch_date, language, n_tokens, repeat.",
        "- `tokens/<split>/part-NNNNN.ds`: flat little-endian token ids, every document followed "
        "by the end-of-text id; `.ds.index`: little-endian uint64 end offset of each document "
        "(in tokens); `.ds.metadata`: tokenizer id and token count (datatrove's layout). Text "
        "and token shards with the same number hold the same documents in the same order.",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("parquet", data_files={"train": "text/train/*.parquet",',
        '                                         "validation": "text/val/*.parquet"})',
        "import numpy as np",
        f'tokens = np.memmap("tokens/train/part-00000.ds", dtype="{tok["dtype"]}", mode="r")',
        'ends = np.fromfile("tokens/train/part-00000.ds.index", dtype="<u8")',
        "```",
        "",
        "## Funnel",
        "",
        "| stage | status | result | drops |",
        "|---|---|---|---|",
    ]
    rows = [r for r in funnel(run) if r["stage"] != "emit"]
    rows.append(
        {
            "stage": "emit",
            "status": "finished",
            "summary": emit["summary"],
            "counts": {},
            "steps": [],
        }
    )
    for row in rows:
        res = ", ".join(f"{k}={v}" for k, v in row["summary"].items())
        drops = "; ".join(f"{k}: {_reasons(d)}" for k, d in row["counts"].items())
        lines.append(f"| {row['stage']} | {row['status']} | {res} | {drops} |")
    for row in rows:
        if row["steps"]:
            lines += [
                "",
                f"### {row['stage']} funnel (documents and words left after each step)",
                "",
                "| step | documents | tokens | dropped here |",
                "|---|---:|---:|---|",
            ]
            lines += [
                f"| {s['step']} | {s['documents']:,} | {s['tokens']:,} | {_reasons(s['dropped'])} |"
                for s in row["steps"]
            ]
    return "\n".join(lines) + "\n"


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
        for row in pq.read_table(p).to_pylist():
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
        if kept:
            from pipeline.stages.generate import iter_outputs

            for d in iter_outputs(run):
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


def _reservoir(items: Iterable[dict], k: int, rng: random.Random) -> tuple[list[dict], int]:
    """A uniform sample of ``k`` items in one pass (Algorithm R), and the number seen."""
    sample: list[dict] = []
    n = 0
    for n, item in enumerate(items, 1):
        if len(sample) < k:
            sample.append(item)
        else:
            j = rng.randrange(n)
            if j < k:
                sample[j] = item
    return sample, n


# --------------------------------------------------------------------------- statistics
# the one name filter and web give the quality classifier's probability (then any *.quality)
QUALITY_KEYS = ("classifier.prob",)


def quality_of(scores: dict[str, float], key: str = "") -> float | None:
    """The document's quality score: ``scores[key]`` if a key is given, else the first of
    QUALITY_KEYS present, else the first score named ``*.quality``; None if there is none."""
    if key:
        return scores.get(key)
    for k in QUALITY_KEYS:
        if k in scores:
            return scores[k]
    for k in sorted(scores):
        if k.endswith(".quality"):
            return scores[k]
    return None


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
    series: dict[str, list[float]], title: str, bins: int = 20, log_x: bool = False
) -> Markup:
    """Side-by-side bar histogram of each named series as inline SVG."""
    colors = {"kept": "#2e7d32", "dropped": "#c62828"}
    vals = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    w, h, pad = 560, 200, 34
    if not vals:
        return Markup(
            f'<svg class="hist" width="{w}" height="40" role="img" '
            f'aria-label="{html.escape(title)}"><text x="4" y="24">{html.escape(title)}'
            f": no values</text></svg>"
        )

    def tf(v: float) -> float:
        return math.log10(max(v, 1.0)) if log_x else v

    lo, hi = min(map(tf, vals)), max(map(tf, vals))
    hi = hi if hi > lo else lo + 1.0
    counts = {}
    for name, s in series.items():
        c = [0] * bins
        for v in s:
            if v is None or not math.isfinite(v):
                continue
            c[min(bins - 1, int((tf(v) - lo) / (hi - lo) * bins))] += 1
        counts[name] = c
    top = max(max(c) for c in counts.values()) or 1
    bw = (w - 2 * pad) / bins
    parts = [
        f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 30}"'
        f' role="img" aria-label="{html.escape(title)}">',
        f'<text x="{pad}" y="14" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    k = len(counts)
    for j, (name, c) in enumerate(counts.items()):
        for i, n in enumerate(c):
            if not n:
                continue
            bh = (h - 40) * n / top
            x = pad + i * bw + j * bw / k
            parts.append(
                f'<rect x="{x:.1f}" y="{h - bh:.1f}" width="{bw / k - 1:.1f}" '
                f'height="{bh:.1f}" fill="{colors.get(name, "#1565c0")}">'
                f"<title>{name}: {n}</title></rect>"
            )
    parts.append(f'<line x1="{pad}" y1="{h}" x2="{w - pad}" y2="{h}" stroke="#333"/>')
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
            f'<tspan fill="{colors.get(n, "#1565c0")}">{n} {sum(c)}</tspan>'
            for n, c in counts.items()
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
in the stage output; statistics over {{ n_stats_kept }} kept / {{ n_stats_dropped }} dropped
(sampled with seed {{ seed }}).</p>

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
{% if drop_reasons %}<table><tr><th>drop reason (in this sample)</th><th>documents</th></tr>
{% for r, c in drop_reasons %}<tr><td>{{ r }}</td><td class="num">{{ c }}</td></tr>{% endfor %}
</table>{% endif %}

<h2 id="plots">Length and quality</h2>
<div class="plots">{{ hist_len }}{{ hist_q }}</div>

<h2 id="diversity">Diversity (kept)</h2>
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
                f"(choose one of: {', '.join(DOC_STAGES)})"
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


def write_review(cfg: PipelineConfig, stage: str | None) -> Path:
    """Write the review page for ``stage`` (default: filter, web and dedup) and return its path."""
    run = Run(cfg.run.root, cfg.run.name)
    stages = _resolve_stages(run, stage)
    rcfg = cfg.review
    rng = random.Random(cfg.seed)
    kept: list[dict] = []
    dropped: list[dict] = []
    n_kept = n_dropped = 0
    # dedup reads the kept documents of filter and web: when it ran, its kept set is the
    # final one (each document counted once), and every stage's dropped ones are shown
    kept_from = ["dedup"] if "dedup" in stages else stages
    for s in stages:
        d, nd = _reservoir(_stage_docs(run, s, False), rcfg.max_stats_docs, rng)
        dropped += d
        n_dropped += nd
        if s in kept_from:
            k, nk = _reservoir(_stage_docs(run, s, True), rcfg.max_stats_docs, rng)
            kept += k
            n_kept += nk
    show_kept = rng.sample(kept, min(rcfg.n, len(kept)))
    show_dropped = rng.sample(dropped, min(rcfg.n, len(dropped)))
    for d in show_kept + show_dropped:
        d["html"] = highlight(d["text"], d["required_words"])

    kept_texts = [d["text"] for d in kept]
    lengths = {
        "kept": [len(WORD.findall(d["text"])) for d in kept],
        "dropped": [len(WORD.findall(d["text"])) for d in dropped],
    }
    quality = {
        "kept": [quality_of(d["scores"]) for d in kept],
        "dropped": [quality_of(d["scores"]) for d in dropped],
    }
    page = (
        Environment(autoescape=True)
        .from_string(PAGE)
        .render(
            run_name=run.name,
            stages=stages,
            created=utc_now(),
            seed=cfg.seed,
            n_kept=n_kept,
            n_dropped=n_dropped,
            n_stats_kept=len(kept),
            n_stats_dropped=len(dropped),
            funnel=funnel(run),
            reasons=_reasons,
            drop_reasons=Counter(d["drop_reason"] or "?" for d in dropped).most_common(),
            hist_len=histogram_svg(lengths, "length (words, log scale)", log_x=True),
            hist_q=histogram_svg(quality, "quality score"),
            d1=distinct_n(kept_texts, 1),
            d2=distinct_n(kept_texts, 2),
            d3=distinct_n(kept_texts, 3),
            near_dup=near_dup_rate(kept_texts, cfg.seed),
            near_dup_threshold=NEAR_DUP_THRESHOLD,
            first_sentences=Counter(first_sentence(t) for t in kept_texts).most_common(10),
            openers=Counter(opener(t) for t in kept_texts).most_common(10),
            sections=[
                (f"Kept documents ({len(show_kept)} sampled)", show_kept),
                (f"Dropped documents ({len(show_dropped)} sampled)", show_dropped),
            ],
        )
    )
    out = Path(rcfg.out) if rcfg.out else run.path / "review" / f"{'+'.join(stages)}.html"
    atomic_write_text(out, page)
    return out
