"""plan: a seeded, reproducible set of generation requests.

Requests are topic x audience x format x a random vocabulary constraint of k words (the
TinyStories / phi-1 trick for diversity), optionally grounded on a web extract (Cosmopedia).
The same config and seed give a byte-identical plan; no two requests share
(topic, audience, format, words).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.files import JSONL_SUFFIXES, is_jsonl_name, iter_jsonl, read_text
from pipeline.prompting import PromptLibrary, describe, prompts_folder
from pipeline.records import PlanItem, stable_id
from pipeline.runs import Run, atomic_write_text, read_jsonl

CONFIG_KEYS = ("seed", "plan")
PLAN_FILE = "plan.jsonl"
MAX_SEED_CHARS = 1500


def _read_tsv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    lines = read_text(path).splitlines()
    if not lines or tuple(lines[0].split("\t")) != columns:
        raise DatagenError(f"{path}: header must be {' <tab> '.join(columns)}")
    rows = []
    for i, line in enumerate(lines[1:], 2):
        parts = line.split("\t")
        if len(parts) != len(columns) or not all(parts):
            raise DatagenError(f"{path}:{i}: expected {len(columns)} tab-separated fields")
        rows.append(dict(zip(columns, parts, strict=True)))
    if not rows:
        raise DatagenError(f"{path}: no rows")
    return rows


def _read_lines(path: Path) -> list[str]:
    rows = [ln.strip() for ln in read_text(path).splitlines()]
    rows = [r for r in rows if r and not r.startswith("#")]
    if not rows:
        raise DatagenError(f"{path}: no entries")
    return rows


def seed_files(path: Path) -> list[Path]:
    """``plan.seed_texts`` as files: the file itself, or every JSONL file in a folder (searched
    recursively, as web.inputs folders are; names as in files.JSONL_SUFFIXES, hidden ones
    skipped)."""
    if not path.exists():
        raise DatagenError(f"plan.seed_texts: {path}: no such file or folder")
    if not path.is_dir():
        return [path]
    found = sorted(
        f
        for f in path.rglob("*")
        if f.is_file() and is_jsonl_name(f.name) and not f.name.startswith(".")
    )
    if not found:
        raise DatagenError(
            f"plan.seed_texts: {path}: folder has no JSONL files "
            f"(looked for {', '.join(JSONL_SUFFIXES)})"
        )
    return found


def _read_seed_texts(path: Path) -> list[str]:
    """The ``text`` of every record (plain, .gz or .zst JSONL; a file or a folder of them)."""
    texts = []
    for f in seed_files(path):
        for line in iter_jsonl(f):
            if not isinstance(line.value, dict):
                raise DatagenError(f"{f}:{line.number}: not a JSON object with a 'text' field")
            t = line.value.get("text")
            if isinstance(t, str) and t.strip():
                texts.append(t.strip()[:MAX_SEED_CHARS])
    if not texts:
        raise DatagenError(f"plan.seed_texts: {path}: no records with a 'text' field")
    return texts


def build_plan(cfg: PipelineConfig) -> list[PlanItem]:
    """Draw ``plan.n`` unique requests with a generator seeded from ``cfg.seed``."""
    pc = cfg.plan
    PromptLibrary(prompts_folder(cfg)).check(pc.formats)
    topics = _read_tsv(cfg.project_path(pc.topics_file), ("subject", "topic"))
    audiences = _read_lines(cfg.project_path(pc.audiences_file))
    words = [r["word"] for r in _read_tsv(cfg.project_path(pc.words_file), ("word", "zipf", "pos"))]
    if pc.words_per_prompt > len(words):
        raise DatagenError(f"plan.words_per_prompt: {pc.words_per_prompt} > {len(words)} words")
    seeds = _read_seed_texts(cfg.project_path(pc.seed_texts)) if pc.seed_texts else []

    rng = random.Random(cfg.seed)
    seen: set[tuple[Any, ...]] = set()
    items: list[PlanItem] = []
    # without words the space is finite: stop (and say so) instead of looping forever
    space = len(topics) * len(audiences) * len(pc.formats)
    if pc.words_per_prompt == 0 and pc.n > space:
        raise DatagenError(
            f"plan.n: {pc.n} unique requests asked but only {space} combinations exist "
            f"without vocabulary words (set plan.words_per_prompt > 0)"
        )
    while len(items) < pc.n:
        t = rng.choice(topics)
        audience = rng.choice(audiences)
        fmt = rng.choice(pc.formats)
        chosen = sorted(rng.sample(words, pc.words_per_prompt))
        key = (t["topic"], t["subject"], audience, fmt, tuple(chosen))
        if key in seen:
            continue
        seen.add(key)
        seed_text = rng.choice(seeds) if seeds and rng.random() < pc.seed_fraction else None
        items.append(
            PlanItem(
                id=stable_id(*key, seed_text or "", prefix="p-"),
                topic=t["topic"],
                subject=t["subject"],
                audience=audience,
                format=fmt,
                words=chosen,
                seed_text=seed_text,
            )
        )
    return items


def plan_path(run: Run) -> Path:
    return run.path / "plan" / PLAN_FILE


def load_plan(run: Run) -> list[PlanItem]:
    path = run.require_finished("plan", "generate") / PLAN_FILE
    return list(read_jsonl(path, PlanItem))


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    items = build_plan(cfg)
    text = "".join(item.model_dump_json() + "\n" for item in items)
    atomic_write_text(run.stage_dir("plan") / PLAN_FILE, text)
    formats = {f: sum(i.format == f for i in items) for f in cfg.plan.formats}
    prompts = prompts_folder(cfg)
    console.print(f"plan: {len(items)} requests -> {plan_path(run)}; {describe(prompts)}")
    return {
        "summary": {"requests": len(items), **formats},
        "requests": len(items),
        "formats": formats,
        "seeded_with_web": sum(i.seed_text is not None for i in items),
        "output": PLAN_FILE,
        "prompts": str(prompts),
    }
