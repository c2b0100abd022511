"""Benchmark: one full default-size `datagen ablate` on a run over every real web page in
../shared/data (docs/benchmarks.md, "Proxy-training ablation").

    flock /work/bench.lock .venv/bin/python scripts/bench/ablation.py --json runs/ablation.json

1. packs the 300 web_large HTML pages into runs/pool/web_large_html.warc.gz
   (scripts/web_large_warc.py);
2. `datagen run run.name=ablation` with the default config and web.inputs = every web file of
   ../shared/data (WARC, ARC, WET, Dolma and CCNet JSONL, the packed pages); stages that
   finished earlier are skipped;
3. `datagen ablate run.name=ablation` at its defaults (extra key=value arguments are passed to
   it), timed, with the load average before and after;
4. prints the table as Markdown and the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
S = "../shared/data"
POOL = "runs/pool/web_large_html.warc.gz"
INPUTS = [
    f"{S}/web/commoncrawl_warc/*.warc.gz",
    f"{S}/web/commoncrawl_warc/*.arc.gz",
    f"{S}/web/other_web_archives/*.warc.gz",
    f"{S}/web/ccnet_text/*.jsonl.gz",
    f"{S}/web_large/cc_samples/*.jsonl.gz",
    f"{S}/web_large/cc_samples/*.warc.gz",
    f"{S}/web_large/cc_samples/*.wet.gz",
    POOL,
]


def datagen(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, check=True)
    return round(time.perf_counter() - t0, 1)


def markdown(m: dict) -> str:
    evals = list(m["eval_sets"])
    head = "| corpus | docs available | " + " | ".join(f"{e} eval loss" for e in evals)
    lines = [head + " | train loss (end) |", "|---" * (len(evals) + 3) + "|"]
    for row in m["table"]:
        c = m["corpora"][row["corpus"]]
        cells = [f"{row[e]['mean']:.3f} ± {row[e]['std']:.3f}" for e in evals]
        t = row["train_loss_end"]
        lines.append(
            f"| {row['corpus']} | {c['documents']} ({c['tokens_available']:,} tokens) | "
            + " | ".join(cells)
            + f" | {t['mean']:.3f} ± {t['std']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-name", default="ablation")
    ap.add_argument("--json", type=Path)
    a, extra = ap.parse_known_args(argv)
    if not (ROOT / POOL).exists():
        subprocess.run(
            [sys.executable, "scripts/web_large_warc.py", "--out", POOL], cwd=ROOT, check=True
        )
    run_s = datagen("run", f"run.name={a.run_name}", f"web.inputs=[{', '.join(INPUTS)}]")
    load_before = os.getloadavg()
    ablate_s = datagen("ablate", f"run.name={a.run_name}", *extra)
    load_after = os.getloadavg()
    m = json.loads((ROOT / "runs" / a.run_name / "ablate" / "manifest.json").read_text())
    out = {
        "run_s": run_s,
        "ablate_s": ablate_s,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "token_budget": m["token_budget"],
        "passes_over_corpus": m["passes_over_corpus"],
        "model": m["model"],
        "corpora": m["corpora"],
        "eval_sets": m["eval_sets"],
        "table": m["table"],
        "notes": m["notes"],
    }
    print(markdown(m))
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
