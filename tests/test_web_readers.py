"""Web readers on the real Common Crawl / web-archive samples in ../shared/data/web."""

from __future__ import annotations

import gzip
import json
import lzma
import re
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from web_testdata import (
    ARC,
    CC,
    CCNET,
    DOLMA0,
    DOLMA_JSONL,
    IAH,
    POSTLIGHT,
    RESILIPARSE,
    WAYBACK,
    WEBIS_BIG,
    WEBIS_SMALL,
    WHIRLWIND,
    WHIRLWIND_WET,
    warcio_counts,
    warcio_payloads,
)

from pipeline.errors import DatagenError
from pipeline.web.readers import (
    CONTENT_TYPES,
    InputSource,
    ReadStats,
    iter_source,
    plan_parts,
    resolve_inputs,
)


def read_all(path: Path | str, fmt: str = "auto", **kw: str) -> tuple[list, ReadStats]:
    stats = ReadStats()
    recs = []
    for src in resolve_inputs([str(path)], fmt):
        recs += list(iter_source(src, stats, **kw))
    return recs, stats


@pytest.mark.parametrize(
    "path", [RESILIPARSE, WHIRLWIND, WHIRLWIND_WET, DOLMA0, IAH, WAYBACK], ids=lambda p: p.name
)
def test_warc_reader_counts_match_warcio(path: Path) -> None:
    with open(path, "rb") as f:
        expected = warcio_counts(f)
    recs, stats = read_all(path)
    assert stats.record_types == expected
    assert len(recs) == sum(expected[t] for t in CONTENT_TYPES)
    assert not stats.errors


def test_warc_reader_keeps_provenance_of_each_response() -> None:
    payloads = warcio_payloads(RESILIPARSE)
    recs, _ = read_all(RESILIPARSE)
    assert {r.record_id for r in recs} == set(payloads)
    for r in recs:
        assert r.payload == payloads[r.record_id]
        assert r.url and r.url.startswith("http")
        assert r.fetch_date and r.fetch_date.startswith("2020-08")
        assert r.content_type == "text/html" and r.http_status == 200
    # offsets point at the record: warcio started there reads the same record
    with open(RESILIPARSE, "rb") as f:
        for r in recs[:3]:
            f.seek(r.offset)
            rec = next(iter(ArchiveIterator(f)))
            assert rec.rec_headers.get_header("WARC-Record-ID") == r.record_id


@pytest.mark.parametrize("path", [WEBIS_SMALL, WEBIS_BIG], ids=lambda p: p.name)
def test_single_gzip_stream_warc_is_read_as_a_stream(path: Path) -> None:
    with open(path, "rb") as f, pytest.raises(ArchiveLoadFailed):
        warcio_counts(f)  # warcio refuses the file as it is
    with gzip.open(path, "rb") as f:
        expected = warcio_counts(f)  # ... and reads it decompressed
    recs, stats = read_all(path)
    assert stats.record_types == expected
    assert len(recs) == expected["response"]
    assert not stats.errors


def test_wet_conversion_record_is_plain_text() -> None:
    recs, _ = read_all(WHIRLWIND_WET)
    assert len(recs) == 1
    assert recs[0].text and recs[0].payload is None
    assert recs[0].url == "https://an.wikipedia.org/wiki/Escopete"


def test_wayback_records_without_http_headers_yield_the_whole_block() -> None:
    recs, stats = read_all(WAYBACK)
    with open(WAYBACK, "rb") as f:
        blocks = [
            rec.raw_stream.read()
            for rec in ArchiveIterator(f, no_record_parse=True)
            if rec.rec_type == "response"
        ]
    assert not any(b.startswith(b"HTTP/") for b in blocks)
    # the first HTML lines are not taken for an HTTP status line and headers
    assert [r.payload for r in recs] == blocks
    assert all(r.http_status is None for r in recs)
    # WARC-Date is "null" in this export: the Memento-Datetime gives the fetch date
    assert all(r.fetch_date and r.fetch_date[:2] == "20" for r in recs)


