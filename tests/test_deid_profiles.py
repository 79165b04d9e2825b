"""The PS3.15 profile and options as layered recipes: what each layer does to named attributes."""

from __future__ import annotations

import copy
import datetime as dt
import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from deid_recipes import DeidError, Engine, SubjectContext, load_recipe
from deid_recipes.engine import clean_text
from ridl.errors import ScopeError
from ridl.projects import load_project
from ridl.pseudonyms import Pseudonymizer

from .conftest import make_project

BASE = ["ridl-safe-public", "ps3.15-basic"]
SUBJECT = SubjectContext("RS-TEST", -100)
KEY = b"p" * 64


def engine(*options: str, unmatched: str = "REMOVE") -> Engine:
    layers = BASE + [f"ps3.15-{o}" for o in options]
    return Engine(load_recipe(layers, unmatched=unmatched), Pseudonymizer(KEY))


def sample() -> Dataset:
    """A CT header with PHI in descriptors, nested references and a private block."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.3.4.100"
    ds.StudyInstanceUID = "1.2.3.4.1"
    ds.SeriesInstanceUID = "1.2.3.4.2"
    ds.FrameOfReferenceUID = "1.2.3.4.3"
    ds.Modality = "CT"
    ds.PatientName = "Tremblay^Josee"
    ds.PatientID = "MRN00123"
    ds.IssuerOfPatientID = "SITE-A"
    ds.PatientBirthDate = "19600102"
    ds.PatientSex = "F"
    ds.PatientAge = "063Y"
    ds.AccessionNumber = "ACC778899"
    ds.StudyDate = "20200115"
    ds.SeriesDate = "20200115"
    ds.StudyTime = "101500"
    ds.InstitutionName = "Hopital Saint-Luc"
    ds.StationName = "CTSTN1"
    ds.DeviceSerialNumber = "SN-4242"
    ds.StudyDescription = "CT chest Tremblay follow-up 20200101"
    ds.SeriesDescription = "AXIAL 5mm"
    ds.Rows = 2
    ds.Columns = 2
    ds.KVP = "120"
    ds.PatientSpeciesDescription = "homo sapiens"  # public, unlisted, not known safe
    ds.SoftwareVersions = "v1"
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = "1.2.3.4.99"
    ds.ReferencedImageSequence = Sequence([ref])
    # Three levels deep: Request Attributes > Requested Procedure Code > (private-free) item.
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4.98"
    inner.ReferencedSOPClassUID = CTImageStorage
    middle = Dataset()
    middle.ReferencedSOPSequence = Sequence([inner])
    middle.SeriesInstanceUID = "1.2.3.4.2"
    outer = Dataset()
    outer.ReferencedSeriesSequence = Sequence([middle])
    outer.StudyInstanceUID = "1.2.3.4.1"
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([outer])
    ds.OriginalAttributesSequence = Sequence([Dataset()])
    ds.OriginalAttributesSequence[0].PatientID = "MRN00123"
    return ds


def out(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_basic_profile_changes_identity_dates_and_descriptors() -> None:
    ds = engine().apply(sample(), SUBJECT)
    assert ds.PatientName == "RS-TEST" and ds.PatientID == "RS-TEST"
    assert not ds.StudyDate and not ds.PatientBirthDate and "StudyDate" in ds  # Z
    assert "SeriesDescription" not in ds and "StudyDescription" not in ds  # X
    assert ds.InstitutionName == "ANON" and ds.StationName == "ANON"  # D
    assert ds.DeviceSerialNumber != "SN-4242" and "IssuerOfPatientID" not in ds
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert ds.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
    data = out(ds)
    for phi in (b"Tremblay", b"MRN00123", b"ACC778899", b"Saint-Luc", b"19600102", b"SN-4242"):
        assert phi not in data


def test_unlisted_public_attributes_removed_unless_known_safe() -> None:
    recipe = load_recipe(BASE)
    species = Tag(tag_for_keyword("PatientSpeciesDescription"))
    assert recipe.action_for(species) is None  # no layer names it: the secure default decides
    ds = engine().apply(sample(), SUBJECT)
    assert "PatientSpeciesDescription" not in ds
    assert ds.Rows == 2 and ds.KVP == "120" and ds.Modality == "CT"  # known-safe technical list
    # deid's own default (unmatched KEEP) would keep it.
    kept = engine(unmatched="KEEP").apply(sample(), SUBJECT)
    assert kept.PatientSpeciesDescription == "homo sapiens"


def test_later_layer_overrides_basic_for_the_attributes_it_names() -> None:
    ds = engine("retain-long-modified-dates").apply(sample(), SUBJECT)
    shifted = (dt.date(2020, 1, 15) + dt.timedelta(days=-100)).strftime("%Y%m%d")
    assert ds.StudyDate == shifted and ds.SeriesDate == shifted  # basic blanks / dummies them
    assert ds.StudyTime == "101500"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"  # the later ADD wins
    assert not ds.PatientBirthDate  # not in the option's column: basic still applies
    codes = [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]


def test_within_one_file_deid_precedence_decides(tmp_path: Path) -> None:
    recipe = tmp_path / "site.dicom"
    recipe.write_text("FORMAT dicom\n\n%header\n\nREMOVE StationName\nKEEP StationName\n")
    layered = load_recipe([*BASE, str(recipe)])
    assert layered.action_for(Tag(tag_for_keyword("StationName"))).name == "KEEP"  # type: ignore[arg-type,union-attr]
    ds = Engine(layered, Pseudonymizer(KEY)).apply(sample(), SUBJECT)
    assert ds.StationName == "CTSTN1"


def test_clean_descriptors_keeps_text_without_identifying_tokens() -> None:
    ds = engine("clean-descriptors").apply(sample(), SUBJECT)
    assert ds.StudyDescription == "CT chest follow-up"
    assert ds.SeriesDescription == "AXIAL 5mm"
    assert "113105" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]


def test_clean_text_removes_names_ids_and_dates() -> None:
    ids = frozenset({"tremblay", "josee", "mrn00123", "saint", "luc"})
    assert clean_text("Josee TREMBLAY, MRN00123 at Saint-Luc", ids) == ", at -"
    assert clean_text("Knee 2 views 12/03/2019 tel 5145551234", ids) == "Knee 2 views tel"
    assert clean_text("AXIAL 5mm", ids) == "AXIAL 5mm"


@pytest.mark.parametrize(
    ("option", "keyword", "expected"),
    [
        ("retain-patient-chars", "PatientSex", "F"),
        ("retain-patient-chars", "PatientAge", "063Y"),
        ("retain-device-id", "DeviceSerialNumber", "SN-4242"),
        ("retain-device-id", "StationName", "CTSTN1"),
        ("retain-institution-id", "InstitutionName", "Hopital Saint-Luc"),
        ("retain-uids", "StudyInstanceUID", "1.2.3.4.1"),
    ],
)
def test_each_retain_option_keeps_its_attributes(option: str, keyword: str, expected: str) -> None:
    plain = engine().apply(sample(), SUBJECT)
    kept = engine(option).apply(sample(), SUBJECT)
    assert str(plain.get(keyword, "")) != expected
    assert str(kept.get(keyword)) == expected


def test_clean_structured_content_cleans_nested_text() -> None:
    ds = sample()
    item = Dataset()
    item.ValueType = "TEXT"
    item.RelationshipType = "CONTAINS"
    item.TextValue = "Patient Tremblay MRN00123 has a nodule"
    item.ConceptNameCodeSequence = Sequence([Dataset()])
    item.ConceptNameCodeSequence[0].CodeMeaning = "Finding for Josee"
    ds.ContentSequence = Sequence([item])
    basic = engine().apply(copy.deepcopy(ds), SUBJECT)
    # D on a sequence: the structure stays (Type 1 in SR), every text in it is a dummy.
    assert basic.ContentSequence[0].TextValue == "ANON"
    assert basic.ContentSequence[0].ConceptNameCodeSequence[0].CodeMeaning == "ANON"
    assert basic.ContentSequence[0].ValueType == "TEXT"
    cleaned = engine("clean-structured-content").apply(ds, SUBJECT)
    content = cleaned.ContentSequence[0]
    assert content.TextValue == "Patient has a nodule"
    assert content.ConceptNameCodeSequence[0].CodeMeaning == "Finding for"
    assert content.ValueType == "TEXT"


def test_clean_graphics_keeps_annotation_text_minus_identifiers() -> None:
    ds = sample()
    text = Dataset()
    text.UnformattedTextValue = "Tremblay L knee"
    layer = Dataset()
    layer.GraphicLayer = "LAYER1"
    layer.TextObjectSequence = Sequence([text])
    ds.GraphicAnnotationSequence = Sequence([layer])
    dummied = engine().apply(copy.deepcopy(ds), SUBJECT).GraphicAnnotationSequence[0]
    assert dummied.TextObjectSequence[0].UnformattedTextValue == "ANON"
    graphics = engine("clean-graphics").apply(copy.deepcopy(ds), SUBJECT)
    layer_out = graphics.GraphicAnnotationSequence[0]
    assert layer_out.GraphicLayer == "LAYER1"  # the annotation is kept...
    # ...but Unformatted Text Value is a descriptor (D, or C with Clean Descriptors).
    assert layer_out.TextObjectSequence[0].UnformattedTextValue == "ANON"
    both = engine("clean-graphics", "clean-descriptors").apply(ds, SUBJECT)
    text_out = both.GraphicAnnotationSequence[0].TextObjectSequence[0]
    assert text_out.UnformattedTextValue == "L knee"


def test_reference_sequences_are_kept_with_remapped_uids_three_levels_deep() -> None:
    eng = engine()
    ds = eng.apply(sample(), SUBJECT)
    keys = Pseudonymizer(KEY)
    ref = ds.ReferencedImageSequence[0]  # X/Z/U*: kept, not emptied
    assert ref.ReferencedSOPInstanceUID == keys.uid("1.2.3.4.99")
    assert ref.ReferencedSOPClassUID == CTImageStorage  # standard UIDs stay
    outer = ds.CurrentRequestedProcedureEvidenceSequence[0]
    middle = outer.ReferencedSeriesSequence[0]
    inner = middle.ReferencedSOPSequence[0]
    assert outer.StudyInstanceUID == ds.StudyInstanceUID == keys.uid("1.2.3.4.1")
    assert middle.SeriesInstanceUID == ds.SeriesInstanceUID
    assert inner.ReferencedSOPInstanceUID == keys.uid("1.2.3.4.98")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == keys.uid("1.2.3.4.100")
    assert "OriginalAttributesSequence" not in ds
    other = Engine(load_recipe(BASE), Pseudonymizer(b"q" * 64)).apply(sample(), SUBJECT)
    assert other.StudyInstanceUID != ds.StudyInstanceUID  # never linkable across projects


def test_every_uid_is_remapped_even_when_no_rule_names_it() -> None:
    ds = sample()
    ds.add_new(0x00081150, "UI", "1.2.3.4.77")  # Referenced SOP Class UID (kept list)
    ds.add_new(0x0040A124, "UI", "1.2.3.4.55")  # UID (named by the profile)
    ds.add_new(0x00189767, "UI", "1.2.3.4.66")  # unlisted UI attribute
    out_ds = engine().apply(ds, SUBJECT)
    data = out(out_ds)
    for uid in (b"1.2.3.4.55", b"1.2.3.4.66", b"1.2.3.4.1\x00", b"1.2.3.4.99"):
        assert uid not in data


def _with_private(creator: str, element: int, value: str) -> Dataset:
    ds = sample()
    block = ds.private_block(0x7053, creator, create=True)
    block.add_new(element, "DS", value)
    other = ds.private_block(0x0029, "ACME PHI", create=True)
    other.add_new(0x10, "LO", "Tremblay^Josee")
    return ds


def test_safe_private_kept_by_creator_not_by_element_number() -> None:
    safe = engine("retain-safe-private").apply(
        _with_private("Philips PET Private Group", 0x00, "1.5"), SUBJECT
    )
    kept = [e for e in safe if e.tag.is_private]
    assert [str(e.value) for e in kept if not e.tag.is_private_creator] == ["1.5"]
    assert any(e.value == "Philips PET Private Group" for e in kept)
    assert b"Tremblay" not in out(safe)
    # Same group and element byte under another creator: removed.
    impostor = engine("retain-safe-private").apply(
        _with_private("NOT PHILIPS", 0x00, "1.5"), SUBJECT
    )
    assert not any(e.tag.is_private for e in impostor)
    # Without the option every private element goes.
    plain = engine().apply(_with_private("Philips PET Private Group", 0x00, "1.5"), SUBJECT)
    assert not any(e.tag.is_private for e in plain)


def test_unknown_character_set_is_refused() -> None:
    ds = sample()
    ds.SpecificCharacterSet = "ISO_IR 999"
    with pytest.raises(DeidError, match="unknown-charset"):
        engine().apply(ds, SUBJECT)


def test_kept_element_of_unknown_vr_is_refused() -> None:
    ds = sample()
    ds.add_new(0x00181999, "UN", b"ABCD")  # a public tag not in the dictionary, kept via KEEP
    with pytest.raises(DeidError, match="unknown-vr"):
        engine(unmatched="KEEP").apply(ds, SUBJECT)


def test_unparseable_sequence_is_refused(tmp_path: Path) -> None:
    ds = sample()
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    ds.save_as(tmp_path / "ok.dcm", enforce_file_format=True)
    data = bytearray(path.read_bytes())
    marker = bytes.fromhex("0800 4011".replace(" ", ""))  # (0008,1140) Referenced Image Seq
    at = data.find(marker)
    assert at > 0
    # The first item's length now cuts an element in half; pydicom reads it without complaint.
    item = data.find(b"\xfe\xff\x00\xe0", at)
    data[item + 4 : item + 8] = (7).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    bad = dcmread(path)
    with pytest.raises(DeidError, match="unparseable-sequence"):
        engine().apply(bad, SUBJECT)
    assert engine().apply(dcmread(tmp_path / "ok.dcm"), SUBJECT)  # the intact file passes


def test_project_may_choose_only_options_its_scope_allows() -> None:
    import tomllib

    import tomli_w

    from ridl.projects import project_path
    from tests.conftest import accept_test_edit

    make_project("opt-a", recipe="ps3.15-basic")
    path = project_path("opt-a")
    data = tomllib.loads(path.read_text())
    data["deid_options"] = ["retain-uids"]
    path.write_text(tomli_w.dumps(data))
    accept_test_edit("opt-a")
    with pytest.raises(ScopeError, match="retain-uids") as err:
        load_project("opt-a").recipe_spec()
    assert err.value.field == "deid_options"
    data["scope"]["deid_options"] = ["retain-uids", "clean-descriptors"]
    path.write_text(tomli_w.dumps(data))
    accept_test_edit("opt-a")
    spec = load_project("opt-a").recipe_spec()
    assert spec == "ridl-safe-public+ps3.15-basic+ps3.15-retain-uids"
    assert [c for c, _ in load_recipe(spec).codes] == ["113100", "113110"]


def test_a_site_recipe_layers_last(tmp_path: Path) -> None:
    import dataclasses

    site = tmp_path / "site-keep-station.dicom"
    site.write_text("FORMAT dicom\n\n%header\n\nKEEP StationName\n")
    project = dataclasses.replace(
        make_project("site-b", recipe="ps3.15-basic"), site_recipes=(str(site),)
    )
    assert project.recipe_layers()[-1] == str(site)
    eng = Engine(load_recipe(project.recipe_spec()), Pseudonymizer(KEY))
    assert eng.apply(sample(), SUBJECT).StationName == "CTSTN1"


def test_synthetic_ct_with_ps315_profile_leaks_nothing(synth_dir) -> None:  # type: ignore[no-untyped-def]
    path = next(p for p in synth_dir.files if p.name == "ct_001.dcm")
    ds = dcmread(path)
    phi = [str(ds.PatientName).split("^")[0], str(ds.PatientID), str(ds.AccessionNumber)]
    phi.append(str(ds.OtherPatientIDsSequence[0].PatientID))
    uid = str(ds.StudyInstanceUID)
    done = engine("retain-long-modified-dates", "clean-descriptors").apply(ds, SUBJECT)
    data = out(done)
    for value in [*phi, uid]:
        assert value.encode() not in data
    assert len(done.PixelData) == 64 * 64 * 2


def test_text_that_cannot_be_decoded_is_refused_when_it_must_be_cleaned(tmp_path: Path) -> None:
    from pydicom.dataelem import DataElement

    ds = sample()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    ds.add(DataElement(0x00081030, "LO", b"CT \xff\xfe chest"))  # Study Description
    path = tmp_path / "bad-text.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DeidError, match="undecodable-text"):
        engine("clean-descriptors").apply(dcmread(path), SUBJECT)
    assert "StudyDescription" not in engine().apply(dcmread(path), SUBJECT)  # X: no decoding
