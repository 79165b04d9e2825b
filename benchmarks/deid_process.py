"""Whole-process ``ridl deid`` against ``cp -r`` on the same CT slices, the way a user runs them.

What is measured: wall time of each command as a subprocess, start to exit, on one folder of
512x512 CT slices from a synthetic DIR (``synthesize(ct_size=512)``; only the ``ct_*.dcm``
files are copied into the source folder, so both tools read exactly the same files; the dose
screen, report, rejection note and damaged files are left out). Each timed command writes into
a fresh destination; the page cache is warmed by one untimed ``cp -r`` first, and the tools
alternate round by round (best of the rounds each) so a burst of load from other processes
hits one round of every tool. Timed:

* ``cp -r SRC DST``: the reference;
* ``ridl deid SRC DST --project P``: the whole request (interpreter start-up, imports, project
  and keys, the first pass over the headers, curation, de-identification, verification,
  durable writes), the ``ridl`` of the interpreter running this script;
* the same with the project's ``[curation] ocr = false`` (burned-in text screening off);
* ``ridl --help``: the process's fixed start-up cost (interpreter and CLI imports), also
  subtracted from ``ridl deid`` in the last line.

After each ``ridl deid`` the destination must hold as many ``.dcm`` files as its JSON output
says it exported, and that must be every source file, so a failing run cannot be timed as fast.
The worktree holding this script is put first on ``PYTHONPATH`` so its code is what runs.

Usage: ``python benchmarks/deid_process.py [--quick] [--slices N] [--rounds N]`` (about 2,000
slices, best of 3; ``--quick``: about 200, best of 2). Prints a table and writes
``benchmarks/results/deid_process[-quick].json``.
"""

from __future__ import annotations

import argparse
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

RIDL = Path(sys.executable).parent / "ridl"
PROJECT = "bench"
PROJECT_NO_OCR = "bench-noocr"


def make_projects() -> None:
    """Two projects approving the synthetic DIR's CT: defaults, and OCR screening off."""
    from ridl.projects import Project, Scope, create_project

    today = dt.date.today()
    sites = ("SITE-A", "SITE-B", "SITE-C")
    scope = Scope(dt.date(2015, 1, 1), dt.date(2024, 12, 31), ("CT",), sites)
    for pid, extra in ((PROJECT, {}), (PROJECT_NO_OCR, {"curation": {"ocr": False}})):
        create_project(
            Project(
                id=pid, reb_number="REB-BENCH", title="benchmark", pi="PI",
                approved=today - dt.timedelta(days=1), expires=today + dt.timedelta(days=30),
                scope=scope, extra=extra,
            )
        )  # fmt: skip


def build_source(work: Path, target: int) -> tuple[Path, int, int, int]:
    """A folder of about ``target`` 512x512 CT slices: (folder, files, bytes, slices/series).

    A first tiny DIR of the same seed counts the CT studies (the studies drawn do not depend
    on the slices per series), so the slices per series can be chosen to reach ``target``.
    """
    from ridl.synth import synthesize

    patients, sites, seed = 10, 3, 7
    probe = synthesize(work / "probe", patients, sites, seed, ct_slices=1, ct_size=16)
    ct_studies = sum(1 for p in probe.files if p.name == "ct_001.dcm")
    shutil.rmtree(work / "probe")
    slices = max(1, round(target / ct_studies))
    report = synthesize(work / "dir", patients, sites, seed, ct_slices=slices, ct_size=512)
    damaged = set(report.truncated) | set(report.not_dicom)
    src = work / "src"
    count = size = 0
    for path in report.files:
        if path.name.startswith("ct_") and path not in damaged:
            copy = src / path.relative_to(report.root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
            count += 1
            size += copy.stat().st_size
    shutil.rmtree(work / "dir")
    return src, count, size, slices


def dcm_files(folder: Path) -> int:
    """How many ``.dcm`` files are under ``folder``."""
    return sum(1 for p in folder.rglob("*.dcm") if p.is_file())


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run ``cmd`` to its exit: (wall seconds, stdout). A non-zero exit stops the benchmark."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{Path(cmd[0]).name} {cmd[1]} exited {done.returncode}")
    return elapsed, done.stdout


