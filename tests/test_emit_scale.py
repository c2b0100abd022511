"""The emit stage on an executor, on the session's real run (tests/emit_testdata.py): local with 1
and 2 workers, another input-shard cut and Ray write the same bytes; a killed emit (in its
tokenize round or its write round) reruns only the unfinished tasks; a killed local or Ray
worker costs only its shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import local_workers, processes
from emit_testdata import EMIT, copy_run

ROOT = Path(__file__).resolve().parents[1]
# several input shards (16 kept documents) and many small output shards
SMALL = ["executor.shard_docs=2", "emit.shard_tokens=200", "emit.mix.textbook.weight=20"]
# the manifest's counts (shards: every output file's sha256, tokens and documents)
COUNTS = ("summary", "inputs", "sources", "splits", "multipliers", "shards", "tokenizer")
# the emit stage alone as the driver runs it (temps of a killed attempt removed, manifest
# written); the stages before it finished in the session's run
STAGE = (
    "import json, sys; from rich.console import Console; from pipeline.config import load_config;"
    "from pipeline.runs import Run, remove_stale_temps;"
    "from pipeline.stages import BY_NAME, _run_one;"
    "cfg = load_config(sys.argv[1:]); run = Run(cfg.run.root, cfg.run.name);"
    "remove_stale_temps(run.path / 'emit');"
    "m = _run_one(cfg, run, BY_NAME['emit'], 'test', Console(quiet=True)); print(json.dumps(m))"
)


def _cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", STAGE, f"run.root={root}", "run.name=t", *EMIT, *SMALL, *args]


def emit(root: Path, *args: str) -> dict:
    r = subprocess.run(_cmd(root, *args), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _start(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _cmd(root, *args),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def files(emit_dir: Path) -> dict[str, bytes]:
    """Every output file of the corpus (text and token shards, their index and metadata)."""
    return {
        str(p.relative_to(emit_dir)): p.read_bytes()
        for sub in ("text", "tokens")
        for p in sorted((emit_dir / sub).rglob("*"))
        if p.is_file()
    }


def counts(m: dict) -> dict:
    return {k: m[k] for k in COUNTS}


@pytest.fixture(scope="module")
def reference(real_run, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted emit with one in-process worker."""
    run = copy_run(real_run, tmp_path_factory.mktemp("ref"), without=("emit",))
    m = emit(run.path.parent, "executor.workers=1")
    return run.path / "emit", m


def test_local_1_and_2_workers_and_another_input_cut_write_the_same_bytes(
    real_run, reference, tmp_path
):
    ref_dir, ref = reference
    assert ref["rounds"]["tokenize"]["tasks"] == 8  # 16 documents, 2 per input shard
    assert ref["shards_total"] > 20 and ref["shards_run"] == list(range(ref["shards_total"]))
    assert set(ref["shards"]) == {"train", "val", "anneal"}
    assert not (ref_dir / ".work").exists()  # the work files are as large as the corpus
    ref_files = files(ref_dir)
    assert len(ref_files) == 4 * ref["shards_total"]
    for name, args in {
        "local2": ["executor.workers=2"],
        "one_input_shard": ["executor.workers=2", "executor.shard_docs=1000"],
    }.items():
        run = copy_run(real_run, tmp_path / name, without=("emit",))
        m = emit(run.path.parent, *args)
        assert files(run.path / "emit") == ref_files, name
        assert counts(m) == counts(ref), name
    assert m["rounds"]["tokenize"]["tasks"] == 1


def test_ray_writes_the_same_bytes_as_local(real_run, reference, tmp_path, ray_address):
    ref_dir, ref = reference
    run = copy_run(real_run, tmp_path, without=("emit",))
    m = emit(run.path.parent, "executor.kind=ray", f"executor.address={ray_address}")
    assert files(run.path / "emit") == files(ref_dir)
    assert counts(m) == counts(ref)


def _wait_markers(folder: Path, at_least: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if len(list((folder / "completions").glob("*.json"))) >= at_least:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.002)
    raise AssertionError(f"no completion markers appeared in {folder}")


def _snapshot(emit_dir: Path, manifest: dict) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of the files of each output shard that has a completion marker."""
    out = {}
    order = [s for split in manifest["shards"].values() for s in split]
    for marker in (emit_dir / "completions").glob("*.json"):
        shard = order[int(marker.stem)]
        for rel in (shard["text"]["path"], shard["tokens"]["path"], shard["tokens"]["index"]):
            st = (emit_dir / rel).stat()
            out[rel] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("round_", ["tokenize", "write"])
def test_a_killed_emit_reruns_only_its_unfinished_tasks(real_run, reference, tmp_path, round_):
    ref_dir, ref = reference
    run = copy_run(real_run, tmp_path, without=("emit",))
    emit_dir = run.path / "emit"
    where = emit_dir / ".work" / "tokenize-2" if round_ == "tokenize" else emit_dir
    proc = _start(run.path.parent, "executor.workers=2")
    _wait_markers(where, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    total = ref["rounds"][round_]["tasks"]
    done = {int(p.stem) for p in (where / "completions").glob("*.json")}
    assert 0 < len(done) < total, "the kill came too late or too early"
    before = _snapshot(emit_dir, ref) if round_ == "write" else {}
    for ds in emit_dir.glob("tokens/*/part-*.ds"):  # a file under its final name is whole
        index = ds.with_name(ds.name + ".index")
        if index.exists():  # written after its .ds
            assert int(np.fromfile(index, "<u8")[-1]) * 2 == ds.stat().st_size
    for p in emit_dir.glob("text/*/part-*.parquet"):
        assert pq.read_table(p).num_rows > 0  # a half-written parquet would not parse
    m = emit(run.path.parent, "executor.workers=2")
    assert set(m["rounds"][round_]["ran"]) == set(range(total)) - done
    if round_ == "write":  # the tokenize round had finished: nothing of it was redone
        assert m["rounds"]["tokenize"]["ran"] == []
        assert set(m["shards_run"]) == set(range(total)) - done
        after = _snapshot(emit_dir, ref)
        assert {k: after[k] for k in before} == before  # finished shards were not rewritten
    assert files(emit_dir) == files(ref_dir)
    assert counts(m) == counts(ref)
    assert not [p for p in emit_dir.rglob("*") if p.name.endswith(".tmp")]


def test_a_killed_local_worker_costs_only_its_shards(real_run, reference, tmp_path):
    ref_dir, ref = reference
    run = copy_run(real_run, tmp_path, without=("emit",))
    proc = _start(run.path.parent, "executor.workers=2")
    _wait_markers(run.path / "emit", 1, proc)  # in the write round
    workers = local_workers(proc.pid)
    assert workers, "no worker processes found"
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    assert files(run.path / "emit") == files(ref_dir)
    m = json.loads((run.path / "emit" / "manifest.json").read_text())
    assert counts(m) == counts(ref)


def test_a_killed_ray_worker_costs_only_its_shard(real_run, reference, tmp_path, ray_address):
    ref_dir, ref = reference
    run = copy_run(real_run, tmp_path, without=("emit",))
    proc = _start(run.path.parent, "executor.kind=ray", f"executor.address={ray_address}")
    _wait_markers(run.path / "emit", 1, proc)  # in the write round
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while not workers and time.monotonic() < deadline:
        workers = processes(0, "ray::_run_job")
        time.sleep(0.005)
    assert workers, "no busy Ray worker found"
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    assert files(run.path / "emit") == files(ref_dir)
    m = json.loads((run.path / "emit" / "manifest.json").read_text())
    assert counts(m) == counts(ref)
