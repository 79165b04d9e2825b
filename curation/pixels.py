"""Blank known text regions in every frame, keeping the transfer syntax where it can.

The regions come from header triage (``coordinates``, ``ctpcoordinates``, ``keepcoordinates``,
``keepcoordinates from:SequenceOfUltrasoundRegions``) and are applied by deid's own mask code
(``deid.dicom.pixels.clean.clean_pixel_data``), so a recipe blanks here exactly what it blanks in
deid. Writing back: native pixel data keeps its transfer syntax; RLE Lossless and JPEG 2000
Lossless are re-encoded in the same syntax; anything else (lossy JPEG, JPEG-LS without an
encoder) is re-encoded losslessly as JPEG 2000 Lossless, or RLE Lossless when that fails. The SOP
Instance UID is left for de-identification to map.

:func:`blank_boxes` blanks the boxes text detection found (``burned_in_text = "redact"``) with
the same writing-back rules.

Curation floor (``curation/``): :mod:`curation.pipeline` calls it for objects whose triage gave
regions and for detected text under the redact policy; transfer syntaxes per PS3.5 Section 10 and
Annex A.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from curation.burned_in import quiet_deid
from curation.decoding import RLE_EXTRA_ROWS, failure_detail, frames_mismatch, install_decoders
from ridl.errors import ObjectRejected
from ridl.reasons import Reason

# Every decode of this process goes through here first: GDCM only in a child process, RLE
# segments that decode longer than the header's image refused.
install_decoders()

# Encapsulated syntaxes pydicom can write back as they were (with the encoders installed).
REENCODABLE = (RLELossless, JPEG2000Lossless)


class CleaningError(ObjectRejected):
    """The pixels could not be decoded, cleaned or written back; reason is a short code."""


class FrameMismatch(CleaningError):
    """The compressed frames hold another image than the header says (``pixel-header-mismatch``,
    :func:`curation.decoding.frames_mismatch`): never decoded, never exported, even approved."""


def decoded_pixels(ds: Dataset) -> np.ndarray:
    """The pixels of ``ds`` as pydicom decodes them (frames x rows x columns [x samples]), once
    its compressed frames are known to hold the image its header describes.

    Raises:
        FrameMismatch: ``pixel-header-mismatch``, with what differs (sizes and counts only).
        Exception: what the decoder raises (``RuntimeError`` when every plug-in failed, the
            GDCM child's end included, see :mod:`curation.decoding`).
    """
    mismatch = frames_mismatch(ds)
    if mismatch:
        raise FrameMismatch(Reason.PIXEL_HEADER_MISMATCH, mismatch)
    try:
        return ds.pixel_array
    except RuntimeError as exc:  # pydicom's: every plug-in failed, their messages listed
        if RLE_EXTRA_ROWS in str(exc):
            raise FrameMismatch(Reason.PIXEL_HEADER_MISMATCH, RLE_EXTRA_ROWS) from None
        raise


def clean_regions(ds: Dataset, coordinates: Sequence[tuple[int, Any]]) -> np.ndarray:
    """Blank ``coordinates`` (deid's ``[mask, coordinate]`` pairs) in ``ds``; return the pixels.

    ``ds`` is changed in place: new pixel data, same transfer syntax where possible, and
    ``BurnedInAnnotation`` left as it is (the caller sets NO only once text detection agrees).
    Returns the cleaned pixel array (frames x rows x columns [x samples], original dtype).

    Raises:
        CleaningError: ``pixel-decode-failed`` (deid could not read the pixels),
            ``pixel-shape-unsupported`` or ``pixel-write-failed``.
    """
    quiet_deid()
    from deid.dicom.pixels.clean import clean_pixel_data

    results = {"results": [{"coordinates": [[int(m), _copy(v)] for m, v in coordinates]}]}
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    try:
        decoded_pixels(ds)  # checked and decoded once; deid's cleaning reuses pydicom's array
        cleaned = clean_pixel_data(ds, results)
    except FrameMismatch:
        raise
    except Exception as exc:
        raise CleaningError(Reason.PIXEL_DECODE_FAILED, failure_detail(exc)) from None
    if cleaned is None:
        raise CleaningError(Reason.PIXEL_SHAPE_UNSUPPORTED)
    try:
        original_dtype = ds.pixel_array.dtype
        cleaned = np.ascontiguousarray(cleaned.astype(original_dtype, copy=False))
        write_pixels(ds, cleaned, ts, photometric)
    except CleaningError:
        raise
    except Exception as exc:
        raise CleaningError(Reason.PIXEL_WRITE_FAILED, type(exc).__name__) from None
    return cleaned


def blank_boxes(ds: Dataset, boxes: Sequence[Any], margin: int = 2) -> np.ndarray:
    """Blank each box in every frame of ``ds`` (detected text, redaction); return the pixels.

    ``boxes`` have ``x0, y0, x1, y1`` pixel coordinates of a frame (inclusive, as
    :class:`curation.ocr.TextBox`); each is widened by ``margin`` pixels plus a fifth of its
    height (the detector's box hugs the glyphs) and set to 0 in every frame and sample, whichever
    frame it was found in: text burned in by a modality stays in place from frame to frame.
    ``ds`` is changed in place with the transfer syntax rules of :func:`write_pixels`; Burned In
    Annotation is left to the caller. Returns the blanked array (frames x rows x columns
    [x samples], original dtype).

    Raises:
        CleaningError: ``pixel-decode-failed`` or ``pixel-write-failed``.
    """
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    try:
        pixels = np.array(decoded_pixels(ds), copy=True)
    except FrameMismatch:
        raise
    except Exception as exc:
        raise CleaningError(Reason.PIXEL_DECODE_FAILED, failure_detail(exc)) from None
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    # Rows and columns are the last two axes, or the two before the samples axis.
    row_axis = pixels.ndim - (3 if samples > 1 else 2)
    for box in boxes:
        pad = margin + (int(box.y1) - int(box.y0)) // 5
        y0, y1 = max(0, int(box.y0) - pad), min(rows, int(box.y1) + pad + 1)
        x0, x1 = max(0, int(box.x0) - pad), min(cols, int(box.x1) + pad + 1)
        index: list[Any] = [slice(None)] * pixels.ndim
        index[row_axis], index[row_axis + 1] = slice(y0, y1), slice(x0, x1)
        pixels[tuple(index)] = 0
    if photometric.startswith("YBR"):
        photometric = "RGB"  # pydicom decodes YCbCr to RGB
    try:
        write_pixels(ds, np.ascontiguousarray(pixels), ts, photometric)
    except Exception as exc:
        raise CleaningError(Reason.PIXEL_WRITE_FAILED, type(exc).__name__) from None
    return pixels


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def write_pixels(ds: Dataset, arr: np.ndarray, ts: UID, photometric: str) -> None:
    """Put ``arr`` back into ``ds`` in ``ts`` if it can be written, losslessly otherwise.

    ``ts`` is the original transfer syntax; ``photometric`` its Photometric Interpretation
    (YBR becomes RGB, as pydicom decodes it). Native syntaxes are kept (Explicit VR Big Endian,
    retired, becomes Explicit VR Little Endian); encapsulated ones are re-encoded as RLE
    Lossless or JPEG 2000 Lossless (PS3.5 A.4), or left native when no encoder works.

    Raises:
        Exception: whatever pydicom raises when the array does not fit the header;
            :func:`clean_regions` turns it into ``CleaningError('pixel-write-failed')``.
    """
    # pydicom hands decoded YCbCr JPEG pixels back as RGB; say so in the header.
    new_photometric = photometric
    if ts.is_encapsulated and photometric.startswith("YBR"):
        new_photometric = "RGB"
    if ts.is_encapsulated and ds.get("SamplesPerPixel", 1) == 3:
        ds.PlanarConfiguration = 0
    # A big endian object decodes to big endian arrays: new pixel data is written in the
    # machine's order, which set_pixel_data expects.
    arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False))
    if ts == ExplicitVRBigEndian:
        # pydicom writes new pixel data in little endian only; the object is written in Explicit
        # VR Little Endian (PS3.5 A.2), the retired big endian syntax (PS3.5 A.3) left behind.
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_pixel_data(
        arr,
        photometric_interpretation=new_photometric,
        bits_stored=int(ds.BitsStored),
        generate_instance_uid=False,
    )
    if not ts.is_encapsulated:
        if ts != ExplicitVRBigEndian:
            ds.file_meta.TransferSyntaxUID = ts
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return
    targets = [ts] if ts in REENCODABLE else []
    targets += [t for t in (JPEG2000Lossless, RLELossless) if t not in targets]
    for target in targets:
        try:
            ds.compress(target, generate_instance_uid=False)
            return
        except Exception:  # try the next lossless syntax, else stay native (also lossless)
            continue


def frames_for_ocr(ds: Dataset, arr: np.ndarray | None = None, max_frames: int = 3) -> list[Any]:
    """Up to ``max_frames`` frames (first, middle, last) as 8-bit images for text detection.

    ``arr`` is pixels already decoded; else only the frames picked are decoded (pydicom's
    ``pixel_array(ds, index=i)``), after the check of :func:`decoded_pixels`: a 30-frame clip
    costs three decodes, not thirty. A list of uint8 arrays (H x W or H x W x 3): PALETTE
    COLOR through its palette (PS3.3 C.7.6.3.1.5), MONOCHROME1 inverted, so text is as a viewer
    shows it; each stretched by :func:`to_uint8`.

    Raises:
        FrameMismatch: as :func:`decoded_pixels` raises it; decoders' errors as they are.
    """
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if arr is None:
        count = int(ds.get("NumberOfFrames", 1) or 1)
        if count > max_frames:
            mismatch = frames_mismatch(ds)
            if mismatch:
                raise FrameMismatch(Reason.PIXEL_HEADER_MISMATCH, mismatch)
            from pydicom.pixels import pixel_array

            frames = [pixel_array(ds, index=i) for i in _pick(count, max_frames)]
        else:
            arr = decoded_pixels(ds)
    if arr is not None:
        multi = arr.ndim == 4 or (arr.ndim == 3 and samples == 1)
        frames = [arr[i] for i in _pick(len(arr), max_frames)] if multi else [arr]
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        frames = [apply_color_lut(frame, ds) for frame in frames]
    inverted = photometric == "MONOCHROME1"
    return [to_uint8(f, inverted) for f in frames]


def _pick(count: int, most: int) -> list[int]:
    if count <= most:
        return list(range(count))
    return sorted(
        {0, count // 2, count - 1} | {round(i * (count - 1) / (most - 1)) for i in range(most)}
    )[:most]


def to_uint8(frame: np.ndarray, inverted: bool = False) -> np.ndarray:
    """Stretch a frame to 0..255 (per frame: burned-in text is drawn at the extremes).

    From its lowest to its highest value; when a few outlying pixels (a hot or dead detector
    pixel, fewer than 1 in 2,000) take more than half of that range, from the 0.05th to the
    99.95th percentile instead, values beyond it clipped: one pixel at 65,535 would otherwise
    leave a name drawn at 1,023 on 0 at grey 3. A uint8 array of the frame's shape; a flat frame
    becomes all zeros (255 when inverted).
    """
    data = frame.astype(np.float32)
    low, high = float(data.min()), float(data.max())
    if high > low:
        sample = data[::4, ::4] if data.ndim >= 2 and data.size > 1 << 20 else data
        p_low, p_high = (float(v) for v in np.percentile(sample, (0.05, 99.95)))
        if p_high > p_low and (p_high - p_low) < (high - low) / 2:
            low, high = p_low, p_high
            data = np.clip(data, low, high)
    scaled = (data - low) * (255.0 / (high - low)) if high > low else np.zeros_like(data)
    if inverted:
        scaled = 255.0 - scaled
    return scaled.astype(np.uint8)
