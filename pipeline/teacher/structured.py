"""Structured answers: a JSON schema as the request's ``response_format``.

Forms (a stage's ``structured`` setting): ``json_object`` is llama-cpp-python's (its server
compiles ``schema`` to a grammar: constrained decoding on the embedded teacher),
``json_schema`` is OpenAI / vLLM structured outputs, ``off`` sends the prompt alone.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import TeacherConfig


def structured_mode(setting: str, teacher: TeacherConfig, endpoint: str = "json_schema") -> str:
    """The form in use: ``setting``, or for ``auto`` llama.cpp's grammar on the embedded
    teacher and ``endpoint`` on a ``teacher.base_url``."""
    if setting != "auto":
        return setting
    return endpoint if teacher.urls() else "json_object"


def schema_format(mode: str, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` request parameter for ``schema`` in form ``mode``."""
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    if mode == "json_schema":
        spec = {"name": name, "schema": schema, "strict": True}
        return {"type": "json_schema", "json_schema": spec}
    return None
