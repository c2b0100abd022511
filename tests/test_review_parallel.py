"""`datagen review`'s pass on the executor: one local worker, two local workers and Ray give the
same page, on the session's real run re-sharded by the real stages into files of 4 documents,
and the review writes nothing into the run."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import datagen
from emit_testdata import copy_run, pipeline_overrides
from run_testdata import tree

from pipeline.records import Document
from pipeline.review import Sample, _doc_view
from pipeline.runs import Run, read_shards, shard_paths

# a sample smaller than either side (so which documents it holds depends on every file), and
# the run's seed
REVIEW = ["review.max_stats_docs=20", "review.n=8", "seed=7"]
CREATED = re.compile(r'(?<=<p class="meta">)\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00')


@pytest.fixture(scope="module")
def sharded(real_run, tmp_path_factory) -> Run:
    """The session's real run with filter, web, dedup and emit rerun by `datagen run` in shards
    of 4 documents: each side of each stage in several files."""
    dest = tmp_path_factory.mktemp("sharded")
    run = copy_run(real_run, dest / "runs")
    model = real_run.root.parent / "quality.ftz"
    r = datagen("run", *pipeline_overrides(model), "executor.shard_docs=4", cwd=dest)
    assert r.returncode == 0, r.stderr
    for folder in ("dedup", "filter", "filter/dropped", "web/dropped"):
        assert len(shard_paths(run.path / folder)) >= 3, folder
    assert len(list((run.path / "emit/text/train").glob("part-*.parquet"))) >= 2
    return run


def review(run: Run, out: Path, *args: str) -> str:
    """The page `datagen review` writes, without its creation time."""
    r = datagen(
        "review", f"run.root={run.root}", f"run.name={run.name}", f"review.out={out}", *REVIEW,
        *args, cwd=run.root.parent,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == out
    page = out.read_text(encoding="utf-8")
    assert len(CREATED.findall(page)) == 1
    return CREATED.sub("", page)


@pytest.mark.parametrize("stage", ["filter+web+dedup", "emit", "generate"])
def test_review_pages_are_identical_on_1_and_2_local_workers_and_on_ray(
    sharded, ray_address, tmp_path, stage
):
    before = tree(sharded.path)
    args = [] if stage == "filter+web+dedup" else [f"stage={stage}"]
    executors = {
        "local-1": ["executor.workers=1"],
        "local-2": ["executor.workers=2"],
        "ray": ["executor.kind=ray", f"executor.address={ray_address}"],
    }
    pages = {k: review(sharded, tmp_path / f"{k}.html", *args, *v) for k, v in executors.items()}
    assert pages["local-2"] == pages["local-1"]
    assert pages["ray"] == pages["local-1"]
    assert "Kept documents (8 sampled)" in pages["local-1"]
    assert tree(sharded.path) == before  # no completion markers, nothing written into the run


def test_parallel_review_counts_every_document_and_shows_the_bottom_k_sample(sharded, tmp_path):
    """The page of two workers against every document read here: totals, drops per reason
    (most first, then by name) and the documents shown, which are the first ``review.n`` of all
    documents ranked by the seeded hash."""
    page = review(sharded, tmp_path / "page.html", "executor.workers=2")
    run = sharded.path
    kept = [_doc_view(d, "dedup", True) for d in read_shards(run / "dedup", Document)]
    dropped = [
        _doc_view(d, s, False)
        for s in ("filter", "web", "dedup")
        for d in read_shards(run / s / "dropped", Document)
    ]
    assert len(kept) > 8 and len(dropped) > 100
    assert f"{len(kept)} kept and {len(dropped)} dropped documents" in page

    reasons = Counter(d["drop_reason"] for d in dropped)
    table = page.split("<th>drop reason (stage output)</th>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr><td>([^<]+)</td><td class="num">(\d+)</td></tr>', table)
    assert [(r, int(c)) for r, c in rows] == sorted(reasons.items(), key=lambda t: (-t[1], t[0]))
    assert len(set(reasons.values())) < len(reasons)  # ties: their order is the names'

    sample = Sample(20, seed=7)

    def first(docs: list[dict]) -> list[tuple[str, str]]:
        ranked = sorted(docs, key=lambda d: (sample.key(d), d["id"]))
        return [(d["id"], d["stage"]) for d in ranked[:8]]

    shown = re.findall(r"id (\S+) &middot; (\w+) &middot;", page)
    assert shown == first(kept) + first(dropped)
