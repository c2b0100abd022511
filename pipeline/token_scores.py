"""Rho-1 token scores (Lin et al. 2024, "Not All Tokens Are What You Need"): a reference model's
loss on every token of an emitted token shard, for selective training.

For a shard ``part-NNNNN.ds`` (datatrove layout, :mod:`pipeline.tokenize`) this writes, beside
it, each file atomically (temp + rename):

- ``part-NNNNN.ds.loss``: no header; one little-endian IEEE float16 per token of the ``.ds``
  (same order, same count): the token's negative log-likelihood in nats,
  ``-log p(token | the tokens of its document before it)``, under the reference model;
- ``part-NNNNN.ds.mask`` (only with ``keep_fraction > 0``): one byte per token, 1 = selected,
  0 = not (datatrove's own ``.ds.loss`` loss-mask layout, ``struct '<?'``, under another name);
- ``part-NNNNN.ds.loss.json``: what the scores were made from (the ``.ds`` sha256, the
  reference model, window, overlap) and the ``.loss`` sha256. Written last: a shard whose
  ``.loss.json`` matches is skipped on a rerun (a killed run resumes at the shard it was on).

Every document is scored after one end-of-text token (the token that precedes it in the
stream), so its first token has a context too and the end-of-text token that closes it is
scored as well. A document longer than ``window`` tokens is scored in windows of ``window``
tokens; each window after the first starts ``overlap`` tokens before the end of the previous
one, and those ``overlap`` tokens are context only (their scores come from the earlier window).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline.config import TeacherConfig, TokenScoresConfig
from pipeline.errors import DatagenError
from pipeline.redaction import env_secret, redact, safe_url
from pipeline.runs import atomic_write_bytes, atomic_write_json, read_json
from pipeline.tokenize import LoadedTokenizer, read_token_shard

FIELD = "emit.token_scores"
LOSS_DTYPE = np.dtype("<f2")
# ASCII only, so every token decodes to whole characters (compared one by one for endpoints)
PROBE = (
    "The quick brown fox jumps over the lazy dog. In 1987, 42 students paid $3.50 each;\n"
    "def area(r):\n    return 3.14159 * r ** 2  # circle\n<p>Hello, World!</p> x_1+y_2=z_3"
)


class Reference(Protocol):
    """A reference model: log-probabilities of a token sequence under it."""

    def identity(self) -> dict[str, Any]: ...

    def logprobs(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """For each sequence (at most ``window`` tokens): ``log p(seq[j] | seq[:j])`` for
        ``j = 1 .. len(seq) - 1``, as float32."""
        ...


def log_softmax_at(logits: np.ndarray, targets: np.ndarray, rows: int = 128) -> np.ndarray:
    """``log_softmax(logits[i])[targets[i]]`` per row, in float64, ``rows`` rows at a time
    (a full float64 copy of a 1024 x 49152 logits block would be 400 MB)."""
    from scipy.special import log_softmax

    out = np.empty(len(targets), dtype=np.float64)
    for s in range(0, len(targets), rows):
        lp = log_softmax(logits[s : s + rows].astype(np.float64), axis=1)
        out[s : s + rows] = lp[np.arange(len(lp)), targets[s : s + rows]]
    return out


# --------------------------------------------------------------------------- references
def _tokenizer_mismatch(tok: LoadedTokenizer, where: str, detail: str) -> DatagenError:
    return DatagenError(
        f"{FIELD}: the reference model's tokenizer ({where}) differs from the corpus tokenizer "
        f"({tok.name}, {tok.source}): {detail}; score with a model that shares the corpus "
        f"tokenizer"
    )


class LlamaReference:
    """A GGUF model through llama-cpp-python, logits for every position (``logits_all``)."""

    def __init__(self, cfg: TokenScoresConfig, tok: LoadedTokenizer, vocab_only: bool = False):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise DatagenError(
                f"{FIELD}: llama-cpp-python is not installed (pip install -e '.[local]'), or set "
                f"{FIELD}.base_url to an endpoint"
            ) from None
        self.path = Path(cfg.model_path).expanduser() if cfg.model_path else _bundled_gguf()
        if not self.path.is_file():
            raise DatagenError(f"{FIELD}.model_path: {self.path} does not exist")
        self.window = cfg.window
        threads = cfg.threads or os.cpu_count() or 1
        try:
            self.llm = Llama(
                model_path=str(self.path),
                n_ctx=cfg.window,
                n_batch=min(512, cfg.window),
                logits_all=True,
                vocab_only=vocab_only,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise DatagenError(
                f"{FIELD}.model_path: {self.path}: llama.cpp cannot load it ({e})"
            ) from None
        self._check_tokenizer(tok)
        self._sha: str | None = None

    def _check_tokenizer(self, tok: LoadedTokenizer) -> None:
        where = self.path.name
        n = self.llm.n_vocab()
        if n != tok.vocab_size:
            raise _tokenizer_mismatch(tok, where, f"vocabulary {n} vs {tok.vocab_size}")
        ours = tok.tokenizer.encode(PROBE, add_special_tokens=False).ids
        theirs = self.llm.tokenize(PROBE.encode(), add_bos=False, special=False)
        if ours != theirs:
            i = next(
                (k for k, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), len(ours)
            )
            raise _tokenizer_mismatch(
                tok,
                where,
                f"a probe string tokenizes differently from token {i} ({len(theirs)} "
                f"vs {len(ours)} tokens)",
            )
        eot = self.llm.tokenize(tok.eot_token.encode(), add_bos=False, special=True)
        if eot != [tok.eot_id]:
            raise _tokenizer_mismatch(tok, where, f"{tok.eot_token!r} is {eot}, not {tok.eot_id}")

    def identity(self) -> dict[str, Any]:
        if self._sha is None:
            with open(self.path, "rb") as f:
                self._sha = hashlib.file_digest(f, "sha256").hexdigest()[:16]
        return {"backend": "llama.cpp", "model": self.path.name, "model_sha256": self._sha}

    def logprobs(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        out = []
        for seq in seqs:
            self.llm.reset()
            self.llm.eval(list(seq))
            # row j of the logits is the distribution of token j + 1
            lp = log_softmax_at(self.llm.scores[: len(seq) - 1], np.asarray(seq[1:], np.int64))
            out.append(lp.astype(np.float32))
        return out


def _bundled_gguf() -> Path:
    from pipeline.teacher.server import default_model_path

    try:
        return default_model_path()
    except DatagenError as e:
        raise DatagenError(f"{FIELD}.model_path: {e}") from None


class EndpointReference:
    """An OpenAI-compatible endpoint's legacy completions API with ``echo=True, logprobs=0``:
    the prompt's token log-probabilities (vLLM; the prompt is sent as token ids)."""

    def __init__(self, cfg: TokenScoresConfig, tok: LoadedTokenizer) -> None:
        import openai

        from pipeline.teacher import NO_KEY, check_url

        check_url(
            cfg.base_url,
            TeacherConfig(api_key_env=cfg.api_key_env, allow_insecure_key=cfg.allow_insecure_key),
            field=f"{FIELD}.base_url",
        )
        self.url = cfg.base_url
        self.key = env_secret(cfg.api_key_env)
        self.client = openai.OpenAI(
            base_url=cfg.base_url,
            api_key=self.key or NO_KEY,
            max_retries=cfg.max_retries,
            timeout=600.0,
        )
        self.concurrency = cfg.concurrency
        self.model = cfg.model or self._first_model()
        self._check_tokenizer(tok)

    def _call(self, what: str, fn: Any) -> Any:
        import openai

        try:
            return fn()
        except openai.OpenAIError as e:
            msg = redact(str(e), self.key).splitlines()[0][:300]
            raise DatagenError(f"{FIELD}.base_url: {safe_url(self.url)}: {what}: {msg}") from None

    def _first_model(self) -> str:
        models = self._call("listing models", lambda: list(self.client.models.list()))
        if not models:
            raise DatagenError(f"{FIELD}.model: {safe_url(self.url)} lists no model; set it")
        return models[0].id

    def _echo(self, ids: Sequence[int]) -> tuple[list[str], list[float | None]]:
        r = self._call(
            "prompt log-probabilities",
            lambda: self.client.completions.create(
                model=self.model,
                prompt=list(map(int, ids)),
                max_tokens=1,
                temperature=0.0,
                echo=True,
                logprobs=0,
            ),
        )
        lp = r.choices[0].logprobs if r.choices else None
        if lp is None or not lp.token_logprobs or len(lp.token_logprobs) < len(ids):
            raise DatagenError(
                f"{FIELD}.base_url: {safe_url(self.url)} returned no log-probabilities for the "
                f"prompt (it needs completions with echo=true and logprobs, as vLLM has)"
            )
        return list(lp.tokens or []), list(lp.token_logprobs)

    def _check_tokenizer(self, tok: LoadedTokenizer) -> None:
        ids = tok.tokenizer.encode(PROBE, add_special_tokens=False).ids
        tokens, _ = self._echo(ids)
        ours = [tok.tokenizer.decode([i]) for i in ids]
        theirs = tokens[: len(ids)]
        if theirs != ours:
            i = next(
                (k for k, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                len(theirs),
            )
            shown = theirs[i] if i < len(theirs) else None
            raise _tokenizer_mismatch(
                tok,
                f"{self.model} at {safe_url(self.url)}",
                f"probe token {i} (id {ids[min(i, len(ids) - 1)]}) is {shown!r} there, "
                f"{ours[min(i, len(ours) - 1)]!r} here",
            )

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "base_url": safe_url(self.url), "model": self.model}

    def _one(self, seq: Sequence[int]) -> np.ndarray:
        _, lps = self._echo(seq)
        vals = lps[1 : len(seq)]
        if any(v is None for v in vals):
            raise DatagenError(
                f"{FIELD}.base_url: {safe_url(self.url)} left a prompt log-probability empty"
            )
        return np.asarray(vals, dtype=np.float32)

    def logprobs(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, seqs))


