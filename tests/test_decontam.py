"""Decontamination against the real GSM8K / HumanEval / MBPP / ARC / PIQA test files."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from filters_testdata import (
    SHARED,
    gsm8k_items,
    humaneval_items,
    openstax_modules,
    wikitext_articles,
)

from filters.decontam import Decontaminator
from pipeline.config import BenchmarkSource, DecontamConfig, load_config
from pipeline.errors import DatagenError


@pytest.fixture(scope="module")
def dc() -> Decontaminator:
    return Decontaminator(DecontamConfig())


def test_all_default_benchmarks_load_from_shared_data(dc):
    assert set(dc.loaded) == {"gsm8k", "humaneval", "mbpp", "arc", "piqa"}
    assert dc.loaded["gsm8k"]["items"] == 1319 and dc.loaded["humaneval"]["items"] == 164
    assert not dc.unavailable


def test_document_quoting_a_gsm8k_test_item_is_dropped(dc):
    item = gsm8k_items()[100]
    text = (
        openstax_modules()[5]["text"]
        + "\n\nPractice problem: "
        + item["question"]
        + "\n\nSolution. "
        + item["answer"]
    )
    res = dc.check(text)
    assert res.reason == "decontam.gsm8k"
    assert res.matches["gsm8k"] > 0


def test_document_quoting_a_humaneval_problem_is_dropped(dc):
    item = humaneval_items()[10]
    text = "Here is an exercise for you.\n\n" + item["prompt"] + item["canonical_solution"]
    assert dc.check(text).reason == "decontam.humaneval"


def test_textbook_text_without_benchmark_quotes_is_kept(dc):
    for m in openstax_modules()[:30]:
        res = dc.check(m["text"])
        assert res.reason is None and res.text is None, m["title"]


def test_punctuation_and_case_do_not_hide_a_match(dc):
    q = gsm8k_items()[7]["question"]
    mangled = q.upper().replace(" ", "  ").replace(",", " ,")
    assert dc.check(mangled).reason == "decontam.gsm8k"


def test_cut_mode_removes_a_window_around_the_match_and_keeps_the_rest():
    cfg = DecontamConfig(mode="cut", benchmarks=DecontamConfig().benchmarks[:1])
    dc = Decontaminator(cfg)
    article = wikitext_articles()[2]
    half = len(article) // 2
    q = gsm8k_items()[3]["question"]
    text = article[:half] + " " + q + " " + article[half:]
    res = dc.check(text)
    assert res.reason is None and res.text is not None
    assert q not in res.text and res.pieces == 2
    assert res.text.startswith(article[: half - 250].strip()[:100])
    assert len(res.text) <= len(text) - len(q) - 2 * cfg.cut_window + 10
    # the same quote spread through the text more than 10 times: the doc is dropped (GPT-3)
    paras = [p for a in wikitext_articles() for p in a.split("\n\n") if len(p) > 800][:12]
    many = "\n\n".join(p + " " + gsm8k_items()[i]["question"] for i, p in enumerate(paras))
    assert Decontaminator(cfg).check(many).reason == "decontam.gsm8k"


def test_cut_mode_positions_survive_lower_casing_that_changes_length():
    # "İ".lower() is two chars: word positions must come from the original text, else the
    # cut lands ~300 chars late and the start of the benchmark question survives
    cfg = DecontamConfig(mode="cut", benchmarks=DecontamConfig().benchmarks[:1])
    dc = Decontaminator(cfg)
    q = gsm8k_items()[3]["question"]
    article = wikitext_articles()[2]
    intro = " ".join(["İSTANBUL İZMİR İNEBOLU İSPARTA"] * 60)
    text = intro + "\n\n" + article[:600] + " " + q + " " + article[600:1800]
    res = dc.check(text)
    assert res.reason is None and res.text is not None and res.pieces == 2
    assert q[:60] not in res.text
    for piece in res.text.split("\n\n"):  # no benchmark 13-gram left in any kept piece
        assert not dc.check(piece).matches
    assert res.text.startswith(intro[:100])


def test_local_json_csv_parquet_files_give_the_same_ngrams(tmp_path):
    rows = gsm8k_items()[:200]
    (tmp_path / "g.json").write_text(json.dumps(rows))
    with open(tmp_path / "g.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["question", "answer"])
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "g.parquet")
    counts = []
    for ext in ("json", "csv", "parquet"):
        src = BenchmarkSource(
            name="g", path=str(tmp_path / f"g.{ext}"), fields=["question", "answer"]
        )
        d = Decontaminator(DecontamConfig(benchmarks=[src]))
        counts.append(d.loaded["g"]["ngrams"])
        assert d.check(rows[50]["question"]).reason == "decontam.g"
    assert len(set(counts)) == 1 and counts[0] > 1000


def test_nested_fields_are_walked_for_arc_choices():
    arc = BenchmarkSource(
        name="arc",
        path=str(SHARED / "benchmarks/arc/ARC-Challenge-Test.jsonl"),
        fields=["question.choices.text"],
    )
    d = Decontaminator(DecontamConfig(ngram=4, benchmarks=[arc]))
    assert d.loaded["arc"]["ngrams"] > 0


def test_missing_benchmark_warns_or_fails_by_config(tmp_path):
    src = BenchmarkSource(name="gone", path=str(tmp_path / "nope.jsonl"), fields=["q"])
    d = Decontaminator(DecontamConfig(benchmarks=[src]))
    assert "gone" in d.unavailable and not d.loaded
    with pytest.raises(DatagenError, match="decontam.benchmarks.gone"):
        Decontaminator(DecontamConfig(benchmarks=[src], on_missing="error"))
    gsm = str(SHARED / "benchmarks/gsm8k/test.jsonl")
    with pytest.raises(DatagenError, match="decontam.benchmarks.g.fields: none of questoin"):
        Decontaminator(
            DecontamConfig(benchmarks=[BenchmarkSource(name="g", path=gsm, fields=["questoin"])])
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(gsm8k_items()[0]) + "\n{not json\n")
    with pytest.raises(DatagenError, match="bad.jsonl:2"):
        Decontaminator(
            DecontamConfig(
                benchmarks=[BenchmarkSource(name="bad", path=str(bad), fields=["question"])]
            )
        )


def test_hf_dataset_path_loads_through_datasets_when_downloads_are_allowed(tmp_path, monkeypatch):
    """The online path (``datasets.load_dataset``), exercised on a local dataset folder."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder = tmp_path / "gsm8k_local"
    folder.mkdir()
    (folder / "test.jsonl").write_bytes((SHARED / "benchmarks/gsm8k/test.jsonl").read_bytes())
    src = BenchmarkSource(
        name="gsm8k",
        path=str(tmp_path / "absent.jsonl"),
        hf=str(folder),
        split="test",
        fields=["question", "answer"],
    )
    off = Decontaminator(DecontamConfig(benchmarks=[src]))
    assert "allow_download=false" in off.unavailable["gsm8k"]
    on = Decontaminator(DecontamConfig(benchmarks=[src], allow_download=True))
    assert on.loaded["gsm8k"]["items"] == 1319
    assert on.loaded["gsm8k"]["source"] == f"hf:{folder}"
    assert on.check(gsm8k_items()[9]["question"]).reason == "decontam.gsm8k"


