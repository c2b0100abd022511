"""Executors: run a stage's shard jobs on local processes or on a Ray cluster.

A stage describes its work as shard jobs (:class:`ShardJob`: a shard number and whatever the
job needs, all picklable) and a top-level function ``fn(job) -> Stats``; nothing else about
distribution is hand-made:

- ``executor.kind=local``: ``executor.workers`` processes (0 = one per core) from a
  ``concurrent.futures.ProcessPoolExecutor`` (forked from a forkserver that imported the
  stage once); ``workers=1`` runs in this process. A worker
  that dies (kill -9, out of memory) costs only the shards it was running: the pool is
  rebuilt and those shards run again (``executor.max_attempts`` times at most).
- ``executor.kind=ray``: one Ray task per shard (``ray.remote(max_retries=...)``: Ray
  schedules, moves the job to a node and retries it when its worker dies), on the cluster at
  ``executor.address`` (``auto``, ``ray://host:port``) or, when empty, on a local Ray instance
  started for this stage on 127.0.0.1 and stopped after it. Every node must see the run
  directory at the same path (a shared filesystem).

An executor maps a top-level function over jobs and yields each job's result (anything
picklable) as it finishes; :func:`map_jobs` does so under a progress bar, for work that is
redone each time (the review's pass over a stage's output).

Completion markers (datatrove's ``completions/``) are :func:`run_shards`' addition, for the
stages: when a shard job returns, its stats are written to ``<stage>/completions/<shard>.json``
(atomically, after the job renamed its outputs into place). A rerun of a killed or failed stage
skips the shards that have a marker and redoes only the others, so the result equals an
uninterrupted run. Per-shard stats merged in shard order give the same manifest whichever
executor ran the shards and in what order.

Setup once per worker: :func:`worker_cached` builds an object (a list of steps with fastText
models loaded) once per worker process and key; later shards on the same worker reuse it.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pipeline.config import ExecutorConfig
from pipeline.errors import DatagenError
from pipeline.runs import atomic_write_json, read_json
from pipeline.steps import Stats

COMPLETIONS = "completions"


class ShardJob(BaseModel):
    """One unit of work: shard ``index`` of a stage whose outputs (and, under ``run_shards``,
    completion markers) go under ``stage_dir``. ``payload`` is whatever the job function needs
    (slices to read, paths, config)."""

    index: int
    stage_dir: str
    payload: dict[str, Any] = {}
    # the driver's working directory: relative paths in the config (run.root, data files)
    # mean the same on a Ray node as on the driver (the cluster shares one filesystem)
    cwd: str = Field(default_factory=os.getcwd)

    @property
    def name(self) -> str:
        return f"{self.index:05d}"

    @property
    def marker(self) -> Path:
        return Path(self.stage_dir) / COMPLETIONS / f"{self.name}.json"


T = TypeVar("T")
JobFn = Callable[[ShardJob], Stats]  # a stage's shard job (run by run_shards)


def _run_job(fn: Callable[[ShardJob], T], job: ShardJob) -> tuple[int, T]:
    """Run one job on a worker, in the driver's working directory: (job index, result)."""
    if os.getcwd() != job.cwd and os.path.isdir(job.cwd):
        os.chdir(job.cwd)
    return job.index, fn(job)


def _marked(fn: JobFn, job: ShardJob) -> dict[str, Any]:
    """Run one shard job and write its completion marker. Idempotent: a job whose marker
    exists (a retried Ray task whose first attempt finished) returns the stored stats."""
    if job.marker.exists():
        return read_json(job.marker)
    t0 = time.perf_counter()
    stats = fn(job)
    record = {
        "shard": job.index,
        "pid": os.getpid(),
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "stats": stats.model_dump(),
    }
    atomic_write_json(job.marker, record)
    return record


# --------------------------------------------------------------------------- per worker
_WORKER_OBJECTS: dict[str, Any] = {}


def worker_cached(key: str, build: Callable[[], Any]) -> Any:
    """``build()`` once per worker process and ``key`` (e.g. a stage's steps with their models
    loaded, keyed by the stage's config hash); the objects live as long as the process."""
    if key not in _WORKER_OBJECTS:
        _WORKER_OBJECTS[key] = build()
    return _WORKER_OBJECTS[key]


