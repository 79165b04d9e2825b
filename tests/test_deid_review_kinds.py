"""Six kinds a fresh tester found after issue 14, each with several inputs and dciodvfy.

1. Organisation and person names held by structured-report content items (PS3.16 TID 1003,
   1004, 1020: Person Observer's Organization Name...) and Institution Code Sequence meanings:
   the item is dummied, its tokens are cleaned from every text, the gate's dictionary has them.
2. Dates written for people in free text go whole (never a day and month left behind), and the
   gate searches the subject's dates in those forms (R5 kept).
3. Real World Value Mapping items keep LUT Explanation and LUT Label (Type 1), dummied.
4. clean-graphics keeps an overlay whole: geometry kept, text cleaned (PS3.3 C.9.2).
5. A Type 1 / 1C value func:clean empties becomes a dummy (Document Content Macro).
6. Standard Code Meanings stay in dummied content; local or altered ones are dummied.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deid_recipes import Engine, SubjectContext, load_recipe
from deid_recipes.dates import remove_written_dates
from deid_recipes.engine import clean_text, identifying_tokens
from deid_recipes.fastpath import deidentify_to_bytes
from export.identifiers import IdentifierDictionary, written_dates
from flows.gate import Verifier
from ridl.pseudonyms import Pseudonymizer

from .dciodvfy import new_errors
from .deid_run_support import ct, deid_cli, project, save
from .iod_objects import comprehensive_sr, enhanced_ct, enhanced_mr, write

SUBJECT = SubjectContext("RS-REVIEW", -10)
CLEANING = ("clean-descriptors", "clean-structured-content")
ORGANISATION = "Quillfeather Imaging Institute"


def _engine(*options: str, base: str = "ps3.15-basic") -> Engine:
    layers = ["ridl-safe-public", base, *(f"ps3.15-{o}" for o in options)]
    return Engine(load_recipe(layers), Pseudonymizer(b"r" * 64))


def _apply(engine: Engine, source: Path, out: Path) -> Dataset:
    ds = engine.apply(dcmread(source), SUBJECT)
    ds.save_as(out, enforce_file_format=True)
    return dcmread(out)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(value_type: str, concept: Dataset, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = "HAS OBS CONTEXT" if value_type != "CONTAINER" else "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([concept])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _text(text: str, concept: Dataset | None = None) -> Dataset:
    item = _item("TEXT", concept or _code("121071", "DCM", "Finding"), TextValue=text)
    item.RelationshipType = "CONTAINS"
    return item


def _texts(ds: Dataset) -> list[str]:
    return [str(e.value) for e in ds.iterall() if e.keyword == "TextValue"]


def _sr(*content: Dataset) -> Dataset:
    ds = comprehensive_sr(verified=False)
    ds.ContentSequence = Sequence([*content, *ds.ContentSequence[1:]])
    return ds


# ---- 1. organisation and person names held by content items -------------------------------


def _observer_context(concept: tuple[str, str], value: str, value_type: str = "TEXT") -> Dataset:
    code = _code(concept[0], "DCM", concept[1])
    if value_type == "PNAME":
        return _item("PNAME", code, PersonName=value)
    return _item("TEXT", code, TextValue=value)


NAMED_ITEMS = {
    # TID 1003: the organisation only in its own content item, repeated in a finding.
    "organisation": (
        [_observer_context(("121009", "Person Observer's Organization Name"), ORGANISATION)],
        f"Nodule stable, discussed at {ORGANISATION} tumour board",
        ("quillfeather",),
    ),
    # TID 1003: the login name of the observer, in a finding too.
    "login": (
        [_observer_context(("128774", "Person Observer's Login Name"), "qfthornbury")],
        "Nodule stable, signed qfthornbury",
        ("qfthornbury",),
    ),
    # TID 1020: a participant's organisation, one container down.
    "participant": (
        [
            _item(
                "CONTAINER",
                _code("113851", "DCM", "Irradiation Administering"),
                ContinuityOfContent="SEPARATE",
                ContentSequence=Sequence(
                    [_observer_context(("113873", "Organization Name"), "Hopital Varennes-Nord")]
                ),
            )
        ],
        "Nodule stable, compared with Varennes-Nord films",
        ("varennes",),
    ),
    # TID 1004: the device observer's name and location.
    "device": (
        [
            _observer_context(("121013", "Device Observer Name"), "CTNORDQF7"),
            _observer_context(
                ("121017", "Device Observer Physical Location During Observation"),
                "Pavillon Ravenscroft",
            ),
        ],
        "Nodule stable on CTNORDQF7 in Ravenscroft",
        ("ctnordqf7", "ravenscroft"),
    ),
}


@pytest.mark.parametrize("variant", sorted(NAMED_ITEMS))
def test_named_content_items_are_dummied_and_cleaned_from_text(
    variant: str, tmp_path: Path
) -> None:
    context, finding, names = NAMED_ITEMS[variant]
    source = write(_sr(*context, _text(finding)), tmp_path, "in")
    tokens = identifying_tokens(dcmread(source))
    assert set(names) <= tokens
    out = _apply(_engine(*CLEANING), source, tmp_path / "out.dcm")
    texts = _texts(out)
    held = [e for item in context for e in item.iterall() if e.keyword == "TextValue"]
    assert texts.count("ANON") == len(held), "each named item is dummied, whole"
    finding_out = [t for t in texts if "stable" in t]
    assert finding_out and "Nodule" in finding_out[0]
    data = (tmp_path / "out.dcm").read_bytes().lower()
    for name in names:
        assert name.encode() not in data, name
    assert new_errors(source, tmp_path / "out.dcm") == []


def test_named_content_items_through_ridl_deid(tmp_path: Path) -> None:
    project_id = project("review-named", options=CLEANING)
    src = tmp_path / "src"
    for n, (context, finding, _) in enumerate(NAMED_ITEMS.values(), start=1):
        ds = _sr(*context, _text(finding))
        ds.InstanceNumber = n
        write(ds, src, str(n))
    written = deid_cli(src, tmp_path / "out", project_id)
    for n, (_, _, names) in enumerate(NAMED_ITEMS.values(), start=1):
        data = written[n].read_bytes().lower()
        for name in names:
            assert name.encode() not in data, (n, name)
        assert new_errors(src / f"{n}.dcm", written[n]) == [], n


def test_institution_code_meaning_and_organisations_feed_clean_text(tmp_path: Path) -> None:
    ds = ct(1, ImageComments=f"Transferred from {ORGANISATION} and Clinique Saulnaie")
    ds.InstitutionCodeSequence = Sequence([_code("QF1", "99LOCAL", ORGANISATION)])
    ds.ContentCreatorName = ""
    source = save(ds, tmp_path / "in.dcm")
    out = _apply(_engine("clean-descriptors"), source, tmp_path / "out.dcm")
    assert "quillfeather" not in out.ImageComments.lower()
    assert "Transferred" in out.ImageComments


def _verifier(*headers: Dataset) -> Verifier:
    dictionary = IdentifierDictionary()
    for i, ds in enumerate(headers):
        dictionary.add_header(ds, research_id=f"RS-{i}")
    return Verifier(dictionary, ocr=None)


def _output(**attrs: object) -> bytes:
    ds = ct(7, **attrs)
    for keyword in ("PatientName", "PatientBirthDate", "AccessionNumber", "IssuerOfPatientID"):
        delattr(ds, keyword)
    ds.PatientID = "RS-0"
    ds.StudyDate = ds.ContentDate = "20191010"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _hits(verifier: Verifier, data: bytes) -> list[tuple[str, str]]:
    return [(h.path, h.kind) for h in verifier.check_bytes("k.dcm", data).hits]


@pytest.mark.parametrize(
    ("context", "kind"),
    [
        (_observer_context(("121009", "Person Observer's Organization Name"), ORGANISATION),
         "institution-or-station"),
        (_observer_context(("113873", "Organization Name"), ORGANISATION),
         "institution-or-station"),
        (_observer_context(("128774", "Person Observer's Login Name"), "Quillfeather Thornbury"),
         "name"),
        (_observer_context(("121013", "Device Observer Name"), "Quillfeather Imaging CT"),
         "institution-or-station"),
    ],
)  # fmt: skip
def test_the_gate_searches_names_held_by_content_items(context: Dataset, kind: str) -> None:
    source = comprehensive_sr(verified=False)
    source.ContentSequence = Sequence([context])
    v = _verifier(source)
    assert _hits(v, _output(ImageComments=f"seen at {context.TextValue}")) == [
        ("ImageComments", kind)
    ]


def test_the_gate_searches_institution_code_meanings_and_organisations() -> None:
    source = ct(1)  # no Institution Name: only the code sequence names the organisation
    source.InstitutionCodeSequence = Sequence([_code("QF1", "99LOCAL", ORGANISATION)])
    v = _verifier(source)
    assert _hits(v, _output(ImageComments=f"from {ORGANISATION}")) == [
        ("ImageComments", "institution-or-station")
    ]
    sr = comprehensive_sr()
    v = _verifier(sr)  # Verifying Organization of the verified report
    assert _hits(v, _output(ImageComments="from Clinique Ouest")) == [
        ("ImageComments", "institution-or-station")
    ]
    # R4 / R6 intact: an organisation made of common words blocks only in a PN attribute.
    common = comprehensive_sr(verified=False)
    common.ContentSequence = Sequence(
        [_observer_context(("121009", "Person Observer's Organization Name"), "General Hospital")]
    )
    assert _hits(_verifier(common), _output(ImageComments="General Hospital")) == []


# ---- 2. dates written for people ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("follow-up of 23/07/2019 exam, prior 2019-07-01", "follow-up of exam, prior"),
        ("T1 Jul 23 2019", "T1"),
        ("seen 23.07.2019", "seen"),
        ("on 2019-07-23", "on"),
        ("on 2019/07/23 and 2019.07.23", "on and"),
        ("07/23/2019 and 23-07-2019", "and"),
        ("seen 23/07/19 and 7/23/19", "seen and"),
        ("23 Jul 2019, 23-Jul-19 and 23Jul2019", ", and"),
        ("July 23, 2019 and July 23rd 2019", "and"),
        ("vu le 23 juillet 2019 et le 1er août 2019", "vu le et le"),
        ("né le 12 fe\u0301vrier 1947, vu le 1er aou\u0302t", "né le , vu le"),
        ("since Jul 2019 and 2019-07", "since and"),
        ("Jul 23 follow-up", "follow-up"),
        ("lesion may 2 cm, 3/4 of 12.5 mm, v2.1.12", "lesion may 2 cm, 3/4 of 12.5 mm, v2.1.12"),
        ("score 45/07/19", "score 45/07/19"),
    ],
)
def test_clean_text_removes_written_dates_whole(text: str, expected: str) -> None:
    assert clean_text(text, frozenset()) == expected
    assert " ".join(remove_written_dates(text).split()) == expected


def test_written_dates_are_cleaned_from_descriptors_and_reports(tmp_path: Path) -> None:
    descriptions = {
        1: "follow-up of 23/07/2019 exam, prior 2019-07-01",
        2: "T1 Jul 23 2019",
        3: "seen 23.07.2019",
        4: "compared with 07/23/19",
    }
    src = tmp_path / "src"
    for n, text in descriptions.items():
        save(ct(n, StudyDescription=text, ImageComments=f"scan of {text}"), src / f"{n}.dcm")
    project_id = project("review-dates", options=CLEANING)
    written = deid_cli(src, tmp_path / "out", project_id)
    for n, path in written.items():
        ds = dcmread(path)
        for value in (str(ds.get("StudyDescription", "")), str(ds.ImageComments)):
            for left in ("23/07", "-07-", "Jul 23", "23.07", "07/23", "2019"):
                assert left not in value, (n, value)
        assert new_errors(src / f"{n}.dcm", path) == [], n
    report = write(_sr(_text("Nodule on 2019-07-23, stable since July 1, 2019")), src, "sr")
    out = _apply(_engine(*CLEANING), report, tmp_path / "sr.dcm")
    finding = [t for t in _texts(out) if "Nodule" in t][0]
    assert finding == "Nodule on , stable since"


def test_written_dates_forms() -> None:
    forms = set(written_dates("20190723"))
    assert {"23/07/2019", "07/23/2019", "23.07.2019", "23-07-2019", "2019-07-23"} <= forms
    assert {"23 Jul 2019", "Jul 23, 2019", "July 23, 2019", "23-Jul-2019", "23Jul2019"} <= forms
    assert {"23/07/19", "23/7/2019", "23 juillet 2019"} <= forms
    assert list(written_dates("2019072")) == []


@pytest.mark.parametrize(
    "written",
    ["Jul 23 2019", "23 July 2019", "23/07/19", "07/23/2019", "23.7.2019", "23-Jul-2019"],
)
def test_the_gate_searches_original_dates_in_written_forms(written: str) -> None:
    v = _verifier(ct(1, StudyDate="20190723", PatientBirthDate="19600102"))
    assert _hits(v, _output(ImageComments=f"prior {written} exam")) == [
        ("ImageComments", "encounter-date")
    ]
    birth = {"Jul 23 2019": "Jan 2 1960", "23 July 2019": "2 January 1960"}.get(written)
    if birth:
        assert _hits(v, _output(ImageComments=f"born {birth}")) == [("ImageComments", "birth-date")]
    # R5: the same date in a date attribute of another subject is a coincidence.
    other = dcmread(io.BytesIO(_output(StudyDate="20190723")))
    other.PatientID = "RS-9"
    buffer = io.BytesIO()
    other.save_as(buffer)
    assert _hits(v, buffer.getvalue()) == []


# ---- 3. Real World Value Mapping items --------------------------------------------------------


def _mapping(label: str) -> Dataset:
    item = Dataset()
    item.LUTExplanation = f"{label} map by Gagnon"
    item.LUTLabel = label
    item.MeasurementUnitsCodeSequence = Sequence([_code("mm2/s", "UCUM", "mm2/s")])
    item.RealWorldValueFirstValueMapped = 0
    item.RealWorldValueLastValueMapped = 4095
    item.RealWorldValueIntercept = 0.0
    item.RealWorldValueSlope = 1.0
    return item


def _with_mapping(build: object, where: str) -> Dataset:
    ds = build()  # type: ignore[operator]
    if where in ("shared", "both"):
        shared = ds.SharedFunctionalGroupsSequence[0]
        shared.RealWorldValueMappingSequence = Sequence([_mapping("ADC")])
    if where in ("per-frame", "both"):
        for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            item.RealWorldValueMappingSequence = Sequence([_mapping(f"T{index}")])
    return ds


@pytest.mark.parametrize(
    ("build", "where"),
    [(enhanced_mr, "shared"), (enhanced_mr, "per-frame"), (enhanced_mr, "both"),
     (enhanced_ct, "shared")],
)  # fmt: skip
@pytest.mark.parametrize("base", ["ps3.15-basic", "ridl-basic"])
def test_real_world_value_mapping_keeps_its_type_1_labels(
    build: object, where: str, base: str, tmp_path: Path
) -> None:
    source = write(_with_mapping(build, where), tmp_path, "in")
    engine = _engine(base=base)
    out = _apply(engine, source, tmp_path / "out.dcm")
    items = [e for e in out.iterall() if e.keyword == "RealWorldValueMappingSequence"]
    assert items
    for sequence in items:
        for item in sequence.value:
            assert item.LUTExplanation == "ANON" and item.LUTLabel == "ANON"
            assert item.RealWorldValueSlope == 1.0
    assert b"Gagnon" not in (tmp_path / "out.dcm").read_bytes()
    assert new_errors(source, tmp_path / "out.dcm") == []
    fast = deidentify_to_bytes(engine, lambda _: SUBJECT, source)
    assert fast is not None, "the functional groups are kept sequences: the fast path serves it"
    fast_ds = dcmread(io.BytesIO(fast[2]))
    assert [e.value for e in fast_ds.iterall() if e.keyword == "LUTLabel"] == [
        e.value for e in out.iterall() if e.keyword == "LUTLabel"
    ]


# ---- 4. overlays with clean-graphics ----------------------------------------------------------


def _overlay_ct(groups: tuple[int, ...]) -> Dataset:
    ds = ct(1, ImageComments="overlay test")
    for group in groups:
        ds.add_new((group, 0x0010), "US", 8)
        ds.add_new((group, 0x0011), "US", 8)
        ds.add_new((group, 0x0022), "LO", "Marked by Tremblay Josee")
        ds.add_new((group, 0x0040), "CS", "G")
        ds.add_new((group, 0x0050), "SS", [1, 1])
        ds.add_new((group, 0x0100), "US", 1)
        ds.add_new((group, 0x0102), "US", 0)
        ds.add_new((group, 0x1500), "LO", "Tremblay")
        ds.add_new((group, 0x3000), "OW", b"\x0f\xf0" * 4)
    pixels = ds.PixelData
    del ds.PixelData
    ds.PixelData = pixels  # last, after the overlay groups
    return ds


OVERLAYS = {
    "pydicom-examples_overlay": lambda d: Path(get_testdata_file("examples_overlay.dcm")),
    "ct-one-overlay": lambda d: save(_overlay_ct((0x6000,)), d / "ov1.dcm"),
    "ct-two-overlays": lambda d: save(_overlay_ct((0x6000, 0x6002)), d / "ov2.dcm"),
}
GEOMETRY = (0x0010, 0x0011, 0x0040, 0x0050, 0x0100, 0x0102)


@pytest.mark.parametrize("variant", sorted(OVERLAYS))
def test_clean_graphics_keeps_an_overlay_whole(variant: str, tmp_path: Path) -> None:
    source = OVERLAYS[variant](tmp_path)
    before = dcmread(source)
    groups = sorted({e.tag.group for e in before if 0x6000 <= e.tag.group <= 0x601E})
    out = _apply(_engine("clean-graphics"), source, tmp_path / "out.dcm")
    for group in groups:
        for element in GEOMETRY:
            assert out[group, element].value == before[group, element].value
        assert out[group, 0x3000].value == before[group, 0x3000].value
        for element in (0x0022, 0x1500):
            if (group, element) in out:
                assert "tremblay" not in str(out[group, element].value).lower()
    assert new_errors(source, tmp_path / "out.dcm") == []
    plain = _apply(_engine(), source, tmp_path / "plain.dcm")
    assert not [e for e in plain if 0x6000 <= e.tag.group <= 0x601E]
    assert new_errors(source, tmp_path / "plain.dcm") == []


# ---- 5. a required value cleaning empties -----------------------------------------------------


def test_reportsi_keeps_its_text_values(tmp_path: Path) -> None:
    source = Path(get_testdata_file("reportsi.dcm"))
    for options in (("clean-structured-content",), CLEANING):
        out = _apply(_engine(*options), source, tmp_path / "out.dcm")
        assert all(t.strip() for t in _texts(out))
        assert new_errors(source, tmp_path / "out.dcm") == []


@pytest.mark.parametrize(
    "text",
    ["Gagnon^Marie", "Gagnon Marie, Clinique Ouest", "2019-07-23", "MRN-55012 19581203"],
)
def test_a_text_value_cleaned_to_nothing_becomes_a_dummy(text: str, tmp_path: Path) -> None:
    local = _code("L1", "99HOSP", "Clinique Ouest")
    source = write(_sr(_text(text), _text("stable", local)), tmp_path, "in")
    out = _apply(_engine(*CLEANING), source, tmp_path / "out.dcm")
    texts = _texts(out)
    assert texts[0] == "ANON" and texts[1] == "stable"
    meanings = [e.value for e in out.iterall() if e.keyword == "CodeMeaning"]
    assert "" not in meanings and "Clinique Ouest" not in meanings
    assert new_errors(source, tmp_path / "out.dcm") == []


# ---- 6. Code Meaning of standard codes --------------------------------------------------------


def test_standard_code_meanings_are_kept_in_dummied_content(tmp_path: Path) -> None:
    standard = _text("Nodule", _code("121071", "DCM", "Finding"))
    snomed = _item("CODE", _code("363698007", "SCT", "Finding site"))
    snomed.RelationshipType = "CONTAINS"
    snomed.ConceptCodeSequence = Sequence([_code("39607008", "SCT", "Lung structure")])
    local = _text("x", _code("L1", "99HOSP", "Dr Gagnon's note"))
    altered = _text("y", _code("121071", "DCM", "Finding by Gagnon"))
    source = write(_sr(standard, snomed, local, altered), tmp_path, "in")
    for options in ((), ("clean-structured-content",)):
        out = _apply(_engine(*options), source, tmp_path / "out.dcm")
        items = out.ContentSequence
        assert items[0].ConceptNameCodeSequence[0].CodeMeaning == "Finding"
        assert items[1].ConceptNameCodeSequence[0].CodeMeaning == "Finding site"
        assert items[1].ConceptCodeSequence[0].CodeMeaning == "Lung structure"
        assert "Gagnon" not in items[2].ConceptNameCodeSequence[0].CodeMeaning
        assert "Gagnon" not in items[3].ConceptNameCodeSequence[0].CodeMeaning
        assert items[2].ConceptNameCodeSequence[0].CodeValue == "L1"
        assert new_errors(source, tmp_path / "out.dcm") == []
