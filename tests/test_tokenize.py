"""The offline SmolLM2 tokenizer and the token shard layout."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from filters_testdata import openstax_modules, wikitext_articles

from pipeline.errors import DatagenError
from pipeline.tokenize import (
    bundled_gguf_path,
    load_tokenizer,
    read_token_shard,
    token_dtype,
    write_token_shard,
)


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer("smollm2")


def test_gguf_tokenizer_gives_llama_cpp_ids_on_real_text(smollm2):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(bundled_gguf_path()), vocab_only=True, verbose=False)
    texts = [m["text"] for m in openstax_modules()[:40]]
    texts += wikitext_articles()[:10]  # digits, " @-@ ", accents
    assert sum(len(t) for t in texts) > 200_000
    for t in texts:
        ours = smollm2.tokenizer.encode(t, add_special_tokens=False).ids
        assert ours == llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)
        assert smollm2.tokenizer.decode(ours) == t


def test_smollm2_vocab_and_end_of_text(smollm2):
    assert smollm2.vocab_size == 49152
    assert smollm2.eot_id == 0  # <|endoftext|>, SmolLM2's document separator
    assert smollm2.dtype == np.dtype("<u2")
    assert token_dtype(70_000) == np.dtype("<u4")
    ids = smollm2.encode(["x = 1"])[0]
    assert ids[-1] == smollm2.eot_id and ids.dtype == np.dtype("<u2")


def test_saved_tokenizer_json_loads_to_the_same_ids(smollm2, tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text(smollm2.tokenizer.to_str())
    again = load_tokenizer(str(p))
    text = openstax_modules()[5]["text"]
    assert np.array_equal(again.encode([text])[0], smollm2.encode([text])[0])
    assert again.sha256 == smollm2.sha256


def test_missing_tokenizer_path_is_one_line_error(tmp_path):
    with pytest.raises(DatagenError, match="emit.tokenizer: .*does not exist"):
        load_tokenizer(str(tmp_path / "nope" / "tokenizer.json"))


def test_unknown_end_of_text_token_is_an_error():
    with pytest.raises(DatagenError, match="emit.eot_token"):
        load_tokenizer("smollm2", eot_token="<|not-a-token|>")


def test_token_shard_bytes_follow_the_documented_layout(smollm2, tmp_path: Path):
    texts = [m["text"] for m in openstax_modules()[:6]]
    docs = smollm2.encode(texts)
    info = write_token_shard(tmp_path / "part-00000.ds", docs, smollm2.dtype, "smollm2")
    raw = (tmp_path / "part-00000.ds").read_bytes()
    index = (tmp_path / "part-00000.ds.index").read_bytes()
    n = len(raw) // 2
    flat = struct.unpack(f"<{n}H", raw)  # little-endian uint16
    ends = struct.unpack(f"<{len(index) // 8}Q", index)  # little-endian uint64
    assert len(ends) == len(texts) and ends[-1] == n == info["tokens"]
    start = 0
    for text, end in zip(texts, ends, strict=True):
        assert flat[end - 1] == smollm2.eot_id
        assert smollm2.tokenizer.decode(list(flat[start : end - 1])) == text
        start = end
    tokens, ends2 = read_token_shard(tmp_path / "part-00000.ds")
    assert list(ends2) == list(ends) and int(tokens[ends[0] - 1]) == 0
    meta = (tmp_path / "part-00000.ds.metadata").read_text().splitlines()
    assert meta[0] == "smollm2|2" and meta[1] == str(n)
    assert not list(tmp_path.glob(".*tmp"))  # temp files renamed away


def test_end_of_text_written_inside_a_document_is_text_not_a_boundary(smollm2):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(bundled_gguf_path()), vocab_only=True, verbose=False)
    text = "The string <|endoftext|> marks the end of a document in GPT-2."
    ours = smollm2.tokenizer.encode(text, add_special_tokens=False).ids
    assert smollm2.eot_id not in ours
    assert ours == llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
