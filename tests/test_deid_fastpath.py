"""The fast path (header bytes + kernel-copied pixels) gives what the dataset path gives."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from deid_recipes import Engine, SubjectContext, load_recipe
from deid_recipes.fastpath import deidentify_file
from ridl.pseudonyms import Pseudonymizer

SUBJECT = SubjectContext("RS-FAST", -77)
RECIPES = [
    "ridl-basic",
    "ridl-safe-public+ps3.15-basic",
    "ridl-safe-public+ps3.15-basic+ps3.15-retain-long-modified-dates+ps3.15-retain-uids",
    "ridl-safe-public+ps3.15-basic+ps3.15-retain-safe-private+ps3.15-retain-device-id",
    "ridl-safe-public+ps3.15-basic+ps3.15-clean-descriptors+ps3.15-clean-structured-content",
]


def _slow(engine: Engine, path: Path) -> Dataset:
    ds = dcmread(path)
    engine.apply(ds, SUBJECT)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def _slow_bytes(engine: Engine, path: Path) -> bytes:
    ds = dcmread(path)
    engine.apply(ds, SUBJECT)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _fields(ds: Dataset) -> dict[str, object]:
    out: dict[str, object] = {}
    for elem in ds.iterall():
        out[f"{elem.tag}{len(out)}"] = (elem.VR, elem.value if elem.VR != "SQ" else len(elem.value))
    return out


@pytest.mark.parametrize("spec", RECIPES)
def test_fast_path_equals_dataset_path(spec: str, synth_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(load_recipe(spec), Pseudonymizer(b"f" * 64))
    bad = set(synth_dir.truncated) | set(synth_dir.not_dicom)
    taken = 0
    for path in [p for p in synth_dir.files if p not in bad][:25]:
        if str(dcmread(path, stop_before_pixels=True).get("BurnedInAnnotation", "")) == "YES":
            continue
        target = tmp_path / f"{taken}.dcm"
        done = deidentify_file(engine, lambda ds: SUBJECT, path, lambda ds, s, t=target: t)
        if done is None:
            continue  # no pixel data or another layout: the dataset path is the only path
        fast = dcmread(target)
        slow = _slow(engine, path)
        assert _fields(fast) == _fields(slow), path.name
        assert target.read_bytes() == _slow_bytes(engine, path), path.name
        assert fast.file_meta.MediaStorageSOPInstanceUID == slow.SOPInstanceUID
        assert fast.file_meta == slow.file_meta
        assert fast.PixelData == dcmread(path).PixelData
        taken += 1
    assert taken >= 5


def _nested_file(tmp_path: Path, name: str = "nested.dcm") -> Path:
    from .test_deid_profiles import _with_private

    ds = _with_private("Philips PET Private Group", 0x00, "1.5")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(range(8))
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("spec", RECIPES)
def test_fast_path_walks_nested_references_like_the_engine(spec: str, tmp_path: Path) -> None:
    engine = Engine(load_recipe(spec), Pseudonymizer(b"n" * 64))
    path = _nested_file(tmp_path)
    target = tmp_path / "out.dcm"
    assert deidentify_file(engine, lambda ds: SUBJECT, path, lambda ds, s: target) is not None
    fast, slow = dcmread(target), _slow(engine, path)
    assert _fields(fast) == _fields(slow)
    assert target.read_bytes() == _slow_bytes(engine, path)
    assert "CurrentRequestedProcedureEvidenceSequence" in fast


def test_fast_path_refuses_a_broken_sequence(tmp_path: Path) -> None:
    from deid_recipes import DeidError

    path = _nested_file(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.find(bytes.fromhex("08004011"))  # Referenced Image Sequence
    item = data.find(b"\xfe\xff\x00\xe0", at)
    data[item + 4 : item + 8] = (7).to_bytes(4, "little")  # the item now cuts an element
    path.write_bytes(bytes(data))
    engine = Engine(load_recipe("ridl-safe-public+ps3.15-basic"), Pseudonymizer(b"n" * 64))
    with pytest.raises(DeidError, match="unparseable-sequence"):
        deidentify_file(engine, lambda ds: SUBJECT, path, lambda ds, s: tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_recipe_with_a_computed_add_takes_the_dataset_path(tmp_path: Path) -> None:
    site = tmp_path / "site-add.dicom"
    site.write_text("FORMAT dicom\n\n%header\n\nADD ClinicalTrialSubjectID func:research_id\n")
    engine = Engine(load_recipe(["ridl-basic", str(site)]), Pseudonymizer(b"n" * 64))
    path = _nested_file(tmp_path)
    assert deidentify_file(engine, lambda ds: SUBJECT, path, lambda ds, s: tmp_path / "o") is None
    assert _slow(engine, path).ClinicalTrialSubjectID == SUBJECT.research_id


def _jpeg_with_text() -> bytes:
    """A JPEG (Pillow) with a COM, an EXIF-like APP1 holding a whole JPEG (a thumbnail), an ICC
    APP2 and a JFIF thumbnail: none of it is samples."""
    from PIL import Image

    out = io.BytesIO()
    pixels = bytes(range(256)) * 16
    Image.frombytes("L", (64, 64), pixels).save(out, format="JPEG", quality=90)
    jpeg = out.getvalue()
    assert jpeg[2:4] == b"\xff\xe0"  # Pillow writes JFIF first

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (2 + len(payload)).to_bytes(2, "big") + payload

    jfif_length = int.from_bytes(jpeg[4:6], "big")
    jfif = jpeg[6 : 6 + 12] + b"\x02\x01" + bytes(6)  # a 2 x 1 RGB thumbnail
    return b"".join(
        [
            b"\xff\xd8",
            segment(0xE0, jfif),
            segment(0xE1, b"Exif\0\0" + jpeg),
            segment(0xE2, b"ICC_PROFILE\0" + b"desc Dr Smith's monitor"),
            segment(0xFE, b"scanned by Dr Smith"),
            jpeg[4 + jfif_length :],
        ]
    )


@pytest.mark.parametrize("syntax", ["jpeg", "j2k", "j2k-extended-offsets"])
def test_the_fast_path_strips_frame_text_as_the_dataset_path_does(
    syntax: str, tmp_path: Path
) -> None:
    from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    from ridl.codestream import codestream_texts

    ds = dcmread(_nested_file(tmp_path))
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = bytes(range(256)) * 16
    if syntax == "jpeg":
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([_jpeg_with_text()])
    else:
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        if syntax == "j2k-extended-offsets":
            ds.NumberOfFrames = 2
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
            ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
                encapsulate_extended([frame, frame])
            )
    source = tmp_path / "compressed.dcm"
    ds.save_as(source, enforce_file_format=True)
    assert codestream_texts(dcmread(source).PixelData), "the source carries text"
    spec = "ridl-safe-public+ps3.15-basic"  # keeps the Extended Offset Table
    engine = Engine(load_recipe(spec), Pseudonymizer(b"f" * 64))
    target = tmp_path / "fast.dcm"
    done = deidentify_file(engine, lambda ds: SUBJECT, source, lambda ds, s, t=target: t)
    slow = _slow_bytes(engine, source)
    out = dcmread(io.BytesIO(slow))
    texts = codestream_texts(out.PixelData)
    if syntax == "jpeg":  # JFIF's version, units and densities only (UTF-16 readings aside)
        assert texts[0] == b"JFIF\0\x01\x01\0\0\x01\0\x01", texts
    else:
        assert texts == [], texts
    assert b"Smith" not in slow and b"Exif" not in slow and b"ICC_PROFILE" not in slow
    assert (out.pixel_array == dcmread(source).pixel_array).all(), "the samples are the same"
    if syntax == "j2k-extended-offsets":
        assert done is None, "new offsets: the dataset path writes the table again"
        assert out.ExtendedOffsetTableLengths != ds.ExtendedOffsetTableLengths
        return
    assert done is not None and target.read_bytes() == slow
