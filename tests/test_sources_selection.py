"""Selection and IOCM over the network, against a small Orthanc of its own: a study sent by two
feeds, and rejection notes (113001 from the synthetic DIR, 113039 added here)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from export.manifest import build_manifest, read_manifest, read_parts
from export.store import open_store
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.catalog import catalog_dir_for
from ridl.projects import Project
from ridl.pseudonyms import Pseudonymizer, SubjectKey
from ridl.secrets import load_secret
from ridl.sources.protect import ArchiveLimits
from ridl.synth import KEY_OBJECT_SELECTION, SynthReport
from tests.orthanc import Orthanc, require_orthanc

FAST = ArchiveLimits(rate_limit=0, backoff_s=0.01)


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def rejection_note(base: Dataset, code: str, sop_uids: list[str]) -> Dataset:
    """A KOS titled with an IOCM rejection code, referencing instances of ``base``'s series."""
    ds = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "OtherPatientIDsSequence",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
    ):
        if keyword in base:
            setattr(ds, keyword, base.data_element(keyword).value)  # type: ignore[union-attr]
    ds.Modality = "KO"
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPClassUID = KEY_OBJECT_SELECTION
    ds.SOPInstanceUID = generate_uid()
    ds.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue = code
    title.CodingSchemeDesignator = "DCM"
    title.CodeMeaning = "Data Retention Policy Expired"
    ds.ConceptNameCodeSequence = Sequence([title])
    refs = []
    for uid in sop_uids:
        ref = Dataset()
        ref.ReferencedSOPClassUID = base.SOPClassUID
        ref.ReferencedSOPInstanceUID = uid
        refs.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = base.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence(refs)
    evidence = Dataset()
    evidence.StudyInstanceUID = base.StudyInstanceUID
    evidence.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    ds.file_meta = Dataset()  # type: ignore[assignment]
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


class Scenario:
    """What was loaded into the small Orthanc, for the assertions."""

    def __init__(self, server: Orthanc) -> None:
        self.server = server
        self.duplicate_sop = ""
        self.duplicate_hn = ""
        self.duplicate_couplet = ("", "")
        self.rejected: list[str] = []
        self.notes = 0


@pytest.fixture(scope="module")
def scenario(
    synth_dir: SynthReport, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    folders: dict[Path, list[Path]] = {}
    for path in synth_dir.files:
        folders.setdefault(path.parent, []).append(path)
    kos_study = next(f for f, files in folders.items() if any(p.name == "kos.dcm" for p in files))
    other_ct = next(
        f
        for f, files in folders.items()
        if f != kos_study and any(p.name == "ct_001.dcm" for p in files)
    )
    cr = next(
        f
        for f, files in folders.items()
        if [p.name for p in files] == ["cr_001.dcm"]
        and "OtherPatientIDsSequence" in dcmread(files[0], stop_before_pixels=True)
    )
    with Orthanc(require_orthanc(), tmp_path_factory.mktemp("orthanc-small")) as server:
        scene = Scenario(server)
        server.upload(sorted(folders[kos_study]) + sorted(folders[other_ct]) + folders[cr])
        # IOCM: the synthetic 113001 note rejects 4 CT slices; add a 113039 note for one more.
        first = dcmread(kos_study / "kos.dcm")
        for series in first.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence:
            scene.rejected += [
                str(r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence
            ]
        slice2 = dcmread(other_ct / "ct_002.dcm", stop_before_pixels=True)
        note = rejection_note(slice2, "113039", [str(slice2.SOPInstanceUID)])
        server.upload_bytes(_bytes(note))
        scene.rejected.append(str(slice2.SOPInstanceUID))
        scene.notes = 2
        # The same CR study sent again by a second feed: another site's couplet, no HN.
        original = dcmread(cr / "cr_001.dcm")
        copy = dcmread(cr / "cr_001.dcm")
        copy.IssuerOfPatientID = "SITE-B" if original.IssuerOfPatientID != "SITE-B" else "SITE-C"
        copy.PatientID = "FEED2-000123"
        del copy.OtherPatientIDsSequence
        server.upload_bytes(_bytes(copy))
        scene.duplicate_sop = str(original.SOPInstanceUID)
        scene.duplicate_hn = str(original.OtherPatientIDsSequence[0].PatientID)
        scene.duplicate_couplet = (str(original.IssuerOfPatientID), str(original.PatientID))
        yield scene


URLS = {
    "dimse-get": lambda s: s.dimse_url("get"),
    "dimse-move": lambda s: s.dimse_url("move"),
    "dicomweb": lambda s: s.dicomweb_url(),
}


@pytest.mark.parametrize("retrieval", sorted(URLS))
def test_duplicates_and_iocm_over_the_network(
    scenario: Scenario, project: Project, tmp_path: Path, retrieval: str
) -> None:
    url = URLS[retrieval](scenario.server)
    plan = prepare_run(project.id, "r1", url, f"file:{tmp_path}", limits=FAST)
    catalog = pq.read_table(catalog_dir_for(plan.ctx.source_url) / "studies.parquet").to_pandas()
    assert catalog["study_uid"].duplicated().sum() == 1, "both feeds' copies are catalogued"
    assert len(plan.studies) == 3 and len({s.study_uid for s in plan.studies}) == 3

    counts = process_batch(plan.ctx, plan.studies)
    store = open_store(f"file:{tmp_path}")
    if retrieval != "dicomweb":  # see below: Orthanc's WADO-RS cannot give the duplicate
        failed = [p["failed"] for p in read_parts(store, plan.ctx.prefix) if "failed" in p]
        assert not failed, f"every study delivered: {failed}; {scenario.server.problems()}"
    summary = build_manifest(store, plan.ctx.prefix, len(plan.studies), project.id, "r1")
    manifest = read_manifest(store, plan.ctx.prefix)
    assert summary["excluded"]["duplicate-study"] == 1
    keys = Pseudonymizer(load_secret(project.id))

    # The copy kept is the one with the health number; the study's instance is exported once.
    # (Orthanc's DICOMweb plugin answers 404 for a Study Instance UID it holds under two
    # patients, so over WADO-RS that study cannot be retrieved from Orthanc at all.)
    dup = manifest[manifest["sop_uid"] == keys.uid(scenario.duplicate_sop)]
    if retrieval != "dicomweb":
        assert len(dup) == 1
        assert counts.excluded["duplicate-sop-instance"] == 1, "the second feed's copy"
        issuer, patient_id = scenario.duplicate_couplet
        expected = keys.research_id(SubjectKey(scenario.duplicate_hn, issuer, patient_id))
        assert dup["research_id"].iloc[0] == expected

    # IOCM: rejected instances and the notes themselves are never exported.
    exported = set(manifest["sop_uid"])
    assert not exported & {keys.uid(u) for u in scenario.rejected}
    assert "KO" not in set(manifest["modality"])
    assert counts.excluded["iocm-rejected"] == len(scenario.rejected), counts.as_dict()
    assert counts.excluded["iocm-rejection-note"] == scenario.notes
