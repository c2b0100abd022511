"""Training smoke job: a tiny GPT (torch, CPU) trains on the emitted token shards.

The model and its training loop are ``pipeline.proxy_train`` (the proxy model of
``datagen ablate`` too).

It reads ``<emit>/tokens/train/*.ds`` and ``<emit>/tokens/val/*.ds`` through ``numpy.memmap``
(dtype and vocabulary size from ``<emit>/manifest.json``), samples random windows, trains for
``--steps`` steps and reports the training loss at the start and end and the validation loss
before and after training. It proves the shards are what a training job can consume.

    pip install torch==2.13.0          # CPU build (the project's optional extra: .[train])
    python scripts/train_smoke.py --run runs/default --steps 300
    python scripts/train_smoke.py --emit-dir runs/default/emit --steps 60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.config import ProxyModelConfig
from pipeline.errors import DatagenError
from pipeline.proxy_train import fixed_windows, train_model


def shard_paths(emit_dir: Path, split: str) -> list[Path]:
    return sorted((emit_dir / "tokens" / split).glob("part-*.ds"))


def load_split(emit_dir: Path, split: str, dtype: str) -> list[np.ndarray]:
    shards = shard_paths(emit_dir, split)
    return [m for m in (np.memmap(p, dtype=np.dtype(dtype), mode="r") for p in shards) if len(m)]


def load_scores(shards: list[Path], dtype: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Tokens and reference losses of each non-empty shard; the ``.ds.loss`` files must cover
    every token (little-endian float16, one per token: pipeline/token_scores.py)."""
    tokens_out, losses_out = [], []
    for p in shards:
        tokens = np.memmap(p, dtype=np.dtype(dtype), mode="r")
        if not len(tokens):
            continue
        lp = p.with_name(p.name + ".loss")
        if not lp.is_file():
            raise SystemExit(f"{lp}: missing; run emit with emit.token_scores.enabled=true")
        loss = np.memmap(lp, dtype="<f2", mode="r")
        if len(loss) != len(tokens):
            raise SystemExit(f"{lp}: {len(loss)} scores for {len(tokens)} tokens in {p.name}")
        tokens_out.append(tokens)
        losses_out.append(loss)
    return tokens_out, losses_out


def train(
    emit_dir: Path,
    steps: int = 300,
    seq_len: int = 64,
    batch: int = 16,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    lr: float = 3e-3,
    seed: int = 1234,
    val_windows: int = 64,
    log_every: int = 25,
    threads: int = 0,
    select_top: float | None = None,
) -> dict:
    manifest = json.loads((emit_dir / "manifest.json").read_text())
    tok = manifest["tokenizer"]
    vocab, dtype = int(tok["vocab_size"]), tok["dtype"]
    hp = ProxyModelConfig(
        steps=steps,
        seq_len=seq_len,
        batch=batch,
        d_model=d_model,
        layers=n_layers,
        heads=n_heads,
        lr=lr,
    )
    val = fixed_windows(load_split(emit_dir, "val", dtype), seq_len, val_windows)
    if select_top is not None:
        if not 0 < select_top <= 1:
            raise SystemExit(f"--select-top {select_top}: must be in (0, 1]")
        train_tokens, ref = load_scores(shard_paths(emit_dir, "train"), dtype)
    else:
        train_tokens, ref = load_split(emit_dir, "train", dtype), None
    res = train_model(
        train_tokens,
        {"val": val},
        vocab,
        hp,
        seed,
        threads=threads,
        log_every=log_every,
        ref_losses=ref,
        select_top=select_top,
    )
    out = {
        "emit_dir": str(emit_dir),
        **{k: res[k] for k in ("params", "vocab_size", "steps", "seq_len", "batch", "tokens_seen")},
        "train_loss_start": res["train_loss_start"],
        "train_loss_end": res["train_loss_end"],
        "val_loss_before": res["eval_before"]["val"],
        "val_loss_after": res["eval_after"]["val"],
        "val_windows": len(val),
        "uniform_loss": res["uniform_loss"],
        "seconds": res["seconds"],
        "tokens_per_s": res["tokens_per_s"],
    }
    if "selective" in res:
        out["selective"] = res["selective"]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path, help="a run directory (uses <run>/emit)")
    where.add_argument("--emit-dir", type=Path, help="the emit stage's output folder")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--select-top",
        type=float,
        help="Rho-1 selective loss: train on this share of each batch's tokens by excess loss "
        "over the reference losses in <emit>/tokens/train/*.ds.loss",
    )
    ap.add_argument("--json", type=Path, help="also write the result here")
    a = ap.parse_args(argv)
    emit_dir = a.emit_dir or a.run / "emit"
    if not (emit_dir / "manifest.json").exists():
        raise SystemExit(f"{emit_dir}: no manifest.json; run `datagen run stage=emit` first")
    try:
        res = train(
            emit_dir,
            a.steps,
            a.seq_len,
            a.batch,
            a.d_model,
            a.layers,
            a.heads,
            a.lr,
            a.seed,
            threads=a.threads,
            select_top=a.select_top,
        )
    except DatagenError as e:
        raise SystemExit(str(e)) from None
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    if not res["train_loss_end"] < res["train_loss_start"]:
        print("training loss did not fall", file=sys.stderr)
        sys.exit(1)
    return res


if __name__ == "__main__":
    main()
