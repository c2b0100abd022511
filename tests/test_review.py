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
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from emit_testdata import copy_run
from filters_testdata import openstax_modules
from markupsafe import escape

from filters.dedup import MinHashParams
from pipeline.config import load_config
from pipeline.errors import DatagenError
from pipeline.records import Document, quality_of
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


def plots(dom: str) -> dict[str, str]:
    """The page's histograms (inline SVG) by title."""
    found = re.findall(r'<svg class="hist"[^>]*aria-label="([^"]*)".*?</svg>', dom, flags=re.S)
    svgs = re.findall(r'<svg class="hist".*?</svg>', dom, flags=re.S)
    return dict(zip(found, svgs, strict=True))


def bars(svg: str) -> dict[str, dict[int, int]]:
    """{series: {bin: count}} of a histogram drawn by pipeline.review.histogram_svg."""
    out: dict[str, dict[int, int]] = {}
    for name, i, n in re.findall(r'data-series="([^"]+)" data-bin="(\d+)" data-count="(\d+)"', svg):
        out.setdefault(name, {})[int(i)] = int(n)
    return out


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
    # the length and quality histograms are drawn, with bars (the classifier's follow)
    svgs = plots(dom)
    for name in ("length (words, log scale)", "quality score"):
        assert svgs[name].count("<rect") >= 3, name
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


def test_review_page_shows_the_classifier_score_of_kept_and_dropped_pages(reviewed):
    """Both sides of the web stage's quality cut: every real page the classifier scored, kept
    (at or above the run's web.min_quality) and dropped, binned by its score, the cut drawn."""
    cfg, run, _, dom = reviewed
    cut = run.read_manifest("web")["quality"]["min_quality"]  # the run's, not the review's
    assert cut != cfg.web.min_quality
    low = run.read_manifest("web")["drop_reasons"]["quality.low_score"]
    dropped = [
        quality_of(d.scores)
        for d in read_shards(run.path / "web" / "dropped", Document)
        if quality_of(d.scores) is not None
    ]
    assert sum(q < cut for q in dropped) == low > 0  # the pages the classifier dropped
    # the kept side is what dedup kept (the final set), its web pages
    kept = [quality_of(d.scores) for d in read_shards(run.path / "dedup", Document)]
    kept = [q for q, d in zip(kept, read_shards(run.path / "dedup", Document), strict=True)
            if d.source == "web"]  # fmt: skip
    assert kept and all(q >= cut for q in kept)

    def hist(qs: list[float]) -> dict[int, int]:
        return dict(Counter(min(int(q * 20), 19) for q in qs))

    svg = plots(dom)["web: classifier score of the reviewed documents, kept vs dropped"]
    assert bars(svg) == {"kept": hist(kept), "dropped": hist(dropped)}
    assert f"<title>cut at {cut:g}</title>" in svg
    assert "Quality classifier" in dom and "classifier-heldout" not in dom  # given: no split


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
    # the hashed count is the exact count of distinct word tuples
    for n in (1, 2, 3):
        grams = [
            g
            for t in doubled
            for g in zip(*(re.findall(r"\w+", t.lower())[i:] for i in range(n)), strict=False)
        ]
        assert distinct_n(doubled, n) == len(set(grams)) / len(grams)
    params = MinHashParams(seed=1)
    assert near_dup_rate(texts, params) == 0.0
    assert near_dup_rate(doubled, params) == pytest.approx(8 / 24)
    # a copy with a few words changed is a near duplicate (verified Jaccard >= 0.8)
    edited = texts[5].replace(" the ", " a ", 3)
    assert near_dup_rate([*texts, edited], params) == pytest.approx(2 / 21)


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
    """The review's statistics stream: counters and the bottom-k sample of three parts of the
    real documents, merged in any order, equal those of one pass over all of them."""
    folders = [
        (s, k, real_run.path / s / ("" if k else "dropped"))
        for s in ("filter", "web", "dedup")
        for k in (True, False)
    ]
    docs = [
        (_doc_view(d, s, kept), (f"{s}/{kept}", i))
        for s, kept, folder in folders
        for i, d in enumerate(read_shards(folder, Document))
    ]
    assert len(docs) > 100
    one_c, one_s = Counts(), Sample(25, seed=3)
    for d, at in docs:
        one_c.add(d)
        one_s.add(d, at)

    def merged(order: tuple[int, ...]) -> tuple[Counts, Sample]:
        parts = [(Counts(), Sample(25, seed=3)) for _ in range(3)]
        for i, (d, at) in enumerate(reversed(docs)):
            parts[i % 3][0].add(d)
            parts[i % 3][1].add(d, at)
        c, smp = Counts(), Sample(25, seed=3)
        for i in order:
            c.merge(parts[i][0])
            smp.merge(parts[i][1])
        return c, smp

    def stats(c: Counts) -> tuple:
        return c.n, c.length, c.quality, c.reasons, c.by_origin

    def ids(smp: Sample) -> list[tuple[str, str]]:
        return [(d["stage"], d["id"]) for d in smp.items()]

    for order in ((0, 1, 2), (2, 0, 1)):
        c, smp = merged(order)
        assert stats(c) == stats(one_c)
        assert ids(smp) == ids(one_s)
    assert one_c.n == len(docs)
    assert sum(one_c.reasons.values()) == sum(not d["kept"] for d, _ in docs)
    # the bottom 25 by the seeded hash, smallest first
    ranked = sorted((d for d, _ in docs), key=lambda d: (one_s.key(d), d["id"]))
    assert ids(one_s) == [(d["stage"], d["id"]) for d in ranked[:25]]
    assert len({d["stage"] for d in one_s.items()}) > 1
