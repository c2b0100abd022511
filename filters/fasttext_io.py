"""Loading a fastText model file (the quality classifier, language id): one place for the
quirks and the error lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import DatagenError


def load_fasttext(path: Path | str, what: str) -> Any:
    """The model at ``path``; a missing or unreadable file is one error line naming ``what``
    (the config key or role) and the path."""
    import fasttext

    path = Path(path)
    if not path.is_file():
        raise DatagenError(f"{what}: {path}: no such model file")
    fasttext.FastText.eprint = lambda *a, **k: None  # a warning per load on stderr
    try:
        return fasttext.load_model(str(path))
    except (ValueError, MemoryError, RuntimeError) as e:
        raise DatagenError(f"{what}: {path}: not a fastText model ({e})") from None
