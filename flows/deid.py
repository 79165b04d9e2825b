"""De-identify a folder of DICOM files with a project's recipe and keys, outside any run.

Why a standalone path: one-off requests, checking what a recipe does to real files, and the
benchmark all need the engine without a catalog, a release or an object store. It uses exactly
the per-object steps of a run (read whole, de-identify, write), so what it produces is what a
run would export; objects it cannot de-identify with certainty are quarantined on premises
under the project's ``adhoc`` release with their reason, never written to the destination.

A one-off request is held to the project's approval as a run is: an object whose Modality,
Study Date or Issuer of Patient ID is outside the approved scope, or whose subject opted out or
withdrew, is excluded (counted under its reason, neither written nor quarantined: it is simply
not part of the request); an expired approval refuses the whole request. Each request is
audited (``deid.started`` and ``deid.ended``, counts only: never a path or a header value).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from curation.integrity import check_pixel_data
from curation.quarantine import quarantine_file
from deid_recipes.engine import DeidError, Engine, SubjectContext
from deid_recipes.fastpath import deidentify_file
from deid_recipes.recipe import load_recipe
from ridl import audit
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


@dataclass
class DeidSummary:
    """What a folder de-identification did: counts only, never a value from a header."""

    files: int = 0
    exported: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    subjects: set[str] = field(default_factory=set)
    quarantined: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """Counts as JSON-ready values (files, bytes in and out, subjects, reasons for
        quarantine and for exclusion)."""
        return {
            "files": self.files,
            "exported": self.exported,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "subjects": len(self.subjects),
            "quarantined": dict(sorted(self.quarantined.items())),
            "excluded": dict(sorted(self.excluded.items())),
        }


class FolderDeidentifier:
    """A project's engine and keys, and how to get a subject from a header."""

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

    def exclusion(self, path: Path) -> Reason | None:
        """Why the object is outside the project's approval, or None when it is inside.

        Reads only the header elements that decide it: Modality (0008,0060), Study Date
        (0008,0020; inclusive bounds, a missing date is not shown to be in scope), Issuer of
        Patient ID (0010,0021), and the subject (health number or patient couplet) against the
        opt-out list and the project's withdrawals. A file that cannot be read this way returns
        None: the de-identification path then quarantines it with its reason.
        """
        try:
            ds = read_file(path, stop_before_pixels=True, specific_tags=APPROVAL_TAGS)
        except Exception:  # noqa: BLE001 - not DICOM or damaged: the main path says why
            return None
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
        """Research ID and date shift from HN (Other Patient IDs) or the patient couplet.

        Called on the original header before any change, so it also holds back an object whose
        pixels carry burned-in text (no header rule sees it) for review, as a run does.
        """
        if str(ds.get("BurnedInAnnotation", "") or "").upper() == "YES":
            raise ObjectRejected(Reason.BURNED_IN_ANNOTATION)
        try:
            key = SubjectKey(
                health_number(ds, self.project.hn_issuer),
                str(ds.get("IssuerOfPatientID", "") or ""),
                str(ds.get("PatientID", "") or ""),
            )
        except Exception as exc:
            raise DeidError(Reason.DEID_UNPARSEABLE_ELEMENT, type(exc).__name__) from None
        return SubjectContext(self.keys.research_id(key), self.keys.date_shift_days(key))

    def deidentify_to(self, path: Path, dst: Path) -> tuple[str, int]:
        """De-identify one object into ``dst``; (research ID, bytes written).

        The fast path (header de-identified, pixel data copied by the kernel) serves the common
        layout; anything else goes through the whole-object path. Raises ObjectRejected / DeidError.
        """
        done = deidentify_file(self.engine, self.subject, path, lambda ds, s: target(dst, ds, s))
        if done is not None:
            _, subject, size = done
            return subject.research_id, size
        ds, data, subject = self.deidentify_bytes(path)
        out = target(dst, ds, subject)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(out)
        return subject.research_id, len(data)

    def deidentify_bytes(self, path: Path) -> tuple[Dataset, bytes, SubjectContext]:
        """Read, check, de-identify and encode one object; raise ObjectRejected or DeidError."""
        try:
            ds = read_file(path)
        except InvalidDicomError:
            raise ObjectRejected(Reason.NOT_DICOM) from None
        except Exception as exc:  # pydicom raises many kinds on corrupt input
            raise ObjectRejected(Reason.UNREADABLE, type(exc).__name__) from None
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
            raise ObjectRejected(Reason.UNREADABLE, "no transfer syntax")
        check_pixel_data(ds)
        subject = self.subject(ds)
        self.engine.apply(ds, subject)
        return ds, to_bytes(ds), subject


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
) -> DeidSummary:
    """De-identify every file under ``src`` into ``dst/<research id>/<study>/<series>/``.

    Objects outside the project's approval are excluded and counted (see
    :meth:`FolderDeidentifier.exclusion`); the request is audited (``deid.started`` with the
    project and file count, ``deid.ended`` with the counts of :meth:`DeidSummary.as_dict`).

    Raises:
        ConfigError: ``dst`` is not a writable folder, or the project's secret or recipe is wrong.
        ProjectNotFound: the project is not in the registry.
        ScopeError: the project's approval has expired.
    """
    worker = FolderDeidentifier(project_id)
    check_destination(dst)
    summary = DeidSummary()
    files = list(iter_files(src))
    audit.record(
        "deid.started",
        project=project_id,
        reb_number=worker.project.reb_number,
        files=len(files),
        recipe=worker.project.recipe_spec(),
    )
    for path in files:
        summary.files += 1
        summary.bytes_in += path.stat().st_size
        reason = worker.exclusion(path)
        if reason is not None:
            summary.excluded[reason] += 1
            if on_file is not None:
                on_file()
            continue
        try:
            research_id, size = worker.deidentify_to(path, dst)
        except ObjectRejected as rej:
            _quarantine(project_id, path, rej.reason, rej.detail, summary)
        except Exception as exc:  # never let one object stop the batch
            _quarantine(project_id, path, Reason.WRITE_FAILED, type(exc).__name__, summary)
        else:
            summary.exported += 1
            summary.bytes_out += size
            summary.subjects.add(research_id)
        if on_file is not None:
            on_file()
    audit.record("deid.ended", project=project_id, **summary.as_dict())
    return summary


def _quarantine(project: str, path: Path, reason: str, detail: str, summary: DeidSummary) -> None:
    quarantine_file(
        project, ADHOC_RELEASE, path, reason, source="deid", location=str(path), detail=detail
    )
    summary.quarantined[reason] += 1
