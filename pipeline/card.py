"""The dataset card (``emit/README.md``) and the per-stage funnel it shares with the review
page: built from the stages' manifests only, so the emit stage never imports the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.records import utc_now
from pipeline.runs import Run


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


def reasons_text(d: dict[str, int]) -> str:
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
        drops = "; ".join(f"{k}: {reasons_text(d)}" for k, d in row["counts"].items())
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
            for s in row["steps"]:
                drops = reasons_text(s["dropped"])
                lines.append(f"| {s['step']} | {s['documents']:,} | {s['tokens']:,} | {drops} |")
    return "\n".join(lines) + "\n"


def preferences_card(cfg: PipelineConfig, run: Run, m: dict[str, Any]) -> str:
    """The README.md beside the preference pairs (``preferences/pairs.parquet``)."""
    p = cfg.preferences
    rule = "the worst-rated" if p.rejected == "worst" else "a random lower-rated"
    skips = ", ".join(f"{k}={v}" for k, v in m["skip_reasons"].items()) or "none"
    return (
        "\n".join(
            [
                "---",
                "configs:",
                "- config_name: default",
                "  data_files: pairs.parquet",
                "tags: [dpo, preference, synthetic]",
                "---",
                f"# datagen preference pairs: {run.name}",
                "",
                f"Built {utc_now()} by `datagen run stage=preferences` (seed {cfg.seed}), "
                f"Zephyr dDPO / UltraFeedback style: {p.samples} completions per prompt from "
                f"`{cfg.teacher.model}` at temperature {p.temperature:g}, each rated 1-10 by the "
                f"same teacher with the rubric `{Path(p.rate_prompt).name}` (instruction "
                f"following, correctness, helpfulness, clarity). chosen = the best-rated sample, "
                f"rejected = {rule} sample; prompts whose samples tie are skipped.",
                "",
                f"- prompts: {m['prompts']} sampled from the plan; pairs: {m['pairs']}; "
                f"skipped: {skips}",
                f"- mean score margin chosen - rejected: {m['mean_margin']}",
                f"- teacher tokens: {m['prompt_tokens'] + m['completion_tokens']:,}; cost: "
                + ("unknown" if m["cost_usd"] is None else f"${m['cost_usd']}"),
                "",
                "## Columns",
                "",
                "| column | meaning |",
                "|---|---|",
                "| prompt | the request (the user message generate would send) |",
                "| chosen, rejected | the best-rated and the rejected completion |",
                "| score_chosen, score_rejected | their ratings (1-10) |",
                "| scores | every sample's rating, in sample order (null: not rated) |",
                "| model | the teacher |",
                "| id | the plan item's id |",
                "| chosen_sample, rejected_sample | indices into the samples (ratings.jsonl) |",
                "",
                'Load with `datasets.load_dataset("parquet", data_files="pairs.parquet")`. '
                "Every sample, rating and rationale is in `ratings.jsonl`.",
            ]
        )
        + "\n"
    )
