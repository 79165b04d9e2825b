"""Per-study work: fetch, check, de-identify, verify, upload, and record a manifest part.

These are plain functions so they can be tested without Prefect and run in any worker process.
A study is done when its manifest part is in the object store; the part is written last, so a
study interrupted half way is simply redone, and objects are overwritten with identical bytes.

Verification in the stream: every de-identified object is searched, before it is written to the
store, for the identifiers of its study (an :class:`export.identifiers.IdentifierDictionary`
built from every header the worker read for the study, the subject's research ID scoping its
birth date) and for the project's cross-study terms (staff, institution, department and station
names met in other studies, :mod:`ridl.crossterms`), and the text curation's OCR already read in
its pixels is searched too (never read twice). An object with a hit is quarantined
(``verification-hit``) and never stored, so nothing reaches any store unverified, and a killed
run leaves only verified objects behind. The study's part records how it was verified
(:class:`export.manifest.VerificationRecord`), and the identifiers it was verified against are
kept on premises (``ridl.releases.write_study_terms``) so the release gate can re-check a sample
without retrieving anything from the DIR again.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from curation.integrity import ObjectRead
from curation.iocm import is_rejection_note, rejected_instances
from curation.pipeline import Curated, Curator
from curation.quarantine import quarantine_file
from curation.review import read_held, write_held
from deid_recipes import Engine, SubjectContext, load_recipe
from deid_recipes.engine import identifying_tokens
from deid_recipes.fastpath import deidentify_bytes, deidentify_to_bytes
from export.identifiers import (
    RULES_VERSION,
    CrossStudyDictionary,
    ElementMemo,
    IdentifierDictionary,
    prepare_date_keys,
)
from export.manifest import (
    FailedRetrieval,
    ObjectRow,
    VerificationRecord,
    object_path,
    part_bytes,
    part_key,
    read_part,
    study_part,
    write_part,
)
from export.phi_scan import UNVERIFIABLE, Verifier, written_pixel_start
from export.store import ObjectStore, durable_together, open_store, sha256_hex
from flows import heap
from ridl import __version__, settings
from ridl.crossterms import MAX_TERMS_PER_RUN, KnownTerms
from ridl.dicomfile import to_bytes
from ridl.errors import ObjectRejected, StudyUndeliverable
from ridl.optout import load_optout
from ridl.pseudonyms import Pseudonymizer, SubjectKey
from ridl.reasons import Reason
from ridl.releases import write_study_terms
from ridl.secrets import load_secret
from ridl.sources.base import StudySource, open_source
from ridl.sources.hn import subject_from_headers
from ridl.sources.protect import ArchiveLimits
from ridl.studies import StudyRef
from ridl.written_forms import clinical_words

# What the run itself reads from every header (IOCM, scope, object keys).
HEADER_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "Modality")
# Each object is read once (curation.integrity.ObjectRead): its bytes and whole dataset are kept
# from the header stage to its de-identification, up to this many bytes per study; the objects
# of a bigger study past it keep their header only and are read again when their turn comes.
STUDY_READ_BYTES = 256 * 1024 * 1024
# De-identified objects are verified a window at a time, then stored (_verify_and_store): up
# to this many objects, or bytes, are held between their de-identification and their store.
VERIFY_WINDOW = 16
VERIFY_WINDOW_BYTES = 64 * 1024 * 1024

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
    # The project's cross-study terms known when the run started ((kind, value) pairs of staff
    # and place names, ridl.crossterms.load_terms; PHI, at most MAX_TERMS_PER_RUN): carried so
    # a worker on a cluster needs no shared disk. Each worker grows its own copy as it goes.
    cross_terms: tuple[tuple[str, str], ...] = ()
    # Studies an earlier run recorded as failed (the archive could not deliver them) are
    # retrieved again only when this is set (`ridl run --retry-failed`); otherwise their
    # failed-study parts stand and are counted again.
    retry_failed: bool = False

    @property
    def prefix(self) -> str:
        """``<project>/<release>``: the release's prefix in the object store."""
        return f"{self.project}/{self.release}"


@dataclass
class StudyOutcome:
    """What one study's work did: counts by reason, IOCM retractions, review IDs, and its
    stream verification record (counts only, no PHI)."""

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
    verification: VerificationRecord | None = None
    # Set when the archive could not deliver the study (its part is a failed-study part).
    failed: FailedRetrieval | None = None