# --------------------------------------------------------------------------- executors
class Executor(Protocol):
    kind: str
    workers: int

    def map(self, fn: Callable[[ShardJob], T], jobs: Sequence[ShardJob]) -> Iterator[tuple[int, T]]:
        """Run every job; yield (job index, ``fn(job)``) as each finishes, in any order."""
        ...

    def close(self) -> None: ...


class LocalExecutor:
    kind = "local"

    def __init__(
        self, workers: int, max_attempts: int = 3, job: Callable[..., Any] | None = None
    ) -> None:
        self.workers = workers
        self.max_attempts = max_attempts
        if job is not None and workers > 1:  # the server imports while the driver plans
            _worker_context(job)
            forkserver.ensure_running()

    def map(self, fn: Callable[[ShardJob], T], jobs: Sequence[ShardJob]) -> Iterator[tuple[int, T]]:
        if self.workers <= 1:
            for job in jobs:
                yield _run_job(fn, job)
            return
        todo = {j.index: j for j in jobs}
        attempts = dict.fromkeys(todo, 0)
        ctx = _worker_context(fn)
        while todo:
            pool = cf.ProcessPoolExecutor(max_workers=min(self.workers, len(todo)), mp_context=ctx)
            try:
                futures = {}
                for idx, job in todo.items():
                    attempts[idx] += 1
                    futures[pool.submit(_run_job, fn, job)] = idx
                for fut in cf.as_completed(futures):
                    idx = futures[fut]
                    try:
                        result = fut.result()
                    except cf.process.BrokenProcessPool:
                        continue  # a worker died: its shards (and the queued ones) run again
                    del todo[idx]
                    yield result
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            dead = [i for i in todo if attempts[i] >= self.max_attempts]
            if dead:
                raise DatagenError(
                    f"shard {dead[0]:05d}: its worker process died {attempts[dead[0]]} times "
                    f"(out of memory? see executor.max_attempts)"
                )

    def close(self) -> None:
        pass


