"""Run a code exercise's tests against its solution, isolated from this machine.

Each run is a fresh ``python -I -S -B`` process (``pipeline/sandbox_child.py``) started with
an empty environment in its own session, in a new temporary directory, under rlimits (CPU
time, address space, file size, processes, open files, no core files) and a wall-clock limit
after which its whole process group is killed. Two isolation levels:

- ``namespaces`` (where the kernel allows them): new mount, network, pid, ipc and uts
  namespaces (and a user namespace when not root). The exercise sees a minimal read-only root
  (the interpreter and system libraries, four devices, no /proc, /home, /tmp or /run), a
  size-capped writable tmpfs ``/work``, and only a loopback interface that is down. Root
  runs it as a uid of its own (``UID_BASE`` + the launching thread's id: per-run process
  quota, owns nothing on the host); every capability is dropped and ``no_new_privs`` set.
  When its pid-1 exits the kernel kills every process left in the namespace.
- ``rlimits`` (the fallback): the same process, limits, environment and audit hook without
  namespaces. As root it also runs as a uid of its own, so DAC keeps it out of root's files
  and processes, and every process of that uid is killed afterwards; world-writable
  directories stay writable and the network is guarded only by the audit hook.

In both, a CPython audit hook refuses sockets, new processes, signals, ctypes and writes
outside the working directory; it is defence in depth, not a boundary (see the README).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import secrets as tokens
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from pipeline.config import SandboxConfig
from pipeline.errors import DatagenError
from pipeline.records import Isolation, Verdict
from pipeline.redaction import redact

CHILD = Path(__file__).with_name("sandbox_child.py")
# root runs each sandbox as UID_BASE + the launching thread's id: thread ids are unique among
# live threads machine-wide and below 2**22 (PID_MAX_LIMIT), so concurrent sandboxes never share
# a uid, and the range stays below 2**31 and above the ranges distributions allocate
UID_BASE = 2_000_000_000
SETUP_FAILED = 125
# the probe: a stdlib import the child has not loaded, run under the real limits
_PROBE = ("import fractions\n", "assert fractions.Fraction(1, 2) * 2 == 1\n")


class SandboxResult(BaseModel):
    status: Verdict
    runtime_s: float  # wall clock of the sandbox process, interpreter start-up included
    error: str = ""  # traceback or limit hit, redacted, its tail kept
    isolation: Isolation


class Sandbox:
    """Runs programs (a solution and its tests) one per sandbox process, ``workers`` at once.

    ``audit_hook=False`` and ``userns=True`` (a user namespace even as root) exist so the tests
    can show what the kernel mechanisms contain on their own."""

    def __init__(
        self, cfg: SandboxConfig, *, audit_hook: bool = True, userns: bool | None = None
    ) -> None:
        self.cfg = cfg
        self.audit_hook = audit_hook
        self.root = host_root()
        self.userns = (not self.root) if userns is None else userns
        self.note = ""  # why the fallback is in use
        self._isolation: Isolation | None = None
        exe = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
        self.python = exe
        self.python_dirs = _outermost(
            {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
            | {os.path.dirname(exe)}
        )

    @property
    def isolation(self) -> Isolation:
        """The mode in use, probed once: a refused namespace setup falls back to rlimits under
        ``auto`` and is an error under ``namespaces``."""
        if self._isolation is None:
            self._isolation = self._choose()
        return self._isolation

    def _choose(self) -> Isolation:
        want = self.cfg.isolation
        why: dict[str, str] = {}
        for mode in ("namespaces", "rlimits"):
            if want not in ("auto", mode):
                continue
            r = self._spawn(mode, *_PROBE)
            if r.status == "passed":
                if why:
                    self.note = f"namespaces unavailable ({why['namespaces']}): rlimits only"
                return mode  # type: ignore[return-value]
            why[mode] = r.error.strip().splitlines()[-1] if r.error.strip() else r.status
        detail = "; ".join(f"{m}: {w}" for m, w in why.items())
        raise DatagenError(f"sandbox.isolation={want}: cannot run code safely here ({detail})")

    def run(self, solution: str, tests: str) -> SandboxResult:
        return self._spawn(self.isolation, solution, tests)

    def run_many(
        self,
        programs: Sequence[tuple[str, str]],
        progress: Callable[[SandboxResult], None] | None = None,
    ) -> list[SandboxResult]:
        """(solution, tests) pairs, results in the same order. Each sandbox is its own process;
        a thread per sandbox in flight only waits for it."""
        mode = self.isolation
        workers = self.cfg.workers or os.cpu_count() or 1

        def one(p: tuple[str, str]) -> SandboxResult:
            r = self._spawn(mode, *p)
            if progress is not None:
                progress(r)
            return r

        if workers == 1 or len(programs) <= 1:
            return [one(p) for p in programs]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(one, programs))

    # ------------------------------------------------------------------ one run
    def _spawn(self, mode: Isolation, solution: str, tests: str) -> SandboxResult:
        cfg = self.cfg
        host = Path(tempfile.mkdtemp(prefix="datagen-sandbox-"))
        userns = mode == "namespaces" and self.userns
        uid = UID_BASE + threading.get_native_id() if self.root and not userns else None
        nonce = tokens.token_hex(16)
        (host / "root").mkdir()
        work = host / "work"
        work.mkdir(mode=0o700)
        if uid is not None and mode == "rlimits":
            os.chown(work, uid, uid)
        spec = {
            "mode": mode,
            "userns": userns,
            "uid": uid,
            "nonce": nonce,
            "parent_pid": os.getpid(),
            "audit": self.audit_hook,
            "root_dir": str(host / "root"),
            "python_dirs": self.python_dirs,
            "limits": cfg.model_dump(
                include={
                    "cpu_s",
                    "memory_mb",
                    "file_size_mb",
                    "workdir_mb",
                    "max_processes",
                    "max_open_files",
                }
            ),
            "program": {"solution": solution, "tests": tests},
        }
        (host / "spec").write_bytes(marshal.dumps(spec))
        try:
            out, status, runtime, timed_out = self._execute(
                host, work if mode == "rlimits" else host
            )
            if uid is not None and mode == "rlimits":
                _kill_uid(uid)
            return self._result(mode, host, nonce, status, runtime, timed_out, out)
        finally:
            shutil.rmtree(host, ignore_errors=True)

    def _execute(self, host: Path, cwd: Path) -> tuple[dict[str, str], int, float, bool]:
        """Start the child, wait up to the wall limit, kill its process group (always: nothing
        it started outlives it), reap. Returns (outputs and CPU seconds, wait status, wall
        seconds, timed out)."""
        names = ("stdout", "stderr", "verdict")
        fds = {n: os.open(host / n, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for n in names}
        spec_path = host / "spec"
        args = [self.python, "-I", "-S", "-B", str(CHILD), str(spec_path), str(fds["verdict"])]
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(
                args,
                env={},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=fds["stdout"],
                stderr=fds["stderr"],
                pass_fds=(fds["verdict"],),
                start_new_session=True,
            )
        finally:
            for fd in fds.values():
                os.close(fd)
        pidfd = os.pidfd_open(proc.pid)
        try:
            poll = select.poll()
            poll.register(pidfd, select.POLLIN)
            timed_out = not poll.poll(self.cfg.timeout_s * 1000)
            runtime = time.perf_counter() - started
            # the child is alive or a zombie, so its pid still names only its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            os.close(pidfd)
        out = {n: _read_tail(host / n, 64_000) for n in names}
        out["cpu_s"] = str(usage.ru_utime + usage.ru_stime)  # the child and what it reaped
        return out, status, runtime, timed_out

    def _result(
        self,
        mode: Isolation,
        host: Path,
        nonce: str,
        status: int,
        runtime: float,
        timed_out: bool,
        out: dict[str, str],
    ) -> SandboxResult:
        cfg = self.cfg
        setup, verdict, ended = _parse_verdicts(out["verdict"], nonce)
        if ended is None:  # rlimits: the launcher was the runner
            ended = {
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "cpu_s": float(out["cpu_s"]),
            }
        sig = None if ended["signal"] is None else int(ended["signal"])
        state: Verdict
        if timed_out:
            state, text = "timeout", f"wall-clock limit of {cfg.timeout_s:g} s exceeded"
        elif setup is not None:
            state, text = "error", f"sandbox setup failed: {setup}"
        elif verdict is not None:
            state, text = verdict["status"], str(verdict.get("error", ""))
        elif sig == signal.SIGXCPU or (
            sig == signal.SIGKILL and (ended["cpu_s"] or 0) >= cfg.cpu_s
        ):
            state, text = "timeout", f"CPU-time limit of {cfg.cpu_s} s exceeded"
        elif sig is not None:
            state, text = "error", f"killed by signal {_signal_name(sig)}"
        else:
            code = None if ended["exit"] is None else int(ended["exit"])
            state, text = "error", f"exited with code {code} before the tests finished"
        if state != "passed" and verdict is None:
            for name in ("stderr", "stdout"):
                if out[name].strip():
                    text += f"\n--- {name} ---\n{out[name]}"
        return SandboxResult(
            status=state,
            runtime_s=round(runtime, 4),
            error=_tail(redact(text), cfg.error_chars),
            isolation=mode,
        )


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return str(n)


def _parse_verdicts(
    text: str, nonce: str
) -> tuple[str | None, dict[str, str] | None, dict[str, float | None] | None]:
    """(setup error, harness verdict, how the runner ended) from the child's fd-3 lines
    (see pipeline/sandbox_child.py); lines that do not parse are ignored."""
    setup = verdict = ended = None

    def unhex(h: str) -> str:
        return "" if h == "-" else bytes.fromhex(h).decode("utf-8", errors="replace")

    def num(x: str) -> float | None:
        return None if x == "-" else float(x)

    for line in text.splitlines():
        f = line.split(" ")
        try:
            if f[0] == "setup_error" and len(f) == 2 and setup is None:
                setup = unhex(f[1])
            elif f[0] == "verdict" and len(f) == 5 and f[1] == nonce and verdict is None:
                if f[2] in ("passed", "failed", "error"):
                    verdict = {"status": f[2], "error": unhex(f[4])}
            elif f[0] == "runner" and len(f) == 4:
                ended = {"exit": num(f[1]), "signal": num(f[2]), "cpu_s": num(f[3])}
        except ValueError:
            continue
    return setup, verdict, ended


def host_root() -> bool:
    """Root of the machine (uid 0 in the initial user namespace). uid 0 of a container's user
    namespace cannot become other uids (only its own is mapped): it takes the non-root path."""
    if os.geteuid() != 0:
        return False
    try:
        fields = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return True
    return fields[:3] == ["0", "0", "4294967295"]


def _outermost(paths: set[str]) -> list[str]:
    """The paths not inside another one of them, sorted."""
    keep = sorted(paths)
    return [p for p in keep if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in keep)]


def _read_tail(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - limit))
        return f.read().decode("utf-8", errors="replace")


def _tail(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else "[...] " + text[-limit:]


def _kill_uid(uid: int) -> None:
    """Kill every process of ``uid`` (``rlimits`` as root): kill(-1) from a process of that
    uid reaches exactly its processes, whatever their session or process group."""
    subprocess.run(
        ["/bin/sh", "-c", "kill -9 -1"],
        user=uid,
        group=uid,
        extra_groups=[],
        env={},
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
