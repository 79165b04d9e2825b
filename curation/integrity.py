"""Is the object whole? Checks that decide between reading it and quarantining it.

pydicom reads a file whose pixel data was cut short without complaint, so the length of native
pixel data and the framing of encapsulated pixel data are checked here explicitly; it also
keeps only the last of a top-level element written twice, which is checked here too.

Curation floor (``curation/``): the ``integrity`` and ``no-pixel-data`` checks and
:meth:`curation.checks.CheckObject.whole` read objects through :func:`read_whole`.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError

from ridl.dicomfile import read_file
from ridl.errors import ObjectRejected
from ridl.reasons import Reason

# Float Pixel Data, Double Float Pixel Data and Pixel Data (PS3.3 C.7.6.3, C.7.6.3.1.8).
PIXEL_DATA_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)


def has_pixel_data(ds: Dataset) -> bool:
    """Whether ``ds`` (read whole, pixels included) holds pixel data of any kind.

    Pixel steps (burned-in triage, region cleaning, text detection) apply only to objects that
    do: a structured report, key object or presentation state has nothing to decode.

    Args:
        ds: a whole object as :func:`read_whole` gives it.

    Returns:
        True when Pixel Data, Float Pixel Data or Double Float Pixel Data is present.
    """
    return any(tag in ds for tag in PIXEL_DATA_TAGS)


def read_whole(path: Path) -> Dataset:
    """Read a whole object (pixel bytes included, never decoded), with or without preamble and
    File Meta (:func:`ridl.dicomfile.read_file`: File Meta is completed from the encoding).

    Raises:
        ObjectRejected: ``not-dicom``, ``unreadable`` or ``truncated``.
    """
    try:
        ds = read_file(path)
    except Exception as exc:  # pydicom raises many kinds on corrupt input
        raise _rejection(exc) from None
    return _checked(ds)


def _rejection(exc: BaseException) -> ObjectRejected:
    """The rejection a failed read of a whole object stands for (``not-dicom``, ``unreadable``)."""
    if isinstance(exc, InvalidDicomError):
        return ObjectRejected(Reason.NOT_DICOM)
    return ObjectRejected(Reason.UNREADABLE, type(exc).__name__)


def _checked(ds: Dataset) -> Dataset:
    """``ds`` once it is known whole (transfer syntax, value lengths, pixel data)."""
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise ObjectRejected(Reason.UNREADABLE, "no transfer syntax")
    check_value_lengths(ds)
    check_element_order(ds)
    check_pixel_data(ds)
    return ds


class ObjectRead:
    """One read of an object's file: its bytes, parsed once by pydicom, shared by every step.

    The per-study work reads each file once (:meth:`from_path`): the header (:attr:`header`,
    what ``read_file(path, stop_before_pixels=True)`` gives) and the whole object
    (:meth:`whole`, what :func:`read_whole` gives) come from that one parse, the curation's
    review ID hashes :attr:`data`, and the fast path de-identifies :attr:`data` without opening
    the file again. The header is a separate :class:`~pydicom.dataset.Dataset` over the same
    raw elements, so what curation and de-identification change in the whole object never shows
    in the header the study's other objects are checked against.

    :meth:`release` drops the bytes and the whole object (a study too big to hold in memory);
    :meth:`whole` then reads the file again.
    """

    def __init__(self, path: Path, data: bytes | None, header: Dataset) -> None:
        self.path = path
        self.data = data
        self.header = header
        self._whole: Dataset | None = None
        self._error: ObjectRejected | None = None
        self._checked = False

    @classmethod
    def from_path(cls, path: Path) -> ObjectRead:
        """Read ``path`` once: its bytes, the whole data set, the header view of it.

        Raises:
            InvalidDicomError, OSError and what else pydicom raises: as
                ``ridl.dicomfile.read_file(path, stop_before_pixels=True)`` raises them (the
                header cannot be read); a whole object that cannot be read is rejected later,
                by :meth:`whole`.
        """
        data = path.read_bytes()
        try:
            whole = read_file(io.BytesIO(data))
        except Exception as exc:  # the header alone may still read: rejected by whole()
            read = cls(path, data, read_file(io.BytesIO(data), stop_before_pixels=True))
            read._error = _rejection(exc)
            return read
        read = cls(path, data, header_view(whole))
        read._whole = whole
        return read

    def whole(self) -> Dataset:
        """The whole object (pixel bytes included, never decoded), checked as
        :func:`read_whole` checks it; the same dataset on every call.

        Raises:
            ObjectRejected: ``not-dicom``, ``unreadable`` or ``truncated``.
        """
        if self._error is not None:
            raise self._error
        if self._whole is None:
            self._whole = read_whole(self.path)
            self._checked = True
        if not self._checked:
            try:
                _checked(self._whole)
            except ObjectRejected as rej:
                self._error = rej
                raise
            self._checked = True
        return self._whole

    def release(self) -> None:
        """Drop the bytes and the whole object (kept: the header); :meth:`whole` reads again."""
        self.data = None
        self._whole = None
        self._error = None
        self._checked = False


def header_view(whole: Dataset) -> Dataset:
    """The header of a whole object just read: its top-level elements before the first pixel
    data element (PS3.3 C.7.6.3: Pixel, Float or Double Float Pixel Data) in file order, as
    ``stop_before_pixels`` reads them, in a dataset of its own.

    Raw elements (immutable) are shared; elements the reader already converted and File Meta
    are copied, so a change to either dataset never shows in the other.
    """
    view = copy.copy(whole)
    elements = {}
    for tag, elem in whole._dict.items():
        if tag in PIXEL_DATA_TAGS:
            break
        elements[tag] = _own(elem)
    view._dict = elements
    view._private_blocks = {}
    meta = getattr(whole, "file_meta", None)
    if meta is not None:
        view.file_meta = FileMetaDataset({tag: _own(elem) for tag, elem in meta._dict.items()})
    return view


def _own(elem: Any) -> Any:
    """An element the other dataset may share: a raw one (immutable) as it is, a converted one
    copied (a sequence deeply: its items are datasets)."""
    if type(elem) is RawDataElement:
        return elem
    return copy.deepcopy(elem) if elem.VR == "SQ" else copy.copy(elem)


def check_value_lengths(ds: Dataset) -> None:
    """Raise ``ObjectRejected('truncated')`` when a top-level value holds fewer bytes than its
    defined Value Length says (PS3.5 7.1): the file ends inside that value.

    pydicom reads the bytes that are there and does not complain, so an object cut inside its
    last element (not the pixel data: :func:`check_pixel_data`) would otherwise read as whole.
    Elements already converted and undefined lengths are not checked here.

    Raises:
        ObjectRejected: ``truncated``, naming the element's tag (never its value).
    """
    for tag, raw in ds.items():
        if type(raw) is not RawDataElement or raw.length == 0xFFFFFFFF or tag in PIXEL_DATA_TAGS:
            continue
        value = raw.value
        if isinstance(value, bytes) and len(value) < raw.length:
            raise ObjectRejected(Reason.TRUNCATED, f"value of {tag} is cut short")


# VRs whose Explicit VR element header is 12 bytes (PS3.5 7.1.2): the others' is 8.
_LONG_HEADER_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)


def check_element_order(ds: Dataset) -> None:
    """Raise ``ObjectRejected('duplicate-element')`` when a top-level element's tag appears
    twice in the file (PS3.5 7.1: the elements of a data set each once, in ascending order).

    pydicom keeps the last value of a repeated tag in the place of the first, so the first
    value is in no dataset: the study's identifier dictionary never sees it (a second Patient
    Name would hide the first from verification) while the object still holds it. Seen from
    the raw elements' file offsets, in the order read: a value found before the one ahead of
    it (the tag came again further on), or bytes left between one value's end and the next
    element's header, as many as an element's (the tag came again right after). Elements
    already converted and undefined lengths are not checked against their neighbours.

    Raises:
        ObjectRejected: ``duplicate-element``, naming the tag (never a value).
    """
    implicit = getattr(ds, "original_encoding", (None, None))[0]
    last_tell = -1
    end: int | None = None  # where the element before ends, when known
    for tag, raw in ds.items():
        if type(raw) is not RawDataElement:
            end = None
            continue
        if raw.value_tell <= last_tell:
            raise ObjectRejected(Reason.DUPLICATE_ELEMENT, f"{tag} appears again further on")
        header = 8 if implicit or raw.VR not in _LONG_HEADER_VRS else 12
        if end is not None and raw.value_tell - header - end >= 8:
            raise ObjectRejected(Reason.DUPLICATE_ELEMENT, f"bytes left before {tag}")
        last_tell = raw.value_tell
        end = None if raw.length == 0xFFFFFFFF else raw.value_tell + raw.length


def expected_native_length(ds: Dataset) -> int:
    """Bytes native (uncompressed) pixel data must hold: rows x columns x samples per pixel x
    frames x bits allocated, rounded up to whole bytes (PS3.5 8.1.1, PS3.3 C.7.6.3).

    Raises:
        AttributeError: a required Image Pixel attribute is missing.
    """
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    bits = int(ds.BitsAllocated)
    count = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * frames
    return (count * bits + 7) // 8


def check_pixel_data(ds: Dataset) -> None:
    """Raise ``ObjectRejected('truncated')`` when pixel data is shorter than the header says.

    Encapsulated pixel data (PS3.5 A.4) must parse into whole fragments; native pixel data must
    be at least :func:`expected_native_length` bytes. No pixel data: nothing to check.

    Raises:
        ObjectRejected: ``truncated`` (short, empty or unreadable pixel data, a cut fragment),
            or ``unreadable`` (the Image Pixel description is incomplete).
    """
    if "PixelData" not in ds:
        return
    try:
        elem = ds["PixelData"]
        value = elem.value
    except Exception as exc:
        raise ObjectRejected(Reason.TRUNCATED, type(exc).__name__) from None
    if value is None:
        raise ObjectRejected(Reason.TRUNCATED, "empty pixel data")
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        # Encapsulated: every item must be whole; a cut item fails to parse.
        _check_fragments(bytes(value))
        return
    try:
        expected = expected_native_length(ds)
    except (AttributeError, TypeError, ValueError):
        raise ObjectRejected(Reason.UNREADABLE, "incomplete image pixel description") from None
    if len(value) < expected:
        raise ObjectRejected(Reason.TRUNCATED, "pixel data shorter than rows x columns x frames")


def _check_fragments(value: bytes) -> None:
    from pydicom.encaps import generate_fragments

    try:
        for _ in generate_fragments(value):
            pass
    except Exception:
        raise ObjectRejected(Reason.TRUNCATED, "encapsulated pixel data is cut short") from None
