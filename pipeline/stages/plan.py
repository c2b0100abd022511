"""plan: a seeded, reproducible set of generation requests.

Requests are topic x audience x format x style (for formats whose template uses it; a
story also draws TinyStories features) x a random vocabulary constraint (k words, or one word
per part of speech with ``plan.word_pos``: the TinyStories / phi-1 trick for diversity),
optionally grounded on a web extract (Cosmopedia) paired with a topic that fits it (or the
topic is derived from it). Topics come from ``plan.topics_file`` or, with
``plan.topics.expand``, from the teacher (:mod:`pipeline.topics`). The same config, seed and
teacher answers give a byte-identical plan; no two requests share
(topic, audience, format, style, features, words, extract). The manifest reports the
combinations available and drawn, and the most repeated values of each axis.

The plan is drawn and written as a stream, in files of ``plan.shard_items`` requests
(``plan.jsonl``, ``plan-00001.jsonl``, ...), and generate reads it back lazily: a plan of
millions never sits in memory (uniqueness is kept as one 64-bit hash per request).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
TOPICS_FILE = "topics.tsv"  # the expanded topics (plan.topics.expand)
TREE_FILE = "topic_tree.jsonl"
MAX_SEED_CHARS = 1500
STORY = "story"  # the style that draws plan.story_features
TOP_VALUES = 5  # most repeated values per axis in the manifest
# with plan.topics.expand the teacher's answers define the plan too
TEACHER_KEYS = ("teacher.model", "teacher.temperature", "teacher.top_p", "teacher.base_url")


def preflight(cfg: PipelineConfig) -> None:
    if cfg.plan.topics.expand:
        from pipeline.teacher import check_teacher_config

        check_teacher_config(cfg)


def fingerprint(cfg: PipelineConfig) -> str:
    """Which formats draw a style (read from their templates) and, when the teacher expands
    the topics, its settings and the topics template's source."""
    prompts = PromptLibrary(prompts_folder(cfg))
    prompts.check(cfg.plan.formats)
    own = ",".join(f for f in cfg.plan.formats if "style" in prompts.variables(f))
    if cfg.plan.topics.expand:
        from pipeline.topics import TEMPLATE

        own += prompts.fingerprint([TEMPLATE]) + cfg.section_hash(*TEACHER_KEYS)
    return hashlib.sha256(own.encode()).hexdigest()[:16]


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


@dataclass
class Axes:
    """What a plan is drawn from: each axis's values, read and checked."""

    topics: list[dict[str, str]]
    audiences: list[str]
    formats: list[str]
    styled: set[str]  # formats whose template uses {{ style }}
    styles: list[str]
    features: list[str]
    words: list[str]  # plan.words_per_prompt words are drawn from these
    by_pos: list[list[str]]  # plan.word_pos: one word from each list
    seeds: list[str] = field(default_factory=list)
    fits: list[list[int]] = field(default_factory=list)  # per seed: the topics that fit it

    def word_choices(self, k: int) -> int:
        if self.by_pos:
            return math.prod(len(ws) for ws in self.by_pos)
        return math.comb(len(self.words), k)

    def combinations(self, k: int) -> int:
        """Distinct (topic, audience, format, style, features, words) requests, extracts
        aside: a styled format counts each style, a story each subset of features."""
        per_style = [2 ** len(self.features) if s == STORY else 1 for s in self.styles]
        forms = sum(sum(per_style) if f in self.styled and self.styles else 1 for f in self.formats)
        return len(self.topics) * len(self.audiences) * forms * self.word_choices(k)


def read_axes(
    cfg: PipelineConfig, topics: list[dict[str, str]] | None = None, fit: bool = True
) -> Axes:
    """The axes of ``cfg.plan`` (``topics``: the expanded ones instead of plan.topics_file;
    ``fit=False``: inputs checked only, extracts not matched to topics)."""
    pc = cfg.plan
    prompts = PromptLibrary(prompts_folder(cfg))
    prompts.check(pc.formats)
    if topics is None:
        topics = _read_tsv(cfg.project_path(pc.topics_file), ("subject", "topic"))
    audiences = _read_lines(cfg.project_path(pc.audiences_file))
    rows = _read_tsv(cfg.project_path(pc.words_file), ("word", "zipf", "pos"))
    words = [r["word"] for r in rows]
    by_pos = [[r["word"] for r in rows if pos in r["pos"].split(",")] for pos in pc.word_pos]
    for pos, ws in zip(pc.word_pos, by_pos, strict=True):
        if not ws:
            raise DatagenError(f"plan.word_pos: no {pos} in {pc.words_file} (its pos column)")
    if not by_pos and pc.words_per_prompt > len(words):
        raise DatagenError(f"plan.words_per_prompt: {pc.words_per_prompt} > {len(words)} words")
    axes = Axes(
        topics=topics,
        audiences=audiences,
        formats=list(pc.formats),
        styled={f for f in pc.formats if "style" in prompts.variables(f)},
        styles=list(dict.fromkeys(pc.styles)),
        features=list(dict.fromkeys(pc.story_features)),
        words=words,
        by_pos=by_pos,
    )
    if pc.seed_texts:
        axes.seeds = _read_seed_texts(cfg.project_path(pc.seed_texts))
        if fit and pc.seed_topic == "match" and pc.seed_fraction > 0:
            axes.fits = fitting_topics(axes.seeds, topics, pc.seed_topic_k)
    return axes


