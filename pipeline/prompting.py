"""Render Jinja2 prompt templates from prompts/ into chat messages."""

from __future__ import annotations

from pathlib import Path

import jinja2

from pipeline.errors import DatagenError


class PromptLibrary:
    """Loads ``<name>.j2`` templates; each defines blocks ``system`` and ``user``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = jinja2.Environment(
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
