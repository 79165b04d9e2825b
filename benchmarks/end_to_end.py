"""End-to-end benchmark: a whole extraction run, folder DIR to local store.

Measures, side by side in one process:
- instances/s of the Prefect flow (``extract_run``) with 1 and with 2 worker processes;
- the share of wall time spent in Prefect rather than in ridl's own work, by running the same
  stages (select, batches in a process pool, manifest, report) without Prefect on the same data;
- peak memory (RSS high-water mark) per worker process, at two sizes of archive: it must stay
  flat, since a worker holds one study at a time and a task returns counts only.

Usage: ``python benchmarks/end_to_end.py`` (20,000 and 5,000 instances) or ``--quick``.
Writes ``benchmarks/results/end_to_end.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The synthetic archives have ~170 studies (size comes from CT slices), so small batches give
# every worker several tasks; at a site, 200 studies per task is the default.
BATCH_SIZE = 8
sys.path.insert(0, str(ROOT))


def make_dir(root: Path, instances: int, seed: int) -> int:
    """A synthetic DIR of at least ``instances`` files: more CT slices, same people."""
    from ridl.synth import synthesize

    probe = synthesize(root / "probe", patients=60, sites=3, seed=seed, ct_slices=1)
    ct_series = sum(1 for p in probe.files if p.name == "ct_001.dcm")
    others = len(probe.files) - ct_series
    shutil.rmtree(root / "probe")
    slices = max(1, math.ceil((instances - others) / ct_series))
    report = synthesize(root / "dir", patients=60, sites=3, seed=seed, ct_slices=slices)
    return len(report.files)


def plain_run(project: str, release: str, source: str, store: str, workers: int) -> float:
    """The same stages without Prefect: what ridl's own work costs."""
    from export.manifest import build_manifest
    from export.report import write_report
    from export.store import open_store
    from flows.extract import batches
    from flows.runners import run_batch
    from flows.runplan import prepare_run

    t0 = time.perf_counter()
    plan = prepare_run(project, release, source, store)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(run_batch, plan.ctx, b, 4) for b in batches(plan.studies, BATCH_SIZE)
        ]
        for f in futures:
            f.result()
    st = open_store(plan.ctx.store_url)
    build_manifest(st, plan.ctx.prefix, len(plan.studies), project, release)
    write_report(st, plan.ctx.prefix)
    return time.perf_counter() - t0


def prefect_run(
    project: str, release: str, source: str, store: str, workers: int
) -> dict[str, Any]:
    from flows.extract import extract_run

    t0 = time.perf_counter()
    summary = extract_run(
        project=project,
        release=release,
        source=source,
        destination=store,
        workers=workers,
        batch_size=BATCH_SIZE,
    )
    wall = time.perf_counter() - t0
    log = json.loads((Path(store[5:]) / summary["run_log"]).read_text())
    return {"wall": wall, "summary": summary, "log": log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 and 500 instances")
    args = parser.parse_args()
    large, small = (2000, 500) if args.quick else (20000, 5000)
    from ridl.settings import configure_prefect_environment

    configure_prefect_environment()  # this script is an entry point, as the CLI is

    work = Path(tempfile.mkdtemp(prefix="ridl-e2e-"))
    os.environ["RIDL_HOME"] = str(work / "home")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    from ridl.projects import Project, Scope, create_project

    today = dt.date.today()
    create_project(
        Project(
            id="bench", reb_number="REB-BENCH", title="benchmark", pi="PI",
            approved=today - dt.timedelta(days=1), expires=today + dt.timedelta(days=30),
            scope=Scope(dt.date(2015, 1, 1), dt.date(2024, 12, 31), ("CT", "CR", "US"),
                        ("SITE-A", "SITE-B", "SITE-C")),
        )
    )  # fmt: skip
    sources = {}
    for label, n, seed in (("large", large, 1), ("small", small, 2)):
        t0 = time.perf_counter()
        files = make_dir(work / label, n, seed)
        sources[label] = (f"folder:{work / label / 'dir'}", files)
        print(f"synthetic DIR '{label}': {files} files in {time.perf_counter() - t0:.0f} s")

    # Start Prefect's ephemeral API before timing anything: a site runs against a running server.
    from prefect import flow

    flow(name="ridl-warm-up")(lambda: None)()

    rows: list[dict[str, Any]] = []
    cases = [("large", 1), ("large", 2), ("small", 1)]
    for label, workers in cases:
        source, files = sources[label]
        rel = f"{label}-{workers}w"
        plain = plain_run("bench", f"plain-{rel}", source, f"file:{work / 'plain' / rel}", workers)
        run = prefect_run("bench", f"flow-{rel}", source, f"file:{work / 'flow' / rel}", workers)
        instances = run["log"]["instances"]
        rows.append(
            {
                "archive": label,
                "files": files,
                "workers": workers,
                "instances": instances,
                "exported": run["summary"]["instances_exported"],
                "prefect_wall_s": round(run["wall"], 2),
                "plain_wall_s": round(plain, 2),
                "instances_per_s": round(instances / run["wall"], 1),
                "plain_instances_per_s": round(instances / plain, 1),
                "prefect_share": round(max(0.0, 1 - plain / run["wall"]), 3),
                "work_s_per_instance_ms": round(1000 * run["log"]["work_seconds"] / instances, 3),
                "peak_rss_mib_per_worker": round(run["log"]["peak_rss_mib"], 1),
            }
        )
        print(json.dumps(rows[-1]))

    one = next(r for r in rows if r["archive"] == "large" and r["workers"] == 1)
    two = next(r for r in rows if r["archive"] == "large" and r["workers"] == 2)
    small_row = next(r for r in rows if r["archive"] == "small")
    ratios = {
        "speedup_2_workers": round(two["instances_per_s"] / one["instances_per_s"], 2),
        "memory_large_over_small": round(
            one["peak_rss_mib_per_worker"] / small_row["peak_rss_mib_per_worker"], 2
        ),
    }
    header = (
        f"{'archive':<7} {'files':>6} {'wkr':>3} {'inst/s':>7} {'plain/s':>7} "
        f"{'prefect%':>8} {'ms/inst':>7} {'peak MiB':>8}"
    )
    print("\n" + header)
    for r in rows:
        print(
            f"{r['archive']:<7} {r['files']:>6} {r['workers']:>3} {r['instances_per_s']:>7} "
            f"{r['plain_instances_per_s']:>7} {100 * r['prefect_share']:>7.1f}% "
            f"{r['work_s_per_instance_ms']:>7} {r['peak_rss_mib_per_worker']:>8}"
        )
    print(
        f"\n2 workers vs 1: x{ratios['speedup_2_workers']}; peak memory {large} vs {small} "
        f"instances: x{ratios['memory_large_over_small']}"
    )
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "quick": args.quick,
        "batch_size": BATCH_SIZE,
        "rows": rows,
        "ratios": ratios,
    }
    out = (
        ROOT
        / "benchmarks"
        / "results"
        / ("end_to_end_quick.json" if args.quick else "end_to_end.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
