"""Executors on the real web stage (real WARCs and JSONL, a real classifier): local with 1 and
2 workers and Ray write the same bytes; a killed stage, a killed local worker and a killed Ray
worker cost only unfinished shards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import datagen, local_workers, processes
from test_web_stage import config, prepare
from web_testdata import (
    CCNET,
    DOLMA0,
    DOLMA1,
    DOLMA_JSONL,
    RESILIPARSE,
    WEBIS_SMALL,
    WHIRLWIND,
    train_quality_model,
)

pytest.importorskip("ray")

SHARD = "executor.shard_docs=200"  # the 697-line JSONL file: 4 shards
COPIES = ("b", "c", "d", "e")  # the WARCs again under other names: more shards of real pages
N_SHARDS = 5 + 3 * len(COPIES) + 4 + 2
COUNTS = (
    "funnel",
    "drop_reasons",
    "reader",
    "documents",
    "tokens",
    "pii_masked",
    "c4_lines_removed",
    "charset",
    "decontam",
    "shards_total",
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """One folder every run reads (documents record their source file's path)."""
    folder = tmp_path_factory.mktemp("inputs")
    for f in (DOLMA0, DOLMA1, RESILIPARSE, WHIRLWIND, WEBIS_SMALL, DOLMA_JSONL, *CCNET):
        shutil.copy(f, folder / f"a_{f.name}")
    for prefix in COPIES:
        for f in (DOLMA0, DOLMA1, RESILIPARSE):
            shutil.copy(f, folder / f"{prefix}_{f.name}")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return train_quality_model(tmp_path_factory.mktemp("clf") / "model.bin")


def _args(inputs: Path, model: Path) -> list[str]:
    return [f"web.inputs=[{inputs}]", f"classifier.model_path={model}", "web.keep_dropped=true"]


@pytest.fixture(scope="module")
def template(tmp_path_factory, inputs: Path, model: Path) -> Path:
    """A run whose train_classifier stage (real, with the model) has finished."""
    root = tmp_path_factory.mktemp("template")
    cfg = config(root / "runs", *_args(inputs, model), inputs=[inputs])
    prepare(cfg, ("plan", "generate"))
    r = datagen(
        "run",
        "stage=train_classifier",
        f"run.root={root / 'runs'}",
        "run.name=t",
        *_args(inputs, model),
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    return root


def _copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template / "runs", dest / "runs")
    return dest


def _cmd(root: Path, inputs: Path, model: Path, *args: str) -> list[str]:
    return ["run", "stage=web", "run.root=runs", "run.name=t", SHARD, *_args(inputs, model), *args]


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("part-*.jsonl.zst"))
    }


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def reference(template, inputs, model, tmp_path_factory) -> Path:
    """An uninterrupted run with one in-process worker."""
    root = _copy(template, tmp_path_factory.mktemp("ref"))
    r = datagen(*_cmd(root, inputs, model, "executor.workers=1"), cwd=root)
    assert r.returncode == 0, r.stderr
    return root / "runs/t/web"


def test_local_1_local_2_and_ray_write_the_same_bytes(
    template, inputs, model, reference, tmp_path, ray_address
):
    ref = _manifest(reference)
    assert ref["shards_total"] == N_SHARDS and ref["shards_run"] == list(range(N_SHARDS))
    assert ref["documents"] > 0 and ref["quality"]["applied"]
    assert [r["step"] for r in ref["funnel"]][-2:] == ["quality", "decontam"]
    assert len(_files(reference)) == 2 * N_SHARDS  # kept and dropped, every shard
    for name, args in {
        "local2": ["executor.workers=2"],
        "ray": ["executor.kind=ray", f"executor.address={ray_address}"],
    }.items():
        root = _copy(template, tmp_path / name)
        r = datagen(*_cmd(root, inputs, model, *args), cwd=root)
        assert r.returncode == 0, r.stderr
        out = root / "runs/t/web"
        assert _files(out) == _files(reference), name
        m = _manifest(out)
        assert {k: m[k] for k in COUNTS} == {k: ref[k] for k in COUNTS}, name


def _start(root: Path, inputs: Path, model: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *_cmd(root, inputs, model, *args)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_markers(folder: Path, at_least: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if len(list((folder / "completions").glob("*.json"))) >= at_least:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.005)
    raise AssertionError("no completion markers appeared")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each shard that has a completion marker."""
    out = {}
    for m in (folder / "completions").glob("*.json"):
        st = (folder / f"part-{m.stem}.jsonl.zst").stat()
        out[m.stem] = (st.st_ino, st.st_mtime_ns)
    return out


def test_a_killed_stage_reruns_only_its_unfinished_shards(
    template, inputs, model, reference, tmp_path
):
    root = _copy(template, tmp_path)
    folder = root / "runs/t/web"
    proc = _start(root, inputs, model, "executor.workers=2")
    _wait_markers(folder, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _snapshot(folder)
    assert 0 < len(before) < N_SHARDS
    r = datagen(*_cmd(root, inputs, model, "executor.workers=2"), cwd=root)
    assert r.returncode == 0, r.stderr
    m = _manifest(folder)
    assert set(m["shards_run"]) == set(range(N_SHARDS)) - {int(s) for s in before}
    after = _snapshot(folder)
    assert {s: after[s] for s in before} == before  # finished shards were not rewritten
    assert _files(folder) == _files(reference)
    assert {k: m[k] for k in COUNTS} == {k: _manifest(reference)[k] for k in COUNTS}


def test_a_killed_local_worker_costs_only_its_shards(template, inputs, model, reference, tmp_path):
    root = _copy(template, tmp_path)
    folder = root / "runs/t/web"
    proc = _start(root, inputs, model, "executor.workers=2")
    _wait_markers(folder, 2, proc)
    workers = local_workers(proc.pid)
    assert workers, "no worker processes found"
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""
    assert _files(folder) == _files(reference)
    m = _manifest(folder)
    assert {k: m[k] for k in COUNTS} == {k: _manifest(reference)[k] for k in COUNTS}


def test_a_killed_ray_worker_costs_only_its_shard(
    template, inputs, model, reference, tmp_path, ray_address
):
    root = _copy(template, tmp_path)
    folder = root / "runs/t/web"
    proc = _start(root, inputs, model, "executor.kind=ray", f"executor.address={ray_address}")
    _wait_markers(folder, 2, proc)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while not workers and time.monotonic() < deadline:
        workers = processes(0, "ray::_run_job")
        time.sleep(0.01)
    assert workers, "no busy Ray worker found"
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, proc.stderr.read() if proc.stderr else ""
    assert _files(folder) == _files(reference)
    m = _manifest(folder)
    assert {k: m[k] for k in COUNTS} == {k: _manifest(reference)[k] for k in COUNTS}
