"""The verification gate: no release is published while an identifier of its sources is in it.

This is the orchestration half of verification: it builds the identifier dictionary from the
source headers of the release's frozen selection (read again through the source, so the check is
independent of the run), searches every object under the release prefix with
:class:`export.phi_scan.Verifier`, writes the report on premises (``ridl.releases.report_path``),
audits the result, and publishes only on a clean pass. The dictionary's rules are in
:mod:`export.identifiers`; the byte scan in :mod:`export.phi_scan`; the report types in
:mod:`export.verification`. The OCR function and the at-risk rule are passed in; by default they
come from :mod:`curation.ocr` when it provides them.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from export.identifiers import IdentifierDictionary
from export.manifest import release_files
from export.phi_scan import Hit, Verifier
from export.store import ObjectStore, open_store
from export.verification import VerificationFailed, VerificationReport
from ridl import audit, settings
from ridl.catalog import study_refs
from ridl.errors import ReleaseError
from ridl.projects import load_project
from ridl.pseudonyms import Pseudonymizer, SubjectKey
from ridl.releases import MARKER, REPORT_NAME, load_frozen, mark_published, report_path
from ridl.secrets import load_secret, secret_fingerprint
from ridl.sources.base import open_source

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


def build_dictionary(project: str, release: str) -> tuple[IdentifierDictionary, int, int]:
    """Read the source headers of the release's frozen selection into a dictionary.

    Returns (dictionary, studies read, headers read). Headers are read again from the source,
    not taken from what the run kept, so the check is independent of the run.
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
    for study in study_refs(selection):
        subject = SubjectKey(study.health_number, study.issuer, study.patient_id)
        research_id = keys.research_id(subject)
        shift_days = keys.date_shift_days(subject)
        workdir = settings.work_dir() / project / release / f"verify-{studies}"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            files = source.fetch_study(study, workdir)
            for path in files:
                try:
                    header = dcmread(path, stop_before_pixels=True, force=True)
                except Exception:
                    continue  # unreadable objects were quarantined, not exported
                dictionary.add_header(header, research_id, shift_days)
                headers += 1
        finally:
            source.release_study(study, workdir)
            shutil.rmtree(workdir, ignore_errors=True)
        studies += 1
    return dictionary, studies, headers


def release_objects(store: ObjectStore, prefix: str) -> Iterator[str]:
    """Every object the release put in the store (objects, parts, manifests, summary)."""
    for info in store.list(prefix.rstrip("/") + "/"):
        yield info.key


def verify_release(
    project: str,
    release: str,
    store_url: str | None = None,
    *,
    ocr: Callable[[Dataset], Any] | None | bool = True,
    at_risk: Callable[[Dataset], bool] | None = None,
    record_audit: bool = True,
) -> VerificationReport:
    """Verify every object of a release against its source identifiers; write the report.

    ``ocr=True`` loads OCR from ``curation.ocr`` when it is there; pass a function to use
    another, or ``False`` to skip. The report is written on premises next to the frozen selection
    (``RIDL_HOME/releases/<project>/<release>/verification.json``) and the result is audited.
    The caller decides what a failure means; :func:`require_verified` raises on it.
    ``at_risk`` decides which objects' pixels OCR reads (default: ``curation.ocr.at_risk`` when
    it exists, else :func:`export.phi_scan.default_at_risk`).

    Raises:
        ReleaseError: the release was never frozen (run it first).
        ConfigError: the project's secret or the store setting is wrong.
    """
    store = open_store(store_url)
    t0 = time.perf_counter()
    dictionary, studies, headers = build_dictionary(project, release)
    t1 = time.perf_counter()
    ocr_func: Callable[[Dataset], Any] | None
    if ocr is True:
        ocr_func = load_ocr()
    elif ocr is False or ocr is None:
        ocr_func = None
    else:
        ocr_func = ocr
    verifier = Verifier(
        dictionary, owners_of=_research_id_of, ocr=ocr_func, at_risk=at_risk or _load_at_risk()
    )
    hits: list[Hit] = []
    objects = nbytes = ocr_objects = 0
    for key in release_objects(store, f"{project}/{release}"):
        if key.endswith(f"/{REPORT_NAME}") or key.endswith("/published.json"):
            continue
        data = store.get_bytes(key)
        result = verifier.check_bytes(key, data)
        hits.extend(result.hits)
        ocr_objects += int(result.ocr_checked)
        objects += 1
        nbytes += len(data)
    t2 = time.perf_counter()
    report = VerificationReport(
        project=project,
        release=release,
        store=store.url,
        passed=not hits,
        objects_checked=objects,
        bytes_checked=nbytes,
        dictionary_terms=len(dictionary),
        dictionary_kinds=dictionary.kinds(),
        studies_read=studies,
        headers_read=headers,
        ocr="used" if ocr_func is not None else "not available (skipped)",
        ocr_objects=ocr_objects,
        hits=hits,
        seconds_dictionary=round(t1 - t0, 3),
        seconds_search=round(t2 - t1, 3),
        checked_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    path = report_path(project, release)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    if record_audit:
        audit.record(
            "verification.result",
            project=project,
            release=release,
            passed=report.passed,
            objects=objects,
            hits=len(hits),
            objects_with_hits=len({h.key for h in hits}),
            dictionary_terms=len(dictionary),
            ocr=report.ocr,
        )
    return report


def _research_id_of(ds: Dataset) -> str | None:
    value = str(getattr(ds, "PatientID", "") or "")
    return value or None


def require_verified(
    project: str,
    release: str,
    store_url: str | None = None,
    *,
    ocr: Callable[[Dataset], Any] | None | bool = True,
) -> VerificationReport:
    """The gate: verify, and raise :class:`VerificationFailed` when anything was found."""
    report = verify_release(project, release, store_url, ocr=ocr)
    if not report.passed:
        raise VerificationFailed(report, report_path(project, release))
    return report


def gate_release(
    project: str,
    release: str,
    store_url: str | None = None,
    *,
    ocr: Callable[[Dataset], Any] | None | bool = True,
) -> VerificationReport:
    """Verify a built release and publish it only if nothing was found.

    On a hit the release's manifest and summary are withdrawn from the store (so no researcher or
    pull client sees a release to fetch), the report is left on premises, and
    :class:`VerificationFailed` says where it is. On success the published markers are written.
    """
    store = open_store(store_url)
    report = verify_release(project, release, store.url, ocr=ocr)
    if not report.passed:
        files = release_files(f"{project}/{release}")
        for key in (files.manifest_parquet, files.manifest_csv, files.summary):
            store.delete(key)
        raise VerificationFailed(report, report_path(project, release))
    record: dict[str, Any] = {
        "project": project,
        "release": release,
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "objects_verified": report.objects_checked,
        "dictionary_terms": report.dictionary_terms,
        "ocr": report.ocr,
    }
    store.put_bytes(f"{project}/{release}/{MARKER}", json.dumps(record, indent=2).encode())
    fingerprint = secret_fingerprint(load_secret(project, check_published=False))
    mark_published(project, release, store.url, fingerprint, record)
    return report
