"""The release gate: no release is published unless every study was verified and a sample holds.

Verification happens in the stream (``flows.work``): every object is searched for its study's
identifiers and the project's cross-study terms before it is stored, and each study's manifest
part records how. The gate at the end of a run therefore does work that does not grow with the
release (:func:`audit_release`):

1. every study part carries a passing verification record made with the release's recipe
   (its SHA-256) and the current dictionary rules (``export.identifiers.RULES_VERSION``);
2. every ``.dcm`` object in the store under the release is listed by a part (a listing, no
   download): an object written around the stream is found here;
3. a random sample of the listed objects (:func:`sample_size`: 1,000 or 0.1 %, whichever is
   larger, at most 20,000 by default) is read back, its SHA-256 compared with its part's, and
   searched again against identifiers re-derived for the sampled studies only, from what is on
   premises (the terms each study was verified against, ``ridl.releases.read_studies_terms``,
   else the frozen selection's patient ID and health number) plus the cross-study terms
   (``ridl.crossterms``): no retrieval from the DIR, no second OCR.

:func:`gate_release` publishes only when all three hold; otherwise it removes from the store
every object it found unlisted, changed or holding an identifier, withdraws the manifest and
summary, and raises. :func:`verify_release` is the auditor's full mode (``ridl verify --full``):
it reads every source header again through the source and searches every stored object.
The dictionary's rules are in :mod:`export.identifiers`; the byte scan in
:mod:`export.phi_scan`; the report types in :mod:`export.verification`. The OCR function and the
at-risk rule are passed in; by default they come from :mod:`curation.ocr` when it provides them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import logging
import math
import multiprocessing
import os
import pickle
import random
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from export import partitions as pt
from export.identifiers import RULES_VERSION, IdentifierDictionary
from export.manifest import (
    ManifestPart,
    is_source_part,
    parse_part,
    part_key,
    read_part,
    release_files,
)
from export.phi_scan import FILE_CONTENTS, Hit, Verifier
from export.release import DESCRIPTION, NOTES, PUBLIC_KEY, SIGNATURE
from export.store import ObjectStore, open_store, read_in_order
from export.verification import VerificationFailed, VerificationReport
from ridl import audit, settings
from ridl.catalog import study_refs
from ridl.crossterms import load_terms
from ridl.dicomfile import read_file
from ridl.errors import ConfigError, ReleaseError, StudyUndeliverable
from ridl.projects import load_project
from ridl.pseudonyms import RESEARCH_ID_PREFIX, Pseudonymizer, SubjectKey
from ridl.reasons import Reason
from ridl.releases import (
    MARKER,
    REPORT_NAME,
    load_frozen,
    mark_published,
    read_studies_terms,
    report_path,
    terms_folder,
)
from ridl.secrets import load_secret, secret_fingerprint
from ridl.sources.base import open_source

SAMPLE_MIN = 1_000
SAMPLE_FRACTION = 0.001
SAMPLE_CAP = 20_000
VERIFY_CHUNK = 32  # objects a full-mode worker searches per task

log = logging.getLogger(__name__)


def _load_at_risk() -> Callable[[Dataset], bool] | None:
    """``curation.ocr.at_risk`` when the OCR module defines which objects to read."""
    try:
        module = importlib.import_module("curation.ocr")
    except ImportError:
        return None
    func = getattr(module, "at_risk", None)
    return func if callable(func) else None


def load_ocr() -> Callable[[Dataset], Any] | None:
    """The OCR function of ``curation.ocr`` if it is there (``ocr_text``, ``read_text``,
    ``find_text`` or ``detect_text``: Dataset -> text), else None with a logged note."""
    try:
        module = importlib.import_module("curation.ocr")
    except ImportError:
        log.info("no OCR available (curation.ocr not installed): pixel text not searched")
        return None
    for name in ("ocr_text", "read_text", "find_text", "detect_text"):
        func = getattr(module, name, None)
        if callable(func):
            return func
    log.info("curation.ocr has no OCR function this gate knows: pixel text not searched")
    return None


def build_dictionary(
    project: str, release: str
) -> tuple[IdentifierDictionary, int, int, dict[str, str]]:
    """Read the source headers of the release's frozen selection into a dictionary.

    Returns (dictionary, studies read, headers read, {study key: reason code} of the studies
    the DIR could not deliver now: ``study-not-found``, ``retrieval-failed``). Headers are read
    again from the source, not taken from what the run kept, so the check is independent of
    the run; a study the DIR no longer delivers does not stop it.
    """
    frozen = load_frozen(project, release)
    if frozen is None:
        raise ReleaseError(
            f"release '{release}' of project '{project}' has no frozen selection; run it first"
        )
    record, selection = frozen
    proj = load_project(project)
    keys = Pseudonymizer(load_secret(project))
    source = open_source(record.source, hn_issuer=proj.hn_issuer)
    dictionary = IdentifierDictionary(retained=proj.scope.retain)
    studies = headers = 0
    undelivered: dict[str, str] = {}
    for study in study_refs(selection):
        subject = SubjectKey(study.health_number, study.issuer, study.patient_id)
        research_id = keys.research_id(subject)
        shift_days = keys.date_shift_days(subject)
        workdir = settings.work_dir() / project / release / f"verify-{studies}"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            try:
                files = source.fetch_study(study, workdir)
            except StudyUndeliverable as exc:
                undelivered[keys.uid(study.study_uid)] = str(exc.reason)
                files = []
            for path in files:
                try:
                    # Read as the run read it: with or without preamble and File Meta.
                    header = read_file(path, stop_before_pixels=True)
                except Exception:
                    continue  # unreadable objects were quarantined, not exported
                dictionary.add_header(header, research_id, shift_days)
                headers += 1
        finally:
            source.release_study(study, workdir)
            shutil.rmtree(workdir, ignore_errors=True)
        studies += 1
    return dictionary, studies, headers, undelivered


def release_objects(store: ObjectStore, prefix: str) -> Iterator[str]:
    """Every object the release put in the store (objects, parts, manifests, summary)."""
    for info in store.list(prefix.rstrip("/") + "/"):
        yield info.key


# Files of a release that are not ridl's de-identified data nor derived from it: the research
# office's metadata written at or after publishing (the PI and title in the dataset description,
# the assignees' names in the labels), the signing key, the notes, the gate's own reports. They
# never hold a patient's value, and a name in them (the PI's) may equal a patient's by chance,
# which must not block a published release.
OFFICE_FILES = frozenset(
    {
        DESCRIPTION,
        NOTES,
        PUBLIC_KEY,
        SIGNATURE,
        "labels.parquet",
        REPORT_NAME,
        MARKER,
    }
)


def is_object_key(prefix: str, key: str) -> bool:
    """Whether ``key`` of the release at ``prefix`` is in the place of a de-identified object,
    which a manifest part must list: under a research subject's folder (``<prefix>/RS-.../``),
    or a DICOM file name (``.dcm`` in any case) anywhere in the release."""
    name = key[len(prefix) + 1 :] if key.startswith(prefix + "/") else key
    return name.startswith(RESEARCH_ID_PREFIX) or name.lower().endswith(".dcm")


def is_gated(prefix: str, key: str) -> bool:
    """Whether the gate searches ``key`` of the release at ``prefix``: every de-identified
    object and every file ridl derives from them (parts, manifests, summary, report, sums),
    not the office metadata of :data:`OFFICE_FILES` at the release's top level."""
    name = key[len(prefix) + 1 :] if key.startswith(prefix + "/") else key
    return name not in OFFICE_FILES


