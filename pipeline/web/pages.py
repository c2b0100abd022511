"""Web records as documents inside the web stage, and the steps before and around extraction.

A :class:`Page` is a :class:`~pipeline.records.Document` that still knows the record it was read
from: until the extract step its text is the page's HTML (decoded), after it the main text.
It is written out as a plain Document (the extra state is private).

Steps, cheapest first, so that the expensive extraction runs only on pages that may be kept:

- :class:`RecordStep`: HTTP status not 2xx, empty, binary or non-HTML payloads are dropped
  (``extract.http_status``, ``extract.empty``, ``extract.binary``, ``extract.non_html``); the
  rest is decoded (charset problems replaced and counted);
- the pre-extraction checks (filters of the ``precheck`` step) read the page's whole visible
  text (``extract.page_text``, boilerplate included): :class:`PageLanguageFilter` drops pages
  that give every wanted language under ``web.precheck_lang_score``; :class:`PageWordsFilter`
  and :class:`PageRepetitionFilter` apply Gopher's word count, stop-word and top n-gram rules
  to it (a page with fewer words or stop words than the rule asks for cannot have more after
  extraction; the n-gram rule held on every page of the real data, docs/benchmarks.md);
  :class:`PageHeuristicsFilter` drops a page whose visible text fails at least
  ``web.precheck_failed_families`` of the web stage's heuristic filters (Gopher repetition and
  quality, FineWeb, C4): such a page is junk all over (listings, link farms, tables of numbers),
  and its main text has not passed them on any page of the real data (docs/benchmarks.md);
- :class:`LanguageStep`: the language filter on the extracted text, recording the language.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from filters.gopher import GopherRepetitionFilter
from filters.lid import LanguageIdFilter
from pipeline.config import GopherQualityConfig, GopherRepetitionConfig, WebConfig
from pipeline.records import Document, stable_id
from pipeline.steps import FilterStep, Stats, score_all, setup_filters
from pipeline.web.extract import decode_html, is_binary, is_html, nonblank_lines, page_text
from pipeline.web.readers import InputSource, ReadStats, WebRecord, iter_source


class Page(Document):
    """A web document in the stage. ``is_html``: the text is still the page's HTML."""

    _rec: WebRecord | None = PrivateAttr(None)
    _html: bool = PrivateAttr(False)
    _page_text: str | None = PrivateAttr(None)
    _page_words: list[str] | None = PrivateAttr(None)
    _raw_words: int = PrivateAttr(0)

    @property
    def record(self) -> WebRecord:
        assert self._rec is not None
        return self._rec

    @property
    def is_html(self) -> bool:
        return self._html

    def set_text(self, text: str) -> None:
        """The extracted (or cleaned plain) text replaces the HTML."""
        self.text = text
        self._html = False

    def page_text(self) -> str:
        """The page's whole visible text (computed once)."""
        if self._page_text is None:
            self._page_text = page_text(self.text) if self._html else self.text
        return self._page_text

    def page_words(self) -> list[str]:
        """The whitespace words of :meth:`page_text` (split once for every pre-check)."""
        if self._page_words is None:
            self._page_words = self.page_text().split()
        return self._page_words

    def output(self) -> Page:
        """As written: a page dropped before extraction keeps its visible text (when the
        pre-checks read it) instead of its HTML."""
        if self._html:
            self.text = self._page_text or ""
            self._html = False
        return self


def read_pages(src: InputSource, stats: ReadStats, w: WebConfig) -> Iterator[Page]:
    """The records of one input part as Pages (``web.max_records`` at most per part)."""
    records = iter_source(
        src, stats, w.text_field, w.url_field, w.date_field, w.hf_split, w.hf_config or None
    )
    for n, rec in enumerate(records, 1):
        yield _page(rec)
        if w.max_records and n >= w.max_records:
            return


