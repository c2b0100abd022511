"""Teacher answers and endpoints that must fail one item with a reason (never the whole run),
and the key-safety rules: what is sent where, and what is never stored or printed.

The real stages run against the fake OpenAI-compatible server (tests/fake_openai.py).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import datagen
from fake_openai import FakeOpenAI, ServerThread
from test_generate import FAST, gen_args, read_jsonl

GEN = "runs/default/generate"


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_odd_answers_fail_one_item_each_and_a_rerun_does_not_ask_again(tmp_path):
    """A Retry-After that is neither seconds nor a date, a usage field that is not a number,
    a lone surrogate in the content: none of them may abort the run."""
    kinds = [["429bad"], ["badusage"] * 9, ["surrogate"], []]
    order: dict[str, int] = {}  # requests get the kinds in turn, whatever their keys hash to

    def kind(key: str) -> list[str]:
        return kinds[order.setdefault(key, len(order)) % 4]

    fake = FakeOpenAI(script=kind)
    with ServerThread(fake) as srv:
        args = gen_args(srv.url, "plan.n=16", *FAST)
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        seen = {tuple(kind(k)) for k in fake.attempts}
        assert len(seen) == 4  # every kind occurred
        outputs, failures = (
            read_jsonl(tmp_path / GEN / "outputs.jsonl"),
            read_jsonl(tmp_path / GEN / "failures.jsonl"),
        )
        n_bad = sum(kind(k) == kinds[1] for k in fake.attempts)
        assert len(failures) == n_bad and len(outputs) == 16 - n_bad
        assert all(
            f["reason"].startswith("malformed_response: usage.prompt_tokens is not a token count")
            for f in failures
        )
        odd = [o for o in outputs if "lone surrogate" in o["text"]]
        assert odd and all("? (a lone surrogate)" in o["text"] for o in odd)
        before = fake.total
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake.total == before  # failures are recorded, not re-requested on every run


def test_timeout_s_bounds_a_whole_attempt_even_when_the_body_trickles(tmp_path):
    fake = FakeOpenAI(script=lambda key: ["trickle"] * 9)
    fake.trickle_s = 0.1  # ~60 pieces: each arrives well within 1 s, the whole takes ~6 s
    with ServerThread(fake) as srv:
        r = datagen(
            *gen_args(srv.url, "plan.n=2", "teacher.timeout_s=1", "teacher.max_retries=0"),
            cwd=tmp_path,
        )
    assert r.returncode == 2 and "nothing succeeded" in r.stderr
    failures = read_jsonl(tmp_path / GEN / "failures.jsonl")
    assert [f["reason"] for f in failures] == [
        "timeout: no complete answer within teacher.timeout_s=1s"
    ] * 2


def test_a_connection_reset_is_recorded_as_a_connection_error(tmp_path):
    fake = FakeOpenAI(script=lambda key: ["reset"] * 9)
    with ServerThread(fake) as srv:
        r = datagen(*gen_args(srv.url, "plan.n=2", *FAST), cwd=tmp_path)
    reasons = [f["reason"] for f in read_jsonl(tmp_path / GEN / "failures.jsonl")]
    assert len(reasons) == 2
    assert all(x.startswith("connection_error: ") and "timeout" not in x for x in reasons), reasons
    assert r.returncode == 2  # nothing succeeded


def test_a_key_quoted_in_an_error_message_is_stored_and_printed_nowhere(tmp_path):
    secret = "sk-test-DO-NOT-LEAK-4f1c2a9e"
    other = "sk-live-0123456789abcdefXYZ"  # key-shaped, quoted by the server as well
    fake = FakeOpenAI(script=lambda key: ["401"])
    with ServerThread(fake) as srv:
        r = datagen(
            *gen_args(srv.url, "plan.n=3", "teacher.api_key_env=MY_KEY", *FAST),
            cwd=tmp_path,
            env={"MY_KEY": secret},
        )
    assert f"Bearer {secret}" in fake.auth_headers
    for p in files_under(tmp_path / "runs"):
        data = p.read_bytes()
        assert secret.encode() not in data and other.encode() not in data, p
    failures = read_jsonl(tmp_path / GEN / "failures.jsonl")
    assert len(failures) == 3
    assert all("Incorrect API key provided: [REDACTED]" in f["reason"] for f in failures)
    assert r.returncode == 2 and "http_401" in r.stderr  # the error line quotes a reason
    for text in (r.stdout, r.stderr):
        assert secret not in text and other not in text


@pytest.mark.parametrize("as_list", [False, True])
def test_credentials_in_base_url_are_refused_in_one_line_and_stored_nowhere(tmp_path, as_list):
    secret = "sk-url-secret-99ab77cd"
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        url = srv.url.replace("http://", f"http://user:{secret}@")
        url = f"[{srv.url},{url}]" if as_list else url
        r = datagen(*gen_args(url, "plan.n=2"), cwd=tmp_path)
    assert r.returncode == 2 and fake.total == 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("datagen: error: teacher.base_url: credentials")
    assert secret not in r.stdout + r.stderr
    for p in files_under(tmp_path):
        assert secret.encode() not in p.read_bytes(), p


def non_loopback_ip() -> str:
    """This machine's address on its outbound interface (a UDP connect sends nothing)."""
    for probe in ("203.0.113.1", "10.255.255.255"):  # TEST-NET-3, private: never reached
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))
            except OSError:
                continue
            ip = s.getsockname()[0]
        if not ip.startswith("127."):
            return ip
    pytest.skip("no non-loopback interface on this machine")