# Below this many objects, one process searches faster than several start (measured in
# benchmarks/verify.py: spawning a worker costs seconds, searching an object milliseconds).
PARALLEL_MIN_OBJECTS = 5_000


def verify_workers(workers: int | None, objects: int | None = None) -> int:
    """Worker processes of ``ridl verify --full``: ``workers`` when given, else every core (as
    ``ridl run --workers``) for a release of at least :data:`PARALLEL_MIN_OBJECTS` objects
    (``objects``, from its summary; unknown counts as large) and one process below that.

    Raises:
        ConfigError: ``workers`` is less than 1.
    """
    if workers is None:
        if objects is not None and objects < PARALLEL_MIN_OBJECTS:
            return 1
        return os.cpu_count() or 1
    if workers < 1:
        raise ConfigError(f"--workers must be 1 or more (got {workers})")
    return workers


# One full-mode search worker's state, set once per process by _init_search (the pool's
# initializer): the store it reads and the verifier over the release's dictionary.
_search: tuple[ObjectStore, Verifier] | None = None


def _init_search(
    store_url: str,
    dictionary: IdentifierDictionary,
    cross: IdentifierDictionary,
    ocr: Callable[[Dataset], Any] | None,
    at_risk: Callable[[Dataset], bool] | None,
) -> None:
    global _search
    verifier = Verifier(
        dictionary, owners_of=_research_id_of, ocr=ocr, at_risk=at_risk, also=[cross]
    )
    _search = (open_store(store_url), verifier)


