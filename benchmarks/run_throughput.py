"""Per-instance work time of a run's ``process_batch``: byte-level fast path vs dataset path.

Both paths run, alternating, on the same frozen selection of one synthetic DIR whose CT slices
are 512x512 (``synthesize(ct_size=512)``), each into a fresh local store, single process. What is
timed is ``process_batch`` over every study (and each study's ``process_study`` on its own: CT
studies per instance, studies of at most four objects per study): one read of each object
(bytes read once, parsed once by pydicom for header, IOCM, checks and triage), curation,
de-identification, hashing and the store's atomic writes, made durable together per study.
The fast path changes only the de-identification step; a separate line times a whole-object
read (``read_whole``) alone, which both paths pay once.

Usage: ``python benchmarks/run_throughput.py [--quick] [--no-ocr]``. Prints a table and writes
``benchmarks/results/run_throughput[-quick][-no-ocr].json``. ``--no-ocr`` runs the same with
the curation's OCR off (``"ocr": false``: no screening, no reading of at-risk objects), which
leaves ridl's own per-object work: the difference is what screening costs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402

# A study of at most this many objects counts as small (CR, DX, US: the bulk of an archive).
SMALL = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer slices and rounds")
    parser.add_argument("--ct-slices", type=int, default=None, help="slices per CT series")
    parser.add_argument("--no-ocr", action="store_true", help="curation without OCR screening")
    args = parser.parse_args()
    slices = args.ct_slices or (10 if args.quick else 40)
    rounds = 3 if args.quick else 5

    work = Path(tempfile.mkdtemp(prefix="ridl-run-tp-"))
    os.environ["RIDL_HOME"] = str(work / "home")
    import flows.work
    from curation.integrity import read_whole
    from flows.runplan import prepare_run
    from flows.work import process_batch
    from ridl.errors import ObjectRejected
    from ridl.projects import Project, Scope, create_project
    from ridl.synth import synthesize

    # Time the de-identification step (de-identify + encode) on its own as well, the one step
    # the two paths do differently; the wrapper calls the real function.
    step = {"s": 0.0}
    real_step = flows.work._deidentify

    def timed_step(*a: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real_step(*a)
        finally:
            step["s"] += time.perf_counter() - t0

    flows.work._deidentify = timed_step  # type: ignore[assignment]

    # Each study's work on its own, by size: a CT study's cost per instance, and the cost of a
    # small study (at most SMALL objects: CR, US) per study, the fixed cost per study included.
    per_study: list[tuple[int, float]] = []
    real_study = flows.work.process_study

    def timed_study(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        outcome = real_study(*a, **k)
        met = outcome.exported + sum(outcome.excluded.values()) + sum(outcome.quarantined.values())
        per_study.append((met, time.perf_counter() - t0))
        return outcome

    flows.work.process_study = timed_study  # type: ignore[assignment]

    today = dt.date.today()
    create_project(
        Project(
            id="bench", reb_number="REB-BENCH", title="benchmark", pi="PI",
            approved=today - dt.timedelta(days=1), expires=today + dt.timedelta(days=30),
            scope=Scope(dt.date(2015, 1, 1), dt.date(2024, 12, 31), ("CT", "CR", "US"),
                        ("SITE-A", "SITE-B", "SITE-C")),
        )
    )  # fmt: skip
    report = synthesize(work / "dir", patients=20, sites=3, seed=11, ct_slices=slices, ct_size=512)
    files = len(report.files)
    size_mb = sum(p.stat().st_size for p in report.files) / 1e6
    print(f"synthetic DIR: {files} files, {size_mb:.0f} MB, CT {slices} slices of 512x512")
    plan = prepare_run("bench", "r1", f"folder:{work / 'dir'}", f"file:{work / 'plan'}")

    # Best (ms per CT instance, ms per small study) of each path over the rounds.
    by_size = {False: [float("inf"), float("inf")], True: [float("inf"), float("inf")]}

    def one(fast: bool, n: int) -> tuple[float, float, Any]:
        root = work / f"store-{int(fast)}-{n}"
        ctx = dataclasses.replace(plan.ctx, store_url=f"file:{root}", fast_path=fast)
        if args.no_ocr:
            curation = {**json.loads(ctx.curation or "{}"), "ocr": False}
            ctx = dataclasses.replace(ctx, curation=json.dumps(curation))
        step["s"] = 0.0
        per_study.clear()
        t0 = time.perf_counter()
        counts = process_batch(ctx, plan.studies)
        elapsed = time.perf_counter() - t0
        big = [(m, s) for m, s in per_study if m > SMALL]
        small = [s for m, s in per_study if 0 < m <= SMALL]
        if big:
            ms = 1000 * sum(s for _, s in big) / sum(m for m, _ in big)
            by_size[fast][0] = min(by_size[fast][0], ms)
        if small:
            by_size[fast][1] = min(by_size[fast][1], 1000 * sum(small) / len(small))
        shutil.rmtree(root, ignore_errors=True)
        return elapsed, step["s"], counts

    one(False, -1)  # warm-up: workers built, files in the page cache
    one(True, -1)
    best = {False: float("inf"), True: float("inf")}
    best_step = {False: float("inf"), True: float("inf")}
    counts: dict[bool, Any] = {}
    for n in range(rounds):
        for fast in (False, True) if n % 2 == 0 else (True, False):
            elapsed, in_step, counts[fast] = one(fast, n)
            best[fast] = min(best[fast], elapsed)
            best_step[fast] = min(best_step[fast], in_step)
    if counts[False].as_dict() != counts[True].as_dict():
        raise SystemExit("the two paths disagree on counts: not a fair comparison")
    handled = counts[True].exported + sum(counts[True].quarantined.values())
    handled += sum(counts[True].excluded.values())

    good = [p for p in report.files if p not in set(report.truncated) | set(report.not_dicom)]
    whole = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for path in good:
            with contextlib.suppress(ObjectRejected):
                read_whole(path)
        whole = min(whole, time.perf_counter() - t0)

    exported = max(1, counts[True].exported)
    rows: list[dict[str, Any]] = []
    for label, fast in (("dataset path", False), ("fast path", True)):
        rows.append(
            {
                "path": label,
                "wall_s": round(best[fast], 3),
                "instances": handled,
                "exported": counts[fast].exported,
                "ms_per_instance": round(1000 * best[fast] / handled, 3),
                "instances_per_s": round(handled / best[fast], 1),
                "mb_per_s": round(size_mb / best[fast], 1),
                "deid_step_ms_per_exported": round(1000 * best_step[fast] / exported, 3),
                "ms_per_ct_instance": round(by_size[fast][0], 3),
                "ms_per_small_study": round(by_size[fast][1], 3),
            }
        )
    speedup = round(best[False] / best[True], 2)
    step_speedup = round(best_step[False] / best_step[True], 2)
    whole_ms = round(1000 * whole / len(good), 3)
    print(
        f"\n{'path':<13} {'wall s':>7} {'inst':>5} {'ms/inst':>8} {'inst/s':>7} {'MB/s':>6} "
        f"{'deid ms/obj':>11}"
    )
    for r in rows:
        print(
            f"{r['path']:<13} {r['wall_s']:>7} {r['instances']:>5} {r['ms_per_instance']:>8} "
            f"{r['instances_per_s']:>7} {r['mb_per_s']:>6} {r['deid_step_ms_per_exported']:>11}"
        )
    print(f"\n{'path':<13} {'ms per CT instance':>19} {f'ms per study of <= {SMALL}':>22}")
    for r in rows:
        print(f"{r['path']:<13} {r['ms_per_ct_instance']:>19} {r['ms_per_small_study']:>22}")
    print(f"\nfast path vs dataset path: x{speedup} per instance (whole process_batch)")
    print(f"de-identification step alone: x{step_speedup}")
    print(f"of which both pay: curation's whole-object read {whole_ms} ms per instance")
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "quick": args.quick,
        "ocr": not args.no_ocr,
        "ct_slices": slices,
        "files": files,
        "megabytes": round(size_mb, 1),
        "rounds": rounds,
        "rows": rows,
        "speedup_fast_over_dataset": speedup,
        "deid_step_speedup": step_speedup,
        "curation_whole_read_ms_per_instance": whole_ms,
    }
    name = "run_throughput" + ("-quick" if args.quick else "") + ("-no-ocr" if args.no_ocr else "")
    name += ".json"
    out = ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
