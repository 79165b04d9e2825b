"""Which objects are screened for burned-in text whatever their header says.

Header triage (:mod:`curation.burned_in`) trusts the header: Burned In Annotation, ultrasound,
secondary capture. An audit found a patient's name burned into the corner of projection
radiographs (DX, ORIGINAL/PRIMARY, no Burned In Annotation at all), so ridl also screens, by
text detection, every image object where burned-in text is common, and a sample of each
cross-sectional series:

- every image of the modalities in :data:`SCREENED_MODALITIES` (PS3.3 C.7.3.1.1.1 defined
  terms: CR, DX, MG, RF, XA, US, ES, XC, OT, SC, DOC, PX, IO, GM);
- every image whose Image Type (0008,0008, PS3.3 C.7.6.1.1.2) says DERIVED or SECONDARY, or
  names a screen capture (SCREEN, SAVE), whatever its modality;
- every Secondary Capture image (the SOP classes of PS3.3 A.8, 1.2.840.10008.5.1.4.1.1.7.x);
- for the cross-sectional modalities in :data:`SAMPLED_MODALITIES` (CT, MR, PT, NM), the first,
  middle and last image of each series by Instance Number (0020,0013) among the study's
  headers, and every DERIVED one (covered by the rule above).

Only objects that hold pixels are screened (Pixel Data, Float Pixel Data or Double Float Pixel
Data, PS3.3 C.7.6.3): see :func:`curation.integrity.has_pixel_data`.

Curation floor (``curation/``): :mod:`curation.pipeline` asks :func:`screening_scope` for every
object header triage did not put at risk; :class:`curation.checks.StudyView` keeps the samples
of a study's series.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset

from ridl.reasons import Reason

SCREENED_MODALITIES = frozenset(
    {"CR", "DX", "MG", "RF", "XA", "US", "ES", "XC", "OT", "SC", "DOC", "PX", "IO", "GM"}
)
SAMPLED_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})
SCREEN_IMAGE_TYPES = frozenset({"DERIVED", "SECONDARY", "SCREEN", "SAVE", "SCREEN SAVE"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def image_types(ds: Dataset) -> set[str]:
    """The values of Image Type (0008,0008), upper case (an empty set when absent)."""
    value = ds.get("ImageType")
    if value is None:
        return set()
    parts = [value] if isinstance(value, str) else list(value)
    return {str(p).strip().upper() for p in parts if str(p).strip()}


def class_scope(ds: Dataset) -> bool:
    """True when the header alone says the object is screened (modality, class, Image Type).

    ``ds`` is a header (pixels need not be read). See the module docstring for the rules.
    """
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in SCREENED_MODALITIES:
        return True
    if image_types(ds) & SCREEN_IMAGE_TYPES:
        return True
    return str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX)


def series_samples(headers: Iterable[Dataset]) -> frozenset[str]:
    """SOP Instance UIDs of the first, middle and last image of each cross-sectional series.

    ``headers`` are a study's headers; series of :data:`SAMPLED_MODALITIES` are ordered by
    Instance Number (objects without one last, then by SOP Instance UID); the middle one is the
    ``n // 2``-th of ``n``. Objects of other modalities, and headers without Rows (no image),
    are not sampled.
    """
    by_series: dict[str, dict[str, tuple[int, int, str]]] = {}
    for ds in headers:
        modality = str(ds.get("Modality", "") or "").strip().upper()
        if modality not in SAMPLED_MODALITIES or not ds.get("Rows"):
            continue
        sop = str(ds.get("SOPInstanceUID", ""))
        number = ds.get("InstanceNumber")
        try:
            key = (0, int(number), sop) if number not in (None, "") else (1, 0, sop)
        except (TypeError, ValueError):
            key = (1, 0, sop)
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), {})[sop] = key
    chosen: set[str] = set()
    for members in by_series.values():
        ordered = sorted(members.values())
        for i in {0, len(ordered) // 2, len(ordered) - 1}:
            chosen.add(ordered[i][2])
    return frozenset(chosen)


def screening_scope(header: Dataset, sampled: frozenset[str]) -> Reason | None:
    """Why ``header``'s object is screened, or None when it is not.

    ``sampled`` holds the SOP Instance UIDs of the study's series samples
    (:func:`series_samples`). Returns :attr:`Reason.SCREENED_CLASS` (modality, class or Image
    Type) or :attr:`Reason.SCREENED_SERIES_SAMPLE` (a sampled cross-sectional image).
    """
    if class_scope(header):
        return Reason.SCREENED_CLASS
    if str(header.get("SOPInstanceUID", "")) in sampled:
        return Reason.SCREENED_SERIES_SAMPLE
    return None
