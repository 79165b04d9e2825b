"""Selection at scale and retrieval throughput from a real archive (Orthanc).

Part 1 generates a study catalog of 1,000,000 studies (``--quick``: 100,000) and times, in a fresh
process each so peak memory is its own, ridl's selection (pyarrow dataset scan with the date and
site filters pushed down, modality overlap per batch, opt-out and de-duplication) against the
plain way (load the whole Parquet file into pandas, then filter).

Part 2 loads a synthetic DIR into Orthanc (Debian package) and retrieves every study over C-GET,
C-MOVE and WADO-RS through ridl's sources, side by side with reading the same files from the
folder, in instances/s and MB/s.

    python benchmarks/selection.py [--quick] [--studies N] [--patients N]

Prints a table and writes benchmarks/results/selection.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODALITIES = np.array(["CT", "MR", "CR", "DX", "US", "MG", "NM", "PT", "XA", "SR", "KO"])
SITES = [f"SITE-{i:02d}" for i in range(38)]


def generate_catalog(folder: Path, n: int, seed: int = 0) -> Path:
    """A study table like a DIR's: 38 sites, ten years, 1-3 modalities per study, some dups."""
    from ridl.catalog import write_study_rows

    rng = np.random.default_rng(seed)
    ids = pa.array(np.arange(n))
    uid = pc.binary_join_element_wise(
        "1.2.826.0.1.3680043.10.1420.9.", pc.cast(ids, pa.string()), ""
    )
    # About 0.5% of studies arrive from two feeds: same Study Instance UID twice (set below).
    dup = rng.random(n) < 0.005
    base = dt.date(2015, 1, 1).toordinal()
    days = rng.integers(0, 3652, n)
    dates = [dt.date.fromordinal(base + int(d)).strftime("%Y%m%d") for d in range(3652)]
    study_date = pa.array(np.array(dates)[days])
    issuer = pa.array(np.array(SITES)[rng.integers(0, len(SITES), n)])
    patient = pc.binary_join_element_wise(
        "MRN", pc.cast(pa.array(rng.integers(0, n // 3 + 1, n)), pa.string()), ""
    )
    has_hn = rng.random(n) < 0.8
    hn_values = pc.cast(pa.array(rng.integers(10**9, 10**10, n)), pa.string())
    health = pc.if_else(pa.array(has_hn), hn_values, pa.nulls(n, pa.string()))
    counts = rng.integers(1, 4, n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat = MODALITIES[rng.integers(0, len(MODALITIES), int(offsets[-1]))]
    modalities = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    table = pa.table(
        {
            "study_uid": uid,
            "study_date": study_date,
            "issuer": issuer,
            "patient_id": patient,
            "health_number": health,
            "hn_known": pa.array(np.ones(n, dtype=bool)),
            "description": pa.array(
                np.array(["CT HEAD", "CHEST PA", "US ABDO", "MR KNEE"])[days % 4]
            ),
            "modalities": modalities,
            "n_series": pa.array(rng.integers(1, 12, n)),
            "n_instances": pa.array(rng.integers(1, 800, n)),
            "locations": pa.ListArray.from_arrays(
                pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string())
            ),
        }
    )
    # Make the duplicates real: copy the previous row's UID.
    uids = table.column("study_uid").to_numpy(zero_copy_only=False)
    idx = np.nonzero(dup)[0]
    idx = idx[idx > 0]
    uids[idx] = uids[idx - 1]
    table = table.set_column(0, "study_uid", pa.array(uids))
    write_study_rows(table, folder)
    return folder / "studies.parquet"


def peak_rss_kb() -> int:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it is not inherited from
    the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(method: str, catalog: str, scope_name: str) -> dict[str, Any]:
    """Runs in its own process: one selection, its time and the process's peak memory."""
    import pandas as pd

    from ridl.catalog import select
    from ridl.projects import Scope

    scopes = {
        "narrow": Scope(dt.date(2020, 1, 1), dt.date(2020, 12, 31), ("CT",), tuple(SITES[:3])),
        "wide": Scope(dt.date(2015, 1, 1), dt.date(2024, 12, 31), ("CT", "MR"), tuple(SITES)),
    }
    scope = scopes[scope_name]
    base_rss = peak_rss_kb()
    start = time.perf_counter()
    if method == "ridl":
        chosen = select(Path(catalog).parent, scope).studies
    else:  # load everything, filter in pandas
        frame = pd.read_parquet(catalog)
        keep = (
            frame["study_date"].between(
                scope.date_from.strftime("%Y%m%d"), scope.date_to.strftime("%Y%m%d")
            )
            & frame["issuer"].isin(scope.sites)
            & frame["modalities"].apply(lambda m: bool(set(scope.modalities).intersection(m)))
        )
        chosen = frame[keep].drop_duplicates("study_uid")
    seconds = time.perf_counter() - start
    peak = peak_rss_kb()
    return {
        "method": method,
        "scope": scope_name,
        "selected": len(chosen),
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak / 1024, 1),
        "rss_growth_mb": round((peak - base_rss) / 1024, 1),
    }


def selection_part(n: int, work: Path) -> list[dict[str, Any]]:
    start = time.perf_counter()
    catalog = generate_catalog(work / "catalog", n)
    print(f"catalog of {n:,} studies written in {time.perf_counter() - start:.1f}s "
          f"({catalog.stat().st_size / 1e6:.1f} MB Parquet)")  # fmt: skip
    rows = []
    for scope in ("narrow", "wide"):
        for method in ("ridl", "load-all"):
            out = subprocess.run(
                [sys.executable, __file__, "--measure", method, str(catalog), scope],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def _read_folder(files: list[Path]) -> tuple[int, int]:
    total = 0
    for path in files:
        total += len(path.read_bytes())
    return len(files), total


def retrieval_part(patients: int, work: Path) -> list[dict[str, Any]]:
    from ridl.catalog import select_studies, study_refs
    from ridl.projects import Scope
    from ridl.sources.base import open_source
    from ridl.sources.protect import ArchiveLimits
    from ridl.synth import synthesize
    from tests.orthanc import Orthanc, dicom_files

    program = "/usr/sbin/Orthanc"
    if not os.access(program, os.X_OK):
        print("Orthanc is not installed: retrieval part skipped")
        return []
    report = synthesize(work / "dir", patients=patients, sites=3, seed=1)
    files = dicom_files(report.files)
    limits = ArchiveLimits(max_associations=2, rate_limit=0)
    rows: list[dict[str, Any]] = []
    with (
        Orthanc(program, work / "orthanc") as server,
        Orthanc(program, work / "orthanc-nagle", nagle=True) as nagle,
    ):
        server.upload(files)
        nagle.upload(files)
        mods = ("CT", "CR", "US", "SR", "KO", "OT")
        sites = ("SITE-A", "SITE-B", "SITE-C")
        scope = Scope(dt.date(2015, 1, 1), dt.date(2024, 12, 31), mods, sites)
        folder = open_source(f"folder:{report.root}")
        folder.build_catalog(work / "cat-folder", scope.date_from, scope.date_to)
        refs = study_refs(select_studies(work / "cat-folder", scope))
        start = time.perf_counter()
        n = size = 0
        for ref in refs:
            got = folder.fetch_study(ref, work / "w")
            a, b = _read_folder([p for p in got if p.read_bytes()[128:132] == b"DICM"])
            n, size = n + a, size + b
        rows.append(_rate("folder read", n, size, time.perf_counter() - start))
        for label, url in (
            ("C-GET", server.dimse_url("get")),
            ("C-GET, Nagle on", nagle.dimse_url("get")),
            ("C-MOVE", server.dimse_url("move")),
            ("WADO-RS", server.dicomweb_url()),
        ):
            src = open_source(url, limits)
            start = time.perf_counter()
            n = size = 0
            for ref in refs:
                workdir = work / "w" / label
                workdir.mkdir(parents=True, exist_ok=True)
                a, b = _read_folder(src.fetch_study(ref, workdir))
                src.release_study(ref, workdir)
                n, size = n + a, size + b
            rows.append(_rate(label, n, size, time.perf_counter() - start))
    base = rows[0]["instances_per_s"]
    for row in rows:
        row["vs_folder"] = round(row["instances_per_s"] / base, 3) if base else None
    return rows


def _rate(label: str, n: int, size: int, seconds: float) -> dict[str, Any]:
    return {
        "method": label,
        "instances": n,
        "megabytes": round(size / 1e6, 2),
        "seconds": round(seconds, 3),
        "instances_per_s": round(n / seconds, 1) if seconds else None,
        "mb_per_s": round(size / 1e6 / seconds, 2) if seconds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 studies, 20 patients")
    parser.add_argument("--studies", type=int, default=None)
    parser.add_argument("--patients", type=int, default=None)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    n = args.studies or (100_000 if args.quick else 1_000_000)
    patients = args.patients or (20 if args.quick else 60)
    with tempfile.TemporaryDirectory(prefix="ridl-bench-") as tmp:
        work = Path(tmp)
        os.environ["RIDL_HOME"] = str(work / "home")
        selection = selection_part(n, work)
        retrieval = retrieval_part(patients, work)

    print(f"\nSelection over a catalog of {n:,} studies (each in a fresh process)")
    print(
        f"{'scope':8} {'method':10} {'selected':>9} {'seconds':>8} {'peak MB':>8} {'growth MB':>10}"
    )
    for r in selection:
        print(f"{r['scope']:8} {r['method']:10} {r['selected']:>9,} {r['seconds']:>8.2f} "
              f"{r['peak_rss_mb']:>8.0f} {r['rss_growth_mb']:>10.0f}")  # fmt: skip
    for scope in ("narrow", "wide"):
        a = next(r for r in selection if r["scope"] == scope and r["method"] == "ridl")
        b = next(r for r in selection if r["scope"] == scope and r["method"] == "load-all")
        memory = b["rss_growth_mb"] / max(a["rss_growth_mb"], 1)
        speed = b["seconds"] / max(a["seconds"], 1e-6)
        print(f"  {scope}: load-all grows {memory:.1f}x the memory; ridl is {speed:.1f}x as fast")
    if retrieval:
        print(f"\nRetrieval of {patients} patients' studies from Orthanc vs a folder")
        print("(Orthanc started with TCP_NODELAY=1 except 'Nagle on', DCMTK's default)")
        print(f"{'method':16} {'instances':>9} {'MB':>7} {'seconds':>8} {'inst/s':>8} {'MB/s':>7} "
              f"{'vs folder':>9}")  # fmt: skip
        for r in retrieval:
            print(
                f"{r['method']:16} {r['instances']:>9} {r['megabytes']:>7.2f} "
                f"{r['seconds']:>8.2f} {r['instances_per_s']:>8.1f} {r['mb_per_s']:>7.2f} "
                f"{r['vs_folder']:>9.3f}"
            )
    out = ROOT / "benchmarks" / "results" / "selection.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "studies": n,
                "patients": patients,
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "selection": selection,
                "retrieval": retrieval,
            },
            indent=2,
        )
    )
    print(f"\nwritten: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
