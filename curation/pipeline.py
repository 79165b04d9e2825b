"""The curation of one object: checks, header triage, known-region cleaning, screening, OCR.

``flows.work`` calls :meth:`Curator.curate` for every object that survives IOCM and the scope; the
answer says whether to export the (possibly cleaned or redacted) dataset, exclude the object or
quarantine it, with a short reason. Review decisions of the release are honoured here: an
approved object is exported even when text was detected, a rejected one is excluded.

Objects the header puts at risk (:mod:`curation.burned_in`) and objects screened whatever their
header says (:mod:`curation.screening`) are read by OCR; detected text is quarantined or redacted
as the project's ``burned_in_text`` says (``quarantine`` by default).

Curation floor (``curation/``): this module composes the others (checks, burned-in triage,
screening scope, pixel cleaning, OCR, review records) into the one call ``flows`` makes per
object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydicom.dataset import Dataset

from curation.burned_in import Triage, TriageResult
from curation.checks import CheckObject, Policy, StudyView, load_checks, run_checks
from curation.decoding import failure_detail
from curation.integrity import ObjectRead, has_pixel_data
from curation.ocr import TextBox
from curation.review import Decisions, ReviewRecord, record_object
from ridl.errors import ObjectRejected, RidlError
from ridl.reasons import Reason, check_failed

Outcome = Literal["export", "exclude", "quarantine"]


@dataclass
class Curated:
    """The curation of one object: ``export`` (``dataset`` is the whole, possibly cleaned,
    object), ``exclude`` or ``quarantine`` with a reason code and detail (no PHI).

    ``review_id`` is the SHA-256 of the source object when a reviewer may decide on it;
    ``at_risk`` and ``ocr_ran`` say what the burned-in text steps did.
    """

    action: Outcome
    reason: str = ""
    detail: str = ""
    dataset: Dataset | None = None
    review_id: str | None = None
    at_risk: bool = False
    ocr_ran: bool = False
    # True when curation changed the object (regions blanked, Burned In Annotation set): only
    # then must the run de-identify ``dataset`` itself; otherwise the file as stored is what
    # to export, and the run may take the byte-level fast path (deid_recipes.fastpath).
    pixels_changed: bool = False
    # Every line curation's OCR read in the pixels as exported (after any cleaning or
    # redaction): PHI, kept in memory for the stream verification only, never logged or stored.
    pixel_text: tuple[str, ...] = ()


@dataclass
class CurationStats:
    """Per-worker counts: objects curated, at risk of burned-in text (header triage), screened
    whatever their header says, cleaned (known regions), redacted (detected boxes), OCR reads."""

    objects: int = 0
    at_risk: int = 0
    screened: int = 0
    cleaned: int = 0
    redacted: int = 0
    ocr: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def check_settings(section: Mapping[str, Any] | None) -> Policy:
    """Fail before any work on a project's curation settings: names, values, filter files.

    ``section`` is the project's ``[curation]`` table (None: defaults). Returns the policy.

    Raises:
        ConfigError: a bad policy value, a check that is not installed, a missing filter file
            or filters without a ``%filter`` section.
        ValueError: ``ocr_min_score`` or ``ocr_min_chars`` is not a number.
    """
    policy = Policy.from_project(section)
    load_checks(policy.checks)
    Triage(policy.filters)
    return policy


class Curator:
    """Per-worker curation state: loaded checks, compiled filters, the decisions file.

    Raises:
        ConfigError: a check is not installed or a filter file is wrong (see
            :func:`check_settings`).
    """

    def __init__(self, project: str, release: str, policy: Policy) -> None:
        self.project = project
        self.release = release
        self.policy = policy
        self.checks = load_checks(policy.checks)
        self.triage = Triage(policy.filters)
        self.decisions = Decisions(project, release)
        self.stats = CurationStats()

    @classmethod
    def for_project(cls, project: str, release: str, section: Mapping[str, Any] | None) -> Curator:
        """A curator for the project's ``[curation]`` table (None: defaults).

        Raises:
            ConfigError: the settings are wrong (see :func:`check_settings`).
            ValueError: ``ocr_min_score`` or ``ocr_min_chars`` is not a number.
        """
        return cls(project, release, Policy.from_project(section))

    def study(self, headers: list[Dataset]) -> StudyView:
        """The view the checks get of a study: the headers (no pixels) of its objects."""
        return StudyView(list(headers))

    def curate(
        self,
        path: Path,
        header: Dataset,
        study: StudyView,
        study_key: str,
        read: ObjectRead | None = None,
    ) -> Curated:
        """Curate the object at ``path`` (``header``: read without pixels; ``read``: the one
        read of the file the caller made, whose bytes and whole dataset are used instead of
        reading the file again).

        What :meth:`_curate` does, except that a step that raises (a check's helper, triage,
        screening, a decoder) quarantines this object as ``check-failed-curation`` (detail
        ``check=curation`` and the exception type) instead of failing the batch.

        Raises:
            ConfigError: the review decisions file has a bad line, or the OCR engine is not
                installed (see :func:`curation.ocr.engine`).
        """
        try:
            return self._curate(path, header, study, study_key, read)
        except RidlError:
            raise
        except ObjectRejected as rej:
            return Curated("quarantine", rej.reason, rej.detail)
        except Exception as exc:  # one object's failure never stops the run
            return Curated(
                "quarantine", check_failed("curation"), f"check=curation {type(exc).__name__}"
            )

    def _curate(
        self,
        path: Path,
        header: Dataset,
        study: StudyView,
        study_key: str,
        read: ObjectRead | None = None,
    ) -> Curated:
        """Curate the object at ``path`` (``header``: read without pixels).

        Checks run first (a quarantine a reviewer approved goes on). An object without pixel
        data (Pixel Data, Float or Double Float Pixel Data) is exported as read. An object at
        risk of burned-in text by its header (triage) has known regions blanked and, when the policy
        says so, is read by OCR; an object that is not, but lies in the screening scope
        (:mod:`curation.screening`: projection and capture modalities, DERIVED or SECONDARY
        images, a sample of each cross-sectional series) and holds pixels, is read by OCR too.
        Text found is quarantined (``burned_in_text = "quarantine"``, reason ``burned-in-text``)
        or blanked and screened again (``"redact"``) unless a reviewer approved the object; a
        reviewer's rejection excludes it. A review record is written for each at-risk object
        and each screened object in which text was found. ``study_key`` names the study in
        review records.

        Rejections are returned as verdicts, not raised (an ``ObjectRejected`` from reading the
        object becomes a quarantine).

        Raises:
            ConfigError: the review decisions file has a bad line, or the OCR engine is not
                installed (see :func:`curation.ocr.engine`).
        """
        from curation.screening import screening_scope

        self.stats.objects += 1
        triage = self.triage(header)
        scope = None
        if self.policy.ocr and not triage.at_risk:
            scope = screening_scope(header, study.screening_sample())
        needs_decoding = (triage.at_risk and (self.policy.ocr or triage.has_regions)) or (
            scope is not None
        )
        obj = CheckObject(
            path, header, study, self.policy, needs_decoding=needs_decoding, read=read
        )
        verdict = run_checks(self.checks, obj)
        if verdict.action == "quarantine" and path.exists():
            # A reviewer may release an object a check held back (an odd series, say).
            review_id = _review_id(path, read)
            if self.decisions.get(review_id) != "approve":
                return Curated("quarantine", verdict.reason, verdict.detail, review_id=review_id)
        elif verdict.action != "pass":
            return Curated(verdict.action, verdict.reason, verdict.detail)
        try:
            ds = obj.whole()
        except ObjectRejected as rej:
            return Curated("quarantine", rej.reason, rej.detail)
        if not has_pixel_data(ds):
            # No pixel data (a structured report, say): nothing for the pixel steps to read.
            return Curated("export", dataset=ds)
        if triage.at_risk:
            self.stats.at_risk += 1
            return self._burned_in(path, ds, triage, study_key, read)
        if scope is None:
            return Curated("export", dataset=ds)
        self.stats.screened += 1
        return self._screen(path, ds, scope, study_key, read)

    def _read(self, frames: list[Any]) -> tuple[list[TextBox], tuple[str, ...]]:
        """Boxes that count as text under the policy, and every line read (PHI, memory only)."""
        from curation.ocr import counts_as_text, read_lines

        self.stats.ocr += 1
        lines = read_lines(frames)
        boxes = [
            line.box()
            for line in lines
            if counts_as_text(
                line,
                min_score=self.policy.ocr_min_score,
                min_chars=self.policy.ocr_min_chars,
                keep_markers=self.policy.keep_markers,
            )
        ]
        return boxes, tuple(line.text for line in lines)

    def _screen(
        self, path: Path, ds: Dataset, scope: Reason, study_key: str, read: ObjectRead | None
    ) -> Curated:
        """Screen an object its header did not put at risk; act on text as the policy says."""
        from curation.pixels import FrameMismatch, frames_for_ocr

        try:
            frames = frames_for_ocr(ds)
        except FrameMismatch as err:
            return Curated("quarantine", err.reason, err.detail)
        except Exception as exc:  # a decoder crash must not stop the run
            return Curated("quarantine", Reason.PIXEL_DECODE_FAILED, failure_detail(exc))
        boxes, text = self._read(frames)
        if not boxes:
            return Curated("export", dataset=ds, ocr_ran=True, pixel_text=text)
        review_id = _review_id(path, read)
        decision = self.decisions.get(review_id)
        if decision == "reject":
            return Curated("exclude", Reason.REVIEW_REJECTED, review_id=review_id, at_risk=True)
        record = ReviewRecord(
            review_id, study_key, "exported", "", str(ds.get("Modality", "")), [scope], False
        )
        return self._text_found(ds, frames, boxes, text, record, decision, changed=False)

    def _text_found(
        self,
        ds: Dataset,
        frames: list[Any],
        boxes: list[TextBox],
        text: tuple[str, ...],
        record: ReviewRecord,
        decision: str | None,
        *,
        changed: bool,
    ) -> Curated:
        """Text counted in ``frames``: export if approved, else quarantine or redact (policy).

        ``changed`` says whether curation already changed the pixels (known regions blanked).
        """
        from curation.pixels import CleaningError, blank_boxes, frames_for_ocr

        review_id = record.object
        record.boxes = [b.as_dict() for b in boxes]
        if decision == "approve":
            record.reason = Reason.APPROVED_WITH_TEXT
            record_object(self.project, self.release, record, frames[0] if frames else None)
            return Curated(
                "export",
                dataset=ds,
                review_id=review_id,
                at_risk=True,
                ocr_ran=True,
                pixels_changed=changed,
                pixel_text=text,
            )
        if self.policy.burned_in_text == "quarantine":
            record.status, record.reason = "quarantined", Reason.BURNED_IN_TEXT
            record_object(self.project, self.release, record, frames[0] if frames else None)
            return Curated(
                "quarantine", Reason.BURNED_IN_TEXT, review_id=review_id, at_risk=True, ocr_ran=True
            )
        # Redact: blank every box in every frame, then screen what is left.
        try:
            blanked = blank_boxes(ds, boxes)
            frames = frames_for_ocr(ds, blanked)
        except CleaningError as err:
            record.status, record.reason = "quarantined", err.reason
            record_object(self.project, self.release, record)
            return Curated(
                "quarantine",
                err.reason,
                err.detail,
                review_id=review_id,
                at_risk=True,
                ocr_ran=True,
            )
        self.stats.redacted += 1
        record.cleaned = True
        left, text = self._read(frames)
        if left:
            record.boxes = [b.as_dict() for b in left]
            record.status, record.reason = "quarantined", Reason.BURNED_IN_TEXT_REMAINS
            record_object(self.project, self.release, record, frames[0] if frames else None)
            return Curated(
                "quarantine",
                Reason.BURNED_IN_TEXT_REMAINS,
                review_id=review_id,
                at_risk=True,
                ocr_ran=True,
            )
        # Only now is the header's claim true: the text found is blanked and none is left.
        ds.BurnedInAnnotation = "NO"
        record.reason = Reason.TEXT_REDACTED
        record_object(self.project, self.release, record, frames[0] if frames else None)
        return Curated(
            "export",
            dataset=ds,
            review_id=review_id,
            at_risk=True,
            ocr_ran=True,
            pixels_changed=True,
            pixel_text=text,
        )

    def _burned_in(
        self,
        path: Path,
        ds: Dataset,
        triage: TriageResult,
        study_key: str,
        read: ObjectRead | None,
    ) -> Curated:
        from curation.pixels import CleaningError, FrameMismatch, clean_regions, frames_for_ocr

        review_id = _review_id(path, read)
        decision = self.decisions.get(review_id)
        if decision == "reject":
            return Curated("exclude", Reason.REVIEW_REJECTED, review_id=review_id, at_risk=True)
        modality = str(ds.get("Modality", ""))
        record = ReviewRecord(
            review_id, study_key, "exported", "", modality, [triage.reason], triage.has_regions
        )
        pixels = None
        try:
            if triage.has_regions:
                pixels = clean_regions(ds, triage.coordinates)
                self.stats.cleaned += 1
            frames = frames_for_ocr(ds, pixels) if self.policy.ocr or pixels is not None else []
        except CleaningError as err:
            if decision == "approve" and not isinstance(err, FrameMismatch):
                # Cleaning failed part way: the dataset may hold half-blanked pixels.
                return Curated(
                    "export", dataset=ds, review_id=review_id, at_risk=True, pixels_changed=True
                )
            record.status, record.reason = "quarantined", err.reason
            record_object(self.project, self.release, record)
            return Curated("quarantine", err.reason, err.detail, review_id=review_id, at_risk=True)
        except Exception as exc:  # a decoder crash must not stop the run
            record.status, record.reason = "quarantined", Reason.PIXEL_DECODE_FAILED
            record_object(self.project, self.release, record)
            return Curated(
                "quarantine", Reason.PIXEL_DECODE_FAILED, failure_detail(exc), review_id=review_id
            )
        if not self.policy.ocr:
            if triage.has_regions or decision == "approve":
                if triage.has_regions:
                    ds.BurnedInAnnotation = "NO"
                record.reason = (
                    Reason.KNOWN_REGIONS_BLANKED if triage.has_regions else Reason.APPROVED
                )
                record_object(self.project, self.release, record, frames[0] if frames else None)
                return Curated(
                    "export",
                    dataset=ds,
                    review_id=review_id,
                    at_risk=True,
                    pixels_changed=triage.has_regions,
                )
            record.status, record.reason = "quarantined", Reason.BURNED_IN_UNVERIFIED
            record_object(self.project, self.release, record)
            return Curated(
                "quarantine", Reason.BURNED_IN_UNVERIFIED, review_id=review_id, at_risk=True
            )
        boxes, text = self._read(frames)
        if boxes:
            return self._text_found(
                ds, frames, boxes, text, record, decision, changed=triage.has_regions
            )
        record.reason = Reason.NO_TEXT_FOUND
        if triage.has_regions:
            # Only now is the header's claim true: regions blanked and nothing left to read.
            ds.BurnedInAnnotation = "NO"
        record_object(self.project, self.release, record, frames[0] if frames else None)
        return Curated(
            "export",
            dataset=ds,
            review_id=review_id,
            at_risk=True,
            ocr_ran=True,
            pixels_changed=triage.has_regions,
            pixel_text=text,
        )


def _review_id(path: Path, read: ObjectRead | None) -> str:
    """The object's review ID: the SHA-256 (hex) of its file, from the bytes already read."""
    data = read.data if read is not None and read.data is not None else path.read_bytes()
    return hashlib.sha256(data).hexdigest()
