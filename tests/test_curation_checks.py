"""Each built-in check on an object that trips it and one that does not; loading by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MPEG4HP41, UID

from curation.checks import (
    DEFAULT_CHECKS,
    CheckObject,
    Policy,
    StudyView,
    Verdict,
    load_checks,
    run_checks,
)
from ridl.errors import ConfigError
from tests.curation_data import ct_slice, header, save


def run_one(name: str, path: Path, study: list[Dataset] | None = None, **kw: object) -> Verdict:
    (chk,) = load_checks([name])
    hdr = header(path)
    policy = kw.pop("policy", Policy())
    obj = CheckObject(path, hdr, StudyView(study or [hdr]), policy, **kw)  # type: ignore[arg-type]
    return run_checks([chk], obj)


def test_all_built_ins_are_registered_through_entry_points() -> None:
    assert [c.name for c in load_checks(DEFAULT_CHECKS)] == list(DEFAULT_CHECKS)
    with pytest.raises(ConfigError, match="curation.checks"):
        load_checks(["no-such-check"])


def test_integrity_quarantines_truncated_and_non_dicom(tmp_path: Path) -> None:
    good = save(ct_slice("1.2.9", 1, rows=64, cols=64), tmp_path / "good.dcm")
    assert run_one("integrity", good).passed
    data = good.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 2000])
    assert run_one("integrity", cut) == Verdict(
        "quarantine", "truncated", "pixel data shorter than rows x columns x frames"
    )
    (chk,) = load_checks(["integrity"])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    obj = CheckObject(junk, header(good), StudyView([]), Policy())
    assert run_checks([chk], obj).reason == "not-dicom"


def test_an_object_cut_inside_its_last_element_is_truncated(tmp_path: Path) -> None:
    """pydicom's rtplan_truncated.dcm ends inside a value that is not pixel data: pydicom reads
    it without complaint, so the declared Value Length is checked (PS3.5 7.1)."""
    from pydicom.data import get_testdata_file

    whole = Path(get_testdata_file("rtplan.dcm"))
    assert run_one("integrity", whole).passed
    cut = Path(get_testdata_file("rtplan_truncated.dcm"))
    verdict = run_one("integrity", cut)
    assert (verdict.action, verdict.reason) == ("quarantine", "truncated")
    assert "(300A,00B0)" in str(verdict.detail)


def test_image_without_pixel_data(tmp_path: Path) -> None:
    assert run_one("no-pixel-data", save(ct_slice("1.2.9", 1), tmp_path / "a.dcm")).passed
    bad = save(ct_slice("1.2.9", 2, pixels=False), tmp_path / "b.dcm")
    assert run_one("no-pixel-data", bad) == Verdict("quarantine", "image-without-pixel-data")


def test_undecodable_transfer_syntax_only_when_decoding_is_needed(tmp_path: Path) -> None:
    import deid_data

    jpeg = Path(deid_data.__file__).parent / "data" / "humans" / "ctbrain1.dcm"
    assert run_one("decodable", jpeg, needs_decoding=True).passed  # gdcm / pillow decode it
    from pydicom.encaps import encapsulate

    video = ct_slice("1.2.9", 1)
    video.PixelData = encapsulate([b"\x00\x00\x01\xb3" * 8])
    video.file_meta.TransferSyntaxUID = UID(MPEG4HP41)
    path = tmp_path / "video.dcm"
    video.save_as(path, enforce_file_format=True)
    assert run_one("decodable", path, needs_decoding=False).passed
    verdict = run_one("decodable", path, needs_decoding=True)
    assert (verdict.action, verdict.reason) == ("quarantine", "undecodable-transfer-syntax")


def test_localizers_and_scouts(tmp_path: Path) -> None:
    assert run_one("localizer", save(ct_slice("1.2.9", 1), tmp_path / "a.dcm")).passed
    scout = save(
        ct_slice("1.2.9", 1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), tmp_path / "b.dcm"
    )
    assert run_one("localizer", scout) == Verdict("exclude", "localizer")
    named = ct_slice("1.2.9", 1)
    named.SeriesDescription = "Topogram 0.6 T20f"
    assert run_one("localizer", save(named, tmp_path / "c.dcm")) == Verdict("exclude", "localizer")
    keep = Policy(localizers="keep")
    assert run_one("localizer", scout, policy=keep).passed


def test_dose_reports_and_screen_captures(synth_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dose = next(p for p in synth_dir.files if p.name == "dose.dcm")
    assert run_one("dose-report", dose) == Verdict("exclude", "dose-report")
    assert run_one("dose-report", dose, policy=Policy(screen_captures="keep")).passed
    sr = ct_slice("1.2.9", 1, pixels=False)
    sr.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.67")  # X-Ray Radiation Dose SR
    assert run_one("dose-report", save(sr, tmp_path / "sr.dcm")) == Verdict(
        "exclude", "dose-report"
    )
    screen = ct_slice("1.2.9", 1, image_type=("DERIVED", "SECONDARY", "SCREEN SAVE"))
    verdict = run_one("dose-report", save(screen, tmp_path / "screen.dcm"))
    assert verdict == Verdict("exclude", "screen-capture")
    assert run_one("dose-report", save(ct_slice("1.2.9", 1), tmp_path / "ct.dcm")).passed


def test_non_image_objects_follow_the_project_policy(synth_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = next(p for p in synth_dir.files if p.name == "report.dcm")
    assert run_one("non-image", report) == Verdict("exclude", "non-image-sr")
    assert run_one("non-image", report, policy=Policy(non_image="keep")).passed
    held = run_one("non-image", report, policy=Policy(non_image="quarantine"))
    assert held == Verdict("quarantine", "non-image-sr")
    assert run_one("non-image", save(ct_slice("1.2.9", 1), tmp_path / "ct.dcm")).passed


def test_duplicate_sop_instance(tmp_path: Path) -> None:
    (chk,) = load_checks(["duplicate-sop-instance"])
    one = header(save(ct_slice("1.2.9", 1), tmp_path / "a.dcm"))
    view = StudyView([one, one])
    assert chk(CheckObject(tmp_path / "a.dcm", one, view, Policy())).passed
    second = chk(CheckObject(tmp_path / "a.dcm", one, view, Policy()))
    assert second == Verdict("exclude", "duplicate-sop-instance")


def _series(tmp_path: Path, slices: list[Dataset]) -> list[Path]:
    return [save(s, tmp_path / f"s{i}.dcm") for i, s in enumerate(slices)]


def test_series_consistency(tmp_path: Path) -> None:
    (chk,) = load_checks(["series-consistency"])

    def verdicts(slices: list[Dataset]) -> list[Verdict]:
        paths = _series(tmp_path, slices)
        headers = [header(p) for p in paths]
        view = StudyView(headers)
        return [chk(CheckObject(p, h, view, Policy())) for p, h in zip(paths, headers, strict=True)]

    good = [ct_slice("1.2.10", n) for n in range(1, 6)]
    assert all(v.passed for v in verdicts(good))
    odd_size = [ct_slice("1.2.11", n, rows=16 if n != 3 else 32) for n in range(1, 6)]
    got = verdicts(odd_size)
    assert [v.reason for v in got] == ["", "", "series-inconsistent-size", "", ""]
    gap = [ct_slice("1.2.12", n) for n in (1, 2, 3, 5, 6)]
    assert {v.reason for v in verdicts(gap)} == {"series-instance-gap"}
    uneven = [
        ct_slice("1.2.13", n, z=z) for n, z in zip(range(1, 6), (0, 2.5, 5, 12, 14.5), strict=True)
    ]
    assert {v.reason for v in verdicts(uneven)} == {"series-irregular-spacing"}
    tilted = [ct_slice("1.2.14", n) for n in range(1, 6)]
    tilted[4].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    assert verdicts(tilted)[4].reason == "series-inconsistent-orientation"
    # A second feed's copy of an instance (same SOP Instance UID) is the duplicate check's
    # business, not a duplicated instance number that would hold the whole series back.
    resent = [ct_slice("1.2.15", n) for n in range(1, 4)]
    resent.append(resent[1].copy())
    assert all(v.passed for v in verdicts(resent))


def test_series_consistency_reads_malformed_numbers_as_unknown(tmp_path: Path) -> None:
    """pydicom's badVR.dcm (in the real-file corpus) holds Number of Frames "1A" and an
    unparseable Instance Number: the series report skipped nothing and raised, so every object
    of the study was quarantined as ``check-failed-series-consistency``. A value that is not a
    number is unknown: that object is left out of the stack, the others are still checked."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    def raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:  # written as it is
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)

    (chk,) = load_checks(["series-consistency"])
    slices = [ct_slice("1.2.16", n) for n in range(1, 6)]
    raw(slices[1], 0x00280008, "IS", b"1A")  # Number of Frames
    raw(slices[2], 0x00200013, "IS", b"3B")  # Instance Number
    raw(slices[3], 0x00200032, "DS", b"0\\x\\1 ")  # Image Position (Patient)
    paths = _series(tmp_path, slices)
    headers = [header(p) for p in paths]
    view = StudyView(headers)
    got = [chk(CheckObject(p, h, view, Policy())) for p, h in zip(paths, headers, strict=True)]
    assert all(v.passed for v in got), got
    gap = [ct_slice("1.2.17", n) for n in (1, 2, 4, 5)] + [ct_slice("1.2.17", 6)]
    raw(gap[4], 0x00280008, "IS", b"1A")
    headers = [header(p) for p in _series(tmp_path, gap)]
    view = StudyView(headers)
    reasons = {chk(CheckObject(tmp_path, h, view, Policy())).reason for h in headers}
    assert reasons == {"series-instance-gap"}, "the others are still checked"