class BatchTally(TypedDict):
    """What a batch task returns (:meth:`BatchCounts.as_dict`, then
    ``flows.runners.run_batch``), summed by ``flows.extract.Totals``: counts only, never image
    bytes or PHI.

    ``studies`` worked (``skipped`` of them were done by an earlier run), objects ``exported``
    and their ``bytes`` (in bytes), instances ``excluded`` and ``quarantined`` by reason code;
    ``instances`` met (exported, excluded or quarantined), ``fresh_instances`` of them in studies
    this batch did itself; ``failed`` counts studies the archive could not deliver, by reason
    code (``retrieval`` group of :class:`~ridl.reasons.Reason`). ``run_batch`` adds the
    batch's ``work_seconds`` (seconds of work), ``started_at`` and ``finished_at`` (POSIX
    times, seconds), the store keys of its ``parts``, and its worker's ``peak_rss_mib`` (MiB).
    """

    studies: int
    skipped: int
    exported: int
    bytes: int
    excluded: dict[str, int]
    quarantined: dict[str, int]
    instances: int
    fresh_instances: int
    failed: dict[str, int]
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
    # Studies the archive could not deliver, by reason code (recorded, not retried).
    failed: Counter[str] = field(default_factory=Counter)

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
        if outcome.failed is not None:
            self.failed[outcome.failed["reason"]] += 1

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
            failed=dict(self.failed),
        )


