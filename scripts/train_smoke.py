"""Training smoke job: a tiny GPT (torch, CPU) trains on the emitted token shards.

It reads ``<emit>/tokens/train/*.ds`` and ``<emit>/tokens/val/*.ds`` through ``numpy.memmap``
(dtype and vocabulary size from ``<emit>/manifest.json``), samples random windows, trains for
``--steps`` steps and reports the training loss at the start and end and the validation loss
before and after training. It proves the shards are what a training job can consume.

``--select-top K`` trains with Rho-1's selective language modelling loss (Lin et al. 2024, "Not
All Tokens Are What You Need"): each batch backpropagates only the K share of its target tokens
with the highest excess loss, the current model's loss minus the reference model's loss read
from ``part-NNNNN.ds.loss`` beside each train shard (``emit.token_scores.enabled=true``).

    pip install torch==2.13.0          # CPU build (the project's optional extra: .[train])
    python scripts/train_smoke.py --run runs/default --steps 300
    python scripts/train_smoke.py --emit-dir runs/default/emit --steps 60 --json out.json
    python scripts/train_smoke.py --run runs/default --steps 300 --select-top 0.6
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np


def shard_paths(emit_dir: Path, split: str) -> list[Path]:
    return sorted((emit_dir / "tokens" / split).glob("part-*.ds"))


def load_split(emit_dir: Path, split: str, dtype: str) -> list[np.ndarray]:
    shards = shard_paths(emit_dir, split)
    return [m for m in (np.memmap(p, dtype=np.dtype(dtype), mode="r") for p in shards) if len(m)]


def load_scores(shards: list[Path], dtype: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(tokens, reference losses) of each non-empty shard; the ``.ds.loss`` files must cover
    every token (little-endian float16, one per token: pipeline/token_scores.py)."""
    out = []
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
        out.append((tokens, loss))
    return out


class Windows:
    """Random (input, target) windows of ``seq_len`` tokens drawn across memmapped shards, with
    the reference loss of each target token when the shards come with scores."""

    def __init__(
        self,
        shards: list[np.ndarray],
        seq_len: int,
        rng: np.random.Generator,
        losses: list[np.ndarray] | None = None,
    ) -> None:
        keep = [i for i, s in enumerate(shards) if len(s) > seq_len + 1]
        self.shards = [shards[i] for i in keep]
        self.losses = [losses[i] for i in keep] if losses is not None else None
        if not self.shards:
            raise SystemExit(f"no token shard is longer than seq_len+1 = {seq_len + 1} tokens")
        sizes = np.array([len(s) - seq_len - 1 for s in self.shards], dtype=np.float64)
        self.p = sizes / sizes.sum()
        self.seq_len = seq_len
        self.rng = rng

    def batch(self, n: int) -> np.ndarray:
        return self.scored_batch(n)[0]

    def scored_batch(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(n x seq_len+1 token windows, n x seq_len reference losses of the targets or None)."""
        which = self.rng.choice(len(self.shards), size=n, p=self.p)
        out = np.empty((n, self.seq_len + 1), dtype=np.int64)
        ref = np.empty((n, self.seq_len), dtype=np.float32) if self.losses else None
        for row, k in enumerate(which):
            s = self.shards[k]
            start = int(self.rng.integers(0, len(s) - self.seq_len - 1))
            out[row] = s[start : start + self.seq_len + 1]
            if ref is not None and self.losses is not None:
                ref[row] = self.losses[k][start + 1 : start + self.seq_len + 1]
        return out, ref


def select_tokens(token_loss, ref, keep: float):
    """Rho-1's token selection: the mean loss over the ``keep`` share of tokens with the highest
    excess loss (model loss - reference loss), and the boolean mask of those tokens."""
    import torch

    excess = token_loss.detach().reshape(-1) - torch.from_numpy(ref).reshape(-1)
    k = max(1, round(keep * excess.numel()))
    idx = torch.topk(excess, k).indices
    mask = torch.zeros_like(excess, dtype=torch.bool)
    mask[idx] = True
    return token_loss.reshape(-1)[idx].mean(), mask


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

        def forward(
            self, idx: torch.Tensor, targets: torch.Tensor, per_token: bool = False
        ) -> torch.Tensor:
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
            for blk in self.blocks:
                x = blk(x)
            logits = self.ln(x) @ self.tok.weight.T  # tied input/output embedding
            loss = F.cross_entropy(
                logits.reshape(-1, vocab),
                targets.reshape(-1),
                reduction="none" if per_token else "mean",
            )
            return loss.reshape(targets.shape) if per_token else loss

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
    select_top: float | None = None,
) -> dict:
    import torch

    manifest = json.loads((emit_dir / "manifest.json").read_text())
    tok = manifest["tokenizer"]
    vocab, dtype = int(tok["vocab_size"]), tok["dtype"]
    torch.manual_seed(seed)
    if threads > 0:  # on a busy machine one thread beats two contending ones
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    if select_top is not None:
        if not 0 < select_top <= 1:
            raise SystemExit(f"--select-top {select_top}: must be in (0, 1]")
        scored = load_scores(shard_paths(emit_dir, "train"), dtype)
        train_w = Windows([t for t, _ in scored], seq_len, rng, [lo for _, lo in scored])
    else:
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
    sel = {"selected": 0, "targets": 0, "ref_sum": 0.0, "ex_sel": 0.0, "ex_rest": 0.0}
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
        windows, ref = train_w.scored_batch(batch)
        xy = torch.from_numpy(windows)
        if select_top is None or ref is None:
            loss = model(xy[:, :-1], xy[:, 1:])
            all_loss = loss.item()
        else:  # reported: the loss over every target token, comparable with a full run
            tok_loss = model(xy[:, :-1], xy[:, 1:], per_token=True)
            loss, mask = select_tokens(tok_loss, ref, select_top)
            excess = tok_loss.detach().reshape(-1) - torch.from_numpy(ref).reshape(-1)
            sel["selected"] += int(mask.sum())
            sel["targets"] += mask.numel()
            sel["ref_sum"] += float(ref.sum())
            sel["ex_sel"] += float(excess[mask].sum())
            sel["ex_rest"] += float(excess[~mask].sum())
            all_loss = float(tok_loss.detach().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(all_loss)
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
    if select_top is not None:
        rest = sel["targets"] - sel["selected"]
        result["selective"] = {
            "select_top": select_top,
            "tokens_trained": sel["selected"],
            "target_tokens": sel["targets"],
            "ref_loss_mean": sel["ref_sum"] / max(1, sel["targets"]),
            "excess_loss_selected_mean": sel["ex_sel"] / max(1, sel["selected"]),
            "excess_loss_rest_mean": sel["ex_rest"] / rest if rest else None,
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
