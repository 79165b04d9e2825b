"""Small DICOM objects and project settings for the curation tests (all values invented)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from ridl.projects import project_path
from tests.conftest import accept_test_edit

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def set_section(project_id: str, name: str, value: Any) -> None:
    """Write a table (e.g. [curation], [labels]) into a registered project's TOML."""
    path = project_path(project_id)
    data = tomllib.loads(path.read_text())
    data[name] = value
    path.write_text(tomli_w.dumps(data))
    accept_test_edit(project_id)  # the edit is recorded, as an office would


def ct_slice(
    series_uid: str,
    number: int,
    *,
    rows: int = 16,
    cols: int = 16,
    z: float | None = None,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    pixels: bool = True,
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = UID(CT_IMAGE)
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.ImageType = list(image_type)
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.ImagePositionPatient = [0.0, 0.0, 2.5 * number if z is None else z]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels:
        ds.PixelData = np.full((rows, cols), 100, dtype=np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def header(path: Path) -> Dataset:
    return dcmread(path, stop_before_pixels=True)


DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def burn_text(
    pixels: np.ndarray, lines: list[tuple[int, int, str]], size: int = 40, value: int | None = None
) -> np.ndarray:
    """``pixels`` (rows x columns) with each ``(x, y, text)`` drawn at ``value`` (default: max)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, size) if Path(FONT).exists() else ImageFont.load_default(size)
    mask = Image.new("L", (pixels.shape[1], pixels.shape[0]), 0)
    draw = ImageDraw.Draw(mask)
    for x, y, text in lines:
        draw.text((x, y), text, fill=255, font=font)
    out = pixels.copy()
    top = int(np.iinfo(pixels.dtype).max) if value is None else value
    out[np.asarray(mask) > 127] = top
    return out


def radiograph(rows: int = 1250, cols: int = 1000, seed: int = 0) -> np.ndarray:
    """A smooth 12-bit picture with noise, like a projection radiograph's exposure field."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    body = 1800 + 900 * np.exp(
        -(((xx - cols / 2) / (cols / 3)) ** 2 + ((yy - rows / 2) / (rows / 2.5)) ** 2)
    )
    noisy = body + rng.normal(0, 60, (rows, cols))
    return np.clip(noisy, 0, 4000).astype(np.uint16)


def as_dx(source: Path, target: Path, pixels: np.ndarray) -> Path:
    """A DX ORIGINAL/PRIMARY copy of ``source`` (a synthetic CR) with ``pixels``, no Burned In
    Annotation; the patient and study are the source's (all invented)."""
    ds = dcmread(source)
    ds.SOPClassUID = UID(DX_IMAGE)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "DX"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    if "BurnedInAnnotation" in ds:
        del ds.BurnedInAnnotation
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target