def fitting_topics(
    seeds: Sequence[str], topics: Sequence[dict[str, str]], k: int
) -> list[list[int]]:
    """For each extract, the ``k`` topics most like it (TF-IDF cosine of "subject topic"
    against the extract, English stop words out), best first; [] when none shares a word."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(stop_words="english", sublinear_tf=True)
    try:
        t = vec.fit_transform([f"{r['subject']} {r['topic']}" for r in topics])
    except ValueError:  # no topic has a word that is not a stop word: none fits
        return [[] for _ in seeds]
    out: list[list[int]] = []
    for start in range(0, len(seeds), 256):  # a block of seeds x all topics at a time
        sims = (vec.transform(seeds[start : start + 256]) @ t.T).toarray()
        for row in sims:
            order = np.argsort(-row, kind="stable")[:k]
            out.append([int(i) for i in order if row[i] > 0])
    return out


def plan_items(cfg: PipelineConfig, axes: Axes | None = None) -> Iterator[PlanItem]:
    """Draw ``plan.n`` unique requests with a generator seeded from ``cfg.seed``. The inputs
    are read and checked before this returns; the requests are drawn as they are taken."""
    pc = cfg.plan
    axes = axes or read_axes(cfg)
    # without words the space is finite: stop (and say so) instead of looping forever
    k = 0 if axes.by_pos else pc.words_per_prompt
    space = axes.combinations(k)
    if axes.word_choices(k) == 1 and not axes.seeds and pc.n > space:
        raise DatagenError(
            f"plan.n: {pc.n} unique requests asked but only {space} combinations exist "
            f"without vocabulary words (set plan.words_per_prompt > 0)"
        )
    return _draw(cfg, axes)


def _draw(cfg: PipelineConfig, axes: Axes) -> Iterator[PlanItem]:
    pc = cfg.plan
    rng = random.Random(cfg.seed)
    seen: set[int] = set()  # a 64-bit hash per combination: 2M requests hold ~130 MB, not GBs
    made = 0
    no_topic = {"subject": "", "topic": ""}  # derived from the extract by the teacher
    while made < pc.n:
        seed_text = None
        if axes.seeds and rng.random() < pc.seed_fraction:
            si = rng.randrange(len(axes.seeds))
            seed_text = axes.seeds[si]
            fits = axes.fits[si] if axes.fits else []
            t = axes.topics[rng.choice(fits)] if fits else no_topic
        else:
            t = rng.choice(axes.topics)
        audience = rng.choice(axes.audiences)
        fmt = rng.choice(axes.formats)
        style = rng.choice(axes.styles) if fmt in axes.styled and axes.styles else ""
        features = (
            [f for f in axes.features if rng.random() < pc.story_feature_p]
            if style == STORY
            else []
        )
        if axes.by_pos:
            chosen = [rng.choice(ws) for ws in axes.by_pos]
            if len(set(chosen)) < len(chosen):  # one word for two parts of speech: draw again
                continue
        else:
            chosen = sorted(rng.sample(axes.words, pc.words_per_prompt))
        key = (t["topic"], t["subject"], audience, fmt, style, seed_text or "")
        h = _combination_hash(key, chosen, features)
        if h in seen:
            continue
        seen.add(h)
        made += 1
        yield PlanItem(
            id=stable_id(*key[:4], *chosen_key(style, features, chosen), key[5], prefix="p-"),
            topic=t["topic"],
            subject=t["subject"],
            audience=audience,
            format=fmt,
            words=chosen,
            seed_text=seed_text,
            style=style,
            features=features,
        )


def chosen_key(style: str, features: list[str], words: list[str]) -> tuple[str, ...]:
    """The id's parts after (topic, subject, audience, format): the words as before, and the
    style and features only when drawn (plans without them keep their ids)."""
    extra = (f"style={style}", *features) if style else ()
    return (tuple(words), *extra)  # type: ignore[return-value]


def _combination_hash(key: tuple[str, ...], words: list[str], features: list[str]) -> int:
    data = "\x1f".join(key) + "\x1e" + "\x1f".join(words) + "\x1e" + "\x1f".join(features)
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "little")


class AxisCounts:
    """How often each value of each axis was drawn (the plan manifest's diversity report)."""

    def __init__(self) -> None:
        self.axes: dict[str, Counter[str]] = {
            a: Counter()
            for a in ("topic", "subject", "audience", "format", "style", "feature", "word")
        }

    def add(self, it: PlanItem) -> None:
        c = self.axes
        c["topic"][it.topic] += 1
        c["subject"][it.subject] += 1
        c["audience"][it.audience] += 1
        c["format"][it.format] += 1
        if it.style:
            c["style"][it.style] += 1
        c["feature"].update(it.features)
        c["word"].update(it.words)

    def report(self) -> dict[str, Any]:
        return {
            a: {"distinct": len(c), "most_repeated": c.most_common(TOP_VALUES)}
            for a, c in self.axes.items()
        }


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


def expanded_topics(
    cfg: PipelineConfig, run: Run, console: Console
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """plan.topics.expand: the teacher's topic tree, written to the plan folder (its leaves
    as ``topics.tsv`` rows, subject = the parent title; every leaf's path in the tree file)."""
    import json

    from pipeline.topics import expand

    nodes, report = expand(cfg, run, console)
    folder = run.stage_dir("plan")
    rows = [{"subject": n.path[-2], "topic": n.title} for n in nodes]
    tsv = "subject\ttopic\n" + "".join(f"{r['subject']}\t{r['topic']}\n" for r in rows)
    atomic_write_bytes(folder / TOPICS_FILE, tsv.encode())
    tree = "".join(json.dumps({"path": list(n.path)}, ensure_ascii=False) + "\n" for n in nodes)
    atomic_write_bytes(folder / TREE_FILE, tree.encode())
    console.print(
        f"plan: {len(rows)} topics from {report['seeds']} seed subjects -> {folder / TOPICS_FILE}"
    )
    return rows, {**report, "output": TOPICS_FILE, "tree": TREE_FILE}


def run(cfg: PipelineConfig, run: Run, console: Console) -> dict[str, Any]:
    folder = run.stage_dir("plan")
    expansion: dict[str, Any] | None = None
    topics = None
    if cfg.plan.topics.expand:
        read_axes(cfg, [{"subject": "", "topic": ""}], fit=False)  # bad input: before requests
        if cfg.dry_run:
            from pipeline.topics import read_seeds

            n = len(read_seeds(cfg))
            tc = cfg.plan.topics
            raise DatagenError(
                f"dry_run: plan.topics.expand sends {n} topic requests, then up to "
                f"{n * tc.per_subject if tc.per_topic else 0} more; dry_run sends nothing: run "
                f"stage=plan without dry_run first (generate's estimate then uses that plan)"
            )
        topics, expansion = expanded_topics(cfg, run, console)
    axes = read_axes(cfg, topics)
    counts = AxisCounts()
    formats = dict.fromkeys(cfg.plan.formats, 0)
    n = seeded = 0
    files: list[str] = []
    buf: list[bytes] = []

    def flush() -> None:  # one file at a time: memory holds plan.shard_items requests at most
        path = plan_file(folder, len(files))
        atomic_write_bytes(path, b"".join(buf))
        files.append(path.name)
        buf.clear()

    for item in plan_items(cfg, axes):
        buf.append(item.model_dump_json().encode() + b"\n")
        n += 1
        formats[item.format] += 1
        seeded += item.seed_text is not None
        counts.add(item)
        if len(buf) >= cfg.plan.shard_items:
            flush()
    if buf or not files:
        flush()
    for stale in plan_files(folder)[len(files) :]:  # a longer plan written here before
        stale.unlink()
    prompts = prompts_folder(cfg)
    shown = plan_path(run) if len(files) == 1 else f"{len(files)} files in {folder}"
    console.print(f"plan: {n} requests -> {shown}; {describe(prompts)}")
    k = 0 if axes.by_pos else cfg.plan.words_per_prompt
    return {
        "summary": {"requests": n, **formats},
        "requests": n,
        "formats": formats,
        "seeded_with_web": seeded,
        "combinations": {
            # (topic, audience, format, style, features, words); web extracts multiply it
            "available": axes.combinations(k),
            "drawn": n,
            "topics": len(axes.topics),
            "styled_formats": sorted(axes.styled),
        },
        "axes": counts.report(),
        **({"topic_expansion": expansion} if expansion else {}),
        "output": PLAN_FILE,
        "files": files,
        "prompts": str(prompts),
    }
