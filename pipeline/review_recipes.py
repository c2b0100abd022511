"""`datagen review stage=revise|reverse|preferences`: the phi-4 / dDPO stages' outputs side by
side (draft vs revision with the critiques, instruction vs text, chosen vs rejected), as one
self-contained HTML page like the document review."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from jinja2 import Environment

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.records import Document, utc_now
from pipeline.runs import Run, atomic_write_text, read_jsonl

STAGES = ("revise", "reverse", "preferences")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>datagen review: {{ run_name }} / {{ stage }}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1300px;color:#222}
h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:26px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.side{border:1px solid #ccc;border-radius:6px;padding:8px}
.side.win{border-left:6px solid #2e7d32} .side.lose{border-left:6px solid #c62828}
.meta{color:#555;font-size:13px}
pre{white-space:pre-wrap;background:#fafafa;padding:8px;max-height:360px;overflow:auto;
font:13px/1.4 ui-monospace,monospace}
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
</style></head><body>
<h1>datagen review: run <code>{{ run_name }}</code>, stage {{ stage }}</h1>
<p class="meta">{{ created }} &middot; {{ shown }} of {{ total }} records (seed {{ seed }})</p>
<table>{% for k, v in summary.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</table>
{% for r in rows %}<h2>{{ r.title }}</h2><p class="meta">{{ r.meta }}</p>
{% if r.note %}<p>{{ r.note }}</p>{% endif %}
<div class="pair">{% for s in r.sides %}<div class="side {{ s.cls }}"><b>{{ s.label }}</b>
{% if s.note %}<div class="meta">{{ s.note }}</div>{% endif %}<pre>{{ s.text }}</pre></div>
{% endfor %}</div>{% endfor %}
</body></html>
"""


def _side(label: str, text: str, win: bool | None, note: str = "") -> dict[str, Any]:
    cls = "" if win is None else ("win" if win else "lose")
    return {"label": label, "text": text, "cls": cls, "note": note}


def _revise_rows(run: Run) -> list[dict[str, Any]]:
    from pipeline.stages.generate import output_files

    rows = []
    for path in output_files(run.path / "revise"):
        for d in read_jsonl(path, Document):
            rev = d.revision
            if rev is None:
                continue
            last = rev.rounds[-1] if rev.rounds else None
            crit = rev.draft_critique
            note = (
                f"draft critique ({crit.score}/20, {crit.ratings}): {crit.critique}" if crit else ""
            )
            revised = _side("no revision", rev.error or "", None)
            if last is not None:
                rc = last.revised_critique
                revised = _side(
                    f"revision, round {last.round} ({'accepted' if last.accepted else 'rejected'})",
                    last.revised,
                    last.accepted,
                    f"critique ({rc.score}/20, {rc.ratings}): {rc.critique}",
                )
            rows.append(
                {
                    "title": d.topic or d.id,
                    "meta": f"id {d.id} · score {rev.draft_score} -> {rev.final_score}"
                    + (f" · error: {rev.error}" if rev.error else ""),
                    "note": note,
                    "sides": [
                        _side("draft", rev.draft, not any(r.accepted for r in rev.rounds)),
                        revised,
                    ],
                }
            )
    return rows


def _reverse_rows(run: Run) -> list[dict[str, Any]]:
    from pipeline.stages.reverse import read_pairs

    return [
        {
            "title": p.url or p.source_id,
            "meta": f"id {p.id} · overlap {p.overlap}"
            + (f" · dropped: {p.drop_reason}" if p.drop_reason else " · kept"),
            "note": "",
            "sides": [
                _side("instruction (written by the teacher)", p.instruction, p.drop_reason is None),
                _side("original text (the answer)", p.text, None),
            ],
        }
        for p in read_pairs(run.path / "reverse")
    ]


def _preference_rows(run: Run) -> list[dict[str, Any]]:
    from pipeline.stages.preferences import read_records

    rows = []
    for r in read_records(run.path / "preferences"):
        scores = ", ".join(str(s.score) for s in r.samples)
        if r.chosen is None or r.rejected is None:
            sides = [
                _side(f"sample {s.index} ({s.score})", s.text or s.error or "", None)
                for s in r.samples[:2]
            ]
        else:
            c, x = r.samples[r.chosen], r.samples[r.rejected]
            sides = [
                _side(
                    f"chosen: sample {c.index}, score {c.score}",
                    c.text or "",
                    True,
                    c.rationale or "",
                ),
                _side(
                    f"rejected: sample {x.index}, score {x.score}",
                    x.text or "",
                    False,
                    x.rationale or "",
                ),
            ]
        rows.append(
            {
                "title": r.id,
                "meta": f"scores {scores}"
                + (f" · skipped: {r.skip_reason}" if r.skip_reason else ""),
                "note": r.prompt,
                "sides": sides,
            }
        )
    return rows


def write_recipe_review(cfg: PipelineConfig, stage: str) -> Path:
    run = Run(cfg.run.root, cfg.run.name)
    manifest = run.read_manifest(stage)
    if not manifest or manifest.get("status") not in ("finished", "stopped: budget"):
        raise DatagenError(
            f"{run.path / stage}: nothing to review; run `datagen run stage={stage}` first"
        )
    rows = {"revise": _revise_rows, "reverse": _reverse_rows, "preferences": _preference_rows}[
        stage
    ](run)
    shown = random.Random(cfg.seed).sample(rows, min(cfg.review.n, len(rows)))
    page = (
        Environment(autoescape=True)
        .from_string(PAGE)
        .render(
            run_name=run.name,
            stage=stage,
            created=utc_now(),
            seed=cfg.seed,
            shown=len(shown),
            total=len(rows),
            summary=manifest.get("summary", {}),
            rows=shown,
        )
    )
    out = Path(cfg.review.out) if cfg.review.out else run.path / "review" / f"{stage}.html"
    atomic_write_text(out, page)
    return out
