"""Screening cost per image beside de-identification cost of the same objects (issue 13, item 5).

Every image that can carry text is screened whatever its header says (curation/screening.py), so
screening is paid on every radiograph, every ultrasound clip and three images of each CT series.
This measures, on this machine, per object and in one process:

- ``screen``: curation of an object without text (checks, header triage, decoding, the frames
  handed to OCR, detection at reduced resolution; recognition has nothing to read);
- ``screen+redact``: the same object with a name burned into a corner under
  ``burned_in_text = "redact"`` (detection, recognition in the boxes, blanking in every frame,
  writing the pixels back, screening again);
- ``deid fast``: de-identification by the byte-level fast path (``deidentify_to_bytes``), what
  a run does for an object curation left alone;
- ``deid engine``: de-identification of the whole dataset (``Engine.apply`` + write), what a
  run does for an object curation changed;

for CR/DX (2,000 x 2,500, 12 bit), US (640 x 480 RGB, 30 frames) and CT (512 x 512). The
ratios say how many de-identifications one screening costs; the CT row also gives the cost per
image of a 250-slice series, where three images are screened (first, middle, last).

CPU always; the GPU too when onnxruntime offers the CUDA provider (``onnxruntime-gpu``),
otherwise the JSON says why it was skipped.

Usage: ``python benchmarks/screening.py [--quick]``; prints a table, writes
``benchmarks/results/screening[-quick].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).parent / "results"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
SERIES_SLICES = 250  # a typical CT series, for the amortized cost per image
# kind: (modality, SOP class, rows, columns, frames, RGB, text height in pixels)
KINDS: dict[str, tuple[str, str, int, int, int, bool, int]] = {
    "CR/DX 2000x2500": ("DX", "1.2.840.10008.5.1.4.1.1.1.1", 2500, 2000, 1, False, 56),
    "US 640x480x30": ("US", "1.2.840.10008.5.1.4.1.1.3.1", 480, 640, 30, True, 16),
    "CT 512x512": ("CT", "1.2.840.10008.5.1.4.1.1.2", 512, 512, 1, False, 14),
}
NAME = "TREMBLAY, JOSEE"  # invented


def _text_mask(rows: int, cols: int, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, size) if Path(FONT).exists() else ImageFont.load_default(size)
    mask = Image.new("L", (cols, rows), 0)
    ImageDraw.Draw(mask).text((size, size), NAME, fill=255, font=font)
    return np.asarray(mask) > 127


def make_object(folder: Path, kind: str, text: bool, index: int) -> Path:
    """One synthetic object of ``kind``, with a name burned into its top left corner or not."""
    modality, sop_class, rows, cols, frames, rgb, size = KINDS[kind]
    rng = np.random.default_rng(index)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "Tremblay^Josee", "MRN00123", "SITE-A"
    ds.PatientBirthDate, ds.PatientSex = "19600102", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = UID(sop_class), generate_uid()
    ds.StudyDate = ds.SeriesDate = "20200115"
    ds.StudyTime = "101500"
    ds.AccessionNumber, ds.Modality, ds.InstanceNumber = "ACC778899", modality, 1
    ds.InstitutionName, ds.ReferringPhysicianName = "Hopital Saint-Luc", "Doe^John"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = rows, cols
    yy, xx = np.mgrid[0:rows, 0:cols]
    body = np.exp(-(((xx - cols / 2) / (cols / 3)) ** 2 + ((yy - rows / 2) / (rows / 2.5)) ** 2))
    mask = _text_mask(rows, cols, size) if text else np.zeros((rows, cols), bool)
    if rgb:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        frame = (40 + 120 * body)[..., None] + rng.normal(0, 12, (rows, cols, 3))
        frame[mask] = 250
        stack = np.stack([np.roll(frame, i, axis=1) for i in range(frames)])
        pixels: np.ndarray = np.clip(stack, 0, 255).astype(np.uint8)
        ds.NumberOfFrames = frames
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        image = 1500 + 1200 * body + rng.normal(0, 60, (rows, cols))
        image[mask] = 4000
        pixels = np.clip(image, 0, 4095).astype(np.uint16)
        if modality == "CT":
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path = folder / f"{modality.lower()}_{'text' if text else 'clean'}_{index}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _median(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def screening_costs(folder: Path, repeats: int) -> list[dict[str, Any]]:
    """Per kind: screening (clean, and named under redact) and de-identification, in seconds."""
    from curation.checks import Policy
    from curation.pipeline import Curator
    from deid_recipes import Engine, SubjectContext, load_recipe
    from deid_recipes.fastpath import deidentify_to_bytes
    from ridl.pseudonyms import Pseudonymizer

    engine = Engine(load_recipe("ridl-basic"), Pseudonymizer(b"b" * 64))
    subject = SubjectContext("RS-BENCH", -100)
    rows: list[dict[str, Any]] = []
    for n, kind in enumerate(KINDS):
        clean, named = make_object(folder, kind, False, n), make_object(folder, kind, True, n)
        curator = Curator("bench", "r1", Policy(burned_in_text="redact"))

        def curate(path: Path, c: Curator = curator) -> Any:
            header = dcmread(path, stop_before_pixels=True)
            return c.curate(path, header, c.study([header]), "bench")

        curate(clean)  # loads the models and warms the caches
        screen_s, done = _median(functools.partial(curate, clean), repeats)
        redact_s, redacted = _median(functools.partial(curate, named), repeats)

        def fast(p: Path = clean) -> Any:
            return deidentify_to_bytes(engine, lambda _h: subject, p)

        def whole(p: Path = clean) -> bytes:
            ds = dcmread(p)
            engine.apply(ds, subject)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            return out.getvalue()

        fast_s, _ = _median(fast, repeats)
        whole_s, _ = _median(whole, repeats)
        row = {
            "kind": kind,
            "bytes": clean.stat().st_size,
            "screen_s": round(screen_s, 4),
            "screen_redact_s": round(redact_s, 4),
            "deid_fast_s": round(fast_s, 4),
            "deid_engine_s": round(whole_s, 4),
            "screen_vs_deid_fast": round(screen_s / fast_s, 1),
            "screen_vs_deid_engine": round(screen_s / whole_s, 1),
            "redact_vs_deid_engine": round(redact_s / whole_s, 1),
            "clean_exported": done.action == "export" and not done.pixels_changed,
            "name_redacted": redacted.action == "export" and redacted.pixels_changed,
        }
        if kind.startswith("CT"):
            per_image = screen_s * 3 / SERIES_SLICES
            row["screen_per_series_image_s"] = round(per_image, 5)
            row["series_screen_vs_deid_fast"] = round(per_image / fast_s, 2)
        rows.append(row)
    return rows


def gpu_note() -> str | None:
    """None when onnxruntime offers CUDA here, else why the GPU rows are skipped."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return (
            "skipped: onnxruntime has no CUDAExecutionProvider on this machine "
            "(install onnxruntime-gpu where a GPU is present)"
        )
    return None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        # Other work on the machine slows every figure alike; the ratios hold better.
        "load_average_1min": round(os.getloadavg()[0], 1),
        "python": platform.python_version(),
        "onnxruntime": version("onnxruntime"),
        "rapidocr_onnxruntime": version("rapidocr-onnxruntime"),
    }


