"""What decoding costs the way curation decodes (frame check, GDCM in a child) beside its anchors.

Curation decodes every screened image (issue 13, item 4). Before a decode it checks that the
compressed frames hold the image the header describes (``curation.decoding.frames_mismatch``),
and GDCM decodes only in a child process (``curation.decoding``), the frame and its samples
crossing a pipe. Per transfer syntax, for one 2,000 x 2,500 radiograph (12 bits stored; 8 for
JPEG Baseline), in one process:

- ``check``: the frame check alone;
- ``strip``: what de-identification adds for the frame: the walk that finds its text to strip
  (``ridl.codestream.stripped_frames``; this radiograph carries none but its encoder's);
- ``ridl``: ``curation.pixels.decoded_pixels`` (check + decode through ridl's decoder set);
- ``in-process``: the same decoder called directly in this process, as pydicom picks it when
  GDCM is not isolated (measured before ridl's modules are imported);
- ``dcmtk``: dcmtk's decompressor (``dcmdjpeg``, ``dcmdjpls``, ``dcmdrle``) as a whole
  process, reading the file and writing it decompressed, as a user runs it.

Usage: ``python benchmarks/decoding.py [--quick]``; prints a table of ratios, writes
``benchmarks/results/decoding[-quick].json``. dcmtk missing: its column is skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_name  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ROWS, COLUMNS = 2500, 2000
# name: (how it is made, dcmtk decompressor, 8-bit samples)
SYNTAXES: dict[str, tuple[str, str, bool]] = {
    "JPEG Lossless SV1": ("dcmcjpeg +e1", "dcmdjpeg", False),
    "JPEG-LS Lossless": ("dcmcjpls", "dcmdjpls", False),
    "JPEG Baseline": ("dcmcjpeg +eb", "dcmdjpeg", True),
    "JPEG Extended 12": ("dcmcjpeg +ee", "dcmdjpeg", False),
    "JPEG 2000 Lossless": ("pydicom", "", False),
    "RLE Lossless": ("pydicom", "dcmdrle", False),
}


def make_native(folder: Path, eight_bit: bool) -> Path:
    """A native radiograph (smooth body, noise; values invented) of ROWS x COLUMNS."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    yy, xx = np.mgrid[0:ROWS, 0:COLUMNS]
    body = np.exp(-(((xx - COLUMNS / 2) / 700) ** 2 + ((yy - ROWS / 2) / 900) ** 2))
    noise = np.random.default_rng(1).normal(0, 40, (ROWS, COLUMNS))
    image = np.clip(300 + 3000 * body + noise, 0, 4095)
    if eight_bit:
        pixels = (image / 16).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        pixels = image.astype(np.uint16)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.Rows, ds.Columns, ds.PixelRepresentation = ROWS, COLUMNS, 0
    ds.Modality = "CR"
    ds.PixelData = pixels.tobytes()
    path = folder / f"native-{8 if eight_bit else 16}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def make_compressed(folder: Path, name: str) -> Path | None:
    """The radiograph in syntax ``name``; None when the dcmtk tool that makes it is missing."""
    how, _, eight_bit = SYNTAXES[name]
    native = make_native(folder, eight_bit)
    out = folder / (name.replace(" ", "_") + ".dcm")
    if how == "pydicom":
        ds = dcmread(native)
        ds.compress(RLELossless if name.startswith("RLE") else JPEG2000Lossless)
        ds.save_as(out, enforce_file_format=True)
        return out
    program, *options = how.split()
    if shutil.which(program) is None:
        return None
    subprocess.run([program, *options, str(native), str(out)], check=True, capture_output=True)
    return out


