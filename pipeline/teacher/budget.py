"""The run's spend ledger, ``<run>/spend.jsonl``, and the ``budget.max_cost_usd`` check.

Every attempt sent to the endpoint is written before it goes out ("sent", with its worst-case
cost) and settled when its answer arrives ("paid", at the cost its ``usage`` reports) or when
it certainly was not billed ("unbilled": an HTTP error status, a connection that never
opened). An attempt never settled (timed out, cut off, in flight at a kill -9) may still
have been billed, so it counts at its worst case. Lines are flushed as written, so a kill loses
nothing; when money is involved they are also fsynced (a power cut loses nothing), by a
background thread that covers every line written since its last fsync, so the event loop
never waits on the disk. The total over all stages and all invocations
of the run is what the budget caps: a rerun or a resume never gets the budget afresh.

The check: an attempt is sent only if the total (settled costs + worst cases of everything
unsettled, requests in flight included) plus its own worst case fits the cap. When it does not
fit but requests are in flight, it waits for them to settle (their actual cost is usually below
the worst case); when nothing is in flight and it still does not fit, the budget is exhausted
and every later attempt is refused at once (:class:`BudgetExhausted`; the item stays pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.records import utc_now
from pipeline.runs import JsonlAppender, read_jsonl, repair_jsonl_tail

SPEND_FILE = "spend.jsonl"


class BudgetExhausted(Exception):
    """The next request does not fit ``budget.max_cost_usd``; the item is left pending."""


class SpendEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: Literal["sent", "paid", "unbilled"]
    key: str  # one attempt
    stage: str = ""
    id: str = ""  # the item
    worst_usd: float | None = None  # sent: the most this attempt can cost (None: no price)
    prompt_tokens: int | None = None  # paid
    completion_tokens: int | None = None
    cost_usd: float | None = None  # paid: from usage (None: no price)
    estimated: bool = False  # paid without readable usage: charged at the worst case
    at: str = ""


@dataclass
class SpendTotals:
    """Settled cost and worst cases of unsettled attempts, per stage; ``priced`` is False when
    an entry had no price (the cost is then unknown, not 0)."""

    paid: dict[str, float] = field(default_factory=dict)
    unsettled: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> stage, worst
    priced: bool = True

    def add(self, e: SpendEntry) -> None:
        if e.event == "sent":
            self.unsettled[e.key] = (e.stage, e.worst_usd or 0.0)
            self.priced &= e.worst_usd is not None
            return
        stage, _ = self.unsettled.pop(e.key, (e.stage, 0.0))
        if e.event == "paid":
            self.paid[stage] = self.paid.get(stage, 0.0) + (e.cost_usd or 0.0)
            self.priced &= e.cost_usd is not None

    def unknown(self, stage: str | None = None) -> float:
        return sum(w for s, w in self.unsettled.values() if stage is None or s == stage)

    def total(self, stage: str | None = None) -> float:
        paid = sum(v for s, v in self.paid.items() if stage is None or s == stage)
        return paid + self.unknown(stage)


def read_spend(path: Path) -> SpendTotals:
    totals = SpendTotals()
    if path.exists():
        repair_jsonl_tail(path)
        for e in read_jsonl(path, SpendEntry):
            totals.add(e)
    return totals


def spend_report(run_path: Path, stage: str, cap: float | None) -> dict[str, Any]:
    """Manifest fields: what this stage and the whole run spent (all invocations)."""
    t = read_spend(run_path / SPEND_FILE)

    def usd(v: float) -> float | None:
        return round(float(v), 6) if t.priced else None

    return {
        "spent_usd": usd(t.total(stage)),  # settled + worst case of unsettled attempts
        "spent_unsettled_usd": usd(t.unknown(stage)),  # timed out / cut off: counted at worst
        "run_spent_usd": usd(t.total()),  # every stage: what budget.max_cost_usd caps
        "budget_usd": cap,
    }


def budget_note(spend: dict[str, Any], pending: int) -> str:
    """The one line that says how to continue a stage the budget stopped."""
    return (
        f"stopped: budget with {pending} items pending; {spend['run_spent_usd']} USD counted "
        f"in this run (all stages) of budget.max_cost_usd={spend['budget_usd']}; raise "
        f"budget.max_cost_usd and run the same command again to continue"
    )


class SpendLedger:
    """Appends to ``spend.jsonl`` and admits attempts under the cap (None: no cap).

    With a cap, the first attempt goes alone until an answer shows what a request really
    costs, and every later worst case is scaled by the largest overrun seen (an endpoint that
    bills more than ``max_tokens``), so an overrun is not repeated ``concurrency`` times."""

    def __init__(self, path: Path, stage: str, cap: float | None, fsync: bool) -> None:
        self.stage = stage
        self.cap = cap
        self.totals = read_spend(path)
        self.live: set[str] = set()  # attempts of this process not yet settled
        self._worst: dict[str, float | None] = {}  # their worst cases (None: no price)
        self.exhausted = False
        self.measured = False  # an answer with its cost has arrived in this session
        self.overrun = 1.0  # the largest actual / worst-case ratio seen
        self.session_usd = 0.0
        self._changed = asyncio.Event()
        self._out = JsonlAppender(path, fsync=False)
        self._fsync = fsync
        self._dirty = False  # lines written since the last fsync began
        self._syncing: asyncio.Task[None] | None = None

    def _write(self, e: SpendEntry) -> None:
        self._out.write(e.model_copy(update={"at": utc_now()}).model_dump(exclude_defaults=True))
        self.totals.add(e)
        if self._fsync:
            self._dirty = True
            if self._syncing is None:
                self._syncing = asyncio.get_running_loop().create_task(self._sync())

    async def _sync(self) -> None:
        """Group commit: one fsync covers every line written before it started."""
        try:
            while self._dirty:
                self._dirty = False
                await asyncio.to_thread(os.fsync, self._out.fileno())
        finally:
            self._syncing = None

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def admit(self, item_id: str, worst: float | None) -> str:
        """Wait until an attempt of cost ``worst`` (None: no price) fits, write it as sent,
        return its key. Raises BudgetExhausted when it cannot fit even with nothing in flight."""
        while True:
            need = None if worst is None else worst * self.overrun
            if self.exhausted:
                raise BudgetExhausted
            if self.cap is None:
                break
            fits = self.totals.total() + (need or 0.0) <= self.cap + 1e-9
            if fits and (self.measured or not self.live):
                break
            if not self.live:  # nothing will settle: this can never fit
                self.exhausted = True
                self._wake()
                raise BudgetExhausted
            await self._changed.wait()
        key = uuid.uuid4().hex
        self.live.add(key)
        self._worst[key] = need
        self._write(SpendEntry(event="sent", key=key, stage=self.stage, id=item_id, worst_usd=need))
        return key

    def try_admit(self, item_id: str, worst: float | None) -> str | None:
        """Write an attempt (a whole batch: ``worst`` is the sum of its requests' worst cases)
        as sent and return its key if it fits the cap now, else None; never waits. Batches
        skip the first-goes-alone rule: they are admitted at their worst case, whole."""
        if self.cap is not None and self.totals.total() + (worst or 0.0) > self.cap + 1e-9:
            return None
        key = uuid.uuid4().hex
        self.live.add(key)
        self._worst[key] = worst
        self._write(
            SpendEntry(event="sent", key=key, stage=self.stage, id=item_id, worst_usd=worst)
        )
        return key

    def room(self) -> float | None:
        """What may still be admitted under the cap (None: no cap)."""
        return None if self.cap is None else max(0.0, self.cap - self.totals.total())

    def is_settled(self, key: str) -> bool:
        """The attempt ``key`` (of this or an earlier invocation) was paid or unbilled."""
        return key not in self.totals.unsettled

    def paid(self, key: str, usage: tuple[int, int] | None, cost: float | None) -> None:
        """An answer arrived: charge what its usage says (``cost``), or, with no readable
        usage, the attempt's worst case (never 0)."""
        worst = self._worst.get(key)
        estimated = usage is None
        if estimated:
            cost = worst
        self._write(
            SpendEntry(
                event="paid",
                key=key,
                stage=self.stage,
                prompt_tokens=usage[0] if usage else None,
                completion_tokens=usage[1] if usage else None,
                cost_usd=cost,
                estimated=estimated,
            )
        )
        self.session_usd += cost or 0.0
        if cost is not None and worst:
            self.overrun = max(self.overrun, cost / worst)
        self.measured = True
        self._settled(key)

    def unbilled(self, key: str) -> None:
        self._write(SpendEntry(event="unbilled", key=key, stage=self.stage))
        self._settled(key)

    def abandon(self, key: str) -> None:
        """The attempt ended with no answer: it stays unsettled (counted at its worst case)."""
        self.session_usd += self._worst.get(key) or 0.0
        self._settled(key)

    def _settled(self, key: str) -> None:
        self.live.discard(key)
        self._worst.pop(key, None)
        self._wake()

    async def aclose(self) -> None:
        if self._syncing is not None:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self._syncing
        if self._fsync:
            os.fsync(self._out.fileno())
        self._out.close()
