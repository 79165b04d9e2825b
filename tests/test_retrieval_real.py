"""Retrieval that takes what the archive holds: objects stored compressed, big endian, deflated
or in a retired SOP class, loaded into a real Orthanc with dcmtk's ``storescu`` (so each is stored
as it was sent), come back from C-GET, C-MOVE and WADO-RS exactly as stored; a study the archive
cannot deliver is recorded with its reason and the run goes on (issue 12, item 1).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import UID, generate_uid

from export.manifest import build_manifest, read_part, read_parts, read_summary
from export.store import open_store
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl import settings
from ridl.catalog import study_refs
from ridl.errors import StudyUndeliverable
from ridl.projects import Project
from ridl.reasons import Reason
from ridl.releases import release_is_published
from ridl.sources.base import open_source
from ridl.sources.protect import ArchiveLimits
from ridl.studies import StudyRef
from ridl.synth import SynthReport
from tests.conftest import require_program
from tests.orthanc import ORTHANC_AET, RIDL_AET, Orthanc, dicom_files, require_orthanc

# No rate limit, no retries: a transient answer would show as a failure here, not a wait.
NO_RETRY = ArchiveLimits(rate_limit=0, retries=0, backoff_s=0.01)
RETIRED_US = UID("1.2.840.10008.5.1.4.1.1.6")  # Ultrasound Image Storage (Retired)

# pydicom's own test files, one per encoding an archive holds (all ship with pydicom).
ENCODED = {
    "jpeg2000-lossless": "MR_small_jp2klossless.dcm",
    "jpeg2000": "JPEG2000.dcm",
    "rle": "MR_small_RLE.dcm",
    "jpeg-ls": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg-baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "big-endian": "MR_small_bigendian.dcm",
    "deflated": "image_dfl.dcm",
}


@dataclass(frozen=True)
class Stored:
    """One object as the archive holds it: its study, encoding, SOP class and pixel bytes."""

    name: str
    study_uid: str
    transfer_syntax: str
    sop_class: str
    pixel_data: bytes


def _copy(source: str, folder: Path, name: str, day: int, sop_class: str | None = None) -> Path:
    """A copy of a pydicom test file as a study of its own (new UIDs), in its own encoding."""
    ds = dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if sop_class:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        ds.Modality = "US"
    ds.StudyDate = f"202001{day:02d}"
    ds.StudyTime = "101500"
    ds.PatientID = f"TS-{day:02d}"
    ds.IssuerOfPatientID = "SITE-A"
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# storescu's option proposing a transfer syntax (with the uncompressed ones after it).
STORESCU_SYNTAX = {
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def storescu(server: Orthanc, paths: list[Path]) -> None:
    """Send files to the archive with dcmtk's storescu, each proposed in its own transfer
    syntax (``-R``: only the files' SOP classes), so the archive stores it as it is."""
    program = require_program("storescu")
    for path in paths:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        subprocess.run(
            [program, "-aet", RIDL_AET, "-aec", ORTHANC_AET, "-R", STORESCU_SYNTAX[syntax]]
            + ["127.0.0.1", str(server.dicom_port), str(path)],
            check=True,
            capture_output=True,
        )


@dataclass
class Archive:
    server: Orthanc
    stored: list[Stored]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """An Orthanc holding one study per encoding, and one in a retired SOP class, as stored."""
    program = require_orthanc()
    folder = tmp_path_factory.mktemp("encodings")
    files: dict[str, Path] = {}
    for day, (name, test_file) in enumerate(sorted(ENCODED.items()), start=1):
        files[name] = _copy(str(get_testdata_file(test_file)), folder, name, day)
    files["retired-us"] = _copy(
        str(get_testdata_file("MR_small.dcm")), folder, "retired-us", 20, RETIRED_US
    )
    stored = []
    for name, path in files.items():
        ds = dcmread(path)
        stored.append(
            Stored(
                name,
                str(ds.StudyInstanceUID),
                str(ds.file_meta.TransferSyntaxUID),
                str(ds.SOPClassUID),
                bytes(ds.PixelData),
            )
        )
    server = Orthanc(program, folder / "orthanc")
    with server:
        storescu(server, list(files.values()))
        for item in stored:  # the archive holds each object as it was sent
            found = requests.post(
                f"{server.url}/tools/lookup", data=item.study_uid, timeout=10
            ).json()
            instances = requests.get(
                f"{server.url}/studies/{found[0]['ID']}/instances", timeout=10
            ).json()
            syntax = requests.get(
                f"{server.url}/instances/{instances[0]['ID']}/metadata/TransferSyntax", timeout=10
            ).text
            assert syntax == item.transfer_syntax, item.name
        yield Archive(server, stored)


def _url(server: Orthanc, kind: str) -> str:
    return server.dicomweb_url() if kind == "web" else server.dimse_url(kind)


def _refs(src: object, folder: Path) -> dict[str, StudyRef]:
    src.build_catalog(folder, dt.date(2019, 1, 1), dt.date(2021, 12, 31))  # type: ignore[attr-defined]
    rows = pq.read_table(folder / "studies.parquet").to_pandas()
    return {ref.study_uid: ref for ref in study_refs(rows)}


@pytest.mark.parametrize("kind", ["get", "move", "web"])
def test_objects_come_back_as_the_archive_stores_them(
    archive: Archive, tmp_path: Path, kind: str
) -> None:
    """C-GET proposes a context per transfer syntax, ridl's C-MOVE SCP accepts every storage
    class (a retired one too) in any syntax, WADO-RS asks for ``transfer-syntax=*``: nothing
    is converted on the way, so the pixel data is the archive's bytes."""
    src = open_source(_url(archive.server, kind), NO_RETRY)
    refs = _refs(src, tmp_path / "cat")
    try:
        for item in archive.stored:
            files = src.fetch_study(refs[item.study_uid], tmp_path / "work" / item.name)
            assert len(files) == 1, item.name
            got = dcmread(files[0])
            assert str(got.file_meta.TransferSyntaxUID) == item.transfer_syntax, item.name
            assert str(got.SOPClassUID) == item.sop_class, item.name
            assert bytes(got.PixelData) == item.pixel_data, item.name
            src.release_study(refs[item.study_uid], tmp_path / "work" / item.name)
    finally:
        close = getattr(src, "close", None)
        if close is not None:
            close()


@pytest.mark.parametrize("kind", ["get", "move", "web"])
def test_a_study_gone_from_the_archive_is_undeliverable(
    archive: Archive, tmp_path: Path, kind: str
) -> None:
    """Deleted after the catalog was built: not a busy archive, so no retry; the study is
    refused with ``study-not-found`` (never an empty success)."""
    path = _copy(str(get_testdata_file("CT_small.dcm")), tmp_path, f"gone-{kind}", 28)
    uid = str(dcmread(path).StudyInstanceUID)
    storescu(archive.server, [path])
    src = open_source(_url(archive.server, kind), NO_RETRY)
    refs = _refs(src, tmp_path / "cat")
    found = requests.post(f"{archive.server.url}/tools/lookup", data=uid, timeout=10).json()
    archive.server.delete(f"/studies/{found[0]['ID']}")
    try:
        with pytest.raises(StudyUndeliverable) as caught:
            src.fetch_study(refs[uid], tmp_path / "work")
    finally:
        close = getattr(src, "close", None)
        if close is not None:
            close()
    assert caught.value.reason == Reason.STUDY_NOT_FOUND
    assert uid not in str(caught.value), "the message names no study"


def test_c_get_contexts_fit_the_association_limit() -> None:
    """PS3.8 9.3.2.2: at most 128 presentation contexts per association (one is the C-GET
    model's); more SOP classes than fit are split over several associations, each class with
    one context per transfer syntax and an SCP role for its storage sub-operations."""
    from pynetdicom import AllStoragePresentationContexts

    from ridl.sources.dimse import TRANSFER_SYNTAXES, get_context_groups

    classes = [str(c.abstract_syntax) for c in AllStoragePresentationContexts] + [RETIRED_US]
    groups = get_context_groups(classes)
    assert len(groups) > 1
    seen: set[tuple[str, str]] = set()
    for contexts, roles in groups:
        assert len(contexts) <= 127
        for cx in contexts:
            for syntax in cx.transfer_syntax:
                seen.add((str(cx.abstract_syntax), str(syntax)))
        assert {r.sop_class_uid for r in roles} == {cx.abstract_syntax for cx in contexts}
    for uid in (RETIRED_US, classes[0]):
        assert {s for c, s in seen if c == uid} == {str(t) for t in TRANSFER_SYNTAXES}
    # Uncompressed syntaxes share a context; each other syntax has one of its own.
    one = get_context_groups([RETIRED_US])[0][0]
    assert len(one) == len(TRANSFER_SYNTAXES) - 1


# --- the run goes on past an undeliverable study -------------------------------------------------


@pytest.fixture
def small_archive(synth_dir: SynthReport, tmp_path: Path) -> Iterator[Orthanc]:
    """An Orthanc of its own (studies are deleted from it) holding the synthetic DIR."""
    server = Orthanc(require_orthanc(), tmp_path / "small-orthanc")
    with server:
        server.upload(dicom_files(synth_dir.files))
        yield server


def _delete_study(server: Orthanc, study_uid: str) -> list[bytes]:
    """Delete a study from the archive; returns its files, to put them back later."""
    found = requests.post(f"{server.url}/tools/lookup", data=study_uid, timeout=10).json()
    orthanc_id = found[0]["ID"]
    instances = requests.get(f"{server.url}/studies/{orthanc_id}/instances", timeout=10).json()
    files = [
        requests.get(f"{server.url}/instances/{i['ID']}/file", timeout=10).content
        for i in instances
    ]
    server.delete(f"/studies/{orthanc_id}")
    return files


def test_an_undeliverable_study_is_recorded_and_retried_only_when_asked(
    small_archive: Orthanc, project: Project, tmp_path: Path
) -> None:
    limits = ArchiveLimits(rate_limit=0, retries=1, backoff_s=0.01)
    dest = f"file:{tmp_path / 'store'}"
    plan = prepare_run(project.id, "r1", small_archive.dicomweb_url(), dest, limits=limits)
    studies = plan.studies[:3]
    gone = studies[1]
    saved = _delete_study(small_archive, gone.study_uid)

    counts = process_batch(plan.ctx, studies)
    assert counts.failed == {Reason.STUDY_NOT_FOUND: 1}
    assert counts.studies == 3 and counts.exported > 0, "the other studies were done"
    store = open_store(dest)
    from flows.work import worker_for

    key = worker_for(plan.ctx).part_key(gone)
    part = read_part(store, key)
    assert part is not None and part["objects"] == []
    assert part.get("failed", {}).get("reason") == Reason.STUDY_NOT_FOUND
    summary = build_manifest(store, plan.ctx.prefix, len(studies), project.id, "r1")
    assert summary.get("studies_failed") == {Reason.STUDY_NOT_FOUND: 1}
    assert [f["reason"] for f in summary.get("failed_studies", [])] == [Reason.STUDY_NOT_FOUND]
    assert summary["studies_done"] == 2

    # A rerun without the flag leaves the recorded failure as it is (no retrieval at all).
    for content in saved:
        small_archive.upload_bytes(content)
    again = process_batch(plan.ctx, studies)
    assert again.failed == {Reason.STUDY_NOT_FOUND: 1} and again.skipped == 3
    # With retry_failed, only the failed study is retrieved again, and now it is delivered.
    retried = process_batch(replace(plan.ctx, retry_failed=True), studies)
    assert retried.failed == {} and retried.skipped == 2
    part = read_part(store, key)
    assert part is not None and part["objects"] and "failed" not in part
    assert len(read_parts(store, plan.ctx.prefix)) == 3


@pytest.mark.prefect
def test_ridl_run_publishes_past_a_failed_study_and_keeps_the_published_release(
    small_archive: Orthanc, project: Project, tmp_path: Path
) -> None:
    """Through the CLI and the Prefect flow: the run publishes the other studies and ``ridl
    summary`` lists the failure; a published release never changes, so ``--retry-failed`` is
    refused for it (the retry itself is tested above, before publication)."""
    from typer.testing import CliRunner

    from flows.cli import app

    dest = f"file:{tmp_path / 'store'}"
    source = small_archive.dimse_url("get")
    plan = prepare_run(project.id, "r1", source, dest, limits=NO_RETRY)
    gone = plan.studies[0]
    saved = _delete_study(small_archive, gone.study_uid)
    args = ["run", "--project", project.id, "--release", "r1", "--source", source]
    args += ["--dest", dest, "--rate-limit", "0", "--retries", "1", "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "failed: study-not-found" in result.output
    assert gone.study_uid not in result.output
    show = ["summary", "--project", project.id, "--release", "r1", "--dest", dest]
    listed = CliRunner().invoke(app, show)
    assert listed.exit_code == 0, listed.output
    summary = json.loads(listed.output)
    assert summary["studies_failed"] == {"study-not-found": 1}
    assert summary["failed_studies"][0]["reason"] == "study-not-found"
    assert (settings.releases_dir() / project.id / "r1").exists()
    assert read_summary(open_store(dest), f"{project.id}/r1")["instances_exported"] > 20

    # Published: the release never changes, so --retry-failed is refused before any work.
    for content in saved:
        small_archive.upload_bytes(content)
    before = sorted(p.name for p in (tmp_path / "store").rglob("*.dcm"))
    result = CliRunner().invoke(app, [*args, "--retry-failed"])
    assert result.exit_code == 2, result.output
    assert "already published" in result.output and "--release" in result.output
    assert sorted(p.name for p in (tmp_path / "store").rglob("*.dcm")) == before


@pytest.mark.prefect
def test_a_release_whose_every_study_failed_is_left_unpublished_unless_allowed_empty(
    small_archive: Orthanc, project: Project, tmp_path: Path
) -> None:
    """Selected while the archive held the studies, run after they were deleted: every study
    fails (study-not-found), nothing is exported, and the release is not published as an empty
    one; the error line counts the reasons and names both ways on."""
    from typer.testing import CliRunner

    from flows.cli import app

    dest = f"file:{tmp_path / 'store'}"
    source = small_archive.dimse_url("get")
    plan = prepare_run(project.id, "r1", source, dest, date_to=dt.date(2017, 12, 31),
                       limits=NO_RETRY)  # fmt: skip
    assert plan.studies
    for study in plan.studies:
        _delete_study(small_archive, study.study_uid)
    args = ["run", "--project", project.id, "--release", "r1", "--source", source, "--dest",
            dest, "--to", "2017-12-31", "--rate-limit", "0", "--retries", "1"]  # fmt: skip
    args += ["--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert said.startswith("error: release") and "holds no object" in said, said
    assert f"{len(plan.studies)} study-not-found" in said and "--allow-empty" in said, said
    assert not release_is_published(project.id, "r1")
    assert not (tmp_path / "store" / project.id / "r1" / "manifest.json").exists()

    published = CliRunner().invoke(app, [*args, "--allow-empty"])
    assert published.exit_code == 0, published.output
    assert release_is_published(project.id, "r1")


def test_full_verification_goes_on_past_a_study_the_dir_no_longer_holds(
    small_archive: Orthanc, project: Project, tmp_path: Path
) -> None:
    """``ridl verify --full`` reads every source study again: one deleted from the archive
    since the run is named (its part, its reason) and the release is not passed, but every
    object is still searched."""
    from flows.gate import verify_release

    dest = f"file:{tmp_path / 'store'}"
    plan = prepare_run(project.id, "r1", small_archive.dimse_url("get"), dest, limits=NO_RETRY)
    studies = plan.studies[:3]
    process_batch(plan.ctx, studies)
    store = open_store(dest)
    build_manifest(store, plan.ctx.prefix, len(studies), project.id, "r1")
    from flows.work import worker_for

    gone = next(s for s in studies if read_part(store, worker_for(plan.ctx).part_key(s))["objects"])  # type: ignore[index]
    _delete_study(small_archive, gone.study_uid)
    report = verify_release(project.id, "r1", dest, ocr=False, record_audit=False)
    assert not report.passed
    assert [(h.key, h.kind) for h in report.hits] == [
        (worker_for(plan.ctx).part_key(gone), Reason.STUDY_NOT_FOUND)
    ]
    exported = sum(1 for _ in (tmp_path / "store").rglob("*.dcm"))
    assert report.objects_checked >= exported > 0, "every object searched (and the derived files)"