def _page(r: WebRecord) -> Page:
    # the file's last path parts: the same on every machine for the same data layout, and
    # distinct for a/train-00000.parquet and b/train-00000.parquet
    name = "/".join(Path(r.source_file).parts[-3:])
    page = Page(
        id=stable_id(name, r.offset, r.record_id, r.url, prefix="web-"),
        text="",
        source="web",
        url=r.url,
        source_file=r.source_file,
        warc_record_id=r.record_id,
        offset=r.offset,
        fetch_date=r.fetch_date,
    )
    page._rec = r
    page._raw_words = len(r.text.split() if r.text is not None else (r.payload or b"").split())
    return page


def raw_words(pages: Sequence[Page]) -> int:
    """Whitespace words of the records as read (HTML markup included)."""
    return sum(p._raw_words for p in pages)


class RecordStep:
    """What the record itself says: HTTP status, empty/binary/non-HTML payloads. Survivors get
    their text: plain-text records (WET, JSONL, parquet, HF) as they are (one line per
    paragraph, lone surrogates replaced), HTML pages decoded (charset fixes counted)."""

    name = "record"

    def setup(self) -> None:
        pass

    def process(self, batch: list[Page], stats: Stats) -> list[Page]:
        for page in batch:
            r = page.record
            if r.text is not None:
                # lone surrogates (legal in JSON escapes) break fastText and JSON output
                page.set_text(nonblank_lines(r.text.encode("utf-8", "replace").decode("utf-8")))
                r.text = None
                if not page.text:
                    page.drop_reason = "extract.empty"
                continue
            payload, r.payload = r.payload or b"", None  # the decoded text is kept, not both
            page.drop_reason = _record_reason(r, payload)
            if page.drop_reason:
                continue
            dec = decode_html(payload, r.charset)
            if dec.replaced:
                stats.add("charset.records_with_replaced_bytes")
                stats.add("charset.replaced_bytes", dec.replaced)
            if dec.unknown_charset:
                stats.add("charset.unknown_declared_charset")
            page.text = dec.text
            page._html = True
        return batch


def _record_reason(r: WebRecord, payload: bytes) -> str | None:
    if r.http_status is not None and not 200 <= r.http_status < 300:
        return "extract.http_status"
    if not payload.strip():
        return "extract.empty"
    if is_binary(payload):
        return "extract.binary"
    if not is_html(r.content_type, payload):
        return "extract.non_html"
    return None


class PageLanguageFilter:
    """Pre-extraction language check on the page's visible text (its first ``max_words``
    words): drops a page that gives every wanted language less than ``max_score`` (a page
    confidently in another language) as ``precheck.language``; scores ``precheck.lid_<lang>``.
    Plain-text records are left to the language step."""

    family = "precheck"

    def __init__(self, lid: LanguageIdFilter, max_score: float, max_words: int = 1000) -> None:
        self.lid = lid
        self.max_score = max_score
        self.max_words = max_words

    def setup(self) -> None:
        self.lid.setup()

    def score(self, page: Page) -> dict[str, float]:
        if not page.is_html:
            return {}
        words = page.page_words()[: self.max_words]
        if not words:
            return {"page_words": 0.0}
        preds = dict(self.lid.predict(" ".join(words)))
        return {f"lid_{lang}": preds.get(lang, 0.0) for lang in self.lid.languages}

    def keep(self, s: dict[str, float]) -> str | None:
        if not s:
            return None
        if s.get("page_words", 1.0) == 0:
            return "precheck.empty"
        best = max(s.get(f"lid_{lang}", 0.0) for lang in self.lid.languages)
        return "precheck.language" if best < self.max_score else None


