"""The real run behind the emit / review / train-smoke tests: `datagen run` (every stage, in a
subprocess) once per test session, on the embedded llama.cpp teacher and the real Common Crawl
WARCs in ../shared/data/web. Nothing in it is hand-made: tests read its manifests and outputs,
and copy it (:func:`copy_run`) before they change anything.

Where a test needs a property the 135M teacher does not give reliably, the stages are
configured for it: a fastText quality model trained here on real text (OpenStax textbook pieces
vs Common Crawl page text) is given as ``classifier.model_path``, so every synthetic and web
document carries a classifier score (emit's quality, anneal phase), and ``web.min_quality`` is
set so that some real pages drop as ``quality.low_score``. Truncated generations are kept
(``filter.drop_truncated=false``, ``teacher.max_tokens`` is small to keep the run short).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import SHARED_DATA, datagen
from filters_testdata import chunks, openstax_modules, web_pages

from filters.classifier import train_classifier
from pipeline.runs import Run

RUN_NAME = "t"
WARCS = SHARED_DATA / "web" / "commoncrawl_warc"
# the seed (6 textbook + 6 exercises requests in a 12-request plan) and emit as the emit tests
# check it: exercises twice, half the web tokens, an anneal split
EMIT = [
    "seed=7",
    "emit.shard_tokens=1000",
    "emit.mix.exercises.weight=2",
    "emit.mix.web.weight=0.5",
    "emit.val_fraction=0.1",
    "emit.phases=[{name: anneal, top_fraction: 0.25}]",
]


def quality_model(path: Path) -> Path:
    """A real fastText textbook-vs-web classifier (the train_classifier code path; quantized,
    so the filter and web stages load a .ftz model)."""
    pos = [c for m in openstax_modules() for c in chunks(m["text"])]
    neg = [c for t in web_pages() for c in chunks(t)]
    train_classifier(pos + neg, [True] * len(pos) + [False] * len(neg), path, seed=3)
    return path


def pipeline_overrides(model: Path) -> list[str]:
    """The config of the session's run; rerunning a stage with these (plus changes) keeps the
    stages before it finished (same config hash), so no test calls the teacher again."""
    return [
        f"run.name={RUN_NAME}",
        "plan.n=12",
        "teacher.max_tokens=80",
        "teacher.concurrency=2",
        f"classifier.model_path={model}",
        "classifier.min_score=0",  # every synthetic document is scored, none dropped by it
        "filter.drop_truncated=false",
        "filter.gopher_quality.min_words=10",
        f"web.inputs=[{WARCS}/*.warc.gz, {WARCS}/*.arc.gz]",
        "web.keep_dropped=true",
        "web.min_quality=0.05",
        *EMIT,
    ]


def build_real_run(root: Path) -> Run:
    """Run every stage for real under ``root/runs``; fail with the command's stderr."""
    model = quality_model(root / "quality.ftz")
    r = datagen("run", *pipeline_overrides(model), cwd=root)
    if r.returncode != 0:
        raise AssertionError(f"datagen run failed:\n{r.stderr[-4000:]}")
    run = Run(root / "runs", RUN_NAME)
    if not run.is_finished("emit"):
        raise AssertionError(f"datagen run did not finish emit:\n{r.stdout[-4000:]}")
    return run


def copy_run(run: Run, dest: Path, without: tuple[str, ...] = ()) -> Run:
    """A copy of ``run`` under ``dest`` (same run name), leaving out the stage folders named in
    ``without`` (as if those stages had never run)."""

    def top_level(folder: str, names: list[str]) -> set[str]:
        return set(without) & set(names) if Path(folder) == run.path else set()

    shutil.copytree(run.path, dest / run.name, ignore=top_level)
    return Run(dest, run.name)