_Searched = tuple[list[Hit], int, int, int, list[tuple[str, str]]]


def _search_chunk(keys: list[str]) -> _Searched:
    """Search ``keys`` in this worker process (state from :func:`_init_search`)."""
    assert _search is not None, "_init_search runs first"
    return _search_keys(*_search, keys)


def _search_keys(store: ObjectStore, verifier: Verifier, keys: list[str]) -> _Searched:
    """Search ``keys`` in order: (hits, objects, bytes, objects whose pixels OCR read,
    [(key, SHA-256 of its bytes, hex)])."""
    hits: list[Hit] = []
    digests: list[tuple[str, str]] = []
    nbytes = ocr_objects = 0
    for key in keys:
        data = store.get_bytes(key)
        result = verifier.check_bytes(key, data)
        hits.extend(result.hits)
        ocr_objects += int(result.ocr_checked)
        nbytes += len(data)
        digests.append((key, hashlib.sha256(data).hexdigest()))
    return hits, len(keys), nbytes, ocr_objects, digests


def _chunks(keys: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _picklable(value: object, what: str) -> None:
    try:
        pickle.dumps(value)
    except (pickle.PicklingError, AttributeError, TypeError):
        raise ConfigError(
            f"the {what} function cannot be sent to worker processes; "
            "give a module-level function or use one worker"
        ) from None


def verify_release(
    project: str,
    release: str,
    store_url: str | None = None,
    *,
    ocr: Callable[[Dataset], Any] | None | bool = True,
    at_risk: Callable[[Dataset], bool] | None = None,
    record_audit: bool = True,
    workers: int = 1,
) -> VerificationReport:
    """The auditor's full mode: every object of a release against its source identifiers.

    Reads every source header of the frozen selection again through the source (a full
    retrieval from the DIR, once, in this process) into one dictionary, then searches every
    object under the release in the store. It also runs the sample mode's other checks over
    everything: each part's verification record, and each stored ``.dcm`` object against the
    parts' rows (in no part, listed but missing, bytes whose SHA-256 differs from the row's),
    compared one bucket at a time (:func:`_compare_stored`).

    With ``workers`` > 1 the search runs in that many processes (spawned; each gets the
    dictionary once and reads its objects from the store itself), on chunks of
    :data:`VERIFY_CHUNK` consecutive keys of the listing, at most ``2 * workers`` chunks in
    flight, so memory does not grow with the release. Results are
    merged in listing order and the hits sorted by key (stable), so the report is the same
    whatever ``workers`` (its timings and ``checked_at`` aside). The run's own gate is
    :func:`audit_release`, which needs neither the DIR nor a full download.

    ``ocr=True`` loads OCR from ``curation.ocr`` when it is there; pass a function to use
    another (module-level when ``workers`` > 1), or ``False`` to skip. The report is written on
    premises next to the frozen selection
    (``RIDL_HOME/releases/<project>/<release>/verification.json``) and the result is audited.
    The caller decides what a failure means (the run's gate is :func:`gate_release`).
    ``at_risk`` decides which objects' pixels OCR reads (default: ``curation.ocr.at_risk`` when
    it exists, else :func:`export.phi_scan.default_at_risk`).

    Raises:
        ReleaseError: the release was never frozen (run it first).
        ConfigError: the project's secret or the store setting is wrong, ``workers`` is less
            than 1, or an OCR or at-risk function cannot be sent to worker processes.
    """
    workers = verify_workers(workers)
    store = open_store(store_url)
    t0 = time.perf_counter()
    dictionary, studies, headers, undelivered = build_dictionary(project, release)
    t1 = time.perf_counter()
    ocr_func: Callable[[Dataset], Any] | None
    if ocr is True:
        ocr_func = load_ocr()
    elif ocr is False or ocr is None:
        ocr_func = None
    else:
        ocr_func = ocr
    risk = at_risk or _load_at_risk()
    prefix = f"{project}/{release}"
    keys = (k for k in release_objects(store, prefix) if is_gated(prefix, k))
    hits: list[Hit] = []
    objects = nbytes = ocr_objects = 0
    # The checks of the sample mode, over everything: each part's verification record, and
    # every stored object against the parts' rows (listed, in the store, same bytes).
    if workers > 1:
        _picklable(ocr_func, "OCR")
        _picklable(risk, "at-risk")
    # The project's cross-study terms (staff and places learned in its runs), as the stream
    # and the sample mode search them: the auditor's mode searches no less.
    cross = IdentifierDictionary()
    for kind, value in load_terms(project):
        cross.add_shared(kind, value)
    cross.add_equipment(dictionary.equipment)  # R6 across studies, as the stream applies it
    recipe = _recipe_digest(project, release)
    work = Path(tempfile.mkdtemp(prefix="ridl-verify-"))
    pool = None
    try:
        manifest, parts, record_hits = _read_parts(store, prefix, recipe, work / "manifest")
        hits.extend(record_hits)
        stored = pt.Spill(work / "stored")
        results: Iterator[_Searched]
        if workers == 1:
            verifier = Verifier(
                dictionary, owners_of=_research_id_of, ocr=ocr_func, at_risk=risk, also=[cross]
            )
            results = (_search_keys(store, verifier, c) for c in _chunks(keys, VERIFY_CHUNK))
        else:
            pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_search,
                initargs=(store.url, dictionary, cross, ocr_func, risk),
            )
            results = _in_order(pool, _chunks(keys, VERIFY_CHUNK), 2 * workers)
        for chunk_hits, n, size, read, digests in results:
            hits.extend(chunk_hits)
            objects += n
            nbytes += size
            ocr_objects += read
            for key, sha in digests:
                if not is_object_key(prefix, key):
                    continue  # parts, manifests, summary: the release's own files
                research_id = key[len(prefix) + 1 :].split("/", 1)[0]
                stored.add({"key": key, "sha256": sha, "research_id": research_id}, "")
        hits.extend(_compare_stored(manifest, stored))
        listed = stored.rows
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(work, ignore_errors=True)
    # A study the DIR no longer delivers, with objects in the release: those objects were
    # searched without its own identifiers, so the release cannot pass as fully verified.
    for study_key, reason in sorted(undelivered.items()):
        part = read_part(store, part_key(prefix, study_key))
        if part is not None and part["objects"]:
            where = "(the DIR could not deliver its source study: searched without its identifiers)"
            hits.append(Hit(part_key(prefix, study_key), where, reason))
    hits.sort(key=lambda h: h.key)  # stable: an object's hits keep the verifier's order
    t2 = time.perf_counter()
    report = VerificationReport(
        project=project,
        release=release,
        store=store.url,
        passed=not hits,
        objects_checked=objects,
        bytes_checked=nbytes,
        dictionary_terms=len(dictionary) + len(cross),
        dictionary_kinds=_summed_kinds(dictionary, cross),
        studies_read=studies,
        headers_read=headers,
        ocr="used" if ocr_func is not None else "not available (skipped)",
        ocr_objects=ocr_objects,
        hits=hits,
        seconds_dictionary=round(t1 - t0, 3),
        seconds_search=round(t2 - t1, 3),
        checked_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        mode="full",
        parts_checked=parts,
        objects_listed=listed,
    )
    _write_report(report, record_audit)
    return report