def test_a_crashing_check_quarantines_instead_of_stopping(tmp_path: Path) -> None:
    from curation.checks import check

    @check("explodes")
    def explodes(obj: CheckObject) -> Verdict:
        raise RuntimeError("boom")

    path = save(ct_slice("1.2.9", 1), tmp_path / "a.dcm")
    obj = CheckObject(path, header(path), StudyView([]), Policy())
    # The detail names the check too (issue 12: a quarantine record says which check failed).
    assert run_checks([explodes], obj) == Verdict(
        "quarantine", "check-failed-explodes", "check=explodes RuntimeError"
    )


def test_policy_rejects_unknown_values() -> None:
    with pytest.raises(ConfigError, match="curation.non_image"):
        Policy.from_project({"non_image": "maybe"})
    assert Policy.from_project({"checks": ["integrity"]}).checks == ("integrity",)


def test_unknown_check_in_a_project_fails_before_any_work(project) -> None:  # type: ignore[no-untyped-def]
    from flows.runplan import check_request
    from tests.curation_data import set_section

    set_section(project.id, "curation", {"checks": ["integrity", "no-such-check"]})
    with pytest.raises(ConfigError, match="no-such-check"):
        check_request(project.id, "r1")
    set_section(project.id, "curation", {"filters": ["/nonexistent/site.dicom"]})
    with pytest.raises(ConfigError, match="curation.filters"):
        check_request(project.id, "r1")


