"""The sandbox: hostile solutions are contained and reported, a batch goes on past them, real
exercises (HumanEval, MBPP) pass, and mutants of them fail with their assert.

Each hostile program is checked from outside the sandbox (a listening socket got nothing, a
host file was not written, no process of the sandbox's uid is left, the key never shows) under
every isolation the machine offers: namespaces with the audit hook (the default), namespaces
alone (the kernel's part), a user namespace (the path of a non-root user), and rlimits (the
fallback)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from code_testdata import RealExercise, humaneval, mbpp, mutate

from pipeline.config import SandboxConfig
from pipeline.sandbox import UID_BASE, Sandbox, SandboxResult

ROOT_USER = os.geteuid() == 0
LIMITS = {"timeout_s": 4.0, "cpu_s": 1, "memory_mb": 512}
MODES = {
    "namespaces": ({"isolation": "namespaces"}, {}),
    "kernel_only": ({"isolation": "namespaces"}, {"audit_hook": False}),
    "userns": ({"isolation": "namespaces"}, {"audit_hook": False, "userns": True}),
    "rlimits": ({"isolation": "rlimits"}, {}),
    "rlimits_kernel_only": ({"isolation": "rlimits"}, {"audit_hook": False}),
}


def sandbox(mode: str, **limits: float) -> Sandbox:
    cfg, kw = MODES[mode]
    return Sandbox(SandboxConfig(**{**LIMITS, **cfg, **limits}), **kw)


def live_processes(uid: int) -> list[int]:
    """Host pids of ``uid`` that are not dead: SIGKILL takes effect when the target next runs,
    so this waits (up to 10 s) for the ones already killed to finish dying."""
    deadline = time.monotonic() + 10
    while True:
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                status = dict(
                    ln.split(":", 1) for ln in (d / "status").read_text().splitlines() if ":" in ln
                )
            except OSError:
                continue
            if int(status["Uid"].split()[0]) == uid and status["State"].split()[0] not in "ZX":
                pids.append(int(d.name))
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


# ------------------------------------------------------------------ hostile solutions
@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", s.getsockname()[1]))
    yield s, u
    s.close()
    u.close()


def assert_nothing_arrived(tcp: socket.socket, udp: socket.socket) -> None:
    tcp.setblocking(False)
    udp.setblocking(False)
    with pytest.raises(BlockingIOError):  # a connection would be in the accept queue
        tcp.accept()
    with pytest.raises(BlockingIOError):
        udp.recvfrom(100)


@pytest.mark.parametrize("mode", ["namespaces", "kernel_only", "userns", "rlimits"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_socket_to_localhost_reaches_nothing(mode, proto, listener):
    tcp, udp = listener
    port = tcp.getsockname()[1]
    if proto == "tcp":
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 2).send(b'x')\n"
    else:
        code = (
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'x', ('127.0.0.1', {port}))\n"
        )
    r = sandbox(mode).run(code, "assert True\n")
    assert r.status == "error", r
    expect = {"namespaces": "is not allowed", "rlimits": "is not allowed"}
    assert expect.get(mode, "Network is unreachable") in r.error
    assert_nothing_arrived(tcp, udp)


@pytest.mark.parametrize("mode", ["namespaces", "kernel_only", "userns", "rlimits"])
@pytest.mark.parametrize("where", ["host_dir", "host_tmp", "parent", "etc"])
def test_a_write_outside_the_working_directory_is_blocked(mode, where, tmp_path):
    name = f"escaped-{uuid.uuid4().hex}"
    target = {
        "host_dir": str(tmp_path / name),  # a directory the test process can write
        "host_tmp": f"/tmp/{name}",
        "parent": f"../{name}",
        "etc": f"/etc/{name}",
    }[where]
    if where == "host_tmp" and mode in ("kernel_only", "userns"):
        # namespaces: /tmp is the sandbox's own /work (its writes stay there), not the host's
        r = sandbox(mode).run(f"open({target!r}, 'w').write('x')\n", "assert True\n")
        assert r.status == "passed"
        assert not Path(target).exists()
        return
    r = sandbox(mode).run(f"open({target!r}, 'w').write('x')\n", "assert True\n")
    assert r.status == "error", r
    assert any(
        s in r.error for s in ("outside", "Read-only file system", "Permission denied", "No such")
    ), r.error
    assert not Path(target).exists()
    assert not (Path("/etc") / name).exists()


@pytest.mark.skipif(not ROOT_USER, reason="the fallback's file guard needs root (a uid of its own)")
def test_rlimits_without_the_audit_hook_still_keeps_root_files_and_dirs_closed(tmp_path):
    """The fallback's kernel part alone: DAC as an unprivileged uid (root's 0700 temp dirs,
    /etc) holds; world-writable /tmp is the documented hole."""
    name = f"escaped-{uuid.uuid4().hex}"
    for target in (str(tmp_path / name), f"/etc/{name}", f"../{name}"):
        r = sandbox("rlimits_kernel_only").run(f"open({target!r}, 'w')\n", "assert True\n")
        assert r.status == "error" and "Permission denied" in r.error, (target, r)
    assert not (tmp_path / name).exists() and not Path(f"/etc/{name}").exists()


def test_the_read_only_mounts_cannot_be_made_writable_from_a_user_namespace():
    """uid 0 of the sandbox's user namespace owns its mount namespace, but with every
    capability dropped it can neither remount /usr read-write nor unmount the binds."""
    name = f"datagen-escape-{uuid.uuid4().hex}"
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "errs = []\n"
        "for target in (b'/usr', b'/'):\n"
        "    r = libc.mount(None, target, None, 32 | 4096, None)\n"  # MS_REMOUNT|MS_BIND: rw
        "    errs.append((r, ctypes.get_errno()))\n"
        "    r = libc.umount2(target, 2)\n"
        "    errs.append((r, ctypes.get_errno()))\n"
        f"open('/usr/{name}', 'w')\n"
    )
    try:
        r = sandbox("userns").run(code, "assert True\n")
        assert r.status == "error" and "Read-only file system" in r.error, r
        assert not Path(f"/usr/{name}").exists()
    finally:
        Path(f"/usr/{name}").unlink(missing_ok=True)


FORK_LOOP = """
import os, time
while True:
    try:
        pid = os.fork()
    except OSError:
        continue  # at the process limit: keep trying
    if pid == 0:
        os.setsid()  # leave the process group the parent kills
        while True:
            time.sleep(1)
