from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).parent))  # tests/fake_openai.py


def datagen(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real `datagen` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance on 127.0.0.1 for the module's tests (tests/ray_cluster.py), shut
    down after them."""
    pytest.importorskip("ray")
    from ray_cluster import RayCluster

    with RayCluster() as address:
        yield address


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"real test data not found at {SHARED_DATA} (../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory):
    """Every stage run for real once per session (tests/emit_testdata.py); tests that change
    it work on a copy (emit_testdata.copy_run)."""
    pytest.importorskip("llama_cpp", reason="the real run needs the embedded teacher ([local])")
    from emit_testdata import build_real_run

    return build_real_run(tmp_path_factory.mktemp("real_run"))


def processes(parent: int, needle: str) -> list[int]:
    """Pids of the processes whose command line holds ``needle`` and whose parent is
    ``parent`` (0: any parent)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text().split()
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (parent == 0 or int(stat[3]) == parent) and needle in cmd:
            out.append(int(p.name))
    return out


def local_workers(driver: int) -> list[int]:
    """The local executor's worker processes of a running ``datagen`` driver: the children of
    its forkserver (pipeline.executor forks workers from one)."""
    servers = processes(driver, "multiprocessing.forkserver")
    return [w for server in servers for w in processes(server, "")]
