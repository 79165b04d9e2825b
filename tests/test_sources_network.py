"""Network DIR sources against a real Orthanc: the same release from a folder, DIMSE and DICOMweb.

The session Orthanc (tests/orthanc.py) holds the synthetic DIR. Work runs without Prefect here
(prepare_run, process_batch, build_manifest are what the flow's tasks call).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from export.manifest import build_manifest, read_manifest
from export.store import open_store
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl import settings
from ridl.catalog import catalog_dir_for, select, study_refs
from ridl.errors import ConfigError
from ridl.optout import add_optout, load_optout
from ridl.projects import Project
from ridl.pseudonyms import Pseudonymizer
from ridl.secrets import load_secret
from ridl.sources.base import open_source
from ridl.sources.dicomweb import DicomwebSource
from ridl.sources.dimse import DimseSource
from ridl.sources.protect import ArchiveLimits
from ridl.synth import SynthReport
from tests.orthanc import Orthanc

# No rate limit and short backoff in tests; the concurrency cap stays at its default.
FAST = ArchiveLimits(rate_limit=0, backoff_s=0.01)


def build_release(
    project: Project, source: str, store: Path, release: str = "r1"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Select, process and publish one release; forget its frozen selection afterwards so the
    same project and release can be built again from another source."""
    plan = prepare_run(project.id, release, source, f"file:{store}", limits=FAST)
    process_batch(plan.ctx, plan.studies)
    target = open_store(f"file:{store}")
    summary = build_manifest(target, plan.ctx.prefix, len(plan.studies), project.id, release)
    shutil.rmtree(settings.releases_dir() / project.id / release)
    return read_manifest(target, plan.ctx.prefix), summary


# Orthanc refuses to store these, so only the folder source meets (and quarantines) them.
NOT_IN_ORTHANC = {"truncated", "not-dicom"}


def test_folder_dimse_and_dicomweb_give_the_same_release(
    synth_dir: SynthReport, orthanc: Orthanc, project: Project, tmp_path: Path
) -> None:
    folder, folder_summary = build_release(project, f"folder:{synth_dir.root}", tmp_path / "a")
    dimse, dimse_summary = build_release(project, orthanc.dimse_url("get"), tmp_path / "b")
    web, web_summary = build_release(project, orthanc.dicomweb_url(), tmp_path / "c")
    assert len(folder) > 20
    pd.testing.assert_frame_equal(folder, dimse)
    pd.testing.assert_frame_equal(folder, web)
    for summary in (folder_summary, dimse_summary, web_summary):
        assert summary["studies_selected"] == folder_summary["studies_selected"]
        # IOCM: the rejected series (4 CT slices) and the rejection note never leave.
        assert summary["excluded"]["iocm-rejected"] == 4
        assert summary["excluded"]["iocm-rejection-note"] == 1
        # Curation decides the same way whichever way the objects arrived.
        assert summary["excluded"] == folder_summary["excluded"]
    # The folder also quarantines its truncated and non-DICOM files; Orthanc refused both.
    assert folder_summary["quarantined"]["truncated"] == 1
    assert "truncated" not in dimse_summary["quarantined"]
    same = {k: v for k, v in folder_summary["quarantined"].items() if k not in NOT_IN_ORTHANC}
    assert dimse_summary["quarantined"] == web_summary["quarantined"] == same

    # The working folders of network retrieval are gone when the studies are done.
    work = settings.work_dir() / project.id
    assert not work.exists() or not any(p.is_file() for p in work.rglob("*"))


def test_dimse_catalog_matches_the_folder_catalog(
    synth_dir: SynthReport, orthanc: Orthanc, ridl_home: Path
) -> None:
    window = (dt.date(2015, 1, 1), dt.date(2024, 12, 31))
    src = open_source(f"folder:{synth_dir.root}")
    src.build_catalog(catalog_dir_for(src.url), *window)
    net = open_source(orthanc.dimse_url("get"), FAST)
    net.build_catalog(catalog_dir_for(net.url), *window)
    cols = ["study_uid", "study_date", "issuer", "patient_id", "health_number", "n_series"]
    a = pq.read_table(catalog_dir_for(src.url) / "studies.parquet").to_pandas()
    b = pq.read_table(catalog_dir_for(net.url) / "studies.parquet").to_pandas()
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert [list(m) for m in a["modalities"]] == [list(m) for m in b["modalities"]]
    assert b["hn_known"].all(), "Orthanc's C-FIND returns Other Patient IDs Sequence"


def test_c_move_to_ridls_own_storage_scp(
    synth_dir: SynthReport, orthanc: Orthanc, project: Project, tmp_path: Path
) -> None:
    folder, _ = build_release(project, f"folder:{synth_dir.root}", tmp_path / "a")
    moved, summary = build_release(project, orthanc.dimse_url("move"), tmp_path / "b")
    pd.testing.assert_frame_equal(folder, moved)
    assert summary["excluded"]["iocm-rejected"] == 4


