"""teacher.mode=batch against the fake Batch API (tests/fake_batch_api.py): request files within
the limits, the journal that lets a killed datagen resume without submitting an item twice,
expired / failed / cancelled batches, per-request errors, the same records and cache as online
mode, the budget at the batch price, and the offline vllm run-batch path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from conftest import datagen
from fake_batch_api import FakeBatchAPI
from fake_openai import FakeOpenAI, ServerThread
from test_generate import gen_args, read_jsonl

GEN = "runs/default/generate"
BATCH = [
    "teacher.mode=batch",
    "teacher.batch.poll_initial_s=0.05",
    "teacher.batch.poll_max_s=0.2",
    "teacher.batch.max_requests_per_file=12",
]


def manifest(root: Path) -> dict:
    return json.loads((root / GEN / "manifest.json").read_text())


def outputs(root: Path) -> list[dict]:
    return read_jsonl(root / GEN / "outputs.jsonl")


def journal(root: Path) -> list[dict]:
    return read_jsonl(root / GEN / "batch/journal.jsonl")


def kill_when(cmd: list[str], cwd: Path, ready: Callable[[], bool]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *cmd],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ready() and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "datagen ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_batches_give_the_same_records_as_online_and_split_within_the_limits(tmp_path):
    fake = FakeBatchAPI()
    (tmp_path / "b").mkdir()
    (tmp_path / "o").mkdir()
    with ServerThread(fake) as srv:
        r = datagen(*gen_args(srv.url, "plan.n=30", *BATCH), cwd=tmp_path / "b")
        assert r.returncode == 0, r.stderr
        online = FakeOpenAI()
        with ServerThread(online) as osrv:
            r = datagen(*gen_args(osrv.url, "plan.n=30"), cwd=tmp_path / "o")
            assert r.returncode == 0, r.stderr
    b, o = outputs(tmp_path / "b"), outputs(tmp_path / "o")
    assert sorted(d["id"] for d in b) == sorted(d["id"] for d in o)
    by_id = {d["id"]: d for d in o}
    for d in b:  # the same record, field for field (but its timing)
        same = {k: v for k, v in by_id[d["id"]].items() if k not in ("latency_s", "created_at")}
        assert {k: v for k, v in d.items() if k not in ("latency_s", "created_at")} == same
    files = [e for e in journal(tmp_path / "b") if e["event"] == "file"]
    assert [e["items"] for e in files] == [12, 12, 6] and fake.creates == 3
    for e in files:  # the request files are Batch API input: custom_id = the item id
        lines = read_jsonl(tmp_path / "b" / GEN / "batch" / e["file"])
        assert all(x["url"] == "/v1/chat/completions" and x["method"] == "POST" for x in lines)
        assert all(x["body"]["model"] == "fake-model" for x in lines)
        assert {x["custom_id"] for x in lines} <= set(by_id)
    assert all(f["purpose"] == "batch" for f in list(fake.files.values())[:3])
    assert set(fake.submitted.values()) == {1}
    m = manifest(tmp_path / "b")
    assert (m["status"], m["items"], m["pending"], m["this_run"]["mode"]) == (
        "finished",
        30,
        0,
        "batch",
    )
    assert [x["status"] for x in m["this_run"]["batches"]] == ["completed"] * 3


def test_a_kill_while_polling_resumes_the_same_batches(tmp_path):
    fake = FakeBatchAPI(per_poll=2)
    with ServerThread(fake) as srv:
        args = gen_args(srv.url, "plan.n=30", *BATCH)
        kill_when(args, tmp_path, lambda: fake.creates == 3 and fake.retrieves >= 6)
        assert fake.total < 30  # killed with batches in progress
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert fake.creates == 3 and set(fake.submitted.values()) == {1}
    assert len(outputs(tmp_path)) == 30 and sum(fake.after_success.values()) == 0


def test_a_kill_while_a_batch_is_being_created_never_submits_it_twice(tmp_path):
    """The create request reaches the server but its answer never comes back: the journal
    says 'submitting', and the resumed run finds the batch by its input file."""
    fake = FakeBatchAPI(batch_script=lambda n: "hang" if n == 0 else "complete")
    with ServerThread(fake) as srv:
        args = gen_args(srv.url, "plan.n=10", *BATCH)
        kill_when(args, tmp_path, lambda: fake.creates == 1)
        events = [e["event"] for e in journal(tmp_path)]
        assert events[-1] == "submitting"
        fake.batches["batch_0000"]["_script"] = "complete"  # it runs normally from now on
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert fake.creates == 1 and set(fake.submitted.values()) == {1}
    assert len(outputs(tmp_path)) == 10


def test_expired_and_failed_batches_have_their_unfinished_items_resubmitted(tmp_path):
    scripts = {0: "expire:5", 1: "fail"}
    fake = FakeBatchAPI(batch_script=lambda n: scripts.get(n, "complete"))
    with ServerThread(fake) as srv:
        r = datagen(*gen_args(srv.url, "plan.n=24", *BATCH), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    out = outputs(tmp_path)
    assert len(out) == 24 and len({d["id"] for d in out}) == 24
    # the 5 answered before the expiry were submitted once; the other 7 twice; the failed
    # batch's 12 twice; nothing answered was asked again
    counts = sorted(fake.submitted.values())
    assert counts == [1] * 5 + [2] * 19 and sum(fake.after_success.values()) == 0
    statuses = [x["status"] for x in manifest(tmp_path)["this_run"]["batches"]]
    assert statuses[:2] == ["expired", "failed"] and set(statuses[2:]) == {"completed"}


def test_a_batch_that_keeps_failing_ends_as_failures_with_the_reason(tmp_path):
    fake = FakeBatchAPI(batch_script=lambda n: "fail")
    with ServerThread(fake) as srv:
        r = datagen(*gen_args(srv.url, "plan.n=5", *BATCH, "teacher.max_retries=1"), cwd=tmp_path)
    assert r.returncode == 2 and "nothing succeeded" in r.stderr
    failures = read_jsonl(tmp_path / GEN / "failures.jsonl")
    assert len(failures) == 5 and fake.creates == 2
    assert all(
        f["reason"] == "batch_failed: not answered in 2 batches (invalid_request: model not found)"
        for f in failures
    )


def test_a_cancelled_batch_has_its_unfinished_items_resubmitted(tmp_path):
    fake = FakeBatchAPI(per_poll=3)
    with ServerThread(fake) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *gen_args(srv.url, "plan.n=12", *BATCH)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not fake.batches.get("batch_0000", {}).get(
            "_results"
        ):
            time.sleep(0.01)
        # someone cancels it (the dashboard, another tool): a real HTTP call to the server
        req = urllib.request.Request(f"{srv.url}/batches/batch_0000/cancel", method="POST")
        urllib.request.urlopen(req, timeout=5).read()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert len(outputs(tmp_path)) == 12
    batches = manifest(tmp_path)["this_run"]["batches"]
    assert batches[0]["status"] == "cancelled" and batches[0]["resubmitted"] > 0
    assert sum(fake.after_success.values()) == 0


def test_request_errors_fail_or_retry_as_online(tmp_path):
    """A 400 in the output file is a failure with the reason; a 500 is asked again."""

    def script(key: str) -> list[str]:
        return [["400"] * 9, ["500"], []][int(key, 16) % 3]

    fake = FakeBatchAPI(script=script)
    with ServerThread(fake) as srv:
        r = datagen(*gen_args(srv.url, "plan.n=18", *BATCH), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    failures = read_jsonl(tmp_path / GEN / "failures.jsonl")
    bad = [k for k in fake.attempts if int(k, 16) % 3 == 0]
    assert len(failures) == len(bad) > 0
    assert all(f["reason"] == "http_400: fake 400" for f in failures)
    assert len(outputs(tmp_path)) == 18 - len(bad)
    retried = [k for k in fake.attempts if int(k, 16) % 3 == 1]
    assert all(fake.attempts[k] == 2 for k in retried)


def test_switching_mode_does_not_pay_twice(tmp_path):
    fake = FakeBatchAPI(latency_s=0.1)  # one server for both modes: the same counters
    with ServerThread(fake) as srv:
        online = gen_args(srv.url, "plan.n=20", "teacher.concurrency=2")
        kill_when(online, tmp_path, lambda: sum(fake.successes.values()) >= 6)
        done_online = {d["id"] for d in outputs(tmp_path)}
        assert 0 < len(done_online) < 20
        r = datagen(*gen_args(srv.url, "plan.n=20", *BATCH), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        # what was answered online was not put into a batch; at most the requests in flight
        # at the kill (answered, never received) were asked again
        assert not set(fake.submitted) & done_online
        assert len(fake.submitted) == 20 - len(done_online)
        assert sum(fake.after_success.values()) <= 2
        before = dict(fake.attempts)
        # a larger plan redoes generate: the 20 answers come from the cache, 6 are new
        r = datagen(*gen_args(srv.url, "plan.n=26", *BATCH), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert len(outputs(tmp_path)) == 26
    assert sum(fake.attempts.values()) - sum(before.values()) == 6
    assert all(fake.attempts[k] == n for k, n in before.items())


def test_the_budget_holds_in_batch_mode_at_the_batch_price(tmp_path):
    """$1000/M output tokens online, so $500/M in batch; 75 tokens an answer ($0.0375),
    max_tokens=100 ($0.05 worst case). A $0.40 cap admits 8 requests' worst cases."""
    fake = FakeBatchAPI(completion_tokens=75)
    price = "teacher.prices={fake-model: {input_per_mtok: 0, output_per_mtok: 1000}}"
    with ServerThread(fake) as srv:
        args = gen_args(srv.url, "plan.n=20", price, "teacher.max_tokens=100", *BATCH)
        r = datagen(*args, "budget.max_cost_usd=0.4", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        m = manifest(tmp_path)
        billed = round(sum(fake.successes.values()) * 75 * 500 / 1e6, 6)
        assert m["status"] == "stopped: budget" and billed <= 0.4
        assert m["run_spent_usd"] == billed  # usage at the batch price, through the ledger
        # 8 worst cases fit first; once that batch is paid ($0.30), 2 more fit ($0.40)
        assert m["items"] == 10 and m["pending"] == 10
        r = datagen(*args, "budget.max_cost_usd=5", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    m = manifest(tmp_path)
    assert (m["status"], m["items"]) == ("finished", 20)
    assert set(fake.submitted.values()) == {1}


def test_offline_vllm_run_batch_files_are_written_then_imported(tmp_path):
    local = tmp_path / "gpu-box"
    fake = FakeBatchAPI()  # plays vllm run-batch: the same output format
    args = [
        "run",
        "stage=generate",
        "plan.n=15",
        "teacher.model=fake-model",
        *BATCH,
        f"teacher.batch.local_dir={local}",
    ]
    r = datagen(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = manifest(tmp_path)
    assert m["status"] == "waiting: batch" and m["pending"] == 15
    assert "vllm run-batch -i" in m["next"] and "results-00000.jsonl" in m["next"]
    requests = sorted((local / "default").glob("requests-*.jsonl"))  # a folder per run
    assert [p.name for p in requests] == ["requests-00000.jsonl", "requests-00001.jsonl"]
    for p in requests:  # what vllm run-batch writes for each
        out = p.with_name(p.name.replace("requests-", "results-"))
        out.write_bytes(fake.results_for(p.read_bytes()))
    r = datagen(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = manifest(tmp_path)
    assert (m["status"], m["items"], m["pending"]) == ("finished", 15, 0)
    assert all(d["text"].startswith("A fake answer") for d in outputs(tmp_path))


def test_the_batch_api_key_is_sent_but_stored_nowhere(tmp_path):
    secret = "sk-test-BATCH-4f1c2a9e77"
    fake = FakeBatchAPI(script=lambda key: ["400"] * 9 if int(key, 16) % 2 else [])
    with ServerThread(fake) as srv:
        r = datagen(
            *gen_args(srv.url, "plan.n=8", *BATCH), cwd=tmp_path, env={"OPENAI_API_KEY": secret}
        )
        assert r.returncode == 0, r.stderr
    assert f"Bearer {secret}" in fake.auth_headers
    for p in (tmp_path / "runs").rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p
    assert secret not in r.stdout + r.stderr and os.environ.get("OPENAI_API_KEY") != secret
