"""De-identify a folder of DICOM files with a project's recipe and keys, outside any run.

Why a standalone path: one-off requests, checking what a recipe does to real files, and the
benchmark all need the engine without a catalog, a release or an object store. It uses exactly
the per-object steps of a run (:mod:`flows.work`): the files are grouped into studies by Study
Instance UID, and each study is read once, curated (IHE IOCM rejections, the project's checks,
burned-in text: header triage, known-region cleaning, OCR screening, the review decisions),
de-identified, verified against the identifiers of its own headers (and the project's
cross-study terms) and written, so what it produces is what a run would export. Objects a run
would hold back (burned-in text found, a check's quarantine, an identifier left in the
de-identified bytes) are quarantined on premises under the project's ``adhoc`` release with
their reason and review record, never written to the destination; ``ridl review ... --release
adhoc`` reviews them, and the next request of the same files honours the decisions.

A one-off request is held to the project's approval as a run is: an object whose Modality,
Study Date or Issuer of Patient ID is outside the approved scope, or whose subject opted out or
withdrew, is excluded (counted under its reason, neither written nor quarantined: it is simply
not part of the request); an expired approval refuses the whole request. Each request is
audited (``deid.started`` and ``deid.ended``, counts only: never a path or a header value).

Memory: the first pass reads a few header elements of each file (approval, study, IOCM); then
one study at a time is read whole, up to ``flows.work.STUDY_READ_BYTES`` held in memory.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from curation.integrity import ObjectRead
from curation.iocm import is_rejection_note, rejected_instances
from curation.pipeline import Curated, Curator
from curation.quarantine import quarantine_file
from deid_recipes.engine import DeidError, Engine, SubjectContext
from deid_recipes.fastpath import deidentify_bytes, deidentify_to_bytes
from deid_recipes.recipe import load_recipe
from export.identifiers import ElementMemo, IdentifierDictionary
from export.manifest import object_path
from export.phi_scan import UNVERIFIABLE, Verifier, written_pixel_start
from flows import heap
from flows.work import HEADER_KEYWORDS, STUDY_READ_BYTES, study_tokens
from ridl import audit
from ridl.crossterms import load_terms
from ridl.dicomfile import read_file, to_bytes
from ridl.errors import ConfigError, ObjectRejected
from ridl.optout import load_optout
from ridl.projects import load_project
from ridl.pseudonyms import Pseudonymizer, SubjectKey
from ridl.reasons import Reason
from ridl.releases import load_withdrawn
from ridl.secrets import load_secret
from ridl.sources.hn import health_number

ADHOC_RELEASE = "adhoc"
# What deciding an object's place in the approval reads (PS3.3 C.7.1.1 Patient, C.7.2.1 General
# Study, C.7.3.1 General Series): Patient ID, Issuer of Patient ID, Other Patient IDs Sequence,
# Study Date, Modality.
APPROVAL_TAGS = [
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "StudyDate",
    "Modality",
]
# What the first pass reads besides: the study an object belongs to (PS3.3 C.7.2.1), and what
# IHE IOCM needs to find a rejection note and the instances it rejects (PS3.3 C.17.2, C.17.6).
FIRST_PASS_TAGS = [
    *APPROVAL_TAGS,
    "StudyInstanceUID",
    "SOPClassUID",
    "ConceptNameCodeSequence",
    "CurrentRequestedProcedureEvidenceSequence",
]


@dataclass
class DeidSummary:
    """What a folder de-identification did: counts only, never a value from a header.

    ``held_for_review`` counts the quarantined objects a reviewer may release (``ridl review
    ... --release adhoc``); ``verified`` the de-identified objects searched for the identifiers
    of their study before writing (every written object is among them; one with a hit is
    quarantined instead).
    """

    files: int = 0
    exported: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    subjects: set[str] = field(default_factory=set)
    quarantined: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)
    held_for_review: int = 0
    verified: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Counts as JSON-ready values (files, bytes in and out, subjects, reasons for
        quarantine and for exclusion, objects held for review, objects verified)."""
        return {
            "files": self.files,
            "exported": self.exported,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "subjects": len(self.subjects),
            "quarantined": dict(sorted(self.quarantined.items())),
            "excluded": dict(sorted(self.excluded.items())),
            "held_for_review": self.held_for_review,
            "verified": self.verified,
        }


