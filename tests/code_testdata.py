"""Real code exercises for the sandbox tests and benchmark: HumanEval (prompt + canonical
solution, its ``check`` tests) and MBPP (reference code, its ``test_list`` asserts) from
../shared/data/benchmarks, and mutants of them (one comparison negated) as wrong solutions."""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

from pydantic import BaseModel

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HUMANEVAL = SHARED_DATA / "benchmarks" / "humaneval" / "HumanEval.jsonl.gz"
MBPP = SHARED_DATA / "benchmarks" / "mbpp" / "mbpp.jsonl"


class RealExercise(BaseModel):
    task_id: str
    instruction: str  # HumanEval: the signature + docstring; MBPP: the task's text
    solution: str
    tests: str
    entry_point: str


def humaneval() -> list[RealExercise]:
    out = []
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            out.append(
                RealExercise(
                    task_id=p["task_id"],
                    instruction=p["prompt"],
                    solution=p["prompt"] + p["canonical_solution"],
                    tests=f"{p['test']}\n\ncheck({p['entry_point']})\n",
                    entry_point=p["entry_point"],
                )
            )
    return out


def mbpp() -> list[RealExercise]:
    out = []
    with open(MBPP, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            p = json.loads(line)
            tests = "\n".join([p.get("test_setup_code") or "", *p["test_list"]]).strip() + "\n"
            out.append(
                RealExercise(
                    task_id=f"MBPP/{p['task_id']}",
                    instruction=p["text"],
                    solution=p["code"].replace("\r\n", "\n"),
                    tests=tests.replace("\r\n", "\n"),
                    entry_point=_called(p["test_list"][0]),
                )
            )
    return out


def _called(assert_line: str) -> str:
    """The first function an MBPP assert calls (the function under test)."""
    for node in ast.walk(ast.parse(assert_line)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id
    raise ValueError(f"no call in {assert_line!r}")


_NEGATED = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


def mutate(ex: RealExercise) -> str | None:
    """The solution with the first comparison in its entry-point function negated (``<`` to
    ``>=``, ``==`` to ``!=``, ...), or None when that function compares nothing."""
    tree = ast.parse(ex.solution)
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name == ex.entry_point:
            for node in ast.walk(fn):
                if isinstance(node, ast.Compare):
                    node.ops[0] = _NEGATED[type(node.ops[0])]()
                    return ast.unparse(tree) + "\n"
    return None