def _summed_kinds(*dictionaries: IdentifierDictionary) -> dict[str, int]:
    """{kind: number of terms} over ``dictionaries`` (the study's and the cross-study terms),
    sorted by kind, as a verification report gives them."""
    kinds: dict[str, int] = {}
    for dictionary in dictionaries:
        for kind, count in dictionary.kinds().items():
            kinds[kind] = kinds.get(kind, 0) + count
    return dict(sorted(kinds.items()))


def _in_order(
    pool: ProcessPoolExecutor, chunks: Iterator[list[str]], window: int
) -> Iterator[_Searched]:
    """The pool's results of ``chunks`` in submission order, at most ``window`` in flight."""
    pending: deque[Future[_Searched]] = deque()
    for chunk in chunks:
        pending.append(pool.submit(_search_chunk, chunk))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _write_report(report: VerificationReport, record_audit: bool) -> None:
    """Write the report on premises (``verification.json``) and audit its result."""
    path = report_path(report.project, report.release)
    settings.private_dir(path.parent)
    path.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    settings.private_file(path)
    if record_audit:
        audit.record(
            "verification.result",
            project=report.project,
            release=report.release,
            mode=report.mode,
            passed=report.passed,
            objects=report.objects_checked,
            hits=len(report.hits),
            objects_with_hits=len({h.key for h in report.hits}),
            dictionary_terms=report.dictionary_terms,
            ocr=report.ocr,
        )


