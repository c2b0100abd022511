"""Executors on the real filter stage: local with 1 and 2 workers and Ray give the same bytes;
a killed stage, a killed local worker and a killed Ray worker cost only unfinished shards."""

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
from test_filter_stage import base_docs, prepare_run

pytest.importorskip("ray")

SHARD = "executor.shard_docs=20"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A run whose generate stage holds 700 real documents (35 shards of 20)."""
    root = tmp_path_factory.mktemp("template")
    docs = [d.model_copy(update={"id": f"{d.id}-{k:02d}"}) for k in range(20) for d in base_docs()]
    prepare_run(
        root,
        docs,
        [f"run.root={root / 'runs'}"],
        stages=("plan", "generate", "annotate", "train_classifier"),
    )
    return root


def _copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template / "runs", dest / "runs")
    return dest


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("part-*.jsonl.zst"))
    }


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


COUNTS = ("input", "kept", "dropped", "drop_reasons", "funnel", "constraints", "decontam")


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory) -> Path:
    """An uninterrupted run with one in-process worker."""
    root = _copy(template, tmp_path_factory.mktemp("ref"))
    r = datagen("run", "stage=filter", SHARD, "executor.workers=1", cwd=root)
    assert r.returncode == 0, r.stderr
    return root / "runs/default/filter"


def test_local_1_local_2_and_ray_write_the_same_bytes(template, reference, tmp_path, ray_address):
    ref = _manifest(reference)
    assert ref["shards_total"] == 35 and len(ref["shards_run"]) == 35
    assert ref["dropped"] > 0 and ref["kept"] > 0
    for name, args in {
        "local2": ["executor.workers=2"],
        "ray": ["executor.kind=ray", f"executor.address={ray_address}"],
    }.items():
        root = _copy(template, tmp_path / name)
        r = datagen("run", "stage=filter", SHARD, *args, cwd=root)
        assert r.returncode == 0, r.stderr
        out = root / "runs/default/filter"
        assert _files(out) == _files(reference), name
        m = _manifest(out)
        assert {k: m[k] for k in COUNTS} == {k: ref[k] for k in COUNTS}, name


def test_ray_without_an_address_starts_and_stops_its_own_local_instance(template, tmp_path):
    root = _copy(template, tmp_path)
    r = datagen("run", "stage=filter", "executor.shard_docs=350", "executor.kind=ray", cwd=root)
    assert r.returncode == 0, r.stderr
    assert _manifest(root / "runs/default/filter")["shards_total"] == 2


def _start(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "stage=filter", SHARD, *args],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_markers(folder: Path, at_least: int, proc: subprocess.Popen[str]) -> None:
    # a guard against a hung stage, not a timing bound: on a slow host the stage's first
    # minutes go to train_classifier's reference model before the first shard
    deadline = time.monotonic() + 600
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
        part = folder / f"part-{m.stem}.jsonl.zst"
        st = part.stat()
        out[m.stem] = (st.st_ino, st.st_mtime_ns)
    return out


def test_a_killed_stage_reruns_only_its_unfinished_shards(template, reference, tmp_path):
    root = _copy(template, tmp_path)
    folder = root / "runs/default/filter"
    proc = _start(root, "executor.workers=2")
    _wait_markers(folder, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _snapshot(folder)
    assert 0 < len(before) < 35
    r = datagen("run", "stage=filter", SHARD, "executor.workers=2", cwd=root)
    assert r.returncode == 0, r.stderr
    m = _manifest(folder)
    assert set(m["shards_run"]) == set(range(35)) - {int(s) for s in before}
    after = _snapshot(folder)
    assert {s: after[s] for s in before} == before  # finished shards were not rewritten
    assert _files(folder) == _files(reference)
    assert {k: m[k] for k in COUNTS} == {k: _manifest(reference)[k] for k in COUNTS}


def test_a_killed_local_worker_costs_only_its_shards(template, reference, tmp_path):
    root = _copy(template, tmp_path)
    folder = root / "runs/default/filter"
    proc = _start(root, "executor.workers=2")
    _wait_markers(folder, 2, proc)
    workers = local_workers(proc.pid)
    assert workers, "no worker processes found"
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    assert _files(folder) == _files(reference)
    assert _manifest(folder)["kept"] == _manifest(reference)["kept"]


def test_a_killed_ray_worker_costs_only_its_shard(template, reference, tmp_path, ray_address):
    root = _copy(template, tmp_path)
    folder = root / "runs/default/filter"
    proc = _start(root, "executor.kind=ray", f"executor.address={ray_address}")
    _wait_markers(folder, 2, proc)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while not workers and time.monotonic() < deadline:
        workers = processes(0, "ray::_run_job")
        time.sleep(0.01)
    assert workers, "no busy Ray worker found"
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    assert _files(folder) == _files(reference)
    assert _manifest(folder)["kept"] == _manifest(reference)["kept"]
