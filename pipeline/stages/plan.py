"""plan: a seeded, reproducible set of generation requests.

Requests are topic x audience x format x a random vocabulary constraint of k words (the
TinyStories / phi-1 trick for diversity), optionally grounded on a web extract (Cosmopedia).
The same config and seed give a byte-identical plan; no two requests share
(topic, audience, format, words).

The plan is drawn and written as a stream, in files of ``plan.shard_items`` requests
(``plan.jsonl``, ``plan-00001.jsonl``, ...), and generate reads it back lazily: a plan of
millions never sits in memory (uniqueness is kept as one 64-bit hash per request).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.files import JSONL_SUFFIXES, is_jsonl_name, iter_jsonl, read_text
from pipeline.prompting import PromptLibrary, describe, prompts_folder
from pipeline.records import PlanItem, stable_id
from pipeline.runs import Run, atomic_write_bytes, read_jsonl

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
    """The whole plan as a list (small plans, tests); :func:`plan_items` streams it."""
    return list(plan_items(cfg))


def plan_items(cfg: PipelineConfig) -> Iterator[PlanItem]:
    """Draw ``plan.n`` unique requests with a generator seeded from ``cfg.seed``. The inputs
    are read and checked before this returns; the requests are drawn as they are taken."""
    pc = cfg.plan
    PromptLibrary(prompts_folder(cfg)).check(pc.formats)
    topics = _read_tsv(cfg.project_path(pc.topics_file), ("subject", "topic"))
    audiences = _read_lines(cfg.project_path(pc.audiences_file))
    words = [r["word"] for r in _read_tsv(cfg.project_path(pc.words_file), ("word", "zipf", "pos"))]
    if pc.words_per_prompt > len(words):
        raise DatagenError(f"plan.words_per_prompt: {pc.words_per_prompt} > {len(words)} words")
    seeds = _read_seed_texts(cfg.project_path(pc.seed_texts)) if pc.seed_texts else []
    # without words the space is finite: stop (and say so) instead of looping forever
    space = len(topics) * len(audiences) * len(pc.formats)
    if pc.words_per_prompt == 0 and pc.n > space:
        raise DatagenError(
            f"plan.n: {pc.n} unique requests asked but only {space} combinations exist "
            f"without vocabulary words (set plan.words_per_prompt > 0)"
        )
    return _draw(cfg, topics, audiences, words, seeds)


def _draw(
    cfg: PipelineConfig,
    topics: list[dict[str, str]],
    audiences: list[str],
    words: list[str],
    seeds: list[str],
) -> Iterator[PlanItem]:
    pc = cfg.plan
    rng = random.Random(cfg.seed)
    seen: set[int] = set()  # a 64-bit hash per combination: 2M requests hold ~130 MB, not GBs
    made = 0
    while made < pc.n:
        t = rng.choice(topics)
        audience = rng.choice(audiences)
        fmt = rng.choice(pc.formats)
        chosen = sorted(rng.sample(words, pc.words_per_prompt))
        key = (t["topic"], t["subject"], audience, fmt, tuple(chosen))
        h = _combination_hash(key)
        if h in seen:
            continue
        seen.add(h)
        made += 1
        seed_text = rng.choice(seeds) if seeds and rng.random() < pc.seed_fraction else None
        yield PlanItem(
            id=stable_id(*key, seed_text or "", prefix="p-"),
            topic=t["topic"],
            subject=t["subject"],
            audience=audience,
            format=fmt,
            words=chosen,
            seed_text=seed_text,
        )


def _combination_hash(key: tuple[Any, ...]) -> int:
    data = "\x1f".join(map(str, key[:4])) + "\x1e" + "\x1f".join(key[4])
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "little")


_PLAN_NAME = re.compile(r"plan(?:-(\d{5,}))?\.jsonl")


def plan_file(folder: Path, index: int) -> Path:
    """The plan's ``index``-th file: ``plan.jsonl``, then ``plan-00001.jsonl``, ..."""
    return folder / (PLAN_FILE if index == 0 else f"plan-{index:05d}.jsonl")


def plan_files(folder: Path) -> list[Path]:
    """The plan's files, in order."""
    found = []
    for p in folder.glob("plan*.jsonl"):
        if m := _PLAN_NAME.fullmatch(p.name):
            found.append((int(m.group(1) or 0), p))
    return [p for _, p in sorted(found)]


def plan_path(run: Run) -> Path:
    return run.path / "plan" / PLAN_FILE


def iter_plan(run: Run) -> Iterator[PlanItem]:
    """The finished plan's requests, read lazily file by file."""
    folder = run.require_finished("plan", "generate")
    for path in plan_files(folder):
        yield from read_jsonl(path, PlanItem)


def planned_count(run: Run) -> int:
    m = run.read_manifest("plan") or {}
    if isinstance(m.get("requests"), int):
        return int(m["requests"])
    return sum(1 for _ in iter_plan(run))


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("plan")
    formats = dict.fromkeys(cfg.plan.formats, 0)
    n = seeded = 0
    files: list[str] = []
    buf: list[bytes] = []

    def flush() -> None:  # one file at a time: memory holds plan.shard_items requests at most
        path = plan_file(folder, len(files))
        atomic_write_bytes(path, b"".join(buf))
        files.append(path.name)
        buf.clear()

    for item in plan_items(cfg):
        buf.append(item.model_dump_json().encode() + b"\n")
        n += 1
        formats[item.format] += 1
        seeded += item.seed_text is not None
        if len(buf) >= cfg.plan.shard_items:
            flush()
    if buf or not files:
        flush()
    for stale in plan_files(folder)[len(files) :]:  # a longer plan written here before
        stale.unlink()
    prompts = prompts_folder(cfg)
    shown = plan_path(run) if len(files) == 1 else f"{len(files)} files in {folder}"
    console.print(f"plan: {n} requests -> {shown}; {describe(prompts)}")
    return {
        "summary": {"requests": n, **formats},
        "requests": n,
        "formats": formats,
        "seeded_with_web": seeded,
        "output": PLAN_FILE,
        "files": files,
        "prompts": str(prompts),
    }
