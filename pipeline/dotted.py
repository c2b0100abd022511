"""Dotted-key lookup in nested records: ``get(row, "meta.url")``, ``walk(item,
"question.choices.text")``. One implementation for config keys, web reader fields and
benchmark fields."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_MISSING: Any = object()


def get(obj: Any, dotted: str, default: Any = _MISSING) -> Any:
    """The value at ``dotted`` in nested dicts; ``default`` where a part is missing or the
    value on the way is not a dict (``KeyError`` naming the key when no default is given)."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            if default is _MISSING:
                raise KeyError(dotted)
            return default
        obj = obj[part]
    return obj


def walk(obj: Any, dotted: str) -> Iterator[Any]:
    """Every value at ``dotted``, lists walked element by element on the way and at the end
    (an ARC item's ``question.choices.text``: one value per choice); missing parts give none."""
    yield from _walk(obj, dotted.split("."))


def _walk(obj: Any, parts: list[str]) -> Iterator[Any]:
    if isinstance(obj, list):
        for x in obj:
            yield from _walk(x, parts)
    elif not parts:
        yield obj
    elif isinstance(obj, dict) and parts[0] in obj:
        yield from _walk(obj[parts[0]], parts[1:])
