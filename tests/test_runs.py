"""The run directory: atomic files, durable JSONL appends, the run lock, superseded outputs and
the temp files a killed write leaves."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import datagen
from fake_openai import ServerThread
from run_testdata import GatedOpenAI, RealTextOpenAI, copy_run, finished_run, run_args

from pipeline.errors import DatagenError
from pipeline.records import Document, Failure, PlanItem
from pipeline.runs import JsonlAppender, atomic_write_text, read_jsonl


def test_outputs_are_readable_like_plainly_created_files(tmp_path):
    atomic_write_text(tmp_path / "x.json", "{}")
    plain = tmp_path / "plain"
    plain.write_text("")
    mode = stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(plain).st_mode)  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_appender_cuts_a_partial_last_line_left_by_a_kill(tmp_path):
    path = tmp_path / "f.jsonl"
    with JsonlAppender(path) as out:
        out.write(Failure(id="a", reason="x", attempts=1))
    with open(path, "ab") as f:
        f.write(b'{"id": "b", "reas')  # what a kill -9 mid-write leaves
    with JsonlAppender(path) as out:
        out.write(Failure(id="c", reason="y", attempts=2))
    assert [r.id for r in read_jsonl(path, Failure)] == ["a", "c"]


def test_a_bad_record_is_one_error_naming_file_and_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"id": "a", "reason": "x", "attempts": 1}\n{"id": "b"}\n')
    with pytest.raises(DatagenError, match=r"f\.jsonl:2: bad record \(reason: Field required\)"):
        list(read_jsonl(path, Failure))


# --------------------------------------------------------------------------- the run lock
def _start(args: list[str], cwd: Path, log: str) -> subprocess.Popen[bytes]:
    """`datagen` in the background, its stderr to ``cwd/<log>`` (a file: never a full pipe)."""
    with open(cwd / log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(tmp_path):
    fake = GatedOpenAI()
    with ServerThread(fake) as srv:
        args = ["run", "stage=generate", f"teacher.base_url={srv.url}", "teacher.model=fake"]
        args += ["plan.n=30", "teacher.concurrency=4"]
        first = _start(args, tmp_path, "first.err")
        _wait_for(lambda: fake.waiting > 0, "the first run's requests")  # it is mid-generate
        second = _start(args, tmp_path, "second.err")
        # refused at once; without a lock it would run and hang on the gate like the first
        with contextlib.suppress(subprocess.TimeoutExpired):
            second.wait(timeout=120)
        fake.gate.set()
        first.wait(timeout=300)
        second.wait(timeout=300)
    err2 = (tmp_path / "second.err").read_text()
    assert first.returncode == 0, (tmp_path / "first.err").read_text()
    assert second.returncode == 2, err2
    line = err2.strip()
    assert len(line.splitlines()) == 1, err2
    assert "in use by another datagen run" in line
    assert f"pid {first.pid} on {socket.gethostname()}, since 20" in line
    # nothing duplicated, nothing paid twice
    ids = [r.id for r in read_jsonl(tmp_path / "runs/default/generate/outputs.jsonl", Document)]
    assert len(ids) == len(set(ids)) == 30
    assert fake.total == 30 and set(fake.attempts.values()) == {1}
    assert (tmp_path / "runs/default/.lock").read_text() == ""  # released on exit


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(tmp_path):
    fake = GatedOpenAI()
    with ServerThread(fake) as srv:
        args = ["run", "stage=generate", f"teacher.base_url={srv.url}", "teacher.model=fake"]
        args += ["plan.n=6"]
        killed = _start(args, tmp_path, "killed.err")
        _wait_for(lambda: fake.waiting > 0, "the run's requests")
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        left = json.loads((tmp_path / "runs/default/.lock").read_text())
        assert left["pid"] == killed.pid and left["host"] == socket.gethostname()
        fake.gate.set()
        r = datagen(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    note = " ".join(r.stderr.split())
    assert f"took over the lock left by pid {killed.pid} on {socket.gethostname()}" in note
    outputs = read_jsonl(tmp_path / "runs/default/generate/outputs.jsonl", Document)
    assert len({d.id for d in outputs}) == 6


# --------------------------------------------------------------------------- superseding
def test_redoing_a_stage_twice_keeps_both_earlier_outputs(tmp_path):
    assert datagen("run", "stage=plan", "plan.n=5", cwd=tmp_path).returncode == 0
    for _ in range(2):  # force=true twice: the same stage and the same hash both times
        r = datagen("run", "stage=plan", "plan.n=5", "force=true", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    old = sorted((tmp_path / "runs/default/.superseded").glob("plan-*"))
    assert len(old) == 2, old
    assert all(len(list(read_jsonl(p / "plan.jsonl", PlanItem))) == 5 for p in old)


# --------------------------------------------------------------------------- stale temp files
@pytest.fixture(scope="module")
def teacher():
    with ServerThread(RealTextOpenAI()) as srv:
        yield srv


@pytest.fixture(scope="module")
def finished(teacher, tmp_path_factory) -> Path:
    """The cwd of a run whose every stage finished (runs/default)."""
    cwd = tmp_path_factory.mktemp("finished")
    finished_run(cwd, teacher.url)
    return cwd


# `datagen` whose process is killed (SIGKILL) between an atomic write's temp file and its
# rename, for the first file named argv[1]*: exactly what a kill -9 mid-write leaves
KILL_AT_RENAME = """
import os, signal, sys
prefix, sys.argv = sys.argv[1], ["datagen", *sys.argv[2:]]
real_replace = os.replace
def replace(src, dst, *args, **kw):
    if os.path.basename(str(src)).startswith(prefix):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kw)
os.replace = replace
from pipeline.cli import main
main()
"""


def test_a_rerun_removes_the_temp_file_a_kill_9_mid_write_left(teacher, finished, tmp_path):
    run = copy_run(finished, tmp_path)
    args = run_args(teacher.url, "stage=emit")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_RENAME, ".tokenizer.json.", *args, "force=true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = list((run / "emit").glob(".tokenizer.json.*.tmp"))
    assert len(left) == 1 and left[0].stat().st_size > 0  # the whole temp, never renamed
    assert json.loads((run / "emit/manifest.json").read_text())["status"] == "running"
    r = datagen(*args, cwd=tmp_path)  # same config: emit resumes in place
    assert r.returncode == 0, r.stderr
    assert list(run.rglob("*.tmp")) == []
    assert "emit: removed 1 temp file(s) left by a killed run" in " ".join(r.stderr.split())
    assert json.loads((run / "emit/manifest.json").read_text())["status"] == "finished"


def test_a_redone_stage_leaves_no_temp_file_behind(teacher, finished, tmp_path):
    run = copy_run(finished, tmp_path)
    # the name atomic_write_bytes gives a web shard's temp file (mkstemp)
    stale = run / "web" / ".part-00000.jsonl.zst.k9x2m1qz.tmp"
    stale.write_bytes(b"half a shard")
    r = datagen(*run_args(teacher.url, "stage=web", "force=true"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert list(run.rglob("*.tmp")) == []  # not in web/, not in the superseded copy either
    assert "web: removed 1 temp file(s)" in " ".join(r.stderr.split())
    assert len(list((run / ".superseded").glob("web-*"))) == 1
