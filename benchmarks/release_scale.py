"""A release at the seed's scale, simulated: the end stages on 10^5 and 10^6 objects.

Manifest parts of a synthetic release are written directly (tiny objects: a row each, no
pixel data; ~3 studies per subject; objects per study by modality: CT 100-300, CR/DX 1-4,
US 10-40, MR 100-500), then each end stage runs in its own child process, so its peak memory
(``ru_maxrss``) is its own: manifest (streaming build of the partitioned dataset and the
summary), publish (per-partition checksums and commands, the signed index), report (counts
added up partition by partition) and a cohort pull (``--where "modality = 'CT' AND
study_year >= 2018"`` from the local store; objects are not written for the simulation, so
the pull is run with ``--partition`` over the fetched partitions' rows only).

    python -m benchmarks.release_scale            # 1e5 and 1e6 objects
    python -m benchmarks.release_scale --quick    # 1e4 and 1e5

The anchor is one plain pass over the parts (list, read and parse every part file, nothing
else): the least any one-pass end stage must do. Both sizes take the large-release path
(``RIDL_SMALL_RELEASE_OBJECTS=0``: no single-file manifest.csv or object list) so the growth
ratio compares the same work; ``--as-shipped`` keeps the default, under which 1e5 objects is a
small release and also gets its single files.

Results: ``benchmarks/results/release_scale.json``; the projection to 7 x 10^8 objects is in
``benchmarks/projection.md``. Partitions are capped at ``--rows`` rows (default 50,000 so both
sizes have full partitions; a release uses 500,000).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

MIX = [("CT", 100, 300, 0.35), ("CR", 1, 4, 0.3), ("DX", 1, 4, 0.1), ("US", 10, 40, 0.15)]
MIX += [("MR", 100, 500, 0.1)]


def generate(store_root: Path, prefix: str, objects: int, seed: int = 7) -> int:
    """Write manifest parts totalling about ``objects`` rows; returns the rows written."""
    from export.local import LocalStore
    from export.manifest import ObjectRow, study_part, write_part

    store = LocalStore(store_root)
    rng = random.Random(seed)
    written = subject = 0
    while written < objects:
        subject += 1
        rid = f"RS-{subject:08d}"
        for s in range(rng.choice((1, 2, 3, 3, 4, 5))):
            modality, low, high, _ = rng.choices(MIX, weights=[m[3] for m in MIX])[0]
            n = min(rng.randint(low, high), max(1, objects - written))
            study = f"2.25.{subject}.{s}"
            year = rng.randint(2012, 2024)
            rows = [
                ObjectRow(
                    key=f"{prefix}/{rid}/{study}/{study}.1/{study}.1.{i}.dcm",
                    size=rng.randint(100_000, 600_000),
                    sha256=f"{rng.getrandbits(256):064x}",
                    research_id=rid,
                    study_uid=study,
                    series_uid=f"{study}.1",
                    sop_uid=f"{study}.1.{i}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    modality=modality,
                    study_date=f"{year}0101",
                    study_description="",
                )
                for i in range(n)
            ]
            part = study_part(study, f"site{subject % 3}", rows, excluded={}, quarantined={})
            write_part(store, f"{prefix}/parts/{study}.json", part)
            written += n
            if written >= objects:
                break
    return written


def _stage(name: str, root: str, prefix: str, out: Any) -> None:
    from export import partitions as pt
    from export.local import LocalStore
    from export.manifest import build_manifest, parse_part
    from export.release import publish_release
    from export.report import write_report

    store = LocalStore(Path(root))
    project, release = prefix.split("/")
    t0 = time.perf_counter()  # the stage's own work: imports (~2 s, any size) are left out
    if name == "anchor":
        for info in store.list(f"{prefix}/parts/"):
            parse_part(store.get_bytes(info.key))
    elif name == "manifest":
        build_manifest(store, prefix, 0, project, release)
    elif name == "publish":
        publish_release(store, project, release, recipe_sha256="0" * 64)
    elif name == "report":
        write_report(store, prefix)
    elif name == "cohort":
        query = pt.parse_where("modality = 'CT' AND study_year >= 2018")
        selected = 0
        for bucket, _, table in pt.iter_partitions(store, prefix):
            selected += pt.select_rows(table, query, bucket).num_rows
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    out.put({"stage": name, "seconds": round(seconds, 3), "peak_mib": round(peak, 1)})


STAGES = ("anchor", "manifest", "publish", "report", "cohort")


def run_size(objects: int, rows: int, as_shipped: bool = False) -> dict[str, Any]:
    """Generate a release of ``objects`` rows and time each end stage in a child process."""
    work = Path(tempfile.mkdtemp(prefix="ridl-scale-"))
    home = work / "home"
    os.environ["RIDL_HOME"] = str(home)
    os.environ["RIDL_MANIFEST_PARTITION_ROWS"] = str(rows)
    if not as_shipped:
        os.environ["RIDL_SMALL_RELEASE_OBJECTS"] = "0"
    from ridl.errors import ConfigError
    from ridl.projects import create_project
    from tests.conftest import make_project

    with contextlib.suppress(ConfigError):  # the first size's home is cached: same project
        create_project(make_project())
    prefix = "study-a/r1"
    t0 = time.perf_counter()
    written = generate(work / "store", prefix, objects)
    result: dict[str, Any] = {"objects": written, "generate_s": round(time.perf_counter() - t0, 1)}
    ctx = mp.get_context("spawn")
    for name in STAGES:
        queue = ctx.Queue()
        child = ctx.Process(target=_stage, args=(name, str(work / "store"), prefix, queue))
        child.start()
        result[name] = queue.get()
        child.join()
    result["partitions"] = json.loads((work / "store" / prefix / "summary.json").read_text())[
        "partitions"
    ]
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    """Run both sizes, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e4 and 1e5 objects")
    parser.add_argument("--rows", type=int, default=50_000, help="rows per partition at most")
    parser.add_argument(
        "--as-shipped", action="store_true", help="keep small-release single files (see doc)"
    )
    args = parser.parse_args()
    sizes = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
    results = [run_size(n, args.rows, args.as_shipped) for n in sizes]
    small, large = results
    growth = {
        stage: {
            "time": round(large[stage]["seconds"] / max(small[stage]["seconds"], 1e-6), 2),
            "peak_memory": round(large[stage]["peak_mib"] / small[stage]["peak_mib"], 2),
            "x_anchor": round(large[stage]["seconds"] / max(large["anchor"]["seconds"], 1e-6), 2),
        }
        for stage in STAGES
    }
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores {platform.machine()}, "
        f"Python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "rows_per_partition": args.rows,
        "as_shipped": args.as_shipped,
        "sizes": results,
        "growth": growth,
    }
    head = f"{'stage':<10} {'s small':>9} {'s large':>9} {'time x':>7} {'MiB small':>10} "
    print(head + f"{'MiB large':>10} {'mem x':>6} {'x anchor':>9}")
    for stage in STAGES:
        a, b, g = small[stage], large[stage], growth[stage]
        print(
            f"{stage:<10} {a['seconds']:>9.1f} {b['seconds']:>9.1f} {g['time']:>7.2f} "
            f"{a['peak_mib']:>10.0f} {b['peak_mib']:>10.0f} {g['peak_memory']:>6.2f} "
            f"{g['x_anchor']:>9.2f}"
        )
    print(f"objects {small['objects']:,} -> {large['objects']:,}; load {report['load_average']}")
    out = (
        Path(__file__).parent
        / "results"
        / ("release_scale-quick.json" if args.quick else "release_scale.json")
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
