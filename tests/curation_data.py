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

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def set_section(project_id: str, name: str, value: Any) -> None:
    """Write a table (e.g. [curation], [labels]) into a registered project's TOML."""
    path = project_path(project_id)
    data = tomllib.loads(path.read_text())
    data[name] = value
    path.write_text(tomli_w.dumps(data))


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
