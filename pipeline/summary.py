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
        table.add_row(
            m.get("stage", "?"),
            m.get("status", "?"),
            result,
            f"{m.get('run', '')}/{m.get('stage', '')}",
        )
    console.print(table)
