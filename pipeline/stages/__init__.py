"""Stage registry and driver.

Each stage is a module ``pipeline.stages.<name>`` with one entry point
``run(cfg, run, console) -> dict`` (the dict goes into the stage's manifest) and a tuple
``CONFIG_KEYS`` naming the config keys that define its output. Optional hooks:
``preflight(cfg)`` checks inputs that need no upstream output, and runs for every stage
before any stage does (a missing input path fails before any work starts);
``rerun_requested(cfg)`` asks to run a finished stage again (generate with retry_failed);
``fingerprint(cfg)`` adds what defines the output besides config keys (prompt template
sources) to the stage's identity; ``validate(cfg, run)`` checks what needs upstream output
and runs before the stage's earlier output is moved aside (a bad config never costs a
finished output).
A stage's config hash covers its keys and the hashes of the stages it reads from (and their
``output_fingerprint``, for stages whose output can grow without a config change: generate
continued under a larger budget), so a changed plan makes generate stale: a finished stage with
the same hash is skipped, a stale one is redone, its earlier output moved to
``<run>/.superseded/``. ``datagen run`` holds the run directory's lock throughout, so no two
processes work on one run at once.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from rich.console import Console

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.records import utc_now
from pipeline.redaction import env_secret, redact
from pipeline.runs import STOPPED_BUDGET, Run, RunLock, remove_stale_temps


@dataclass(frozen=True)
class StageSpec:
    name: str
    needs: tuple[str, ...] = ()
    about: str = ""  # one line for `datagen run --help`

    def module(self) -> ModuleType:
        return importlib.import_module(f"pipeline.stages.{self.name}")


# Data flows one way, in this order. `datagen run` runs them all.
STAGES: tuple[StageSpec, ...] = (
    StageSpec("plan", about="seeded requests: topic x audience x format x words"),
    StageSpec("generate", ("plan",), "the teacher writes each request (resumable, cached)"),
    StageSpec("revise", ("generate",), "the teacher critiques and rewrites drafts (phi-4)"),
    StageSpec("annotate", ("revise",), "the teacher rates a sample for educational value"),
    StageSpec(
        "train_classifier",
        ("annotate",),
        "a fastText quality model: reference text vs web pages",
    ),
    StageSpec(
        "filter",
        ("revise", "train_classifier"),
        "heuristics, classifier, decontamination",
    ),
    # web reads only the classifier train_classifier chose (not the filter's output)
    StageSpec("web", ("train_classifier",), "read, extract and filter web data (WARC, HTML)"),
    StageSpec("dedup", ("filter", "web"), "exact + MinHash near-dup removal, synthetic and web"),
    StageSpec("emit", ("dedup",), "mix, split, tokenize: the corpus (parquet + tokens)"),
    StageSpec("reverse", ("web",), "the teacher writes the instruction each web text answers"),
    StageSpec("preferences", ("plan",), "sampled completions rated: chosen/rejected pairs"),
)
BY_NAME = {s.name: s for s in STAGES}
SUPERSEDED = ".superseded"  # earlier outputs of redone stages: <run>/.superseded/<stage>-<hash>
DRY_RUN = "dry_run"  # the status of a stage that only estimated (dry_run=true): not finished
WAITING = "waiting: batch"  # teacher.mode=batch offline: results not there yet, not finished


def stage_hash(cfg: PipelineConfig, run: Run, spec: StageSpec) -> str:
    upstream = []
    for dep in spec.needs:
        m = run.read_manifest(dep) or {}
        h = m.get("config_hash") or stage_hash(cfg, run, BY_NAME[dep])
        fp = m.get("output_fingerprint")
        upstream.append(f"{h}:{fp}" if fp else h)
    keys = tuple(spec.module().CONFIG_KEYS)
    own = cfg.section_hash(*keys) if keys else ""
    if fingerprint := getattr(spec.module(), "fingerprint", None):
        own = _combine(own, [fingerprint(cfg)])
    return _combine(own, upstream)


def _combine(own: str, upstream: list[str]) -> str:
    return hashlib.sha256("|".join([own, *upstream]).encode()).hexdigest()[:16]


def _closure(name: str) -> list[str]:
    """The stage and everything it reads from, in pipeline order."""
    need: set[str] = set()
    todo = [name]
    while todo:
        s = todo.pop()
        if s not in need:
            need.add(s)
            todo.extend(BY_NAME[s].needs)
    return [s.name for s in STAGES if s.name in need]


def resolve_stage(name: str | None) -> list[str]:
    if name is None:
        return [s.name for s in STAGES]
    if name not in BY_NAME:
        allowed = ", ".join(BY_NAME)
        raise DatagenError(f"unknown stage '{name}' (allowed: {allowed})")
    return _closure(name)


def run_pipeline(cfg: PipelineConfig, stage: str | None, console: Console) -> list[dict[str, Any]]:
    """Run ``stage`` (and any upstream stage not yet finished) or every stage in order, holding
    the run directory's lock: a second process on the same run is refused at once."""
    run = Run(cfg.run.root, cfg.run.name)
    order = resolve_stage(stage)
    for name in order:
        if preflight := getattr(BY_NAME[name].module(), "preflight", None):
            preflight(cfg)
    with RunLock(run.path) as lock:
        if lock.took_over:
            console.print(
                f"[yellow]{run.path}: took over the lock left by {lock.took_over} "
                f"(that datagen run ended without releasing it)[/]"
            )
        return _run_stages(cfg, run, stage, order, console)


