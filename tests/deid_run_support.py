"""Small real-world inputs put through `ridl deid` and through a run, for the de-identification
tests of kept private sequences, date forms and nested names.

Each input is a pydicom-built CT (pixel data last, so the fast path may serve it) written to a
folder; :func:`deid_cli` runs ``ridl deid`` on the folder and :func:`run_folder` runs the same
folder as a release (prepare_run, then process_batch with the fast path off and on: both must
store the same bytes).
"""

from __future__ import annotations

import dataclasses
import io
import json
import tomllib
from pathlib import Path

import tomli_w
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from typer.testing import CliRunner

from export.local import LocalStore
from flows.cli import app
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.projects import project_path
from tests.conftest import accept_test_edit

from .conftest import make_project

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
PHI = ("Tremblay", "Josee", "MRN00123", "19600102", "ACC778899", "Saint-Luc")


def ct(number: int, **attrs: object) -> Dataset:
    """A small CT of one subject and study (site SITE-A, study date 2020-01-15)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{STUDY_UID}.3.{number}"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = f"{STUDY_UID}.2"
    ds.FrameOfReferenceUID = f"{STUDY_UID}.4"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Tremblay^Josee"
    ds.PatientID = "MRN00123"
    ds.IssuerOfPatientID = "SITE-A"
    ds.PatientBirthDate = "19600102"
    ds.PatientSex = "F"
    ds.AccessionNumber = "ACC778899"
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = ""
    ds.StudyDate = "20200115"
    ds.StudyTime = "101500"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Manufacturer = "ACME"
    # Position Reference Indicator is left out: ridl-basic drops it (a Type 2 attribute, the
    # output-IOD issue's business), and these inputs test other things.
    ds.PatientPosition = "HFS"
    ds.Laterality = ""
    ds.KVP = "120"
    ds.SliceThickness = "1"
    ds.ImagePositionPatient = [0, 0, number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.AcquisitionNumber = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for name, value in attrs.items():
        setattr(ds, name, value)
    ds.PixelData = bytes(range(128))
    return ds


def save(ds: Dataset, path: Path, implicit: bool = False) -> Path:
    """Write ``ds`` as a DICOM file (implicit or explicit VR little endian)."""
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path


def project(project_id: str, recipe: str = "ps3.15-basic", options: tuple[str, ...] = ()) -> str:
    """A project with ``recipe`` and the PS3.15 ``options`` (approved in its scope), approved for
    every modality these tests write (``ridl deid`` under a project excludes the others), and
    curation keeping non-image objects (structured reports), which a run and ``ridl deid``
    exclude by default."""
    make_project(
        project_id,
        recipe=recipe,
        modalities=("CT", "CR", "US", "MR", "SR", "KO", "PR"),
        curation={"non_image": "keep"},
    )
    path = project_path(project_id)
    data = tomllib.loads(path.read_text())
    data["scope"]["deid_options"] = list(options)
    data["deid_options"] = list(options)
    path.write_text(tomli_w.dumps(data))
    accept_test_edit(project_id)  # the edit is recorded, as an office would
    return project_id


def deid_cli(src: Path, out: Path, project_id: str) -> dict[int, Path]:
    """``ridl deid src out --project P``: {Instance Number: output file}; nothing quarantined."""
    result = CliRunner().invoke(app, ["deid", str(src), str(out), "--project", project_id])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["quarantined"] == {}, summary
    written = {int(dcmread(p).InstanceNumber): p for p in out.rglob("*.dcm")}
    assert len(written) == summary["exported"] == summary["files"]
    return written


def run_folder(src: Path, tmp_path: Path, project_id: str) -> dict[int, bytes]:
    """The folder as release r1, with the fast path off then on: {Instance Number: bytes}.

    Both ways must export every object and store the same bytes.
    """
    plan = prepare_run(project_id, "r1", f"folder:{src}", f"file:{tmp_path / 'run-plan'}")
    stored: dict[bool, dict[str, bytes]] = {}
    for fast in (False, True):
        root = tmp_path / ("run-fast" if fast else "run-slow")
        ctx = dataclasses.replace(plan.ctx, store_url=f"file:{root}", fast_path=fast)
        counts = process_batch(ctx, plan.studies)
        assert counts.quarantined == {} and counts.excluded == {}, counts.as_dict()
        store = LocalStore(root)
        stored[fast] = {
            i.key: store.get_bytes(i.key) for i in store.list("") if i.key.endswith(".dcm")
        }
    assert stored[False] == stored[True], "the fast path and the dataset path differ"
    out = {int(dcmread(io.BytesIO(b)).InstanceNumber): b for b in stored[True].values()}
    assert len(out) == len(list(src.glob("*.dcm")))
    return out


def write_output(data: bytes, path: Path) -> Path:
    """Bytes of a run's object as a file (for dciodvfy)."""
    path.write_bytes(data)
    return path
