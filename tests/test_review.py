"""`datagen review`: the HTML page, rendered in headless Chromium, and its statistics."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from emit_testdata import build_run, openstax_modules
from rich.console import Console

from pipeline.config import load_config
from pipeline.errors import DatagenError
from pipeline.records import Document
from pipeline.review import distinct_n, highlight, near_dup_rate, write_review
from pipeline.runs import Run, read_shards
from pipeline.stages import StageSpec, _run_one


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


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    run = build_run(root)
    cfg = load_config([f"run.root={root}", "run.name=t", "review.n=6"])
    _run_one(cfg, run, StageSpec("emit", needs=("filter",)), "test", Console(quiet=True))
    return cfg, run, write_review(cfg, None)


def test_review_page_renders_in_chromium_with_funnel_plots_and_samples(reviewed):
    cfg, run, page = reviewed
    assert page == run.path / "review" / "filter+web.html"
    dom = render(page, "--dump-dom")
    parser = TextOf()
    parser.feed(dom)
    text = " ".join(parser.parts)
    for heading in (
        "Funnel",
        "Length and quality",
        "Diversity (kept)",
        "Kept documents (6 sampled)",
        "Dropped documents (6 sampled)",
        "most frequent first sentences",
        "most frequent openers",
    ):
        assert heading in text, heading
    # funnel counts come from the stage manifests
    drops = run.read_manifest("filter")["drops"]
    assert f"classifier.min_score={drops['classifier.min_score']}" in text
    assert "length.too_short" in text and "records=62" in text
    # the two histograms are drawn, with bars
    svgs = re.findall(r"<svg class=\"hist\".*?</svg>", dom, flags=re.S)
    assert len(svgs) == 2 and all(s.count("<rect") >= 3 for s in svgs)
    # sampled kept and dropped documents carry their metadata and reasons
    assert text.count("dropped: ") >= 1 and "teacher SmolLM2-135M-Instruct" in text
    topics = {d.topic for d in read_shards(run.path / "filter", Document)}
    assert any(t and t in text for t in topics)
    assert "<mark>" in dom
    assert "http://" not in dom.split("<body")[0] and "<script" not in dom  # self-contained


def test_review_screenshot_is_not_blank(reviewed, tmp_path):
    _, _, page = reviewed
    shot = tmp_path / "shot.png"
    render(page, f"--screenshot={shot}", "--window-size=1200,1600")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_review_of_emit_stage_samples_emitted_documents(reviewed):
    cfg, run, _ = reviewed
    page = write_review(cfg, "emit")
    html = page.read_text()
    assert page.name == "emit.html" and "Kept documents (6 sampled)" in html
    assert "Dropped documents (0 sampled)" in html


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


def test_review_of_generate_reads_its_outputs_file(tmp_path):
    from pipeline.runs import JsonlAppender

    run = Run(tmp_path, "g")
    mods = openstax_modules()[:12]
    with JsonlAppender(run.stage_dir("generate") / "outputs.jsonl", fsync=False) as out:
        for m in mods:
            out.write(
                Document(
                    id=m["module_id"],
                    text=m["text"],
                    topic=m["title"],
                    format="textbook",
                    model="SmolLM2-135M-Instruct",
                )
            )
    cfg = load_config([f"run.root={tmp_path}", "run.name=g", "review.n=3"])
    page = write_review(cfg, None)  # no filter/web output yet: the latest stage with documents
    html = page.read_text()
    assert page.name == "generate.html"
    assert "12 kept and 0 dropped" in html and "Kept documents (3 sampled)" in html
    assert sum(m["title"] in html for m in mods) >= 3
