"""Issue 14, kinds 4-6: enhanced multi-frame geometry, output that keeps its IOD, objects
without pixels - through ``ridl deid`` and through a run, with several variants each."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import tomli_w
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from typer.testing import CliRunner

from curation.integrity import has_pixel_data
from deid_recipes import Engine, SubjectContext, load_recipe
from deid_recipes.fastpath import deidentify_to_bytes
from export.local import LocalStore
from flows.cli import app
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.projects import project_path
from ridl.pseudonyms import Pseudonymizer
from tests.conftest import accept_test_edit

from .conftest import make_project, require_program
from .iod_objects import (
    PHI,
    VARIANTS,
    comprehensive_sr,
    dx_image,
    enhanced_ct,
    enhanced_mr,
    mr_image,
    nm_multiframe,
    us_multiframe,
    write,
)

SUBJECT = SubjectContext("RS-KINDS", -40)
KEY = b"k" * 64
LAYERS = {
    "ridl-basic": ["ridl-safe-public", "ridl-basic"],
    "ps3.15-basic": ["ridl-safe-public", "ps3.15-basic"],
    "ps3.15-options": [
        "ridl-safe-public",
        "ps3.15-basic",
        "ps3.15-retain-long-modified-dates",
        "ps3.15-retain-safe-private",
        "ps3.15-clean-descriptors",
        "ps3.15-clean-structured-content",
        "ps3.15-clean-graphics",
    ],
}


def _engine(recipe: str, retain: tuple[str, ...] = ()) -> Engine:
    return Engine(load_recipe(LAYERS[recipe]), Pseudonymizer(KEY), retain=retain)


def _apply(recipe: str, ds: Dataset, retain: tuple[str, ...] = ()) -> tuple[Dataset, bytes]:
    _engine(recipe, retain).apply(ds, SUBJECT)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return dcmread(io.BytesIO(data)), data


def _no_phi(data: bytes) -> None:
    for value in PHI:
        for part in value.split("^"):
            assert part.encode() not in data, "identifier in output"


def _errors(path: Path) -> set[str]:
    dciodvfy = require_program("dciodvfy")
    proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {
        re.sub(r"\d+(\.\d+){2,}", "<uid>", re.sub(r"\s+", " ", line.strip()))
        for line in lines
        if line.startswith("Error")
    }


# ---- kind 4: enhanced multi-frame objects keep their geometry ----


@pytest.mark.parametrize("recipe", sorted(LAYERS))
@pytest.mark.parametrize(
    "build", [lambda: enhanced_mr(2), lambda: enhanced_mr(3, implicit=True), enhanced_ct]
)
def test_functional_groups_and_dimensions_are_kept_and_walked(recipe: str, build) -> None:  # type: ignore[no-untyped-def]
    source = build()
    frames = len(source.PerFrameFunctionalGroupsSequence)
    original = source.DimensionOrganizationSequence[0].DimensionOrganizationUID
    out, data = _apply(recipe, source)
    _no_phi(data)
    shared = out.SharedFunctionalGroupsSequence[0]
    assert shared.PixelMeasuresSequence[0].PixelSpacing == [0.5, 0.5]
    assert shared.PlaneOrientationSequence[0].ImageOrientationPatient == [1, 0, 0, 0, 1, 0]
    assert shared.PixelValueTransformationSequence[0].RescaleSlope == 1
    assert Tag(0x00291010) not in shared and Tag(0x00290010) not in shared  # private: gone
    assert len(out.PerFrameFunctionalGroupsSequence) == frames
    for index, item in enumerate(out.PerFrameFunctionalGroupsSequence):
        assert item.PlanePositionSequence[0].ImagePositionPatient == [0, 0, index]
        content = item.FrameContentSequence[0]
        assert content.DimensionIndexValues == [1, index + 1]
        assert content.InStackPositionNumber == index + 1
        if recipe == "ps3.15-options":
            assert content.FrameComments.strip(" ^") == "frame"  # Clean Descriptors
        else:
            assert "FrameComments" not in content
        assert Tag(0x00291011) not in item
        if recipe == "ps3.15-basic":
            assert content.FrameAcquisitionDateTime == "19000101000000"  # D
        else:
            assert content.FrameAcquisitionDateTime == "20191206101500"  # shifted 40 days
    pointers = [i.DimensionIndexPointer for i in out.DimensionIndexSequence]
    assert pointers == [Tag("StackID"), Tag("InStackPositionNumber")]
    organization = out.DimensionOrganizationSequence[0].DimensionOrganizationUID
    assert organization != original  # remapped, the same in every reference
    assert all(i.DimensionOrganizationUID == organization for i in out.DimensionIndexSequence)
    assert out.DeviceSerialNumber == "ANON" and out.SoftwareVersions == "VX1"  # Type 1
    if "MR" in str(out.Modality):
        assert shared.MRTimingAndRelatedParametersSequence[0].RepetitionTime == 500.0
        assert shared.MREchoSequence[0].EffectiveEchoTime == 15.0
        assert shared.MRReceiveCoilSequence[0].ReceiveCoilName == "ANON"  # Type 1 label
        assert out.PulseSequenceName == "SE2D" and out.MRAcquisitionType == "2D"
    else:
        assert shared.CTXRayDetailsSequence[0].KVP == 120
        assert shared.CTReconstructionSequence[0].ConvolutionKernel == "B30f"


def test_functional_groups_a_project_retains_are_not_exported_empty() -> None:
    retain = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
    out, data = _apply("ps3.15-basic", enhanced_mr(2), retain)
    _no_phi(data)
    assert out.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness == 1.0
    assert out.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence


def test_a_dimension_whose_pointer_target_goes_is_dropped_with_its_index_values() -> None:
    ds = enhanced_mr(2)
    ds.DimensionIndexSequence[0].DimensionIndexPointer = Tag("FrameComments")
    out, _ = _apply("ps3.15-basic", ds)
    assert [i.DimensionIndexPointer for i in out.DimensionIndexSequence] == [
        Tag("InStackPositionNumber")
    ]
    values = [
        i.FrameContentSequence[0].DimensionIndexValues for i in out.PerFrameFunctionalGroupsSequence
    ]
    assert values == [1, 2]


# ---- kind 5: output keeps its IOD ----


def test_an_emptied_optional_sequence_is_removed_and_required_ones_stay() -> None:
    out, _ = _apply("ps3.15-basic", mr_image())
    assert "ReferencedStudySequence" not in out  # Type 3, X/Z: not written with zero items
    out, _ = _apply("ps3.15-basic", dx_image())
    assert "AcquisitionContextSequence" in out and len(out.AcquisitionContextSequence) == 0


@pytest.mark.parametrize("recipe", sorted(LAYERS))
def test_technical_attributes_the_iods_require_survive(recipe: str) -> None:
    mr, _ = _apply(recipe, mr_image())
    assert (mr.ScanningSequence, mr.SequenceVariant, mr.MRAcquisitionType) == ("SE", "NONE", "2D")
    assert (mr.EchoTime, mr.RepetitionTime, mr.PositionReferenceIndicator) == (15.0, 500.0, "XY")
    dx, data = _apply(recipe, dx_image())
    _no_phi(data)
    assert dx.ImagerPixelSpacing == [0.1, 0.1]
    assert (dx.PresentationIntentType, dx.DetectorType) == ("FOR PRESENTATION", "SCINTILLATOR")
    assert dx.PositionerType == "NONE" and dx.get("DetectorID") in (None, "ANON")
    nm, _ = _apply(recipe, nm_multiframe(2))
    assert nm.FrameIncrementPointer == [Tag("EnergyWindowVector"), Tag("DetectorVector")]
    assert nm.EnergyWindowVector == [1, 1] and nm.DetectorVector == [1, 2]


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (
            lambda: nm_multiframe(2, private_pointer=True),
            [Tag("EnergyWindowVector"), Tag("DetectorVector")],
        ),
        (lambda: us_multiframe(private_pointer=True), Tag("FrameTime")),
        (lambda: us_multiframe(), Tag("FrameTime")),
    ],
)
def test_frame_increment_pointer_never_names_a_removed_attribute(
    build,
    expected,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    engine = _engine("ps3.15-basic")
    path = write(build(), tmp_path, "obj")
    # The fast path hands such an object to the engine: both paths give the same bytes.
    done = deidentify_to_bytes(engine, lambda _: SUBJECT, path)
    ds = dcmread(path)
    engine.apply(ds, SUBJECT)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    if done is not None:
        assert done[2] == buffer.getvalue()
    out = dcmread(io.BytesIO(buffer.getvalue()))
    assert out.FrameIncrementPointer == expected
    assert Tag(0x00291001) not in out


@pytest.mark.parametrize("recipe", sorted(LAYERS))
@pytest.mark.parametrize("verified", [True, False])
def test_structured_reports_keep_their_required_code_sequences(recipe: str, verified: bool) -> None:
    out, data = _apply(recipe, comprehensive_sr(verified=verified))
    _no_phi(data)
    assert out.PerformedProcedureCodeSequence[0].CodeValue == "24627-2"
    assert "ReferencedPerformedProcedureStepSequence" in out
    assert out.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    if verified:
        observer = out.VerifyingObserverSequence[0]
        assert str(observer.VerifyingObserverName) == "ANONYMOUS"
        assert observer.VerifyingOrganization == "ANON"
        assert len(observer.VerifyingObserverIdentificationCodeSequence) == 0
    else:
        assert "VerifyingObserverSequence" not in out


# ---- through ridl deid and through a run (kinds 4-6) ----


def _project(project_id: str, recipe: str, options: list[str] | None = None) -> None:
    make_project(
        project_id,
        recipe=recipe,
        modalities=("MR", "CT", "NM", "DX", "US", "SR"),
        curation={"non_image": "keep"},
    )
    if options:
        path = project_path(project_id)
        data = tomllib.loads(path.read_text())
        data["scope"]["deid_options"] = options
        data["deid_options"] = options
        path.write_text(tomli_w.dumps(data))
        accept_test_edit(project_id)  # the edit is recorded, as an office would


def _variants(folder: Path) -> dict[str, Path]:
    return {name: write(build(), folder / name, name) for name, build in VARIANTS.items()}


@pytest.mark.parametrize(
    ("recipe", "options"),
    [
        ("ridl-basic", None),
        ("ps3.15-basic", None),
        (
            "ps3.15-basic",
            [
                "retain-long-modified-dates",
                "retain-safe-private",
                "clean-descriptors",
                "clean-structured-content",
                "clean-graphics",
            ],
        ),
    ],
)
def test_ridl_deid_exports_every_variant_whole_and_valid(
    recipe: str, options: list[str] | None, tmp_path: Path
) -> None:
    project_id = f"k-{recipe.replace('.', '')}-{len(options or [])}"
    _project(project_id, recipe, options)
    sources = _variants(tmp_path / "src")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["deid", str(tmp_path / "src"), str(out), "--project", project_id]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["exported"] == len(sources) and not summary["quarantined"]
    by_class: dict[str, list[Path]] = {}
    for path in out.rglob("*.dcm"):
        data = path.read_bytes()
        _no_phi(data)
        by_class.setdefault(str(dcmread(path, stop_before_pixels=True).SOPClassUID), []).append(
            path
        )
    for name, source in sources.items():
        sop = str(dcmread(source, stop_before_pixels=True).SOPClassUID)
        before = _errors(source)
        # Outputs of one SOP class are checked against that class's sources.
        assert any(_errors(p) <= before for p in by_class[sop]), name


def test_a_run_exports_kept_structured_reports_and_enhanced_objects(
    tmp_path: Path,
) -> None:
    _project("k-run", "ps3.15-basic")
    src = tmp_path / "src"
    write(comprehensive_sr(), src / "a", "sr")
    write(comprehensive_sr(verified=False), src / "b", "sr-unverified")
    write(enhanced_mr(2), src / "c", "emr")
    write(enhanced_ct(2), src / "d", "ect")
    store_root = tmp_path / "store"
    plan = prepare_run("k-run", "r1", f"folder:{src}", f"file:{store_root}")
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.exported == 4, counts
    assert not counts.quarantined and not counts.excluded
    store = LocalStore(store_root)
    modalities = []
    for info in store.list("k-run/r1/parts/"):
        if info.key.endswith("_source.json"):
            continue
        modalities += [o["modality"] for o in json.loads(store.get_bytes(info.key))["objects"]]
    assert sorted(modalities) == ["CT", "MR", "SR", "SR"]
    written = [p for p in store_root.rglob("*.dcm")]
    assert len(written) == 4
    for path in written:
        data = path.read_bytes()
        _no_phi(data)
        ds = dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        if ds.Modality == "SR":
            assert not has_pixel_data(ds)
            assert "ContentSequence" in ds  # D: structure kept, text dummied
        else:
            assert ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence


def test_a_run_with_the_default_policy_still_excludes_structured_reports(tmp_path: Path) -> None:
    make_project("k-excl", recipe="ridl-basic", modalities=("SR",))
    src = tmp_path / "src"
    write(comprehensive_sr(), src / "a", "sr")
    plan = prepare_run("k-excl", "r1", f"folder:{src}", f"file:{tmp_path / 'store'}")
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.exported == 0 and sum(counts.excluded.values()) == 1


def test_has_pixel_data_sees_every_kind_of_pixel_data() -> None:
    assert not has_pixel_data(comprehensive_sr())
    assert has_pixel_data(mr_image())
    ds = Dataset()
    ds.FloatPixelData = b"\x00" * 4
    assert has_pixel_data(ds)
