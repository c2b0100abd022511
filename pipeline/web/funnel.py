"""The web stage's funnel and reader counts, from the stats of its shards merged in order.

The funnel is ``Stats.funnel_list()``: the ``read`` row (records read; tokens are words of the
raw records, HTML markup included), then one row per step with the documents and words left
after it and its drops per reason. :func:`check` verifies that every record read is kept or
dropped exactly once before the manifest is written.
"""

from __future__ import annotations

from typing import Any

from pipeline.steps import Stats
from pipeline.web.readers import MAX_MESSAGES, ReadStats

READ = "read"
_READER = "reader."


def add_read_stats(stats: Stats, read: ReadStats) -> None:
    """A shard's reader counts, as counters that add up over shards."""
    stats.add(f"{_READER}files", read.files)
    stats.add(f"{_READER}bytes", read.bytes)
    for k, v in read.record_types.items():
        stats.add(f"{_READER}record_types.{k}", v)
    for k, v in read.errors.items():
        stats.add(f"{_READER}errors.{k}", v)


def counts_under(stats: Stats, prefix: str) -> dict[str, int]:
    """The counters named ``prefix`` + key, as {key: n}, sorted."""
    n = len(prefix)
    return dict(sorted((k[n:], int(v)) for k, v in stats.counts.items() if k.startswith(prefix)))


def reader_summary(stats: Stats, messages: list[str]) -> dict[str, Any]:
    """The manifest's ``reader`` entry: counts over all shards, the first messages."""
    c = stats.counts
    return {
        "files": int(c.get(f"{_READER}files", 0)),
        "bytes": int(c.get(f"{_READER}bytes", 0)),
        "record_types": counts_under(stats, f"{_READER}record_types."),
        "errors": counts_under(stats, f"{_READER}errors."),
        "error_messages": messages[:MAX_MESSAGES],
    }


def check(rows: list[dict[str, Any]]) -> None:
    """Each step's documents are the previous step's minus its drops, and read == kept +
    dropped: an accounting bug fails loudly instead of publishing wrong numbers."""
    for prev, row in zip(rows, rows[1:], strict=False):
        if row["documents"] != prev["documents"] - sum(row["dropped"].values()):
            raise AssertionError(
                f"web funnel: step '{row['step']}' has {row['documents']} documents, "
                f"expected {prev['documents']} - drops"
            )
    read = rows[0]["documents"] if rows else 0
    drops = sum(sum(r["dropped"].values()) for r in rows)
    if rows and read != rows[-1]["documents"] + drops:
        raise AssertionError("web funnel: read != kept + dropped")