def main() -> None:
    """Build the source folder, time each tool, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 200 slices, best of 2")
    parser.add_argument("--slices", type=int, default=None, help="CT slices wanted in all")
    parser.add_argument("--rounds", type=int, default=None, help="rounds; best of N per tool")
    args = parser.parse_args()
    target = args.slices or (200 if args.quick else 2000)
    rounds = args.rounds or (2 if args.quick else 3)
    if not RIDL.exists():
        raise SystemExit(f"{RIDL} not found: run with the interpreter of ridl's environment")

    work = Path(tempfile.mkdtemp(prefix="ridl-deid-proc-"))
    os.environ["RIDL_HOME"] = str(work / "home")
    try:
        measure(work, target, rounds, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, target: int, rounds: int, quick: bool) -> None:
    """Time the tools on a source folder of about ``target`` slices built under ``work``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    make_projects()
    src, count, size, slices = build_source(work, target)
    mb = size / 1e6
    print(f"source: {count} CT slices of 512x512 ({slices} per series), {mb:.0f} MB")

    tools: dict[str, list[str]] = {
        "cp -r": ["cp", "-r", str(src)],
        "ridl deid": [str(RIDL), "deid", str(src)],
        "ridl deid, OCR off": [str(RIDL), "deid", str(src)],
    }
    projects = {"ridl deid": PROJECT, "ridl deid, OCR off": PROJECT_NO_OCR}

    warm = work / "warm"
    timed(["cp", "-r", str(src), str(warm)], env)  # page cache: every tool reads from memory
    shutil.rmtree(warm)

    best = dict.fromkeys(tools, float("inf"))
    summaries: dict[str, Any] = {}
    names = list(tools)
    for n in range(rounds):
        for name in names[n % len(names) :] + names[: n % len(names)]:
            dst = work / f"dst-{n}-{names.index(name)}"
            cmd = [*tools[name], str(dst)]
            if name in projects:
                cmd += ["--project", projects[name]]
            elapsed, stdout = timed(cmd, env)
            written = dcm_files(dst)
            if name in projects:
                summary = json.loads(stdout)
                if written != summary["exported"] or summary["exported"] != count:
                    raise SystemExit(
                        f"{name}: {written} .dcm files written, {summary['exported']} exported, "
                        f"{count} expected: {json.dumps(summary)}"
                    )
                summaries[name] = summary
            elif written != count:
                raise SystemExit(f"{name}: {written} .dcm files copied, {count} expected")
            best[name] = min(best[name], elapsed)
            shutil.rmtree(dst)
    startup = min(timed([str(RIDL), "--help"], env)[0] for _ in range(rounds))

    copy = best["cp -r"]
    rows = [
        {
            "tool": name,
            "seconds": round(seconds, 3),
            "instances_per_s": round(count / seconds, 1),
            "mb_per_s": round(mb / seconds, 1),
            "x_cp": round(copy / seconds, 3),
        }
        for name, seconds in best.items()
    ]
    deid = best["ridl deid"]
    net = max(deid - startup, 1e-9)
    print(f"\n{'tool':<20}{'seconds':>9}{'inst/s':>9}{'MB/s':>8}{'x cp -r':>9}")
    for r in rows:
        print(
            f"{r['tool']:<20}{r['seconds']:>9.2f}{r['instances_per_s']:>9.1f}"
            f"{r['mb_per_s']:>8.1f}{r['x_cp']:>9.2f}"
        )
    print(
        f"\nstart-up (ridl --help): {startup:.2f} s; ridl deid less start-up: {net:.2f} s, "
        f"{count / net:.1f} inst/s, x{copy / net:.2f} cp -r"
    )
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "quick": quick,
        "files": count,
        "megabytes": round(mb, 1),
        "ct_slices_per_series": slices,
        "rounds": rounds,
        "rows": rows,
        "startup_s": round(startup, 3),
        "deid_less_startup_s": round(net, 3),
        "deid_less_startup_x_cp": round(copy / net, 3),
        "deid_summary": summaries,
    }
    name = "deid_process-quick.json" if quick else "deid_process.json"
    out = ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