def test_capped_c_find_windows_are_split(
    synth_dir: SynthReport, tmp_path: Path, ridl_home: Path
) -> None:
    from tests.orthanc import dicom_files, require_orthanc

    with Orthanc(require_orthanc(), tmp_path / "capped", limit_find_results=5) as capped:
        capped.upload(dicom_files(synth_dir.files))
        src = open_source(capped.dimse_url("get"), FAST)
        assert isinstance(src, DimseSource)
        src.build_catalog(tmp_path / "cat", dt.date(2015, 1, 1), dt.date(2024, 12, 31))
        # More studies in one day than the cap: the day is split by study time...
        template = next(p for p in synth_dir.files if p.name == "cr_001.dcm")
        for hour in range(6):
            capped.upload_bytes(_copy_study(template, "20300101", f"{8 + hour:02d}1500"))
        src.build_catalog(tmp_path / "day", dt.date(2030, 1, 1), dt.date(2030, 1, 1))
        # ...down to one minute, where ridl stops and says what to change.
        for _ in range(6):
            capped.upload_bytes(_copy_study(template, "20300102", "101500"))
        with pytest.raises(ConfigError, match="raise its limit"):
            src.build_catalog(tmp_path / "minute", dt.date(2030, 1, 2), dt.date(2030, 1, 2))
    studies = pq.read_table(tmp_path / "cat" / "studies.parquet").to_pandas()
    assert len(studies) == synth_dir.studies, "every study found despite the cap"
    assert studies["study_uid"].is_unique
    assert src.windows_queried > synth_dir.studies // 5, "the window was split"
    day = pq.read_table(tmp_path / "day" / "studies.parquet").to_pandas()
    assert len(day) == 6 and day["study_uid"].is_unique


def _copy_study(template: Path, date: str, time: str) -> bytes:
    """A new study (new UIDs) from a template file, on the given date and time."""
    import io

    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(template)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime = date, time
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicomweb_catalog_pages_and_leaves_the_health_number_to_the_headers(
    synth_dir: SynthReport, orthanc: Orthanc, ridl_home: Path
) -> None:
    src = open_source(orthanc.dicomweb_url() + "?page=7", FAST)
    assert isinstance(src, DicomwebSource)
    src.build_catalog(ridl_home / "cat", dt.date(2015, 1, 1), dt.date(2024, 12, 31))
    studies = pq.read_table(ridl_home / "cat" / "studies.parquet").to_pandas()
    assert len(studies) == synth_dir.studies
    assert src.requests_made >= synth_dir.studies // 7 + 1, "paged with limit/offset"
    assert set(studies["issuer"]) == {"SITE-A", "SITE-B", "SITE-C"}
    assert not studies["hn_known"].any(), "Orthanc's QIDO-RS does not return the sequence"


def test_refused_association_is_retried(orthanc: Orthanc, ridl_home: Path) -> None:
    """An archive that refuses ridl's AE, then lets it in: the guard backs off and retries."""
    url = orthanc.dimse_url("get", calling="LATECOMER")
    src = open_source(url, ArchiveLimits(rate_limit=0, retries=3, backoff_s=0.01))
    assert isinstance(src, DimseSource)
    waits: list[float] = []

    def admit_after_backoff(seconds: float) -> None:
        waits.append(seconds)
        orthanc.add_modality("latecomer", "LATECOMER", 11112)

    src.guard.sleep = admit_after_backoff
    try:
        src.build_catalog(ridl_home / "cat", dt.date(2015, 1, 1), dt.date(2024, 12, 31))
    finally:
        orthanc.remove_modality("latecomer")
    assert src.guard.refusals == 1 and src.guard.attempts == 2
    assert waits == [0.01]
    assert pq.ParquetFile(ridl_home / "cat" / "studies.parquet").metadata.num_rows > 0


def test_refusals_past_the_retry_budget_fail_with_a_clear_message(
    orthanc: Orthanc, ridl_home: Path
) -> None:
    from ridl.sources.protect import ArchiveUnavailable

    src = open_source(
        orthanc.dimse_url("get", calling="STRANGER"),
        ArchiveLimits(rate_limit=0, retries=2, backoff_s=0.5),
    )
    assert isinstance(src, DimseSource)
    waits: list[float] = []
    src.guard.sleep = waits.append
    with pytest.raises(ArchiveUnavailable, match="STRANGER"):
        src.build_catalog(ridl_home / "cat", dt.date(2015, 1, 1), dt.date(2024, 12, 31))
    assert waits == [0.5, 1.0], "exponential backoff between attempts"


