"""Retrieval at the archive's pace: the same studies fetched from Orthanc by dcmtk ``getscu`` and by
ridl over C-GET, C-MOVE and WADO-RS, and read from a folder; then a DIMSE-source batch against a
folder-source batch on the same data.

The synthetic DIR (``synthesize(ct_size=512)``: CT slices of 512 x 512, plus the small CR, US,
SR, KO objects of the synthetic DIR) is loaded into an Orthanc started with ``TCP_NODELAY=1``
and ``MaximumPduLength`` 131072 (tests/orthanc.py). ``getscu`` runs as a whole process per
study (``TCP_NODELAY=1``, ``--max-pdu 131072``, to a temp folder); ridl's sources fetch the
whole selection through their fetch API inside one retrieval session (one association);
"folder read" reads every file's bytes. The run part times ``process_batch`` (the batch's work,
retrieval included) for a ``folder:`` source and for a ``dimse://`` C-GET source on the same
studies, each into a fresh local store; the DIMSE batch twice, retrieving in the worker's
retrieval process (``flows.retrieval``, as a run does) and in its prefetch thread (before).

Usage: ``python benchmarks/retrieval.py [--quick]``. Prints a table of instances/s and ratios
to ``getscu``, and writes ``benchmarks/results/retrieval[-quick].json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402


def getscu(server: Any, uids: list[str], out: Path) -> tuple[float, int]:
    """Seconds and instances (files received) for dcmtk's getscu to fetch every study (one
    process each) into ``out``."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    t0 = time.perf_counter()
    for uid in uids:
        folder = out / uid
        folder.mkdir(parents=True)
        subprocess.run(
            ["getscu", "-aet", "RIDL", "-aec", "ORTHANC", "--max-pdu", "131072", "-S",
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
             "-od", str(folder), "127.0.0.1", str(server.dicom_port)],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
    elapsed = time.perf_counter() - t0
    received = sum(1 for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    return elapsed, received


def fetch_all(url: str, refs: list[Any], work: Path, limits: Any) -> tuple[float, int]:
    """Seconds and instances for a ridl source to fetch every study (one session)."""
    from ridl.sources.base import open_source

    source = open_source(url, limits)
    n = 0
    t0 = time.perf_counter()
    with source.session():  # type: ignore[attr-defined]
        for ref in refs:
            folder = work / ref.study_uid
            n += len(source.fetch_study(ref, folder))
            source.release_study(ref, folder)
    return time.perf_counter() - t0, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer patients and slices")
    args = parser.parse_args()
    patients, slices = (3, 30) if args.quick else (8, 100)

    work = Path(tempfile.mkdtemp(prefix="ridl-retrieval-"))
    os.environ["RIDL_HOME"] = str(work / "home")
    from flows.runplan import prepare_run
    from flows.work import process_batch
    from ridl.projects import Project, Scope, create_project
    from ridl.sources.dimse import DimseSource
    from ridl.sources.protect import ArchiveLimits
    from ridl.synth import synthesize
    from tests.orthanc import Orthanc, dicom_files

    today = dt.date.today()
    create_project(
        Project(
            id="bench", reb_number="REB-BENCH", title="benchmark", pi="PI",
            approved=today - dt.timedelta(days=1), expires=today + dt.timedelta(days=30),
            scope=Scope(dt.date(2015, 1, 1), dt.date(2024, 12, 31), ("CT", "CR", "US"),
                        ("SITE-A", "SITE-B", "SITE-C")),
        )
    )  # fmt: skip
    report = synthesize(
        work / "dir", patients=patients, sites=3, seed=11, ct_slices=slices, ct_size=512
    )
    files = dicom_files(report.files)
    limits = ArchiveLimits(rate_limit=0)
    rows: list[dict[str, Any]] = []
    runs: dict[str, float] = {}
    try:
        with Orthanc("/usr/sbin/Orthanc", work / "orthanc") as server:
            server.upload(files)
            plan = prepare_run("bench", "r0", f"folder:{report.root}", f"file:{work / 'p'}")
            refs = plan.studies
            uids = [ref.study_uid for ref in refs]
            selected = [report.root / p for ref in refs for p in ref.locations]
            instances = sum(1 for p in selected if p.read_bytes()[128:132] == b"DICM")
            mb = sum(p.stat().st_size for p in selected) / 1e6
            print(f"{len(refs)} studies, {instances} instances, {mb:.0f} MB (CT {slices} x 512^2)")

            t0 = time.perf_counter()
            for p in selected:
                p.read_bytes()
            rows.append({"method": "folder read", "seconds": time.perf_counter() - t0})
            getscu(server, uids, work / "warm")  # warm Orthanc's cache and the page cache
            # What the archive holds may differ from the folder's files (the synthetic DIR's
            # truncated object is not stored by Orthanc): each method's rate uses what it
            # received.
            seconds, n = getscu(server, uids, work / "gs")
            rows.append({"method": "getscu", "seconds": seconds, "instances": n})
            for label, url in (
                ("ridl C-GET", server.dimse_url("get")),
                ("ridl C-MOVE", server.dimse_url("move")),
                ("ridl WADO-RS", server.dicomweb_url()),
            ):
                seconds, n = fetch_all(url, refs, work / "w", limits)
                rows.append({"method": label, "seconds": seconds, "instances": n})

            # The first batch pays for building the worker (recipe, keys): a warm-up, not timed.
            for n, (label, url) in enumerate(
                (
                    ("warm-up", f"folder:{report.root}"),
                    ("folder", f"folder:{report.root}"),
                    ("dimse C-GET, prefetch thread", server.dimse_url("get")),
                    ("dimse C-GET", server.dimse_url("get")),
                )
            ):
                # Before: the prefetch thread retrieved in the worker's own process; now the
                # worker's retrieval process does (flows.retrieval). Both are timed.
                DimseSource.retrieves_in_process = label != "dimse C-GET, prefetch thread"
                release = f"batch{n}"
                plan = prepare_run("bench", release, url, f"file:{work / 'p2'}")
                ctx = dataclasses.replace(plan.ctx, limits=limits)
                store = work / f"store-{release}"
                ctx = dataclasses.replace(ctx, store_url=f"file:{store}")
                t0 = time.perf_counter()
                process_batch(ctx, plan.studies)
                runs[label] = time.perf_counter() - t0
                shutil.rmtree(store, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = next(r["seconds"] for r in rows if r["method"] == "getscu")
    print(f"\n{'method':14} {'seconds':>8} {'inst/s':>8} {'vs getscu':>9}")
    for r in rows:
        r["instances"] = r.get("instances", instances)
        r["instances_per_s"] = round(r["instances"] / r["seconds"], 1)
        r["vs_getscu"] = round(base / r["seconds"], 3)
        r["seconds"] = round(r["seconds"], 3)
        print(f"{r['method']:14} {r['seconds']:>8.2f} {r['instances_per_s']:>8.1f} "
              f"{r['vs_getscu']:>9.2f}")  # fmt: skip
    ratio = runs["dimse C-GET"] / runs["folder"]
    thread = runs["dimse C-GET, prefetch thread"] / runs["folder"]
    print(f"\nbatch: folder {runs['folder']:.2f} s, dimse C-GET {runs['dimse C-GET']:.2f} s "
          f"({ratio:.2f}x the folder run; target <= 1.25x); retrieving in the prefetch thread "
          f"instead of a retrieval process: {runs['dimse C-GET, prefetch thread']:.2f} s "
          f"({thread:.2f}x)")  # fmt: skip
    out = (
        ROOT
        / "benchmarks"
        / "results"
        / ("retrieval-quick.json" if args.quick else "retrieval.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": dt.date.today().isoformat(),
                "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(),
                            "python": platform.python_version()},
                "studies": len(uids), "instances": instances, "megabytes": round(mb, 1),
                "ct_slices": slices, "retrieval": rows,
                "batch_seconds": {k: round(v, 3) for k, v in runs.items()},
                "batch_ratio_dimse_to_folder": round(ratio, 3),
                "batch_ratio_dimse_thread_to_folder": round(thread, 3),
            },
            indent=2,
        )
    )  # fmt: skip
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
