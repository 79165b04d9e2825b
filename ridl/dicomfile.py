"""Reading DICOM files as real archives hold them: with or without preamble and File Meta.

PS3.10 7.1 asks for a 128-byte preamble, ``DICM`` and File Meta Information, but archives and
their exports also hold bare data sets (the pre-PS3.10 "DICOM stream" form, PS3.5 7.1) and files
that start at ``DICM``. dcmtk reads all three (it guesses the encoding of a bare data set from
its first bytes); pydicom reads only the first unless forced, and forced it reads anything. This
module reads all three and keeps random files out: a file read without File Meta counts as DICOM
only when its SOP Class and SOP Instance UIDs read as UIDs (PS3.5 9.1).

What is read has File Meta holding a Transfer Syntax UID (from the file, else from the encoding
detected: PS3.5 A.1, A.2, A.3), so writers can always write PS3.10 files. The preamble of what is
read is never passed on: :func:`clear_preamble` is what writers call (a dual-personality file's
TIFF header does not belong in a de-identified object).

Ground floor (``ridl/``): used by the folder source, the per-study work, curation and
de-identification alike.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

PREAMBLE = b"\x00" * 128
MAGIC = b"DICM"
# PS3.5 9.1: a UID is at most 64 characters of digits and dots, components without leading zeros.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_IDENTITY = ("SOPClassUID", "SOPInstanceUID")


def looks_like_uid(value: object) -> bool:
    """Whether ``value`` is a valid UID string (PS3.5 9.1: digits and dots, at most 64)."""
    text = str(value).rstrip("\x00 ")
    return 0 < len(text) <= 64 and _UID.match(text) is not None


def syntax_of(ds: Dataset) -> UID | None:
    """The transfer syntax of a data set read without File Meta, from the encoding pydicom
    detected (PS3.5 A.1 implicit VR little endian, A.2 explicit little, A.3 explicit big), or
    None when it detected none (implicit VR big endian is not a DICOM transfer syntax)."""
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian if little else None
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def complete_meta(ds: Dataset) -> Dataset:
    """Give ``ds`` File Meta with a Transfer Syntax UID (and the Media Storage UIDs) when the
    file had none; returns ``ds``. A transfer syntax the file states is kept as it is."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        syntax = syntax_of(ds)
        if syntax is not None:
            meta.TransferSyntaxUID = syntax
    for keyword, source in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        if keyword not in meta and source in ds:
            # An unreadable UID is left out: the writer refuses the object later.
            with contextlib.suppress(Exception):
                setattr(meta, keyword, str(ds[source].value))
    return ds


def clear_preamble(ds: Dataset) -> Dataset:
    """Drop the preamble read with ``ds`` so that it is written as 128 zero bytes (PS3.10 7.1:
    a preamble not used by an application is all zeros); returns ``ds``."""
    ds.preamble = None
    return ds


def read_file(
    source: str | Path | BinaryIO,
    *,
    stop_before_pixels: bool = False,
    specific_tags: Sequence[str] | None = None,
) -> Dataset:
    """Read a DICOM file, with or without preamble and File Meta (see the module docstring).

    Args:
        source: a path, or a binary file object at offset 0.
        stop_before_pixels: stop before Pixel Data (header only).
        specific_tags: read only these keywords (the SOP Class and SOP Instance UIDs are
            added, to tell DICOM from other files).

    Returns:
        The data set, its File Meta holding a Transfer Syntax UID where one is known.

    Raises:
        InvalidDicomError: not DICOM: no ``DICM`` and no data set with readable SOP Class and
            SOP Instance UIDs.
        OSError, EOFError, ValueError and what else pydicom raises on a damaged DICOM file.
    """
    tags = None if specific_tags is None else list(dict.fromkeys([*specific_tags, *_IDENTITY]))
    fp: BinaryIO
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            return _read(handle, stop_before_pixels, tags)
    fp = source
    return _read(fp, stop_before_pixels, tags)


def _read(fp: BinaryIO, stop_before_pixels: bool, tags: list[str] | None) -> Dataset:
    start = fp.read(132)
    fp.seek(0)
    if len(start) == 132 and start[128:132] == MAGIC:
        ds = dcmread(fp, stop_before_pixels=stop_before_pixels, specific_tags=tags)
        return complete_meta(ds)
    if start[:4] == MAGIC:  # File Meta without the preamble
        fp = io.BytesIO(PREAMBLE + fp.read())
        ds = dcmread(fp, stop_before_pixels=stop_before_pixels, specific_tags=tags)
        ds.preamble = None
        return complete_meta(ds)
    try:
        ds = dcmread(fp, force=True, stop_before_pixels=stop_before_pixels, specific_tags=tags)
        plausible = all(looks_like_uid(ds[k].value) for k in _IDENTITY if k in ds) and all(
            k in ds for k in _IDENTITY
        )
    except Exception:  # forced reading of a file that is not DICOM fails in many ways
        plausible = False
    if not plausible:
        raise InvalidDicomError("not a DICOM file: no DICM prefix and no readable data set")
    ds.preamble = None
    complete_meta(ds)
    if "TransferSyntaxUID" not in ds.file_meta:
        raise InvalidDicomError("a data set without File Meta in an encoding DICOM does not have")
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """``ds`` as PS3.10 file bytes: a zero preamble, ``DICM``, File Meta, then the data set in
    the transfer syntax File Meta names (PS3.10 7.1).

    Unlike ``Dataset.save_as``, a data set read in big endian and given a little endian transfer
    syntax (new pixel data is written little endian only) is converted, not refused.

    Raises:
        ValueError: File Meta lacks what PS3.10 requires (pydicom's message), or a value does
            not fit its VR.
    """
    from pydicom.filewriter import dcmwrite

    clear_preamble(ds)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
