"""Retrieval at the archive's pace (issue 16, items 1 and 2): one association for the studies of a
batch, study k+1 retrieved while study k is worked on, and WADO-RS answers written to disk as
they arrive, against a real Orthanc (tests/orthanc.py). Speed itself is measured in
benchmarks/retrieval.py, never asserted here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

import flows.work
from flows.retrieval import RetrievalProcess, RetrievalProcessEnded, close_all
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.catalog import study_refs
from ridl.errors import StudyUndeliverable
from ridl.projects import Project
from ridl.settings import private_dir
from ridl.sources import dicomweb
from ridl.sources.base import open_source
from ridl.sources.dimse import DimseSource, stop_move_receivers
from ridl.sources.protect import ArchiveLimits
from ridl.studies import StudyRef
from ridl.synth import synthesize
from tests.orthanc import Orthanc, dicom_files, require_orthanc
from tests.processes import alive, command_line, descendants, loaded_by

FAST = ArchiveLimits(rate_limit=0, retries=1, backoff_s=0.01)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per association this process opens (pynetdicom's AE.associate, counted)."""
    calls: list[int] = []
    real = AE.associate

    def counted(self: AE, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AE, "associate", counted)
    return calls


@pytest.mark.parametrize("kind", ["get", "move"])
def test_a_batch_of_studies_uses_one_association(
    orthanc: Orthanc,
    project: Project,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    opened: list[int],
    kind: str,
) -> None:
    # The source's session logic, counted in this process: the prefetch thread runs it itself
    # (and listens for C-MOVE here: the retrieval processes of earlier tests are ended first).
    close_all()
    monkeypatch.setattr(DimseSource, "retrieves_in_process", False)
    request.addfinalizer(stop_move_receivers)  # this process's C-MOVE port, for later tests
    plan = prepare_run(
        project.id, f"r-{kind}", orthanc.dimse_url(kind), f"file:{tmp_path / 'store'}", limits=FAST
    )
    opened.clear()  # the catalog's C-FIND associations are not the batch's
    studies = plan.studies[:4]
    counts = process_batch(plan.ctx, studies)
    assert counts.studies == 4 and counts.exported > 0 and not counts.failed
    # Before: one association per study (C-GET: two, with its SOP Classes in Study C-FIND).
    # A study with a storage class the open one lacks may open one more; never one per study.
    assert 1 <= len(opened) < len(studies), f"{len(opened)} associations for {len(studies)}"


