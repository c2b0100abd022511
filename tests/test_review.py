"""`datagen review` on the session's real run (tests/emit_testdata.py): the HTML page, rendered
in headless Chromium, and its statistics."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from emit_testdata import copy_run
from filters_testdata import openstax_modules
from markupsafe import escape

from pipeline.config import load_config
from pipeline.errors import DatagenError
from pipeline.records import Document
from pipeline.review import (
    Counts,
    Sample,
    _doc_view,
    distinct_n,
    highlight,
    near_dup_rate,
    write_review,
)
from pipeline.runs import Run, read_shards


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed (CI must install the Debian package chromium)")
    pytest.skip("chromium not installed (apt-get install -y chromium); not in CI")


def render(page: Path, *extra: str) -> str:
    """The DOM after Chromium has loaded the page (file:// URL, no network)."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *extra,
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    return out.stdout


class TextOf(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("style", "script")

    def handle_endtag(self, tag):
        self.skip -= tag in ("style", "script")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


class TableRows(HTMLParser):
    """The text of each cell, row by row, of the table with id ``table_id``."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id = table_id
        self.inside = False
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.inside = dict(attrs).get("id") == self.table_id
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def table(dom: str, table_id: str) -> list[list[str]]:
    parser = TableRows(table_id)
    parser.feed(dom)
    return parser.rows


def reasons(d: dict[str, int]) -> str:
    return ", ".join(f"{a}={b}" for a, b in d.items()) or "none"


def review_cfg(run: Run, out: Path):
    """Review the session's run without writing into it (review.out)."""
    return load_config(
        [f"run.root={run.path.parent}", f"run.name={run.name}", "review.n=6", f"review.out={out}"]
    )


@pytest.fixture(scope="module")
def reviewed(real_run, tmp_path_factory):
    cfg = review_cfg(real_run, tmp_path_factory.mktemp("review") / "filter+web.html")
    page = write_review(cfg, None)
    return cfg, real_run, page, render(page, "--dump-dom")


def test_review_page_renders_in_chromium_with_funnel_plots_and_samples(reviewed):
    _, run, page, dom = reviewed
    parser = TextOf()
    parser.feed(dom)
    text = " ".join(parser.parts)
    for heading in (
        "Funnel",
        "web funnel: documents and words left after each step",
        "Length and quality",
        "Diversity (kept)",
        "Kept documents (6 sampled)",
        "Dropped documents (6 sampled)",
        "most frequent first sentences",
        "most frequent openers",
    ):
        assert heading in text, heading
    # the two histograms are drawn, with bars
    svgs = re.findall(r"<svg class=\"hist\".*?</svg>", dom, flags=re.S)
    assert len(svgs) == 2 and all(s.count("<rect") >= 3 for s in svgs)
    # sampled documents: kept ones are in the stages' outputs, dropped ones show real reasons
    kept_ids = {d.id for d in read_shards(run.path / "dedup", Document)}
    shown = re.findall(r"id (\S+)\s+·\s+(?:filter|web|dedup)\s+·", text)
    assert len(shown) == 12 and sum(i in kept_ids for i in shown) == 6
    real = {r for s in ("filter", "web", "dedup") for r in run.read_manifest(s)["drop_reasons"]}
    badges = re.findall(r'<span class="badge dropped">\s*dropped: (\S+)\s*</span>', dom)
    assert len(badges) == 6 and set(badges) <= real
    assert "http://" not in dom.split("<body")[0] and "<script" not in dom  # self-contained


def test_review_page_shows_the_real_web_funnel(reviewed):
    """The web stage's funnel (a list of steps in its manifest) with every step's documents,
    tokens and drops per reason, as the DOM shows it."""
    _, run, _, dom = reviewed
    steps = run.read_manifest("web")["funnel"]
    rows = table(dom, "funnel-web")
    assert rows[0] == ["step", "documents", "tokens", "dropped here (per reason)"]
    assert rows[1:] == [
        [s["step"], f"{s['documents']:,}", f"{s['tokens']:,}", reasons(s["dropped"])] for s in steps
    ]
    names = [r[0] for r in rows[1:]]
    assert names == [
        "read", "record", "blocklist", "precheck", "extract", "language", "heuristics",
        "clean", "quality", "decontam",
    ]  # fmt: skip
    by_step = {s["step"]: s for s in steps}
    # web.min_quality drops some real pages; the heuristics drop many
    assert by_step["quality"]["dropped"]["quality.low_score"] > 0
    assert sum(by_step["heuristics"]["dropped"].values()) > 10
    low = by_step["quality"]["dropped"]["quality.low_score"]
    assert f"quality.low_score={low}" in rows[1 + names.index("quality")][3]


def test_review_page_shows_every_stages_real_drop_counts(reviewed):
    _, run, _, dom = reviewed
    rows = table(dom, "funnel-stages")[1:]
    order = [
        *("plan", "generate", "revise", "annotate", "train_classifier", "filter", "web"),
        *("dedup", "emit", "reverse", "preferences"),
    ]
    assert [r[0] for r in rows] == order and all(r[1] == "finished" for r in rows)
    checked = 0
    for stage, (_, _, result, counts) in zip(order, rows, strict=True):
        m = run.read_manifest(stage)
        for k, v in m["summary"].items():
            assert f"{k}={v}" in result, (stage, k)
        for key in ("drop_reasons", "failure_reasons", "finish_reasons"):
            if key in m:
                assert f"{key}: {reasons(m[key])}" in counts, (stage, key)
                checked += 1
    # filter, web and dedup drops, generate's failures and finish reasons (annotate is skipped:
    # the run is given a classifier, classifier.model_path)
    assert checked == 5
    assert sum(run.read_manifest("web")["drop_reasons"].values()) > 100


def test_review_screenshot_is_not_blank(reviewed, tmp_path):
    _, _, page, _ = reviewed
    shot = tmp_path / "shot.png"
    render(page, f"--screenshot={shot}", "--window-size=1200,1600")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_review_of_emit_stage_samples_emitted_documents(real_run, tmp_path):
    html_text = write_review(review_cfg(real_run, tmp_path / "emit.html"), "emit").read_text()
    assert "Kept documents (6 sampled)" in html_text
    assert "Dropped documents (0 sampled)" in html_text


def test_review_of_filter_shows_teacher_topic_and_required_words(real_run, tmp_path):
    run = real_run
    dom = render(write_review(review_cfg(run, tmp_path / "filter.html"), "filter"), "--dump-dom")
    parser = TextOf()
    parser.feed(dom)
    text = " ".join(parser.parts)
    kept = list(read_shards(run.path / "filter", Document))
    assert text.count("teacher SmolLM2-135M-Instruct") == min(6, len(kept)) + min(
        6, run.read_manifest("filter")["dropped"]
    )
    assert sum(bool(d.topic and d.topic in text) for d in kept) >= min(6, len(kept))
    assert "<mark>" in dom  # the required words of each synthetic document


def test_required_words_are_highlighted_in_inflected_forms():
    text = openstax_modules()[10]["text"]
    out = str(highlight(text, ["print", "variable"]))
    forms = r"\b(prints?|printed|printing|variables?)\b"
    expected = re.findall(forms, text, flags=re.I)
    marked = re.findall(r"<mark>(.*?)</mark>", out)
    assert len(expected) >= 5 and marked == expected
    assert {m.lower() for m in marked} > {"print", "variables"}
    assert "<" not in re.sub(r"</?mark>", "", out)  # the text itself is escaped


def test_highlight_never_breaks_entities_for_words_like_lt_amp_quot():
    """A required word that is also an entity name (lt, amp, quot) is matched in the raw text,
    not inside the &lt; &amp; &quot; of the escaped text."""
    text = next(m["text"] for m in openstax_modules() if all(c in m["text"] for c in '<>&"'))
    out = str(highlight(text, ["lt", "amp", "quot", "string"]))
    assert html.unescape(re.sub(r"</?mark>", "", out)) == text  # every entity whole
    marked = re.findall(r"<mark>(.*?)</mark>", out)
    expected = re.findall(r"\b(strings?|lt|amp|quot)\b", text, flags=re.I)
    assert marked == expected and len(marked) >= 3
    assert "&lt;" in out and "&amp;" in out and "&quot;" in out
    assert not re.search(r"&<mark>|</mark>;", out)


def test_distinct_n_and_near_dup_rate_on_real_text():
    texts = [m["text"] for m in openstax_modules()[:20]]
    assert distinct_n(texts, 1) < distinct_n(texts, 2) < distinct_n(texts, 3) <= 1.0
    doubled = texts + texts[:4]
    assert distinct_n(doubled, 3) < distinct_n(texts, 3)
    assert near_dup_rate(texts, seed=1) == 0.0
    assert near_dup_rate(doubled, seed=1) == pytest.approx(8 / 24)


def test_review_without_any_output_is_an_error(tmp_path):
    cfg = load_config([f"run.root={tmp_path}", "run.name=empty"])
    with pytest.raises(DatagenError, match="no stage output with documents"):
        write_review(cfg, None)
    with pytest.raises(DatagenError, match="has no documents to review"):
        write_review(cfg, "plan")
    Run(tmp_path, "empty").stage_dir("filter")
    with pytest.raises(DatagenError, match="filter: no documents to review"):
        write_review(cfg, "filter")


def test_review_of_generate_reads_its_outputs_file(real_run, tmp_path):
    run = copy_run(real_run, tmp_path, without=("filter", "web", "dedup", "emit"))
    cfg = load_config([f"run.root={tmp_path}", "run.name=t", "review.n=3"])
    page = write_review(cfg, None)  # no filter/web output: the latest stage with documents
    html_text = page.read_text()
    assert page == run.path / "review" / "generate.html"
    n = run.read_manifest("generate")["items"]
    assert f"{n} kept and 0 dropped" in html_text and "Kept documents (3 sampled)" in html_text
    plan = [json.loads(line) for line in (run.path / "plan" / "plan.jsonl").open()]
    assert sum(str(escape(p["topic"])) in html_text for p in plan) >= 3


def test_review_sample_and_counters_merge_into_the_one_pass_result(real_run):
    """The review's statistics stream: counters and the bottom-k sample of two halves of the
    real documents (in any order) merge into those of one pass over all of them."""
    docs = [
        _doc_view(d, s, kept)
        for s in ("filter", "web", "dedup")
        for kept in (True, False)
        for d in read_shards(real_run.path / s / ("" if kept else "dropped"), Document)
    ]
    assert len(docs) > 100
    one_c, one_s = Counts(), Sample(25, seed=3)
    for d in docs:
        one_c.add(d)
        one_s.add(d)
    halves = [(Counts(), Sample(25, seed=3)) for _ in range(2)]
    for i, d in enumerate(reversed(docs)):
        halves[i % 2][0].add(d)
        halves[i % 2][1].add(d)
    c = halves[1][0].merge(halves[0][0])
    smp = halves[1][1].merge(halves[0][1])
    assert (c.n, c.length, c.quality, c.reasons) == (
        one_c.n,
        one_c.length,
        one_c.quality,
        one_c.reasons,
    )
    assert c.n == len(docs) and sum(c.reasons.values()) == sum(not d["kept"] for d in docs)
    assert [(d["stage"], d["id"]) for d in smp.items()] == [
        (d["stage"], d["id"]) for d in one_s.items()
    ]
    assert len(one_s.items()) == 25 and len({d["stage"] for d in one_s.items()}) > 1
