"""Code exercises: the teacher's JSON answer parsed into a checked exercise (or a failure with
its reason), the prompt, the schema as a llama.cpp grammar, and the filter that keeps only
exercises whose tests passed in the sandbox.

Answers are built from real exercises (HumanEval, MBPP in ../shared/data) in the shape the
schema asks for, and damaged the ways model answers go wrong (cut off, fenced, a field
missing, tests as a list, a syntax error, tests without an assert)."""

from __future__ import annotations

import ast
import json

import pytest
from code_testdata import RealExercise, humaneval, mbpp, mutate

from filters.code_exec import CodeExerciseFilter, CodeStep
from pipeline import PROJECT_ROOT
from pipeline.code_exercises import (
    ANSWER_SCHEMA,
    FORMAT,
    UnparsedAnswer,
    exercise_text,
    parse_answer,
    response_format,
    verify,
)
from pipeline.config import FilterConfig, SandboxConfig, load_config
from pipeline.prompting import PromptLibrary
from pipeline.records import Document
from pipeline.sandbox import Sandbox
from pipeline.stages.plan import build_plan
from pipeline.steps import Stats, run_steps


def answer(ex: RealExercise, **override: object) -> dict[str, object]:
    """A real HumanEval problem as the teacher's structured answer."""
    return {"instruction": ex.instruction, "solution": ex.solution, "tests": ex.tests, **override}


@pytest.fixture(scope="module")
def problems() -> list[RealExercise]:
    return humaneval()


# ------------------------------------------------------------------ parsing
def test_every_humaneval_problem_parses_with_its_entry_point(problems):
    for p in problems:
        ex = parse_answer(json.dumps(answer(p)))
        assert ex.entry_point == p.entry_point, p.task_id
        assert ex.instruction.strip() == p.instruction.strip()
        assert ex.verified is None
        text = exercise_text(ex)
        assert ex.instruction.strip() in text and ex.solution.strip() in text
        assert ex.tests.strip() not in text  # the tests stay on the record


def test_model_wrappings_are_tolerated(problems):
    p = problems[0]
    raw = json.dumps(answer(p))
    fenced = f"```json\n{raw}\n```"
    preamble = f"Here is the exercise you asked for:\n{raw}\n"
    code_fenced = json.dumps(answer(p, solution=f"```python\n{p.solution}```"))
    for text in (fenced, preamble, code_fenced):
        assert parse_answer(text).solution.strip() == p.solution.strip()


def test_tests_given_as_a_list_of_asserts_are_joined():
    task = mbpp()[0]
    raw = json.dumps(
        {
            "instruction": f'def {task.entry_point}(*args):\n    """{task.instruction}"""\n',
            "solution": task.solution,
            "tests": task.tests.strip().splitlines(),
        }
    )
    ex = parse_answer(raw)
    assert ex.tests.strip() == task.tests.strip() and ex.entry_point == task.entry_point


