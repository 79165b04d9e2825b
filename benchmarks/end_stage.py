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
    python benchmarks/end_stage.py --mix 2    # realistic study sizes, 2 patients
    python benchmarks/end_stage.py --mix 8 --cross-terms 20000   # a worker at the terms cap
    python benchmarks/end_stage.py --ct-slices 100   # 2,500 studies of archive-like sizes

The synthetic DIR's images are tiny (64 x 64 CT slices, 128 x 128 radiographs, 3 objects a study),
so its per-object de-identification is unrealistically cheap. ``--mix N`` replaces it with N
patients of realistic studies (each: a CT series of 100 slices 512 x 512, a CR study of 2 images
2,000 x 2,500, a US study of 3 images 640 x 480 RGB; same identifying headers as ``ridl.synth``)
and writes ``benchmarks/results/end_stage-mix.json``.

``--ct-slices N`` gives each synthetic CT series N slices (``ridl.synth``'s default is 4): with
100, the synthetic release has about 35 objects a study, as a hospital archive has (hundreds of
millions of objects in 7 million studies), its images still tiny (``-ctN`` is added to the JSON
file's name).

``--cross-terms N`` starts the run with N cross-study staff names already known (as a worker
of a project that has run for years starts: ``ridl.crossterms`` keeps up to
``MAX_TERMS_PER_RUN``); every study of the DIR names staff never seen before, so each teaches
the worker new terms (``-cross`` is added to the JSON file's name).
"""

from __future__ import annotations

import argparse
import dataclasses
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


def _first_header_timed(func: Callable[..., Any]) -> Callable[..., Any]:
    """``IdentifierDictionary.add_header`` timed as ``verify: dictionary``, the first header of
    each dictionary (a study's: everything is parsed) also under ``first header`` (the later
    headers of a study mostly replay elements already read)."""
    import weakref

    started: weakref.WeakSet[Any] = weakref.WeakSet()

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        first = self not in started
        started.add(self)
        t0 = time.thread_time()
        try:
            return func(self, *args, **kwargs)
        finally:
            spent = time.thread_time() - t0
            SPENT["verify: dictionary"] += spent
            if first:
                SPENT["first header"] += spent

    return wrapper


def _compile_timed(func: Callable[..., Any]) -> Callable[..., Any]:
    """``IdentifierDictionary.automaton`` with the time of the calls that compile (not those
    answered from its cache) added to ``SPENT["compile"]``.

    Read on the wall clock (45 ns a reading here), not the thread's CPU clock (0.57 µs: a system
    call): the search asks for its automata two or three times an object, and two CPU clock
    readings around each answer from the cache added about 2.5 µs an object to the search's own
    measurement, 0.9 points of the ratio (before the twelfth pass of README "Cost of
    verification"). A compile is pure CPU work in this one process, so its wall time is its CPU
    time."""

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        cached = len(self._automata)
        t0 = time.perf_counter()
        try:
            return func(self, *args, **kwargs)
        finally:
            if len(self._automata) != cached:
                SPENT["compile"] += time.perf_counter() - t0

    return wrapper


def realistic_dir(root: Path, patients: int, seed: int = 1) -> None:
    """Write ``patients`` x 3 studies of realistic sizes under ``root`` (see the module doc).

    Headers come from ``ridl.synth`` (names, IDs, birth date, address, telephone, accession,
    request attributes, private block); pixels are random noise of the study's real size.
    """
    import random

    import numpy as np

    from ridl import synth

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    uids = synth._Uids(seed)
    sites = ("SITE-A", "SITE-B", "SITE-C")
    kinds = (  # (modality, SOP class, objects, rows, columns, RGB)
        ("CT", synth.CT_IMAGE, 100, 512, 512, False),
        ("CR", synth.CR_IMAGE, 2, 2500, 2000, False),
        ("US", synth.US_IMAGE, 3, 480, 640, True),
    )
    for i in range(patients):
        person = synth._person(rng, i)
        reg = synth.Registration(person, sites[i % len(sites)], f"MRN{rng.randrange(10**6):06d}")
        for modality, sop_class, count, rows, cols, rgb in kinds:
            days = rng.randrange((synth.LAST_DATE - synth.FIRST_DATE).days)
            date = synth.FIRST_DATE + dt.timedelta(days=days)
            study_uid, series_uid = uids(), uids()
            accession = f"ACC{rng.randrange(10**7):07d}"
            folder = root / reg.issuer / accession
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(1, count + 1):
                ds = synth._base(reg, date, study_uid, accession, uids)
                ds.Modality = modality
                ds.SeriesInstanceUID = series_uid
                ds.SeriesNumber = 1
                ds.InstanceNumber = n
                ds.ImageType = ["ORIGINAL", "PRIMARY"]
                if modality == "CT":
                    ds.ImagePositionPatient = [0.0, 0.0, 2.0 * n]
                    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
                    ds.PixelSpacing = [0.7, 0.7]
                    ds.SliceThickness = 2.0
                    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
                    pixels = nrng.integers(0, 2000, size=(rows, cols), dtype=np.int16)
                elif rgb:
                    pixels = nrng.integers(0, 255, size=(rows, cols, 3), dtype=np.uint8)
                    ds.BurnedInAnnotation = "NO"
                else:
                    pixels = nrng.integers(0, 4095, size=(rows, cols), dtype=np.uint16)
                synth._image(ds, pixels, "RGB" if rgb else "MONOCHROME2")
                synth._finish(ds, sop_class, uids())
                ds.save_as(folder / f"{modality.lower()}_{n:03d}.dcm", enforce_file_format=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 patients")
    parser.add_argument(
        "--mix", type=int, default=0, metavar="N", help="N patients of realistic study sizes"
    )
    parser.add_argument(
        "--cross-terms", type=int, default=0, metavar="N", help="N staff names known at the start"
    )
    parser.add_argument(
        "--ct-slices",
        type=int,
        default=0,
        metavar="N",
        help="N slices per synthetic CT series (ridl.synth's default: 4)",
    )
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
    IdentifierDictionary.add_header = _first_header_timed(  # type: ignore[method-assign]
        IdentifierDictionary.add_header
    )
    # Compiling a study's automaton happens inside the search: timed apart as well (its label
    # is not a "verify: " one, so it is not counted twice), to split per study from per object.
    IdentifierDictionary.automaton = _compile_timed(  # type: ignore[method-assign]
        IdentifierDictionary.automaton
    )
    work.keep_study_terms = _timed("verify: keep terms", work.keep_study_terms)
    work.Worker.learn = _timed("verify: cross-study terms", work.Worker.learn)  # type: ignore[method-assign]
    work.Worker.cross_dictionary = _timed(  # type: ignore[method-assign]
        "verify: cross-study terms", work.Worker.cross_dictionary
    )

    t0 = time.perf_counter()
    source = home / "dir"
    if args.mix:
        args.patients = args.mix
        realistic_dir(source, args.mix)
    else:
        synthesize(source, patients=args.patients, sites=3, seed=1, ct_slices=args.ct_slices or 4)
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
    plan = prepare_run("bench", "r1", f"folder:{source}", f"file:{store_root}")
    ctx = plan.ctx
    if args.cross_terms:
        known = tuple(("staff", f"Staffname{i:06d}^Known") for i in range(args.cross_terms))
        ctx = dataclasses.replace(ctx, cross_terms=known)
    # A worker's fixed cost at its start, apart: its cross-study terms compiled once.
    t0 = time.perf_counter()
    for dictionary in work.worker_for(ctx).cross_dictionary().dictionaries:
        dictionary.automaton(())
    start_s = time.perf_counter() - t0
    SPENT.clear()
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
    studies = len(plan.studies)
    deid = stream["deidentify"]
    verify = sum(v for k, v in stream.items() if k.startswith("verify"))
    # What a study costs once (its first header, its automata compiled, its terms kept, the
    # cross-study terms it teaches) and what each object costs (the other headers, the search):
    # the ratio for studies of other sizes follows (about 40 objects a study at the seed's
    # scale: hundreds of millions of objects in 7 million studies).
    fixed = (
        stream["first header"]
        + stream["compile"]
        + stream["verify: keep terms"]
        + stream["verify: cross-study terms"]
    )
    variable = verify - fixed
    per_study_ms, per_object_ms = 1000 * fixed / studies, 1000 * variable / objects
    deid_ms = 1000 * deid / objects

    def ratio_at(size: float) -> float:
        return (per_study_ms / size + per_object_ms) / deid_ms

    rows = [
        ("studies", studies, ""),
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
        ("cross-study terms known at the start", args.cross_terms, ""),
        ("  worker start: built and compiled, s", round(start_s, 2), "once per worker"),
        ("stream verification / de-identification", f"{verify / deid:.1%}", "target <= 25%"),
        ("  per study once, CPU ms/study", round(per_study_ms, 3), "first header, compile, terms"),
        ("  per object, CPU ms/object", round(per_object_ms, 3), "other headers, search"),
        ("  objects per study here", round(objects / studies, 2), ""),
        ("  ratio at 10 objects per study", f"{ratio_at(10):.1%}", "same objects, computed"),
        ("  ratio at 40 objects per study", f"{ratio_at(40):.1%}", "seed: ~40"),
        ("end stage: manifest, s", round(stages["manifest"], 2), ""),
        ("end stage: report, s", round(stages["report"], 2), ""),
        ("end stage: gate, s", round(stages["gate"], 2), ""),
        ("end stage: sign and publish, s", round(stages["sign and publish"], 2), ""),
        ("gate + signing + publishing / batches", f"{gate_and_publish / batch_s:.1%}", "<= 5%"),
        ("whole end stage / batches", f"{end_s / batch_s:.1%}", ""),
        ("objects read back by the gate", report.objects_checked, ""),
    ]
    shape = "realistic studies" if args.mix else "synthetic DIR"
    print(f"\n{args.patients} patients, {shape} built in {synth_s:.1f}s")
    for name, value, note in rows:
        print(f"{name:<44} {value!s:>12} {note}")
    result = {
        "benchmark": "end_stage",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "patients": args.patients,
        "dir": "realistic mix" if args.mix else "ridl.synth",
        "cross_terms_at_start": args.cross_terms,
        "ct_slices": args.ct_slices or (None if args.mix else 4),
        "worker_start_seconds": start_s,
        "studies": studies,
        "objects": objects,
        "bytes": counts.bytes,
        "batch_seconds": batch_s,
        "deidentify_seconds": deid,
        "verify_seconds": dict(sorted((k, v) for k, v in stream.items() if k.startswith("verify"))),
        "verify_over_deid": verify / deid,
        "verify_per_study_ms": per_study_ms,
        "verify_per_object_ms": per_object_ms,
        "verify_over_deid_at_objects_per_study": {n: ratio_at(n) for n in (10, 40)},
        "compile_seconds": stream["compile"],
        "first_header_seconds": stream["first header"],
        "end_stage_seconds": stages,
        "gate_and_publish_over_batches": gate_and_publish / batch_s,
        "end_stage_over_batches": end_s / batch_s,
        "objects_read_back": report.objects_checked,
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = "end_stage-mix.json" if args.mix else "end_stage.json"
    name = "end_stage-quick.json" if args.quick else name
    if args.cross_terms:
        name = name.replace(".json", "-cross.json")
    if args.ct_slices:
        name = name.replace(".json", f"-ct{args.ct_slices}.json")
    (out / name).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / name}")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
