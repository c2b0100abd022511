"""Real `datagen run`s for the run-directory tests: every stage, end to end, with a fake teacher
that answers with real OpenStax text (so filter keeps documents and emit tokenizes real text).

The fake server is only the transport; each stage is the real code run by the real command.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import threading
from pathlib import Path

from aiohttp import web
from conftest import datagen
from emit_testdata import openstax_modules
from fake_openai import FakeOpenAI

# every stage, small: no ratings (so no classifier and no quality score), no web inputs
SMALL = ["plan.n=8", "annotate.n=0", "web.inputs=[]", "teacher.model=fake-model"]


def run_args(url: str, *extra: str) -> list[str]:
    return ["run", f"teacher.base_url={url}", *SMALL, *extra]


class RealTextOpenAI(FakeOpenAI):
    """Answers each request with one real OpenStax module (chosen by the request's hash)."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.modules = [m["text"] for m in openstax_modules()]

    def _text(self, messages: list[dict[str, str]]) -> str:  # type: ignore[override]
        key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        return self.modules[int(key[:8], 16) % len(self.modules)]


class GatedOpenAI(FakeOpenAI):
    """Holds every request until ``gate`` is set: a run stays mid-generate, deterministically,
    for as long as a test needs. ``waiting`` counts requests held so far."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.waiting = 0

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.waiting += 1
        while not self.gate.is_set():
            await asyncio.sleep(0.02)
        return await super().chat(request)


def finished_run(cwd: Path, url: str) -> Path:
    """Run every stage in ``cwd`` (runs/default) and return the run folder."""
    r = datagen(*run_args(url), cwd=cwd)
    assert r.returncode == 0, r.stderr
    run = cwd / "runs" / "default"
    assert json.loads((run / "emit" / "manifest.json").read_text())["status"] == "finished"
    return run


def copy_run(src_cwd: Path, dst_cwd: Path) -> Path:
    """A private copy of a finished run (its teacher cache included) for one test to change."""
    shutil.copytree(src_cwd / "runs", dst_cwd / "runs")
    return dst_cwd / "runs" / "default"


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
