"""``teacher.mode=batch``: the same requests through the OpenAI Batch API, or offline through
``vllm run-batch``, into the same outputs, failures, response cache and spend ledger.

Under ``<run>/<stage>/batch/``:

    journal.jsonl              every step, fsynced before the next one starts
    requests-00000.jsonl       Batch API input lines (custom_id = the item id): what the Batch
                               API and ``vllm run-batch`` read; at most max_requests_per_file
                               lines and max_bytes_per_file bytes
    requests-00000.meta.jsonl  line by line, the item's template and metadata (for its record)
    output-<batch>.jsonl, errors-<batch>.jsonl   the downloaded results

Steps per request file, each recorded before the next: written -> uploaded (files API,
``purpose=batch``) -> submitting (its worst case admitted to the spend ledger) -> submitted
(the batch id) -> processed. A killed datagen resumes where the journal says: it polls the
batches it submitted, and a batch whose creation was cut off (submitting without an id) is
looked up by its input file before anything is created, so no item is ever submitted twice.
A request file the journal does not name (a kill before its record) is deleted; its items are
still pending and go into a new file.

Results: an answer (status 200) is cached under the same key as an online request and becomes
the same record; an error the online client would not retry (400, 401, ...) is a failure with
its reason; requests a batch did not finish (expired, cancelled, failed, or an error the
online client would retry) are resubmitted in a new file, up to ``teacher.max_retries``
times. Each batch's cost goes through the spend ledger at the batch price: admitted at its
worst case before it is created (a batch whose worst case does not fit the budget is not
submitted: files are cut to what fits), paid at its usage when its results are processed.

Offline (``teacher.batch.local_dir``): request files are written to ``<local_dir>/<run.name>/``
and nothing is uploaded; run ``vllm run-batch -i requests-NNNNN.jsonl -o results-NNNNN.jsonl
--model M`` there (on a GPU box), put the results beside them, and run datagen again to import
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.progress import Progress, TaskID

from pipeline.config import PipelineConfig
from pipeline.errors import DatagenError
from pipeline.records import utc_now
from pipeline.redaction import redact
from pipeline.runs import JsonlAppender, Run, file_mode, read_jsonl, repair_jsonl_tail
from pipeline.teacher import NO_KEY, _api_key, cache_dir, check_teacher_config
from pipeline.teacher.batch import BatchStats, Job, make_progress
from pipeline.teacher.budget import SPEND_FILE, SpendLedger
from pipeline.teacher.cache import ResponseCache, cache_key
from pipeline.teacher.client import (
    RETRY_STATUS,
    Completion,
    MalformedResponse,
    _parse_completion,
    _read_usage,
    completion_record,
    cost_at,
    worst_case_tokens,
)

ENDPOINT = "/v1/chat/completions"
FINAL = ("completed", "expired", "cancelled", "failed")
JOURNAL = "journal.jsonl"


class Entry(BaseModel):
    """One journal line."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["file", "uploaded", "submitting", "submitted", "processed"]
    file: str
    items: int | None = None
    bytes: int | None = None
    round: int | None = None  # 0: first submission; n: its items' n-th resubmission
    worst_usd: float | None = None
    spend_key: str | None = None
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None
    completed: int | None = None
    failed: int | None = None
    resubmitted: int | None = None
    at: str = ""


@dataclass
class RequestFile:
    name: str
    items: int
    bytes: int
    round: int
    worst_usd: float | None
    file_id: str | None = None
    spend_key: str | None = None
    batch_id: str | None = None
    processed: bool = False
    status: str = "written"
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def meta_name(self) -> str:
        return self.name.removesuffix(".jsonl") + ".meta.jsonl"

    @property
    def results_name(self) -> str:  # what vllm run-batch is told to write (offline)
        return self.name.replace("requests-", "results-", 1)

    def report(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "batch_id": self.batch_id,
            "status": self.status,
            "items": self.items,
            "round": self.round,
            **self.counts,
        }


