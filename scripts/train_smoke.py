"""Training smoke job: a tiny GPT (torch, CPU) trains on the emitted token shards.

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
import math
import sys
import time
from pathlib import Path

import numpy as np


def load_split(emit_dir: Path, split: str, dtype: str) -> list[np.ndarray]:
    shards = sorted((emit_dir / "tokens" / split).glob("part-*.ds"))
    return [m for m in (np.memmap(p, dtype=np.dtype(dtype), mode="r") for p in shards) if len(m)]


class Windows:
    """Random (input, target) windows of ``seq_len`` tokens drawn across memmapped shards."""

    def __init__(self, shards: list[np.ndarray], seq_len: int, rng: np.random.Generator) -> None:
        self.shards = [s for s in shards if len(s) > seq_len + 1]
        if not self.shards:
            raise SystemExit(f"no token shard is longer than seq_len+1 = {seq_len + 1} tokens")
        sizes = np.array([len(s) - seq_len - 1 for s in self.shards], dtype=np.float64)
        self.p = sizes / sizes.sum()
        self.seq_len = seq_len
        self.rng = rng

    def batch(self, n: int) -> np.ndarray:
        which = self.rng.choice(len(self.shards), size=n, p=self.p)
        out = np.empty((n, self.seq_len + 1), dtype=np.int64)
        for row, k in enumerate(which):
            s = self.shards[k]
            start = int(self.rng.integers(0, len(s) - self.seq_len - 1))
            out[row] = s[start : start + self.seq_len + 1]
        return out


def fixed_windows(shards: list[np.ndarray], seq_len: int, limit: int) -> np.ndarray:
    """Consecutive non-overlapping windows from the start of each shard (deterministic)."""
    rows = []
    for s in shards:
        for start in range(0, len(s) - seq_len - 1, seq_len):
            rows.append(np.asarray(s[start : start + seq_len + 1], dtype=np.int64))
            if len(rows) >= limit:
                return np.stack(rows)
    return np.stack(rows) if rows else np.zeros((0, seq_len + 1), np.int64)


def build_model(vocab: int, d_model: int, n_layers: int, n_heads: int, seq_len: int):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(d_model)
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.ln2 = nn.LayerNorm(d_model)
            self.mlp = nn.Sequential(
                nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, c = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
            q, k, v = (z.view(b, t, n_heads, c // n_heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, d_model)
            self.pos = nn.Embedding(seq_len, d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(n_layers))
            self.ln = nn.LayerNorm(d_model)
            nn.init.normal_(self.tok.weight, std=0.02)

        def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
            for blk in self.blocks:
                x = blk(x)
            logits = self.ln(x) @ self.tok.weight.T  # tied input/output embedding
            return F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))

    return GPT()


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
) -> dict:
    import torch

    manifest = json.loads((emit_dir / "manifest.json").read_text())
    tok = manifest["tokenizer"]
    vocab, dtype = int(tok["vocab_size"]), tok["dtype"]
    torch.manual_seed(seed)
    if threads > 0:  # on a busy machine one thread beats two contending ones
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    train_w = Windows(load_split(emit_dir, "train", dtype), seq_len, rng)
    val = fixed_windows(load_split(emit_dir, "val", dtype), seq_len, val_windows)
    model = build_model(vocab, d_model, n_layers, n_heads, seq_len)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

    def val_loss() -> float | None:
        if not len(val):
            return None
        model.eval()
        with torch.no_grad():
            losses = [
                float(model(torch.from_numpy(v[:, :-1]), torch.from_numpy(v[:, 1:])))
                for v in np.array_split(val, max(1, len(val) // batch))
            ]
        model.train()
        return float(np.mean(losses))

    val_before = val_loss()
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        # linear warm-up over the first 10% of steps, then cosine decay to 10%
        warm = max(1, steps // 10)
        frac = (
            (step + 1) / warm
            if step < warm
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
        )
        for g in opt.param_groups:
            g["lr"] = lr * frac
        xy = torch.from_numpy(train_w.batch(batch))
        loss = model(xy[:, :-1], xy[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {losses[-1]:.3f}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    k = max(1, min(10, steps // 5))
    result = {
        "emit_dir": str(emit_dir),
        "params": n_params,
        "vocab_size": vocab,
        "steps": steps,
        "seq_len": seq_len,
        "batch": batch,
        "tokens_seen": steps * batch * seq_len,
        "train_loss_start": float(np.mean(losses[:k])),
        "train_loss_end": float(np.mean(losses[-k:])),
        "val_loss_before": val_before,
        "val_loss_after": val_loss(),
        "val_windows": len(val),
        "uniform_loss": math.log(vocab),
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(steps * batch * seq_len / elapsed),
    }
    return result


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
    ap.add_argument("--json", type=Path, help="also write the result here")
    a = ap.parse_args(argv)
    emit_dir = a.emit_dir or a.run / "emit"
    if not (emit_dir / "manifest.json").exists():
        raise SystemExit(f"{emit_dir}: no manifest.json; run `datagen run stage=emit` first")
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
    )
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
