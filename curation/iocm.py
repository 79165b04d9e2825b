"""IHE IOCM: rejection notes and the instances they reject are never exported.

Corrections at a source PACS (exam split, merge, image deletion) reach the DIR as rejection
notes: Key Object Selection documents (PS3.3 A.59) whose Concept Name Code Sequence is one of the
rejection titles of CID 7011 (IHE RAD TF-3 IOCM, "Rejection Note"): 113001 Rejected for Quality
Reasons, 113037 Rejected for Patient Safety Reasons, 113038 Incorrect Modality Worklist Entry,
113039 Data Retention Policy Expired. The per-study work drops the notes and every instance their
Current Requested Procedure Evidence Sequence references; a later release retracts such
instances if an earlier release published them.

Curation floor (``curation/``): plain functions of headers; the per-study work (``flows.work``)
applies them before de-identification.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset

# Rejection note titles (Key Object Selection document title, coding scheme DCM).
REJECTION_CODES = frozenset({"113001", "113037", "113038", "113039"})
# Key Object Selection Document Storage.
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


def is_rejection_note(ds: Dataset) -> bool:
    """True for a Key Object Selection document titled with an IOCM rejection code (DCM)."""
    if str(getattr(ds, "SOPClassUID", "")) != KOS_SOP_CLASS:
        return False
    for code in getattr(ds, "ConceptNameCodeSequence", None) or []:
        if (
            str(getattr(code, "CodeValue", "")) in REJECTION_CODES
            and str(getattr(code, "CodingSchemeDesignator", "")) == "DCM"
        ):
            return True
    return False


def rejected_instances(headers: Iterable[Dataset]) -> set[str]:
    """SOP Instance UIDs referenced by the IOCM rejection notes among ``headers``.

    Looks in Current Requested Procedure Evidence Sequence > Referenced Series Sequence >
    Referenced SOP Sequence (PS3.3 C.17.2); notes of other titles reject nothing.
    """
    rejected: set[str] = set()
    for ds in headers:
        if not is_rejection_note(ds):
            continue
        for study in getattr(ds, "CurrentRequestedProcedureEvidenceSequence", None) or []:
            for series in getattr(study, "ReferencedSeriesSequence", None) or []:
                for ref in getattr(series, "ReferencedSOPSequence", None) or []:
                    uid = getattr(ref, "ReferencedSOPInstanceUID", None)
                    if uid:
                        rejected.add(str(uid))
    return rejected
