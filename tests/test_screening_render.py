"""What text detection is shown: frames as a viewer renders them, only those it needs decoded,
and strips read in tiles. From a fresh-user check: a name drawn at 1,023 on 0 beside one pixel
at 65,535 reached the detector at grey 3 of 255; a PALETTE COLOR name was read as palette
indices 0 and 1; a 40,000 x 40 strip made the detector take 20 GB. All values invented.
"""

from __future__ import annotations

import copy

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from curation.ocr import STRIP_ASPECT, _tiles, read_lines
from curation.pixels import frames_for_ocr, to_uint8
from tests.curation_data import burn_text

NAME = [(20, 30, "GAGNON CHLOE")]


def _image(
    rows: int, columns: int, pixels: np.ndarray, photometric: str = "MONOCHROME2"
) -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.PhotometricInterpretation = rows, columns, photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = pixels.tobytes()
    return ds


def test_a_hot_pixel_does_not_dim_the_text_and_a_plain_frame_keeps_its_range() -> None:
    text = burn_text(np.zeros((120, 400), np.uint16), NAME, 32, 1023)
    text[0, 0] = 65535  # one hot detector pixel
    shown = to_uint8(text)
    assert shown[text == 1023].min() == 255, "the name is drawn white"
    assert read_lines([shown]), "and read"
    plain = burn_text(np.full((120, 400), 100, np.uint16), NAME, 32, 1023)
    low, high = float(plain.min()), float(plain.max())
    before = ((plain.astype(np.float32) - low) * (255.0 / (high - low))).astype(np.uint8)
    assert np.array_equal(to_uint8(plain), before), "lowest to highest, as before"


def test_palette_color_is_shown_through_its_palette() -> None:
    indices = burn_text(np.zeros((120, 400), np.uint8), NAME, 32, 1)  # the name: index 1
    indices[0, 0] = 255
    ds = _image(120, 400, indices, "PALETTE COLOR")
    ds.SamplesPerPixel = 1
    lut = np.zeros(256, np.uint16)
    lut[1] = 65535  # index 1 is white
    for color in ("Red", "Green", "Blue"):
        setattr(ds, f"{color}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{color}PaletteColorLookupTableData", lut.tobytes())
    (frame,) = frames_for_ocr(ds)
    assert frame.shape == (120, 400, 3)
    assert frame[indices == 1].min() == 255 and read_lines([frame])


def test_only_the_frames_screened_are_decoded_and_they_are_the_same() -> None:
    clip = np.random.default_rng(5).integers(0, 200, size=(30, 64, 80), dtype=np.uint8)
    clip[15] = burn_text(clip[15], [(4, 20, "AB")], 20, 255)
    ds = _image(64, 80, clip)
    ds.NumberOfFrames = 30
    ds.compress(RLELossless, generate_instance_uid=False)
    picked = frames_for_ocr(ds)  # frames 0, 15 and 29, each decoded alone
    whole = frames_for_ocr(ds, copy.deepcopy(ds).pixel_array)
    assert len(picked) == 3 and all(
        np.array_equal(a, b) for a, b in zip(picked, whole, strict=True)
    )
    assert not hasattr(ds, "_pixel_array") or ds._pixel_array is None, "no whole decode"


def test_a_strip_is_read_in_overlapping_tiles_and_its_text_found_where_it_is() -> None:
    strip = np.zeros((48, 6000), np.uint8)
    tiles = list(_tiles(strip))
    assert all(t.shape == (48, min(STRIP_ASPECT * 48, 6000 - x)) for x, _, t in tiles)
    starts = [x for x, _, _ in tiles]
    assert starts[0] == 0 and starts[-1] + STRIP_ASPECT * 48 >= 6000
    assert all(b - a == STRIP_ASPECT * 48 // 2 for a, b in zip(starts, starts[1:], strict=False))
    strip = burn_text(strip, [(5000, 8, "GAGNON CHLOE")], 28, 255)
    found = [line for line in read_lines([strip]) if "GAGNON" in line.text.upper()]
    assert found and 4990 <= found[0].x0 <= 5010, [(line.text, line.x0) for line in found]