def test_truncated_benchmark_gz_is_one_line_naming_the_file(tmp_path):
    data = (SHARED / "benchmarks/humaneval/HumanEval.jsonl.gz").read_bytes()
    cut = tmp_path / "HumanEval.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    src = BenchmarkSource(name="he", path=str(cut), fields=["prompt"])
    with pytest.raises(DatagenError, match=r"HumanEval.jsonl.gz:\d+: compressed data cut short"):
        Decontaminator(DecontamConfig(benchmarks=[src]))


ARC_TEST = SHARED / "benchmarks/arc/ARC-Challenge-Test.jsonl"
WORD = re.compile(r"\w+")


def jsonl_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_csv_saved_with_a_bom_keeps_its_first_column(tmp_path):
    # Excel's "CSV UTF-8" starts with a BOM: the first column was read as "\ufeffquestion"
    rows = gsm8k_items()[:200]
    for name, encoding in (("plain.csv", "utf-8"), ("excel.csv", "utf-8-sig")):
        with open(tmp_path / name, "w", newline="", encoding=encoding) as f:
            w = csv.DictWriter(f, fieldnames=["question", "answer"])
            w.writeheader()
            w.writerows(rows)
    assert (tmp_path / "excel.csv").read_bytes().startswith(b"\xef\xbb\xbfquestion")
    loaded = {}
    for name in ("plain.csv", "excel.csv"):
        src = BenchmarkSource(name="g", path=str(tmp_path / name), fields=["question"])
        d = Decontaminator(DecontamConfig(benchmarks=[src]))
        loaded[name] = d.loaded["g"]
        assert d.check(rows[50]["question"]).reason == "decontam.g"
    assert loaded["excel.csv"]["values"] == loaded["plain.csv"]["values"] == 200
    assert loaded["excel.csv"]["ngrams"] == loaded["plain.csv"]["ngrams"]