def _research_id_of(ds: Dataset) -> str | None:
    value = str(getattr(ds, "PatientID", "") or "")
    return value or None


def sample_size(objects: int, sample: int | None = None) -> int:
    """How many of a release's ``objects`` the gate reads back.

    ``sample`` None: the larger of 1,000 and 0.1 % of the objects, at most 20,000
    (:data:`SAMPLE_MIN`, :data:`SAMPLE_FRACTION`, :data:`SAMPLE_CAP`); an int asks for that many
    (0: none). Never more than ``objects``.

    Raises:
        ConfigError: ``sample`` is negative.
    """
    if sample is None:
        wanted = min(max(SAMPLE_MIN, math.ceil(objects * SAMPLE_FRACTION)), SAMPLE_CAP)
    elif sample < 0:
        raise ConfigError("the audit sample must be 0 or more objects")
    else:
        wanted = sample
    return min(wanted, objects)


def _recipe_digest(project: str, release: str) -> str:
    """Hex SHA-256 of the compiled recipe the release was frozen with."""
    from deid_recipes import load_recipe

    frozen = load_frozen(project, release)
    if frozen is None:
        raise ReleaseError(
            f"release '{release}' of project '{project}' has no frozen selection; run it first"
        )
    return str(load_recipe(frozen[0].recipe).digest)


def _check_record(part: ManifestPart, recipe: str) -> str | None:
    """Why a study part's verification record does not count (None: it does)."""
    record = part.get("verification")
    if record is None:
        return "(no verification record)"
    if not record.get("passed"):
        return "(verification record not passed)"
    if record.get("rules") != RULES_VERSION:
        return "(verified under other dictionary rules)"
    if record.get("recipe") != recipe:
        return "(verified with another recipe)"
    if record.get("objects", 0) < len(part["objects"]):
        return "(fewer objects verified than stored)"
    return None


def _fallback_terms(project: str, release: str, missing: set[str]) -> dict[str, dict[str, Any]]:
    """For sampled studies without kept terms: patient ID and health number from the frozen
    selection (on premises), keyed by study key. No retrieval from the DIR."""
    frozen = load_frozen(project, release)
    if frozen is None or not missing:
        return {}
    keys = Pseudonymizer(load_secret(project))
    found: dict[str, dict[str, Any]] = {}
    for study in study_refs(frozen[1]):
        key = keys.uid(study.study_uid)
        if key not in missing:
            continue
        research_id = keys.research_id(
            SubjectKey(study.health_number, study.issuer, study.patient_id)
        )
        terms = [
            [value, ["identifier"], False, [], True]
            for value in (study.patient_id, study.health_number or "")
            if value and len(value) >= 4
        ]
        found[key] = {"research_id": research_id, "terms": terms}
    return found


@dataclass
class Listing:
    """What :func:`compare_listing` found: ``stored`` ``.dcm`` objects in the store, ``hits``
    (objects in no part, objects of a part missing from the store; sorted by key),
    ``missing`` the keys of the latter, ``sampled`` {key: (sha256, study key)} of the drawn
    manifest rows."""

    stored: int = 0
    hits: list[Hit] = field(default_factory=list)
    missing: set[str] = field(default_factory=set)
    sampled: dict[str, tuple[str, str]] = field(default_factory=dict)


def _read_parts(
    store: ObjectStore, prefix: str, recipe: str, folder: Path
) -> tuple[pt.Spill, int, list[Hit]]:
    """Read every manifest part of the release once: (their rows spilled under ``folder``,
    each with its part's study key as ``site``; the number of parts; a hit for each part whose
    verification record is missing or was made under other rules or another recipe)."""
    manifest = pt.Spill(folder)
    parts = 0
    hits: list[Hit] = []
    listing = (
        info
        for info in store.list(f"{prefix}/parts/")
        if info.key.endswith(".json") and not is_source_part(info.key)
    )
    for info, data in read_in_order(store, listing):
        part = parse_part(data)
        if part.get("study") is None:
            continue
        parts += 1
        problem = _check_record(part, recipe)
        if problem is not None:
            hits.append(Hit(info.key, problem, Reason.UNVERIFIED_STUDY))
        manifest.add_rows(part["objects"], str(part["study"]))
    return manifest, parts, hits