def _print(device: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{device}: wall seconds per object (medians of one process)")
    print(
        f"{'object':17} {'screen':>8} {'+redact':>8} {'deid fast':>10} {'deid eng':>9} "
        f"{'scr/fast':>9} {'scr/eng':>8} {'red/eng':>8} {'named: redacted':>16}"
    )
    for r in rows:
        print(
            f"{r['kind']:17} {r['screen_s']:>8.3f} {r['screen_redact_s']:>8.3f} "
            f"{r['deid_fast_s']:>10.4f} {r['deid_engine_s']:>9.4f} "
            f"{r['screen_vs_deid_fast']:>9} {r['screen_vs_deid_engine']:>8} "
            f"{r['redact_vs_deid_engine']:>8} {r['name_redacted']!s:>16}"
        )
        if "screen_per_series_image_s" in r:
            print(
                f"{'  per image of a':17} {r['screen_per_series_image_s']:>8.4f}  "
                f"({SERIES_SLICES}-slice series, 3 screened: "
                f"{r['series_screen_vs_deid_fast']} x deid fast)"
            )


def main() -> None:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three repeats instead of seven")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    result: dict[str, Any] = {"machine": machine(), "repeats": repeats}
    from curation import ocr

    result["det_max_side"] = ocr.DET_MAX_SIDE
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RIDL_HOME"] = str(Path(tmp) / "home")  # review records of the redactions
        os.environ.pop("RIDL_OCR_GPU", None)
        result["cpu"] = screening_costs(Path(tmp), repeats)
        _print("CPU", result["cpu"])
        note = gpu_note()
        if note is None:
            os.environ["RIDL_OCR_GPU"] = "1"
            ocr._engine = None  # reload the models on the CUDA provider
            result["gpu"] = screening_costs(Path(tmp), repeats)
            _print("GPU (onnxruntime CUDA)", result["gpu"])
        else:
            result["gpu"] = note
            print(f"\nGPU: {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"screening{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