@dataclass
class _Study:
    """The files of one study that are inside the approval, and the SOP Instance UIDs that the
    study's IOCM rejection notes reject (notes outside the approval included, as a run does)."""

    files: list[Path] = field(default_factory=list)
    rejected: set[str] = field(default_factory=set)


class FolderDeidentifier:
    """A project's engine and keys, its curation (release ``adhoc``), and how to get a subject
    from a header.

    Raises:
        ProjectNotFound: the project is not in the registry.
        ScopeError: the project's approval has expired.
        ConfigError: the project's secret, recipe or ``[curation]`` settings are wrong.
    """

    def __init__(self, project_id: str) -> None:
        project = load_project(project_id)
        project.check_active()
        self.project = project
        self.keys = Pseudonymizer(load_secret(project.id))
        self.engine = Engine(
            load_recipe(project.recipe_spec()), self.keys, retain=project.scope.retain
        )
        self.optout = load_optout(project.id)
        self.withdrawn = load_withdrawn(project.id)
        self.curator = Curator.for_project(project.id, ADHOC_RELEASE, project.extra.get("curation"))
        self.memo = ElementMemo()  # header elements met before are not parsed again
        self.cross = IdentifierDictionary(retained=project.scope.retain)
        for kind, value in load_terms(project.id):  # read only: a request teaches nothing
            self.cross.add_shared(kind, value)
        heap.settle()  # what a request keeps is not scanned by every full collection

    def exclusion(self, path: Path) -> Reason | None:
        """Why the object is outside the project's approval, or None when it is inside.

        Reads only the header elements that decide it: Modality (0008,0060), Study Date
        (0008,0020; inclusive bounds, a missing date is not shown to be in scope), Issuer of
        Patient ID (0010,0021), and the subject (health number or patient couplet) against the
        opt-out list and the project's withdrawals. A file that cannot be read this way returns
        None: the de-identification path then quarantines it with its reason.
        """
        ds = _first_pass(path)
        return None if ds is None else self.exclusion_of(ds)

    def exclusion_of(self, ds: Dataset) -> Reason | None:
        """:meth:`exclusion` of a header already read (at least :data:`APPROVAL_TAGS`)."""
        scope = self.project.scope
        if str(ds.get("Modality", "") or "").upper() not in scope.modalities:
            return Reason.MODALITY_NOT_APPROVED
        date = str(ds.get("StudyDate", "") or "").strip()
        if not (scope.date_from.strftime("%Y%m%d") <= date <= scope.date_to.strftime("%Y%m%d")):
            return Reason.DATE_NOT_APPROVED
        issuer = str(ds.get("IssuerOfPatientID", "") or "")
        if issuer not in scope.sites:
            return Reason.SITE_NOT_APPROVED
        try:
            hn = health_number(ds, self.project.hn_issuer)
        except Exception:  # noqa: BLE001 - the main path quarantines an unparseable subject
            return None
        patient_id = str(ds.get("PatientID", "") or "")
        if self.optout.contains(hn, issuer, patient_id):
            return Reason.OPTED_OUT
        subject = SubjectKey(hn, issuer, patient_id)
        if self.withdrawn and self.keys.research_id(subject) in self.withdrawn:
            return Reason.WITHDRAWN
        return None

    def subject(self, ds: Dataset) -> SubjectContext:
        """Research ID and date shift (days) from HN (Other Patient IDs) or the patient couplet,
        read from the original header before any change.

        Raises:
            DeidError: ``deid-unparseable-element``, the subject cannot be read.
        """
        try:
            key = SubjectKey(
                health_number(ds, self.project.hn_issuer),
                str(ds.get("IssuerOfPatientID", "") or ""),
                str(ds.get("PatientID", "") or ""),
            )
        except Exception as exc:
            raise DeidError(Reason.DEID_UNPARSEABLE_ELEMENT, type(exc).__name__) from None
        return SubjectContext(self.keys.research_id(key), self.keys.date_shift_days(key))

    def deidentify_study(
        self,
        study: _Study,
        dst: Path,
        summary: DeidSummary,
        on_file: Callable[[], None] | None = None,
    ) -> None:
        """Read, curate, de-identify, verify and write one study's files, as a run's
        per-study work does (:func:`flows.work.process_study`); counts go to ``summary``.

        Each object is read once; a file that is not DICOM or cannot be read is quarantined
        (``not-dicom``, ``unreadable``). IOCM rejection notes and the instances they reject are
        excluded; the rest are curated by the project's :class:`~curation.pipeline.Curator`
        (release ``adhoc``) on a view of the study's headers, de-identified (the byte-level
        fast path when curation left the pixels alone), searched for the identifiers of the
        study's headers and the project's cross-study terms (a hit is quarantined
        ``verification-hit``), and written under ``dst``.

        Raises:
            ConfigError: the review decisions file has a bad line, or the OCR engine is not
                installed (see :func:`curation.ocr.engine`).
        """
        reads: dict[Path, ObjectRead] = {}
        held = 0
        for path in study.files:
            try:
                read = ObjectRead.from_path(path)
                for keyword in HEADER_KEYWORDS:  # values are decoded lazily: fail here
                    read.header.get(keyword)
            except InvalidDicomError:
                self._quarantine(path, Reason.NOT_DICOM, "", summary, on_file)
                continue
            except Exception as exc:  # pydicom raises many kinds on corrupt input
                self._quarantine(path, Reason.UNREADABLE, type(exc).__name__, summary, on_file)
                continue
            if read.data is not None and held + len(read.data) > STUDY_READ_BYTES:
                read.release()  # a big study: read again when its turn comes
            held += len(read.data or b"")
            reads[path] = read
        if not reads:
            return
        headers = [read.header for read in reads.values()]
        study_uid = str(headers[0].get("StudyInstanceUID", "") or "")
        study_key = self.keys.uid(study_uid) if study_uid else ""
        rejected = study.rejected | rejected_instances(headers)
        tokens = study_tokens(headers) if self.engine.uses_clean else None
        # The study's identifiers, from every header read (each with its own subject's
        # research ID and date shift), then the project's cross-study terms beside them.
        dictionary = IdentifierDictionary(retained=self.project.scope.retain, memo=self.memo)
        for header in headers:
            try:
                subject = self.subject(header)
            except DeidError:
                continue  # quarantined below: never written, nothing to verify it against
            dictionary.add_header(header, subject.research_id, subject.shift_days)
        self.cross.add_equipment(dictionary.equipment)  # R6: this study's own vendors
        verifier = Verifier(dictionary, ocr=None, also=[self.cross])
        eligible: dict[Path, ObjectRead] = {}
        for path, read in reads.items():
            if is_rejection_note(read.header):
                self._exclude(Reason.IOCM_REJECTION_NOTE, summary, on_file)
            elif str(read.header.get("SOPInstanceUID", "") or "") in rejected:
                self._exclude(Reason.IOCM_REJECTED, summary, on_file)
            else:
                eligible[path] = read
        view = self.curator.study([read.header for read in eligible.values()])
        for path, read in eligible.items():
            curated = self.curator.curate(path, read.header, view, study_key, read)
            if curated.action == "exclude":
                self._exclude(curated.reason, summary, on_file)
            elif curated.action == "quarantine" or curated.dataset is None:
                summary.held_for_review += int(curated.review_id is not None)
                self._quarantine(path, curated.reason, curated.detail, summary, on_file, study_key)
            else:
                self._export(path, read, curated, tokens, verifier, dst, summary, study_key)
                if on_file is not None:
                    on_file()
            read.release()

    def _export(
        self,
        path: Path,
        read: ObjectRead,
        curated: Curated,
        tokens: frozenset[str] | None,
        verifier: Verifier,
        dst: Path,
        summary: DeidSummary,
        study_key: str,
    ) -> None:
        """De-identify, verify and write one curated object; quarantine it when any step
        refuses it (never let one object stop the request)."""
        try:
            ds, data, subject, pixel_start = self._deidentify(read, curated, tokens)
            if not all(ds.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID")):
                raise ObjectRejected(Reason.MISSING_UID)
            relative = object_path(subject.research_id, ds)
            # Verified before it is written: a hit keeps the object on premises only.
            checked = verifier.check_bytes(
                relative,
                data,
                text_end=pixel_start,
                pixel_text=curated.pixel_text if curated.ocr_ran else None,
            )
            summary.verified += 1
            if checked.hits:
                reason = (
                    Reason.UNVERIFIABLE_OBJECT
                    if any(h.kind == UNVERIFIABLE for h in checked.hits)
                    else Reason.VERIFICATION_HIT
                )
                where = "; ".join(sorted({h.where for h in checked.hits}))
                raise ObjectRejected(reason, where[:500])
            out = target(dst, ds, subject)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(out)
        except ObjectRejected as rej:
            self._quarantine(path, rej.reason, rej.detail, summary, None, study_key)
        except Exception as exc:  # never let one object stop the request
            self._quarantine(
                path, Reason.WRITE_FAILED, type(exc).__name__, summary, None, study_key
            )
        else:
            summary.exported += 1
            summary.bytes_out += len(data)
            summary.subjects.add(subject.research_id)

    def _deidentify(
        self, read: ObjectRead, curated: Curated, tokens: frozenset[str] | None
    ) -> tuple[Dataset, bytes, SubjectContext, int | None]:
        """The de-identified object: a dataset naming it, its bytes, its subject, and, when the
        fast path wrote them, where its Pixel Data element, the last one, begins (else None).

        As :func:`flows.work._deidentify`: an object curation did not change goes by the fast
        path from the bytes already read; what it does not take, and an object curation changed,
        is de-identified whole from the dataset curation read.

        Raises:
            ObjectRejected: the object cannot be de-identified with certainty (DeidError).
        """
        subject = self.subject(read.header)
        if tokens is not None:  # names and institutions of the whole study are cleaned away
            subject = replace(subject, identifying=tokens)
        if not curated.pixels_changed:
            done = (
                deidentify_bytes(self.engine, lambda _header: subject, read.data)
                if read.data is not None
                else deidentify_to_bytes(self.engine, lambda _header: subject, read.path)
            )
            if done is not None:
                return done[0], done[2], subject, done[3]
        ds = curated.dataset
        assert ds is not None  # the caller quarantines an export without a dataset
        self.engine.apply(ds, subject)
        data = to_bytes(ds)
        return ds, data, subject, written_pixel_start(ds, data)

    def _exclude(
        self, reason: str, summary: DeidSummary, on_file: Callable[[], None] | None
    ) -> None:
        summary.excluded[reason] += 1
        if on_file is not None:
            on_file()

    def _quarantine(
        self,
        path: Path,
        reason: str,
        detail: str,
        summary: DeidSummary,
        on_file: Callable[[], None] | None,
        study_key: str = "",
    ) -> None:
        quarantine_file(
            self.project.id,
            ADHOC_RELEASE,
            path,
            reason,
            source="deid",
            location=str(path),
            study_key=study_key or None,
            detail=detail,
        )
        summary.quarantined[reason] += 1
        if on_file is not None:
            on_file()


def _first_pass(path: Path) -> Dataset | None:
    """The few header elements of :data:`FIRST_PASS_TAGS`, or None when the file cannot be
    read so (the per-study pass then quarantines it with its reason)."""
    try:
        return read_file(path, stop_before_pixels=True, specific_tags=FIRST_PASS_TAGS)
    except Exception:  # noqa: BLE001 - not DICOM or damaged: the per-study pass says why
        return None


def target(dst: Path, ds: Dataset, subject: SubjectContext) -> Path:
    """``dst/<research id>/<study>/<series>/<sop>.dcm``, folders created."""
    folder = dst / subject.research_id / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{ds.SOPInstanceUID}.dcm"


def iter_files(src: Path) -> Iterator[Path]:
    """Every regular file under ``src`` (or ``src`` itself), in a stable order."""
    if src.is_file():
        yield src
        return
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            yield path


def check_destination(dst: Path) -> None:
    """Make sure ``dst`` is a writable folder or can be made one, creating nothing yet.

    Raises:
        ConfigError: ``dst`` (or the nearest existing folder above it) is not a folder, or is
            not writable.
    """
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"{dst} is not a folder: give a folder for the de-identified files")
    existing = dst
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{dst} cannot be created ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{existing} is not writable: give a writable folder")


