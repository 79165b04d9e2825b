"""Real files as archives hold them, through the folder source and a run.

The inputs are the files pydicom ships (pydicom.data: real vendor and toolkit objects): files
without the 128-byte preamble or without File Meta, big endian objects, RT Plan, RT Dose and RT
Structure Set objects that have no pixel data or many frames. ridl's own synthetic DIR is always
well formed; these are not.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from curation.burned_in import Triage
from curation.checks import CheckObject, Policy, StudyView, check, quarantine, run_checks
from curation.quarantine import list_quarantine
from export.local import LocalStore
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.dicomfile import read_file, to_bytes

from .conftest import make_project

MODALITIES = ("CT", "MR", "RTPLAN", "RTDOSE", "RTSTRUCT")
# A little-endian TIFF header: a dual-personality file (PS3.10 7.5) keeps it in its preamble.
TIFF_PREAMBLE = b"II*\x00\x08\x00\x00\x00" + b"\x07" * 120

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _testfile(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:  # pragma: no cover - pydicom ships these in its wheel
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(str(path))


def _stamped(name: str, **attrs: str) -> bytes:
    """The test file in its own form (preamble, File Meta, encoding kept), with a site and a
    study date in the test project's scope (pydicom's files have neither)."""
    ds = dcmread(_testfile(name), force=True)
    ds.IssuerOfPatientID = "SITE-A"
    ds.StudyDate = "20200115"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    implicit, little = ds.original_encoding
    buffer = io.BytesIO()
    meta = "TransferSyntaxUID" in getattr(ds, "file_meta", {})
    ds.save_as(buffer, implicit_vr=implicit, little_endian=little, enforce_file_format=meta)
    return buffer.getvalue()


def _copy(name: str, folder: Path, data: bytes | None = None, **attrs: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.write_bytes(_stamped(name, **attrs) if data is None else data)
    return target


def _run(src: Path, tmp_path: Path, project_id: str, *, fast: bool = True) -> dict[str, object]:
    """Run the folder as release r1; {counts, stored objects by key, parts}."""
    # One planned destination per source folder: a release is bound to the store it was frozen
    # for; each run then writes to its own store.
    plan = prepare_run(project_id, "r1", f"folder:{src}", f"file:{src.parent / 'plan'}")
    root = tmp_path / ("fast" if fast else "slow")
    ctx = dataclasses.replace(plan.ctx, store_url=f"file:{root}", fast_path=fast)
    counts = process_batch(ctx, plan.studies)
    store = LocalStore(root)
    objects = {i.key: store.get_bytes(i.key) for i in store.list("") if i.key.endswith(".dcm")}
    return {"counts": counts, "objects": objects, "root": root, "studies": plan.studies}


@pytest.fixture
def real_project(ridl_home: Path) -> str:
    make_project("real-files", modalities=MODALITIES)
    return "real-files"


def test_reader_takes_files_without_preamble_or_meta_and_refuses_other_files(
    tmp_path: Path,
) -> None:
    ct = _stamped("CT_small.dcm")
    no_preamble = tmp_path / "no-preamble.dcm"
    no_preamble.write_bytes(ct[128:])  # starts at DICM
    for path in (no_preamble, _testfile("ExplVR_BigEndNoMeta.dcm"), _testfile("rtstruct.dcm")):
        ds = read_file(path)
        assert ds.file_meta.TransferSyntaxUID, path.name
        assert ds.preamble is None
    assert str(read_file(_testfile("ExplVR_BigEndNoMeta.dcm")).file_meta.TransferSyntaxUID) == (
        "1.2.840.10008.1.2.2"
    )
    from pydicom.errors import InvalidDicomError

    for junk in (b"plain text " * 40, b"\x89PNG\r\n\x1a\n" + bytes(400), bytes(600), b""):
        bad = tmp_path / "junk.bin"
        bad.write_bytes(junk)
        with pytest.raises(InvalidDicomError):
            read_file(bad)


def test_files_without_preamble_or_meta_are_exported_with_a_zero_preamble(
    real_project: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    ct = _stamped("CT_small.dcm")
    _copy("ct-from-dicm.dcm", src / "a", ct[128:])  # File Meta, no preamble
    _copy("ExplVR_LitEndNoMeta.dcm", src / "b")  # a data set alone, explicit VR little endian
    # A data set alone, explicit VR big endian (the same object as b in another encoding).
    _copy("ExplVR_BigEndNoMeta.dcm", src / "c", SOPInstanceUID="1.2.826.0.1.3680043.8.498.77")
    _copy("rtstruct.dcm", src / "d")  # a data set alone, implicit VR little endian
    (src / "e").mkdir()
    (src / "e" / "notes.txt").write_text("not an image\n" * 20)
    for fast in (False, True):
        out = _run(src, tmp_path / str(fast), real_project, fast=fast)
        counts = out["counts"]
        assert counts.quarantined.get("not-dicom", 0) == 0, counts.as_dict()  # type: ignore[attr-defined]
        objects: dict[str, bytes] = out["objects"]  # type: ignore[assignment]
        assert len(objects) == 4, counts.as_dict()  # type: ignore[attr-defined]
        for data in objects.values():
            assert data[:128] == bytes(128) and data[128:132] == b"DICM"
            ds = dcmread(io.BytesIO(data))
            assert ds.file_meta.TransferSyntaxUID
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_a_dual_personality_preamble_is_not_copied_into_the_release(
    real_project: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    ct = _stamped("CT_small.dcm")
    _copy("dual.dcm", src, TIFF_PREAMBLE + ct[128:])
    for fast in (False, True):
        out = _run(src, tmp_path / str(fast), real_project, fast=fast)
        objects: dict[str, bytes] = out["objects"]  # type: ignore[assignment]
        assert len(objects) == 1
        (data,) = objects.values()
        assert data[:128] == bytes(128), "the source's preamble reached the release"


def test_rt_objects_and_big_endian_objects_pass_curation(real_project: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("rtplan.dcm", "rtdose.dcm", "rtstruct.dcm"):
        _copy(name, src / "rt")
    # One frame of the same dose grid, as its own instance of the series.
    _copy("rtdose_1frame.dcm", src / "rt", SOPInstanceUID="1.2.826.0.1.3680043.8.498.78")
    _copy("MR_small_bigendian.dcm", src / "mr")
    out = _run(src, tmp_path, real_project)
    counts = out["counts"]
    assert counts.quarantined == {}, counts.as_dict()  # type: ignore[attr-defined]
    objects: dict[str, bytes] = out["objects"]  # type: ignore[assignment]
    modalities = sorted(str(dcmread(io.BytesIO(b)).Modality) for b in objects.values())
    assert modalities == ["MR", "RTDOSE", "RTDOSE", "RTPLAN", "RTSTRUCT"]


def test_single_frame_rt_dose_instances_of_one_series_are_not_a_slice_stack(
    real_project: str, tmp_path: Path
) -> None:
    """Frames of a dose grid stored as separate RT Dose instances (in three encodings) are not
    checked as an image series: their positions are not evenly spaced slices."""
    src = tmp_path / "src"
    for number, name in enumerate(
        ("rtdose_1frame.dcm", "rtdose_expb_1frame.dcm", "rtdose_rle_1frame.dcm"), start=1
    ):
        _copy(name, src, SOPInstanceUID=f"1.2.826.0.1.3680043.8.498.9{number}")
    out = _run(src, tmp_path, real_project)
    counts = out["counts"]
    assert counts.quarantined == {} and counts.exported == 3, counts.as_dict()  # type: ignore[attr-defined]


def test_big_endian_known_regions_are_blanked(ridl_home: Path, tmp_path: Path) -> None:
    """Region cleaning writes big endian pixel data back in the object's own byte order."""
    from curation.pixels import clean_regions

    ds = dcmread(_testfile("MR_small_bigendian.dcm"))
    before = ds.pixel_array.copy()
    assert before[:4, :4].any()
    clean_regions(ds, [(0, "0,0,4,4")])
    after = dcmread(io.BytesIO(_saved(ds))).pixel_array
    assert not after[:4, :4].any()
    assert (after[8:, 8:] == before[8:, 8:]).all()