class Journal:
    """The request files and what has happened to each, rebuilt from ``journal.jsonl``."""

    def __init__(self, folder: Path, files_dir: Path) -> None:
        self.folder = folder
        self.files_dir = files_dir
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / JOURNAL
        repair_jsonl_tail(path)
        self.files: dict[str, RequestFile] = {}
        for e in read_jsonl(path, Entry) if path.exists() else []:
            self._apply(e)
        for d in {folder, files_dir}:  # written, never recorded (a kill): the items are pending
            for p in d.glob("requests-*.jsonl"):
                if p.name.replace(".meta.jsonl", ".jsonl") not in self.files:
                    p.unlink()
        self._out = JsonlAppender(path, fsync=True)

    def _apply(self, e: Entry) -> None:
        if e.event == "file":
            self.files[e.file] = RequestFile(
                e.file, e.items or 0, e.bytes or 0, e.round or 0, e.worst_usd
            )
            return
        f = self.files[e.file]
        if e.event == "uploaded":
            f.file_id = e.file_id
        elif e.event == "submitting":
            f.spend_key, f.worst_usd = e.spend_key, e.worst_usd
        elif e.event == "submitted":
            f.batch_id = e.batch_id
            f.status = "submitted"
        elif e.event == "processed":
            f.processed = True
            f.status = e.status or "processed"
            f.counts = {"completed": e.completed or 0, "failed": e.failed or 0}
            f.counts["resubmitted"] = e.resubmitted or 0

    def record(self, e: Entry) -> None:
        self._out.write(e.model_copy(update={"at": utc_now()}).model_dump(exclude_none=True))
        self._apply(e)

    def next_name(self) -> str:
        return f"requests-{len(self.files):05d}.jsonl"

    def open_files(self) -> list[RequestFile]:
        return [f for f in self.files.values() if not f.processed]

    def close(self) -> None:
        self._out.close()


def _request_line(job: Job, model: str, params: dict[str, Any]) -> bytes:
    body = {"model": model, "messages": job.messages, **params}
    line = {"custom_id": job.id, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n"


def _meta_line(job: Job) -> bytes:
    meta = {"id": job.id, "template": job.template, "params": job.params, "meta": job.meta}
    return json.dumps(meta, ensure_ascii=False).encode("utf-8") + b"\n"


class _Writer:
    """A request file and its meta file, under temp names until both are complete."""

    def __init__(self, files_dir: Path, meta_dir: Path, name: str) -> None:
        self.paths = (files_dir / name, meta_dir / (name.removesuffix(".jsonl") + ".meta.jsonl"))
        self.tmps = tuple(p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in self.paths)
        self.handles = [open(t, "wb") for t in self.tmps]  # noqa: SIM115 - closed below
        self.items = self.bytes = 0

    def add(self, request: bytes, meta: bytes) -> None:
        self.handles[0].write(request)
        self.handles[1].write(meta)
        self.items += 1
        self.bytes += len(request)

    def commit(self) -> None:
        for h, tmp, path in zip(self.handles, self.tmps, self.paths, strict=True):
            h.flush()
            os.fsync(h.fileno())
            h.close()
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)

    def discard(self) -> None:
        for h, tmp in zip(self.handles, self.tmps, strict=True):
            h.close()
            tmp.unlink(missing_ok=True)


