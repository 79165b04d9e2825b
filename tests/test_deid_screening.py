"""`ridl deid` under a project curates each object exactly as a run does: burned-in text in an
ultrasound whose header says nothing of it is held for review (never written), counted under
the reason a run gives, and reviewed with the same `ridl review` commands (release ``adhoc``).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import tomli_w
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from typer.testing import CliRunner

from export.local import LocalStore
from flows.cli import app
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.projects import Project, project_path
from tests.conftest import accept_test_edit
from tests.curation_data import burn_text

from .conftest import SITES, make_project

BANNER_FREE_TEXT = [(40, 150, "SMITH JOHN"), (40, 220, "MRN 4455667")]


def _us_with_text(synth_dir, folder: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """Two ultrasounds of one study (from the synthetic DIR's, all values invented): one whose
    pixels carry text inside the image region while its header says Burned In Annotation NO,
    one with no text at all."""
    source = next(p for p in synth_dir.files if p.name == "us_001.dcm")
    folder.mkdir(parents=True)
    paths = []
    for number, lines in ((1, BANNER_FREE_TEXT), (2, [])):
        ds = dcmread(source)
        ds.StudyDate = "20200115"
        ds.IssuerOfPatientID = SITES[0]
        ds.BurnedInAnnotation = "NO"  # the header does not say: only the pixels do
        ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.77{number}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        rows, cols = 320, 480
        body = np.random.default_rng(number).integers(0, 60, size=(rows, cols), dtype=np.uint8)
        gray = burn_text(body, lines, size=36, value=230) if lines else body
        ds.Rows, ds.Columns = rows, cols
        region = Dataset()
        region.RegionSpatialFormat = 1
        region.RegionDataType = 1
        region.RegionFlags = 0
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 20
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
        ds.SequenceOfUltrasoundRegions = Sequence([region])
        ds.PixelData = np.ascontiguousarray(np.stack([gray] * 3, axis=-1)).tobytes()
        path = folder / f"us_{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths[0], paths[1]


def _deid(src: Path, out: Path, project_id: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(app, ["deid", str(src), str(out), "--project", project_id])
    assert result.exit_code == 0, result.output
    summary: dict = json.loads(result.stdout[result.stdout.index("{") :])  # type: ignore[type-arg]
    if summary["held_for_review"]:  # the office is told how to review them
        assert f"--project {project_id} --release adhoc" in result.stderr, result.stderr
    return summary


def test_deid_holds_burned_in_text_a_run_holds_and_review_releases_it(
    synth_dir,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    make_project("deid-ocr", modalities=("US",))
    src = tmp_path / "src"
    texted, clean = _us_with_text(synth_dir, src)

    # What a run of the same folder does with it: the reference.
    plan = prepare_run("deid-ocr", "r1", f"folder:{src}", f"file:{tmp_path / 'store'}")
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.exported == 1 and counts.quarantined == {"burned-in-text": 1}, counts.as_dict()
    stored = [i.key for i in LocalStore(tmp_path / "store").list("") if i.key.endswith(".dcm")]
    assert len(stored) == 1

    out = tmp_path / "out"
    summary = _deid(src, out, "deid-ocr")
    assert summary["quarantined"] == {"burned-in-text": 1}, summary
    assert summary["held_for_review"] == 1 and summary["verified"] == 1
    assert summary["exported"] == 1 and summary["files"] == 2
    written = list(out.rglob("*.dcm"))
    assert len(written) == 1
    assert int(dcmread(written[0]).InstanceNumber) == 2, "the object with text is not written"

    # The office reviews it as it reviews a run's objects, under the release `adhoc`.
    listed = CliRunner().invoke(
        app, ["review", "list", "--project", "deid-ocr", "--release", "adhoc"]
    )
    assert listed.exit_code == 0, listed.output
    assert "burned-in-text" in listed.output and "quarantined" in listed.output
    from curation.review import list_records

    records = list_records("deid-ocr", "adhoc")  # every at-risk object has a record
    (record,) = [r for r in records if r.status == "quarantined"]
    assert record.reason == "burned-in-text" and record.boxes
    decided = CliRunner().invoke(
        app,
        ["review", "decide", "--project", "deid-ocr", "--release", "adhoc", record.object,
         "approve", "--reviewer", "office"],
    )  # fmt: skip
    assert decided.exit_code == 0, decided.output
    # The next request honours the decision: the approved object is written.
    again = _deid(src, tmp_path / "out2", "deid-ocr")
    assert again["exported"] == 2 and again["quarantined"] == {}, again
    assert texted.exists() and clean.exists()


def test_deid_applies_the_run_checks_and_no_header_rule_alone_holds_an_object(
    synth_dir,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """The synthetic ultrasound says Burned In Annotation YES and carries its banner above the
    ultrasound region: a run blanks the banner, finds no text left and exports it; `ridl deid`
    does the same. The dose screen (a secondary capture) is excluded as a run excludes it."""
    make_project("deid-us", modalities=("US", "CT"))
    src = tmp_path / "src"
    src.mkdir()
    us = next(p for p in synth_dir.files if p.name == "us_001.dcm")
    ds = dcmread(us)
    ds.StudyDate, ds.IssuerOfPatientID = "20200115", SITES[0]
    ds.save_as(src / "us.dcm", enforce_file_format=True)
    dose = next(p for p in synth_dir.files if p.name == "dose.dcm")
    ds = dcmread(dose)
    ds.StudyDate, ds.IssuerOfPatientID = "20200115", SITES[0]
    ds.save_as(src / "dose.dcm", enforce_file_format=True)

    plan = prepare_run("deid-us", "r1", f"folder:{src}", f"file:{tmp_path / 'store'}")
    counts = process_batch(plan.ctx, plan.studies)
    summary = _deid(src, tmp_path / "out", "deid-us")
    assert summary["exported"] == counts.exported
    assert summary["quarantined"] == dict(counts.quarantined), (summary, counts.as_dict())
    assert summary["excluded"] == dict(counts.excluded), (summary, counts.as_dict())
    (written,) = list((tmp_path / "out").rglob("*.dcm"))
    out = dcmread(written)
    assert out.Modality == "US" and out.BurnedInAnnotation == "NO"
    assert not out.pixel_array[:28].any(), "the banner above the ultrasound region is blank"


def test_deid_verifies_each_object_against_its_study_identifiers(
    synth_dir,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A project whose approval keeps Study Description, which the synthetic DIR fills with the
    patient's family name: each such object is stopped before it is written, as in a run."""
    make_project("deid-leaky", modalities=("CT",))
    path = project_path("deid-leaky")
    data = tomllib.loads(path.read_text())
    data["scope"]["retain"] = ["StudyDescription"]
    path.write_text(tomli_w.dumps(data))
    accept_test_edit("deid-leaky")
    src = tmp_path / "src"
    src.mkdir()
    ct = next(p for p in synth_dir.files if p.name.startswith("ct_"))
    ds = dcmread(ct)
    ds.StudyDate, ds.IssuerOfPatientID = "20200115", SITES[0]
    ds.save_as(src / "ct.dcm", enforce_file_format=True)
    assert str(ds.PatientName).split("^")[0] in str(ds.StudyDescription), "the test can fail"

    summary = _deid(src, tmp_path / "out", "deid-leaky")
    assert summary["quarantined"] == {"verification-hit": 1}, summary
    assert summary["exported"] == 0 and not list((tmp_path / "out").rglob("*.dcm"))
    from curation.quarantine import list_quarantine

    (held,) = list_quarantine("deid-leaky", "adhoc")
    assert "StudyDescription holds a name" in held.detail


def test_an_output_folder_inside_the_input_folder_is_refused(
    project: Project, tmp_path: Path
) -> None:
    """Its outputs would be read back as inputs by the next request: one error line, nothing
    written."""
    from typer.testing import CliRunner

    from flows.cli import app

    src = tmp_path / "in"
    src.mkdir()
    args = ["deid", str(src), str(src / "out"), "--project", project.id]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "inside the input folder" in result.stderr, result.stderr
    assert not (src / "out").exists()
