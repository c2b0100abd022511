"""Many endpoints and behaving well under limits: a replica that dies mid-run, a 429 that
pauses everyone sending to its endpoint, x-ratelimit headers that slow the sender before the
server says 429, per-endpoint counts in the manifest, and URLs that are not URLs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import datagen
from fake_openai import FakeOpenAI, ServerThread
from test_generate import FAST, gen_args, read_jsonl

from pipeline.teacher.limits import parse_reset

GEN = "runs/default/generate"


def manifest(root: Path) -> dict:
    return json.loads((root / GEN / "manifest.json").read_text())


def test_killing_one_of_two_servers_mid_run_every_item_still_completes(tmp_path):
    a, b = FakeOpenAI(latency_s=0.05), FakeOpenAI(latency_s=0.05)
    with ServerThread(b) as srv_b:
        srv_a = ServerThread(a).__enter__()
        urls = f"teacher.base_url=[{srv_a.url},{srv_b.url}]"
        args = ["run", "stage=generate", urls, "teacher.model=fake-model", "plan.n=80", *FAST]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while a.total < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        srv_a.__exit__()  # the replica dies: its port refuses connections from now on
        served_by_a = a.total
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    outputs = read_jsonl(tmp_path / GEN / "outputs.jsonl")
    assert len({o["id"] for o in outputs}) == 80
    assert not read_jsonl(tmp_path / GEN / "failures.jsonl")
    ends = manifest(tmp_path)["this_run"]["endpoints"]
    assert [e["url"] for e in ends] == [srv_a.url, srv_b.url]
    dead, alive = ends
    assert dead["failures"] > 0 and dead["cooldowns"] >= 1 and dead["requests"] >= served_by_a
    assert alive["failures"] == 0 and alive["ok"] == b.total
    assert dead["ok"] + alive["ok"] == 80


def test_requests_go_to_the_least_loaded_endpoint_and_are_counted(tmp_path):
    a, b = FakeOpenAI(latency_s=0.02), FakeOpenAI(latency_s=0.02)
    with ServerThread(a) as sa, ServerThread(b) as sb:
        r = datagen(*gen_args(f"[{sa.url},{sb.url}]", "plan.n=40"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    ends = manifest(tmp_path)["this_run"]["endpoints"]
    assert [e["requests"] for e in ends] == [a.total, b.total]
    assert a.total + b.total == 40 and min(a.total, b.total) >= 10
    assert manifest(tmp_path)["base_url"] == [sa.url, sb.url]


def test_a_429_with_retry_after_pauses_every_request_to_that_endpoint(tmp_path):
    """One request gets a 429 asking for 1 s of quiet: the server counts what arrives in that
    second; only requests already on their way when the 429 left may arrive."""
    first = {}

    def script(key: str) -> list[str]:
        first.setdefault("key", key)
        return ["429"] if key == first["key"] else []

    fake = FakeOpenAI(latency_s=0.02, script=script)
    with ServerThread(fake) as srv:
        r = datagen(*gen_args(srv.url, "plan.n=60", "teacher.concurrency=4"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert fake.quiet_until > 0  # the 429 was sent
    assert fake.early < 4, fake.early  # at most those in flight (4 workers)
    assert len(read_jsonl(tmp_path / GEN / "outputs.jsonl")) == 60
    assert manifest(tmp_path)["this_run"]["endpoints"][0]["rate_limited"] == 1


def test_x_ratelimit_headers_slow_the_sender_before_the_server_says_429(tmp_path):
    fake = FakeOpenAI(rate_window=(10, 0.5))  # 10 requests per half second
    with ServerThread(fake) as srv:
        r = datagen(*gen_args(srv.url, "plan.n=40", "teacher.concurrency=4"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert len(read_jsonl(tmp_path / GEN / "outputs.jsonl")) == 40
    assert fake.rate_limited == 0  # never went past what the headers said was left


@pytest.mark.parametrize(
    "url,needle",
    [
        ("http://gpu1:8000/v1,http://gpu2:8000/v1", "is not one URL; for several endpoints"),
        ("[http://127.0.0.1:8000/v1, ftp://gpu2/v1]", "'ftp://gpu2/v1' is not an http(s)://"),
        ("http://gpu1:80x0/v1", "has a port that is not a number"),
        ("[http://127.0.0.1:8000/v1,http://127.0.0.1:8000/v1]", "names one endpoint twice"),
    ],
)
def test_a_url_that_is_not_one_url_is_a_one_line_config_error(tmp_path, url, needle):
    r = datagen("run", "stage=generate", f"teacher.base_url={url}", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("datagen: error: teacher.base_url: "), lines
    assert needle in lines[0]
    assert not (tmp_path / "runs").exists()  # refused before anything started


@pytest.mark.parametrize(
    "value,seconds",
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5)],
)
def test_ratelimit_reset_durations_are_read(value, seconds):
    assert parse_reset(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "", "1x", "-3", "nan"])
def test_an_unreadable_ratelimit_reset_is_ignored(value):
    assert parse_reset(value) is None