def test_arc_v1_file_is_read_although_warcio_rejects_it() -> None:
    with gzip.open(ARC, "rb") as f, pytest.raises(ArchiveLoadFailed):
        warcio_counts(f)
    provenance = (CC / "PROVENANCE.txt").read_text(encoding="utf-8")
    m = re.search(r"Records: (\d+) \((\d+) text/html, (\d+) application/pdf\)", provenance)
    assert m is not None
    total, html, pdf = (int(x) for x in m.groups())
    recs, stats = read_all(ARC)
    assert len(recs) == total
    assert sum(r.content_type == "text/html" for r in recs) == html
    assert sum(r.content_type == "application/pdf" for r in recs) == pdf
    assert all(r.fetch_date and r.fetch_date.startswith("2008-") for r in recs)
    assert not stats.errors


def test_truncated_warc_yields_records_before_damage_and_counts_the_cut(tmp_path: Path) -> None:
    with open(RESILIPARSE, "rb") as f:
        it = ArchiveIterator(f)
        spans = []
        for rec in it:
            rec.content_stream().read()
            spans.append(
                (
                    rec.rec_type,
                    rec.rec_headers.get_header("WARC-Record-ID"),
                    it.get_record_offset(),
                    it.get_record_length(),
                )
            )
    responses = [s for s in spans if s[0] == "response"]
    cut_in = responses[len(responses) // 2]
    cut = cut_in[2] + cut_in[3] // 2  # the middle of one response record
    bad = tmp_path / "cut.warc.gz"
    bad.write_bytes(RESILIPARSE.read_bytes()[:cut])
    recs, stats = read_all(bad)
    complete = [s[1] for s in responses if s[2] + s[3] <= cut]
    assert [r.record_id for r in recs] == complete
    assert sum(stats.errors.values()) == 1
    assert str(bad) in stats.messages[0]


def test_corrupt_record_is_skipped_and_the_rest_of_the_file_read(tmp_path: Path) -> None:
    with open(RESILIPARSE, "rb") as f:
        it = ArchiveIterator(f)
        responses = []
        for rec in it:
            rec.content_stream().read()
            if rec.rec_type == "response":
                responses.append(
                    (rec.rec_headers.get_header("WARC-Record-ID"), it.get_record_offset())
                )
    victim_id, victim_off = responses[len(responses) // 2]
    data = bytearray(RESILIPARSE.read_bytes())
    data[victim_off + 40 : victim_off + 240] = b"A" * 200  # damage inside that gzip member
    bad = tmp_path / "corrupt.warc.gz"
    bad.write_bytes(bytes(data))
    recs, stats = read_all(bad)
    ids = [r.record_id for r in recs]
    assert ids == [i for i, _ in responses if i != victim_id]
    assert stats.errors["corrupt_record"] == 1
    assert f"offset {victim_off}" in stats.messages[0]


def _response_spans(
    path: Path, types: tuple[str, ...] = ("response",)
) -> list[tuple[str, int, int]]:
    """(WARC-Record-ID, offset, length) of each response record (or record of ``types``), as
    warcio reads them."""
    with open(path, "rb") as f:
        it = ArchiveIterator(f)
        spans = []
        for rec in it:
            rec.content_stream().read()
            if rec.rec_type in types:
                rid = rec.rec_headers.get_header("WARC-Record-ID")
                spans.append((rid, it.get_record_offset(), it.get_record_length()))
    return spans


ALL_TYPES = ("warcinfo", "request", "response", "resource", "metadata")


@pytest.mark.parametrize("which", [1, 8, 12])
def test_garbled_gzip_member_is_skipped_and_reading_resumes_at_the_next(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], which: int
) -> None:
    # bytes garbled in the middle of one member: warcio printed "Error -3 ..." and stopped
    # there (the responses after it were lost without a count)
    spans = _response_spans(RESILIPARSE)
    victim, off, length = spans[which]
    data = bytearray(RESILIPARSE.read_bytes())
    mid = off + length // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    bad = tmp_path / "garbled.warc.gz"
    bad.write_bytes(bytes(data))
    capfd.readouterr()
    recs, stats = read_all(bad)
    assert [r.record_id for r in recs] == [rid for rid, _, _ in spans if rid != victim]
    assert stats.errors == {"corrupt_record": 1}
    assert stats.messages[0].startswith(f"{bad} @ offset {off}: gzip member does not decompress")
    assert f"reading resumes at offset {off + length}" in stats.messages[0]
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # nothing printed raw by warcio


def test_jsonl_gz_reader_matches_json_lines() -> None:
    recs, stats = read_all(CCNET[0], url_field="metadata.url", date_field="created")
    with gzip.open(CCNET[0], "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert [r.text for r in recs] == [row["text"] for row in rows]
    assert [r.url for r in recs] == [row["metadata"]["url"] for row in rows]
    assert all(r.fetch_date for r in recs)
    assert stats.record_types["jsonl_line"] == len(rows)


def test_truncated_jsonl_gz_keeps_earlier_lines_and_reports(tmp_path: Path) -> None:
    data = CCNET[0].read_bytes()
    bad = tmp_path / "cut.jsonl.gz"
    bad.write_bytes(data[: len(data) // 2])
    with gzip.open(CCNET[0], "rt", encoding="utf-8") as f:
        full = [json.loads(line)["text"] for line in f]
    recs, stats = read_all(bad)
    assert 0 < len(recs) < len(full)
    assert [r.text for r in recs] == full[: len(recs)]
    assert stats.errors["truncated"] + stats.errors["bad_json"] >= 1
    assert str(bad) in stats.messages[0]


def test_parquet_reader_streams_rows(tmp_path: Path) -> None:
    with gzip.open(CCNET[1], "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    path = tmp_path / "cc.parquet"
    pq.write_table(
        pa.table({"text": [r["text"] for r in rows], "url": [r["metadata"]["url"] for r in rows]}),
        path,
        row_group_size=3,
    )
    recs, _ = read_all(path)
    assert [r.text for r in recs] == [r["text"] for r in rows]
    assert [r.url for r in recs] == [r["metadata"]["url"] for r in rows]


def test_parquet_without_the_text_column_names_the_column(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"body": ["a"]}), path)
    with pytest.raises(DatagenError, match="web.text_field"):
        read_all(path)


def test_html_folder_reader_reads_each_file(tmp_path: Path) -> None:
    payloads = list(warcio_payloads(DOLMA0).values())[:3]
    for i, p in enumerate(payloads):
        (tmp_path / f"page{i}.html").write_bytes(p)
    (tmp_path / "notes.md").write_text("not an input", encoding="utf-8")
    recs, _ = read_all(tmp_path)
    assert sorted(r.payload for r in recs) == sorted(payloads)
    assert all(r.url and r.url.startswith("file://") for r in recs)


def test_hf_reader_streams_a_local_dataset(tmp_path: Path) -> None:
    shutil.copy(CCNET[0], tmp_path / "train.jsonl.gz")
    stats = ReadStats()
    srcs = resolve_inputs([f"hf:{tmp_path}"])
    assert srcs == [InputSource(str(tmp_path), "hf")]
    recs = list(iter_source(srcs[0], stats))
    with gzip.open(CCNET[0], "rt", encoding="utf-8") as f:
        assert [r.text for r in recs] == [json.loads(line)["text"] for line in f]


def test_missing_path_fails_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatagenError, match=r"web.inputs: .*nope.warc.gz: no such file"):
        resolve_inputs([str(RESILIPARSE), str(tmp_path / "nope.warc.gz")])


def test_folder_without_input_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("x", encoding="utf-8")
    with pytest.raises(DatagenError, match="folder has no input files"):
        resolve_inputs([str(tmp_path)])


def test_glob_matching_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatagenError, match="matches no file"):
        resolve_inputs([str(tmp_path / "*.warc.gz")])


def test_empty_files_among_real_ones_are_skipped_and_counted(tmp_path: Path) -> None:
    # a 0-byte file and an empty gzip (the real file with its content removed): both skipped,
    # counted and named, and the real file beside them is read in full
    shutil.copy(RESILIPARSE, tmp_path / "a.warc.gz")
    zero = tmp_path / "b.warc.gz"
    zero.write_bytes(RESILIPARSE.read_bytes()[:0])
    hollow = tmp_path / "c.warc.gz"
    hollow.write_bytes(gzip.compress(gzip.decompress(RESILIPARSE.read_bytes())[:0]))
    srcs = resolve_inputs([str(tmp_path)])
    assert [s.format for s in srcs] == ["warc", "empty", "empty"]
    recs, stats = read_all(tmp_path)
    assert len(recs) == len(warcio_payloads(RESILIPARSE))
    assert stats.errors == {"empty_file": 2}
    assert [m.split(":")[0] for m in stats.messages] == [str(zero), str(hollow)]


def test_inputs_that_are_all_empty_stop_with_one_line(tmp_path: Path) -> None:
    zero = tmp_path / "a.warc.gz"
    zero.write_bytes(RESILIPARSE.read_bytes()[:0])
    with pytest.raises(DatagenError, match=r"a.warc.gz is empty; nothing to read"):
        resolve_inputs([str(zero)])
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(gzip.decompress(CCNET[0].read_bytes())[:0]))
    with pytest.raises(DatagenError, match=r"a.warc.gz and the other 1 are all empty"):
        resolve_inputs([str(tmp_path)])