def test_an_element_written_twice_is_quarantined_wherever_the_second_is(tmp_path: Path) -> None:
    """pydicom keeps the last value of a repeated tag: a first Patient Name followed by another,
    right after it or further on, reaches no dataset, so the study's identifier dictionary never
    sees it while the object still holds it (a fresh-user check). PS3.5 7.1 allows each element
    once: the object is quarantined, naming the tag, never its value."""
    slice_ = ct_slice("1.2.9", 1, rows=64, cols=64)
    slice_.PatientName = "DOE^JANE"
    good = save(slice_, tmp_path / "good.dcm")
    data = good.read_bytes()
    at = data.index(b"\x10\x00\x10\x00PN")
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    element = data[at : at + 8 + length]
    other = b"\x10\x00\x10\x00PN" + (10).to_bytes(2, "little") + b"QUESNEL^A "
    pixels = data.index(b"\xe0\x7f\x10\x00")
    for name, forged in (
        ("adjacent", data[: at + len(element)] + other + data[at + len(element) :]),
        ("further on", data[:pixels] + other + data[pixels:]),
        ("first kept", data[:at] + other + data[at:]),
    ):
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(forged)
        verdict = run_one("integrity", path)
        assert (verdict.action, verdict.reason) == ("quarantine", "duplicate-element"), name
        assert "(0010,0010)" in str(verdict.detail), name
        assert "QUESNEL" not in str(verdict.detail)
    assert run_one("integrity", good).passed
