"""generate against a fake OpenAI-compatible server: fault injection, resume, budget, secrets.

The fake server is for fault injection only; real generation is tested in test_e2e_teacher.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, datagen
from fake_openai import FakeOpenAI, ServerThread, request_key

SCRIPTS = [
    [],  # ok
    ["429"],  # rate limited once, Retry-After: 1
    ["500", "500"],  # two server errors
    ["slow"],  # slower than teacher.timeout_s
    ["malformed"],  # truncated JSON body
    ["drop"],  # connection closed without a response
    ["always500"] * 20,  # never recovers -> failure with reason
    ["empty", "429"],  # empty completion, then rate limited
]
FAST = [
    "teacher.max_retries=3",
    "teacher.backoff_initial_s=0.05",
    "teacher.backoff_max_s=0.2",
    "teacher.timeout_s=1",
    "teacher.concurrency=8",
]


def script_for(key: str) -> list[str]:
    return SCRIPTS[int(key, 16) % len(SCRIPTS)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def gen_args(url: str, *extra: str) -> list[str]:
    return ["run", "stage=generate", f"teacher.base_url={url}", "teacher.model=fake-model", *extra]


def test_every_item_ends_as_output_or_failure_and_nothing_is_requested_after_success(tmp_path):
    fake = FakeOpenAI(slow_s=3.0, script=script_for)
    with ServerThread(fake) as srv:
        r = datagen(*gen_args(srv.url, "plan.n=40", *FAST), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        gen = tmp_path / "runs/default/generate"
        plan_ids = {p["id"] for p in read_jsonl(tmp_path / "runs/default/plan/plan.jsonl")}
        outputs, failures = read_jsonl(gen / "outputs.jsonl"), read_jsonl(gen / "failures.jsonl")
        out_ids, fail_ids = [o["id"] for o in outputs], [f["id"] for f in failures]
        assert len(out_ids) == len(set(out_ids))
        assert set(out_ids) | set(fail_ids) == plan_ids
        assert not set(out_ids) & set(fail_ids)
        # every fault kind occurred, and only the never-recovering one ends as a failure
        kinds = {tuple(script_for(k)) for k in fake.attempts}
        assert len(kinds) == len(SCRIPTS)
        never = [k for k in fake.attempts if script_for(k) == SCRIPTS[6]]
        assert len(failures) == len(never) > 0
        assert all(f["reason"].startswith("http_500") and f["attempts"] == 4 for f in failures)
        assert all(o["text"].startswith("A fake answer") for o in outputs)  # never empty
        for k, n in fake.attempts.items():
            s = script_for(k)
            if s != SCRIPTS[6]:
                assert n == len(s) + 1, (k, s, n)  # retried exactly until success
        assert sum(fake.after_success.values()) == 0
        manifest = json.loads((gen / "manifest.json").read_text())
        assert manifest["failed"] == len(failures) and manifest["items"] == len(outputs)
        assert manifest["cost_usd"] is None  # fake-model has no price: unknown, not 0
        assert manifest["summary"]["cost_usd"] == "unknown"

        # rerun: finished stage is skipped; retry_failed reruns only the failures
        before = fake.total
        r = datagen(*gen_args(srv.url, "plan.n=40", *FAST), cwd=tmp_path)
        assert r.returncode == 0 and fake.total == before
        r = datagen(*gen_args(srv.url, "plan.n=40", "retry_failed=true", *FAST), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake.total - before == 4 * len(never)  # only failed items, 4 attempts each
        assert sum(fake.after_success.values()) == 0
        assert len(read_jsonl(gen / "failures.jsonl")) == len(never)
        assert len(read_jsonl(gen / "outputs.jsonl")) == len(outputs)


def test_retry_failed_moves_recovered_items_to_outputs(tmp_path):
    flaky = {"fail": True}

    def script(key: str) -> list[str]:
        return ["always500"] * 4 if flaky["fail"] and int(key, 16) % 3 == 0 else []

    fake = FakeOpenAI(script=script)
    with ServerThread(fake) as srv:
        args = gen_args(srv.url, "plan.n=12", *FAST)
        assert datagen(*args, cwd=tmp_path).returncode == 0
        gen = tmp_path / "runs/default/generate"
        n_failed = len(read_jsonl(gen / "failures.jsonl"))
        assert n_failed > 0
        flaky["fail"] = False
        fake.attempts.clear()
        r = datagen(*args, "retry_failed=true", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert read_jsonl(gen / "failures.jsonl") == []
        assert len(read_jsonl(gen / "outputs.jsonl")) == 12
        # first run: successes + 4 attempts per failure; retry: one request per failed item
        assert fake.total == (12 - n_failed) + n_failed * 4 + n_failed


def test_non_retryable_error_fails_at_once_and_nothing_succeeded_is_an_error(tmp_path):
    fake = FakeOpenAI(script=lambda key: ["400"] * 2)
    with ServerThread(fake) as srv:
        r = datagen(*gen_args(srv.url, "plan.n=3", *FAST), cwd=tmp_path)
        # every request failed: an error naming the top reason, not "finished"
        assert r.returncode == 2
        err = r.stderr.strip().splitlines()[-1]
        assert err.startswith("datagen: error: generate: nothing succeeded: 3 items failed")
        assert "http_400 x3" in err and "retry_failed=true" in err
        gen = tmp_path / "runs/default/generate"
        failures = read_jsonl(gen / "failures.jsonl")
        assert len(failures) == 3 and all(f["reason"].startswith("http_400") for f in failures)
        assert fake.total == 3
        assert json.loads((gen / "manifest.json").read_text())["status"] == "failed"
        # a plain rerun asks nothing again and says the same; retry_failed retries them
        r = datagen(*gen_args(srv.url, "plan.n=3", *FAST), cwd=tmp_path)
        assert r.returncode == 2 and "nothing succeeded" in r.stderr and fake.total == 3
        r = datagen(*gen_args(srv.url, "plan.n=3", "retry_failed=true", *FAST), cwd=tmp_path)
        assert r.returncode == 2 and fake.total == 6
        r = datagen(*gen_args(srv.url, "plan.n=3", "retry_failed=true", *FAST), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        m = json.loads((gen / "manifest.json").read_text())
        assert (m["status"], m["items"], m["failed"], m["pending"]) == ("finished", 3, 0, 0)


def kill_midway(cmd: list[str], cwd: Path, outputs: Path, min_lines: int) -> None:
    env = {**os.environ}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *cmd],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if outputs.exists() and len(outputs.read_bytes().splitlines()) >= min_lines:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_9_then_rerun_matches_an_uninterrupted_run(tmp_path):
    fake = FakeOpenAI(latency_s=0.1)
    with ServerThread(fake) as srv:
        base = gen_args(srv.url, "plan.n=40", "teacher.concurrency=4")
        crashed = tmp_path / "runs/crashed/generate/outputs.jsonl"
        kill_midway([*base, "run.name=crashed"], tmp_path, crashed, min_lines=8)
        finished_before = read_jsonl(crashed)
        assert 8 <= len(finished_before) < 40
        attempts_at_kill = dict(fake.attempts)
        r = datagen(*base, "run.name=crashed", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        # items finished before the kill were not requested again; items in flight at the
        # kill (answered by the server, never received) were asked at most once more
        for o in finished_before:
            assert fake.attempts[request_key(o["messages"])] == 1
        assert all(fake.attempts[k] <= n + 1 for k, n in attempts_at_kill.items())
        assert sum(fake.attempts.values()) <= 40 + 4
        r = datagen(
            *base, "run.name=clean", "teacher.cache_dir=" + str(tmp_path / "c2"), cwd=tmp_path
        )
        assert r.returncode == 0, r.stderr
    crashed_ids = [o["id"] for o in read_jsonl(crashed)]
    clean = read_jsonl(tmp_path / "runs/clean/generate/outputs.jsonl")
    assert len(crashed_ids) == len(set(crashed_ids)) == 40
    assert set(crashed_ids) == {o["id"] for o in clean}
    assert {o["id"]: o["text"] for o in read_jsonl(crashed)} == {o["id"]: o["text"] for o in clean}


def test_budget_stops_before_it_is_exceeded_and_keeps_what_finished(tmp_path):
    fake = FakeOpenAI(completion_tokens=1000)
    price = "teacher.prices={fake-model: {input_per_mtok: 100, output_per_mtok: 100}}"
    with ServerThread(fake) as srv:
        # each request: ~(prompt + 600 max_tokens) estimated, 1100 actual tokens at $100/M
        r = datagen(
            *gen_args(
                srv.url, "plan.n=20", price, "budget.max_cost_usd=0.8", "teacher.concurrency=2"
            ),
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        m = json.loads((tmp_path / "runs/default/generate/manifest.json").read_text())
        assert m["status"] == "stopped: budget" and m["pending"] == 20 - m["items"]
        assert 0 < m["items"] < 20
        assert m["cost_usd"] <= m["run_spent_usd"] <= 0.8
        assert m["cost_usd"] == round(m["items"] * 1100 * 100 / 1e6, 6)
        # a larger budget continues where it stopped, without re-requesting
        r = datagen(*gen_args(srv.url, "plan.n=20", price, "budget.max_cost_usd=5"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        m = json.loads((tmp_path / "runs/default/generate/manifest.json").read_text())
        assert m["status"] == "finished" and m["items"] == 20
        assert sum(fake.after_success.values()) == 0


def test_api_key_is_used_but_written_nowhere(tmp_path):
    secret = "sk-test-DO-NOT-LEAK-4f1c2a9e"
    fake = FakeOpenAI(script=lambda key: ["429"] if int(key, 16) % 2 else ["always500"] * 9)
    with ServerThread(fake) as srv:
        r = datagen(
            *gen_args(srv.url, "plan.n=6", "teacher.api_key_env=MY_KEY", *FAST),
            cwd=tmp_path,
            env={"MY_KEY": secret},
        )
        assert r.returncode == 0, r.stderr
    assert f"Bearer {secret}" in fake.auth_headers
    assert secret not in r.stdout + r.stderr
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "failures.jsonl" for p in files) and len(files) > 5
    for p in files:
        assert secret.encode() not in p.read_bytes(), p


def test_request_key_matches_what_the_pipeline_sends(tmp_path):
    """Guards the fault tests: the server's per-request key is derived from the messages."""
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        assert datagen(*gen_args(srv.url, "plan.n=2"), cwd=tmp_path).returncode == 0
    outs = read_jsonl(tmp_path / "runs/default/generate/outputs.jsonl")
    assert {request_key(o["messages"]) for o in outs} == set(fake.attempts)


