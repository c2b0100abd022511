"""Real web data from ../shared/data/web for the web tests and scripts/bench/web_stage.py
(nothing here is hand-written text)."""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WEB = SHARED / "web"
CC = WEB / "commoncrawl_warc"
OTHER = WEB / "other_web_archives"
RESILIPARSE = CC / "resiliparse_CC-MAIN-2020-34_subset.warc.gz"
WHIRLWIND = CC / "commoncrawl_whirlwind.warc.gz"
WHIRLWIND_WET = CC / "commoncrawl_whirlwind.warc.wet.gz"
WEBIS_SMALL = CC / "webis_CC-MAIN-20150226074059-00000_subset.warc.gz"
WEBIS_BIG = CC / "webis_CC-MAIN-20150226074105-00336_subset.warc.gz"
ARC = CC / "copycat_cc2008_small-sample-1213893279526_0.arc.gz"
IAH = OTHER / "IAH-20080430204825-00000-blackbook.warc.gz"
WAYBACK = OTHER / "copycat_wayback-snapshots-topic-02.warc.gz"
DOLMA0 = OTHER / "dolma_sample-0000.warc.gz"
DOLMA1 = OTHER / "dolma_sample-0001.warc.gz"
CCNET = sorted((WEB / "ccnet_text").glob("*.jsonl.gz"))
WEB_LARGE = SHARED / "web_large"
DOLMA_JSONL = WEB_LARGE / "cc_samples/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"
HTML_PAGES = WEB_LARGE / "html_pages"
POSTLIGHT = HTML_PAGES / "postlight_parser_fixtures.tar.xz"
OPENSTAX = SHARED / "text/openstax_python/introduction-python-programming.modules_text.jsonl"


def warcio_counts(fileobj) -> Counter[str]:  # noqa: ANN001 - any binary stream
    """Record types as warcio itself counts them."""
    return Counter(rec.rec_type for rec in ArchiveIterator(fileobj))


def warcio_payloads(path: Path) -> dict[str, bytes]:
    """{WARC-Record-ID: payload} of the response records, read by warcio."""
    out = {}
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f):
            if rec.rec_type == "response":
                out[rec.rec_headers.get_header("WARC-Record-ID")] = rec.content_stream().read()
    return out


@lru_cache(maxsize=1)
def openstax_texts() -> list[str]:
    lines = OPENSTAX.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def train_quality_model(path: Path) -> Path:
    """A real fastText classifier: OpenStax textbook modules (positive) vs Wayback SEO
    directory pages (negative), as extracted by the web stage's extractor."""
    from filters.classifier import train_classifier
    from pipeline.config import ClassifierConfig
    from pipeline.web.extract import Extractor, decode_html
    from pipeline.web.readers import ReadStats, iter_warc

    ex = Extractor()
    seo = []
    for r in iter_warc(str(WAYBACK), ReadStats()):
        text = ex(decode_html(r.payload or b"", r.charset).text, r.url)
        if text:
            seo.append(text)
        if len(seo) == 40:
            break
    good = openstax_texts()[:40]
    labels = [True] * len(good) + [False] * len(seo)
    train_classifier(good + seo, labels, path, ClassifierConfig(dim=16, epoch=10), seed=1)
    return path
