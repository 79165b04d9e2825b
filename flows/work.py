"""Per-study work: fetch, check, de-identify, upload, and record a manifest part.

These are plain functions so they can be tested without Prefect and run in any worker process.
A study is done when its manifest part is in the object store; the part is written last, so a
study interrupted half way is simply redone, and objects are overwritten with identical bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from curation.iocm import is_rejection_note, rejected_instances
from curation.pipeline import Curated, Curator
from curation.quarantine import quarantine_file
from deid_recipes import Engine, SubjectContext, load_recipe
from deid_recipes.engine import identifying_tokens
from deid_recipes.fastpath import deidentify_to_bytes
from export.manifest import (
    ObjectRow,
    part_bytes,
    part_key,
    read_part,
    study_part,
    write_part,
)
from export.store import ObjectStore, open_store, sha256_hex
from ridl import settings
from ridl.catalog import StudyRef
from ridl.errors import ObjectRejected
from ridl.optout import load_optout
from ridl.pseudonyms import Pseudonymizer, SubjectKey
from ridl.reasons import Reason
from ridl.secrets import load_secret
from ridl.sources.base import StudySource, open_source
from ridl.sources.hn import subject_from_headers
from ridl.sources.protect import ArchiveLimits

# What the run itself reads from every header (IOCM, scope, object keys).
HEADER_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "Modality")

# Fetching a study from the DIR takes a slot of the run's retrieval limit, so a production archive
# never sees more than N retrievals at once whatever the number of CPU workers: the caller passes
# the factory of that slot (flows.runners builds it for the worker's kind); none means no limit.
RetrievalSlot = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class RunContext:
    """Everything a worker needs to process studies of one release; small and picklable."""

    project: str
    release: str
    source_url: str
    store_url: str
    recipe: str
    retain: tuple[str, ...]
    modalities: tuple[str, ...]
    hn_issuer: str
    limits: ArchiveLimits = ArchiveLimits()
    # Carried to the workers, which may have no access to the research office's disk:
    # the opt-out list as keyed tokens (no PHI) and the project's [curation] settings as JSON.
    optout_tokens: tuple[str, ...] = ()
    curation: str = ""
    # De-identify objects whose pixels curation left alone by the byte-level fast path
    # (deid_recipes.fastpath: header bytes re-encoded, pixel data copied unparsed); objects it
    # hands back (other encodings, elements after the pixel data) and objects curation changed
    # take the dataset path. Both give the same bytes; False sends every object through the
    # dataset path (for comparison: tests/test_run_fastpath.py, benchmarks/run_throughput.py).
    fast_path: bool = True

    @property
    def prefix(self) -> str:
        """``<project>/<release>``: the release's prefix in the object store."""
        return f"{self.project}/{self.release}"


@dataclass
class StudyOutcome:
    """What one study's work did: counts by outcome and reason, never a header value."""

    study_key: str
    skipped: bool = False
    exported: int = 0
    bytes: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    # De-identified UIDs of instances IOCM rejected: a later release retracts them if an
    # earlier release published them before the rejection reached the DIR.
    iocm_rejected: list[str] = field(default_factory=list)
    review: set[str] = field(default_factory=set)


class BatchTally(TypedDict):
    """What a batch task returns (:meth:`BatchCounts.as_dict`, then
    ``flows.runners.run_batch``), summed by ``flows.extract.Totals``: counts only, never image
    bytes or PHI.

    ``studies`` worked (``skipped`` of them were done by an earlier run), objects ``exported``
    and their ``bytes`` (in bytes), instances ``excluded`` and ``quarantined`` by reason code;
    ``instances`` met (exported, excluded or quarantined), ``fresh_instances`` of them in studies
    this batch did itself. ``run_batch`` adds the batch's ``work_seconds`` (seconds of work),
    ``started_at`` and ``finished_at`` (POSIX times, seconds), the store keys of its ``parts``,
    and its worker's ``peak_rss_mib`` (MiB).
    """

    studies: int
    skipped: int
    exported: int
    bytes: int
    excluded: dict[str, int]
    quarantined: dict[str, int]
    instances: int
    fresh_instances: int
    work_seconds: NotRequired[float]
    started_at: NotRequired[float]
    finished_at: NotRequired[float]
    parts: NotRequired[list[str]]
    peak_rss_mib: NotRequired[float]


@dataclass
class BatchCounts:
    """A batch's counts as its studies are worked; :meth:`as_dict` is what the task returns."""

    studies: int = 0
    skipped: int = 0
    exported: int = 0
    bytes: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    # Objects met (exported, excluded or quarantined); "fresh" ones only in studies this batch
    # did itself, not in studies an earlier run had finished.
    instances: int = 0
    fresh_instances: int = 0

    def add(self, outcome: StudyOutcome) -> None:
        """Count one study's outcome into the batch."""
        met = outcome.exported + sum(outcome.excluded.values()) + sum(outcome.quarantined.values())
        self.studies += 1
        self.skipped += int(outcome.skipped)
        self.exported += outcome.exported
        self.bytes += outcome.bytes
        self.excluded.update(outcome.excluded)
        self.quarantined.update(outcome.quarantined)
        self.instances += met
        self.fresh_instances += 0 if outcome.skipped else met

    def as_dict(self) -> BatchTally:
        """The counts as a :class:`BatchTally` (without the timing ``run_batch`` adds)."""
        return BatchTally(
            studies=self.studies,
            skipped=self.skipped,
            exported=self.exported,
            bytes=self.bytes,
            excluded=dict(self.excluded),
            quarantined=dict(self.quarantined),
            instances=self.instances,
            fresh_instances=self.fresh_instances,
        )