def _compare_stored(manifest: pt.Spill, stored: pt.Spill) -> list[Hit]:
    """The full mode's listing: every stored ``.dcm`` object (``stored``: key, SHA-256 of the
    bytes read) against the parts' rows (``manifest``), one bucket of each in memory at a
    time. Hits: an object in no part, an object whose bytes differ from its row's hash, a
    listed object not in the store."""
    hits: list[Hit] = []
    buckets = pt.bucket_count(max(manifest.rows, stored.rows))
    for bucket in range(buckets):
        rows = manifest.table(bucket, buckets)
        expected: dict[str, set[str]] = {}
        for key, sha in zip(
            rows.column("key").to_pylist(), rows.column("sha256").to_pylist(), strict=True
        ):
            expected.setdefault(key, set()).add(sha)
        found = stored.table(bucket, buckets)
        for key, sha in zip(
            found.column("key").to_pylist(), found.column("sha256").to_pylist(), strict=True
        ):
            shas = expected.pop(key, None)
            if shas is None:
                hits.append(Hit(key, "(not in any manifest part)", Reason.OBJECT_NOT_IN_MANIFEST))
            elif sha not in shas:
                where = "(bytes differ from the manifest part)"
                hits.append(Hit(key, where, Reason.OBJECT_CHANGED))
        for key in sorted(expected):
            hits.append(Hit(key, "(listed but not in the store)", Reason.OBJECT_CHANGED))
    return hits


def compare_listing(
    store: ObjectStore, prefix: str, manifest: pt.Spill, folder: Path, wanted: set[int]
) -> Listing:
    """Compare the store's ``.dcm`` objects under ``prefix`` with the manifest parts' rows,
    holding neither whole: a sorted merge, bucket by bucket.

    ``manifest`` holds the parts' rows spilled by research ID (each row's ``site`` is its
    part's study key). The store listing is spilled the same way under ``folder`` (a key's
    research ID is its first part under the release, ``<prefix>/<research id>/...``); then for
    each bucket (:func:`export.partitions.bucket_count` of the larger count) both sides are read
    sorted by key and merged, so memory holds one bucket of each, never the release. Manifest
    rows are numbered in that merge order; those whose number is in ``wanted`` are returned as
    the sample. Disk: about the size of the key listing, twice.
    """
    listing = pt.Spill(folder)
    found = Listing()
    start = len(prefix) + 1
    for info in store.list(prefix + "/"):
        if not is_object_key(prefix, info.key):
            continue
        found.stored += 1
        if any(c in info.key for c in "\t\r\n"):  # no manifest key has one (check_key)
            found.hits.append(
                Hit(info.key, "(not in any manifest part)", Reason.OBJECT_NOT_IN_MANIFEST)
            )
            continue
        research_id = info.key[start:].split("/", 1)[0]
        listing.add({"key": info.key, "size": info.size, "research_id": research_id}, "")
    buckets = pt.bucket_count(max(manifest.rows, listing.rows))
    index = 0
    for bucket in range(buckets):
        rows = manifest.table(bucket, buckets)
        listed = rows.column("key").to_pylist()
        shas = rows.column("sha256").to_pylist()
        studies = rows.column("site").to_pylist()
        del rows
        stored = listing.table(bucket, buckets).column("key").to_pylist()
        i = j = 0
        while i < len(listed) or j < len(stored):
            key = listed[i] if i < len(listed) else None
            other = stored[j] if j < len(stored) else None
            if key is not None and (other is None or key <= other):
                if index in wanted:
                    found.sampled[key] = (shas[i], studies[i])
                index += 1
                if key != other:
                    found.missing.add(key)
                    hit = Hit(key, "(listed but not in the store)", Reason.OBJECT_CHANGED)
                    found.hits.append(hit)
                i += 1
                if key == other and (i >= len(listed) or listed[i] != key):
                    j += 1  # the stored object is matched once, after its last manifest row
            else:
                assert other is not None
                found.hits.append(
                    Hit(other, "(not in any manifest part)", Reason.OBJECT_NOT_IN_MANIFEST)
                )
                j += 1
    listing.close()
    found.hits.sort(key=lambda h: h.key)
    return found