def test_a_larger_plan_redoes_generate_without_paying_again_for_earlier_items(tmp_path):
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        assert datagen(*gen_args(srv.url, "plan.n=10"), cwd=tmp_path).returncode == 0
        r = datagen(*gen_args(srv.url, "plan.n=15"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    gen = tmp_path / "runs/default/generate"
    assert len(read_jsonl(gen / "outputs.jsonl")) == 15
    assert fake.total == 15  # the first 10 came from the response cache
    old = list((tmp_path / "runs/default/.superseded").glob("generate-*/outputs.jsonl"))
    assert len(old) == 1 and len(read_jsonl(old[0])) == 10


# --------------------------------------------------------------------------- prompt templates
def _prompts_here(cwd: Path) -> Path:
    """A prompts/ folder in the working directory (preferred over the installed one)."""
    shutil.copytree(ROOT / "prompts", cwd / "prompts")
    return cwd / "prompts"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _user_messages(cwd: Path) -> list[str]:
    outs = read_jsonl(cwd / "runs/default/generate/outputs.jsonl")
    return [o["messages"][-1]["content"] for o in outs]


def test_an_edited_prompt_template_or_included_file_redoes_generate(tmp_path):
    prompts = _prompts_here(tmp_path)
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        args = gen_args(srv.url, "plan.n=4", "plan.formats=[textbook]")
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        m = json.loads((tmp_path / "runs/default/generate/manifest.json").read_text())
        assert m["prompts"] == str(prompts.resolve())  # which prompts/ was used
        assert f"prompts from {prompts.resolve()} (not the installed" in " ".join(r.stderr.split())

        _edit(prompts / "textbook.j2", "Requirements:", "Requirements (be brief):")
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "generate: redone" in r.stderr
        assert all("be brief" in u for u in _user_messages(tmp_path))
        assert fake.total == 8

        # an included template is part of the identity too
        style = "- Write plain prose with code blocks; no meta-commentary about the task."
        (prompts / "style.j2").write_text(style + "\n")
        _edit(prompts / "textbook.j2", style, '{% include "style.j2" %}')
        assert datagen(*args, cwd=tmp_path).returncode == 0
        _edit(prompts / "style.j2", "plain prose", "short plain prose")
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "generate: redone" in r.stderr
        assert all("short plain prose" in u for u in _user_messages(tmp_path))
        r = datagen(*args, cwd=tmp_path)  # nothing changed: skipped, nothing requested
        assert "generate: finished earlier, skipped" in r.stderr and fake.total == 12


def test_an_edited_annotate_template_redoes_annotate(tmp_path):
    rate = tmp_path / "rate.j2"
    shutil.copy(ROOT / "prompts/annotate.j2", rate)
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        # the last stage= wins: annotate (after plan and generate)
        args = gen_args(
            srv.url, "plan.n=3", "annotate.n=3", f"annotate.prompt={rate}", "stage=annotate"
        )
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        m = json.loads((tmp_path / "runs/default/annotate/manifest.json").read_text())
        assert m["prompts"] == str(tmp_path.resolve()) and m["prompt"] == "rate.j2"
        assert fake.total == 6  # 3 generated, 3 rated
        _edit(rate, "rate its educational value", "rate its educational value carefully")
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "generate: finished earlier, skipped" in r.stderr
        assert "annotate: redone" in r.stderr
        assert fake.total == 9  # the 3 ratings asked again, with the new prompt


POPEN = "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}"


def test_a_template_cannot_run_commands(tmp_path):
    prompts = _prompts_here(tmp_path)
    _edit(prompts / "textbook.j2", "Requirements:", POPEN + "Requirements:")
    evil = tmp_path / "evil.j2"
    shutil.copy(ROOT / "prompts/annotate.j2", evil)
    _edit(evil, "Text:", POPEN + "Text:")
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        r = datagen(*gen_args(srv.url, "plan.n=2", "plan.formats=[textbook]"), cwd=tmp_path)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines()[-1].startswith("datagen: error: ")
        assert "textbook.j2" in r.stderr and "unsafe" in r.stderr
        assert not (tmp_path / "PWNED").exists() and fake.total == 0

        shutil.rmtree(prompts)  # the installed prompts generate; the annotate template is bad
        args = gen_args(
            srv.url, "plan.n=2", "annotate.n=2", f"annotate.prompt={evil}", "stage=annotate"
        )
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 2
        assert "evil.j2" in r.stderr and "unsafe" in r.stderr
        assert not (tmp_path / "PWNED").exists() and fake.total == 2  # generate only


def test_kill_9_during_retry_failed_then_a_plain_rerun_counts_each_item_once(tmp_path):
    """An item in outputs is done whatever failures.jsonl says; counts add up to planned."""
    state = {"fail": True}

    def script(key: str) -> list[str]:
        return ["always500"] if state["fail"] and int(key, 16) % 2 == 0 else []

    fake = FakeOpenAI(script=script, latency_s=0.1)
    with ServerThread(fake) as srv:
        args = gen_args(srv.url, "plan.n=60", "teacher.max_retries=0", "teacher.concurrency=2")
        assert datagen(*args, cwd=tmp_path).returncode == 0
        gen = tmp_path / "runs/default/generate"
        n_failed = len(read_jsonl(gen / "failures.jsonl"))
        assert 10 < n_failed < 50
        state["fail"] = False
        kill_midway(
            [*args, "retry_failed=true"], tmp_path, gen / "outputs.jsonl", 60 - n_failed + 4
        )
        recovered = len(read_jsonl(gen / "outputs.jsonl")) - (60 - n_failed)
        assert 4 <= recovered < n_failed
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        out_ids = {o["id"] for o in read_jsonl(gen / "outputs.jsonl")}
        fail_ids = {f["id"] for f in read_jsonl(gen / "failures.jsonl")}
        assert not out_ids & fail_ids
        m = json.loads((gen / "manifest.json").read_text())
        assert m["items"] == len(out_ids) and m["failed"] == len(fail_ids)
        assert m["items"] + m["failed"] + m["pending"] == m["planned"] == 60
        # and retry_failed then finishes the rest, asking each remaining item once
        before = fake.total
        r = datagen(*args, "retry_failed=true", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        m = json.loads((gen / "manifest.json").read_text())
        assert (m["items"], m["failed"], m["pending"]) == (60, 0, 0)
        assert fake.total - before <= m["planned"] - len(out_ids)


def test_a_cut_last_line_in_failures_jsonl_is_repaired_and_that_item_asked_again(tmp_path):
    fake = FakeOpenAI(
        script=lambda key: ["always500"] if int(key, 16) % 2 == 0 else [], latency_s=0.1
    )
    with ServerThread(fake) as srv:
        args = gen_args(srv.url, "plan.n=30", "teacher.max_retries=0", "teacher.concurrency=2")
        gen = tmp_path / "runs/default/generate"
        kill_midway(args, tmp_path, gen / "outputs.jsonl", 5)
        failures = read_jsonl(gen / "failures.jsonl")
        assert len(failures) >= 2
        # what a kill -9 in the middle of writing the last failure leaves behind
        data = (gen / "failures.jsonl").read_bytes()
        (gen / "failures.jsonl").write_bytes(data[: len(data) - 40])
        done, recorded = len(read_jsonl(gen / "outputs.jsonl")), len(failures) - 1
        before = fake.total
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        # the cut record is lost, so its item is pending again and asked once more (its
        # second attempt succeeds); every other recorded failure is not asked again
        assert fake.total - before == 30 - done - recorded
        out_ids = {o["id"] for o in read_jsonl(gen / "outputs.jsonl")}
        fail_ids = {f["id"] for f in read_jsonl(gen / "failures.jsonl")}
        assert failures[-1]["id"] in out_ids and not out_ids & fail_ids
        assert len(out_ids | fail_ids) == 30


# --------------------------------------------------------------------------- plans of millions
def output_lines(gen: Path) -> list[dict]:
    from pipeline.stages.generate import output_files

    return [o for p in output_files(gen) for o in read_jsonl(p)]


def test_plan_and_outputs_roll_into_numbered_files_read_in_order_by_later_stages(tmp_path):
    fake = FakeOpenAI(latency_s=0.05)
    with ServerThread(fake) as srv:
        args = gen_args(srv.url, "plan.n=25", "plan.shard_items=7", "teacher.concurrency=2")
        gen = tmp_path / "runs/default/generate"
        kill_midway(args, tmp_path, gen / "outputs-00001.jsonl", min_lines=2)
        # classifier.source=teacher: filter's classifier learns from annotate's ratings (the
        # reference classifier would read and extract the default web inputs: not the subject)
        r = datagen(
            *args,
            "stage=filter",
            "decontam.enabled=false",
            "annotate.n=9",
            "classifier.source=teacher",
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
    plan = tmp_path / "runs/default/plan"
    assert sorted(p.name for p in plan.glob("plan*.jsonl")) == [
        "plan-00001.jsonl",
        "plan-00002.jsonl",
        "plan-00003.jsonl",
        "plan.jsonl",
    ]
    names = sorted(p.name for p in gen.glob("outputs*.jsonl"))
    assert names == ["outputs-00001.jsonl", "outputs-00002.jsonl", "outputs-00003.jsonl"] + [
        "outputs.jsonl"
    ]
    sizes = [len(read_jsonl(gen / n)) for n in ("outputs.jsonl", *names[:3])]
    assert sizes == [7, 7, 7, 4]  # the killed run's last file was continued, not restarted
    ids = [o["id"] for o in output_lines(gen)]
    assert len(ids) == len(set(ids)) == 25
    m = json.loads((gen / "manifest.json").read_text())
    assert m["outputs"] == ["outputs.jsonl", *names[:3]] and m["items"] == 25
    # the later stages read every file: annotate's sample, the filter's input
    ann = json.loads((tmp_path / "runs/default/annotate/manifest.json").read_text())
    assert (ann["available"], ann["sampled"]) == (25, 9)
    flt = json.loads((tmp_path / "runs/default/filter/manifest.json").read_text())
    assert flt["input"] == 25