class Worker:
    """The per-process objects of a run: keys, compiled recipe, store and source."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.keys = Pseudonymizer(load_secret(ctx.project))
        self.engine = Engine(load_recipe(ctx.recipe), self.keys, retain=ctx.retain)
        self.store: ObjectStore = open_store(ctx.store_url)
        self.source: StudySource = open_source(ctx.source_url, ctx.limits, ctx.hn_issuer)
        self.optout = load_optout(ctx.project, ctx.optout_tokens)
        curation = json.loads(ctx.curation) if ctx.curation else None
        self.curator = Curator.for_project(ctx.project, ctx.release, curation)

    def study_key(self, study: StudyRef) -> str:
        """The study's de-identified Study Instance UID (names its manifest part)."""
        return self.keys.uid(study.study_uid)

    def part_key(self, study: StudyRef) -> str:
        """The store key of the study's manifest part (``export.manifest.part_key``)."""
        return part_key(self.ctx.prefix, self.study_key(study))

    def subject(self, study: StudyRef) -> tuple[SubjectKey, SubjectContext]:
        """The study's subject key and its research ID and date shift (days) in this project."""
        key = SubjectKey(study.health_number, study.issuer, study.patient_id)
        return key, SubjectContext(self.keys.research_id(key), self.keys.date_shift_days(key))


@lru_cache(maxsize=4)
def worker_for(ctx: RunContext) -> Worker:
    """The process's :class:`Worker` for a run (built once per run context, then reused)."""
    return Worker(ctx)


def process_batch(
    ctx: RunContext,
    studies: list[StudyRef],
    retrieval_slot: RetrievalSlot = contextlib.nullcontext,
) -> BatchCounts:
    """Work every study of a batch in this process; counts only (no bytes, no PHI).

    ``retrieval_slot`` guards each study's retrieval from the DIR (the run's retrieval limit).
    Objects that cannot be handled are quarantined and counted; they never fail the batch.

    Raises:
        TransientError: the DIR or the store failed in a way worth retrying the batch for.
        ConfigError: the run context is wrong (secret, recipe, store or source setting).
    """
    worker = worker_for(ctx)
    counts = BatchCounts()
    for study in studies:
        counts.add(process_study(worker, study, retrieval_slot))
    return counts