"""


@pytest.mark.skipif(not ROOT_USER, reason="the per-run uid that names the processes needs root")
@pytest.mark.parametrize("mode", ["namespaces", "kernel_only", "rlimits", "rlimits_kernel_only"])
def test_a_fork_loop_is_capped_and_leaves_no_process(mode):
    uid = UID_BASE + threading.get_native_id()  # run() launches from this thread
    r = sandbox(mode).run(FORK_LOOP, "assert True\n")
    # forks until RLIMIT_NPROC (or the audit hook) refuses, then retries until the CPU limit
    assert r.status == "timeout" and "CPU-time limit" in r.error, r
    assert live_processes(uid) == []


@pytest.mark.parametrize("mode", ["namespaces", "kernel_only", "userns", "rlimits"])
@pytest.mark.parametrize(
    "code",
    ["x = b'x' * (10 * 1024**3)\n", "chunks = []\nwhile True:\n    chunks.append(b'x' * 2**26)\n"],
    ids=["10GB_at_once", "64MB_chunks"],
)
def test_allocating_10_gb_hits_the_memory_limit(mode, code):
    # generous time limits: on a loaded machine filling 512 MB must not hit them first
    r = sandbox(mode, timeout_s=60, cpu_s=20).run(code, "assert True\n")
    assert r.status == "error" and "MemoryError" in r.error, r
    assert "address-space limit is 512 MB" in r.error


@pytest.mark.parametrize("mode", ["namespaces", "kernel_only", "userns", "rlimits"])
def test_sleeping_forever_times_out_on_the_wall_clock(mode):
    r = sandbox(mode, timeout_s=1.5).run("import time\ntime.sleep(10**9)\n", "assert True\n")
    assert r.status == "timeout" and "wall-clock limit of 1.5 s" in r.error, r


@pytest.mark.parametrize("mode", ["namespaces", "rlimits"])
def test_spinning_forever_hits_the_cpu_limit(mode):
    r = sandbox(mode, timeout_s=30).run("while True:\n    pass\n", "assert True\n")
    assert r.status == "timeout" and "CPU-time limit of 1 s" in r.error, r


KEY_HUNT = """
import os
seen = [k for k in os.environ if 'KEY' in k or 'OPENAI' in k]
leaks = []
if os.path.isdir('/proc'):
    for pid in os.listdir('/proc'):
        try:
            with open(f'/proc/{pid}/environ', 'rb') as f:
                if b'OPENAI_API_KEY' in f.read():
                    leaks.append(pid)
        except OSError:
            pass