def test_short_values_are_matched_whole_and_the_rest_counted():
    arc = BenchmarkSource(name="arc", path=str(ARC_TEST), fields=["question.stem"])
    d = Decontaminator(DecontamConfig(benchmarks=[arc]))
    n, short = d.cfg.ngram, d.cfg.min_short_words
    stems = [r["question"]["stem"] for r in jsonl_rows(ARC_TEST)]
    lengths = [len(WORD.findall(s)) for s in stems]
    c = d.loaded["arc"]
    assert c["values"] == c["items"] == len(stems)
    assert c["values_ngram"] == sum(k >= n for k in lengths)
    assert c["values_whole"] == sum(short <= k < n for k in lengths) > 100
    assert c["values_too_short"] == c["items_too_short"] == sum(k < short for k in lengths) > 0
    assert d.warnings() == [
        f"decontam: arc: {c['values_too_short']} of {len(stems)} values "
        f"({c['items_too_short']} of {len(stems)} items entirely) have fewer than {short} "
        "words and are not checked (decontam.min_short_words)"
    ]
    module = openstax_modules()[7]["text"]
    half = len(module) // 2
    for stem, k in zip(stems, lengths, strict=True):
        if short <= k < n:  # a question shorter than 13 words quoted in a textbook page
            res = d.check(module[:half] + "\n\nQuiz: " + stem + "\n\n" + module[half:])
            assert res.reason == "decontam.arc" and res.matches == {"arc": 1}, stem
            # ... but a few of its words do not make a match
            few = " ".join(WORD.findall(stem)[: short - 1])
            assert d.check(module[:half] + " " + few + " " + module[half:]).reason is None


def test_short_value_matching_flags_no_real_textbook_text(dc):
    from filters_testdata import SHARED as shared

    modules = [m["text"] for m in openstax_modules()]
    for p in sorted((shared / "text_reference/openstax_cc_by").glob("*.modules_text.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            modules += [json.loads(line)["text"] for line in f if line.strip()]
    assert len(modules) > 900
    assert sum(c["values_whole"] for c in dc.loaded.values()) > 2000
    flagged = [t[:80] for t in modules if dc.check(t).reason is not None]
    assert flagged == []


def test_a_folder_or_a_glob_of_files_is_one_benchmark(tmp_path):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    for name in ("test.jsonl", "test_socratic.jsonl"):
        shutil.copy(SHARED / "benchmarks/gsm8k" / name, folder / name)
    shutil.copy(SHARED / "benchmarks/gsm8k/LICENSE", folder / "LICENSE")  # not a benchmark file
    rows = jsonl_rows(folder / "test.jsonl") + jsonl_rows(folder / "test_socratic.jsonl")
    for path in (str(folder), str(folder / "*.jsonl")):
        src = BenchmarkSource(name="g", path=path, fields=["question", "answer"])
        d = Decontaminator(DecontamConfig(benchmarks=[src]))
        assert d.loaded["g"]["items"] == len(rows)
        assert d.loaded["g"]["source"] == f"{path} (2 files)"
        assert d.check(rows[-1]["answer"]).reason == "decontam.g"
    src = BenchmarkSource(name="g", path=str(tmp_path / "*.csv"), fields=["question"])
    assert "matches no file" in Decontaminator(DecontamConfig(benchmarks=[src])).unavailable["g"]


def test_extra_benchmarks_add_to_the_defaults():
    dev = SHARED / "benchmarks/arc/ARC-Challenge-Dev.jsonl"
    extra = f"decontam.extra_benchmarks=[{{name: arc_dev, path: '{dev}', fields: [question.stem]}}]"
    cfg = load_config([extra])
    d = Decontaminator(cfg.decontam)
    assert list(d.loaded) == ["gsm8k", "humaneval", "mbpp", "arc", "piqa", "arc_dev"]
    stem = next(
        r["question"]["stem"]
        for r in jsonl_rows(dev)
        if len(WORD.findall(r["question"]["stem"])) >= 13
    )
    assert d.check(stem).reason == "decontam.arc_dev"
    twice = extra.replace("arc_dev", "gsm8k")
    with pytest.raises(DatagenError, match="benchmark name 'gsm8k' is used twice"):
        load_config([twice])


def test_filter_preflight_checks_extra_benchmarks_and_globs(tmp_path):
    from pipeline.stages.filter import preflight

    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(SHARED / "benchmarks/arc/ARC-Challenge-Dev.jsonl", folder / "dev.jsonl")

    def cfg(path):
        extra = f"[{{name: mine, path: '{path}', fields: [question.stem]}}]"
        return load_config(["decontam.on_missing=error", f"decontam.extra_benchmarks={extra}"])

    preflight(cfg(folder / "*.jsonl"))
    preflight(cfg(folder))
    with pytest.raises(DatagenError, match=r"decontam.benchmarks.mine: .*none/\*.jsonl not found"):
        preflight(cfg(tmp_path / "none" / "*.jsonl"))