def process_study(
    worker: Worker, study: StudyRef, retrieval_slot: RetrievalSlot = contextlib.nullcontext
) -> StudyOutcome:
    """Retrieve, curate, de-identify and store one study, then write its manifest part last.

    A study whose part is already in the store is skipped (counted from its part), unless a
    reviewer has since decided about one of its held objects.
    """
    ctx = worker.ctx
    part_key = worker.part_key(study)
    outcome = StudyOutcome(study_key=worker.study_key(study))
    done = read_part(worker.store, part_key)
    # A study that waits on review is redone once a reviewer has decided about its objects.
    if done is not None and not worker.curator.decisions.decided_any(done.get("review", [])):
        outcome.skipped = True
        outcome.exported = len(done["objects"])
        outcome.bytes = part_bytes(done)
        outcome.excluded.update(done["excluded"])
        outcome.quarantined.update(done["quarantined"])
        return outcome

    workdir = settings.work_dir() / ctx.project / ctx.release / outcome.study_key
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with retrieval_slot():
            files = worker.source.fetch_study(study, workdir)
        rows = _process_files(worker, study, files, outcome)
    finally:
        worker.source.release_study(study, workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    part = study_part(
        outcome.study_key,
        # A keyed token of the site (Issuer of Patient ID): lets a release count subjects by
        # number of sites (the health-number linkage) without naming any site.
        worker.keys.token("site", study.issuer),
        rows,
        review=outcome.review,
        excluded=outcome.excluded,
        quarantined=outcome.quarantined,
        iocm_rejected=outcome.iocm_rejected,
    )
    write_part(worker.store, part_key, part)
    return outcome


def _process_files(
    worker: Worker, study: StudyRef, files: list[Path], outcome: StudyOutcome
) -> list[ObjectRow]:
    ctx = worker.ctx
    headers: dict[Path, Dataset] = {}
    for path in files:
        try:
            read = dcmread(path, stop_before_pixels=True)
            for keyword in HEADER_KEYWORDS:  # values are decoded lazily: fail here, not later
                read.get(keyword)
            headers[path] = read
        except InvalidDicomError:
            _quarantine(worker, study, path, outcome, Reason.NOT_DICOM)
        except Exception as exc:
            _quarantine(worker, study, path, outcome, Reason.UNREADABLE, type(exc).__name__)

    if not study.hn_known:  # the catalog could not see the health number: read it here
        study = subject_from_headers(study, headers.values(), ctx.hn_issuer)
    if worker.optout.matches(study.health_number, study.issuer, study.patient_id):
        outcome.excluded[Reason.OPTED_OUT] += len(headers)  # withdrew after selection was frozen
        return []
    _, subject = worker.subject(study)
    if worker.engine.uses_clean:  # names and institutions of the whole study are cleaned away
        subject = replace(subject, identifying=_study_tokens(headers.values()))
    rejected = rejected_instances(headers.values())
    eligible: dict[Path, Dataset] = {}
    for path, header in headers.items():
        sop_uid = str(getattr(header, "SOPInstanceUID", ""))
        if is_rejection_note(header):
            outcome.excluded[Reason.IOCM_REJECTION_NOTE] += 1
            continue
        if sop_uid in rejected:
            outcome.excluded[Reason.IOCM_REJECTED] += 1
            outcome.iocm_rejected.append(worker.keys.uid(sop_uid))
            continue
        if str(getattr(header, "Modality", "")).upper() not in ctx.modalities:
            outcome.excluded[Reason.MODALITY_NOT_APPROVED] += 1
            continue
        eligible[path] = header
    # Curation: checks -> header triage -> known-region cleaning -> text detection.
    view = worker.curator.study(list(eligible.values()))
    rows: list[ObjectRow] = []
    for path, header in eligible.items():
        modality = str(getattr(header, "Modality", "")).upper()
        curated = worker.curator.curate(path, header, view, outcome.study_key)
        if curated.review_id and curated.action == "quarantine":
            outcome.review.add(curated.review_id)
        if curated.action == "exclude":
            outcome.excluded[curated.reason] += 1
            continue
        if curated.action == "quarantine" or curated.dataset is None:
            _quarantine(worker, study, path, outcome, curated.reason, curated.detail)
            continue
        try:
            ds, data = _deidentify(worker, path, curated, subject)
        except ObjectRejected as rej:
            _quarantine(worker, study, path, outcome, rej.reason, rej.detail)
            continue
        except Exception as exc:  # never let one object stop the run
            _quarantine(worker, study, path, outcome, Reason.WRITE_FAILED, type(exc).__name__)
            continue
        if not all(getattr(ds, k, None) for k in ("StudyInstanceUID", "SeriesInstanceUID")):
            _quarantine(worker, study, path, outcome, Reason.MISSING_UID)  # found by fuzzing
            continue
        key = (
            f"{ctx.prefix}/{subject.research_id}/{ds.StudyInstanceUID}/"
            f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        )
        worker.store.put_bytes(key, data)
        rows.append(
            ObjectRow(
                key=key,
                size=len(data),
                sha256=sha256_hex(data),
                research_id=subject.research_id,
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                sop_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                modality=modality,
                study_date=str(getattr(ds, "StudyDate", "")),
                study_description=str(getattr(ds, "StudyDescription", "")),
            )
        )
        outcome.exported += 1
        outcome.bytes += len(data)
    rows.sort(key=lambda r: r["key"])
    return rows


def _study_tokens(headers: Iterable[Dataset]) -> frozenset[str]:
    """The func:clean tokens of every header of a study (:func:`identifying_tokens`).

    A name or an institution one object carries in a person-name or institution attribute is
    often typed into the text of another (a report, a key object note). A header whose values
    cannot be read adds nothing here; de-identifying that object refuses it.
    """
    tokens: set[str] = set()
    for header in headers:
        try:
            tokens |= identifying_tokens(header)
        except ObjectRejected:
            continue
    return frozenset(tokens)


def _deidentify(
    worker: Worker, path: Path, curated: Curated, subject: SubjectContext
) -> tuple[Dataset, bytes]:
    """The de-identified object: a dataset naming it and its bytes.

    An object curation did not change goes by the fast path when the run allows it; the fast
    path answers None for what it does not take, and then the dataset curation read is
    de-identified whole, exactly as with the fast path switched off.
    """
    if worker.ctx.fast_path and not curated.pixels_changed:
        done = deidentify_to_bytes(worker.engine, lambda _header: subject, path)
        if done is not None:
            return done[0], done[2]
    ds = curated.dataset
    assert ds is not None  # the caller quarantines an export without a dataset
    worker.engine.apply(ds, subject)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return ds, buffer.getvalue()


def _quarantine(
    worker: Worker,
    study: StudyRef,
    path: Path,
    outcome: StudyOutcome,
    reason: str,
    detail: str = "",
) -> None:
    ctx = worker.ctx
    quarantine_file(
        ctx.project,
        ctx.release,
        path,
        reason,
        source=ctx.source_url,
        location=str(path),
        study_key=outcome.study_key,
        detail=detail,
    )
    outcome.quarantined[reason] += 1
