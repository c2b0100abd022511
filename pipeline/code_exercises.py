"""Code exercises (format ``code_exercises``), as phi-1's CodeExercises: "each exercise is a
docstring of a function that needs to be completed" (Gunasekar et al. 2023, "Textbooks Are All
You Need", section 2.3), here with assert tests that are run against the solution.

The teacher answers one JSON object (:data:`ANSWER_SCHEMA`: ``instruction``, ``solution``,
``tests``); :func:`parse_answer` turns it into a :class:`~pipeline.records.CodeExercise` or
raises :class:`UnparsedAnswer` with the reason (the caller records a failure, never an empty
exercise); :func:`verify` runs the tests of many exercises in the sandbox.

:class:`ExerciseChecker` is what generate runs on each answer as it arrives: parse, verify in
the sandbox (in a bounded thread pool, off the event loop), and with ``generate.repair_rounds``
send a failing exercise back to the teacher with its failing output, once per round, through
the same client (cache, budget and ledger apply), and verify the repaired one again.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.records import CodeExercise
from pipeline.sandbox import Sandbox, SandboxResult
from pipeline.teacher.structured import schema_format

FORMAT = "code_exercises"


class CodeAnswer(BaseModel):
    """The teacher's structured answer (its JSON schema constrains the decoding)."""

    model_config = ConfigDict(extra="forbid", title="code_exercise")

    instruction: str = Field(
        description="a Python function signature with type hints and a docstring, no body"
    )
    solution: str = Field(description="the complete function: signature, docstring, body")
    tests: str = Field(description="Python assert statements that call the function")


ANSWER_SCHEMA: dict[str, Any] = CodeAnswer.model_json_schema()


def response_format(mode: str) -> dict[str, Any] | None:
    """The ``response_format`` of an exercise request (``generate.structured``)."""
    return schema_format(mode, "code_exercise", ANSWER_SCHEMA)


class UnparsedAnswer(ValueError):
    """An answer that is not a usable exercise; ``str()`` is the reason."""


