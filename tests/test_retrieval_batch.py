"""Retrieval at the archive's pace (issue 16, items 1 and 2): one association for the studies of a
batch, study k+1 retrieved while study k is worked on, and WADO-RS answers written to disk as
they arrive, against a real Orthanc (tests/orthanc.py). Speed itself is measured in
benchmarks/retrieval.py, never asserted here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pynetdicom import AE

import flows.work
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.catalog import study_refs
from ridl.projects import Project
from ridl.sources import dicomweb
from ridl.sources.base import open_source
from ridl.sources.protect import ArchiveLimits
from ridl.synth import synthesize
from tests.orthanc import Orthanc, dicom_files, require_orthanc

FAST = ArchiveLimits(rate_limit=0, retries=1, backoff_s=0.01)


@pytest.mark.parametrize("kind", ["get", "move"])
def test_a_batch_of_studies_uses_one_association(
    orthanc: Orthanc,
    project: Project,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    opened: list[int] = []
    real = AE.associate

    def counted(self: AE, *args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AE, "associate", counted)
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
    behind: list[int] = []  # bytes received from the stream but not yet on disk, per chunk
    received = [0]
    real_iter = requests.Response.iter_content

    def watched(self: requests.Response, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        for chunk in real_iter(self, *args, **kwargs):
            on_disk = sum(p.stat().st_size for p in workdir.glob("*.dcm"))
            behind.append(received[0] - on_disk)
            received[0] += len(chunk)
            yield chunk

    monkeypatch.setattr(requests.Response, "iter_content", watched)
    monkeypatch.setattr(dicomweb, "CHUNK", 8192)
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


def _window() -> tuple[Any, Any]:
    import datetime as dt

    return dt.date(2000, 1, 1), dt.date(2030, 12, 31)
