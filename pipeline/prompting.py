"""Render Jinja2 prompt templates from prompts/ into chat messages.

Templates run in Jinja2's sandbox: a template (a ``prompts/`` folder in the current directory,
an ``annotate.prompt`` path) is data, and must not reach Python internals (``os.popen``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from pipeline import PROJECT_ROOT
from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError


def prompts_folder(cfg: PipelineConfig) -> Path:
    """The prompts/ folder used: ./prompts when the current directory has one, else the
    installed one. Stages record it in their manifest and print it (see ``describe``)."""
    return cfg.project_path("prompts").resolve()


def describe(folder: Path) -> str:
    """``prompts from <folder>``, saying so when a folder shadows the installed prompts/."""
    installed = (PROJECT_ROOT / "prompts").resolve()
    note = "" if folder == installed else f" (not the installed {installed})"
    return f"prompts from {folder}{note}"


class PromptLibrary:
    """Loads ``<name>.j2`` templates; each defines blocks ``system`` and ``user``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(folder),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
        )

    def template_name(self, fmt: str) -> str:
        return f"{fmt}.j2"

    def check(self, names: list[str]) -> None:
        for n in names:
            if not (self.folder / self.template_name(n)).exists():
                raise DatagenError(
                    f"plan.formats: no prompt template {self.folder / self.template_name(n)} "
                    f"for format '{n}'"
                )

    def fingerprint(self, names: list[str]) -> str:
        """Hash of the sources of the named templates and of every template they include,
        extend or import (recursively): part of a stage's identity, so an edited prompt makes
        the stage's output stale (as Curator hashes the prompt function's source)."""
        sources: dict[str, str] = {}
        todo = [self.template_name(n) for n in names]
        while todo:
            name = todo.pop()
            if name in sources:
                continue
            try:
                source, filename, _ = self.env.loader.get_source(self.env, name)  # type: ignore[union-attr]
                tree = self.env.parse(source, name, filename)
            except jinja2.TemplateNotFound:
                raise DatagenError(f"{self.folder / name}: prompt template not found") from None
            except jinja2.TemplateSyntaxError as e:
                raise DatagenError(f"{e.filename or name}:{e.lineno}: {e.message}") from None
            sources[name] = source
            # a name computed at render time (None) cannot be followed; literal names can
            todo.extend(r for r in meta.find_referenced_templates(tree) if r is not None)
        blob = json.dumps(sorted(sources.items())).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def variables(self, name: str) -> set[str]:
        """The variables a template's own source uses (not those of files it includes)."""
        try:
            source, _, _ = self.env.loader.get_source(self.env, self.template_name(name))  # type: ignore[union-attr]
            return meta.find_undeclared_variables(self.env.parse(source))
        except jinja2.TemplateError as e:
            raise DatagenError(f"{self.folder / self.template_name(name)}: {e}") from None

    def render(self, fmt: str, **variables: object) -> list[dict[str, str]]:
        try:
            tmpl = self.env.get_template(self.template_name(fmt))
            ctx = tmpl.new_context(variables)
            messages = []
            for role in ("system", "user"):
                if role in tmpl.blocks:
                    text = "".join(tmpl.blocks[role](ctx)).strip()
                    if text:
                        messages.append({"role": role, "content": text})
        except jinja2.TemplateError as e:
            raise DatagenError(f"{self.folder / self.template_name(fmt)}: {e}") from None
        if not any(m["role"] == "user" for m in messages):
            raise DatagenError(f"{self.folder / self.template_name(fmt)}: no 'user' block")
        return messages