"""


@pytest.mark.parametrize(
    "mode", ["namespaces", "kernel_only", "userns", "rlimits", "rlimits_kernel_only"]
)
def test_the_api_key_is_not_visible(mode, monkeypatch):
    if mode == "rlimits_kernel_only" and not ROOT_USER:
        pytest.skip("without the hook only a uid of its own keeps other processes' environ")
    key = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    r = sandbox(mode).run(KEY_HUNT, "assert seen == [] and leaks == [], (seen, leaks)\n")
    assert r.status == "passed", r
    # our own environment (which the pool's threads share) does hold it
    assert os.environ["OPENAI_API_KEY"] == key


def test_a_key_in_the_error_text_is_redacted(monkeypatch):
    key = f"sk-test-{uuid.uuid4().hex}"
    r = sandbox("namespaces").run(f"k = {key!r}\n", "assert k == '', k\n")
    assert r.status == "failed" and key not in r.error and "[REDACTED]" in r.error


# ------------------------------------------------------------------ verdicts and batches
def test_a_batch_of_hostile_correct_and_wrong_solutions_goes_on(listener, tmp_path):
    tcp, udp = listener
    port = tcp.getsockname()[1]
    he = {e.task_id: e for e in humaneval()}["HumanEval/0"]
    wrong = mutate(he)
    assert wrong is not None
    programs = [
        (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 2)\n", "assert 1\n"),
        (he.solution, he.tests),
        (FORK_LOOP, "assert True\n"),
        ("import time\ntime.sleep(10**9)\n", "assert True\n"),
        (wrong, he.tests),
        ("x = b'x' * (10 * 1024**3)\n", "assert True\n"),
        (f"open({str(tmp_path / 'x')!r}, 'w')\n", "assert True\n"),
        (he.solution, he.tests),
    ]
    for mode in ("namespaces", "kernel_only"):
        sb = sandbox(mode, timeout_s=2, workers=3)
        results = sb.run_many(programs)
        statuses = [r.status for r in results]
        assert statuses[1] == statuses[7] == "passed", (mode, results)
        assert statuses[4] == "failed" and "AssertionError" in results[4].error
        assert statuses[2] == statuses[3] == "timeout"
        assert statuses[0] == statuses[5] == statuses[6] == "error"
        assert all(r.isolation == "namespaces" for r in results)
    assert_nothing_arrived(tcp, udp)
    assert not (tmp_path / "x").exists()


def test_exiting_early_is_not_a_pass():
    """os._exit(0) before the tests ran: no verdict from the harness, so an error."""
    r = sandbox("namespaces").run("import os\nos._exit(0)\n", "assert False\n")
    assert r.status == "error" and "before the tests finished" in r.error
    r = sandbox("namespaces").run("import sys\nsys.exit(0)\n", "assert False\n")
    assert r.status == "error" and "SystemExit" in r.error


def test_output_is_capped_by_the_file_size_limit():
    r = sandbox("namespaces", file_size_mb=1).run(
        "while True:\n    print('x' * 10000)\n", "assert True\n"
    )
    assert r.status == "error" and "File too large" in r.error, r


REFUSED = """
import json
from pathlib import Path
# this user namespace's own limit (a sysctl per user namespace): no nested one may be created
Path("/proc/sys/user/max_user_namespaces").write_text("0\\n")
from pipeline.config import SandboxConfig
from pipeline.errors import DatagenError
from pipeline.sandbox import Sandbox
out = {}
try:
    Sandbox(SandboxConfig(isolation="namespaces")).isolation
