"""Real text from ../shared/data for the filter / dedup / decontam / classifier tests and the
benchmarks under scripts/bench/ (nothing here is hand-written text)."""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@lru_cache(maxsize=1)
def openstax_modules() -> list[dict[str, str]]:
    path = SHARED / "text/openstax_python/introduction-python-programming.modules_text.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@lru_cache(maxsize=1)
def wikitext_articles() -> list[str]:
    """WikiText-2 test articles (split at top-level ' = Title = ' lines)."""
    raw = (SHARED / "text/wikitext2_test/wiki.test.raw").read_text(encoding="utf-8")
    raw = raw.replace("\r\n", "\n")
    parts = re.split(r"^(?= = [^=].* = $)", raw, flags=re.MULTILINE)
    return [
        "\n\n".join(ln.strip() for ln in p.splitlines() if ln.strip())
        for p in parts
        if len(p.strip()) > 500
    ]


@lru_cache(maxsize=1)
def ccnet_docs() -> list[str]:
    out = []
    for p in sorted((SHARED / "web/ccnet_text").glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            out += [json.loads(line)["text"] for line in f if line.strip()]
    return out


def _warc_records(path: Path) -> Iterator[bytes]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    def html_of(stream: io.IOBase) -> Iterator[bytes]:
        for rec in ArchiveIterator(stream):
            if rec.rec_type != "response" or rec.http_headers is None:
                continue
            if "html" in (rec.http_headers.get_header("Content-Type") or ""):
                yield rec.content_stream().read()

    try:
        with open(path, "rb") as f:
            yield from html_of(f)
    except ArchiveLoadFailed:  # one gzip stream for the whole file: read it decompressed
        with gzip.open(path, "rb") as f:
            yield from html_of(f)


@lru_cache(maxsize=4)
def web_pages(
    names: tuple[str, ...] = (
        "resiliparse_CC-MAIN-2020-34_subset.warc.gz",
        "dolma_sample-0000.warc.gz",
        "dolma_sample-0001.warc.gz",
    ),
    min_chars: int = 200,
) -> list[str]:
    """Main text (trafilatura) of the HTML responses in the named WARC files (all when empty)."""
    import trafilatura

    files = sorted((SHARED / "web").glob("*/*.warc.gz"))
    if names:
        files = [p for p in files if p.name in names]
    out = []
    for p in files:
        for html in _warc_records(p):
            text = trafilatura.extract(html.decode("utf-8", "replace"))
            if text and len(text) >= min_chars:
                out.append(text)
    return out


@lru_cache(maxsize=1)
def bench_texts() -> list[str]:
    """The documents of scripts/bench/heuristics.py: every WARC page (trafilatura text), CCNet
    document, WikiText article and OpenStax module (393 texts, 8 kB on average)."""
    return (
        web_pages(()) + ccnet_docs() + wikitext_articles() + [m["text"] for m in openstax_modules()]
    )


@lru_cache(maxsize=1)
def cc_sample_texts() -> list[str]:
    """Multilingual Common Crawl text: the 670 non-empty Dolma documents of
    web_large/cc_samples (CC-MAIN-2019-30; English, Italian, German, Greek, ...)."""
    path = (
        SHARED / "web_large/cc_samples/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"
    )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [t for line in f if line.strip() and (t := json.loads(line)["text"])]


def chunks(text: str, size: int = 600) -> list[str]:
    """Paragraph-aligned pieces of about ``size`` characters."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n|\n", text):
        para = para.strip()
        if not para:
            continue
        cur = f"{cur}\n{para}" if cur else para
        if len(cur) >= size:
            out.append(cur)
            cur = ""
    if len(cur) >= size // 2:
        out.append(cur)
    return out


def gsm8k_items() -> list[dict[str, str]]:
    path = SHARED / "benchmarks/gsm8k/test.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def humaneval_items() -> list[dict[str, str]]:
    with gzip.open(SHARED / "benchmarks/humaneval/HumanEval.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f if line.strip()]