def test_opt_out_by_health_number_holds_when_the_catalog_cannot_see_it(
    synth_dir: SynthReport, orthanc: Orthanc, project: Project, tmp_path: Path
) -> None:
    """DICOMweb's catalog lacks the health number: the study is selected, then the per-study
    work reads the number from the headers and drops the withdrawn subject's study."""
    reg = next(
        r
        for r in synth_dir.registrations
        if r.person.health_number and r.issuer in project.scope.sites
    )
    hn = reg.person.health_number
    assert hn is not None
    add_optout(project.id, health_number=hn)
    plan = prepare_run(project.id, "r1", orthanc.dicomweb_url(), f"file:{tmp_path}", limits=FAST)
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.excluded["opted-out"] > 0
    keys = Pseudonymizer(load_secret(project.id))
    from ridl.pseudonyms import SubjectKey

    withdrawn = keys.research_id(SubjectKey(hn, reg.issuer, reg.patient_id))
    assert not list(tmp_path.rglob(f"*{withdrawn}*")), "nothing of the subject was exported"
    assert load_optout(project.id).matches(hn, "", "")


def test_dimse_selection_drops_opted_out_subjects_before_retrieval(
    synth_dir: SynthReport, orthanc: Orthanc, project: Project, ridl_home: Path
) -> None:
    reg = next(r for r in synth_dir.registrations if r.issuer in project.scope.sites)
    src = open_source(orthanc.dimse_url("get"), FAST)
    catalog = catalog_dir_for(src.url)
    src.build_catalog(catalog, project.scope.date_from, project.scope.date_to)
    before = select(catalog, project.scope, load_optout(project.id))
    add_optout(project.id, issuer=reg.issuer, patient_id=reg.patient_id)
    after = select(catalog, project.scope, load_optout(project.id))
    gone = after.excluded["opted-out"]
    assert gone > 0 and len(after.studies) == len(before.studies) - gone
    assert not (
        (after.studies["issuer"] == reg.issuer) & (after.studies["patient_id"] == reg.patient_id)
    ).any()


@pytest.mark.prefect
def test_ridl_run_over_dicomweb_with_archive_limits(
    orthanc: Orthanc, project: Project, tmp_path: Path
) -> None:
    """The whole run through the CLI and the Prefect flow, with the protection options."""
    from typer.testing import CliRunner

    from flows.cli import app

    dest = f"file:{tmp_path}"
    args = ["run", "--project", project.id, "--release", "r1", "--source", orthanc.dicomweb_url()]
    args += ["--dest", dest, "--max-associations", "1", "--rate-limit", "0", "--retries", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "excluded: iocm-rejected" in result.output
    manifest = read_manifest(open_store(dest), f"{project.id}/r1")
    assert len(manifest) > 20
    assert not any((settings.work_dir() / project.id).rglob("*.dcm"))


def test_dir_index_over_dimse(synth_dir: SynthReport, orthanc: Orthanc, ridl_home: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    args = ["dir", "index", orthanc.dimse_url("get"), "--from", "2015-01-01", "--to", "2024-12-31"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"catalog of {synth_dir.studies} studies" in result.output
    for value in synth_dir.phi_strings():
        assert value not in result.output


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_archive_down_mid_run_is_retried_when_it_comes_back(
    synth_dir: SynthReport, tmp_path: Path, ridl_home: Path, kind: str
) -> None:
    """The archive goes away between catalog and retrieval (restart, network cut): the fetch
    backs off, and succeeds once the archive answers again."""
    from tests.orthanc import dicom_files, require_orthanc

    study = next(p.parent for p in synth_dir.files if p.name == "ct_001.dcm")
    files = dicom_files(sorted(study.iterdir()))
    server = Orthanc(require_orthanc(), tmp_path / "flaky")
    with server:
        server.upload(files)
        url = server.dimse_url("get") if kind == "dimse" else server.dicomweb_url()
        src = open_source(url, ArchiveLimits(rate_limit=0, retries=3, backoff_s=0.01))
        src.build_catalog(tmp_path / "cat", dt.date(2015, 1, 1), dt.date(2024, 12, 31))
        ref = study_refs(pq.read_table(tmp_path / "cat" / "studies.parquet").to_pandas())[0]
        if isinstance(src, DicomwebSource):
            src.close()  # idle keep-alive connections hold up Orthanc's shutdown
    restarts: list[float] = []

    def restart(seconds: float) -> None:
        restarts.append(seconds)
        server.start()

    src.guard.sleep = restart  # type: ignore[attr-defined]
    try:
        got = src.fetch_study(ref, tmp_path / "work")
    finally:
        if isinstance(src, DicomwebSource):
            src.close()
        server.stop()
    assert len(restarts) == 1 and src.guard.refusals == 1  # type: ignore[attr-defined]
    assert len(got) == len(files)
