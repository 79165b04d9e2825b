"""Every DA, DT and TM form is shifted whole or removed, never by half; verification searches
the original dates of the encounter in every form.

Inputs are modelled on worklist copies into performed-procedure-step attributes (ranges, open
ranges, several values), partial dates, ACR-NEMA dots, DT with fraction and UTC offset, TM
ranges; each goes through the engine, `ridl deid` and a run (fast path off and on), with
``retain-long-modified-dates`` and with ``ridl-basic``, and dciodvfy finds no new error.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from deid_recipes.dates import shift_temporal
from export.local import LocalStore
from export.manifest import build_manifest
from flows.gate import IdentifierDictionary, Verifier, verify_release

from .dciodvfy import new_errors
from .deid_run_support import ct, deid_cli, project, run_folder, save, write_output

ORIGINAL_DATES = ("20200110", "20200115", "20200105", "20200101", "20200131", "2020.01.15")

# Instance Number -> attributes of that input.
VARIANTS: dict[int, dict[str, str]] = {
    1: {
        "PerformedProcedureStepStartDate": "20200110-20200115",  # a worklist range
        "PerformedProcedureStepEndDate": "20200115",
        "PerformedProcedureStepStartTime": "0800-1700",
        "AcquisitionDateTime": "20200115103000.123456+0100",
        "SeriesDate": "20200115",
        "ContentDate": "20200115",
    },
    2: {
        "PerformedProcedureStepStartDate": "-20200115",
        "PerformedProcedureStepEndDate": "20200110-",
        "AcquisitionDateTime": "20200115103000-0500",
        "AcquisitionDate": "2020.01.15",
    },
    3: {
        "PerformedProcedureStepStartDate": "20200110\\20200115",
        "ContentDate": "202001",
        "AcquisitionDateTime": "202001",
        "SeriesDate": "2020",
    },
    4: {
        "PerformedProcedureStepStartDate": "20200231",  # no such day: removed, not kept
        "AcquisitionDateTime": "20200115103000.5",
        "PerformedProcedureStepStartTime": "10:15:00",
    },
    5: {
        "AcquisitionDateTime": "20200110080000-20200115170000",
        "PerformedProcedureStepEndDate": "20200101-20200105\\20200110",
        "PerformedProcedureStepStartTime": "1015",
    },
}
RIDL_BASIC_JITTERED = {"StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"}


def _moved(date: str, days: int) -> str:
    return (dt.date(int(date[:4]), int(date[4:6]), int(date[6:8])) + dt.timedelta(days)).strftime(
        "%Y%m%d"
    )


def _expected(keyword: str, value: str, days: int) -> str | None:
    """What the option must write, worked out by hand for each input value (None: removed)."""
    m = lambda d: _moved(d, days)  # noqa: E731
    table = {
        "20200110-20200115": f"{m('20200110')}-{m('20200115')}",
        "20200115": m("20200115"),
        "0800-1700": "0800-1700",
        "20200115103000.123456+0100": f"{m('20200115')}103000.123456+0100",
        "-20200115": f"-{m('20200115')}",
        "20200110-": f"{m('20200110')}-",
        "20200115103000-0500": f"{m('20200115')}103000-0500",
        "2020.01.15": m("20200115"),
        "20200110\\20200115": f"{m('20200110')}\\{m('20200115')}",
        "202001": m("20200115")[:6],  # from the middle of the month
        "2020": m("20200701")[:4],  # from the middle of the year
        "20200231": None,
        "20200115103000.5": f"{m('20200115')}103000.5",
        "10:15:00": "10:15:00",
        "20200110080000-20200115170000": f"{m('20200110')}080000-{m('20200115')}170000",
        "20200101-20200105\\20200110": f"{m('20200101')}-{m('20200105')}\\{m('20200110')}",
        "1015": "1015",
    }
    return table[value]


def _text(ds: Dataset, keyword: str) -> str | None:
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if isinstance(value, str):
        return value
    return "\\".join(str(v) for v in value)


def _inputs(folder: Path) -> dict[int, Path]:
    return {n: save(ct(n, **attrs), folder / f"{n}.dcm") for n, attrs in VARIANTS.items()}


def _check(data: bytes, n: int, ridl_basic: bool) -> None:
    ds = dcmread(io.BytesIO(data))
    days = (dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date() - dt.date(2020, 1, 15)).days
    assert -3650 <= days <= -1
    for keyword, value in VARIANTS[n].items():
        got = _text(ds, keyword)
        if ridl_basic and keyword not in RIDL_BASIC_JITTERED | {"AcquisitionDateTime"}:
            assert got is None, keyword  # the allow-list does not keep it
            continue
        assert got == _expected(keyword, value, days), (n, keyword)
    for date in ORIGINAL_DATES:
        assert date.encode() not in data, (n, "an original date is still in the object")


@pytest.mark.parametrize(
    "text, vr, days, out",
    [
        ("20200101-20200131", "DA", -1, "20191231-20200130"),
        ("20200101-20200131 ", "DA", 31, "20200201-20200302"),
        ("-20200301", "DA", -1, "-20200229"),
        ("20200229-", "DA", 366, "20210301-"),
        ("2020.02.28\\20200301", "DA", 1, "20200229\\20200302"),
        ("\\20200101", "DA", 1, "\\20200102"),
        ("19991231235959.999999-1200", "DT", 1, "20000101235959.999999-1200"),
        ("20200101+0530-20200102+0530", "DT", -1, "20191231+0530-20200101+0530"),
        ("1999", "DT", 200, "2000"),
        ("201912", "DA", 20, "202001"),
        ("120000-", "TM", 5, "120000-"),
        ("20200101-2020013", "DA", 1, None),  # the end is not a date: removed whole
        ("20200101-garbage", "DT", 1, None),
        ("99991231", "DA", 1, None),
        ("10:15-garbage", "TM", 1, None),
    ],
)
def test_every_form_is_shifted_whole_or_refused(
    text: str, vr: str, days: int, out: str | None
) -> None:
    assert shift_temporal(text, vr, days) == out


def test_date_forms_through_ridl_deid_and_a_run_with_modified_dates(tmp_path: Path) -> None:
    project_id = project("dates-a", options=("retain-long-modified-dates",))
    src = tmp_path / "src"
    inputs = _inputs(src)
    written = deid_cli(src, tmp_path / "out", project_id)
    stored = run_folder(src, tmp_path, project_id)
    for n, path in inputs.items():
        _check(written[n].read_bytes(), n, ridl_basic=False)
        _check(stored[n], n, ridl_basic=False)
        assert dcmread(written[n]).LongitudinalTemporalInformationModified == "MODIFIED"
        assert new_errors(path, written[n]) == [], n
        assert new_errors(path, write_output(stored[n], tmp_path / f"run-{n}.dcm")) == [], n
    # The release's verification reads the source dates and finds none of them.
    store = LocalStore(tmp_path / "run-fast")
    build_manifest(store, f"{project_id}/r1", 1, project_id, "r1")
    report = verify_release(project_id, "r1", store.url, ocr=False, record_audit=False)
    assert report.passed, report.render()
    # 20200101, 20200105, 20200110 and 20200115, from ranges, lists, DT and the ACR-NEMA form:
    # each date is one term, searched in every written form.
    assert report.dictionary_kinds.get("encounter-date", 0) == 4


def test_date_forms_through_ridl_deid_and_a_run_with_ridl_basic(tmp_path: Path) -> None:
    project_id = project("dates-b", recipe="ridl-basic")
    src = tmp_path / "src"
    inputs = _inputs(src)
    written = deid_cli(src, tmp_path / "out", project_id)
    stored = run_folder(src, tmp_path, project_id)
    for n, path in inputs.items():
        _check(written[n].read_bytes(), n, ridl_basic=True)
        _check(stored[n], n, ridl_basic=True)
        assert new_errors(path, written[n]) == [], n


# ---- verification: the original dates are searched (R5 for dates of the encounter) ----------


def _verifier(*headers: Dataset) -> Verifier:
    dictionary = IdentifierDictionary()
    for i, ds in enumerate(headers):
        dictionary.add_header(ds, research_id=f"RS-{i}")
    return Verifier(dictionary, ocr=None)


def _output(patient: str = "RS-0", **attrs: str) -> bytes:
    ds = ct(1)
    for keyword in list(ds.dir()):
        if keyword not in ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "Columns"):
            delattr(ds, keyword)
    ds.PatientID = patient
    for name, value in attrs.items():
        setattr(ds, name, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _hits(verifier: Verifier, data: bytes) -> list[tuple[str, str]]:
    return sorted((h.path, h.kind) for h in verifier.check_bytes("k.dcm", data).hits)


def _source(**attrs: str) -> Dataset:
    ds = Dataset()
    for name, value in attrs.items():
        setattr(ds, name, value)
    return ds


def test_original_encounter_dates_are_searched_in_every_form() -> None:
    v = _verifier(
        _source(StudyDate="20200115", PerformedProcedureStepStartDate="20200110-20200112")
    )
    pps = ("PerformedProcedureStepStartDate", "encounter-date")
    # A range shifted by half, in either order, and a range end of the source.
    assert _hits(v, _output(PerformedProcedureStepStartDate="20191001-20200115")) == [pps]
    assert _hits(v, _output(PerformedProcedureStepStartDate="-20200112")) == [pps]
    assert _hits(v, _output(PerformedProcedureStepStartDate="20191001\\20200110")) == [pps]
    # Inside a DT, with a time, fraction and UTC offset after it.
    dt_hit = [("AcquisitionDateTime", "encounter-date")]
    assert _hits(v, _output(AcquisitionDateTime="20200115103000.123+0100")) == dt_hit
    assert _hits(v, _output(AcquisitionDateTime="20200115")) == dt_hit
    # Written with separators in text.
    for text in ("seen 2020-01-15", "15/01/2020", "01/15/2020", "on 15.01.2020", "2020.01.15"):
        assert _hits(v, _output(ImageComments=text)) == [("ImageComments", "encounter-date")]
    # Shifted dates do not block.
    assert _hits(v, _output(StudyDate="20191007", AcquisitionDateTime="20191007103000")) == []


def test_encounter_dates_follow_r5_and_r3() -> None:
    v = _verifier(_source(StudyDate="20200115"), _source(StudyDate="19000101"))
    # Another subject's date attribute holding the same day is a coincidence...
    assert _hits(v, _output("RS-9", StudyDate="20200115")) == []
    assert _hits(v, _output("RS-9", AcquisitionDateTime="20200115093000")) == []
    # ...and so is the same day in its text (rules version 9: a date alone names nobody else);
    # for the subject whose date it is, it blocks anywhere.
    assert _hits(v, _output("RS-9", ImageComments="20200115")) == []
    assert _hits(v, _output("RS-0", ImageComments="20200115")) == [
        ("ImageComments", "encounter-date")
    ]
    assert _hits(v, _output("RS-0", SeriesDate="20200115")) == [("SeriesDate", "encounter-date")]
    # Digits after a date match only inside a DT value (R3 holds everywhere else).
    assert _hits(v, _output(ImageComments="202001151234", DeviceSerialNumber="20200115999")) == []
    # The placeholder date archives write for an unknown date is nobody's encounter date.
    assert _hits(v, _output("RS-1", ContentDate="19000101")) == []


def test_a_subjects_shifted_date_that_equals_another_of_its_dates_is_a_coincidence() -> None:
    # Two studies of one subject 100 days apart, and a shift of -100 days: the later study's
    # date, shifted, is the earlier study's original date. In that subject's date attributes
    # it is a coincidence; an unshifted date that is no shifted one still blocks.
    dictionary = IdentifierDictionary()
    dictionary.add_header(_source(StudyDate="20200415"), research_id="RS-0", shift_days=-100)
    dictionary.add_header(_source(StudyDate="20200106"), research_id="RS-0", shift_days=-100)
    v = Verifier(dictionary, ocr=None)
    assert _hits(v, _output(StudyDate="20200106")) == []  # 20200415 moved by -100 days
    assert _hits(v, _output(StudyDate="20200415")) == [("StudyDate", "encounter-date")]
    assert _hits(v, _output(ImageComments="20200106")) == [("ImageComments", "encounter-date")]


def test_encounter_dates_of_an_unknown_subject_block_only_in_text() -> None:
    dictionary = IdentifierDictionary()
    dictionary.add_header(_source(StudyDate="20200115"))  # no research ID known
    v = Verifier(dictionary, ocr=None)
    assert _hits(v, _output(StudyDate="20200115")) == []
    assert _hits(v, _output(ImageComments="2020-01-15")) == [("ImageComments", "encounter-date")]