class BatchRunner:
    def __init__(
        self,
        cfg: PipelineConfig,
        run: Run,
        console: Console,
        stage: str,
        ok: Callable[[Job, Completion], bool | None],
        bad: Callable[[Job, str, int], None],
        done: Callable[[str], bool],
    ) -> None:
        t = cfg.teacher
        self.cfg, self.t, self.bc = cfg, t, t.batch
        self.console, self.stage = console, stage
        self.ok, self.bad, self.done = ok, bad, done
        self.folder = run.stage_dir(stage) / "batch"
        # offline: a folder per run, so runs sharing teacher.batch.local_dir never mix files
        local = Path(t.batch.local_dir).expanduser() / run.name if t.batch.local_dir else None
        self.local = local
        self.files_dir = local or self.folder
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.folder, self.files_dir)
        price = t.prices.get(t.model)
        self.price = None if price is None else price.for_mode("batch")
        paid = self.price is not None and (self.price.input_per_mtok or self.price.output_per_mtok)
        self.ledger = SpendLedger(
            run.path / SPEND_FILE, stage, cfg.budget.max_cost_usd, fsync=bool(paid)
        )
        self.cache = ResponseCache(cache_dir(cfg)) if t.cache else None
        self.stats = BatchStats(cost_known=self.price is not None)
        self.client: Any = None
        self.key = NO_KEY
        self.params = {"max_tokens": t.max_tokens, "temperature": t.temperature, "top_p": t.top_p}
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self._jobs: Iterator[Job] = iter(())
        self._carry: Job | None = None
        self._skip: set[str] = set()

    # ------------------------------------------------------------------ requests to files
    def _params(self, job: Job) -> dict[str, Any]:
        return {**self.params, **job.params}

    def _worst(self, job: Job, params: dict[str, Any]) -> float:
        if self.price is None:
            return 0.0
        return cost_at(self.price, *worst_case_tokens(job.messages, params, self.t.max_tokens)) or 0

    def _next_job(self) -> Job | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        return next(self._jobs, None)

    def write_files(self) -> bool:
        """Cut the jobs into request files within the limits and the budget (answers already
        in the cache complete at once). True when every job is in a file; False when the
        budget holds the rest back (a later call, after batches settle, continues)."""
        while True:
            room = self.ledger.room()
            if room is not None:  # written but not yet admitted: theirs is taken already
                room -= sum(
                    f.worst_usd or 0.0 for f in self.journal.open_files() if not f.spend_key
                )
            w: _Writer | None = None
            worst = 0.0
            over = False
            while (job := self._next_job()) is not None:
                if job.id in self._skip:  # in a request file not yet processed
                    continue
                params = self._params(job)
                if self.cache is not None and (hit := self.cache.get(self._key(job, params))):
                    self._answered(job, Completion(**{**hit, "cached": True}))
                    continue
                line, cost = _request_line(job, self.t.model, params), self._worst(job, params)
                if w is None:
                    w = _Writer(self.files_dir, self.folder, self.journal.next_name())
                over = room is not None and worst + cost > room + 1e-12
                full = w.items >= self.bc.max_requests_per_file
                full |= w.bytes + len(line) > self.bc.max_bytes_per_file and w.items > 0
                if full or over:
                    self._carry = job
                    break
                w.add(line, _meta_line(job))
                worst += cost
            if w is not None and w.items:
                w.commit()
                self._record_file(w, 0, worst)
            elif w is not None:
                w.discard()
            if self._carry is None:
                return True
            if over:
                return False

    def _record_file(self, w: _Writer, round_: int, worst: float) -> None:
        name = w.paths[0].name
        self.journal.record(
            Entry(
                event="file",
                file=name,
                items=w.items,
                bytes=w.bytes,
                round=round_,
                worst_usd=worst if self.price is not None else None,
            )
        )

    def _key(self, job: Job, params: dict[str, Any]) -> str:
        return cache_key(self.t.model, job.messages, params)

    def _answered(self, job: Job, c: Completion) -> None:
        self.stats.tokens_in += c.prompt_tokens
        self.stats.tokens_out += c.completion_tokens
        self.stats.cached += c.cached
        if self.ok(job, c) is False:
            self.stats.failed += 1
        else:
            self.stats.done += 1

    # ------------------------------------------------------------------ the Batch API
    def _open_client(self) -> None:
        if self.local is not None:
            return
        import openai

        url = self.t.urls()[0]
        self.key = _api_key(self.cfg, [url])
        # the SDK retries uploads, polls and downloads; batch creation is never retried blindly
        # (a lost answer is looked up by its input file: see _create)
        self.client = openai.AsyncOpenAI(
            base_url=url, api_key=self.key, max_retries=5, timeout=self.t.timeout_s
        )

    def _fail(self, what: str, e: Exception) -> DatagenError:
        text = redact(f"{type(e).__name__}: {e}", self.key)[:300]
        return DatagenError(f"teacher.mode=batch: {what} failed: {text}")

    async def submit(self, f: RequestFile) -> bool:
        """Upload, admit and create the batch of ``f`` (each step recorded); False when its
        worst case does not fit the budget now."""
        if self.local is not None:
            return True
        import openai

        if f.file_id is None:
            try:
                up = await self.client.files.create(file=self.files_dir / f.name, purpose="batch")
            except openai.OpenAIError as e:
                raise self._fail(f"uploading {f.name}", e) from None
            self.journal.record(Entry(event="uploaded", file=f.name, file_id=up.id))
        if f.spend_key is None:
            key = self.ledger.try_admit(f"batch:{f.name}", f.worst_usd)
            if key is None:
                return False
            self.journal.record(
                Entry(event="submitting", file=f.name, spend_key=key, worst_usd=f.worst_usd)
            )
            found = None
        else:  # a creation was under way when datagen stopped: did it happen?
            found = await self._find(f)
        if f.batch_id is None:
            batch_id = found or await self._create(f)
            self.journal.record(Entry(event="submitted", file=f.name, batch_id=batch_id))
        return True

    async def _find(self, f: RequestFile) -> str | None:
        """The batch created from ``f``'s uploaded file, if there is one."""
        async for b in self.client.batches.list(limit=100):
            if b.input_file_id == f.file_id:
                return str(b.id)
        return None

    async def _create(self, f: RequestFile) -> str:
        import openai

        for attempt in range(self.t.max_retries + 1):
            try:
                b = await self.client.batches.create(
                    input_file_id=f.file_id,
                    endpoint=ENDPOINT,
                    completion_window=self.bc.completion_window,
                    metadata={"datagen_file": f.name, "datagen_stage": self.stage},
                    extra_headers={"x-stainless-retry-count": "0"},
                    timeout=self.t.timeout_s,
                )
                return str(b.id)
            except (openai.APIConnectionError, openai.InternalServerError) as e:
                # the batch may exist although the answer was lost: look before creating again
                if found := await self._find(f):
                    return found
                if attempt == self.t.max_retries:
                    raise self._fail(f"creating the batch of {f.name}", e) from None
                await asyncio.sleep(
                    min(self.t.backoff_max_s, self.t.backoff_initial_s * 2**attempt)
                )
            except openai.OpenAIError as e:
                if f.spend_key:
                    self.ledger.unbilled(f.spend_key)
                raise self._fail(f"creating the batch of {f.name}", e) from None
        raise AssertionError("unreachable")

    async def poll(self, f: RequestFile) -> bool:
        """Check ``f``'s batch; process it when it has ended. True when processed."""
        if self.local is not None:
            results = self.files_dir / f.results_name
            if not results.exists():
                return False
            self._process(f, "completed", [results])
            return True
        import openai

        try:
            b = await self.client.batches.retrieve(f.batch_id)
        except openai.OpenAIError as e:
            raise self._fail(f"checking batch {f.batch_id}", e) from None
        counts = b.request_counts
        done = (counts.completed + counts.failed) if counts else 0
        f.status = str(b.status)
        f.counts = {
            "completed": counts.completed if counts else 0,
            "failed": counts.failed if counts else 0,
        }
        self._show(f, done)
        if b.status not in FINAL:
            return False
        paths = []
        for kind, fid in (("output", b.output_file_id), ("errors", b.error_file_id)):
            if fid:
                paths.append(await self._download(fid, self.folder / f"{kind}-{f.batch_id}.jsonl"))
        detail = ""
        if b.errors is not None and b.errors.data:
            e = b.errors.data[0]
            detail = redact(f"{e.code}: {e.message}", self.key)[:200]
        self._process(f, str(b.status), paths, detail)
        return True

    async def _download(self, file_id: str, path: Path) -> Path:
        import openai

        if path.exists():
            return path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            async with self.client.files.with_streaming_response.content(file_id) as resp:
                await resp.stream_to_file(tmp)
        except openai.OpenAIError as e:
            tmp.unlink(missing_ok=True)
            raise self._fail(f"downloading {file_id}", e) from None
        os.replace(tmp, path)
        return path

    # ------------------------------------------------------------------ results
    def _index(self, f: RequestFile) -> dict[str, tuple[int, int]]:
        """custom_id -> (byte offset of its request line, of its meta line)."""
        index: dict[str, tuple[int, int]] = {}
        with open(self.files_dir / f.name, "rb") as req, open(self.folder / f.meta_name, "rb") as m:
            pos_r = pos_m = 0
            for r_line, m_line in zip(req, m, strict=True):
                index[json.loads(m_line)["id"]] = (pos_r, pos_m)
                pos_r += len(r_line)
                pos_m += len(m_line)
        return index

    def _process(self, f: RequestFile, status: str, results: list[Path], detail: str = "") -> None:
        """Outputs, failures and the cache from a finished batch; its cost to the ledger; what
        it did not finish into a new request file."""
        index = self._index(f)
        resolved: set[str] = set()
        again: list[str] = []
        completed = failed = tok_in = tok_out = 0
        priced = True
        with open(self.files_dir / f.name, "rb") as req, open(self.folder / f.meta_name, "rb") as m:

            def job_for(cid: str) -> tuple[Job, dict[str, Any]]:
                """The job, and the sampling parameters it was sent with."""
                r_at, m_at = index[cid]
                req.seek(r_at)
                m.seek(m_at)
                body = json.loads(req.readline())["body"]
                meta = json.loads(m.readline())
                job = Job(
                    id=cid,
                    messages=body["messages"],
                    template=meta["template"],
                    params=meta["params"],
                    meta=meta["meta"],
                )
                return job, {k: v for k, v in body.items() if k not in ("model", "messages")}

            for path in results:
                for raw in open(path, "rb"):  # noqa: SIM115 - read to the end
                    if not raw.strip():
                        continue
                    try:
                        line = json.loads(raw)
                        cid = line["custom_id"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    if cid not in index or cid in resolved:
                        continue
                    resp = line.get("response") or {}
                    err = line.get("error") or {}
                    code = resp.get("status_code") if isinstance(resp, dict) else None
                    body = resp.get("body") if isinstance(resp, dict) else None
                    if code == 200:
                        usage, _ = _read_usage(body)
                        if usage:
                            tok_in, tok_out = tok_in + usage[0], tok_out + usage[1]
                        else:
                            priced = False
                        try:
                            c = _parse_completion(body, self.t.model, 0.0)
                        except MalformedResponse:
                            again.append(cid)
                            continue
                        resolved.add(cid)
                        completed += 1
                        job, sent = job_for(cid)
                        if self.cache is not None:
                            self.cache.put(self._key(job, sent), completion_record(c))
                        if not self.done(cid):
                            self._answered(job, c)
                        continue
                    ecode = str(err.get("code") or "") if isinstance(err, dict) else ""
                    if (
                        code is None
                        or code in RETRY_STATUS
                        or code >= 500
                        or ecode.startswith("batch_")
                    ):
                        again.append(cid)  # not finished: expired, cancelled, or retryable
                        continue
                    resolved.add(cid)
                    failed += 1
                    self.stats.failed += 1
                    msg = ""
                    if isinstance(body, dict) and isinstance(body.get("error"), dict):
                        msg = str(body["error"].get("message") or "")
                    if not msg and isinstance(err, dict):
                        msg = str(err.get("message") or "")
                    reason = redact(f"http_{code}: {' '.join(msg.split())[:200]}", self.key)
                    self.bad(job_for(cid)[0], reason, f.round + 1)
            unfinished = [cid for cid in index if cid not in resolved]
            resubmit = f.round < self.t.max_retries
            if not resubmit:
                for cid in unfinished:
                    failed += 1
                    self.stats.failed += 1
                    why = f"batch_{status}: not answered in {f.round + 1} batches"
                    self.bad(job_for(cid)[0], why + (f" ({detail})" if detail else ""), f.round + 1)
        if f.spend_key and not self.ledger.is_settled(f.spend_key):
            if completed == 0:
                self.ledger.unbilled(f.spend_key)
            else:
                cost = cost_at(self.price, tok_in, tok_out) if priced else None
                self.ledger.paid(f.spend_key, (tok_in, tok_out) if priced else None, cost)
        self.journal.record(
            Entry(
                event="processed",
                file=f.name,
                status=status,
                completed=completed,
                failed=failed,
                resubmitted=len(unfinished) if resubmit else 0,
            )
        )
        # after "processed": a kill in between leaves these items pending (not in any open
        # file), and they go into a new file on the next run, never into two
        if resubmit and unfinished:
            self._resubmit(f, index, unfinished)
        self._show(f, f.items)

    def _resubmit(self, f: RequestFile, index: dict[str, tuple[int, int]], ids: list[str]) -> None:
        """A new request file holding the lines of ``ids`` (copied from ``f``'s)."""
        name = self.journal.next_name()
        w = _Writer(self.files_dir, self.folder, name)
        worst = 0.0
        with open(self.files_dir / f.name, "rb") as req, open(self.folder / f.meta_name, "rb") as m:
            for cid in ids:
                r_at, m_at = index[cid]
                req.seek(r_at)
                m.seek(m_at)
                r_line, m_line = req.readline(), m.readline()
                w.add(r_line, m_line)
                if self.price is not None:
                    body = json.loads(r_line)["body"]
                    params = {k: v for k, v in body.items() if k not in ("model", "messages")}
                    worst += (
                        cost_at(
                            self.price,
                            *worst_case_tokens(body["messages"], params, self.t.max_tokens),
                        )
                        or 0.0
                    )
        w.commit()
        self._record_file(w, f.round + 1, worst)

    # ------------------------------------------------------------------ progress
    def _show(self, f: RequestFile, done: int) -> None:
        if self.progress is None:
            return
        if f.name not in self.tasks:
            label = f"{f.name.removesuffix('.jsonl')} {f.batch_id or ''}"[:40]
            self.tasks[f.name] = self.progress.add_task(label, total=f.items, counts="")
        c = f.counts
        counts = f"{f.status} ok={c.get('completed', 0)} failed={c.get('failed', 0)}"
        self.progress.update(self.tasks[f.name], completed=done, counts=counts)

    # ------------------------------------------------------------------ the loop
    async def run(self, jobs: Iterator[Job]) -> BatchStats:
        self._open_client()
        self._jobs, self._carry, self._skip = iter(jobs), None, self._open_ids()
        written = False
        self.progress = make_progress(self.console)
        delay = self.bc.poll_initial_s
        try:
            with self.progress:
                while True:
                    if not written:
                        written = self.write_files()
                    held = []  # files whose worst case does not fit the budget yet
                    for f in self.journal.open_files():
                        if f.batch_id is None and not await self.submit(f):
                            held.append(f)
                        elif f.name not in self.tasks:
                            self._show(f, 0)
                    changed = False
                    for f in self.journal.open_files():
                        if (f.batch_id or self.local) and await self.poll(f):
                            changed = True
                    open_files = self.journal.open_files()
                    if not open_files and written:
                        break
                    if self.local is not None and not changed:
                        break  # the offline results are not there yet: run datagen again later
                    if not changed and not any(f.batch_id for f in open_files):
                        # nothing in flight will settle: the budget is spent
                        self.stats.stopped_by_budget = True
                        self.stats.skipped_by_budget += sum(f.items for f in held)
                        self.stats.skipped_by_budget += self._count_rest()
                        break
                    if changed:
                        delay = self.bc.poll_initial_s
                        continue
                    await asyncio.sleep(delay)
                    delay = min(self.bc.poll_max_s, delay * 2)
        finally:
            await self.close()
        self.stats.spent_usd = self.ledger.session_usd
        self.stats.batches = [f.report() for f in self.journal.files.values()]
        if self.local is not None:
            self.stats.waiting = [
                f"vllm run-batch -i {self.files_dir / f.name} "
                f"-o {self.files_dir / f.results_name} --model {self.t.model}"
                for f in self.journal.open_files()
            ]
        return self.stats

    def _count_rest(self) -> int:
        n = 0
        while (job := self._next_job()) is not None:
            n += job.id not in self._skip
        return n

    def _open_ids(self) -> set[str]:
        """Ids in request files not yet processed: they are not written into another."""
        ids: set[str] = set()
        for f in self.journal.open_files():
            with open(self.folder / f.meta_name, "rb") as m:
                ids.update(json.loads(line)["id"] for line in m)
        return ids

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.client is not None:
                await self.client.close()
        if self.cache is not None:
            self.cache.close()
        self.journal.close()
        await self.ledger.aclose()


async def run_batch_api(
    cfg: PipelineConfig,
    run: Run,
    console: Console,
    stage: str,
    jobs: Iterator[Job],
    ok: Callable[[Job, Completion], bool | None],
    bad: Callable[[Job, str, int], None],
    done: Callable[[str], bool],
) -> BatchStats:
    """Send ``jobs`` as batches (resuming the batches of an earlier, killed invocation)."""
    check_teacher_config(cfg)
    return await BatchRunner(cfg, run, console, stage, ok, bad, done).run(jobs)
