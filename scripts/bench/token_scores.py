"""Benchmark: Rho-1 token scoring throughput (emit.token_scores) on this machine.

Real text from ../shared/data (OpenStax modules, WikiText-2 test articles, CCNet documents, as
scripts/bench/tokenize_throughput.py reads them) is tokenized with SmolLM2's tokenizer into one
token shard of about --tokens tokens; the embedded SmolLM2-135M GGUF then scores it through
llama.cpp (pipeline/token_scores.py, the code emit runs) for each --threads and --window
setting. Reported: tokens/s, and the share of the time spent in llama.cpp's forward pass vs the
log-softmax over the vocabulary.

    flock /work/bench.lock python scripts/bench/token_scores.py --tokens 20000 --threads 1 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from pipeline import token_scores
from pipeline.config import TokenScoresConfig
from pipeline.tokenize import load_tokenizer, write_token_shard


def real_texts() -> list[str]:
    spec = importlib.util.spec_from_file_location(
        "tokenize_throughput", Path(__file__).with_name("tokenize_throughput.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.real_texts()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20_000, help="tokens in the scored shard")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--window", type=int, nargs="+", default=[1024])
    ap.add_argument("--overlap", type=int, default=256)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    tok = load_tokenizer("smollm2")
    texts = real_texts()
    rng = np.random.default_rng(0)
    docs, n = [], 0
    for i in rng.permutation(len(texts)):
        d = tok.encode([texts[i]])[0]
        docs.append(d)
        n += len(d)
        if n >= a.tokens:
            break
    lengths = [len(d) for d in docs]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "part-00000.ds"
        write_token_shard(ds, docs, tok.dtype, "smollm2")
        for window in a.window:
            for threads in a.threads:
                cfg = TokenScoresConfig(
                    enabled=True, window=window, overlap=a.overlap, threads=threads
                )
                ref = token_scores.LlamaReference(cfg, tok)
                forward = [0.0]
                eval_ = ref.llm.eval

                def timed_eval(seq, _eval=eval_, forward=forward):  # time in llama.cpp itself
                    t = time.perf_counter()
                    _eval(seq)
                    forward[0] += time.perf_counter() - t

                ref.llm.eval = timed_eval  # type: ignore[method-assign]
                for p in Path(tmp).glob("*.loss*"):
                    p.unlink()
                t0 = time.perf_counter()
                summary = token_scores.score_shards([ds], cfg, tok, Console(quiet=True), ref)
                el = time.perf_counter() - t0
                row = {
                    "window": window,
                    "overlap": a.overlap,
                    "threads": threads,
                    "tokens": summary["tokens"],
                    "seconds": round(el, 2),
                    "tokens_per_s": round(summary["tokens"] / el),
                    "forward_share": round(forward[0] / el, 3),
                    "mean_loss": summary["mean_loss"],
                }
                results.append(row)
                print(json.dumps(row), flush=True)
                del ref
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "documents": len(docs),
        "doc_tokens_median": int(np.median(lengths)),
        "doc_tokens_max": int(max(lengths)),
        "load_avg_at_end": os.getloadavg(),
        "results": results,
    }
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
