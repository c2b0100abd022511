"""Rho-1 token scores (emit.token_scores) on the session's real run: the real SmolLM2 GGUF through
llama.cpp scores the real emitted train shards; checked against a log-softmax computed here
from llama.cpp's logits, through an endpoint, against another tokenizer, and across a kill."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, datagen
from emit_testdata import copy_run, pipeline_overrides
from fake_openai import FakeOpenAI, ServerThread
from filters_testdata import wikitext_articles
from rich.console import Console

from pipeline.config import TokenScoresConfig
from pipeline.errors import DatagenError
from pipeline.runs import Run
from pipeline.teacher.server import default_model_path
from pipeline.token_scores import LlamaReference, open_reference, score_shard, score_shards
from pipeline.tokenize import load_tokenizer, read_token_shard

pytest.importorskip("llama_cpp", reason="the reference model needs llama-cpp-python ([local])")

QUIET = Console(quiet=True)
# small windows, so the real run's long web document (about 3,200 tokens) is scored in windows
WINDOW, OVERLAP = 512, 128
SCORES = [
    "emit.token_scores.enabled=true",
    f"emit.token_scores.window={WINDOW}",
    f"emit.token_scores.overlap={OVERLAP}",
    "emit.token_scores.keep_fraction=0.6",
    "emit.token_scores.threads=1",
]


def overrides(run: Run, *extra: str) -> list[str]:
    model = Path(run.read_manifest("train_classifier")["model_path"])
    return [f"run.root={run.root}", *pipeline_overrides(model), *extra]


def emit_with_scores(run: Run, *extra: str) -> subprocess.CompletedProcess[str]:
    return datagen("run", "stage=emit", *overrides(run, *SCORES, *extra), cwd=run.root)


@pytest.fixture(scope="module")
def scored(real_run, tmp_path_factory) -> Run:
    """A copy of the real run whose emit was redone with token scores (`datagen run`)."""
    run = copy_run(real_run, tmp_path_factory.mktemp("scored"))
    r = emit_with_scores(run)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def train_shards(run: Run) -> list[Path]:
    return sorted((run.path / "emit" / "tokens" / "train").glob("part-*.ds"))


def independent_logprobs(llm, seq: list[int]) -> list[float]:
    """log p(seq[j] | seq[:j]) for j >= 1 from llama.cpp's logits, log-softmax in plain Python
    (math.fsum over the vocabulary): no code shared with pipeline/token_scores.py."""
    llm.reset()
    llm.eval(seq)
    out = []
    for j in range(1, len(seq)):
        row = [float(x) for x in llm.scores[j - 1]]
        m = max(row)
        lse = m + math.log(math.fsum(math.exp(x - m) for x in row))
        out.append(row[seq[j]] - lse)
    return out


def numpy_logprobs(llm, seq: list[int]) -> list[float]:
    """The same from llama.cpp's logits, log-softmax written out in numpy (float64): the fake
    endpoint's answer (faster than the plain-Python one, for whole shards)."""
    llm.reset()
    llm.eval(seq)
    x = np.asarray(llm.scores[: len(seq) - 1], dtype=np.float64)
    m = x.max(axis=1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
    return list(x[np.arange(len(x)), seq[1:]] - lse)


@pytest.fixture(scope="module")
def llm():
    from llama_cpp import Llama

    return Llama(
        model_path=str(default_model_path()),
        n_ctx=WINDOW,
        logits_all=True,
        n_threads=1,
        verbose=False,
    )


def test_losses_are_the_reference_models_log_softmax(scored, llm):
    tok = load_tokenizer("smollm2")
    manifest = scored.read_manifest("emit")
    ts = manifest["token_scores"]
    assert ts["reference"]["backend"] == "llama.cpp"
    assert ts["tokens"] == manifest["splits"]["train"]["tokens"] and ts["shards_scored"] >= 2
    # the summary (the review's stage table) carries them too
    assert manifest["summary"]["scored_tokens"] == ts["tokens"]
    assert manifest["summary"]["ref_loss_mean"] == ts["mean_loss"]
    checked_windowed = False
    for ds in train_shards(scored):
        tokens, ends = read_token_shard(ds, tok.dtype)
        loss = np.fromfile(ds.with_name(ds.name + ".loss"), dtype="<f2")
        assert len(loss) == len(tokens) and np.isfinite(loss).all() and (loss >= 0).all()
        starts = [0, *map(int, ends[:-1])]
        for s, e in zip(starts, map(int, ends), strict=True):
            seq = [tok.eot_id, *map(int, tokens[s:e])]
            # the first tokens: the document after one end-of-text token
            k = min(6, len(seq) - 1)
            want = [-x for x in independent_logprobs(llm, seq[: k + 1])]
            assert np.allclose(loss[s : s + k].astype(np.float64), want, rtol=2e-3, atol=2e-3)
            if len(seq) > WINDOW:  # a token in a later window: context = the window's start on
                q = WINDOW + 37  # position in seq; windows start at multiples of WINDOW-OVERLAP
                j = math.ceil((q - WINDOW + 1) / (WINDOW - OVERLAP))
                start = j * (WINDOW - OVERLAP)
                want = -independent_logprobs(llm, seq[start : q + 1])[-1]
                assert abs(float(loss[s + q - 1]) - want) < 2e-3 * max(1.0, want)
                checked_windowed = True
        mask = np.fromfile(ds.with_name(ds.name + ".mask"), dtype=np.uint8)
        assert len(mask) == len(tokens) and int(mask.sum()) == round(0.6 * len(tokens))
        assert loss[mask == 1].max() <= loss[mask == 0].min()  # the lowest reference losses
    assert checked_windowed  # the real run has a document longer than one window


def test_a_reference_with_another_tokenizer_is_refused(scored, tmp_path):
    """A corpus tokenized with a real BPE trained here on WikiText-2 (not SmolLM2's): emit with
    token scores stops in one line before anything is moved, the earlier corpus kept."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"])
    bpe.train_from_iterator(wikitext_articles()[:50], trainer)
    path = tmp_path / "wiki_bpe.json"
    bpe.save(str(path))

    run = copy_run(scored, tmp_path / "runs")
    before = run.read_manifest("emit")
    r = emit_with_scores(run, f"emit.tokenizer={path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1, r.stderr
    assert "emit.token_scores: the reference model's tokenizer" in lines[0]
    assert "vocabulary 49152 vs 2000" in lines[0]
    assert run.read_manifest("emit") == before  # the earlier corpus and its scores stay

    # the same refusal from an endpoint whose tokens are another vocabulary's
    other = load_tokenizer(str(path))
    fake = FakeOpenAI()
    fake.prompt_logprobs = lambda ids: [-1.0] * (len(ids) - 1)
    fake.decode_token = lambda i: other.tokenizer.decode([i])
    with ServerThread(fake) as srv:
        cfg = TokenScoresConfig(enabled=True, base_url=srv.url, model="fake", max_retries=0)
        with pytest.raises(DatagenError, match="tokenizer .*fake at .* differs") as e:
            open_reference(cfg, load_tokenizer("smollm2"))
    assert "\n" not in str(e.value)


def test_an_endpoints_prompt_logprobs_give_the_same_scores(scored, llm, tmp_path):
    """A vLLM-shaped endpoint (the fake server, its log-probabilities from the real llama.cpp
    model through a log-softmax written out here; some requests fail once with a 500 and are
    retried) gives the llama.cpp scores."""
    tok = load_tokenizer("smollm2")
    fake = FakeOpenAI(script=lambda key: ["500"] if int(key, 16) % 3 == 0 else [])
    fake.prompt_logprobs = lambda ids: numpy_logprobs(llm, ids)
    fake.decode_token = lambda i: tok.tokenizer.decode([i])
    # the smallest shard, copied without its scores
    ds0 = min(train_shards(scored), key=lambda p: p.stat().st_size)
    ds = tmp_path / ds0.name
    for suffix in ("", ".index", ".metadata"):
        shutil.copy(ds0.with_name(ds0.name + suffix), tmp_path / (ds0.name + suffix))
    cfg = TokenScoresConfig(
        enabled=True, base_url="", window=WINDOW, overlap=OVERLAP, keep_fraction=0.6
    )
    with ServerThread(fake) as srv:
        cfg.base_url = srv.url
        cfg.concurrency = 2
        ref = open_reference(cfg, tok)
        res = score_shard(ds, ref, tok, cfg)
    assert not res.skipped and res.tokens == len(read_token_shard(ds, tok.dtype)[0])
    retried = [k for k, n in fake.attempts.items() if n == 2]
    assert retried and not fake.after_success  # each fault retried once, nothing asked twice
    got = np.fromfile(ds.with_name(ds.name + ".loss"), dtype="<f2").astype(np.float64)
    want = np.fromfile(ds0.with_name(ds0.name + ".loss"), dtype="<f2").astype(np.float64)
    assert np.allclose(got, want, rtol=5e-3, atol=5e-3)


def test_scores_that_match_are_skipped_and_damaged_ones_redone(scored, tmp_path):
    tok = load_tokenizer("smollm2")
    run = copy_run(scored, tmp_path)
    shards = train_shards(run)
    cfg = TokenScoresConfig(
        enabled=True, window=WINDOW, overlap=OVERLAP, keep_fraction=0.6, threads=1
    )
    ref = LlamaReference(cfg, tok)
    small = min(shards, key=lambda p: p.stat().st_size)  # rescored: the cheapest
    loss0 = small.with_name(small.name + ".loss")
    good = loss0.read_bytes()
    damaged = bytearray(good)
    damaged[10] ^= 0xFF
    loss0.write_bytes(bytes(damaged))
    res = score_shards(shards, cfg, tok, QUIET, ref)
    assert res["shards_scored"] == 1 and res["shards_skipped"] == len(shards) - 1
    assert loss0.read_bytes() == good
    # another window changes the scores' identity: every shard is scored again
    cfg2 = cfg.model_copy(update={"overlap": 64})
    assert score_shards(shards, cfg2, tok, QUIET, ref)["shards_skipped"] == 0


def test_a_killed_emit_resumes_without_rescoring_finished_shards(scored, tmp_path):
    run = copy_run(scored, tmp_path, without=("emit",))
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "stage=emit", *overrides(run, *SCORES)]
    proc = subprocess.Popen(
        cmd,
        cwd=run.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    first = run.path / "emit" / "tokens" / "train" / "part-00000.ds.loss.json"
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not run.is_finished("emit")
    r = emit_with_scores(run)
    assert r.returncode == 0, r.stderr[-3000:]
    ts = run.read_manifest("emit")["token_scores"]
    assert ts["shards_skipped"] >= 1 and ts["shards_scored"] >= 1
    for a, b in zip(train_shards(run), train_shards(scored), strict=True):
        for suffix in (".loss", ".mask"):
            assert (
                hashlib.sha256(a.with_name(a.name + suffix).read_bytes()).digest()
                == hashlib.sha256(b.with_name(b.name + suffix).read_bytes()).digest()
            )


def test_selective_training_reads_the_scores(scored, tmp_path):
    """train_smoke --select-top: Rho-1's selective loss over the emitted .loss files."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed (pip install torch==2.13.0)")
    spec = importlib.util.spec_from_file_location("train_smoke", ROOT / "scripts/train_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = ["--run", str(scored.path), "--steps", "30", "--batch", "8", "--seq-len", "32"]
    res = mod.main([*args, "--threads", "1", "--select-top", "0.6"])
    sel = res["selective"]
    assert sel["target_tokens"] == 30 * 8 * 32
    assert sel["tokens_trained"] == 30 * round(0.6 * 8 * 32)
    # the trained tokens are those the model lags the reference most on
    assert sel["excess_loss_selected_mean"] > sel["excess_loss_rest_mean"]
    # the reference's losses are what was read: SmolLM2 predicts the corpus far better than a
    # uniform guess over its vocabulary
    assert 0 < sel["ref_loss_mean"] < math.log(49152) - 3
    assert res["train_loss_end"] < res["train_loss_start"] - 1.0

    bare = copy_run(scored, tmp_path)
    for p in (bare.path / "emit" / "tokens" / "train").glob("*.ds.loss"):
        p.unlink()
    with pytest.raises(SystemExit, match=r"\.ds\.loss: missing; run emit with"):
        mod.main(["--run", str(bare.path), "--steps", "2", "--select-top", "0.6"])


def test_the_key_goes_to_a_plain_http_endpoint_only_when_allowed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-token-scores-1a2b3c4d")
    cfg = TokenScoresConfig(enabled=True, base_url="http://10.9.8.7:8000/v1", max_retries=0)
    with pytest.raises(DatagenError) as e:
        open_reference(cfg, load_tokenizer("smollm2"))
    msg = str(e.value)
    assert msg.startswith("emit.token_scores.base_url: $OPENAI_API_KEY is not sent to 10.9.8.7")
    assert "emit.token_scores.allow_insecure_key=true" in msg and "sk-test" not in msg
