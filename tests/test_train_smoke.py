"""The training smoke job reads the emitted token shards and its loss falls."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_smoke.py"


def _torch_or_skip() -> None:
    if importlib.util.find_spec("torch") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("torch is not installed (CI must pip install torch==2.13.0)")
        pytest.skip("torch not installed (pip install torch==2.13.0)")


def test_tiny_gpt_trains_on_emitted_shards_and_loss_falls(real_run, tmp_path):
    """On the session's real run (tests/emit_testdata.py; emit.val_fraction=0.1)."""
    _torch_or_skip()
    run = real_run
    spec = importlib.util.spec_from_file_location("train_smoke", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(
        [
            "--run",
            str(run.path),
            "--steps",
            "30",
            "--batch",
            "8",
            "--seq-len",
            "32",
            "--threads",
            "1",
            "--json",
            str(tmp_path / "res.json"),
        ]
    )
    assert 1_000_000 <= res["params"] <= 5_000_000
    assert res["vocab_size"] == 49152
    # an untrained model is near uniform; training must beat it clearly on train and val
    assert abs(res["train_loss_start"] - math.log(49152)) < 1.0
    assert res["train_loss_end"] < res["train_loss_start"] - 1.0
    assert res["val_windows"] > 0
    assert res["val_loss_after"] < res["val_loss_before"] - 1.0
    assert (tmp_path / "res.json").exists()