def test_the_key_goes_to_a_non_loopback_http_host_only_when_allowed(tmp_path):
    secret = "sk-test-plain-http-5e6f7a8b"
    fake = FakeOpenAI()
    with ServerThread(fake, host=non_loopback_ip()) as srv:
        args = gen_args(srv.url, "plan.n=2")
        r = datagen(*args, cwd=tmp_path, env={"OPENAI_API_KEY": secret})
        assert r.returncode == 2 and fake.total == 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "is not sent to" in lines[0] and "over plain http" in lines[0]
        assert "teacher.allow_insecure_key=true" in lines[0]
        # no key set: nothing to protect, the run goes ahead
        r = datagen(*args, cwd=tmp_path, env={"OPENAI_API_KEY": ""})
        assert r.returncode == 0, r.stderr
        assert fake.auth_headers == {"Bearer not-needed"}
        # the user says so explicitly: the key is sent
        r = datagen(
            *args,
            "run.name=allowed",
            "teacher.allow_insecure_key=true",
            "teacher.cache=false",
            cwd=tmp_path,
            env={"OPENAI_API_KEY": secret},
        )
        assert r.returncode == 0, r.stderr
        assert f"Bearer {secret}" in fake.auth_headers


def test_annotate_progress_counts_unparseable_ratings_as_failed(tmp_path):
    fake = FakeOpenAI()  # its answers hold no score line
    with ServerThread(fake) as srv:
        r = datagen(
            "run",
            "stage=annotate",
            f"teacher.base_url={srv.url}",
            "teacher.model=fake-model",
            "plan.n=8",
            "annotate.n=8",
            cwd=tmp_path,
        )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "runs/default/annotate/manifest.json").read_text())
    assert (m["rated"], m["failed"]) == (0, 8)
    bar = [ln for ln in r.stderr.splitlines() if ln.startswith("annotate ")]
    assert bar and "ok=0 failed=8" in bar[-1], bar


def test_annotate_where_every_request_failed_is_an_error_naming_the_reason(tmp_path):
    fine, broken = FakeOpenAI(), FakeOpenAI(script=lambda key: ["400"])
    with ServerThread(fine) as ok_srv, ServerThread(broken) as bad_srv:
        r = datagen(*gen_args(ok_srv.url, "plan.n=4"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        # generate's output does not depend on the endpoint: only annotate runs, and fails
        r = datagen(
            "run",
            "stage=annotate",
            f"teacher.base_url={bad_srv.url}",
            "teacher.model=fake-model",
            "plan.n=4",
            "annotate.n=4",
            *FAST,
            cwd=tmp_path,
        )
    assert r.returncode == 2 and broken.total == 4 and fine.total == 4
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("datagen: error: annotate: nothing succeeded: 4 requests failed")
    assert "http_400 x4" in err
    m = json.loads((tmp_path / "runs/default/annotate/manifest.json").read_text())
    assert m["status"] == "failed"