def _no_asserts(tests: str) -> str:
    class Strip(ast.NodeTransformer):
        def visit_Assert(self, node: ast.Assert) -> ast.Expr:
            return ast.Expr(node.test)

    return ast.unparse(Strip().visit(ast.parse(tests)))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: json.dumps(answer(p))[:700], "not JSON"),  # cut off by max_tokens
        (lambda p: p.solution, "not a JSON object"),  # code instead of JSON
        (lambda p: json.dumps({"instruction": p.instruction, "solution": p.solution}), "tests"),
        (lambda p: json.dumps(answer(p, tests=7)), "tests: input should be a valid string"),
        (lambda p: json.dumps(answer(p, tests="")), "tests: empty"),
        (
            lambda p: json.dumps(answer(p, solution=p.solution[: p.solution.rindex("(") + 1])),
            "solution: SyntaxError",
        ),
        (lambda p: json.dumps(answer(p, tests=_no_asserts(p.tests))), "tests: no assert"),
        (lambda p: json.dumps(answer(p, instruction="Write a function.")), "instruction:"),
        (
            lambda p: json.dumps(answer(p, solution=humaneval()[1].solution)),
            "solution: does not define has_close_elements()",
        ),
        (
            lambda p: json.dumps(answer(p, tests=mbpp()[0].tests)),
            "tests: never use has_close_elements()",
        ),
    ],
    ids=[
        "truncated",
        "not_json",
        "missing_tests",
        "tests_not_string",
        "empty_tests",
        "syntax_error",
        "no_assert",
        "prose_instruction",
        "other_function",
        "unrelated_tests",
    ],
)
def test_an_unusable_answer_is_a_failure_with_its_reason(problems, damage, reason):
    with pytest.raises(UnparsedAnswer, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_answer(damage(problems[0]))


def test_the_schema_is_strict_and_compiles_to_a_llama_cpp_grammar():
    from llama_cpp.llama_grammar import LlamaGrammar

    assert ANSWER_SCHEMA["required"] == ["instruction", "solution", "tests"]
    assert ANSWER_SCHEMA["additionalProperties"] is False
    fmt = response_format("json_schema")
    assert fmt is not None and fmt["json_schema"]["strict"] is True
    assert response_format("off") is None
    LlamaGrammar.from_json_schema(json.dumps(response_format("json_object")["schema"]))


def test_the_prompt_renders_for_real_plan_items():
    cfg = load_config(["plan.formats=[code_exercises]", "plan.n=5"])
    items = build_plan(cfg)
    lib = PromptLibrary(PROJECT_ROOT / "prompts")
    lib.check([FORMAT])
    for item in items:
        messages = lib.render(
            item.format,
            topic=item.topic,
            subject=item.subject,
            audience=item.audience,
            words=item.words,
            seed_text=item.seed_text,
        )
        user = messages[-1]["content"]
        assert item.topic in user and all(w in user for w in item.words)
        assert '"instruction"' in user and '"solution"' in user and '"tests"' in user


# ------------------------------------------------------------------ the filter
@pytest.fixture(scope="module")
def verified_docs(problems) -> list[Document]:
    """Real exercises through parse + sandbox: HumanEval solutions and mutants of them, and an
    MBPP task too slow for a 1 s CPU limit (MBPP/123 sums amicable numbers below 10,000)."""
    slow = next(e for e in mbpp() if e.task_id == "MBPP/123")
    sample = problems[::12]
    answers = [answer(p) for p in sample]
    answers += [answer(p, solution=m) for p in sample if (m := mutate(p)) is not None]
    exercises = [parse_answer(json.dumps(a)) for a in answers]
    slow_instruction = f'def {slow.entry_point}(limit):\n    """{slow.instruction}"""\n'
    exercises.append(
        parse_answer(
            json.dumps(
                {"instruction": slow_instruction, "solution": slow.solution, "tests": slow.tests}
            )
        )
    )
    return [
        Document(id=f"d{i}", text=exercise_text(ex), format=FORMAT, code=ex)
        for i, ex in enumerate(exercises)
    ]


def test_the_filter_step_verifies_and_keeps_only_passing_exercises(verified_docs):
    other = Document(id="t", text="A textbook section.", format="textbook")
    unparsed = Document(id="u", text="not an exercise", format=FORMAT)
    batch = [d.model_copy(deep=True) for d in verified_docs] + [other, unparsed]
    step = CodeStep(FilterConfig(), SandboxConfig(cpu_s=1, timeout_s=10))
    step.setup()
    stats = Stats()
    kept, dropped = run_steps([step], batch, stats)
    verdicts = {d.id: d.code.verified for d in batch if d.code is not None}
    assert all(v is not None for v in verdicts.values())
    assert {d.id for d in kept} == {i for i, v in verdicts.items() if v == "passed"} | {"t"}
    reason = {
        "failed": "code.tests_failed",
        "timeout": "code.timeout",
        "error": "code.error",
    }
    for d in dropped:
        if d.id == "u":
            assert d.drop_reason == "code.unparsed"
        else:
            assert d.drop_reason == reason[d.code.verified], d
            assert d.code.error and d.code.runtime_s is not None
    assert verdicts[batch[len(verified_docs) - 1].id] == "timeout"  # the slow MBPP task
    n = len(verified_docs)
    assert stats.counts["code.verified_in_filter"] == n
    assert sum(stats.counts.get(f"code.{v}", 0) for v in reason) + stats.counts["code.passed"] == n
    real = [d.id for d in verified_docs[: len(humaneval()[::12])]]
    assert all(verdicts[i] == "passed" for i in real)  # every real solution is kept
    assert stats.info["sandbox"]["isolation"] == Sandbox(SandboxConfig()).isolation
    assert "code.tests_failed" in stats.drop_reasons()
    # the verdict survives a round trip through the record format
    again = Document.model_validate_json(batch[0].model_dump_json())
    assert again.code == batch[0].code


def test_require_verified_false_keeps_every_exercise_but_not_unparsed_ones(verified_docs):
    sb = Sandbox(SandboxConfig(cpu_s=1))
    checked = verify(sb, [d.code for d in verified_docs])
    f = CodeExerciseFilter(require_verified=False)
    strict = CodeExerciseFilter(require_verified=True)
    for d, ex in zip(verified_docs, checked, strict=True):
        doc = d.model_copy(update={"code": ex})
        assert f.keep(f.score(doc)) is None
        assert (strict.keep(strict.score(doc)) is None) == (ex.verified == "passed")
    unparsed = Document(id="u", text="x", format=FORMAT)
    assert f.keep(f.score(unparsed)) == "code.unparsed"
    # an exercise never run is dropped as unverified when verification is required
    assert strict.keep(strict.score(verified_docs[0])) == "code.unverified"
