"""Is the object whole? Checks that decide between reading it and quarantining it.

pydicom reads a file whose pixel data was cut short without complaint, so the length of native
pixel data and the framing of encapsulated pixel data are checked here explicitly.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError


class Rejected(Exception):
    """The object must be quarantined; ``reason`` is a short code safe to log and count."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(reason)


def read_whole(path: Path) -> Dataset:
    """Read a whole object (pixel bytes included, never decoded) or raise :class:`Rejected`."""
    try:
        ds = dcmread(path)
    except InvalidDicomError:
        raise Rejected("not-dicom") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Rejected("unreadable", type(exc).__name__) from None
    except Exception as exc:  # pydicom raises many kinds on corrupt input
        raise Rejected("unreadable", type(exc).__name__) from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise Rejected("unreadable", "no transfer syntax")
    check_pixel_data(ds)
    return ds


def expected_native_length(ds: Dataset) -> int:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    bits = int(ds.BitsAllocated)
    count = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * frames
    return (count * bits + 7) // 8


def check_pixel_data(ds: Dataset) -> None:
    """Raise ``Rejected('truncated')`` when pixel data is shorter than the header says."""
    if "PixelData" not in ds:
        return
    try:
        elem = ds["PixelData"]
        value = elem.value
    except Exception as exc:
        raise Rejected("truncated", type(exc).__name__) from None
    if value is None:
        raise Rejected("truncated", "empty pixel data")
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        # Encapsulated: every item must be whole; a cut item fails to parse.
        _check_fragments(bytes(value))
        return
    try:
        expected = expected_native_length(ds)
    except (AttributeError, TypeError, ValueError):
        raise Rejected("unreadable", "incomplete image pixel description") from None
    if len(value) < expected:
        raise Rejected("truncated", "pixel data shorter than rows x columns x frames")


def _check_fragments(value: bytes) -> None:
    from pydicom.encaps import generate_fragments

    try:
        for _ in generate_fragments(value):
            pass
    except Exception:
        raise Rejected("truncated", "encapsulated pixel data is cut short") from None