def _median(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _decoder_in_process(path: Path) -> str:
    """The plug-in pydicom picks when nothing is isolated: the first that decodes the frame."""
    from pydicom.pixels import get_decoder

    ds = dcmread(path)
    for label in get_decoder(ds.file_meta.TransferSyntaxUID).available_plugins:
        try:
            ds.pixel_array_options(decoding_plugin=label)
            ds.pixel_array  # noqa: B018
            return label
        except Exception:
            continue
    raise RuntimeError("no decoder")


def main() -> None:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three repeats instead of seven")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    warnings.simplefilter("ignore")
    assert "curation.pixels" not in sys.modules, "the in-process anchor comes first"
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = {name: make_compressed(folder, name) for name in SYNTAXES}
        for name, path in files.items():
            if path is None:
                notes.append(f"{name}: skipped ({SYNTAXES[name][0].split()[0]} not installed)")
                continue
            row: dict[str, Any] = {"syntax": name, "file_mb": round(path.stat().st_size / 1e6, 2)}
            try:
                plugin = _decoder_in_process(path)
            except RuntimeError:  # 12-bit JPEG Extended: no plug-in of pydicom's decodes it
                row["in_process_plugin"] = "none"
                rows.append(row)
                continue

            def in_process(p: Path = path, label: str = plugin) -> Any:
                ds = dcmread(p)
                ds.pixel_array_options(decoding_plugin=label)
                return ds.pixel_array

            row["in_process_plugin"] = plugin
            row["in_process_s"] = _median(in_process, repeats)
            rows.append(row)
        from curation.decoding import frames_mismatch
        from curation.pixels import decoded_pixels
        from ridl.codestream import stripped_frames

        for row in rows:
            path = files[row["syntax"]]
            assert path is not None
            ds = dcmread(path)
            assert frames_mismatch(ds) is None, row["syntax"]
            decoded_pixels(dcmread(path))  # the GDCM child starts once per process
            row["check_s"] = _median(lambda d=ds: frames_mismatch(d), repeats)
            row["strip_s"] = _median(lambda d=ds: stripped_frames(d.PixelData, 1), repeats)
            row["ridl_s"] = _median(lambda p=path: decoded_pixels(dcmread(p)), repeats)
            tool = SYNTAXES[row["syntax"]][1]
            if tool and shutil.which(tool):
                out = folder / "out.dcm"
                row["dcmtk_tool"] = tool
                row["dcmtk_process_s"] = _median(
                    lambda p=path, t=tool, o=out: subprocess.run(
                        [t, str(p), str(o)], check=True, capture_output=True
                    ),
                    repeats,
                )
            if "in_process_s" in row:
                row["ridl_vs_in_process"] = round(row["ridl_s"] / row["in_process_s"], 2)
            if "dcmtk_process_s" in row:
                row["ridl_vs_dcmtk"] = round(row["ridl_s"] / row["dcmtk_process_s"], 2)
            row["check_share_of_ridl"] = round(row["check_s"] / row["ridl_s"], 3)
    print(f"\nseconds per {COLUMNS} x {ROWS} radiograph (medians of {repeats}, one process)")
    print(
        f"{'syntax':19} {'MB':>5} {'check':>7} {'strip':>7} {'ridl':>7} {'in-proc':>8} "
        f"{'(plugin)':>10} {'dcmtk':>7} {'ridl/in':>8} {'ridl/dcmtk':>10}"
    )
    for r in rows:
        dcmtk = f"{r['dcmtk_process_s']:>7.3f}" if "dcmtk_process_s" in r else f"{'-':>7}"
        ratio = f"{r['ridl_vs_dcmtk']:>10}" if "ridl_vs_dcmtk" in r else f"{'-':>10}"
        inside = f"{r['in_process_s']:>8.3f}" if "in_process_s" in r else f"{'-':>8}"
        print(
            f"{r['syntax']:19} {r['file_mb']:>5} {r['check_s']:>7.4f} {r['strip_s']:>7.4f} "
            f"{r['ridl_s']:>7.3f} "
            f"{inside} {r['in_process_plugin']:>10} {dcmtk} "
            f"{r.get('ridl_vs_in_process', '-'):>8} {ratio}"
        )
    for note in notes:
        print(note)
    result = {
        "machine": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 1),
            "python": platform.python_version(),
        },
        "repeats": repeats,
        "rows": rows,
        "notes": notes,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"decoding{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
