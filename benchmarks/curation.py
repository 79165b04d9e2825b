"""Curation cost: OCR per at-risk image, and the share of a realistic modality mix that reaches OCR.

Two measurements, side by side in one run on the same machine:

1. Per at-risk image (synthetic DIR ultrasound and dose screen, deid-data's real ultrasounds and
   CT): header triage, known-region cleaning and text detection, timed separately, so the OCR
   cost is read against the cheap header-only steps.
2. A realistic instance mix of a hospital's ten years (CT, MR, CR/DX, US, MG, NM/PT, XA, with dose
   screens, localizers and reports as PACS store them): how many objects the checks exclude,
   how many header triage puts at risk (these reach OCR), per modality.

Usage: ``python benchmarks/curation.py [--quick]``; prints a table, writes
``benchmarks/results/curation.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.burned_in import Triage  # noqa: E402
from curation.checks import CheckObject, Policy, StudyView, load_checks, run_checks  # noqa: E402
from curation.ocr import detect_text, engine  # noqa: E402
from curation.pixels import clean_regions, frames_for_ocr  # noqa: E402
from ridl.synth import synthesize  # noqa: E402

RESULTS = Path(__file__).parent / "results"

# Instances per study and studies per 1000, as a general hospital's archive holds them.
MIX = {
    # modality: (studies per 1000, images per study, SOP class)
    "CT": (180, 250, "1.2.840.10008.5.1.4.1.1.2"),
    "MR": (90, 300, "1.2.840.10008.5.1.4.1.1.4"),
    "CR": (330, 2, "1.2.840.10008.5.1.4.1.1.1"),
    "DX": (100, 2, "1.2.840.10008.5.1.4.1.1.1.1"),
    "US": (170, 25, "1.2.840.10008.5.1.4.1.1.6.1"),
    "MG": (60, 4, "1.2.840.10008.5.1.4.1.1.1.2"),
    "NM": (20, 6, "1.2.840.10008.5.1.4.1.1.20"),
    "PT": (15, 200, "1.2.840.10008.5.1.4.1.1.128"),
    "XA": (35, 40, "1.2.840.10008.5.1.4.1.1.12.1"),
}
VENDORS = ["GE MEDICAL SYSTEMS", "SIEMENS", "Philips", "TOSHIBA", "FUJIFILM", "Canon"]


def _header(modality: str, sop_class: str, rng: random.Random, **extra: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.Manufacturer = rng.choice(VENDORS)
    ds.ManufacturerModelName = "Model " + str(rng.randrange(5))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = "routine"
    ds.Rows = ds.Columns = 512
    for key, value in extra.items():
        setattr(ds, key, value)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def realistic_mix(studies: int, seed: int = 0) -> list[Dataset]:
    rng = random.Random(seed)
    weights = [v[0] for v in MIX.values()]
    headers: list[Dataset] = []
    for _ in range(studies):
        modality = rng.choices(list(MIX), weights)[0]
        _, per_study, sop = MIX[modality]
        for _ in range(max(1, int(rng.gauss(per_study, per_study / 4)))):
            headers.append(_header(modality, sop, rng))
        if modality in ("CT", "MR", "PT"):
            headers.append(
                _header(modality, sop, rng, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
            )
        if modality == "CT":
            headers.append(
                _header(
                    "CT",
                    "1.2.840.10008.5.1.4.1.1.7",
                    rng,
                    ImageType=["DERIVED", "SECONDARY", "SCREEN SAVE"],
                    SeriesDescription="Dose Report",
                )
            )
        if modality == "US":
            region = Dataset()
            region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 60
            region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 511, 511
            for ds in headers[-3:]:
                if ds.Modality == "US":
                    ds.SequenceOfUltrasoundRegions = Sequence([region])
                    ds.BurnedInAnnotation = "YES"
        if rng.random() < 0.6:
            headers.append(
                _header("SR", "1.2.840.10008.5.1.4.1.1.88.11", rng, SeriesDescription="Report")
            )
    return headers


def mix_share(headers: list[Dataset]) -> dict[str, object]:
    triage = Triage()
    policy = Policy()
    checks = load_checks(["localizer", "dose-report", "non-image"])
    view = StudyView(headers)
    total: Counter[str] = Counter()
    excluded: Counter[str] = Counter()
    at_risk: Counter[str] = Counter()
    regions: Counter[str] = Counter()
    start = time.perf_counter()
    for ds in headers:
        modality = str(ds.Modality)
        total[modality] += 1
        verdict = run_checks(checks, CheckObject(Path("-"), ds, view, policy))
        if not verdict.passed:
            excluded[modality] += 1
            continue
        result = triage(ds)
        if result.at_risk:
            at_risk[modality] += 1
            regions[modality] += int(result.has_regions)
    elapsed = time.perf_counter() - start
    n = len(headers)
    return {
        "objects": n,
        "excluded_by_checks": sum(excluded.values()),
        "reaching_ocr": sum(at_risk.values()),
        "share_reaching_ocr": round(sum(at_risk.values()) / n, 4),
        "with_known_regions": sum(regions.values()),
        "header_steps_ms_per_object": round(1000 * elapsed / n, 3),
        "by_modality": {
            m: {
                "objects": total[m],
                "excluded": excluded[m],
                "reaching_ocr": at_risk[m],
                "share": round(at_risk[m] / total[m], 4) if total[m] else 0.0,
            }
            for m in sorted(total)
        },
    }


def at_risk_images(workdir: Path) -> list[tuple[str, Path]]:
    report = synthesize(workdir / "dir", patients=6, sites=2, seed=3)
    picks = [("synthetic US (banner)", next(p for p in report.files if p.name == "us_001.dcm"))]
    picks.append(("synthetic dose screen", next(p for p in report.files if p.name == "dose.dcm")))
    try:
        import deid_data

        data = Path(deid_data.__file__).parent / "data"
        picks += [
            ("deid-data US greyscale", data / "ultrasounds" / "GREYSCALE_IMAGE.dcm"),
            ("deid-data US RGB", data / "ultrasounds" / "RGB_IMAGE.dcm"),
            ("deid-data US cine 30f", data / "ultrasounds" / "ultrasound-multiframe.dcm"),
            ("deid-data CT (JPEG)", data / "humans" / "ctbrain1.dcm"),
        ]
    except ImportError:
        pass
    return picks


def ocr_costs(picks: list[tuple[str, Path]], repeats: int) -> list[dict[str, object]]:
    triage = Triage()
    engine()  # load the models once, outside the timings
    rows = []
    for name, path in picks:
        t_triage, t_clean, t_ocr = [], [], []
        boxes = 0
        for _ in range(repeats):
            ds = dcmread(path)
            t0 = time.perf_counter()
            result = triage(ds)
            t1 = time.perf_counter()
            pixels = clean_regions(ds, result.coordinates) if result.has_regions else None
            frames = frames_for_ocr(ds, pixels)
            t2 = time.perf_counter()
            boxes = len(detect_text(frames))
            t3 = time.perf_counter()
            t_triage.append(t1 - t0)
            t_clean.append(t2 - t1)
            t_ocr.append(t3 - t2)
        rows.append(
            {
                "image": name,
                "size": f"{ds.Rows}x{ds.Columns}x{int(ds.get('NumberOfFrames', 1) or 1)}",
                "frames_read": len(frames),
                "triage_ms": round(1000 * statistics.median(t_triage), 2),
                "clean_ms": round(1000 * statistics.median(t_clean), 2),
                "ocr_ms": round(1000 * statistics.median(t_ocr), 1),
                "ocr_vs_triage": round(statistics.median(t_ocr) / statistics.median(t_triage), 1),
                "text_boxes_left": boxes,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer studies and repeats")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    studies = 100 if args.quick else 400
    with tempfile.TemporaryDirectory() as tmp:
        costs = ocr_costs(at_risk_images(Path(tmp)), repeats)
    share = mix_share(realistic_mix(studies))
    print(
        f"{'image':26} {'size':>14} {'frames':>6} {'triage ms':>10} {'clean ms':>9} "
        f"{'OCR ms':>8} {'OCR/triage':>10} {'boxes left':>10}"
    )
    print("(medians; triage is memoized per distinct header, as in a run)")
    for r in costs:
        print(
            f"{r['image']:26} {r['size']:>14} {r['frames_read']:>6} {r['triage_ms']:>10} "
            f"{r['clean_ms']:>9} {r['ocr_ms']:>8} {r['ocr_vs_triage']:>10} "
            f"{r['text_boxes_left']:>10}"
        )
    mean_ocr = statistics.mean(float(str(r["ocr_ms"])) for r in costs)
    print(f"\nmean OCR cost per at-risk image: {mean_ocr:.0f} ms (CPU)")
    print(
        f"\nrealistic mix: {share['objects']} objects from {studies} studies; "
        f"{share['excluded_by_checks']} excluded by checks; {share['reaching_ocr']} reach OCR "
        f"({100 * float(str(share['share_reaching_ocr'])):.2f}%); header steps "
        f"{share['header_steps_ms_per_object']} ms/object"
    )
    print(f"{'modality':8} {'objects':>8} {'excluded':>9} {'to OCR':>7} {'share':>7}")
    by_mod = share["by_modality"]
    assert isinstance(by_mod, dict)
    for m, row in by_mod.items():
        print(
            f"{m:8} {row['objects']:>8} {row['excluded']:>9} {row['reaching_ocr']:>7} "
            f"{100 * row['share']:>6.1f}%"
        )
    expected_ocr_s = mean_ocr / 1000 * float(str(share["share_reaching_ocr"]))
    print(f"\nexpected OCR cost per object of the mix: {1000 * expected_ocr_s:.1f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "curation.json"
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "quick": args.quick,
                "ocr_per_image": costs,
                "mean_ocr_ms": round(mean_ocr, 1),
                "mix": share,
                "expected_ocr_ms_per_object": round(1000 * expected_ocr_s, 2),
            },
            indent=2,
        )
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