def audit_release(
    project: str,
    release: str,
    store_url: str | None = None,
    *,
    sample: int | None = None,
    seed: int | None = None,
    record_audit: bool = True,
) -> VerificationReport:
    """The run's gate check: verification records, a listing, and a random sample re-verified.

    See the module docstring for the three checks. ``sample`` is the number of objects read
    back (None: :func:`sample_size`'s default); ``seed`` fixes the draw (tests), else it is
    drawn from the system's random source so nobody can tell in advance which objects are read.
    The report (``mode`` ``sample``) is written on premises and audited, as for
    :func:`verify_release`; hits name keys, paths and kinds, never values.

    Raises:
        ReleaseError: the release was never frozen (run it first).
        ConfigError: the project's secret, the store setting or ``sample`` is wrong.
    """
    store = open_store(store_url)
    prefix = f"{project}/{release}"
    t0 = time.perf_counter()
    recipe = _recipe_digest(project, release)
    hits: list[Hit] = []
    work = Path(tempfile.mkdtemp(prefix="ridl-gate-"))
    try:
        manifest, parts, record_hits = _read_parts(store, prefix, recipe, work / "manifest")
        hits.extend(record_hits)
        n = sample_size(manifest.rows, sample)
        draw = random.Random(seed) if seed is not None else random.SystemRandom()
        wanted = set(draw.sample(range(manifest.rows), n)) if n else set()
        merged = compare_listing(store, prefix, manifest, work / "listing", wanted)
        stored = merged.stored
        hits.extend(merged.hits)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    chosen = sorted(merged.sampled)
    sampled = dict(merged.sampled)
    studies = sorted({study for _sha, study in sampled.values()})
    dictionary = IdentifierDictionary(retained=load_project(project).scope.retain)
    kept = read_studies_terms(project, release, studies)
    missing = {study for study in studies if study not in kept.records}
    for study in studies:
        if study in kept.records:
            dictionary.merge_record(kept.records[study])
    # A terms database that cannot be read may hold the sampled studies' terms: the sample
    # cannot be shown clean against them, so the gate does not pass (nothing is removed).
    for name, why in kept.unreadable:
        where = f"(kept terms cannot be read: {why}; restore the file or RIDL_HOME's access)"
        hits.append(Hit(str(terms_folder(project, release) / name), where, Reason.TERMS_UNREADABLE))
    for record in _fallback_terms(project, release, missing).values():
        dictionary.merge_record(record)
    cross = IdentifierDictionary()
    for kind, value in load_terms(project):
        cross.add_shared(kind, value)
    cross.add_equipment(dictionary.equipment)  # R6 across studies, as the stream applies it
    t1 = time.perf_counter()
    verifier = Verifier(dictionary, owners_of=_research_id_of, ocr=None, also=[cross])
    nbytes = 0
    for key in chosen:
        if key in merged.missing:
            continue  # named already: listed but not in the store
        try:
            data = store.get_bytes(key)
        except FileNotFoundError:
            hits.append(Hit(key, "(listed but not in the store)", Reason.OBJECT_CHANGED))
            continue
        nbytes += len(data)
        if hashlib.sha256(data).hexdigest() != sampled[key][0]:
            hits.append(Hit(key, "(bytes differ from the manifest part)", Reason.OBJECT_CHANGED))
        hits.extend(verifier.check_bytes(key, data).hits)
    # The release's own files that name studies: the sampled studies' parts and the summary.
    for key in [part_key(prefix, s) for s in studies] + [release_files(prefix).summary]:
        if store.exists(key):
            data = store.get_bytes(key)
            nbytes += len(data)
            hits.extend(verifier.check_bytes(key, data).hits)
    t2 = time.perf_counter()
    report = VerificationReport(
        project=project,
        release=release,
        store=store.url,
        passed=not hits,
        objects_checked=len(chosen),
        bytes_checked=nbytes,
        dictionary_terms=len(dictionary) + len(cross),
        dictionary_kinds=_summed_kinds(dictionary, cross),
        studies_read=len(studies),
        headers_read=0,
        ocr="read once by curation in the stream (not read again)",
        ocr_objects=0,
        hits=hits,
        seconds_dictionary=round(t1 - t0, 3),
        seconds_search=round(t2 - t1, 3),
        checked_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        mode="sample",
        parts_checked=parts,
        objects_listed=stored,
        studies_without_terms=len(missing),
    )
    _write_report(report, record_audit)
    return report


def require_verified(
    project: str,
    release: str,
    store_url: str | None = None,
    *,
    sample: int | None = None,
) -> VerificationReport:
    """The gate's check without publishing: raise when :func:`audit_release` found anything.

    Raises:
        VerificationFailed: a study unverified, an object unlisted or changed, or a hit.
        ReleaseError: the release was never frozen.
    """
    report = audit_release(project, release, store_url, sample=sample)
    if not report.passed:
        raise VerificationFailed(report, report_path(project, release))
    return report