def test_unknown_format_names_the_file(tmp_path: Path) -> None:
    odd = tmp_path / "data.bin"
    odd.write_bytes(RESILIPARSE.read_bytes()[:10][::-1])
    with pytest.raises(DatagenError, match=r"data.bin: unknown input format"):
        resolve_inputs([str(odd)])


def test_format_is_sniffed_when_the_name_says_nothing(tmp_path: Path) -> None:
    renamed = tmp_path / "crawl.data"
    shutil.copy(RESILIPARSE, renamed)
    assert resolve_inputs([str(renamed)]) == [InputSource(str(renamed), "warc")]


def test_jsonl_zst_and_plain_readers_match_the_gz_one(tmp_path: Path) -> None:
    import zstandard

    raw = gzip.decompress(CCNET[1].read_bytes())
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (tmp_path / "b.jsonl").write_bytes(raw)
    gz, _ = read_all(CCNET[1])
    zst, _ = read_all(tmp_path / "a.jsonl.zst")
    plain, _ = read_all(tmp_path / "b.jsonl")
    assert [r.text for r in zst] == [r.text for r in plain] == [r.text for r in gz]
    assert len(gz) == raw.count(b"\n")


def test_jsonl_missing_text_field_is_counted_per_line(tmp_path: Path) -> None:
    recs, stats = read_all(CCNET[0], text_field="body")
    assert recs == []
    assert (
        stats.errors["missing_text"]
        == 10
        == len(gzip.decompress(CCNET[0].read_bytes()).splitlines())
    )
    assert "web.text_field" in stats.messages[0]