except DatagenError as e:
    out["namespaces"] = str(e)
sb = Sandbox(SandboxConfig(isolation="auto"))
out["auto"], out["note"] = sb.isolation, sb.note
out["run"] = sb.run("def f():\\n    return 1\\n", "assert f() == 1\\n").model_dump()
print(json.dumps(out))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_where_the_kernel_refuses_namespaces_auto_falls_back_and_namespaces_is_an_error():
    """Run as uid 0 of a user namespace whose nesting limit is 0 (as a container or a
    distribution that disables user namespaces would): the sandbox cannot create its own."""
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", REFUSED],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["namespaces"].startswith("sandbox.isolation=namespaces: cannot run code safely")
    assert "No space left on device" in out["namespaces"]  # ENOSPC: the namespace limit
    assert out["auto"] == "rlimits" and out["note"].startswith("namespaces unavailable")
    assert out["run"]["status"] == "passed" and out["run"]["isolation"] == "rlimits"


# ------------------------------------------------------------------ real exercises
def _sample() -> list[RealExercise]:
    return humaneval()[::6] + mbpp()[::40]


def _reference(solution: str, tests: str) -> str:
    """The verdict of plain exec in a bare subprocess (no sandbox): the oracle the sandbox
    must agree with on benign code."""
    prog = (
        "import sys\nns = {'__name__': '__main__'}\n"
        "try:\n"
        "    exec(compile(sys.argv[1], '<solution>', 'exec'), ns)\n"
        "    exec(compile(sys.argv[2], '<tests>', 'exec'), ns)\n"
        "except AssertionError:\n    sys.exit(3)\n"
        "except BaseException:\n    sys.exit(4)\n"
    )
    try:
        rc = subprocess.run(
            [sys.executable, "-c", prog, solution, tests], capture_output=True, timeout=20
        ).returncode
    except subprocess.TimeoutExpired:
        return "timeout"
    return {0: "passed", 3: "failed"}.get(rc, "error")


@pytest.mark.parametrize("mode", ["namespaces", "rlimits"])
def test_real_exercises_pass_and_their_mutants_fail_with_the_assert(mode):
    sample = _sample()
    mutants = [(e, m) for e in sample if (m := mutate(e)) is not None]
    sb = sandbox(mode, timeout_s=10, cpu_s=5, memory_mb=1024)
    correct = sb.run_many([(e.solution, e.tests) for e in sample])
    bad = sb.run_many([(m, e.tests) for e, m in mutants])
    assert [r.status for r in correct] == ["passed"] * len(sample), [
        (e.task_id, r.error) for e, r in zip(sample, correct, strict=True) if r.status != "passed"
    ]
    expected = [_reference(m, e.tests) for e, m in mutants]
    assert [r.status for r in bad] == expected
    failed = [(e, r) for (e, _), r in zip(mutants, bad, strict=True) if r.status == "failed"]
    assert len(failed) >= len(mutants) // 2
    for e, r in failed:
        _assert_names_the_failing_assert(e, r)


def _assert_names_the_failing_assert(e: RealExercise, r: SandboxResult) -> None:
    """The error text is the traceback into the tests: the line of the failing assert."""
    assert "AssertionError" in r.error
    lines = [ln for ln in r.error.splitlines() if ln.strip().startswith('File "<tests>"')]
    assert lines, r.error
    n = int(lines[-1].split("line ")[1].split(",")[0])
    assert e.tests.splitlines()[n - 1].strip() in r.error
