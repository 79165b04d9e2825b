"""What a compiled header kernel would buy (issue 16, item 5), measured before building one.

The fast path's header walk (``deid_recipes/dicombytes.py`` and ``deid_recipes/fastpath.py``:
reading the header bytes, splitting the elements, deciding and re-encoding each) is compiled
with mypyc into a scratch copy of this checkout, and the same files are de-identified with the
pure-Python modules and with the compiled ones, in two fresh interpreters, single core, best of
N rounds. The two outputs must be byte-identical (their SHA-256 over every object is compared),
so a faster kernel that changes a byte cannot be reported as a gain.

Then the share of the header walk in a whole object is put beside it: the pure-Python
``deidentify_bytes`` time per object against ``run_throughput.py``'s latest whole-instance
figure (``benchmarks/results/run_throughput-no-ocr.json``, when present).

Needs a C compiler and the Python headers (mypyc builds an extension module); without them it
says so and stops. Usage: ``python benchmarks/header_kernel.py [--quick] [--rounds N]``
(about 400 CT slices of 512 x 512, best of 5; ``--quick``: about 100, best of 3). Prints a
table and writes ``benchmarks/results/header_kernel[-quick].json``.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.deid_process import build_source  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
KERNEL = ("deid_recipes/dicombytes.py", "deid_recipes/fastpath.py")
PACKAGES = ("deid_recipes", "ridl", "curation", "export", "flows")

# Run in a fresh interpreter with the tree to time first on sys.path: de-identify every file's
# bytes with the fast path, best of ROUNDS; print which module ran, ms per object and a digest.
TIMER = r"""
import hashlib, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import deid_recipes.fastpath as fastpath
from deid_recipes import Engine, SubjectContext, load_recipe
from ridl.pseudonyms import Pseudonymizer
engine = Engine(load_recipe("ridl-basic"), Pseudonymizer(b"k" * 32), retain=())
subject = SubjectContext("RS-BENCH", 17)
datas = [p.read_bytes() for p in sorted(Path(sys.argv[2]).rglob("*.dcm"))]
digest, best = hashlib.sha256(), float("inf")
for n in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    outs = [fastpath.deidentify_bytes(engine, lambda ds: subject, d) for d in datas]
    best = min(best, time.perf_counter() - t0)
    if n == 0:
        for out in outs:
            digest.update(out[2] if out is not None else b"handed back")
print(fastpath.__file__)
print(1000 * best / len(datas))
print(digest.hexdigest())
"""


def compile_kernel(tree: Path) -> str | None:
    """Copy the packages to ``tree`` and compile the kernel there; None, or why it failed."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("*.so"))
    mypyc = Path(sys.executable).with_name("mypyc")
    done = subprocess.run(
        [str(mypyc), "--ignore-missing-imports", *KERNEL],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not list((tree / "deid_recipes").glob("fastpath*.so")):
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[-1] if lines else f"mypyc exited with {done.returncode}"
    return None


def time_tree(tree: Path, src: Path, rounds: int) -> tuple[str, float, str]:
    """(module file, ms per object, digest) of the fast path as imported from ``tree``."""
    done = subprocess.run(
        [sys.executable, "-c", TIMER, str(tree), str(src), str(rounds)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    module, ms, digest = done.stdout.strip().splitlines()[-3:]
    return module, float(ms), digest


def main() -> None:
    """Build the files and the kernel, time both, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 100 slices, best of 3")
    parser.add_argument("--rounds", type=int, default=None, help="best of N rounds")
    args = parser.parse_args()
    target, rounds = (100, 3) if args.quick else (400, 5)
    rounds = args.rounds or rounds
    work = Path(tempfile.mkdtemp(prefix="ridl-kernel-"))
    try:
        src, count, size, _ = build_source(work, target)
        tree = work / "compiled"
        failed = compile_kernel(tree)
        if failed is not None:
            raise SystemExit(f"mypyc could not build the kernel here: {failed}")
        py_module, py_ms, py_digest = time_tree(ROOT, src, rounds)
        c_module, c_ms, c_digest = time_tree(tree, src, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not c_module.endswith(".so") or py_module.endswith(".so"):
        raise SystemExit("the timed modules are not the pure-Python and compiled ones")
    identical = py_digest == c_digest
    whole = None
    latest = ROOT / "benchmarks" / "results" / "run_throughput-no-ocr.json"
    if latest.exists():
        rows = json.loads(latest.read_text()).get("rows", [])
        whole = next((r["ms_per_ct_instance"] for r in rows if r["path"] == "fast path"), None)
    print(f"{count} CT slices of 512 x 512, {size / 1e6:.0f} MB, best of {rounds}, one core")
    print(f"\n{'header walk':28} {'ms/object':>9} {'x python':>8}")
    print(f"{'pure Python (shipped)':28} {py_ms:>9.3f} {1.0:>8.2f}")
    print(f"{'compiled with mypyc':28} {c_ms:>9.3f} {py_ms / c_ms:>8.2f}")
    print(f"outputs byte-identical: {identical}")
    if whole:
        saved = (py_ms - c_ms) / whole
        print(f"whole CT instance (run_throughput, OCR off): {whole:.2f} ms; the kernel would "
              f"save {py_ms - c_ms:.3f} ms of it ({100 * saved:.1f} %)")  # fmt: skip
    out = RESULTS / ("header_kernel-quick.json" if args.quick else "header_kernel.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "header_kernel",
                "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(),
                            "python": platform.python_version()},
                "objects": count, "bytes": size, "rounds": rounds,
                "python_ms_per_object": round(py_ms, 4),
                "compiled_ms_per_object": round(c_ms, 4),
                "speedup": round(py_ms / c_ms, 3),
                "byte_identical": identical,
                "whole_ct_instance_ms": whole,
            },
            indent=2,
        )
    )  # fmt: skip
    print(f"written: {out.relative_to(ROOT)}")
    if not identical:
        raise SystemExit("the compiled kernel's output differs from the pure-Python one")


if __name__ == "__main__":
    main()
