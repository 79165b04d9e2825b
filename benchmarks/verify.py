"""What the verification gate costs next to de-identification, on the same release.

Builds a synthetic DIR, de-identifies it into a release (the per-study work, without Prefect),
then verifies that release, several rounds each, side by side in one process. Prints a table
and writes JSON to ``benchmarks/results/verify.json``.

    python benchmarks/verify.py              # 40 patients, 3 rounds, 512x512 CT and CR
    python benchmarks/verify.py --quick      # 12 patients, 1 round, 128x128
    python benchmarks/verify.py --rows 64    # the synthetic DIR's own tiny images

The full mode (``ridl verify --full``) is timed with one worker process and with two, side by
side (the dictionary is built once, in the parent, either way; the search is what is shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _resize_images(files: list[Path], rows: int) -> None:
    """Give the synthetic CT and CR images a realistic size (random 16-bit pixels)."""
    import numpy as np
    from pydicom import dcmread

    rng = np.random.default_rng(0)
    for path in files:
        try:
            ds = dcmread(path)
        except Exception:
            continue  # the damaged files stay damaged
        if "PixelData" not in ds or ds.get("Modality") not in ("CT", "CR"):
            continue
        if ds.get("BitsAllocated") != 16 or ds.get("SamplesPerPixel") != 1:
            continue
        if len(ds.PixelData) < int(ds.Rows) * int(ds.Columns) * 2:
            continue  # the truncated object must stay truncated
        ds.Rows = ds.Columns = rows
        ds.PixelData = rng.integers(0, 2000, size=(rows, rows), dtype=np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=512, help="CT/CR image size (rows=columns)")
    parser.add_argument("--quick", action="store_true", help="12 patients, 1 round, 128 rows")
    args = parser.parse_args()
    if args.quick:
        args.patients, args.rounds, args.rows = 12, 1, 128

    home = Path(tempfile.mkdtemp(prefix="ridl-bench-verify-"))
    os.environ["RIDL_HOME"] = str(home)
    from export.local import LocalStore
    from export.manifest import build_manifest
    from flows.gate import build_dictionary, verify_release
    from flows.runplan import prepare_run
    from flows.work import process_batch, worker_for
    from ridl.projects import Project, Scope, create_project
    from ridl.synth import synthesize

    synth = synthesize(home / "dir", patients=args.patients, sites=3, seed=1)
    if args.rows != 64:
        _resize_images(synth.files, args.rows)
    today = dt.date.today()
    create_project(
        Project(
            id="bench",
            reb_number="B",
            title="bench",
            pi="b",
            approved=today - dt.timedelta(days=1),
            expires=today + dt.timedelta(days=1),
            scope=Scope(
                dt.date(2015, 1, 1),
                dt.date(2024, 12, 31),
                ("CT", "CR", "US"),
                ("SITE-A", "SITE-B", "SITE-C"),
            ),
        )
    )
    deid_s: list[float] = []
    dict_s: list[float] = []
    verify_s: list[float] = []
    full2_s: list[float] = []  # the full mode again in two worker processes
    objects = nbytes = 0
    for r in range(args.rounds):
        store_root = home / f"store{r}"
        release = f"r{r}"
        plan = prepare_run("bench", release, f"folder:{synth.root}", f"file:{store_root}")
        worker_for.cache_clear()
        t0 = time.perf_counter()
        counts = process_batch(plan.ctx, plan.studies)
        deid_s.append(time.perf_counter() - t0)
        build_manifest(LocalStore(store_root), plan.ctx.prefix, len(plan.studies), "bench", release)
        t0 = time.perf_counter()
        build_dictionary("bench", release)
        dict_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        report = verify_release("bench", release, f"file:{store_root}", ocr=False, workers=1)
        verify_s.append(time.perf_counter() - t0)
        assert report.passed, report.render()
        t0 = time.perf_counter()
        two = verify_release("bench", release, f"file:{store_root}", ocr=False, workers=2)
        full2_s.append(time.perf_counter() - t0)
        assert two.passed and two.objects_checked == report.objects_checked
        objects, nbytes = report.objects_checked, report.bytes_checked
        print(f"round {r + 1}: {counts.exported} objects de-identified")
    deid = statistics.median(deid_s)
    verify = statistics.median(verify_s)
    full2 = statistics.median(full2_s)
    rows = [
        ("de-identify (per-study work)", deid, 1.0),
        ("verify: dictionary from source headers", statistics.median(dict_s), None),
        ("verify --full --workers 1 (dictionary + search)", verify, verify / deid),
        ("verify --full --workers 2 (dictionary + search)", full2, full2 / deid),
    ]
    print(f"\n{objects} objects, {nbytes / 1e6:.1f} MB, {args.rounds} round(s), median seconds")
    print(f"{'step':<50} {'seconds':>9} {'x de-id':>9}")
    for name, secs, ratio in rows:
        shown = f"{ratio:.2f}" if ratio is not None else ""
        print(f"{name:<50} {secs:>9.3f} {shown:>9}")
    print(f"full mode, 1 worker / 2 workers: {verify / full2:.2f}x")
    result = {
        "benchmark": "verify",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "patients": args.patients,
        "rows": args.rows,
        "rounds": args.rounds,
        "objects": objects,
        "bytes": nbytes,
        "deid_seconds": deid_s,
        "dictionary_seconds": dict_s,
        "verify_seconds": verify_s,
        "verify_over_deid": verify / deid,
        "full_workers_2_seconds": full2_s,
        "full_workers_1_over_2": verify / full2,
        "load": os.getloadavg(),
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify.json").write_text(json.dumps(result, indent=2))
    print(f"\nverify costs {verify / deid:.2f}x de-identification; wrote {out / 'verify.json'}")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