_FENCE = re.compile(r"^\s*```[\w+-]*[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)


def _unfence(text: str) -> str:
    """The body of a single fenced block (```json / ```python), else the text."""
    m = _FENCE.match(text)
    return m.group(1) if m else text


def parse_answer(text: str) -> CodeExercise:
    """The exercise in a teacher's answer, checked: the instruction is a function signature
    with a docstring, the solution defines that function, the tests are Python with at least
    one assert that names it. Lenient about what models add around the object (a code fence,
    a sentence before it) and about tests given as a list of assert lines."""
    body = _unfence(text.strip())
    start, end = body.find("{"), body.rfind("}")
    if start < 0:
        raise UnparsedAnswer("not a JSON object")
    try:  # (a cut-off answer has no closing brace: json names where it ends)
        obj = json.loads(body[start : end + 1] if end > start else body[start:])
    except json.JSONDecodeError as e:
        raise UnparsedAnswer(f"not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(obj, dict):
        raise UnparsedAnswer("not a JSON object")
    fields = {k: obj[k] for k in CodeAnswer.model_fields if k in obj}
    if isinstance(fields.get("tests"), list) and all(isinstance(t, str) for t in fields["tests"]):
        fields["tests"] = "\n".join(fields["tests"])
    try:
        answer = CodeAnswer.model_validate(fields)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise UnparsedAnswer(f"{where}: {err['msg'].lower()}") from None
    instruction, solution, tests = (
        _unfence(v.strip()).strip() + "\n"
        for v in (answer.instruction, answer.solution, answer.tests)
    )
    entry = _entry_point(instruction)
    if entry not in _module_functions(_parse("solution", solution)):
        raise UnparsedAnswer(f"solution: does not define {entry}()")
    tree = _parse("tests", tests)
    if not any(isinstance(n, ast.Assert) for n in ast.walk(tree)):
        raise UnparsedAnswer("tests: no assert statement")
    if not any(isinstance(n, ast.Name) and n.id == entry for n in ast.walk(tree)):
        raise UnparsedAnswer(f"tests: never use {entry}()")
    return CodeExercise(instruction=instruction, solution=solution, tests=tests, entry_point=entry)


def _parse(field: str, src: str) -> ast.Module:
    if not src.strip():
        raise UnparsedAnswer(f"{field}: empty")
    try:
        return ast.parse(src)
    except SyntaxError as e:
        raise UnparsedAnswer(f"{field}: SyntaxError line {e.lineno}: {e.msg}") from None


def _module_functions(tree: ast.Module) -> list[str]:
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _entry_point(instruction: str) -> str:
    """The function to write: the last one in the instruction with a docstring (as in
    HumanEval, helpers the instruction gives come before it). A string statement anywhere in
    the body counts (HumanEval/115 has an import before its "docstring")."""
    tree = _parse("instruction", instruction)
    documented = [
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(
            isinstance(s, ast.Expr)
            and isinstance(s.value, ast.Constant)
            and isinstance(s.value.value, str)
            and s.value.value.strip()
            for s in n.body
        )
    ]
    if not documented:
        raise UnparsedAnswer("instruction: no function signature with a docstring")
    return documented[-1]


def exercise_text(ex: CodeExercise) -> str:
    """The exercise as a student reads it (the kept text): the instruction, then the solution.
    The tests stay on the record."""
    return (
        f"```python\n{ex.instruction.rstrip()}\n```\n\n"
        f"Solution:\n\n```python\n{ex.solution.rstrip()}\n```\n"
    )


def with_result(ex: CodeExercise, r: SandboxResult) -> CodeExercise:
    return ex.model_copy(
        update={
            "verified": r.status,
            "runtime_s": r.runtime_s,
            "error": r.error or None,
            "isolation": r.isolation,
        }
    )


def verify(
    sandbox: Sandbox,
    exercises: Sequence[CodeExercise],
    progress: Callable[[SandboxResult], None] | None = None,
) -> list[CodeExercise]:
    """Each exercise with its sandbox verdict, in order (``sandbox.workers`` at once)."""
    results = sandbox.run_many([(e.solution, e.tests) for e in exercises], progress)
    return [with_result(e, r) for e, r in zip(exercises, results, strict=True)]


# --------------------------------------------------------------------------- in generate
class Answer(Protocol):
    """What the checker needs of a teacher completion (pipeline.teacher.Completion)."""

    text: str


# (messages, item id) -> the teacher's answer; raises the client's errors
Complete = Callable[[list[dict[str, str]], str], Awaitable[Any]]
# (verdict or "unparsed", the failing output) -> the user message asking for a repair
RepairPrompt = Callable[[str, str], str]


@dataclass
class Checked:
    """An answer after parsing, verification and repair rounds."""

    exercise: CodeExercise | None  # None: no answer parsed (``reason`` says why)
    reason: str = ""  # the last parse failure ("" when an exercise parsed)
    answers: list[Any] = field(default_factory=list)  # every completion, the first included
    repair_error: str = ""  # a repair request that failed for good (the last verdict stands)


class ExerciseChecker:
    """Parse, verify and repair code exercises; ``workers`` sandboxes at once in a thread pool
    (each waits on its own sandbox process), so the event loop keeps sending requests."""

    def __init__(self, sandbox: Sandbox, rounds: int, repair_prompt: RepairPrompt) -> None:
        self.sandbox = sandbox
        self.rounds = rounds
        self.repair_prompt = repair_prompt
        workers = sandbox.cfg.workers or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")

    async def start(self) -> str:
        """Probe the sandbox's isolation once (a refusal is a DatagenError before any request
        is sent); returns the isolation in use."""
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: self.sandbox.isolation
        )

    async def verify(self, ex: CodeExercise) -> CodeExercise:
        loop = asyncio.get_running_loop()
        r = await loop.run_in_executor(self.pool, self.sandbox.run, ex.solution, ex.tests)
        return with_result(ex, r)

    async def check(
        self, messages: list[dict[str, str]], first: Answer, complete: Complete, item_id: str
    ) -> Checked:
        """``first`` checked; while it fails and rounds remain, the conversation so far plus
        the failing output goes back to the teacher. The result is the first exercise that
        passed, else the last one that parsed, else the last parse failure."""
        from pipeline.teacher import TeacherError

        out = Checked(exercise=None, answers=[first])
        convo = list(messages)
        answer = first
        for round_ in range(self.rounds + 1):
            try:
                ex: CodeExercise | None = parse_answer(answer.text)
            except UnparsedAnswer as e:
                ex, out.reason = None, str(e)
            if ex is not None:
                out.exercise = await self.verify(ex.model_copy(update={"repairs": round_}))
                out.reason = ""
                if out.exercise.verified == "passed":
                    break
            if round_ == self.rounds:
                break
            failing = (
                ("unparsed", out.reason)
                if ex is None
                else (out.exercise.verified or "error", out.exercise.error or "")  # type: ignore[union-attr]
            )
            convo += [
                {"role": "assistant", "content": answer.text},
                {"role": "user", "content": self.repair_prompt(*failing)},
            ]
            try:
                answer = await complete(convo, f"{item_id}/repair-{round_ + 1}")
            except TeacherError as e:
                out.repair_error = e.reason
                break
            out.answers.append(answer)
        if out.exercise is not None:
            out.reason = ""
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