def _run_stages(
    cfg: PipelineConfig, run: Run, stage: str | None, order: list[str], console: Console
) -> list[dict[str, Any]]:
    targets = set(order) if stage is None else {stage}
    results = []
    for name in order:
        spec = BY_NAME[name]
        h = stage_hash(cfg, run, spec)
        manifest = run.read_manifest(name)
        # a stage whose config (or an upstream stage) changed is redone, like make or DVC;
        # force=true redoes the requested stages even when nothing changed
        stale = manifest is not None and manifest.get("config_hash") != h
        redo = stale or (cfg.force and name in targets)
        # a stage may ask to run again although finished (generate with retry_failed=true)
        rerun = getattr(spec.module(), "rerun_requested", lambda c: False)(cfg)
        if manifest and manifest.get("status") == "finished" and not redo and not rerun:
            console.print(f"[dim]{name}: finished earlier, skipped ({run.path / name})[/]")
            results.append(manifest)
            continue
        if validate := getattr(spec.module(), "validate", None):
            validate(cfg, run)  # before anything is moved: a bad config keeps the old output
        # what a killed atomic write left (the lock means no one else is writing here)
        if left := remove_stale_temps(run.path / name):
            console.print(f"[dim]{name}: removed {len(left)} temp file(s) left by a killed run[/]")
        if redo and (run.path / name).exists():
            why = "its config or an upstream stage changed" if stale else "force=true"
            _supersede(run, name, (manifest or {}).get("config_hash", "unknown"), why, console)
        results.append(_run_one(cfg, run, spec, h, console))
        status = results[-1].get("status")
        if status in (DRY_RUN, WAITING):  # not finished: later stages have no input yet
            later = order[order.index(name) + 1 :]
            if later:
                console.print(f"{status}: stopped after {name}; not run: {', '.join(later)}")
            break
    return results


def _supersede(run: Run, name: str, old_hash: str, why: str, console: Console) -> None:
    """Move a stage's earlier output aside (never delete it) before the stage is redone; a
    second copy with the same hash (force=true twice) gets a time suffix."""
    dest = run.path / SUPERSEDED / f"{name}-{old_hash}"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    n = 0
    while dest.exists():
        n += 1
        dest = run.path / SUPERSEDED / (f"{name}-{old_hash}-{stamp}" + (f"-{n}" if n > 1 else ""))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(run.path / name, dest)
    console.print(f"[yellow]{name}: redone ({why}); the earlier output is in {dest}[/]")


def _run_one(
    cfg: PipelineConfig, run: Run, spec: StageSpec, h: str, console: Console
) -> dict[str, Any]:
    started, t0 = utc_now(), time.perf_counter()
    base: dict[str, Any] = {
        "stage": spec.name,
        "config_hash": h,
        "started_at": started,
        "run": str(run.path),
    }
    # upstream stages the budget stopped: this stage's input is partial
    partial = [
        s
        for s in _closure(spec.name)
        if s != spec.name and (run.read_manifest(s) or {}).get("status") == STOPPED_BUDGET
    ]
    if partial:
        base["inputs_stopped_by_budget"] = partial
    run.stage_dir(spec.name)
    run.write_manifest(spec.name, {**base, "status": "running"})
    console.rule(f"[bold]{spec.name}")
    try:
        out = spec.module().run(cfg, run, console)
    except BaseException as e:
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        reason = redact(reason, env_secret(cfg.teacher.api_key_env))
        run.write_manifest(
            spec.name,
            {
                **base,
                "status": "failed",
                "error": reason[:500],
                "elapsed_s": round(time.perf_counter() - t0, 3),
            },
        )
        raise
    manifest = {
        **base,
        "status": "finished",
        **out,
        "finished_at": utc_now(),
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    run.write_manifest(spec.name, manifest)
    return manifest
