"""The end-of-run summary table: what each stage did and where its output is."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_summary(manifests: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="datagen summary", show_lines=False)
    table.add_column("stage")
    table.add_column("status")
    table.add_column("result")
    table.add_column("output")
    for m in manifests:
        summary = m.get("summary", {})
        result = ", ".join(f"{k}={v}" for k, v in summary.items())
        status = m.get("status", "?")
        if m.get("inputs_stopped_by_budget"):
            status += " (partial input: budget)"
        table.add_row(
            m.get("stage", "?"),
            status,
            result,
            f"{m.get('run', '')}/{m.get('stage', '')}",
        )
    console.print(table)
    for m in manifests:  # what to do next, e.g. how to continue a budget-stopped stage
        if m.get("next"):
            console.print(f"{m.get('stage', '?')}: {m['next']}")