def _worker_context(fn: Callable[..., Any]) -> Any:
    """Workers forked from a forkserver: a clean single-threaded interpreter (no inherited
    threads, locks or open models, as with spawn) that has imported the job's module once,
    so a worker starts in milliseconds instead of re-importing the stage (~0.5 s each, on
    the wall of every stage). The server lives as long as the driver and serves every stage
    it runs; modules are preloaded only when the server starts (the first pool, or
    ``make_executor(..., job=fn)``, which starts it at once)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", *_modules(fn)])
    return ctx


def _modules(fn: Any) -> list[str]:
    """The modules of ``fn`` and, for a ``functools.partial``, of the functions it binds."""
    if isinstance(fn, partial):
        return [m for f in (fn.func, *fn.args) if callable(f) for m in _modules(f)]
    return [fn.__module__]


class RayExecutor:
    kind = "ray"

    def __init__(self, address: str, workers: int, max_attempts: int = 3) -> None:
        try:
            import ray
        except ImportError:
            raise DatagenError(
                "executor.kind=ray: Ray is not installed; pip install 'datagen[ray]'"
            ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                # a local instance on loopback only, stopped in close()
                ray.init(
                    num_cpus=workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    _node_ip_address="127.0.0.1",
                )
                self._started = True
        self.workers = int(ray.cluster_resources().get("CPU", workers))
        self.max_attempts = max_attempts

    def map(self, fn: Callable[[ShardJob], T], jobs: Sequence[ShardJob]) -> Iterator[tuple[int, T]]:
        ray = self._ray
        # system failures (a dead worker or node) are retried by Ray; an exception raised by
        # the job itself is not (it would fail the same way again) and reaches the driver
        remote = ray.remote(num_cpus=1, max_retries=self.max_attempts - 1)(_run_job)
        pending = list(jobs)
        in_flight: list[Any] = []
        window = 2 * max(1, self.workers)
        fn_ref = ray.put(fn)
        while pending or in_flight:
            while pending and len(in_flight) < window:
                in_flight.append(remote.remote(fn_ref, pending.pop(0)))
            done, in_flight = ray.wait(in_flight, num_returns=1)
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                cause = e.as_instanceof_cause()
                if isinstance(cause, DatagenError):
                    raise DatagenError(str(cause)) from None
                raise
            except ray.exceptions.WorkerCrashedError:
                raise DatagenError(
                    f"a Ray worker died {self.max_attempts} times on one shard "
                    "(out of memory? see executor.max_attempts)"
                ) from None

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_executor(cfg: ExecutorConfig, job: Callable[..., Any] | None = None) -> Executor:
    """The configured executor. ``job``: the shard function it will run, when known now; the
    local executor then starts its worker server at once (it imports the job's module while
    the driver plans the shards)."""
    workers = cfg.workers or os.cpu_count() or 1
    if cfg.kind == "ray":
        return RayExecutor(cfg.address, workers, cfg.max_attempts)
    return LocalExecutor(workers, cfg.max_attempts, job)


# --------------------------------------------------------------------------- driver side
class ShardRun(BaseModel):
    """What ``run_shards`` reports: merged stats (shard order) and which shards ran now."""

    stats: Stats
    shards: int
    ran: list[int]  # shard indices run in this attempt (the others had completion markers)
    per_shard: list[dict[str, Any]]  # marker records, in shard order


def completed(stage_dir: Path) -> dict[int, dict[str, Any]]:
    """Marker records of the shards of ``stage_dir`` that finished earlier."""
    out = {}
    for p in sorted((stage_dir / COMPLETIONS).glob("*.json")):
        rec = read_json(p)
        out[int(rec["shard"])] = rec
    return out


def map_jobs(
    executor: Executor,
    fn: Callable[[ShardJob], T],
    jobs: Sequence[ShardJob],
    console: Console,
    label: str,
    unit: str = "docs",
    count: Callable[[T], int] | None = None,
    total: int | None = None,
) -> Iterator[tuple[int, T]]:
    """``executor.map`` under a progress bar: yield (job index, result) as each job finishes.
    The bar counts jobs of ``total`` (default: these jobs; more when some finished earlier)
    and shows the sum of ``count(result)`` with its rate."""
    total = len(jobs) if total is None else total
    progress = Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards"),
        TextColumn("{task.fields[n]:,} " + unit + " {task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )
    t0 = time.perf_counter()
    n = 0
    with progress:
        task = progress.add_task(label, total=total, completed=total - len(jobs), n=0, rate="")
        for idx, result in executor.map(fn, jobs):
            if count is not None:
                n += count(result)
            el = time.perf_counter() - t0
            progress.update(task, advance=1, n=n, rate=f"({n / el:,.0f}/s)" if el > 0 else "")
            yield idx, result


def run_shards(
    executor: Executor,
    fn: JobFn,
    jobs: Sequence[ShardJob],
    console: Console,
    label: str,
    unit: str = "docs",
    count_key: str = "",
) -> ShardRun:
    """Run the jobs that have no completion marker; return every shard's stats merged in
    shard order. ``count_key`` names a counter shown as a rate in the progress bar."""
    stage_dir = Path(jobs[0].stage_dir) if jobs else None
    done = completed(stage_dir) if stage_dir else {}
    done = {i: r for i, r in done.items() if i < len(jobs)}
    todo = [j for j in jobs if j.index not in done]
    if done and todo:
        console.print(
            f"{label}: {len(done)} of {len(jobs)} shards finished earlier; running {len(todo)}"
        )

    def count(rec: dict[str, Any]) -> int:
        return int(rec["stats"]["counts"].get(count_key, 0)) if count_key else 0

    records = dict(done)
    marked = partial(_marked, fn)
    for idx, rec in map_jobs(executor, marked, todo, console, label, unit, count, len(jobs)):
        records[idx] = rec
    per_shard = [records[j.index] for j in jobs]
    stats = Stats.merged(Stats.model_validate(r["stats"]) for r in per_shard)
    return ShardRun(
        stats=stats, shards=len(jobs), ran=sorted(j.index for j in todo), per_shard=per_shard
    )