class PageWordsFilter:
    """Gopher's word count and stop-word rules (``web.gopher_quality``: at least
    ``min_words`` words and ``min_stop_words`` stop words) on the page's visible text:
    extraction only removes text, so a page under either bound stays under it."""

    family = "precheck"

    def __init__(self, cfg: GopherQualityConfig) -> None:
        self.cfg = cfg
        self.stop = frozenset(w.lower() for w in cfg.stop_words)

    def score(self, page: Page) -> dict[str, float]:
        if not page.is_html:
            return {}
        words = page.page_words()
        stop = sum(1 for w in words if w.lower() in self.stop)
        return {"n_words": float(len(words)), "stop_words": float(stop)}

    def keep(self, s: dict[str, float]) -> str | None:
        if not s:
            return None
        if s["n_words"] < self.cfg.min_words:
            return "precheck.n_words"
        if s["stop_words"] < self.cfg.min_stop_words:
            return "precheck.stop_words"
        return None


class PageRepetitionFilter:
    """Gopher's top 2-4-gram rules (``web.gopher_repetition.max_top_ngram_char_frac``) on the
    page's visible text: forum listings and directory pages that repeat one phrase all over
    are dropped before the (slow, on such pages) extraction."""

    family = "precheck"

    def __init__(self, cfg: GopherRepetitionConfig) -> None:
        self.limits = cfg.max_top_ngram_char_frac
        # only the top n-gram fractions (the duplicate 5-10-gram ones cost more)
        self.gopher = GopherRepetitionFilter(cfg.model_copy(update={"max_dup_ngram_char_frac": {}}))

    def score(self, page: Page) -> dict[str, float]:
        return self.score_batch([page])[0]

    def score_batch(self, pages: Sequence[Page]) -> list[dict[str, float]]:
        """The HTML pages' n-gram passes in one batch (``GopherRepetitionFilter.score_batch``)."""
        texts = [p.page_text() for p in pages if p.is_html]
        scores = iter(self.gopher.score_batch(texts) if texts else [])
        keys = [f"top_{n}gram_char_frac" for n in self.limits]
        out = []
        for p in pages:
            s = next(scores) if p.is_html else {}
            out.append({k: s[k] for k in keys} if s else {})
        return out

    def keep(self, s: dict[str, float]) -> str | None:
        for n, limit in sorted(self.limits.items()):
            if s.get(f"top_{n}gram_char_frac", 0.0) > limit:
                return f"precheck.top_{n}gram_char_frac"
        return None


class PageHeuristicsFilter:
    """The web stage's heuristic filters on the page's visible text: drops the page as
    ``precheck.heuristics`` when at least ``min_failed`` of them fail. A filter scores only
    the pages still undecided (that can reach ``min_failed`` and have not), so the last one
    (the costliest, Gopher repetition) sees few; ``failed_families`` (stored) counts the
    failures among the filters that scored the page."""

    family = "precheck"

    def __init__(self, filters: Sequence[Any], min_failed: int) -> None:
        self.filters = filters
        self.min_failed = min_failed

    def setup(self) -> None:
        setup_filters(self.filters)

    def score(self, page: Page) -> dict[str, float]:
        return self.score_batch([page])[0]

    def score_batch(self, pages: Sequence[Page]) -> list[dict[str, float]]:
        html = [i for i, p in enumerate(pages) if p.is_html]
        failed = dict.fromkeys(html, 0)
        for k, f in enumerate(self.filters):
            left = len(self.filters) - k
            todo = [i for i in html if failed[i] < self.min_failed <= failed[i] + left]
            if not todo:
                break
            texts = [pages[i].page_text() for i in todo]
            for i, s in zip(todo, score_all(f, texts), strict=True):
                failed[i] += f.keep(s) is not None
        return [
            {"failed_families": float(failed[i])} if i in failed else {} for i in range(len(pages))
        ]

    def keep(self, s: dict[str, float]) -> str | None:
        if s.get("failed_families", 0.0) >= self.min_failed:
            return "precheck.heuristics"
        return None


class LanguageStep(FilterStep):
    """The language filter on the (extracted) text; the best language goes on the record."""

    def __init__(self, lid: LanguageIdFilter) -> None:
        super().__init__("language", [lid])
        self.lid = lid

    def process(self, batch: list[Any], stats: Stats) -> list[Any]:
        for doc in batch:
            doc.language = self.lid.language(doc.text)[0]
        return super().process(batch, stats)
