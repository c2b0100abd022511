# ruff: noqa: E501  (the provenance text written by main() has long Markdown lines)
"""Build the shipped reference set data/reference/openstax.jsonl.gz (rerun to refresh it).

    python scripts/build_reference.py              # from ../shared/data (see --help)

The reference set is the positive class of the default quality classifier
(``classifier.source=reference``) and, held out by document, the ablation's clean eval text.
It is a seeded sample of whole modules of eight OpenStax textbooks, all CC BY 4.0: the seven
books in ../shared/data/text_reference/openstax_cc_by (taken at their last CC BY commit) and
"Introduction to Python Programming" in ../shared/data/text/openstax_python (the book the plan's
topics come from). Each record keeps its attribution ("<Book title>, OpenStax, CC BY 4.0").

Left out on purpose: the Python 3.11 docs (PSF licence) are reStructuredText markup, not prose,
and would teach the classifier that directives and roles mark quality; WikiText-2 is CC BY-SA
and tokenized (spaces around punctuation), which a classifier would learn as the signal.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "data" / "reference"
NS = {"col": "http://cnx.rice.edu/collxml", "md": "http://cnx.rice.edu/mdml"}
# (text JSONL, CNXML archive) per repository; commits as in each folder's PROVENANCE.txt
SOURCES = [
    *(
        (
            SHARED / "text_reference/openstax_cc_by" / f"osbooks-{r}.modules_text.jsonl.gz",
            SHARED / "text_reference/openstax_cc_by" / f"osbooks-{r}.cnxml.tar.xz",
        )
        for r in (
            "american-government",
            "anatomy-physiology",
            "introduction-philosophy",
            "introductory-statistics-bundle",
            "psychology",
            "us-history",
        )
    ),
    (
        SHARED / "text/openstax_python/introduction-python-programming.modules_text.jsonl",
        SHARED / "text/openstax_python/osbooks-introduction-python-programming.cnxml.tar.xz",
    ),
]
# book scaffolding, not teaching text
SKIP_TITLES = {"Preface", "Introduction", "Chapter summary", "Key Terms", "Summary"}


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def book_titles(archive: Path) -> dict[str, str]:
    """Collection slug -> book title, from the collection XML in the CNXML archive."""
    out = {}
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".collection.xml"):
                root = ET.parse(io.BytesIO(tar.extractfile(m).read())).getroot()
                meta = root.find("col:metadata", NS)
                slug, title = meta.find("md:slug", NS).text, meta.find("md:title", NS).text
                out[slug.strip()] = " ".join(title.split())
    return out


def repo_commit(archive: Path) -> str:
    """'openstax/<repo>@<commit>' as stated in the folder's PROVENANCE.txt."""
    repo = archive.name.removesuffix(".cnxml.tar.xz")
    text = (archive.parent / "PROVENANCE.txt").read_text(encoding="utf-8")
    m = re.search(rf"{re.escape(repo)}\s+([0-9a-f]{{40}})", text) or re.search(
        r"snapshot HEAD ([0-9a-f]{40})", text
    )
    return f"openstax/{repo}@{m.group(1) if m else 'unknown'}"


def build(words_per_book: int, min_words: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for jsonl, archive in SOURCES:
        titles = book_titles(archive)
        source = repo_commit(archive)
        by_book: dict[str, list[dict]] = {}
        for row in read_jsonl(jsonl):
            by_book.setdefault(row["book"], []).append(row)
        for book, rows in sorted(by_book.items()):
            rows = [
                r
                for r in rows
                if r["title"] not in SKIP_TITLES and len(r["text"].split()) >= min_words
            ]
            rng.shuffle(rows)
            taken = 0
            for r in rows:
                if taken >= words_per_book:
                    break
                taken += len(r["text"].split())
                title = titles[book]
                records.append(
                    {
                        "id": f"openstax/{book}/{r['module_id']}",
                        "book": title,
                        "title": r["title"],
                        "attribution": f"{title}, OpenStax, CC BY 4.0",
                        "license": "CC BY 4.0",
                        "source": source,
                        "text": r["text"],
                    }
                )
    records.sort(key=lambda r: r["id"])
    return records


def write(records: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    # mtime 0 and no file name in the header: the same input gives the same bytes
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def provenance(records: list[dict], args: argparse.Namespace, size: int) -> str:
    books: dict[str, list[int]] = {}
    sources: dict[str, str] = {}
    for r in records:
        books.setdefault(r["book"], []).append(len(r["text"].split()))
        sources[r["book"]] = r["source"]
    rows = "\n".join(
        f"| {b} | {len(w)} | {sum(w):,} | `{sources[b]}` | {b}, OpenStax, CC BY 4.0 |"
        for b, w in sorted(books.items())
    )
    n_words = sum(sum(w) for w in books.values())
    return f"""# data/reference: the shipped reference set

Built by `python scripts/build_reference.py --words-per-book {args.words_per_book} --min-words {args.min_words} --seed {args.seed}`
(do not edit by hand). One file, `openstax.jsonl.gz` ({size:,} bytes): {len(records)} whole
textbook modules, {n_words:,} words, one JSON object per line with `id`, `book`, `title`,
`attribution`, `license`, `source` (repository@commit) and `text`.

What it is: a seeded sample of whole modules (about {args.words_per_book:,} words per book; modules
titled {", ".join(sorted(SKIP_TITLES))} and modules under {args.min_words} words left out) of eight
OpenStax textbooks. The text is the plain text that ../shared/data derived from each book's CNXML
(media dropped, figure captions kept, MathML linearised, cross-references without text); no other
change was made. It is the positive class of the default quality classifier
(`classifier.source=reference`) and, held out by document, the ablation's clean eval text.

Licence: every book is CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), taken at the
last commit its repository had under that licence (later commits are CC BY-NC-SA; see
../shared/data/text_reference/openstax_cc_by/PROVENANCE.txt). Attribution, as the licence asks:

| book | modules | words | source | attribution |
|---|---|---|---|---|
{rows}

Textbook content © Rice University (OpenStax), licensed CC BY 4.0. Changes: modules sampled,
text extracted from CNXML as described above.

Not included: the Python 3.11 documentation (PSF licence; reStructuredText markup rather than
prose, which a classifier would learn as the mark of quality) and WikiText-2 (CC BY-SA 3.0;
tokenized with spaces around punctuation, again a signal a classifier would learn).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words-per-book", type=int, default=70_000)
    ap.add_argument("--min-words", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    records = build(args.words_per_book, args.min_words, args.seed)
    path = args.out / "openstax.jsonl.gz"
    write(records, path)
    (args.out / "PROVENANCE.md").write_text(
        provenance(records, args, path.stat().st_size), encoding="utf-8"
    )
    print(f"{path}: {len(records)} modules, {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