def deidentify_folder(
    src: Path,
    dst: Path,
    project_id: str,
    on_file: Callable[[], None] | None = None,
    worker: FolderDeidentifier | None = None,
) -> DeidSummary:
    """De-identify every file under ``src`` into ``dst/<research id>/<study>/<series>/``.

    Objects outside the project's approval are excluded and counted (see
    :meth:`FolderDeidentifier.exclusion`); the others are grouped into studies by Study
    Instance UID (a file whose header cannot be read is a study of its own) and worked one
    study at a time (:meth:`FolderDeidentifier.deidentify_study`: IOCM, curation, burned-in
    text, verification, as a run). ``on_file`` is called once per file. The request is audited
    (``deid.started`` with the project and file count, ``deid.ended`` with the counts of
    :meth:`DeidSummary.as_dict`). ``worker`` is the project's :class:`FolderDeidentifier` when
    the caller already built it (it loads the recipe, keys and curation once).

    Raises:
        ConfigError: ``dst`` is not a writable folder or lies inside ``src``, the project's
            secret, recipe or
            curation settings are wrong, the review decisions file has a bad line, or the OCR
            engine is not installed.
        ProjectNotFound: the project is not in the registry.
        ScopeError: the project's approval has expired.
    """
    if worker is None or worker.project.id != project_id:
        worker = FolderDeidentifier(project_id)
    check_destination(dst)
    if dst.resolve().is_relative_to(src.resolve()):
        # Its outputs would be read back as inputs by the next request (and by a folder run).
        raise ConfigError(
            f"the output folder {dst} is inside the input folder {src}: give an output folder "
            "outside it"
        )
    summary = DeidSummary()
    files = list(iter_files(src))
    audit.record(
        "deid.started",
        project=project_id,
        reb_number=worker.project.reb_number,
        files=len(files),
        recipe=worker.project.recipe_spec(),
    )
    # First pass: a few elements per file (approval, study, IOCM); paths and UIDs kept only.
    studies: dict[str, _Study] = {}
    for path in files:
        summary.files += 1
        summary.bytes_in += path.stat().st_size
        header = _first_pass(path)
        if header is None:
            studies[f"file:{path}"] = _Study([path])
            continue
        study_uid = str(header.get("StudyInstanceUID", "") or "")
        study = studies.setdefault(f"study:{study_uid}" if study_uid else f"file:{path}", _Study())
        # A rejection note rejects its instances even when the note itself is outside the
        # approval (a run reads IOCM before the modality scope).
        study.rejected |= rejected_instances([header])
        reason = worker.exclusion_of(header)
        if reason is not None:
            summary.excluded[reason] += 1
            if on_file is not None:
                on_file()
            continue
        study.files.append(path)
    for study in studies.values():
        worker.deidentify_study(study, dst, summary, on_file)
    audit.record("deid.ended", project=project_id, **summary.as_dict())
    return summary