def open_reference(
    cfg: TokenScoresConfig, tok: LoadedTokenizer, check_only: bool = False
) -> Reference:
    """The configured reference model, refused in one line when its tokenizer is not the
    corpus's. ``check_only``: llama.cpp loads only the vocabulary (a quick check)."""
    if cfg.base_url:
        return EndpointReference(cfg, tok)
    return LlamaReference(cfg, tok, vocab_only=check_only)


# --------------------------------------------------------------------------- scoring
def windows(n: int, window: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of each window over a sequence of ``n`` tokens;
    position 0 is never scored (it is the end-of-text context)."""
    out = [(0, min(n, window), 1)]
    while out[-1][1] < n:
        prev_end = out[-1][1]
        start = prev_end - overlap
        out.append((start, min(n, start + window), prev_end))
    return out


def score_documents(
    ref: Reference, docs: Sequence[np.ndarray], eot_id: int, window: int, overlap: int
) -> list[np.ndarray]:
    """Per-token NLL (float32) of each document (its tokens, ending with end-of-text)."""
    seqs: list[list[int]] = []
    where: list[tuple[int, int, int]] = []  # (doc, first scored, offset of the first in seq)
    for d, doc in enumerate(docs):
        full = [eot_id, *map(int, doc)]
        for start, end, first in windows(len(full), window, overlap):
            seqs.append(full[start:end])
            where.append((d, first, first - start))
    # a document repeated by the mix (emit.mix weight > 1) is scored once: never pay twice
    unique: dict[bytes, int] = {}
    slot = [unique.setdefault(np.asarray(q, np.int64).tobytes(), len(unique)) for q in seqs]
    firsts = {i: k for k, i in reversed(list(enumerate(slot)))}
    scored = ref.logprobs([seqs[firsts[i]] for i in range(len(unique))])
    out = [np.empty(len(doc), np.float32) for doc in docs]
    for (d, first, off), i in zip(where, slot, strict=True):
        lp = scored[i]
        new = lp[off - 1 :]  # lp[j - 1] is the score of seq[j]
        out[d][first - 1 : first - 1 + len(new)] = -new
    return out


def selection_mask(loss: np.ndarray, keep_fraction: float) -> np.ndarray:
    """1 for the ``keep_fraction`` of tokens with the lowest reference loss (ties by position).
    Rho-1 keeps the tokens with the highest excess loss, training-model loss minus reference
    loss; before training, the model's loss is the same for every token, so that is this."""
    mask = np.zeros(len(loss), dtype=np.uint8)
    k = round(keep_fraction * len(loss))
    if k:
        mask[np.argsort(loss.astype(np.float32), kind="stable")[:k]] = 1
    return mask


@dataclass
class ShardResult:
    shard: str
    tokens: int
    skipped: bool
    loss_sha256: str
    mean_loss: float


def _sidecar(ds: Path) -> Path:
    return ds.with_name(ds.name + ".loss.json")


def _expected(
    ds: Path, ref_id: dict[str, Any], cfg: TokenScoresConfig, n: int, dtype: str
) -> dict[str, Any]:
    with open(ds, "rb") as f:
        ds_sha = hashlib.file_digest(f, "sha256").hexdigest()
    return {
        "ds_sha256": ds_sha,
        "tokens": n,
        "token_dtype": dtype,
        "loss_dtype": LOSS_DTYPE.str,
        "reference": ref_id,
        "window": cfg.window,
        "overlap": cfg.overlap,
        "keep_fraction": cfg.keep_fraction,
    }


def _done(ds: Path, expect: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar of an earlier run, when it was made from the same shard and settings and its
    files are whole."""
    side = _sidecar(ds)
    if not side.is_file():
        return None
    try:
        got = read_json(side)
    except (DatagenError, OSError):
        return None
    if {k: got.get(k) for k in expect} != expect:
        return None
    loss = ds.with_name(ds.name + ".loss")
    if not loss.is_file() or loss.stat().st_size != expect["tokens"] * LOSS_DTYPE.itemsize:
        return None
    with open(loss, "rb") as f:
        if hashlib.file_digest(f, "sha256").hexdigest() != got.get("loss_sha256"):
            return None
    mask = ds.with_name(ds.name + ".mask")
    if expect["keep_fraction"] and (not mask.is_file() or mask.stat().st_size != expect["tokens"]):
        return None
    return got


def score_shard(
    ds: Path,
    ref: Reference,
    tok: LoadedTokenizer,
    cfg: TokenScoresConfig,
    on_tokens: Any = None,
    batch_docs: int = 64,
) -> ShardResult:
    """Write ``<ds>.loss`` (and ``.mask``, ``.loss.json``) for one token shard; skip it when an
    earlier run's files match. ``on_tokens(n)`` is called as tokens are scored (progress)."""
    tokens, ends = read_token_shard(ds, tok.dtype)
    n = len(tokens)
    if n != (int(ends[-1]) if len(ends) else 0):
        raise DatagenError(f"{ds}: {n} tokens but its .ds.index ends at {ends[-1:]}")
    expect = _expected(ds, ref.identity(), cfg, n, tok.dtype.str)
    if got := _done(ds, expect):
        return ShardResult(ds.name, n, True, got["loss_sha256"], got["mean_loss"])
    loss = np.empty(n, dtype=np.float32)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    for b in range(0, len(ends), batch_docs):
        sl = slice(b, b + batch_docs)
        docs = [
            np.asarray(tokens[s:e])
            for s, e in zip(starts[sl], ends[sl].astype(np.int64), strict=True)
        ]
        for s, nll in zip(
            starts[sl],
            score_documents(ref, docs, tok.eot_id, cfg.window, cfg.overlap),
            strict=True,
        ):
            loss[s : s + len(nll)] = nll
        if on_tokens:
            on_tokens(sum(len(d) for d in docs))
    data = loss.astype(LOSS_DTYPE).tobytes()
    atomic_write_bytes(ds.with_name(ds.name + ".loss"), data)
    if cfg.keep_fraction:
        atomic_write_bytes(
            ds.with_name(ds.name + ".mask"), selection_mask(loss, cfg.keep_fraction).tobytes()
        )
    mean = float(loss.mean()) if n else math.nan
    sha = hashlib.sha256(data).hexdigest()
    atomic_write_json(_sidecar(ds), {**expect, "loss_sha256": sha, "mean_loss": round(mean, 6)})
    return ShardResult(ds.name, n, False, sha, round(mean, 6))


def score_shards(
    shards: Sequence[Path],
    cfg: TokenScoresConfig,
    tok: LoadedTokenizer,
    console: Console,
    ref: Reference | None = None,
) -> dict[str, Any]:
    """Score every shard (in order; shards already scored are skipped), with progress; the
    summary for the manifest."""
    ref = ref or open_reference(cfg, tok)
    _remove_orphans(shards)
    total = sum(os.path.getsize(p) // tok.dtype.itemsize for p in shards)
    results: list[ShardResult] = []
    t0 = time.perf_counter()
    fresh = [0]  # tokens scored by this run (skipped shards advance the bar, not the rate)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as prog:
        task = prog.add_task("token scores", total=total, rate="")

        def advance(k: int) -> None:
            fresh[0] += k
            rate = fresh[0] / max(time.perf_counter() - t0, 1e-9)
            prog.update(task, advance=k, rate=f"{rate:,.0f} tok/s")

        for ds in shards:
            results.append(score_shard(ds, ref, tok, cfg, advance))
            if results[-1].skipped:
                prog.update(task, advance=results[-1].tokens)
    elapsed = time.perf_counter() - t0
    scored = [r for r in results if not r.skipped]
    n = sum(r.tokens for r in results)
    mean = sum(r.mean_loss * r.tokens for r in results if r.tokens) / n if n else None
    console.print(
        f"token scores: {len(results)} shards, {n:,} tokens "
        f"({len(results) - len(scored)} shard(s) scored earlier), mean loss {mean or 0:.3f}"
    )
    return {
        "reference": ref.identity(),
        "window": cfg.window,
        "overlap": cfg.overlap,
        "keep_fraction": cfg.keep_fraction,
        "tokens": n,
        "mean_loss": round(mean, 6) if mean is not None else None,
        "shards_scored": len(scored),
        "shards_skipped": len(results) - len(scored),
        "tokens_per_s": round(sum(r.tokens for r in scored) / elapsed) if scored else None,
        "shards": [
            {
                "shard": r.shard,
                "tokens": r.tokens,
                "mean_loss": r.mean_loss,
                "sha256": r.loss_sha256,
            }
            for r in results
        ],
        "layout": {
            "loss": "part-NNNNN.ds.loss: little-endian float16 per token of the .ds: -log p(token "
            "| its document before it) in nats",
            **(
                {"mask": "part-NNNNN.ds.mask: one byte per token, 1 = selected"}
                if cfg.keep_fraction
                else {}
            ),
        },
    }


SCORE_SUFFIXES = (".ds.loss", ".ds.mask", ".ds.loss.json")


def _remove_orphans(shards: Sequence[Path]) -> None:
    """Score files whose shard is gone (an earlier run wrote more shards)."""
    live = {p.name for p in shards}
    for folder in {p.parent for p in shards}:
        for p in folder.iterdir():
            for suffix in SCORE_SUFFIXES:
                if p.name.endswith(suffix) and p.name[: -len(suffix)] + ".ds" not in live:
                    p.unlink()
