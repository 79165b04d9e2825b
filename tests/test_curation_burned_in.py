"""Burned-in text: header triage, known-region cleaning, text detection after cleaning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, RLELossless

from curation.burned_in import Triage
from curation.checks import Policy
from curation.ocr import detect_text
from curation.pipeline import Curator
from curation.pixels import frames_for_ocr
from curation.review import list_records
from tests.curation_data import header

DEID_DATA = Path(__import__("deid_data").__file__).parent / "data"


def first(synth_dir, name: str) -> Path:  # type: ignore[no-untyped-def]
    return next(p for p in synth_dir.files if p.name == name)


def curate(curator: Curator, path: Path):  # type: ignore[no-untyped-def]
    hdr = header(path)
    return curator.curate(path, hdr, curator.study([hdr]), "study-key")


@pytest.fixture(scope="module")
def triage() -> Triage:
    return Triage()


def test_triage_follows_deid_filter_semantics(synth_dir, triage: Triage) -> None:  # type: ignore[no-untyped-def]
    us = triage(header(first(synth_dir, "us_001.dcm")))
    assert us.at_risk and "graylist" in us.groups and "blacklist" in us.groups
    # The ultrasound region comes from the header (keepcoordinates from:...), after "all".
    assert us.coordinates == ((0, "all"), (1, ["0,28,159,95"]))
    dose = triage(header(first(synth_dir, "dose.dcm")))
    assert dose.at_risk and not dose.has_regions
    cr = triage(header(first(synth_dir, "cr_001.dcm")))
    assert not cr.at_risk and cr.groups == ()
    # A second ultrasound gets its own region, not the first one's (deid mutates its filters).
    other = header(first(synth_dir, "us_001.dcm"))
    other.SequenceOfUltrasoundRegions[0].RegionLocationMinY0 = 40
    assert triage(other).coordinates[1] == (1, ["0,40,159,95"])
    assert triage(header(first(synth_dir, "us_001.dcm"))).coordinates[1] == (1, ["0,28,159,95"])


def test_ultrasound_banner_is_blanked_by_its_region_and_then_passes_ocr(synth_dir) -> None:  # type: ignore[no-untyped-def]
    path = first(synth_dir, "us_001.dcm")
    original = dcmread(path)
    # The test can fail: the banner is text the detector reads before cleaning.
    assert detect_text(frames_for_ocr(original)), "the synthetic banner must be readable"
    curator = Curator("study-a", "r1", Policy())
    result = curate(curator, path)
    assert result.action == "export" and result.ocr_ran and result.dataset is not None
    ds = result.dataset
    pixels = ds.pixel_array
    assert not pixels[:28].any(), "banner rows above the ultrasound region are blank"
    assert pixels[29:95, 1:158].any(), "the image region is kept"
    assert ds.BurnedInAnnotation == "NO"
    assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert ds.SOPInstanceUID == original.SOPInstanceUID, "UIDs are left to de-identification"
    (record,) = list_records("study-a", "r1")
    assert record.status == "exported" and record.cleaned and record.boxes == []


def test_text_outside_known_regions_is_quarantined_by_ocr(synth_dir) -> None:  # type: ignore[no-untyped-def]
    curator = Curator("study-a", "r1", Policy(screen_captures="keep"))
    dose = curate(curator, first(synth_dir, "dose.dcm"))
    assert (dose.action, dose.reason) == ("quarantine", "burned-in-text")
    # A real ultrasound: its regions are blanked, but text remains inside the image region.
    real = curate(curator, DEID_DATA / "ultrasounds" / "RGB_IMAGE.dcm")
    assert (real.action, real.reason) == ("quarantine", "burned-in-text")
    records = {r.object: r for r in list_records("study-a", "r1")}
    assert records[real.review_id or ""].cleaned and records[real.review_id or ""].boxes
    assert all(r.thumbnail for r in records.values())
    # Only boxes are kept: no text read from pixels is in any record.
    assert not any("text" in b for r in records.values() for b in r.boxes)


def test_compressed_image_is_cleaned_and_still_decodable(synth_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = dcmread(first(synth_dir, "us_001.dcm"))
    src.compress(RLELossless, generate_instance_uid=False)
    rle = tmp_path / "us_rle.dcm"
    src.save_as(rle, enforce_file_format=True)
    result = curate(Curator("study-a", "r1", Policy()), rle)
    assert result.action == "export" and result.dataset is not None
    out = tmp_path / "out.dcm"
    result.dataset.save_as(out, enforce_file_format=True)
    back = dcmread(out)
    assert back.file_meta.TransferSyntaxUID == RLELossless, "kept its transfer syntax"
    assert not back.pixel_array[:28].any() and back.pixel_array[30:].any()


def test_lossy_jpeg_is_cleaned_with_project_filters_and_reencoded_losslessly(
    tmp_path: Path,
) -> None:
    filters = tmp_path / "site.dicom"
    filters.write_text(
        "FORMAT dicom\n\n%filter graylist\n\n"
        "LABEL Site CT corner text\n  contains Modality CT\n  coordinates 0,0,200,60\n"
        "  ctpcoordinates 300,400,100,56\n"
    )
    src = DEID_DATA / "humans" / "ctbrain1.dcm"
    assert dcmread(src).file_meta.TransferSyntaxUID.is_compressed
    curator = Curator("study-a", "r1", Policy(filters=(str(filters),)))
    result = curate(curator, src)
    assert result.action == "export" and result.dataset is not None
    out = tmp_path / "out.dcm"
    result.dataset.save_as(out, enforce_file_format=True)
    back = dcmread(out)
    assert back.file_meta.TransferSyntaxUID == JPEG2000Lossless
    arr = back.pixel_array
    assert not arr[:60, :200].any(), "coordinates region blank"
    assert not arr[400:456, 300:400].any(), "ctpcoordinates (x, y, width, height) blank"
    assert np.asarray(arr[100:300, 100:400]).any(), "the rest is kept"