def _saved(ds) -> bytes:  # type: ignore[no-untyped-def]
    return to_bytes(ds)


@check("explodes")
def _explodes(obj: CheckObject) -> object:
    raise RuntimeError("a check's own bug")


def test_a_check_that_raises_quarantines_the_object_naming_the_check(tmp_path: Path) -> None:
    path = _testfile("CT_small.dcm")
    header = dcmread(path, stop_before_pixels=True)
    obj = CheckObject(path, header, StudyView([header]), Policy())
    verdict = run_checks([_explodes], obj)  # type: ignore[list-item]
    assert verdict.action == "quarantine"
    assert verdict.reason == "check-failed-explodes"
    assert "check=explodes" in verdict.detail


def test_a_curation_step_that_raises_quarantines_the_object_not_the_batch(
    real_project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    _copy("CT_small.dcm", src)

    def broken(self, header):  # type: ignore[no-untyped-def]
        raise ValueError("a triage step's own bug")

    monkeypatch.setattr(Triage, "__call__", broken)
    out = _run(src, tmp_path, real_project)
    counts = out["counts"]
    assert sum(counts.quarantined.values()) == 1, counts.as_dict()  # type: ignore[attr-defined]
    (record,) = list_quarantine(real_project, "r1")
    assert record.reason == "check-failed-curation"
    assert record.detail.startswith("check=curation")


def test_published_parts_hold_no_digest_or_path_of_an_original_file(
    real_project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever holds an original file must not be able to find its subject in the release."""
    src = tmp_path / "src"
    _copy("CT_small.dcm", src / "ct")
    _copy("MR_small.dcm", src / "mr")
    # Every object is held back by a check, so a reviewer may decide on it.
    hold = check("hold")(lambda obj: quarantine("series-instance-gap"))
    monkeypatch.setattr("curation.pipeline.load_checks", lambda names: [hold])
    out = _run(src, tmp_path, real_project)
    assert sum(out["counts"].quarantined.values()) == 2  # type: ignore[attr-defined]
    originals = [p.read_bytes() for p in src.rglob("*.dcm")]
    import hashlib

    digests = [hashlib.sha256(b).hexdigest() for b in originals]
    root: Path = out["root"]  # type: ignore[assignment]
    published = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    for digest in digests:
        assert digest.encode() not in published
        assert digest.upper().encode() not in published
    assert str(src).encode() not in published
    for part in root.rglob("parts/*.json"):
        assert "review" not in json.loads(part.read_bytes())
    assert {q.sha256 for q in list_quarantine(real_project, "r1")} == set(digests)
