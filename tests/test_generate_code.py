"""generate with format code_exercises against the fake server (faults, resume, repair rounds).

The fake answers with real HumanEval exercises (../shared/data): the canonical solution, a
mutant of it (one comparison negated: its tests fail), a solution that never returns, or text
that is not an exercise. Real generation is in test_e2e_teacher.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from code_testdata import RealExercise, humaneval, mutate
from conftest import datagen
from fake_openai import FakeOpenAI, ServerThread, request_key

from pipeline.code_exercises import ANSWER_SCHEMA

KINDS = ("correct", "mutant", "garbage", "hangs")
FAST = [
    "teacher.max_retries=3",
    "teacher.backoff_initial_s=0.05",
    "teacher.backoff_max_s=0.2",
    "teacher.timeout_s=5",
    "sandbox.timeout_s=3",
    "sandbox.cpu_s=2",
]


@pytest.fixture(scope="module")
def problems() -> list[RealExercise]:
    return [p for p in humaneval() if mutate(p) is not None]


def kind_of(messages: list[dict[str, str]]) -> str:
    return KINDS[int(request_key(messages[:2]), 16) % len(KINDS)]


def exercise_answer(problems: list[RealExercise], body: dict) -> str:
    """The fake teacher: the first request of an item gets its kind's answer; a repair
    request (the conversation continued) gets the correct exercise."""
    messages = body["messages"]
    p = problems[int(request_key(messages[:2]), 16) % len(problems)]
    kind = "correct" if len(messages) > 2 else kind_of(messages)
    if kind == "garbage":
        return "Sure! Here is an exercise about loops: write a loop."
    solution = {
        "correct": p.solution,
        "mutant": mutate(p),
        "hangs": p.solution + "\nimport time\nwhile True:\n    time.sleep(1)\n",
    }[kind]
    return json.dumps({"instruction": p.instruction, "solution": solution, "tests": p.tests})


def script(key: str) -> list[str]:
    return [["500"], ["malformed"], [], []][int(key, 16) % 4]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def args(url: str, *extra: str) -> list[str]:
    return [
        "run",
        "stage=generate",
        f"teacher.base_url={url}",
        "teacher.model=fake-model",
        "plan.formats=[code_exercises]",
        *FAST,
        *extra,
    ]


def test_exercises_are_verified_failures_have_reasons_and_a_rerun_pays_nothing(tmp_path, problems):
    asked: dict[str, str] = {}  # item request -> the kind of answer it got

    def answer(body: dict) -> str:
        asked[request_key(body["messages"][:2])] = kind_of(body["messages"])
        return exercise_answer(problems, body)

    fake = FakeOpenAI(script=script, answer=answer)
    with ServerThread(fake) as srv:
        r = datagen(*args(srv.url, "plan.n=16"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        gen = tmp_path / "runs/default/generate"
        outputs, failures = read_jsonl(gen / "outputs.jsonl"), read_jsonl(gen / "failures.jsonl")
        assert len(outputs) + len(failures) == len(asked) == 16
        want = {"correct": "passed", "mutant": "failed", "hangs": "timeout"}
        for o in outputs:
            code, kind = o["code"], kind_of(o["messages"])
            assert code["verified"] == want[kind], (kind, code)
            assert code["runtime_s"] is not None and code["isolation"]
            assert (code["error"] is None) == (code["verified"] == "passed")
            # the kept text is the exercise as a student reads it; the tests are on the record
            assert o["text"].index(code["instruction"].strip()) < o["text"].index("Solution:")
            assert code["solution"].strip() in o["text"] and code["tests"].strip()
            assert code["tests"].strip() not in o["text"]
        assert {kind_of(o["messages"]) for o in outputs} == set(want)
        assert len(failures) == sum(k == "garbage" for k in asked.values()) > 0
        assert {f["reason"] for f in failures} == {"unparsed: not a JSON object"}
        # every request asked for the schema (structured outputs on an endpoint)
        for rf in fake.response_formats:
            assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == ANSWER_SCHEMA
        m = json.loads((gen / "manifest.json").read_text())
        assert m["code"]["verdicts"]["passed"] == sum(k == "correct" for k in asked.values())
        assert m["code"]["unparsed"] == len(failures)
        assert m["failure_reasons"] == {"unparsed": len(failures)}

        # a rerun that retries the failures pays nothing: every answer is in the cache
        total = fake.total
        r = datagen(*args(srv.url, "plan.n=16", "retry_failed=true"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake.total == total
        assert not fake.after_success


def test_a_repair_round_fixes_failing_exercises_once_and_is_cached(tmp_path, problems):
    repairs: list[list[dict[str, str]]] = []

    def answer(body: dict) -> str:
        if len(body["messages"]) > 2:
            repairs.append(body["messages"])
        return exercise_answer(problems, body)

    fake = FakeOpenAI(answer=answer)
    with ServerThread(fake) as srv:
        r = datagen(*args(srv.url, "plan.n=12", "generate.repair_rounds=1"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        gen = tmp_path / "runs/default/generate"
        outputs, failures = read_jsonl(gen / "outputs.jsonl"), read_jsonl(gen / "failures.jsonl")
        assert not failures  # the unparsed answers were repaired too
        assert len(outputs) == 12
        assert all(o["code"]["verified"] == "passed" for o in outputs)
        repaired = [o for o in outputs if o["code"]["repairs"]]
        assert repaired and all(o["code"]["repairs"] == 1 for o in repaired)
        # one repair request per failing item: the failing output went back to the teacher
        assert fake.total == 12 + len(repaired)
        assert len(repairs) == len(repaired)
        for convo in repairs:  # the request, the failing answer, the failing output
            assert [m["role"] for m in convo] == ["system", "user", "assistant", "user"]
            kind = kind_of(convo)
            assert kind != "correct"
            said = {"mutant": "AssertionError", "hangs": "time limit", "garbage": "not a JSON"}
            assert said[kind] in convo[-1]["content"], convo[-1]["content"]
        assert all(len(o["messages"]) == 2 for o in outputs)  # the record keeps the request
        m = json.loads((gen / "manifest.json").read_text())
        assert m["code"]["repaired"] == len(repaired)
        total = fake.total
        r = datagen(*args(srv.url, "plan.n=12", "generate.repair_rounds=1"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert fake.total == total  # nothing asked again


def test_batch_mode_parses_exercises_and_leaves_verification_to_the_filter(tmp_path, problems):
    from fake_batch_api import FakeBatchAPI

    fake = FakeBatchAPI(answer=lambda b: exercise_answer(problems, b))
    batch = [
        "teacher.mode=batch",
        "teacher.batch.poll_initial_s=0.05",
        "teacher.batch.poll_max_s=0.2",
    ]
    with ServerThread(fake) as srv:
        r = datagen(*args(srv.url, "plan.n=8", *batch, "generate.repair_rounds=1"), cwd=tmp_path)
        assert r.returncode != 0 and "datagen: error: generate.repair_rounds" in r.stderr
        assert fake.creates == 0 and not fake.files  # refused before anything was sent
        r = datagen(*args(srv.url, "plan.n=8", *batch), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    gen = tmp_path / "runs/default/generate"
    outputs, failures = read_jsonl(gen / "outputs.jsonl"), read_jsonl(gen / "failures.jsonl")
    assert len(outputs) + len(failures) == 8
    for o in outputs:
        assert kind_of(o["messages"]) != "garbage"
        assert o["code"]["verified"] is None and o["code"]["tests"]  # the filter verifies
    assert all(f["reason"].startswith("unparsed: ") for f in failures)
    assert json.loads((gen / "manifest.json").read_text())["code"]["verdicts"]["unverified"] == len(
        outputs
    )