class Worker:
    """The per-process objects of a run: keys, compiled recipe, store and source."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.keys = Pseudonymizer(load_secret(ctx.project))
        recipe = load_recipe(ctx.recipe)
        self.recipe_digest = str(recipe.digest)
        self.engine = Engine(recipe, self.keys, retain=ctx.retain)
        self.known = KnownTerms(ctx.project, ctx.cross_terms)
        # Header elements met in earlier studies are not parsed again for the dictionary.
        self.memo = ElementMemo()
        clinical_words()  # read once a process (~0.3 s): R15 keeps clinical words out of names
        prepare_date_keys()  # once a process (~45 ms): every day's written forms, R5
        # {study key: store keys its earlier part listed}, for studies verified again
        self.redone: dict[str, set[str]] = {}
        self._cross: CrossStudyDictionary | None = None
        self.store: ObjectStore = open_store(ctx.store_url)
        self.source: StudySource = open_source(ctx.source_url, ctx.limits, ctx.hn_issuer)
        self.optout = load_optout(ctx.project, ctx.optout_tokens)
        curation = json.loads(ctx.curation) if ctx.curation else None
        self.curator = Curator.for_project(ctx.project, ctx.release, curation)

    @property
    def retriever(self) -> Any:
        """What retrieves this worker's studies ahead (``session()`` and ``fetch_study()``): a
        :class:`flows.retrieval.RetrievalProcess` for a source whose retrievals are CPU work in
        Python (``retrieves_in_process``: DIMSE), the process's one for that source setting
        (:func:`flows.retrieval.retrieval_process`); else the source itself,
        in the prefetch thread (DICOMweb's retrieval waits on the network, not the CPU)."""
        if not getattr(self.source, "retrieves_in_process", False):
            return self.source
        from flows.retrieval import retrieval_process

        return retrieval_process(self.ctx.source_url, self.ctx.limits, self.ctx.hn_issuer)

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

    def cross_dictionary(self) -> CrossStudyDictionary:
        """The cross-study terms this worker knows, compiled once and grown in place."""
        if self._cross is None:
            self._cross = CrossStudyDictionary(self.ctx.retain, self.known.pairs())
        return self._cross

    def learn(self, site: str, dictionary: IdentifierDictionary) -> None:
        """Grow the cross-study terms with what one study's headers named (staff, places).

        The worker's copy (:class:`ridl.crossterms.KnownTerms`) stays within
        ``MAX_TERMS_PER_RUN``; the searched terms may hold a quarter more (terms the copy has
        evicted since the last rebuild: searched a while longer, never fewer), then are rebuilt
        from the copy, so a worker at the cap rebuilds them once per few thousand new names,
        not in every study.
        """
        fresh = [pair for pair in sorted(dictionary.shared) if pair not in self.known]
        self.known.learn(site, sorted(dictionary.shared))
        cross = self.cross_dictionary()
        cross.add_equipment(dictionary.equipment)  # R6 holds across studies too
        if fresh and cross.pairs + len(fresh) > MAX_TERMS_PER_RUN + MAX_TERMS_PER_RUN // 4:
            self._cross = None  # rebuilt from the bounded copy on next use
            return
        for kind, value in fresh:
            cross.add_shared(kind, value)


@lru_cache(maxsize=4)
def worker_for(ctx: RunContext) -> Worker:
    """The process's :class:`Worker` for a run (built once per run context, then reused).

    What the process holds once the worker is built, its cross-study terms included, is frozen
    out of the garbage collector's full collections (:func:`flows.heap.settle`).
    """
    worker = Worker(ctx)
    worker.cross_dictionary()
    heap.settle()
    return worker


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
    if not hasattr(worker.source, "session"):  # a folder: nothing to retrieve ahead
        for study in studies:
            counts.add(process_study(worker, study, retrieval_slot))
        return counts
    # A network DIR: study k+1 is retrieved while study k is worked on.
    done = {study.study_uid: _already_done(worker, study) for study in studies}
    wanted = [study for study in studies if done[study.study_uid] is None]
    with Prefetcher(worker, wanted, retrieval_slot) as prefetched:
        for study in studies:
            skipped = done[study.study_uid]
            if skipped is not None:
                counts.add(skipped)
            else:
                counts.add(process_study(worker, study, retrieval_slot, prefetched))
    return counts


# Studies retrieved ahead of the one being worked on, per worker: up to PREFETCH_DEPTH of them,
# and no more once those waiting hold PREFETCH_BYTES (one study may always wait, whatever its
# size). Retrieval goes on through a run of small studies while a big one is worked on, instead
# of stopping one study ahead; each study is on local disk until its work ends, so a worker holds
# about PREFETCH_BYTES plus the study it works on and the one it is retrieving.
PREFETCH_DEPTH = 8
PREFETCH_BYTES = 512 * 1024 * 1024
# How long the prefetch thread keeps its association (and retrieval slot) open, idle, waiting
# for the worker to take the study it retrieved ahead; past this it lets both go (seconds).
PREFETCH_HOLD_S = 5.0


@dataclass
class Fetched:
    """One study's retrieval, done ahead: its files (or why not), in ``workdir``; the
    ``started``/``finished`` monotonic times of the retrieval (seconds); ``nbytes``, the size of
    its files on disk."""

    study: StudyRef
    workdir: Path
    files: list[Path] | None
    error: BaseException | None
    started: float
    finished: float
    nbytes: int = 0


class Prefetcher:
    """Retrieves a batch's studies in a background thread, ahead of the worker, over one reused
    association while it keeps up: at most ``depth`` studies (:data:`PREFETCH_DEPTH`) wait to
    be worked on, and no more once they hold ``budget`` bytes (:data:`PREFETCH_BYTES`; one
    study may always wait).

    The thread takes the run's retrieval slot and then the source's session (one slot of the
    archive's association cap, one association) and keeps both while the worker wants more;
    when the waiting studies have filled ``depth`` or ``budget`` for :data:`PREFETCH_HOLD_S`
    seconds, it lets both go (closing the association) and waits. A retrieval error is handed to the
    worker at that study's turn, as if it had been raised there; after one that is not
    :class:`~ridl.errors.StudyUndeliverable` nothing more
    is retrieved (the batch fails there). ``history`` keeps every :class:`Fetched` (timing
    only), for tests and benchmarks. The thread drives ``retriever`` (default: the worker's,
    :attr:`Worker.retriever`): for a DIMSE source the retrieval itself runs in the worker's
    retrieval process (:mod:`flows.retrieval`) and this thread only waits for it.
    """

    def __init__(
        self,
        worker: Worker,
        studies: list[StudyRef],
        retrieval_slot: RetrievalSlot,
        depth: int = PREFETCH_DEPTH,
        retriever: Any = None,
        budget: int = PREFETCH_BYTES,
    ) -> None:
        self.worker = worker
        # session() and fetch_study(): the worker's (a retrieval process for DIMSE) unless given.
        self.retriever = retriever if retriever is not None else worker.retriever
        self.studies = list(studies)
        self.retrieval_slot = retrieval_slot
        self.depth, self.budget = max(1, depth), budget
        self._room = threading.Condition()
        self._ahead = 0  # studies retrieved and not yet taken by the worker, and their bytes
        self._ahead_bytes = 0
        self._ready: queue.Queue[Fetched | None] = queue.Queue()
        self._stop = threading.Event()
        self.history: list[Fetched] = []
        self._thread = threading.Thread(target=self._run, name="ridl-prefetch", daemon=True)

    def __enter__(self) -> Prefetcher:
        if self.studies:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._room:
            self._room.notify_all()  # wake a thread waiting for room
        if self._thread.is_alive():
            self._thread.join()
        while True:  # what was fetched and never worked on (the batch failed)
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._discard(item)

    def _discard(self, item: Fetched) -> None:
        self.worker.source.release_study(item.study, item.workdir)
        shutil.rmtree(item.workdir, ignore_errors=True)

    def _fetch(self, study: StudyRef) -> Fetched:
        workdir = settings.private_dir(study_workdir(self.worker, study))
        started = time.monotonic()
        try:
            files: list[Path] | None = self.retriever.fetch_study(study, workdir)
            error: BaseException | None = None
        except BaseException as exc:  # handed to the worker, raised at this study's turn
            files, error = None, exc
        finished = time.monotonic()
        nbytes = 0
        for path in files or ():
            with contextlib.suppress(OSError):
                nbytes += path.stat().st_size
        item = Fetched(study, workdir, files, error, started, finished, nbytes)
        self.history.append(item)
        return item

    def _has_room(self) -> bool:
        return self._stop.is_set() or (
            self._ahead == 0 or (self._ahead < self.depth and self._ahead_bytes < self.budget)
        )

    def _wait_for_room(self, timeout: float | None = None) -> bool:
        """Wait until another study may be retrieved ahead (or the batch is over); False when
        ``timeout`` seconds passed first."""
        with self._room:
            return self._room.wait_for(self._has_room, timeout)

    def _hand_over(self, item: Fetched) -> None:
        with self._room:
            self._ahead += 1
            self._ahead_bytes += item.nbytes
        self._ready.put(item)

    def _run(self) -> None:
        pending = list(self.studies)
        session = self.retriever.session
        try:
            while pending and not self._stop.is_set():
                self._wait_for_room()
                if self._stop.is_set():
                    return
                with self.retrieval_slot(), session():
                    while True:
                        item = self._fetch(pending.pop(0))
                        self._hand_over(item)
                        fatal = item.error is not None and not isinstance(
                            item.error, StudyUndeliverable
                        )
                        if fatal:
                            pending.clear()
                        if not pending or self._stop.is_set():
                            break
                        # Room for one more soon: keep the association; else let it go, wait.
                        if not self._wait_for_room(timeout=PREFETCH_HOLD_S):
                            break
                        if self._stop.is_set():  # woken by __exit__: the batch is over
                            return
        except BaseException as exc:  # the slot or the session itself failed
            if pending:
                study = pending.pop(0)
                now = time.monotonic()
                self._ready.put(
                    Fetched(study, study_workdir(self.worker, study), None, exc, now, now)
                )
        finally:
            self._ready.put(None)

    def take(self, study: StudyRef) -> Fetched:
        """The retrieval of ``study`` (the next one in batch order), waiting for it.

        Raises:
            RuntimeError: the retrievals ran out or came in another order (a bug).
        """
        item = self._ready.get()
        if item is None or item.study.study_uid != study.study_uid:
            raise RuntimeError("prefetched studies out of order")
        with self._room:
            self._ahead -= 1
            self._ahead_bytes -= item.nbytes
            self._room.notify_all()
        return item


def study_workdir(worker: Worker, study: StudyRef) -> Path:
    """The study's working folder: ``work_dir/<project>/<release>/<de-identified study UID>``
    (retrieved originals: PHI; callers create it owner-only with ``settings.private_dir``)."""
    ctx = worker.ctx
    return settings.work_dir() / ctx.project / ctx.release / worker.study_key(study)


def _already_done(worker: Worker, study: StudyRef) -> StudyOutcome | None:
    """The outcome of a study an earlier run finished (counted from its part), or None when it
    is to be worked now (no part; a failed part and ``--retry-failed``; a held object decided;
    a part verified under other dictionary rules or another recipe, which the release gate
    would not count: its stored objects are noted in ``worker.redone``, and those the new part
    no longer lists are deleted once it is written)."""
    ctx = worker.ctx
    done = read_part(worker.store, worker.part_key(study))
    retry = done is not None and "failed" in done and ctx.retry_failed
    if done is None or retry:
        return None
    record: dict[str, Any] = dict(done.get("verification") or {})
    if record.get("rules") != RULES_VERSION or record.get("recipe") != worker.recipe_digest:
        worker.redone[worker.study_key(study)] = {row["key"] for row in done["objects"]}
        return None
    # A study that waits on review is redone once a reviewer has decided about its objects (their
    # review IDs are kept on premises: a published part never names an original file).
    if worker.curator.decisions.decided_any(
        read_held(ctx.project, ctx.release, worker.study_key(study))
    ):
        return None
    outcome = StudyOutcome(study_key=worker.study_key(study))
    outcome.failed = done.get("failed")
    outcome.skipped = True
    outcome.exported = len(done["objects"])
    outcome.bytes = part_bytes(done)
    outcome.excluded.update(done["excluded"])
    outcome.quarantined.update(done["quarantined"])
    return outcome


def process_study(
    worker: Worker,
    study: StudyRef,
    retrieval_slot: RetrievalSlot = contextlib.nullcontext,
    prefetched: Prefetcher | None = None,
) -> StudyOutcome:
    """Retrieve, curate, de-identify and store one study, then write its manifest part last.

    A study whose part is already in the store is skipped (counted from its part), unless a
    reviewer has since decided about one of its held objects, or the part records a failed
    retrieval and the run retries those (``ctx.retry_failed``).

    A study the archive cannot deliver (:class:`~ridl.errors.StudyUndeliverable`: not found, or
    a failure that is not "busy") gets a failed-study part with its reason, no objects and an
    empty verification record, and the batch goes on; a busy or unreachable archive still
    fails the batch (a transient error, retried by the flow).

    With ``prefetched`` (a network DIR), the caller has already found the study to be worked
    (:func:`process_batch`) and started its retrieval ahead in that :class:`Prefetcher`; its
    result, files or error, is taken from it here, in batch order.
    """
    part_key = worker.part_key(study)
    skipped = None if prefetched is not None else _already_done(worker, study)
    if skipped is not None:
        return skipped
    outcome = StudyOutcome(study_key=worker.study_key(study))
    workdir = settings.private_dir(study_workdir(worker, study))  # originals: PHI, owner-only
    try:
        if prefetched is not None:
            item = prefetched.take(study)
            if item.error is not None:
                raise item.error
            files = item.files or []
        else:
            with retrieval_slot():
                files = worker.source.fetch_study(study, workdir)
        # The study's objects are made durable together, before its part is written.
        with durable_together(worker.store):
            rows = _process_files(worker, study, files, outcome)
    except StudyUndeliverable as exc:
        # The archive's answer about this study, not a busy archive: record it, go on.
        outcome.failed = FailedRetrieval(reason=str(exc.reason), detail=exc.detail)
        rows = []
    finally:
        worker.source.release_study(study, workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    part = study_part(
        outcome.study_key,
        # A keyed token of the site (Issuer of Patient ID): lets a release count subjects by
        # number of sites (the health-number linkage) without naming any site.
        worker.keys.token("site", study.issuer),
        rows,
        excluded=outcome.excluded,
        quarantined=outcome.quarantined,
        iocm_rejected=outcome.iocm_rejected,
        verification=outcome.verification or _record(worker, IdentifierDictionary(), 0),
        failed=outcome.failed,
    )
    write_held(worker.ctx.project, worker.ctx.release, outcome.study_key, outcome.review)
    write_part(worker.store, part_key, part)
    # A study verified again (new rules or recipe): what the earlier part listed and this one
    # does not (held now) leaves the store; a crash before this leaves them unlisted, and the
    # release gate removes unlisted objects.
    for key in sorted(worker.redone.pop(outcome.study_key, set()) - {r["key"] for r in rows}):
        worker.store.delete(key)
    return outcome


def _process_files(
    worker: Worker, study: StudyRef, files: list[Path], outcome: StudyOutcome
) -> list[ObjectRow]:
    ctx = worker.ctx
    headers: dict[Path, Dataset] = {}
    # One read per object: header, IOCM, checks, triage, review ID and fast path share it.
    reads: dict[Path, ObjectRead] = {}
    held = 0
    for path in files:
        try:
            read = ObjectRead.from_path(path)
            header = read.header
            for keyword in HEADER_KEYWORDS:  # values are decoded lazily: fail here, not later
                header.get(keyword)
            headers[path] = header
            if read.data is not None and held + len(read.data) > STUDY_READ_BYTES:
                read.release()  # a big study: read again when its turn comes
            held += len(read.data or b"")
            reads[path] = read
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
        subject = replace(subject, identifying=study_tokens(headers.values()))
    # The study's identifiers, from every header the worker read (no second retrieval), kept on
    # premises for the release gate, then the project's cross-study terms beside them.
    dictionary = IdentifierDictionary(retained=ctx.retain, memo=worker.memo)
    for header in headers.values():
        dictionary.add_header(header, subject.research_id, subject.shift_days)
    keep_study_terms(ctx, outcome.study_key, study.issuer, subject.research_id, dictionary)
    cross = worker.cross_dictionary()
    # R6 across studies: a place learned elsewhere that names this study's own vendor or model
    # ("TOSHIBA" as an institution, "TOSHIBA_MEC" as this study's Manufacturer) is not a hit.
    cross.add_equipment(dictionary.equipment)
    verifier = Verifier(dictionary, ocr=None, also=cross.dictionaries)
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
    window: list[_Written] = []
    window_bytes = 0
    tally = _Tally()
    for path, header in eligible.items():
        modality = str(getattr(header, "Modality", "")).upper()
        read = reads.pop(path)
        curated = worker.curator.curate(path, header, view, outcome.study_key, read)
        if curated.review_id and curated.action == "quarantine":
            outcome.review.add(curated.review_id)
        if curated.action == "exclude":
            outcome.excluded[curated.reason] += 1
            continue
        if curated.action == "quarantine" or curated.dataset is None:
            _quarantine(worker, study, path, outcome, curated.reason, curated.detail)
            continue
        try:
            ds, data, pixel_start = _deidentify(worker, read, curated, subject)
        except ObjectRejected as rej:
            _quarantine(worker, study, path, outcome, rej.reason, rej.detail)
            continue
        except Exception as exc:  # never let one object stop the run
            _quarantine(worker, study, path, outcome, Reason.WRITE_FAILED, type(exc).__name__)
            continue
        del read
        if not all(getattr(ds, k, None) for k in ("StudyInstanceUID", "SeriesInstanceUID")):
            _quarantine(worker, study, path, outcome, Reason.MISSING_UID)  # found by fuzzing
            continue
        key = f"{ctx.prefix}/{object_path(subject.research_id, ds)}"
        row = ObjectRow(
            key=key,
            size=len(data),
            sha256="",  # of the bytes stored, once verified
            research_id=subject.research_id,
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            modality=modality,
            study_date=str(getattr(ds, "StudyDate", "")),
            study_description=str(getattr(ds, "StudyDescription", "")),
        )
        pixel_text = curated.pixel_text if curated.ocr_ran else None
        window.append(_Written(path, row, data, pixel_start, pixel_text))
        window_bytes += len(data)
        if len(window) >= VERIFY_WINDOW or window_bytes >= VERIFY_WINDOW_BYTES:
            _verify_and_store(worker, study, verifier, window, outcome, rows, tally)
            window, window_bytes = [], 0
    _verify_and_store(worker, study, verifier, window, outcome, rows, tally)
    rows.sort(key=lambda r: r["key"])
    outcome.verification = _record(
        worker,
        dictionary,
        len(cross),
        objects=tally.objects,
        nbytes=tally.bytes,
        hits=tally.hits,
        ocr_objects=tally.ocr_objects,
        cross=cross,
    )
    worker.learn(study.issuer, dictionary)
    return rows


@dataclass
class _Written:
    """A de-identified object not yet verified: its source path (for quarantine), manifest row
    (its ``sha256`` not yet filled), bytes, Pixel Data offset (None: not known) and the text
    curation read in its pixels (None when OCR did not run)."""

    path: Path
    row: ObjectRow
    data: bytes
    pixel_start: int | None
    pixel_text: tuple[str, ...] | None


@dataclass
class _Tally:
    """What a study's verification searched: objects, bytes, hits, objects read by OCR."""

    objects: int = 0
    bytes: int = 0
    hits: int = 0
    ocr_objects: int = 0


def _verify_and_store(
    worker: Worker,
    study: StudyRef,
    verifier: Verifier,
    window: list[_Written],
    outcome: StudyOutcome,
    rows: list[ObjectRow],
    tally: _Tally,
) -> None:
    """Verify a window of a study's de-identified objects one after the other, then store the
    clean ones and quarantine the others (issue 13: nothing reaches the store unverified).

    Searched together, the objects share the search's working set (the dictionaries' automata)
    in the processor's caches; searched between two objects' pixel copies, each paid for
    fetching it again (``benchmarks/end_stage.py``).

    Raises:
        StoreError: the store refused an object (the batch fails and is retried).
    """
    checks = [
        verifier.check_bytes(
            item.row["key"], item.data, text_end=item.pixel_start, pixel_text=item.pixel_text
        )
        for item in window
    ]
    for item, checked in zip(window, checks, strict=True):
        tally.objects += 1
        tally.bytes += len(item.data)
        tally.ocr_objects += int(item.pixel_text is not None)
        if checked.hits:
            tally.hits += 1
            reason = (
                Reason.UNVERIFIABLE_OBJECT
                if any(h.kind == UNVERIFIABLE for h in checked.hits)
                else Reason.VERIFICATION_HIT
            )
            where = "; ".join(sorted({h.where for h in checked.hits}))
            _quarantine(worker, study, item.path, outcome, reason, where[:500])
            continue
        data, row = item.data, item.row
        worker.store.put_bytes(row["key"], data)
        row["sha256"] = sha256_hex(data)
        rows.append(row)
        outcome.exported += 1
        outcome.bytes += len(data)


def keep_study_terms(
    ctx: RunContext, study_key: str, site: str, research_id: str, dictionary: IdentifierDictionary
) -> None:
    """Keep the identifiers a study is verified against on premises, for the release gate
    (``ridl.releases.write_study_terms``: the dictionary's record with the study's site and
    research ID; PHI, never exported).

    Raises:
        ReleaseError: the run's release name is not valid.
    """
    record = dictionary.to_record()
    write_study_terms(
        ctx.project, ctx.release, study_key, {"site": site, "research_id": research_id, **record}
    )


def study_tokens(headers: Iterable[Dataset]) -> frozenset[str]:
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


def _record(
    worker: Worker,
    dictionary: IdentifierDictionary,
    cross_terms: int,
    *,
    objects: int = 0,
    nbytes: int = 0,
    hits: int = 0,
    ocr_objects: int = 0,
    cross: CrossStudyDictionary | None = None,
) -> VerificationRecord:
    """The study's verification record: what was searched, with which terms and rules."""
    terms = Counter(dictionary.kinds())
    if cross is not None:
        terms.update(cross.kinds())
    return VerificationRecord(
        passed=True,  # objects with a hit were quarantined: every stored object is clean
        objects=objects,
        bytes=nbytes,
        hits=hits,
        terms=dict(sorted(terms.items())),
        cross_study_terms=cross_terms,
        ocr_objects=ocr_objects,
        engine=__version__,
        rules=RULES_VERSION,
        recipe=worker.recipe_digest,
    )


def _deidentify(
    worker: Worker, read: ObjectRead, curated: Curated, subject: SubjectContext
) -> tuple[Dataset, bytes, int | None]:
    """The de-identified object: a dataset naming it, its bytes, and, when the fast path wrote
    them or when Pixel Data is the data set's last element, the byte offset where that element
    begins (else None).

    An object curation did not change goes by the fast path when the run allows it, from the
    bytes already read (the file itself when a big study's read was released); the fast
    path answers None for what it does not take, and then the dataset curation read is
    de-identified whole, exactly as with the fast path switched off.
    """
    if worker.ctx.fast_path and not curated.pixels_changed:
        done = (
            deidentify_bytes(worker.engine, lambda _header: subject, read.data)
            if read.data is not None
            else deidentify_to_bytes(worker.engine, lambda _header: subject, read.path)
        )
        if done is not None:
            return done[0], done[2], done[3]
    ds = curated.dataset
    assert ds is not None  # the caller quarantines an export without a dataset
    worker.engine.apply(ds, subject)
    data = to_bytes(ds)
    return ds, data, written_pixel_start(ds, data)


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
