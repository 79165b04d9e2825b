"""The curation of one object: checks, header triage, known-region cleaning, text detection.

``flows.work`` calls :meth:`Curator.curate` for every object that survives IOCM and the scope; the
answer says whether to export the (possibly cleaned) dataset, exclude the object or quarantine it,
with a short reason. Review decisions of the release are honoured here: an approved object is
exported even when text was detected, a rejected one is excluded.

Curation floor (``curation/``): this module composes the others (checks, burned-in triage,
pixel cleaning, OCR, review records) into the one call ``flows`` makes per object.
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
from curation.review import Decisions, ReviewRecord, record_object
from ridl.errors import ObjectRejected
from ridl.reasons import Reason

Outcome = Literal["export", "exclude", "quarantine"]


@dataclass
class Curated:
    """The curation of one object: ``export`` (``dataset`` is the whole, possibly cleaned,
    object), ``exclude`` or ``quarantine`` with a reason code and detail (no PHI).

    ``review_id`` is the SHA-256 of the source object when a reviewer may decide on it;
    ``at_risk`` and ``ocr_ran`` say what the burned-in text steps did; ``pixel_text`` is the
    text OCR read (never stored or logged).
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
    # The text curation's OCR read in the pixels, one string per line (PHI: kept in memory
    # only). The stream verification (flows.work) searches it, so pixels are never read twice.
    pixel_text: tuple[str, ...] = ()


@dataclass
class CurationStats:
    """Per-worker counts: objects curated, at risk of burned-in text, cleaned, read by OCR."""

    objects: int = 0
    at_risk: int = 0
    cleaned: int = 0
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

    def curate(self, path: Path, header: Dataset, study: StudyView, study_key: str) -> Curated:
        """Curate the object at ``path`` (``header``: read without pixels).

        Checks run first (a quarantine a reviewer approved goes on); an object not at risk of
        burned-in text is exported as read; one at risk has known regions blanked and, when the
        policy says so, is read by OCR: text found quarantines it (``burned-in-text``) unless a
        reviewer approved it, a reviewer's rejection excludes it. A review record is written for
        each at-risk object. ``study_key`` names the study in review records.

        Rejections are returned as verdicts, not raised (an ``ObjectRejected`` from reading the
        object becomes a quarantine).

        Raises:
            ConfigError: the review decisions file has a bad line.
        """
        self.stats.objects += 1
        triage = self.triage(header)
        needs_decoding = triage.at_risk and (self.policy.ocr or triage.has_regions)
        obj = CheckObject(path, header, study, self.policy, needs_decoding=needs_decoding)
        verdict = run_checks(self.checks, obj)
        if verdict.action == "quarantine" and path.exists():
            # A reviewer may release an object a check held back (an odd series, say).
            review_id = hashlib.sha256(path.read_bytes()).hexdigest()
            if self.decisions.get(review_id) != "approve":
                return Curated("quarantine", verdict.reason, verdict.detail, review_id=review_id)
        elif verdict.action != "pass":
            return Curated(verdict.action, verdict.reason, verdict.detail)
        try:
            ds = obj.whole()
        except ObjectRejected as rej:
            return Curated("quarantine", rej.reason, rej.detail)
        if not triage.at_risk:
            return Curated("export", dataset=ds)
        self.stats.at_risk += 1
        return self._burned_in(path, ds, triage, study_key)

    def _burned_in(self, path: Path, ds: Dataset, triage: TriageResult, study_key: str) -> Curated:
        from curation.pixels import CleaningError, clean_regions, frames_for_ocr

        review_id = hashlib.sha256(path.read_bytes()).hexdigest()
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
            if decision == "approve":
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
                "quarantine", Reason.PIXEL_DECODE_FAILED, type(exc).__name__, review_id=review_id
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
        from curation.ocr import detect_text

        self.stats.ocr += 1
        read: list[str] = []
        boxes = detect_text(
            frames,
            min_score=self.policy.ocr_min_score,
            min_chars=self.policy.ocr_min_chars,
            texts=read,
        )
        record.boxes = [b.as_dict() for b in boxes]
        if boxes and decision != "approve":
            record.status, record.reason = "quarantined", Reason.BURNED_IN_TEXT
            record_object(self.project, self.release, record, frames[0] if frames else None)
            return Curated(
                "quarantine", Reason.BURNED_IN_TEXT, review_id=review_id, at_risk=True, ocr_ran=True
            )
        if boxes:
            record.reason = Reason.APPROVED_WITH_TEXT
        else:
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
            pixel_text=tuple(read),
        )