def test_study_k_plus_1_is_retrieved_while_study_k_is_worked_on(
    orthanc: Orthanc, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work: list[tuple[str, float, float]] = []
    real_files = flows.work._process_files

    def slow_work(worker: Any, study: Any, files: Any, outcome: Any) -> Any:
        start = time.monotonic()
        time.sleep(0.4)  # work that takes longer than a small study's retrieval
        try:
            return real_files(worker, study, files, outcome)
        finally:
            work.append((study.study_uid, start, time.monotonic()))

    prefetchers: list[Any] = []
    real_prefetcher = flows.work.Prefetcher

    class Recorded(real_prefetcher):  # type: ignore[misc, valid-type]
        def __enter__(self) -> Any:
            prefetchers.append(self)
            return super().__enter__()

    monkeypatch.setattr(flows.work, "_process_files", slow_work)
    monkeypatch.setattr(flows.work, "Prefetcher", Recorded)
    plan = prepare_run(
        project.id, "r-overlap", orthanc.dimse_url("get"), f"file:{tmp_path / 'st'}", limits=FAST
    )
    studies = plan.studies[:4]
    counts = process_batch(plan.ctx, studies)
    assert counts.studies == 4 and not counts.failed
    (prefetcher,) = prefetchers
    fetched = {item.study.study_uid: item for item in prefetcher.history}
    assert [s.study_uid for s in studies] == [uid for uid, _, _ in work]
    overlaps = [
        fetched[nxt].started < end for (_, _, end), (nxt, _, _) in zip(work, work[1:], strict=False)
    ]
    assert all(overlaps), "each next study's retrieval starts before this study's work ends"


def test_dimse_retrieval_runs_in_a_process_of_its_own(
    orthanc: Orthanc, project: Project, tmp_path: Path, opened: list[int]
) -> None:
    """The batch's C-GETs and C-MOVEs are made by the worker's retrieval process: this process
    opens no association, and the files it works on were written by another process."""
    plan = prepare_run(
        project.id, "r-process", orthanc.dimse_url("get"), f"file:{tmp_path / 'st'}", limits=FAST
    )
    opened.clear()
    worker = flows.work.worker_for(plan.ctx)
    retriever = worker.retriever
    assert isinstance(retriever, RetrievalProcess)
    counts = process_batch(plan.ctx, plan.studies[:3])
    assert counts.studies == 3 and counts.exported > 0 and not counts.failed
    assert not opened, "no association is opened by the worker's own process"
    child = retriever._proc
    assert child is not None and child.poll() is None and child.pid != os.getpid()
    retriever.close()
    assert child.poll() is not None, "closing its input ends the retrieval process"


def test_the_retrieval_process_starts_without_the_catalogs_arrow_and_pandas() -> None:
    # What a retrieval process imports (flows.retrieval's child: the module and its DIMSE
    # source); the catalog's Arrow and pandas were half a second of every start.
    assert loaded_by("flows.retrieval, ridl.sources.dimse", ("pandas", "pyarrow")) == []


def test_a_killed_retrieval_process_is_a_transient_error_and_is_started_again(
    orthanc: Orthanc, project: Project, tmp_path: Path
) -> None:
    plan = prepare_run(
        project.id, "r-killed", orthanc.dimse_url("get"), f"file:{tmp_path / 'st'}", limits=FAST
    )
    retriever = flows.work.worker_for(plan.ctx).retriever
    assert isinstance(retriever, RetrievalProcess)
    study = plan.studies[0]
    first = retriever.fetch_study(study, private_dir(tmp_path / "w1"))
    assert first and all(p.is_file() for p in first)
    assert retriever._proc is not None
    retriever._proc.kill()
    retriever._proc.wait()
    with pytest.raises(RetrievalProcessEnded):
        retriever.fetch_study(study, private_dir(tmp_path / "w2"))
    again = retriever.fetch_study(study, private_dir(tmp_path / "w3"))
    assert [p.name for p in again] == [p.name for p in first]
    with pytest.raises(StudyUndeliverable):  # the source's own errors cross as themselves
        retriever.fetch_study(
            replace(study, study_uid="1.2.3.4.5.6.7"), private_dir(tmp_path / "w4")
        )
    retriever.close()


@pytest.fixture
def big_archive(tmp_path: Path) -> Iterator[tuple[Orthanc, Path]]:
    """An Orthanc holding studies of 256 x 256 slices (128 KiB each)."""
    report = synthesize(tmp_path / "dir", patients=2, sites=2, seed=3, ct_slices=3, ct_size=256)
    server = Orthanc(require_orthanc(), tmp_path / "big-orthanc")
    with server:
        server.upload(dicom_files(report.files))
        yield server, report.root


def test_wado_rs_writes_each_instance_to_disk_as_it_arrives(
    big_archive: tuple[Orthanc, Path],
    ridl_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, root = big_archive
    folder = open_source(f"folder:{root}")
    folder.build_catalog(tmp_path / "cat", *_window())
    import pyarrow.parquet as pq

    frame = pq.read_table(tmp_path / "cat" / "studies.parquet").to_pandas()
    ct = next(row for row in frame.to_dict("records") if "CT" in list(row["modalities"]))
    (ref,) = [r for r in study_refs(frame) if r.study_uid == ct["study_uid"]]

    workdir = tmp_path / "w"
    behind: list[int] = []  # bytes received from a stream but not yet on disk, per chunk
    real_iter = requests.Response.iter_content

    def on_disk() -> int:
        return sum(p.stat().st_size for p in workdir.rglob("*.dcm"))

    def watched(self: requests.Response, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        # Counted per response, against what reached the disk since it began: a QIDO-RS
        # answer (never written) or a retried request (written over) is not a part held back.
        start, received = on_disk(), 0
        for chunk in real_iter(self, *args, **kwargs):
            behind.append(received - (on_disk() - start))
            received += len(chunk)
            yield chunk

    monkeypatch.setattr(requests.Response, "iter_content", watched)
    monkeypatch.setattr(dicomweb, "CHUNK", 8192)
    # One series at a time, so that no other stream's writes hide one held back (fetching
    # series at once: test_wado_rs_fetches_a_studys_series_at_once_within_the_archive_cap).
    monkeypatch.setattr(dicomweb, "SERIES_AT_ONCE", 1)
    source = open_source(server.dicomweb_url(), FAST)
    paths = source.fetch_study(ref, workdir)
    assert len(paths) >= 3
    part = max(p.stat().st_size for p in paths)
    assert part > 100_000
    # Never a whole instance held in memory: what has arrived is on disk within a few chunks
    # (a multipart decoder that yields whole parts falls a whole part behind).
    assert max(behind) < part // 2, f"{max(behind)} bytes held back, an instance is {part}"
    for path in paths:
        assert path.read_bytes()[128:132] == b"DICM"


def test_wado_rs_fetches_a_studys_series_at_once_within_the_archive_cap(
    tmp_path: Path, ridl_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One study of four series (a CT series and three copies under new UIDs).
    report = synthesize(tmp_path / "dir", patients=2, sites=2, seed=5, ct_slices=6, ct_size=256)
    first = next(p for p in report.files if p.name == "ct_001.dcm")
    files = sorted(p for p in first.parent.iterdir() if p.name.startswith("ct_"))
    copies = tmp_path / "copies"
    copies.mkdir()
    for n in range(3):
        series_uid = generate_uid()
        for path in files:
            ds = dcmread(path)
            ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 10 + n
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(copies / f"{n}_{path.name}")
    head = dcmread(first, stop_before_pixels=True)
    ref = StudyRef(
        str(head.StudyInstanceUID), str(head.IssuerOfPatientID), str(head.PatientID), None, ""
    )

    def fetch(server: Orthanc, cap: int, whole: bool = False) -> tuple[list[str], int]:
        """(SHA-256 of every instance fetched, most WADO-RS requests in flight at once)."""
        source = open_source(server.dicomweb_url(), replace(FAST, max_associations=cap))
        assert isinstance(source, dicomweb.DicomwebSource)
        flight, peak, lock = [0], [0], threading.Lock()
        real = source._retrieve

        def watched(path: str, folder: Path) -> list[Path]:
            with lock:
                flight[0] += 1
                peak[0] = max(peak[0], flight[0])
            try:
                time.sleep(0.05)  # a remote archive's latency: requests overlap when they can
                return real(path, folder)
            finally:
                with lock:
                    flight[0] -= 1

        monkeypatch.setattr(source, "_retrieve", watched)
        if whole:  # the reference: the study in one request
            monkeypatch.setattr(source, "_series_of", lambda study: [])
        try:
            with source.session():
                paths = source.fetch_study(ref, tmp_path / f"w{cap}{whole}")
        finally:
            source.close()
        return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths), peak[0]

    server = Orthanc(require_orthanc(), tmp_path / "orthanc")
    with server:
        server.upload(dicom_files(files + sorted(copies.iterdir())))
        whole, one_request = fetch(server, 4, whole=True)
        together, at_once = fetch(server, 4)
        alone, in_turn = fetch(server, 1)
    assert len(whole) == 4 * len(files) and one_request == 1
    assert together == whole and alone == whole, "the same instances, byte for byte"
    assert at_once >= 2, "series fetched at once when the archive's cap has room"
    assert in_turn == 1, "never more requests at once than the cap (--max-associations 1)"


def _window() -> tuple[Any, Any]:
    import datetime as dt

    return dt.date(2000, 1, 1), dt.date(2030, 12, 31)


class _SizedRetriever:
    """Writes each study as one file of a set size, recording when each retrieval started."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.order: list[str] = []

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        yield

    def fetch_study(self, study: Any, workdir: Path) -> list[Path]:
        self.order.append(study.study_uid)
        path = workdir / "000000.dcm"
        path.write_bytes(b"\0" * self.sizes[study.study_uid])
        return [path]


def _ahead_when_taken(sizes: dict[str, int], depth: int, budget: int, tmp_path: Path) -> list[int]:
    """For each study the worker takes (slowly), how many retrievals had started just before."""
    worker = SimpleNamespace(
        ctx=SimpleNamespace(project="p", release="r"),
        study_key=lambda study: study.study_uid,
        source=SimpleNamespace(release_study=lambda study, workdir: None),
    )
    studies = [SimpleNamespace(study_uid=uid) for uid in sizes]
    retriever = _SizedRetriever(sizes)
    seen = []
    with flows.work.Prefetcher(
        worker, studies, contextlib.nullcontext, depth=depth, retriever=retriever, budget=budget
    ) as prefetcher:
        for study in studies:
            time.sleep(0.3)  # the work on the study before: the thread runs ahead meanwhile
            seen.append(len(retriever.order))  # before taking: taking makes room for one more
            item = prefetcher.take(study)
            assert item.files and item.nbytes == sizes[study.study_uid]
    return seen


def test_prefetch_runs_ahead_through_small_studies_up_to_its_depth_and_bytes(
    tmp_path: Path,
) -> None:
    sizes = {f"s{i}": 10 for i in range(6)}
    # Before: one study ahead. Now small studies are retrieved up to the depth ahead.
    assert _ahead_when_taken(sizes, depth=3, budget=10_000, tmp_path=tmp_path)[0] == 3
    # Studies that fill the byte budget stop it: one waits, the next is not retrieved.
    big = {f"b{i}": 1000 for i in range(4)}
    assert _ahead_when_taken(big, depth=3, budget=1000, tmp_path=tmp_path)[0] == 1
    # One study may always wait, whatever its size.
    huge = {"h0": 5000, "h1": 10}
    assert _ahead_when_taken(huge, depth=3, budget=1000, tmp_path=tmp_path) == [1, 2]


def _retrieval_processes(root: int) -> set[int]:
    """Live ``python -m flows.retrieval`` processes descended from process ``root``."""
    return {pid for pid in descendants(root) if b"flows.retrieval" in command_line(pid)}


@pytest.mark.prefect
def test_ctrl_c_stops_a_dimse_run_with_its_retrieval_processes_and_no_traceback(
    orthanc: Orthanc, project: Project, tmp_path: Path, ridl_home: Path
) -> None:
    args = [sys.executable, "-m", "flows.cli", "run", "--project", project.id, "--release", "r1",
            "--source", orthanc.dimse_url("get"), "--dest", f"file:{tmp_path / 'lib'}",
            "--workers", "2", "--batch-size", "2", "--max-associations", "3"]  # fmt: skip
    env = dict(os.environ, RIDL_HOME=str(ridl_home), PYTHONPATH=os.getcwd())
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        retrieving: set[int] = set()
        deadline = time.monotonic() + 180
        while not retrieving and time.monotonic() < deadline and proc.poll() is None:
            retrieving = _retrieval_processes(proc.pid)
            time.sleep(0.1)
        assert proc.poll() is None and retrieving, "the run's workers are retrieving"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at the terminal: the whole group
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    said = " ".join(output.split())
    assert "to resume: ridl run --project" in said, output[-3000:]
    # The resume line keeps how the run was told to press on the archive and to scale.
    resume = said.split("to resume: ", 1)[1]
    for option in ("--max-associations 3", "--workers 2", "--batch-size 2"):
        assert option in resume, resume
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in retrieving) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in retrieving), "no retrieval process outlives its run"


def test_runs_one_after_another_in_a_worker_share_its_c_move_retrieval_process(
    orthanc: Orthanc, project: Project, tmp_path: Path
) -> None:
    """A long-lived worker (a Dask worker) takes the batches of one run, then of another: both
    retrieve through one retrieval process, which holds the C-MOVE receiver's port once."""
    contexts = []
    for release in ("r-first", "r-second"):
        plan = prepare_run(
            project.id, release, orthanc.dimse_url("move"), f"file:{tmp_path / release}",
            limits=FAST,
        )  # fmt: skip
        counts = process_batch(plan.ctx, plan.studies[:2])
        assert counts.studies == 2 and counts.exported > 0 and not counts.failed, release
        contexts.append(plan.ctx)
    first, second = (flows.work.worker_for(ctx) for ctx in contexts)
    assert first is not second and first.retriever is second.retriever