def block_release(store: ObjectStore, report: VerificationReport) -> list[str]:
    """What a failed gate does to the store: nothing found wanting stays readable.

    Every object the report names (unlisted, changed, or holding an identifier; see
    :func:`is_object_key`), and every object listed by a manifest part found holding an
    identifier, is deleted, and the release's manifest tables (single and partitioned) and
    summary are withdrawn, so no researcher or pull client sees a release to fetch (it was
    never signed or marked published). The other
    objects were each verified in the stream before they were stored; they stay for the rerun
    that resumes the release. The manifest part of every study whose object was removed is
    deleted, so that rerun works those studies again. Returns the deleted object keys, sorted.
    """
    prefix = f"{report.project}/{report.release}"
    doomed = {h.key for h in report.hits if is_object_key(prefix, h.key)}
    # A part found holding an identifier (a value it repeats from its objects' headers, such
    # as a study description) goes with every object it lists: the rerun works that study
    # again, instead of finding the same part and failing the same way for good.
    leaking = {h.key for h in report.hits if h.path == FILE_CONTENTS and _is_part(prefix, h.key)}
    for key in sorted(leaking):
        part = read_part(store, key)
        if part is not None:
            doomed.update(row["key"] for row in part["objects"])
    removed = sorted(k for k in doomed if store.exists(k))
    for key in removed:
        store.delete(key)
    # The part of each study whose object was removed goes too, so the rerun works that study
    # again (its stream verification then knows every term learned since) instead of finding
    # an object listed but gone, and blocking the release for good.
    studies = {_study_of(prefix, key) for key in removed}
    studies |= {key[len(prefix) + len("/parts/") : -len(".json")] for key in leaking}
    for study in sorted(s for s in studies if s is not None):
        store.delete(part_key(prefix, study))
    files = release_files(prefix)
    for key in (files.manifest_parquet, files.manifest_csv, files.summary):
        store.delete(key)
    for folder in (pt.DATASET, pt.CHECKS, pt.BUILD):  # the partitioned manifest too
        for info in list(store.list(f"{prefix}/{folder}/")):
            store.delete(info.key)
    return removed


def _is_part(prefix: str, key: str) -> bool:
    """Whether ``key`` is a study's manifest part of the release at ``prefix``."""
    return (
        key.startswith(f"{prefix}/parts/")
        and key.endswith(".json")
        and key.count("/") == (prefix.count("/") + 2)
    )


def _study_of(prefix: str, key: str) -> str | None:
    """The study key (de-identified Study Instance UID) of an object key
    ``<prefix>/<research id>/<study UID>/<series UID>/<SOP Instance UID>.dcm``; None otherwise."""
    parts = key[len(prefix) + 1 :].split("/") if key.startswith(prefix + "/") else []
    return parts[1] if len(parts) == 4 else None


def gate_release(
    project: str,
    release: str,
    store_url: str | None = None,
    *,
    sample: int | None = None,
    seed: int | None = None,
) -> VerificationReport:
    """Check a built release with :func:`audit_release` and publish it only if all holds.

    On a failure :func:`block_release` removes what was found and withdraws the manifest and
    summary; the report is left on premises and :class:`VerificationFailed` says where it is.
    On success the published markers are written (store and on premises).

    Raises:
        VerificationFailed: the release is blocked (see :func:`audit_release`).
        ReleaseError: the release was never frozen.
        ConfigError: the project's secret, the store setting or ``sample`` is wrong.
    """
    store = open_store(store_url)
    report = audit_release(project, release, store.url, sample=sample, seed=seed)
    if not report.passed:
        report.removed = block_release(store, report)
        path = report_path(project, release)
        path.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True))
        raise VerificationFailed(report, path)
    record: dict[str, Any] = {
        "project": project,
        "release": release,
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "studies_verified_in_stream": report.parts_checked,
        "objects_listed": report.objects_listed,
        "objects_audited": report.objects_checked,
        "rules": RULES_VERSION,
        "ocr": report.ocr,
    }
    store.put_bytes(f"{project}/{release}/{MARKER}", json.dumps(record, indent=2).encode())
    fingerprint = secret_fingerprint(load_secret(project, check_published=False))
    mark_published(project, release, store.url, fingerprint, record)
    return report
