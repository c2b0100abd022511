"""Real inputs for the emit/review/train-smoke tests: a run directory whose filter and web stages
hold real text (OpenStax modules as synthetic textbook/exercises documents, WikiText articles as
web documents), scored by a real fastText classifier trained here, kept or dropped by it."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from rich.console import Console

from filters.base import apply_filters
from pipeline.config import load_config
from pipeline.records import Document
from pipeline.runs import Run, write_shards
from pipeline.stages import BY_NAME, _run_one

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPENSTAX = DATA / "text" / "openstax_python" / "introduction-python-programming.modules_text.jsonl"
WIKITEXT = DATA / "text" / "wikitext2_test" / "wiki.test.raw"
AUDIENCES = ["high school students", "college students", "professionals"]
_MODEL: dict[str, object] = {}


def openstax_modules() -> list[dict]:
    with open(OPENSTAX, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def wikitext_articles() -> list[tuple[str, str]]:
    """(title, text) per article: a top-level heading is a line ' = Title = '."""
    raw = WIKITEXT.read_text(encoding="utf-8").replace("\r\n", "\n")
    parts = re.split(r"^ = ([^=].*?) = \n", raw, flags=re.M)
    return [(parts[i].strip(), parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


class FastTextQuality:
    """A textbook-vs-web fastText classifier (trained on real paragraphs), used as a filter."""

    family = "classifier"

    def __init__(self, workdir: Path, threshold: float = 0.5) -> None:
        import fasttext

        lines = []
        for i, m in enumerate(openstax_modules()):
            if i % 2 == 0:
                lines += [f"__label__hq {p}" for p in _paragraphs(m["text"])]
        for i, (_, text) in enumerate(wikitext_articles()):
            if i % 2 == 0:
                lines += [f"__label__lq {p}" for p in _paragraphs(text)]
        path = workdir / "quality.train.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.threshold = threshold
        if "model" in _MODEL:  # one model per test process: the same scores for every run
            self.model = _MODEL["model"]
            return
        for attempt in range(5):  # fastText now and then reports "Encountered NaN": retrain
            try:
                self.model = fasttext.train_supervised(
                    input=str(path), epoch=5, thread=1, seed=7, verbose=0
                )
                break
            except RuntimeError:
                if attempt == 4:
                    raise
        _MODEL["model"] = self.model

    def score(self, doc: Document) -> dict[str, float]:
        labels, probs = self.model.predict(doc.text.replace("\n", " "), k=2)
        p = dict(zip(labels, probs, strict=True)).get("__label__hq", 0.0)
        return {"prob": float(p)}

    def keep(self, s: dict[str, float]) -> str | None:
        return "classifier.min_score" if s["prob"] < self.threshold else None


class MinChars:
    family = "length"

    def __init__(self, n: int) -> None:
        self.n = n

    def score(self, doc: Document) -> dict[str, float]:
        return {"chars": float(len(doc.text))}

    def keep(self, s: dict[str, float]) -> str | None:
        return "length.too_short" if s["chars"] < self.n else None


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n") if len(p.split()) >= 8]


def _required_words(text: str) -> list[str]:
    words = re.findall(r"[a-z]{7,}", text.lower())
    return [w for w, _ in Counter(words).most_common(3)]


def build_run(
    root: Path,
    name: str = "t",
    web: bool = True,
    n_synth: int | None = None,
    n_web: int | None = None,
) -> Run:
    """Write finished filter (and web) stages with kept and dropped documents, then run the
    real dedup stage over them (emit reads dedup's kept documents)."""
    run = Run(root, name)
    clf = FastTextQuality(root)
    clf.threshold = 0.9  # the stricter bar for synthetic text, so some are dropped by score
    synth_filters = [MinChars(400), clf]
    kept, dropped, counts = [], [], Counter()
    for i, m in enumerate(openstax_modules()[:n_synth]):
        doc = Document(
            id=f"syn-{m['module_id']}",
            text=m["text"],
            source="synthetic",
            topic=m["title"],
            subject="Python programming",
            audience=AUDIENCES[i % len(AUDIENCES)],
            format="textbook" if i % 3 else "exercises",
            required_words=_required_words(m["text"]),
            template="textbook.j2",
            model="SmolLM2-135M-Instruct",
        )
        (kept if apply_filters(doc, synth_filters, counts) else dropped).append(doc)
    write_shards(run.stage_dir("filter"), kept, max_records=40)
    write_shards(run.stage_dir("filter") / "dropped", dropped)
    run.write_manifest(
        "filter",
        {
            "stage": "filter",
            "status": "finished",
            "summary": {"kept": len(kept), "dropped": len(dropped)},
            "drops": dict(counts),
        },
    )
    if web:
        wkept, wdropped, wcounts = [], [], Counter()
        for i, (title, text) in enumerate(wikitext_articles()[:n_web]):
            doc = Document(
                id=f"web-{i:03d}",
                text=text,
                source="web",
                url=f"https://en.wikipedia.org/wiki/{title.replace(' ', '_')}",
                source_file="wiki.test.raw",
                language="en",
            )
            # web keeps documents of any quality here: the probability is only recorded, under
            # the key the web stage uses
            doc.scores["quality.p_positive"] = clf.score(doc)["prob"]
            (wkept if apply_filters(doc, [MinChars(8000)], wcounts) else wdropped).append(doc)
        write_shards(run.stage_dir("web"), wkept)
        write_shards(run.stage_dir("web") / "dropped", wdropped)
        run.write_manifest(
            "web",
            {
                "stage": "web",
                "status": "finished",
                "summary": {"kept": len(wkept)},
                "funnel": {"records": len(wkept) + len(wdropped), "kept": len(wkept)},
                "drops": dict(wcounts),
            },
        )
    cfg = load_config([f"run.root={root}", f"run.name={name}", "executor.workers=1"])
    _run_one(cfg, run, BY_NAME["dedup"], "test", Console(quiet=True))
    return run
