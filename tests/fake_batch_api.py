"""A fake OpenAI Batch API on 127.0.0.1 (files upload/content, batches create/retrieve/list/
cancel, output and error files), for fault injection: expiry, partial completion, failed and
cancelled batches, a creation whose answer never arrives. The chat completions it writes come
from FakeOpenAI (the same answers, fault scripts and counters as online requests), so a test
can switch between modes and check that nothing is paid twice.

A batch moves one step per retrieve: validating -> in_progress (``per_poll`` requests answered
per retrieve) -> finalizing -> completed (or expired / failed / cancelled), as the real one does
over hours.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from fake_openai import FakeOpenAI, request_key


class FakeBatchAPI(FakeOpenAI):
    def __init__(
        self,
        *,
        per_poll: int = 1_000_000,
        batch_script: Callable[[int], str] | None = None,
        **kwargs: Any,
    ) -> None:
        """``batch_script(n)`` for the n-th batch created (0-based): "complete", "expire:K"
        (K requests answered, then expired), "fail" (validation failed), "hang" (created, but
        the answer to the create request never comes)."""
        super().__init__(**kwargs)
        self.per_poll = per_poll
        self.batch_script = batch_script or (lambda n: "complete")
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.submitted: Counter[str] = Counter()  # custom_id -> batches it was in
        self.creates = 0
        self.retrieves = 0
        self.created_event = asyncio.Event()
        self._release = asyncio.Event()  # never set: a "hang" create waits forever

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{id}", self.file_info)
        app.router.add_get("/v1/files/{id}/content", self.file_content)
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches", self.list_batches)
        app.router.add_get("/v1/batches/{id}", self.retrieve)
        app.router.add_post("/v1/batches/{id}/cancel", self.cancel)
        return app

    # ------------------------------------------------------------------ files
    def _file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        fid = f"file-{len(self.files):04d}"
        self.files[fid] = {"data": data, "filename": filename, "purpose": purpose}
        return self._file_json(fid)

    def _file_json(self, fid: str) -> dict[str, Any]:
        f = self.files[fid]
        return {
            "id": fid,
            "object": "file",
            "bytes": len(f["data"]),
            "created_at": 0,
            "filename": f["filename"],
            "purpose": f["purpose"],
            "status": "processed",
        }

    async def upload(self, request: web.Request) -> web.Response:
        self.auth_headers.add(request.headers.get("Authorization", ""))
        form = await request.post()
        upload = form["file"]
        data = upload.file.read()  # type: ignore[union-attr]
        if form.get("purpose") != "batch":
            return web.json_response({"error": {"message": "purpose must be batch"}}, status=400)
        return web.json_response(self._file(data, upload.filename, "batch"))  # type: ignore[union-attr]

    async def file_info(self, request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        if fid not in self.files:
            return web.json_response({"error": {"message": "no such file"}}, status=404)
        return web.json_response(self._file_json(fid))

    async def file_content(self, request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        if fid not in self.files:
            return web.json_response({"error": {"message": "no such file"}}, status=404)
        return web.Response(body=self.files[fid]["data"], content_type="application/jsonl")

    # ------------------------------------------------------------------ batches
    async def create(self, request: web.Request) -> web.Response:
        self.auth_headers.add(request.headers.get("Authorization", ""))
        body = await request.json()
        fid = body["input_file_id"]
        if fid not in self.files or body.get("endpoint") != "/v1/chat/completions":
            return web.json_response({"error": {"message": "bad batch"}}, status=400)
        lines = [json.loads(x) for x in self.files[fid]["data"].splitlines() if x.strip()]
        bid = f"batch_{len(self.batches):04d}"
        script = self.batch_script(self.creates)
        self.creates += 1
        for line in lines:
            self.submitted[line["custom_id"]] += 1
        self.batches[bid] = {
            "id": bid,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": fid,
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "created_at": len(self.batches),
            "metadata": body.get("metadata"),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_lines": lines,
            "_results": [],  # (custom_id, status, body) per answered line
            "_script": script,
        }
        self.created_event.set()
        if script == "hang":
            await self._release.wait()
        return web.json_response(self._batch_json(bid))

    def _batch_json(self, bid: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[bid].items() if not k.startswith("_")}

    async def list_batches(self, request: web.Request) -> web.Response:
        newest = sorted(self.batches, key=lambda b: -self.batches[b]["created_at"])
        after = request.query.get("after")
        if after in newest:
            newest = newest[newest.index(after) + 1 :]
        limit = int(request.query.get("limit", 20))
        page = newest[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": [self._batch_json(b) for b in page],
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
                "has_more": len(newest) > limit,
            }
        )

    async def retrieve(self, request: web.Request) -> web.Response:
        bid = request.match_info["id"]
        if bid not in self.batches:
            return web.json_response({"error": {"message": "no such batch"}}, status=404)
        self.retrieves += 1
        self._advance(self.batches[bid])
        return web.json_response(self._batch_json(bid))

    async def cancel(self, request: web.Request) -> web.Response:
        bid = request.match_info["id"]
        b = self.batches[bid]
        if b["status"] in ("validating", "in_progress", "finalizing"):
            b["status"] = "cancelling"
        return web.json_response(self._batch_json(bid))

    def _advance(self, b: dict[str, Any]) -> None:
        script, status = b["_script"], b["status"]
        if status == "validating":
            if script == "fail":
                b["status"] = "failed"
                b["errors"] = {
                    "object": "list",
                    "data": [{"code": "invalid_request", "message": "model not found", "line": 1}],
                }
            else:
                b["status"] = "in_progress"
        elif status == "in_progress":
            limit = int(script.split(":")[1]) if script.startswith("expire:") else len(b["_lines"])
            todo = b["_lines"][len(b["_results"]) : limit]
            for line in todo[: self.per_poll]:
                b["_results"].append(self._answer(line))
            counts = b["request_counts"]
            counts["completed"] = sum(r["response"]["status_code"] == 200 for r in b["_results"])
            counts["failed"] = len(b["_results"]) - counts["completed"]
            if len(b["_results"]) >= limit:
                b["status"] = "expired" if script.startswith("expire:") else "finalizing"
                if b["status"] == "expired":
                    self._finish(b, "batch_expired", "This batch expired before completion.")
        elif status == "finalizing":
            b["status"] = "completed"
            self._finish(b, "", "")
        elif status == "cancelling":
            b["status"] = "cancelled"
            self._finish(b, "batch_cancelled", "This batch was cancelled.")

    def _answer(self, line: dict[str, Any]) -> dict[str, Any]:
        """One request line answered as the online endpoint would (same fault scripts)."""
        body = line["body"]
        key = request_key(body["messages"])
        self.total += 1
        if self.successes[key]:
            self.after_success[key] += 1
        self.attempts[key] += 1
        faults = self.script(key)
        n = self.attempts[key]
        fault = faults[n - 1] if n - 1 < len(faults) else "ok"
        if fault in ("400", "500", "always500", "429"):
            status = 429 if fault == "429" else int(fault.replace("always", ""))
            payload: dict[str, Any] = {"error": {"message": f"fake {status}", "type": "x"}}
        else:
            status, payload = 200, self.completion(body, key, fault)
        rid = f"req_{key}_{n}"
        return {
            "id": f"batch_req_{rid}",
            "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": rid, "body": payload},
            "error": None,
        }

    def _finish(self, b: dict[str, Any], code: str, message: str) -> None:
        """Write the output file (answers) and the error file (errors, and what was left)."""
        ok = [r for r in b["_results"] if r["response"]["status_code"] == 200]
        errors = [r for r in b["_results"] if r["response"]["status_code"] != 200]
        answered = {r["custom_id"] for r in b["_results"]}
        for line in b["_lines"]:
            if code and line["custom_id"] not in answered:
                errors.append(
                    {
                        "id": f"batch_req_left_{line['custom_id']}",
                        "custom_id": line["custom_id"],
                        "response": None,
                        "error": {"code": code, "message": message},
                    }
                )

        def jsonl(rows: list[dict[str, Any]]) -> bytes:
            return b"".join(json.dumps(r).encode() + b"\n" for r in rows)

        if ok:
            b["output_file_id"] = self._file(jsonl(ok), "output.jsonl", "batch_output")["id"]
        if errors:
            b["error_file_id"] = self._file(jsonl(errors), "errors.jsonl", "batch_error")["id"]

    def results_for(self, request_file: bytes) -> bytes:
        """What ``vllm run-batch`` writes for a request file: one output line per request."""
        lines = [json.loads(x) for x in request_file.splitlines() if x.strip()]
        return b"".join(json.dumps(self._answer(line)).encode() + b"\n" for line in lines)
