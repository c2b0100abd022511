"""HTML -> main text, with charset handling that never crashes.

``decode_html`` turns raw bytes into text: the declared charset (HTTP header, else a
``<meta charset>`` in the first bytes), else UTF-8; invalid bytes become U+FFFD and are
counted. :class:`Extractor` runs the configured extractor (trafilatura by default, the most
accurate of six extractors measured here with ``include_comments=False``; resiliparse is
about 12x faster and less exact) and keeps paragraphs as separate lines; :class:`ExtractStep`
is that extraction as a step of the web stage. :func:`page_text` is the cheap text of a whole
page (every visible text, boilerplate included; resiliparse, ~1 ms a page) that the
pre-extraction checks read.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import DatagenError
from pipeline.files import one_line

EXTRACTORS = ("trafilatura", "resiliparse")
HTML_TYPES = ("text/html", "application/xhtml+xml", "application/xml+xhtml")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_HTML_SNIFF = re.compile(rb"<(!doctype html|html|head|body|title|div|p)[\s>]", re.I)


_REPLACED = [0]


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    """Like errors="replace" (one U+FFFD per bad sequence), counting the bytes replaced."""
    assert isinstance(err, UnicodeDecodeError)
    _REPLACED[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("datagen_replace", _count_and_replace)


@dataclass
class Decoded:
    text: str
    charset: str
    replaced: int  # invalid bytes replaced by U+FFFD
    unknown_charset: bool  # the declared charset was not a known codec


def is_binary(payload: bytes) -> bool:
    """NUL bytes in the first KiB: an image, PDF, archive... never text."""
    return b"\x00" in payload[:1024]


def looks_like_html(payload: bytes) -> bool:
    return _HTML_SNIFF.search(payload[:4096]) is not None


def is_html(content_type: str | None, payload: bytes) -> bool:
    """Declared HTML, or undeclared bytes that look like HTML."""
    if content_type:
        return content_type in HTML_TYPES
    return looks_like_html(payload)


def decode_html(payload: bytes, declared: str | None = None) -> Decoded:
    """Bytes -> str with the declared/meta charset, else UTF-8; bad bytes replaced and counted."""
    unknown = False
    charset = declared
    if not charset:
        m = _META_CHARSET.search(payload[:4096])
        charset = m.group(1).decode("ascii", "replace").lower() if m else None
    if charset:
        try:
            info = codecs.lookup(charset)
            # names like "hex" or "base64" are codecs but not text encodings
            charset = info.name if info._is_text_encoding else None  # type: ignore[attr-defined]
        except LookupError:
            charset = None
        unknown = charset is None
        # WHATWG: browsers read latin-1/ascii labels as windows-1252, and a utf-16 label
        # in a byte-oriented page means utf-8
        charset = _WHATWG_ALIASES.get(charset or "", charset)
    charset = charset or "utf-8"
    _REPLACED[0] = 0
    try:
        text = payload.decode(charset, errors="datagen_replace")
    except (LookupError, UnicodeError):  # e.g. idna/punycode: not usable for a page
        unknown, charset = True, "utf-8"
        text = payload.decode(charset, errors="datagen_replace")
    return Decoded(text, charset, _REPLACED[0], unknown)


_WHATWG_ALIASES = {
    "latin-1": "cp1252",
    "iso8859-1": "cp1252",
    "ascii": "cp1252",
    "utf-16": "utf-8",
    "utf-16-le": "utf-8",
    "utf-16-be": "utf-8",
}


class Extractor:
    """Main-text extraction with trafilatura (default) or resiliparse."""

    def __init__(
        self, name: str = "trafilatura", include_tables: bool = True, fast: bool = False
    ) -> None:
        if name not in EXTRACTORS:
            raise DatagenError(
                f"web.extractor: unknown extractor '{name}' (allowed: {', '.join(EXTRACTORS)})"
            )
        self.name = name
        self.include_tables = include_tables
        self.fast = fast
        # import here, not per page: a missing package is one clear error when the stage starts
        # (and in each worker), not an ImportError traceback from the first page
        try:
            if name == "resiliparse":
                from resiliparse.extract.html2text import extract_plain_text

                self._resiliparse = extract_plain_text
            else:
                import trafilatura

                self._trafilatura = trafilatura.extract
                self._load = _tree_loader()
        except ImportError as e:
            fix = (
                "pip install resiliparse"
                if name == "resiliparse"
                else "reinstall datagen with `pip install -e .`, which installs lxml_html_clean"
            )
            raise DatagenError(
                f"web.extractor={name}: cannot import it ({one_line(e)}); {fix}"
            ) from None
        if name == "trafilatura":
            # trafilatura logs every page it finds too short: that is our funnel's job
            logging.getLogger("trafilatura").setLevel(logging.CRITICAL)

    def __call__(self, html: str, url: str | None = None) -> str:
        """Main text with one paragraph per line ('' when nothing is found)."""
        if self.name == "resiliparse":
            text = self._resiliparse(
                html,
                main_content=True,
                alt_texts=False,
                preserve_formatting=True,
                list_bullets=False,
            )
        else:
            text = (
                self._trafilatura(
                    self._load(html),
                    url=url,
                    include_comments=False,
                    include_tables=self.include_tables,
                    fast=self.fast,
                    output_format="txt",
                    deduplicate=False,
                )
                or ""
            )
        return nonblank_lines(text)


def _tree_loader() -> Callable[[str], Any]:
    """html -> the lxml tree ``trafilatura.extract`` would parse from it, or the html itself
    when that is not certain (trafilatura then loads it as always).

    The tree comes from a copy of trafilatura's own parser (the same options) that gives its
    elements their Python class through lxml's C-level default lookup instead of
    ``lxml.html``'s Python callback: trafilatura makes a Python proxy for about every element
    several times over (5,000 calls a page on the benchmark's WARCs); skipping the callback
    saves ~3% of extraction (interleaved timing). Every element is an ``HtmlElement`` (only
    forms' ``FormElement`` and the like are lost: trafilatura uses none of their methods);
    tests/test_web_filters.py checks
    that the text is the same as trafilatura's on real pages. The string goes through
    trafilatura's own repair first; anything its loader would treat in another way (an
    encoding declaration lxml refuses in a str, an empty or dubious tree) is left to it."""
    from lxml import etree
    from lxml import html as lxml_html

    try:
        from trafilatura.utils import HTML_PARSER, repair_faulty_html
    except ImportError:  # another trafilatura layout: its own loading, as before
        return lambda html: html
    parser = HTML_PARSER.copy()
    parser.set_element_class_lookup(
        etree.ElementDefaultClassLookup(
            element=lxml_html.HtmlElement,
            comment=lxml_html.HtmlComment,
            pi=lxml_html.HtmlProcessingInstruction,
            entity=lxml_html.HtmlEntity,
        )
    )

    def load(html: str) -> Any:
        beginning = html[:50].lower()
        try:
            tree = lxml_html.fromstring(repair_faulty_html(html, beginning), parser=parser)
        except Exception:  # lxml's assorted errors: trafilatura's fallbacks decide
            return html
        if tree is None or len(tree) < (1 if "html" in beginning else 2):
            return html
        return tree

    return load


def nonblank_lines(text: str) -> str:
    """One stripped, non-empty line per paragraph."""
    return "\n".join(ln for ln in (x.strip() for x in text.splitlines()) if ln)


def page_text(html: str) -> str:
    """All visible text of a page, one block per line (no script, style, alt texts, form
    fields): what the pre-extraction checks read, at ~5% of trafilatura's cost."""
    from resiliparse.extract.html2text import extract_plain_text

    text = extract_plain_text(
        html, main_content=False, alt_texts=False, links=False, form_fields=False, noscript=False
    )
    return nonblank_lines(text)


class ExtractStep:
    """HTML pages -> their main text (``Extractor``); plain-text records pass unchanged. A page
    with no main text is dropped as ``extract.empty``; one the extractor fails on (lxml and
    trafilatura raise assorted errors on pathological markup) as ``extract.error``."""

    name = "extract"

    def __init__(self, extractor: str, include_tables: bool, fast: bool) -> None:
        self.args = (extractor, include_tables, fast)
        self.extractor: Extractor | None = None

    def setup(self) -> None:
        if self.extractor is None:
            self.extractor = Extractor(*self.args)

    def process(self, batch: list[Any], stats: Any) -> list[Any]:
        self.setup()
        assert self.extractor is not None
        for page in batch:
            if not page.is_html:
                continue
            try:
                text = self.extractor(page.text, page.url)
            except (ValueError, TypeError, RecursionError, AttributeError, KeyError, IndexError):
                page.drop_reason = "extract.error"
                continue
            page.set_text(text)
            if not text:
                page.drop_reason = "extract.empty"
        return batch
