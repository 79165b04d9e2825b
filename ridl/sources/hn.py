"""The health number and the subject key, read from headers: one reader for every source.

There is no master patient index: the provincial health number (HN), carried in an item of Other
Patient IDs Sequence (0010,1002) whose Issuer of Patient ID (0010,0021) is the project's
``hn_issuer``, is the key that links a subject's studies across sites (PS3.3 C.7.1.1). Without it
the subject key is the couplet (Issuer of Patient ID, Patient ID). The folder source's index,
the DIMSE and QIDO-RS catalogs, the per-study work and ``ridl deid`` all read it here, so a
subject gets the same research ID whatever the source.

Ground floor (``ridl/sources/``): it reads attributes only (no pydicom import), so any object
with pydicom's attribute names (a Dataset, a C-FIND or QIDO-RS identifier) will do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from ridl.studies import StudyRef

# {(the sequence's raw bytes and encoding, the header's Specific Character Set, hn_issuer):
# health number}: the objects of a series carry the same Other Patient IDs Sequence byte for
# byte, and parsing it is most of the cost of reading it.
_READ: dict[tuple[Any, ...], str | None] = {}
_READ_CAP = 65_536


def health_number(ds: Any, hn_issuer: str) -> str | None:
    """The health number of a header (a pydicom Dataset or any object with the same attributes).

    Returns the Patient ID of the first Other Patient IDs Sequence item whose Issuer of Patient ID
    is ``hn_issuer`` (surrounding spaces removed), or None when no such item has a value. A
    sequence still unparsed in a pydicom Dataset whose bytes were read before is not parsed
    again (the answer is remembered per process, bounded).
    """
    key = _raw_key(ds, hn_issuer)
    if key is not None and key in _READ:
        return _READ[key]
    found = None
    for item in getattr(ds, "OtherPatientIDsSequence", None) or []:
        if str(getattr(item, "IssuerOfPatientID", "")).strip() == hn_issuer:
            value = str(getattr(item, "PatientID", "")).strip()
            if value:
                found = value
                break
    if key is not None:
        if len(_READ) >= _READ_CAP:
            _READ.clear()
        _READ[key] = found
    return found


def _raw_key(ds: Any, hn_issuer: str) -> tuple[Any, ...] | None:
    """What decides the health number of ``ds`` when its Other Patient IDs Sequence
    (0010,1002) is still raw bytes in a pydicom Dataset (``get_item`` gives them unparsed),
    else None."""
    get_item = getattr(ds, "get_item", None)
    if get_item is None:
        return None
    try:
        raw = get_item(0x00101002)
        charset = get_item(0x00080005)
    except Exception:  # noqa: BLE001 - read the usual way, which says what is wrong
        return None
    value = getattr(raw, "value", None)
    if not isinstance(value, bytes) or not hasattr(raw, "is_little_endian"):
        return None
    codes = getattr(charset, "value", None)
    if isinstance(codes, list):
        codes = tuple(codes)
    if not isinstance(codes, str | bytes | tuple | type(None)):
        return None
    return (value, raw.is_little_endian, raw.is_implicit_VR, codes, hn_issuer)


def subject_from_headers(study: StudyRef, headers: Iterable[Any], hn_issuer: str) -> StudyRef:
    """The study with its subject key read from retrieved headers.

    Used when the catalog could not see Other Patient IDs Sequence: the header of the study's
    own patient couplet is preferred (a study sent by two feeds may carry two couplets).
    ``headers`` are the study's instance headers (pydicom Datasets or alike); the study comes
    back unchanged when there are none, else with ``hn_known`` True and the couplet and health
    number of the chosen header.
    """
    chosen = None
    for ds in headers:
        issuer = str(getattr(ds, "IssuerOfPatientID", "") or "")
        patient_id = str(getattr(ds, "PatientID", "") or "")
        if chosen is None or (issuer, patient_id) == (study.issuer, study.patient_id):
            chosen = ds
            if (issuer, patient_id) == (study.issuer, study.patient_id):
                break
    if chosen is None:
        return study
    return replace(
        study,
        issuer=str(getattr(chosen, "IssuerOfPatientID", "") or "") or study.issuer,
        patient_id=str(getattr(chosen, "PatientID", "") or "") or study.patient_id,
        health_number=health_number(chosen, hn_issuer),
        hn_known=True,
    )
