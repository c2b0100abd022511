"""budget.max_cost_usd against the fake server: one budget per run (reruns, resumes after
kill -9, generate and annotate together), waiting instead of skipping, charging what usage
says, and budget-stopped stages that later stages can use and a larger budget continues.

Prices are set so each request's cost is exact: input tokens are free, output tokens cost
$1000/M, so an answer of 75 tokens costs $0.075 and a request with max_tokens=200 can cost at
most $0.20 (its worst case).
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import datagen
from fake_openai import FakeOpenAI, ServerThread
from test_generate import gen_args, kill_midway, read_jsonl

PRICE = "teacher.prices={fake-model: {input_per_mtok: 0, output_per_mtok: 1000}}"
EACH = 0.075  # 75 completion tokens


def manifest(root: Path, stage: str, run: str = "default") -> dict:
    return json.loads((root / f"runs/{run}/{stage}/manifest.json").read_text())


def billed(fake: FakeOpenAI) -> float:
    """What the server answered, i.e. what a provider would bill (client there or not)."""
    return round(sum(fake.successes.values()) * EACH, 6)


def test_one_budget_per_run_across_reruns_and_stages_and_a_larger_one_continues(tmp_path):
    fake = FakeOpenAI(completion_tokens=75)
    with ServerThread(fake) as srv:
        args = [
            "run",
            "stage=filter",
            f"teacher.base_url={srv.url}",
            "teacher.model=fake-model",
            PRICE,
            "plan.n=8",
            "annotate.n=8",
            "teacher.max_tokens=200",
            "decontam.enabled=false",
            # the budget is the subject: the classifier learns from the (budgeted) ratings, as
            # before the reference classifier became the default, not from the web inputs
            "classifier.source=teacher",
        ]
        r = datagen(*args, "budget.max_cost_usd=0.5", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        gen = manifest(tmp_path, "generate")
        # 5 answers ($0.375): a 6th could cost $0.20 more, past the cap
        assert gen["status"] == "stopped: budget"
        assert (gen["items"], gen["failed"], gen["pending"]) == (5, 0, 3)
        assert gen["run_spent_usd"] == gen["spent_usd"] == billed(fake) == 5 * EACH
        assert not (tmp_path / "runs/default/generate/failures.jsonl").read_text()
        # annotate shares the exhausted budget: it stops at once, asking nothing
        ann = manifest(tmp_path, "annotate")
        assert ann["status"] == "stopped: budget" and ann["inputs_stopped_by_budget"] == [
            "generate"
        ]
        assert (ann["sampled"], ann["rated"], ann["pending"], ann["spent_usd"]) == (5, 0, 5, 0)
        assert fake.total == 5
        # later stages are not blocked: they use the whole records there are, and say so
        flt = manifest(tmp_path, "filter")
        assert flt["status"] == "finished" and flt["input"] == 5
        assert set(flt["inputs_stopped_by_budget"]) == {"generate", "annotate"}
        assert "stopped: budget" in r.stdout and "raise budget.max_cost_usd" in r.stdout

        # the same command again spends nothing: the budget counts the whole run
        r = datagen(*args, "budget.max_cost_usd=0.5", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake.total == 5 and manifest(tmp_path, "generate")["run_spent_usd"] == 5 * EACH

        # a larger budget continues generate, and the later stages see their input changed
        r = datagen(*args, "budget.max_cost_usd=10", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        gen = manifest(tmp_path, "generate")
        assert (gen["status"], gen["items"], gen["pending"]) == ("finished", 8, 0)
        ann = manifest(tmp_path, "annotate")
        assert ann["status"] == "finished" and ann["sampled"] == 8 and ann["pending"] == 0
        assert "inputs_stopped_by_budget" not in ann
        assert ann["spent_usd"] == 8 * EACH  # annotate's own spend, in its manifest
        assert ann["run_spent_usd"] == gen["spent_usd"] + ann["spent_usd"] == billed(fake)
        assert manifest(tmp_path, "filter")["input"] == 8
        assert fake.total == 16 and sum(fake.after_success.values()) == 0  # nothing paid twice


def test_requests_wait_for_those_in_flight_instead_of_being_skipped(tmp_path):
    """$1.00 cap, 8 items at $0.075 ($0.60): every item is done, none skipped."""
    fake = FakeOpenAI(completion_tokens=75, latency_s=0.05)
    with ServerThread(fake) as srv:
        r = datagen(
            *gen_args(srv.url, PRICE, "plan.n=8", "teacher.max_tokens=200"),
            "teacher.concurrency=8",
            "budget.max_cost_usd=1.0",
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
    m = manifest(tmp_path, "generate")
    assert m["items"] == 8 and m["this_run"]["skipped_by_budget"] == 0
    assert (m["status"], m["pending"]) == ("finished", 0)
    assert m["run_spent_usd"] == billed(fake) == 8 * EACH


def test_an_endpoint_billing_past_max_tokens_is_charged_its_usage_and_stopped(tmp_path):
    """2000 completion tokens against max_tokens=200: $2.00 a request where $0.20 was the
    worst case. The first request goes alone, so the overrun happens once, not once per
    concurrent request, and it is charged as billed."""
    fake = FakeOpenAI(completion_tokens=2000)
    with ServerThread(fake) as srv:
        args = [*gen_args(srv.url, PRICE, "plan.n=8", "teacher.max_tokens=200")]
        r = datagen(*args, "teacher.concurrency=4", "budget.max_cost_usd=1.0", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake.total == 1
        m = manifest(tmp_path, "generate")
        assert m["status"] == "stopped: budget" and (m["items"], m["pending"]) == (1, 7)
        assert m["run_spent_usd"] == 2.0  # what usage said
        # the next invocation knows this run already spent $2.00 and learns the overrun
        # again from the ledger's figures: $2.00 + a $2.00 request does not fit $3.00
        r = datagen(*args, "teacher.concurrency=4", "budget.max_cost_usd=3.0", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake.total == 2 and manifest(tmp_path, "generate")["run_spent_usd"] == 4.0


def test_prompts_billed_past_a_chars_per_4_guess_never_take_the_spend_past_the_cap(tmp_path):
    """An endpoint billing a prompt token per byte (4x a chars/4 guess), prompts at $100/M:
    the worst case counts every byte, so the cap holds at full concurrency."""
    fake = FakeOpenAI(prompt_tokens=None, completion_tokens=10)
    price = "teacher.prices={fake-model: {input_per_mtok: 100, output_per_mtok: 0}}"
    with ServerThread(fake) as srv:
        r = datagen(
            *gen_args(srv.url, price, "plan.n=40", "teacher.concurrency=8"),
            "budget.max_cost_usd=1.0",
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
    outputs = read_jsonl(tmp_path / "runs/default/generate/outputs.jsonl")
    prompt_usd = [o["prompt_tokens"] * 100 / 1e6 for o in outputs]
    assert sum(fake.successes.values()) == len(outputs) and 0 < len(outputs) < 40
    assert sum(prompt_usd) <= 1.0  # everything the server answered
    m = manifest(tmp_path, "generate")
    assert m["status"] == "stopped: budget"
    assert m["run_spent_usd"] == round(sum(prompt_usd), 6)
    assert m["run_spent_usd"] + max(prompt_usd) > 1.0 - 0.05  # it stopped near the cap


def test_kill_9_and_resume_never_spend_more_than_the_budget(tmp_path):
    """Killed mid-run, resumed with the same cap: what the server answered (billed, whether
    or not datagen got the answer) stays within the cap over both invocations."""
    fake = FakeOpenAI(completion_tokens=75, latency_s=0.2)
    with ServerThread(fake) as srv:
        args = gen_args(
            srv.url,
            PRICE,
            "plan.n=40",
            "teacher.max_tokens=100",  # worst case $0.10
            "teacher.concurrency=2",
            "budget.max_cost_usd=1.0",
        )
        out = tmp_path / "runs/default/generate/outputs.jsonl"
        kill_midway(args, tmp_path, out, min_lines=3)
        before = len(read_jsonl(out))
        assert 3 <= before < 13
        r = datagen(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert billed(fake) <= 1.0
    m = manifest(tmp_path, "generate")
    assert m["status"] == "stopped: budget" and m["items"] > before
    # requests cut off by the kill count at their worst case: the ledger never undercounts
    assert billed(fake) <= m["run_spent_usd"] <= 1.0
    assert m["items"] * EACH <= billed(fake)
    spend = read_jsonl(tmp_path / "runs/default/spend.jsonl")
    assert sum(e["event"] == "paid" for e in spend) == m["items"]
