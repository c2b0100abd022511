"""A tiny GPT trained on CPU: the proxy model of the training smoke job and of ``datagen ablate``.

``build_model`` is a causal transformer (pre-LayerNorm blocks, tied input/output embedding;
d_model 64, 2 layers, 4 heads by default: about 3.2M parameters with SmolLM2's 49,152-token
vocabulary, most of them the embedding). ``train_model`` samples random windows from token
arrays, trains with AdamW (linear warm-up over the first 10% of steps, then cosine decay to
10%, gradient clipping at 1.0) and reports the loss on fixed eval windows before and after.
torch is the optional extra ``train`` (``pip install -e '.[train]'``, CPU build).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.config import ProxyModelConfig
from pipeline.errors import DatagenError


def require_torch(what: str) -> Any:
    try:
        import torch
    except ImportError:
        raise DatagenError(
            f"{what} needs torch: pip install -e '.[train]' (the CPU build, torch==2.13.0)"
        ) from None
    return torch


class Windows:
    """Random (input, target) windows of ``seq_len`` tokens drawn across token arrays, each
    array in proportion to its length, with the reference loss of each target token when the
    arrays come with scores (Rho-1, ``emit.token_scores``)."""

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
            raise DatagenError(f"no token array is longer than seq_len+1 = {seq_len + 1} tokens")
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


def select_tokens(token_loss: Any, ref: np.ndarray, keep: float) -> tuple[Any, Any]:
    """Rho-1's selection (Lin et al. 2024): the mean loss over the ``keep`` share of tokens
    with the highest excess loss (model loss - reference loss), and the mask of those tokens."""
    import torch

    excess = token_loss.detach().reshape(-1) - torch.from_numpy(ref).reshape(-1)
    k = max(1, round(keep * excess.numel()))
    idx = torch.topk(excess, k).indices
    mask = torch.zeros_like(excess, dtype=torch.bool)
    mask[idx] = True
    return token_loss.reshape(-1)[idx].mean(), mask


def fixed_windows(shards: Sequence[np.ndarray], seq_len: int, limit: int) -> np.ndarray:
    """Consecutive non-overlapping windows from the start of each array (deterministic)."""
    rows = []
    for s in shards:
        for start in range(0, len(s) - seq_len - 1, seq_len):
            rows.append(np.asarray(s[start : start + seq_len + 1], dtype=np.int64))
            if len(rows) >= limit:
                return np.stack(rows)
    return np.stack(rows) if rows else np.zeros((0, seq_len + 1), np.int64)


def spread_windows(tokens: np.ndarray, seq_len: int, limit: int) -> np.ndarray:
    """At most ``limit`` non-overlapping windows spread evenly over one array (so a large eval
    set is sampled throughout, not only its first documents)."""
    n_all = max(0, (len(tokens) - 1) // seq_len)
    if n_all == 0:
        return np.zeros((0, seq_len + 1), np.int64)
    picks = np.unique(np.linspace(0, n_all - 1, num=min(limit, n_all)).astype(np.int64))
    return np.stack(
        [np.asarray(tokens[i * seq_len : i * seq_len + seq_len + 1], np.int64) for i in picks]
    )


def build_model(vocab: int, d_model: int, n_layers: int, n_heads: int, seq_len: int) -> Any:
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
            return F.cross_entropy(
                logits.reshape(-1, vocab),
                targets.reshape(-1),
                reduction="none" if per_token else "mean",
            )

    return GPT()


def train_model(
    train: list[np.ndarray],
    evals: Mapping[str, np.ndarray],
    vocab: int,
    hp: ProxyModelConfig,
    seed: int,
    threads: int = 0,
    log_every: int = 0,
    ref_losses: list[np.ndarray] | None = None,
    select_top: float | None = None,
) -> dict[str, Any]:
    """Train the proxy model on random windows of ``train``; ``evals`` maps a name to fixed
    (n, seq_len + 1) windows whose mean loss is reported before and after training. With
    ``select_top`` (and the reference loss of every token of ``train``, ``ref_losses``) each
    step trains on that share of the batch's tokens by excess loss (Rho-1); the reported
    training loss stays the mean over every token, comparable with a full run."""
    if select_top is not None and (ref_losses is None or not 0 < select_top <= 1):
        raise DatagenError(f"select_top={select_top}: needs reference losses and 0 < x <= 1")
    torch = require_torch("training the proxy model")
    torch.manual_seed(seed)
    if threads > 0:  # on a busy machine one thread beats two contending ones
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    windows = Windows(train, hp.seq_len, rng, ref_losses if select_top is not None else None)
    model = build_model(vocab, hp.d_model, hp.layers, hp.heads, hp.seq_len)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=0.01)

    def eval_loss(w: np.ndarray) -> float | None:
        if not len(w):
            return None
        model.eval()
        with torch.no_grad():
            losses = [
                float(model(torch.from_numpy(v[:, :-1]), torch.from_numpy(v[:, 1:]))) * len(v)
                for v in np.array_split(w, max(1, math.ceil(len(w) / hp.batch)))
            ]
        model.train()
        return float(np.sum(losses) / len(w))

    before = {k: eval_loss(w) for k, w in evals.items()}
    losses = []
    sel = {"selected": 0, "targets": 0, "ref_sum": 0.0, "ex_sel": 0.0, "ex_rest": 0.0}
    t0 = time.perf_counter()
    warm = max(1, hp.steps // 10)
    for step in range(hp.steps):
        frac = (
            (step + 1) / warm
            if step < warm
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, hp.steps - warm)))
        )
        for g in opt.param_groups:
            g["lr"] = hp.lr * frac
        tokens, ref = windows.scored_batch(hp.batch)
        xy = torch.from_numpy(tokens)
        if ref is None:
            loss = model(xy[:, :-1], xy[:, 1:])
            all_loss = loss.item()
        else:
            tok_loss = model(xy[:, :-1], xy[:, 1:], per_token=True)
            loss, mask = select_tokens(tok_loss, ref, select_top or 1.0)
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
        if log_every and (step % log_every == 0 or step == hp.steps - 1):
            print(f"step {step:5d}  loss {losses[-1]:.3f}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    k = max(1, min(10, hp.steps // 5))
    tokens = hp.steps * hp.batch * hp.seq_len
    result: dict[str, Any] = {
        "params": n_params,
        "vocab_size": vocab,
        "steps": hp.steps,
        "seq_len": hp.seq_len,
        "batch": hp.batch,
        "tokens_seen": tokens,
        "train_loss_start": float(np.mean(losses[:k])),
        "train_loss_end": float(np.mean(losses[-k:])),
        "eval_before": before,
        "eval_after": {k2: eval_loss(w) for k2, w in evals.items()},
        "eval_windows": {k2: len(w) for k2, w in evals.items()},
        "uniform_loss": math.log(vocab),
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed) if elapsed > 0 else None,
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
