# ruff: noqa: E501  (the provenance table written by main() is long Markdown lines)
"""Build the plan's data files in data/ from real sources (rerun to refresh them).

  python scripts/build_data.py            # needs the `build` extra: pip install -e '.[build]'

- data/words.tsv: open-class English words (noun/verb/adjective) in a frequency band, from the
  `wordfreq` package (frequencies) and `lemminflect` (parts of speech, base forms).
- data/topics.tsv: chapter/section titles of OpenStax "Introduction to Python Programming"
  (CC BY 4.0), read from the CNXML archive in ../shared/data/text/openstax_python.
- data/subjects.tsv: seed subjects for topic expansion (plan.topics.expand): the chapter
  titles of 8 OpenStax textbooks (CC BY 4.0; the Python one and the 7 in
  ../shared/data/text_reference/openstax_cc_by, at their last CC BY commit), area = book title.
- data/audiences.txt: the audience set of Cosmopedia (HuggingFace, Apache-2.0).
Provenance and licenses are written to data/PROVENANCE.md.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OPENSTAX = (
    SHARED / "text" / "openstax_python" / "osbooks-introduction-python-programming.cnxml.tar.xz"
)

OPENSTAX_CC_BY = SHARED / "text_reference" / "openstax_cc_by"
# Cosmopedia's audiences (github.com/huggingface/cosmopedia, prompts; Ben Allal et al. 2024)
COSMOPEDIA_AUDIENCES = [
    "young children",
    "middle school students",
    "high school students",
    "college students",
    "professionals and researchers",
    "general audience",
]
# modules that are book scaffolding, not teachable topics
SKIP_TITLES = {"Preface", "Introduction", "Chapter summary"}
NS = {
    "col": "http://cnx.rice.edu/collxml",
    "md": "http://cnx.rice.edu/mdml",
    "c": "http://cnx.rice.edu/cnxml",
}


def build_words(n: int, zipf_min: float, zipf_max: float) -> list[tuple[str, float, str]]:
    from lemminflect import getAllLemmas
    from wordfreq import top_n_list, zipf_frequency

    out = []
    for w in top_n_list("en", 60_000):
        if not (w.isascii() and w.isalpha() and w.islower() and len(w) >= 3):
            continue
        z = zipf_frequency(w, "en")
        if not zipf_min <= z <= zipf_max:
            continue
        lemmas = getAllLemmas(w)
        # base forms only (the lemma is the word itself) of open-class parts of speech
        pos = sorted(p for p in ("NOUN", "VERB", "ADJ") if lemmas.get(p, ())[:1] == (w,))
        if pos:
            out.append((w, round(z, 2), ",".join(pos)))
        if len(out) >= n:
            break
    return out


def build_topics() -> list[tuple[str, str]]:
    return [(c, t) for _, c, t in _book(OPENSTAX)]


def _book(archive: Path) -> list[tuple[str, str, str]]:
    """(book title, chapter title, module title) of each module of a book, in book order;
    a book archive holds several collections (statistics: two books), each one is read."""
    titles: dict[str, str] = {}
    colls = []
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".collection.xml"):
                colls.append((m.name, tar.extractfile(m).read()))
            elif m.name.endswith("index.cnxml"):
                root = ET.parse(io.BytesIO(tar.extractfile(m).read())).getroot()
                t = root.find("c:title", NS)
                mid = Path(m.name).parent.name
                if t is not None and t.text:
                    titles[mid] = " ".join(t.text.split())
    assert colls, f"{archive}: no collection XML"
    out = []
    for _, coll in sorted(colls):
        root = ET.fromstring(coll)
        book = " ".join(root.find("col:metadata/md:title", NS).text.split())
        for sub in root.iter(f"{{{NS['col']}}}subcollection"):
            if sub.find(f".//{{{NS['col']}}}subcollection") is not None:
                continue  # a unit of chapters: its chapters are read
            chapter = " ".join(sub.find("md:title", NS).text.split())
            for mod in sub.iter(f"{{{NS['col']}}}module"):
                title = titles.get(mod.get("document"), "")
                if title and title not in SKIP_TITLES:
                    out.append((book, chapter, title))
    return out


def build_subjects() -> list[tuple[str, str]]:
    """(book, chapter) of every chapter of the Python book and the CC BY reference books.
    Statistics nests units of chapters: the innermost subcollection is the chapter."""
    books = [OPENSTAX, *sorted(OPENSTAX_CC_BY.glob("*.cnxml.tar.xz"))]
    return list(dict.fromkeys((b, c) for path in books for b, c, _ in _book(path)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=4000)
    ap.add_argument("--zipf-min", type=float, default=3.2)  # ~1 per 600k words
    ap.add_argument("--zipf-max", type=float, default=5.2)  # excludes the most common words
    args = ap.parse_args()
    data = ROOT / "data"
    words = build_words(args.words, args.zipf_min, args.zipf_max)
    (data / "words.tsv").write_text(
        "word\tzipf\tpos\n" + "".join(f"{w}\t{z}\t{p}\n" for w, z, p in words)
    )
    topics = build_topics()
    (data / "topics.tsv").write_text("subject\ttopic\n" + "".join(f"{s}\t{t}\n" for s, t in topics))
    subjects = build_subjects()
    (data / "subjects.tsv").write_text(
        "area\tsubject\n" + "".join(f"{a}\t{s}\n" for a, s in subjects)
    )
    (data / "audiences.txt").write_text("\n".join(COSMOPEDIA_AUDIENCES) + "\n")
    (data / "PROVENANCE.md").write_text(f"""# data/ provenance

Built by `python scripts/build_data.py` (do not edit by hand).

| file | rows | source | license |
|---|---|---|---|
| words.tsv | {len(words)} | `wordfreq` {version("wordfreq")} (Zipf frequency, English, band {args.zipf_min}-{args.zipf_max}); parts of speech and base forms from `lemminflect` {version("lemminflect")} | wordfreq data CC BY-SA 4.0 (code Apache-2.0); lemminflect MIT |
| topics.tsv | {len(topics)} | chapter and section titles of OpenStax "Introduction to Python Programming" (CNXML in ../shared/data/text/openstax_python, repository snapshot d6d069bb) | CC BY 4.0, attribution: "Introduction to Python Programming", OpenStax |
| subjects.tsv | {len(subjects)} | chapter titles (area = book title) of 8 OpenStax textbooks: "Introduction to Python Programming" (as topics.tsv) and the 7 books in ../shared/data/text_reference/openstax_cc_by (statistics, business statistics, philosophy, anatomy and physiology, psychology, US history, American government) at their last CC BY 4.0 commit (commits in its PROVENANCE.txt) | CC BY 4.0, attribution: "<book title>", OpenStax |
| audiences.txt | {len(COSMOPEDIA_AUDIENCES)} | the audience set of Cosmopedia (HuggingFace), prompt-building code | Apache-2.0 |
| blocklist.txt | - | empty default URL/domain blocklist for the web stage; format in its comments | - |
""")
    print(
        f"words={len(words)} topics={len(topics)} subjects={len(subjects)} audiences={len(COSMOPEDIA_AUDIENCES)}"
    )


if __name__ == "__main__":
    main()
