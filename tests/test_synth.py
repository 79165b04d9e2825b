"""The synthetic DIR has every hard case the extraction must handle, the same for a seed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydicom import dcmread

from ridl.synth import HN_ISSUER, PRIVATE_CREATOR, synthesize


def _digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            sha.update(path.relative_to(root).as_posix().encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()


def test_same_seed_same_archive_other_seed_other_archive(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", patients=6, sites=2, seed=3)
    synthesize(tmp_path / "b", patients=6, sites=2, seed=3)
    synthesize(tmp_path / "c", patients=6, sites=2, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_archive_has_the_hard_cases(synth_dir) -> None:  # type: ignore[no-untyped-def]
    headers = [
        dcmread(p, stop_before_pixels=True) for p in synth_dir.files if p.name != "scan_notes.dcm"
    ]
    couplets = {(str(d.IssuerOfPatientID), str(d.PatientID)) for d in headers}
    by_pid: dict[str, set[str]] = {}
    for issuer, pid in couplets:
        by_pid.setdefault(pid, set()).add(issuer)
    assert any(len(issuers) > 1 for issuers in by_pid.values()), "a Patient ID reused by two sites"
    names_by_shared_pid = {str(d.PatientName) for d in headers if len(by_pid[str(d.PatientID)]) > 1}
    assert len(names_by_shared_pid) > 1, "the reused Patient ID belongs to different people"
    hn_sites: dict[str, set[str]] = {}
    for d in headers:
        for item in getattr(d, "OtherPatientIDsSequence", []):
            if item.IssuerOfPatientID == HN_ISSUER:
                hn_sites.setdefault(str(item.PatientID), set()).add(str(d.IssuerOfPatientID))
    assert any(len(s) > 1 for s in hn_sites.values()), "a person linked across sites by HN"
    modalities = {str(d.Modality) for d in headers}
    assert {"CT", "CR", "US", "SR", "KO"} <= modalities
    assert any("SCREEN SAVE" in list(getattr(d, "ImageType", [])) for d in headers)
    kos = [d for d in headers if d.Modality == "KO"]
    assert kos[0].ConceptNameCodeSequence[0].CodeValue == "113001"
    assert all(d.get_private_item(0x0029, 0x10, PRIVATE_CREATOR) for d in headers)
    assert all(d.RequestAttributesSequence[0].RequestedProcedureCodeSequence for d in headers)
    years = {str(d.StudyDate)[:4] for d in headers}
    assert len(years) >= 5
    assert synth_dir.truncated and synth_dir.not_dicom