def test_truncated_jsonl_zst_keeps_earlier_lines_and_reports(tmp_path: Path) -> None:
    import zstandard

    raw = gzip.decompress(CCNET[1].read_bytes())
    data = zstandard.ZstdCompressor().compress(raw)
    bad = tmp_path / "cut.jsonl.zst"
    bad.write_bytes(data[: len(data) * 3 // 4])
    recs, stats = read_all(bad)
    full = [json.loads(line)["text"] for line in raw.splitlines()]
    assert len(recs) < len(full)
    assert [r.text for r in recs] == full[: len(recs)]
    assert stats.errors["truncated"] == 1
    assert "zstd stream ends" in stats.messages[0]


@pytest.mark.parametrize("declared", ["base64", "hex", "idna", "utf-16"])
def test_a_page_declaring_a_non_text_or_impossible_charset_decodes_as_utf8(declared):
    from pipeline.web.extract import decode_html

    html = "<html><body><p>Caf\u00e9 and cr\u00e8me br\u00fbl\u00e9e.</p></body></html>"
    dec = decode_html(html.encode("utf-8"), declared)
    assert dec.charset == "utf-8" and "Caf\u00e9 and cr\u00e8me" in dec.text


def test_a_latin1_label_is_read_as_windows_1252_like_browsers():
    from pipeline.web.extract import decode_html

    dec = decode_html(b"<p>Vanuatu\x92s \x93space\x94</p>", "iso-8859-1")
    assert "Vanuatu\u2019s \u201cspace\u201d" in dec.text


def test_tar_archive_yields_each_html_member_and_counts_the_rest() -> None:
    with tarfile.open(POSTLIGHT) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        html = {m.name: tar.extractfile(m).read() for m in members if m.name.endswith(".html")}
    recs, stats = read_all(POSTLIGHT)
    assert resolve_inputs([str(POSTLIGHT)])[0].format == "tar"
    assert {r.record_id: r.payload for r in recs} == html and len(recs) == 170
    assert stats.record_types == {"tar_html": 170, "tar_other": len(members) - 170}
    assert all(r.url == f"{POSTLIGHT.resolve().as_uri()}#{r.record_id}" for r in recs)
    assert all(r.content_type == "text/html" and r.fetch_date for r in recs)
    assert len({r.offset for r in recs}) == len(recs)  # the member's place in the archive
    assert not stats.errors


def test_a_tar_archive_is_sniffed_and_a_cut_one_keeps_the_members_before_the_cut(
    tmp_path: Path,
) -> None:
    plain = tmp_path / "pages.data"  # no telling name: sniffed from the tar header
    plain.write_bytes(lzma.decompress(POSTLIGHT.read_bytes()))
    assert resolve_inputs([str(plain)]) == [InputSource(str(plain), "tar")]
    whole, _ = read_all(plain)
    cut = tmp_path / "cut.tar.xz"
    cut.write_bytes(POSTLIGHT.read_bytes()[: POSTLIGHT.stat().st_size // 2])
    recs, stats = read_all(cut)
    assert 0 < len(recs) < len(whole)
    assert [r.payload for r in recs] == [r.payload for r in whole[: len(recs)]]
    assert stats.errors == {"truncated": 1} and str(cut) in stats.messages[0]


def _read_parts(parts: list[InputSource]) -> tuple[list, ReadStats]:
    stats = ReadStats()
    return [r for p in parts for r in iter_source(p, stats)], stats


@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "plain"])
def test_a_large_jsonl_file_splits_into_row_ranges_that_read_as_the_whole(
    tmp_path: Path, compressed: bool
) -> None:
    path = DOLMA_JSONL
    if not compressed:  # a plain file: the ranges seek to their first line
        path = tmp_path / "dolma.jsonl"
        path.write_bytes(gzip.decompress(DOLMA_JSONL.read_bytes()))
    src = resolve_inputs([str(path)])
    assert plan_parts(src, 1000) == src  # 697 lines: one shard
    parts = plan_parts(src, 200)
    assert [(p.start, p.stop) for p in parts] == [(0, 200), (200, 400), (400, 600), (600, 697)]
    assert all((p.byte_start is None) == compressed for p in parts)
    whole, whole_stats = read_all(path)
    split, split_stats = _read_parts(parts)
    assert len(whole) == 697 == whole_stats.record_types["jsonl_line"]
    assert [(r.offset, r.text, r.url) for r in split] == [(r.offset, r.text, r.url) for r in whole]
    assert (split_stats.files, split_stats.bytes) == (1, path.stat().st_size)
    assert split_stats.record_types == whole_stats.record_types


def test_a_large_parquet_file_splits_into_row_ranges_that_read_as_the_whole(
    tmp_path: Path,
) -> None:
    with gzip.open(DOLMA_JSONL, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    path = tmp_path / "dolma.parquet"
    table = pa.table(
        {"text": [r["text"] for r in rows], "url": [r["metadata"]["url"] for r in rows]}
    )
    pq.write_table(table, path, row_group_size=64)
    src = resolve_inputs([str(path)])
    parts = plan_parts(src, 150)
    assert [(p.start, p.stop) for p in parts] == [
        (i, min(i + 150, 697)) for i in range(0, 697, 150)
    ]
    whole, _ = read_all(path)
    split, stats = _read_parts(parts)
    assert len(whole) == 697
    assert [(r.offset, r.text) for r in split] == [(r.offset, r.text) for r in whole]
    assert stats.files == 1


def _records(recs: list) -> list[tuple]:
    return [(r.offset, r.record_id, r.url, r.payload, r.text) for r in recs]


@pytest.mark.parametrize(
    ("path", "shard_docs"), [(IAH, 20), (WAYBACK, 10), (RESILIPARSE, 5), (DOLMA0, 8)]
)
def test_a_large_warc_splits_into_byte_ranges_that_read_as_the_whole(
    path: Path, shard_docs: int
) -> None:
    src = resolve_inputs([str(path)])
    parts = plan_parts(src, shard_docs)
    assert len(parts) > 1
    assert [p.start for p in parts[1:]] == [p.stop for p in parts[:-1]]
    assert (parts[0].start, parts[-1].stop) == (0, None)
    whole, whole_stats = read_all(path)
    split, split_stats = _read_parts(parts)
    assert _records(split) == _records(whole)  # offsets too: the document ids do not change
    assert split_stats.as_dict() == whole_stats.as_dict()  # the file and its bytes once
    starts = {off for _, off, _ in _response_spans(path, ALL_TYPES)}
    assert all(p.start in starts for p in parts)  # each part starts at a record
    per_part = [sum(1 for _ in iter_source(p, ReadStats())) for p in parts]
    assert max(per_part) < len(whole) / 2


def test_a_single_gzip_stream_or_plain_warc_an_arc_and_a_tar_stay_one_part(tmp_path: Path) -> None:
    plain = tmp_path / "resiliparse.warc"
    plain.write_bytes(gzip.decompress(RESILIPARSE.read_bytes()))
    src = resolve_inputs([str(WEBIS_BIG), str(plain), str(ARC), str(WHIRLWIND), str(POSTLIGHT)])
    assert plan_parts(src, 1) == src


def _split_damaged(tmp_path: Path, shard_docs: int, victim: int) -> tuple[Path, list]:
    """IAH with the record that starts part ``victim`` of its split garbled in the middle (its
    first bytes intact: the damaged file is split at the same places)."""
    parts = plan_parts(resolve_inputs([str(IAH)]), shard_docs)
    spans = _response_spans(IAH, ALL_TYPES)
    (length,) = [n for _, off, n in spans if off == parts[victim].start]
    data = bytearray(IAH.read_bytes())
    mid = parts[victim].start + length // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    bad = tmp_path / "garbled.warc.gz"
    bad.write_bytes(bytes(data))
    damaged = plan_parts(resolve_inputs([str(bad)]), shard_docs)
    assert [(p.start, p.stop) for p in damaged] == [(p.start, p.stop) for p in parts]
    return bad, damaged


def test_a_damaged_record_at_a_part_start_is_reported_once_by_that_part(tmp_path: Path) -> None:
    bad, parts = _split_damaged(tmp_path, 20, victim=3)
    whole, whole_stats = read_all(bad)
    split, split_stats = _read_parts(parts)
    assert _records(split) == _records(whole)
    assert split_stats.as_dict() == whole_stats.as_dict()
    assert split_stats.errors == {"corrupt_record": 1}
    assert split_stats.messages[0].startswith(f"{bad} @ offset {parts[3].start}: gzip member")
    before = ReadStats()
    assert list(iter_source(parts[2], before)) and not before.errors  # stops at the part's end


def test_a_truncated_split_warc_reads_as_the_whole(tmp_path: Path) -> None:
    parts = plan_parts(resolve_inputs([str(IAH)]), 20)
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(IAH.read_bytes()[: parts[-2].start + 5000])  # inside the last but one part
    cut_parts = plan_parts(resolve_inputs([str(cut)]), 20)
    assert len(cut_parts) > 2
    whole, whole_stats = read_all(cut)
    split, split_stats = _read_parts(cut_parts)
    assert _records(split) == _records(whole) != []
    assert split_stats.as_dict() == whole_stats.as_dict()
    assert sum(split_stats.errors.values()) == 1
