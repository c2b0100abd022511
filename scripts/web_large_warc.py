"""Pack the 300 raw HTML pages of ../shared/data/web_large/html_pages into one WARC file.

    python scripts/web_large_warc.py                      # -> runs/pool/web_large_html.warc.gz
    datagen run 'web.inputs=[../shared/data/web/commoncrawl_warc/*.warc.gz, ...,
                 runs/pool/web_large_html.warc.gz]'

The pages ship as two tar.xz archives (Mozilla Readability and Postlight parser test pages),
which the web stage does not read; as WARC ``resource`` records (Content-Type text/html, the
page bytes unchanged, the URL from the collection's manifest or the page's canonical link,
else ``urn:web_large:<member>``) the web stage and train_classifier's negative pool read them
like any crawl. Only the pages the manifest lists are written (Readability's own extractions,
``expected.html``, are not pages). The output is the same bytes on every run.

The page content is copyright of its sites (internal tests and benchmarks only): the WARC goes
under runs/ (not shipped), never into data/.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import tarfile
import uuid
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT.parent / "shared" / "data" / "web_large" / "html_pages"
DATE = "2023-11-14T22:13:20Z"  # the archives' fixed member mtime (1700000000)


def write_warc(pages: Path, out: Path, limit: int = 0) -> int:
    """Write the pages (the first ``limit`` of the manifest's order when > 0); returns how many."""
    with gzip.open(pages / "html_pages_manifest.jsonl.gz", "rt", encoding="utf-8") as f:
        manifest = [json.loads(line) for line in f if line.strip()]
    if limit > 0:
        manifest = manifest[:limit]
    by_archive: dict[str, dict[str, dict]] = {}
    for m in manifest:
        by_archive.setdefault(m["archive"], {})[m["member"]] = m
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    n = 0
    for archive in sorted(by_archive):
        wanted = by_archive[archive]
        with tarfile.open(pages / archive) as tar:
            for member in tar.getmembers():
                meta = wanted.get(member.name)
                if meta is None or not member.isfile():
                    continue
                data = tar.extractfile(member).read()
                url = meta["url"] or meta["canonical_url_in_html"] or f"urn:web_large:{member.name}"
                rid = uuid.uuid5(uuid.NAMESPACE_URL, meta["sha256"])
                headers = StatusAndHeaders(
                    "",
                    [
                        ("WARC-Type", "resource"),
                        ("WARC-Record-ID", f"<urn:uuid:{rid}>"),
                        ("WARC-Date", DATE),
                        ("WARC-Target-URI", url),
                        ("Content-Type", "text/html"),
                    ],
                    protocol="WARC/1.0",
                )
                rec = writer.create_warc_record(
                    url, "resource", payload=io.BytesIO(data), warc_headers=headers
                )
                writer.write_record(rec)
                n += 1
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)
    return n


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=Path, default=PAGES, help="the html_pages folder")
    ap.add_argument("--out", type=Path, default=Path("runs/pool/web_large_html.warc.gz"))
    ap.add_argument("--limit", type=int, default=0, help="only the first N pages (0: all)")
    a = ap.parse_args(argv)
    n = write_warc(a.pages, a.out, a.limit)
    print(f"{a.out}: {n} pages")
    return a.out


if __name__ == "__main__":
    main()
