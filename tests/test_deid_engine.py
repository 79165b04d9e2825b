"""The first de-identification: keyed pseudonyms, consistent UIDs, per-subject date shifts."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from deid_recipes import DeidError, Engine, SubjectContext, load_recipe
from ridl.pseudonyms import Pseudonymizer, SubjectKey
from ridl.synth import HN_ISSUER


def _engine(secret: bytes = b"k" * 64, retain: tuple[str, ...] = ()) -> Engine:
    return Engine(load_recipe("ridl-basic"), Pseudonymizer(secret), retain=retain)


def _ct(synth_dir) -> Dataset:  # type: ignore[no-untyped-def]
    path = next(p for p in synth_dir.files if p.name == "ct_001.dcm")
    return dcmread(path)


def _bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_identifiers_private_tags_and_nested_phi_are_gone(synth_dir) -> None:  # type: ignore[no-untyped-def]
    ds = _ct(synth_dir)
    originals = [
        str(ds.PatientName), str(ds.PatientID), str(ds.PatientAddress),
        str(ds.PatientTelephoneNumbers), str(ds.AccessionNumber), str(ds.PatientBirthDate),
        str(ds.InstitutionName), str(ds.StudyInstanceUID), str(ds.StudyDate),
    ]  # fmt: skip
    hn = str(ds.OtherPatientIDsSequence[0].PatientID)
    family = str(ds.PatientName).split("^")[0]
    _engine().apply(ds, SubjectContext("RS-TEST", -100))
    data = _bytes(ds)
    for value in [*originals, hn, family]:
        assert value.encode() not in data, "an original identifier survived"
    assert ds.PatientID == "RS-TEST" and ds.PatientName == "RS-TEST"
    assert ds.PatientIdentityRemoved == "YES"
    assert "RequestAttributesSequence" not in ds
    assert "OtherPatientIDsSequence" not in ds
    assert not any(elem.tag.is_private for elem in ds)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # standard UIDs are not remapped
    assert len(ds.PixelData) == 64 * 64 * 2


def test_uids_consistent_within_project_and_unlinkable_across(synth_dir) -> None:  # type: ignore[no-untyped-def]
    a1, a2, b = _ct(synth_dir), _ct(synth_dir), _ct(synth_dir)
    study = str(a1.StudyInstanceUID)
    _engine(b"a" * 64).apply(a1, SubjectContext("RS-A", -10))
    _engine(b"a" * 64).apply(a2, SubjectContext("RS-A", -10))
    _engine(b"b" * 64).apply(b, SubjectContext("RS-B", -10))
    assert a1.StudyInstanceUID == a2.StudyInstanceUID != study
    assert a1.StudyInstanceUID != b.StudyInstanceUID
    assert a1.StudyInstanceUID.startswith("2.25.")


def test_rejection_note_references_are_remapped_like_the_instances(synth_dir) -> None:  # type: ignore[no-untyped-def]
    kos = dcmread(next(p for p in synth_dir.files if p.name == "kos.dcm"))
    ct = dcmread(kos.filename.replace("kos.dcm", "ct_001.dcm"))
    engine = _engine()
    engine.apply(kos, SubjectContext("RS-X", -5))
    engine.apply(ct, SubjectContext("RS-X", -5))
    refs = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    sops = {str(r.ReferencedSOPInstanceUID) for r in refs.ReferencedSOPSequence}
    assert ct.SOPInstanceUID in sops
    assert refs.SeriesInstanceUID == ct.SeriesInstanceUID


def test_same_person_at_two_sites_gets_one_research_id_and_shift(synth_dir) -> None:  # type: ignore[no-untyped-def]
    keys = Pseudonymizer(b"s" * 64)
    linked = {}
    for reg in synth_dir.registrations:
        if reg.person.health_number:
            linked.setdefault(reg.person.health_number, []).append(reg)
    regs = next(r for r in linked.values() if len(r) > 1)
    subjects = [SubjectKey(r.person.health_number, r.issuer, r.patient_id) for r in regs]
    assert len({keys.research_id(s) for s in subjects}) == 1
    assert len({keys.date_shift_days(s) for s in subjects}) == 1
    # The same Patient ID at two sites without a shared HN are two subjects.
    one = SubjectKey(None, "SITE-A", "MRN1")
    other = SubjectKey(None, "SITE-B", "MRN1")
    assert keys.research_id(one) != keys.research_id(other)
    assert HN_ISSUER == "HN"


def test_intervals_between_a_subjects_studies_are_kept(synth_dir) -> None:  # type: ignore[no-untyped-def]
    engine = _engine()
    first, second = _ct(synth_dir), _ct(synth_dir)
    second.StudyDate = "20200315"
    first.StudyDate = "20200101"
    for ds in (first, second):
        engine.apply(ds, SubjectContext("RS-I", -400))
    d1 = dt.datetime.strptime(first.StudyDate, "%Y%m%d")
    d2 = dt.datetime.strptime(second.StudyDate, "%Y%m%d")
    assert (d2 - d1).days == (dt.date(2020, 3, 15) - dt.date(2020, 1, 1)).days
    assert first.StudyDate == (dt.date(2020, 1, 1) - dt.timedelta(days=400)).strftime("%Y%m%d")


def test_retained_elements_survive_only_when_the_project_keeps_them(synth_dir) -> None:  # type: ignore[no-untyped-def]
    plain, kept = _ct(synth_dir), _ct(synth_dir)
    _engine().apply(plain, SubjectContext("RS-R", -1))
    _engine(retain=("StationName",)).apply(kept, SubjectContext("RS-R", -1))
    assert "StationName" not in plain
    assert "StationName" in kept


def test_unknown_retained_attribute_is_an_error() -> None:
    with pytest.raises(DeidError, match="unknown-retained-attribute"):
        _engine(retain=("NotAnAttribute",))
