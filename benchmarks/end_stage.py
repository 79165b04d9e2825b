"""What verification costs now that it runs in the stream, and what is left for the end stage.

Builds a synthetic DIR (``ridl.synth``, 1,000 patients: about 2,500 studies), runs the per-study
work over it in this process (as a batch task does, without Prefect), then the end stage as
``flows.extract`` runs it: manifest, report, gate (verification records, listing, a sample read
back), signing and publishing. Two figures:

* the end stage against the batches' wall time (target: at most 5 %);
* stream verification (dictionary from the headers already read, terms kept on premises,
  search of every object before it is stored) against de-identification, per object (target:
  at most 25 %).

Prints a table and writes JSON to ``benchmarks/results/end_stage.json``.

    python benchmarks/end_stage.py            # 1,000 patients (~2,500 studies)
    python benchmarks/end_stage.py --quick    # 100 patients
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPENT: dict[str, float] = defaultdict(float)


def _timed(label: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with the CPU time of its thread added to ``SPENT[label]`` (instrumentation).

    Thread CPU time, not wall time: the per-object split must not depend on what else the
    machine runs (the batches' and the end stage's wall times are measured as wall times).
    """

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return func(*args, **kwargs)
        finally:
            SPENT[label] += time.thread_time() - t0

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 patients")
    args = parser.parse_args()
    if args.quick:
        args.patients = 100

    home = Path(tempfile.mkdtemp(prefix="ridl-bench-end-"))
    os.environ["RIDL_HOME"] = str(home)
    import flows.work as work
    from export.identifiers import IdentifierDictionary
    from export.local import LocalStore
    from export.manifest import build_manifest
    from export.phi_scan import Verifier
    from export.release import publish_release
    from export.report import write_report
    from flows.gate import gate_release
    from flows.runplan import prepare_run, recipe_sha256
    from ridl.projects import Project, Scope, create_project
    from ridl.synth import synthesize

    # Instrument the two halves of the per-object work.
    work._deidentify = _timed("deidentify", work._deidentify)  # type: ignore[assignment]
    Verifier.check_bytes = _timed("verify: search", Verifier.check_bytes)  # type: ignore[method-assign]
    IdentifierDictionary.add_header = _timed(  # type: ignore[method-assign]
        "verify: dictionary", IdentifierDictionary.add_header
    )
    work.keep_study_terms = _timed("verify: keep terms", work.keep_study_terms)
    work.Worker.learn = _timed("verify: cross-study terms", work.Worker.learn)  # type: ignore[method-assign]

    t0 = time.perf_counter()
    synth = synthesize(home / "dir", patients=args.patients, sites=3, seed=1)
    synth_s = time.perf_counter() - t0
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
    store_root = home / "store"
    plan = prepare_run("bench", "r1", f"folder:{synth.root}", f"file:{store_root}")
    ctx = plan.ctx
    t0 = time.perf_counter()
    counts = work.process_batch(ctx, plan.studies)
    batch_s = time.perf_counter() - t0
    stream = dict(SPENT)  # the gate searches too: only the stream's share is compared
    store = LocalStore(store_root)

    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    build_manifest(store, ctx.prefix, len(plan.studies), "bench", "r1")
    stages["manifest"] = time.perf_counter() - t0
    worker = work.worker_for(ctx)
    years = {worker.study_key(s): s.study_date[:4] or "unknown" for s in plan.studies}
    t0 = time.perf_counter()
    write_report(store, ctx.prefix, years)
    stages["report"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = gate_release("bench", "r1", store.url)
    stages["gate"] = time.perf_counter() - t0
    assert report.passed, report.render()
    t0 = time.perf_counter()
    publish_release(store.url, "bench", "r1", recipe_sha256=recipe_sha256(ctx.recipe))
    stages["sign and publish"] = time.perf_counter() - t0
    end_s = sum(stages.values())
    gate_and_publish = stages["gate"] + stages["sign and publish"]

    objects = counts.exported
    deid = stream["deidentify"]
    verify = sum(v for k, v in stream.items() if k.startswith("verify"))
    rows = [
        ("studies", len(plan.studies), ""),
        ("objects exported", objects, ""),
        ("batches' wall time (one process), s", round(batch_s, 2), ""),
        ("de-identification, CPU ms/object", round(1000 * deid / objects, 3), ""),
        ("stream verification, CPU ms/object", round(1000 * verify / objects, 3), ""),
        ("  of which search", round(1000 * stream["verify: search"] / objects, 3), ""),
        ("  of which dictionary", round(1000 * stream["verify: dictionary"] / objects, 3), ""),
        ("  of which terms kept", round(1000 * stream["verify: keep terms"] / objects, 3), ""),
        (
            "  of which cross-study",
            round(1000 * stream["verify: cross-study terms"] / objects, 3),
            "",
        ),
        ("stream verification / de-identification", f"{verify / deid:.1%}", "target <= 25%"),
        ("end stage: manifest, s", round(stages["manifest"], 2), ""),
        ("end stage: report, s", round(stages["report"], 2), ""),
        ("end stage: gate, s", round(stages["gate"], 2), ""),
        ("end stage: sign and publish, s", round(stages["sign and publish"], 2), ""),
        ("gate + signing + publishing / batches", f"{gate_and_publish / batch_s:.1%}", "<= 5%"),
        ("whole end stage / batches", f"{end_s / batch_s:.1%}", ""),
        ("objects read back by the gate", report.objects_checked, ""),
    ]
    print(f"\n{args.patients} patients, synthetic DIR built in {synth_s:.1f}s")
    for name, value, note in rows:
        print(f"{name:<44} {value!s:>12} {note}")
    result = {
        "benchmark": "end_stage",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "patients": args.patients,
        "studies": len(plan.studies),
        "objects": objects,
        "bytes": counts.bytes,
        "batch_seconds": batch_s,
        "deidentify_seconds": deid,
        "verify_seconds": dict(sorted((k, v) for k, v in stream.items() if k.startswith("verify"))),
        "verify_over_deid": verify / deid,
        "end_stage_seconds": stages,
        "gate_and_publish_over_batches": gate_and_publish / batch_s,
        "end_stage_over_batches": end_s / batch_s,
        "objects_read_back": report.objects_checked,
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = "end_stage-quick.json" if args.quick else "end_stage.json"
    (out / name).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / name}")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
