"""GDCM decodes only in a child process: a JPEG frame that makes GDCM end its process (a stray
byte before a marker: libjpeg's warning becomes a C++ exception through C code, exit 134) costs
that object alone, which is quarantined with its reason while the rest of the request goes on.

The JPEG Lossless (Process 14) objects are made by dcmtk's ``dcmcjpeg`` from the synthetic DIR's
radiograph (all values invented); only GDCM decodes that syntax here.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from typer.testing import CliRunner

from flows.cli import app
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.synth import SynthReport
from tests.conftest import SITES, make_project, require_program

RIDL = str(Path(sys.executable).with_name("ridl"))


def _lossless_cr(
    synth_dir: SynthReport, folder: Path, number: int, stray: bool
) -> tuple[Path, np.ndarray]:
    """A JPEG Lossless SV1 copy of the synthetic radiograph (its own SOP Instance UID); with
    ``stray``, one extra byte right after the frame's SOI marker. Returns the path and the
    native pixels."""
    dcmcjpeg = require_program("dcmcjpeg")
    source = next(p for p in synth_dir.files if p.name == "cr_001.dcm")
    ds = dcmread(source)
    ds.StudyDate, ds.IssuerOfPatientID = "20200115", SITES[0]
    ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.9{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    native = folder / f"native_{number}.dcm"
    ds.save_as(native, enforce_file_format=True)
    path = folder / f"cr_{number}.dcm"
    subprocess.run([dcmcjpeg, "+e1", str(native), str(path)], check=True, capture_output=True)
    native.unlink()
    compressed = dcmread(path)
    assert compressed.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    if stray:
        (frame,) = generate_frames(compressed.PixelData, number_of_frames=1)
        compressed.PixelData = encapsulate([frame[:2] + b"\x00" + frame[2:]])
        compressed.save_as(path)
    return path, ds.pixel_array


def test_gdcm_decodes_in_a_child_and_a_frame_that_ends_it_fails_alone(
    synth_dir: SynthReport,
    tmp_path: Path,
) -> None:
    import curation.pixels  # noqa: F401  (its import isolates GDCM, before any decode)
    from curation.decoding import PLUGIN

    for uid in (JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless):
        plugins = get_decoder(uid).available_plugins
        assert "gdcm" not in plugins and PLUGIN in plugins, (uid.name, plugins)
    good, pixels = _lossless_cr(synth_dir, tmp_path, 1, stray=False)
    bad, _ = _lossless_cr(synth_dir, tmp_path, 2, stray=True)

    assert np.array_equal(dcmread(good).pixel_array, pixels), "lossless: the samples come back"
    with pytest.raises(RuntimeError, match=r"GDCM decoder process ended \(signal 6\)"):
        dcmread(bad).pixel_array  # noqa: B018  (decoding is the point)
    assert np.array_equal(dcmread(good).pixel_array, pixels), "a new child decodes the next one"


def test_deid_quarantines_the_frame_that_ends_gdcm_and_exports_the_rest(
    synth_dir: SynthReport,
    tmp_path: Path,
    ridl_home: Path,
) -> None:
    """A real ``ridl deid`` process: every radiograph is screened for burned-in text, so both
    are decoded; before, the broken one ended the process (exit 134, nothing reported)."""
    make_project("decode-cr", modalities=("CR",))
    src = tmp_path / "src"
    src.mkdir()
    _lossless_cr(synth_dir, src, 1, stray=False)
    _lossless_cr(synth_dir, src, 2, stray=True)
    env = dict(os.environ, RIDL_HOME=str(ridl_home))
    out = tmp_path / "out"
    result = subprocess.run(
        [RIDL, "deid", str(src), str(out), "--project", "decode-cr"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["exported"] == 1, summary
    assert sum(summary["quarantined"].values()) == 1, summary
    assert "terminate called" not in result.stderr, "GDCM's last words stay in the child"
    (written,) = list(out.rglob("*.dcm"))
    assert dcmread(written).Modality == "CR"

    from curation.quarantine import list_quarantine

    (held,) = list_quarantine("decode-cr", "adhoc")
    assert held.detail == "RuntimeError; GDCM decoder process ended (signal 6)", held.detail

    # A run's batch (the Prefect flow's task body) treats them alike.
    plan = prepare_run("decode-cr", "r1", f"folder:{src}", f"file:{tmp_path / 'store'}")
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.exported == 1 and dict(counts.quarantined) == {"pixel-decode-failed": 1}, (
        counts.as_dict()
    )
    (held,) = list_quarantine("decode-cr", "r1")
    assert held.detail == "RuntimeError; GDCM decoder process ended (signal 6)", held.detail


def test_12_bit_jpeg_extended_decodes_as_dcmtk_decodes_it_and_its_radiograph_is_exported(
    synth_dir: SynthReport,
    tmp_path: Path,
    ridl_home: Path,
) -> None:
    """Older CT and CR archives hold JPEG Extended (Process 4) frames of 12-bit samples, which no
    plug-in decoded here (pydicom's GDCM plug-in refuses them, Pillow reads 8 bits): a
    radiograph of that syntax, screened like every radiograph, was quarantined as
    ``pixel-decode-failed``. GDCM decodes them in its child, sample for sample as dcmtk's IJG
    12-bit decoder does."""
    import curation.pixels  # noqa: F401  (ridl's decoders)

    dcmcjpeg, dcmdjpeg = require_program("dcmcjpeg"), require_program("dcmdjpeg")
    source = next(p for p in synth_dir.files if p.name == "cr_001.dcm")
    ds = dcmread(source)
    assert (ds.BitsAllocated, ds.BitsStored) == (16, 12)
    ds.StudyDate, ds.IssuerOfPatientID = "20200115", SITES[0]
    src = tmp_path / "src"
    src.mkdir()
    native = tmp_path / "native.dcm"
    ds.save_as(native, enforce_file_format=True)
    lossy = src / "cr_12bit.dcm"
    subprocess.run([dcmcjpeg, "+ee", str(native), str(lossy)], check=True, capture_output=True)
    reference = tmp_path / "reference.dcm"
    subprocess.run([dcmdjpeg, str(lossy), str(reference)], check=True, capture_output=True)
    assert str(dcmread(lossy).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.51"
    assert np.array_equal(dcmread(lossy).pixel_array, dcmread(reference).pixel_array)
    jpg_extended = get_testdata_file("JPGExtended.dcm")  # pydicom's, 12 bits in 16
    assert jpg_extended is not None
    theirs = tmp_path / "theirs.dcm"
    subprocess.run([dcmdjpeg, jpg_extended, str(theirs)], check=True, capture_output=True)
    assert np.array_equal(dcmread(jpg_extended).pixel_array, dcmread(theirs).pixel_array)

    make_project("decode-12", modalities=("CR",))
    result = CliRunner().invoke(app, ["deid", str(src), str(tmp_path / "out"), "--project",
                                      "decode-12"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["exported"] == 1 and summary["quarantined"] == {}, summary


def _j2k_and_rle() -> dict[str, Dataset]:
    """pydicom's CT_small (invented values) compressed as JPEG 2000 Lossless and RLE Lossless."""
    out = {}
    for ts in (JPEG2000Lossless, RLELossless):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.compress(ts, generate_instance_uid=False)
        out[ts.name] = ds
    return out


def test_frames_holding_another_image_than_the_header_are_never_decoded() -> None:
    from curation.decoding import frames_mismatch
    from curation.pixels import FrameMismatch, decoded_pixels

    pixels = dcmread(get_testdata_file("CT_small.dcm")).pixel_array  # lossless: as they were
    for name, ds in _j2k_and_rle().items():
        assert frames_mismatch(ds) is None, name
        (frame,) = generate_frames(ds.PixelData, number_of_frames=1)

        fewer_rows = copy.deepcopy(ds)
        fewer_rows.Rows = 64  # the codestream's lower half would be cut off, unscreened
        with pytest.raises(FrameMismatch, match="pixel-header-mismatch") as caught:
            decoded_pixels(fewer_rows)
        assert caught.value.detail in (
            "frame 1: codestream 128 x 128 x 1, header 64 x 128 x 1",  # from SIZ, before decoding
            "an RLE segment holds more rows than the header",  # while decoding (ridl-rle)
        ), (name, caught.value.detail)
        assert np.array_equal(decoded_pixels(copy.deepcopy(ds)), pixels), name

        more_frames = copy.deepcopy(ds)  # three frames under a header that says two
        more_frames.PixelData = encapsulate([frame] * 3, has_bot=True)
        more_frames.NumberOfFrames = 2
        assert frames_mismatch(more_frames) == "3 frames, header 2", name

    j2k = _j2k_and_rle()[JPEG2000Lossless.name]
    (frame,) = generate_frames(j2k.PixelData, number_of_frames=1)
    # A second codestream in the fragments of a one-frame object: decoders read the first only.
    j2k.PixelData = encapsulate([frame, frame], has_bot=False)
    assert frames_mismatch(j2k) == "frame 1: bytes after its codestream (a second image?)"
    # A SIZ of 40,000 x 40,000 under a 128 x 128 header: refused before any decoder allocates.
    siz = frame.index(b"\xff\x4f\xff\x51") + 2
    big = (40000).to_bytes(4, "big")
    bomb = frame[: siz + 6] + big + big + frame[siz + 14 :]
    j2k.PixelData = encapsulate([bomb])
    assert frames_mismatch(j2k) == "frame 1: codestream 40000 x 40000 x 1, header 128 x 128 x 1"
    # More bits a sample than the header allocates: pydicom keeps the first bytes.
    j2k.PixelData = encapsulate([frame])
    j2k.BitsAllocated, j2k.BitsStored, j2k.HighBit = 8, 8, 7
    assert frames_mismatch(j2k) == "frame 1: codestream 16-bit samples, header 8 allocated"
    j2k.BitsAllocated, j2k.BitsStored, j2k.HighBit = 16, 16, 15

    def box(kind: bytes, payload: bytes) -> bytes:
        return (8 + len(payload)).to_bytes(4, "big") + kind + payload

    # A JP2 file (written by some encoders though PS3.5 A.4.4 excludes it): its codestream box's
    # SIZ counts, not a SOC + SIZ hidden in another box; two codestream boxes are refused.
    head = box(b"jP  ", b"\r\n\x87\n") + box(b"ftyp", b"jp2 \0\0\0\0jp2 ")
    j2k.PixelData = encapsulate([head + box(b"jp2c", frame)])
    assert frames_mismatch(j2k) is None
    fake = box(b"xml ", b"\xff\x4f" + frame[2:44])  # the header's size, before the real one
    j2k.PixelData = encapsulate([head + fake + box(b"jp2c", bomb)])
    assert frames_mismatch(j2k) == "frame 1: codestream 40000 x 40000 x 1, header 128 x 128 x 1"
    j2k.PixelData = encapsulate([head + box(b"jp2c", frame) + box(b"jp2c", frame)])
    assert frames_mismatch(j2k) == "frame 1: a JP2 file without exactly one codestream box"

    # An Extended Offset Table that skips a fragment: a whole image riding outside every frame.
    data, table, lengths = encapsulate_extended([frame, frame, frame])
    j2k.NumberOfFrames, j2k.PixelData = 2, data
    j2k.ExtendedOffsetTable = table[:16]
    j2k.ExtendedOffsetTableLengths = lengths[:16]
    assert frames_mismatch(j2k) == "fragments outside every frame (an offset table skips them)"


def test_a_jpeg_frame_is_walked_as_decoders_walk_it() -> None:
    """RST0 right after SOI has no length (ISO/IEC 10918-1 B.1.1.3): read as one, it jumped to a
    SOF of the header's size hidden in an APP2 segment, while decoders read the real one. A
    last pad byte other than 00 (dcmtk writes them) is no second image."""
    from io import BytesIO

    from PIL import Image

    from curation.decoding import frames_mismatch

    pixels = np.random.default_rng(3).integers(0, 255, size=(64, 96), dtype=np.uint8)
    out = BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    jpeg = out.getvalue()
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns = 64, 96
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg])
    assert frames_mismatch(ds) is None
    ds.PixelData = encapsulate([jpeg + b"\x85"])
    assert frames_mismatch(ds) is None
    ds.PixelData = encapsulate([jpeg + b"\x85\x85"])
    assert frames_mismatch(ds) == "frame 1: bytes after its codestream (a second image?)"

    ds.Rows, ds.Columns = 96, 64  # the header says 96 x 64; the SOF decoders use, 64 x 96
    sof = jpeg.index(b"\xff\xc0")
    fake = jpeg[sof : sof + 5] + (96).to_bytes(2, "big") + (64).to_bytes(2, "big")
    fake += jpeg[sof + 9 : sof + 2 + int.from_bytes(jpeg[sof + 2 : sof + 4], "big")]
    app2 = b"\xff\xe2" + (2 + len(fake)).to_bytes(2, "big") + fake
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd0" + app2 + jpeg[2:]])
    assert frames_mismatch(ds) == "frame 1: codestream 64 x 96 x 1, header 96 x 64 x 1"


def test_text_below_the_rows_a_header_declares_is_quarantined_not_exported(
    synth_dir: SynthReport,
    tmp_path: Path,
) -> None:
    """A radiograph whose RLE frame is 512 rows high, a name in its lower half, under a header
    saying 256 rows: pydicom decodes the upper half (with a warning), which screening finds
    clean; before, it was exported with the name in its pixel data (so were JPEG-LS frames).
    The same object with its true header is held for its text, so the text is there to find."""
    from tests.curation_data import burn_text

    make_project("decode-rows", modalities=("CR",))
    src = tmp_path / "src"
    src.mkdir()
    source = next(p for p in synth_dir.files if p.name == "cr_001.dcm")
    for number, rows in ((1, 512), (2, 256)):
        ds = dcmread(source)
        ds.StudyDate, ds.IssuerOfPatientID = "20200115", SITES[0]
        ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.8{number}"  # a series each
        ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        body = np.random.default_rng(number).integers(200, 600, size=(512, 512), dtype=np.uint16)
        ds.Rows, ds.Columns = 512, 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        text = [(40, 330, "SMITH JOHN"), (40, 410, "MRN 4455667")]
        ds.PixelData = burn_text(body, text, 48, 4000).tobytes()
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.Rows = rows
        ds.save_as(src / f"cr_{number}.dcm", enforce_file_format=True)

    result = CliRunner().invoke(
        app, ["deid", str(src), str(tmp_path / "out"), "--project", "decode-rows"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["exported"] == 0 and not list((tmp_path / "out").rglob("*.dcm")), summary
    assert summary["quarantined"] == {"burned-in-text": 1, "pixel-header-mismatch": 1}, summary

    plan = prepare_run("decode-rows", "r1", f"folder:{src}", f"file:{tmp_path / 'store'}")
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.exported == 0, counts.as_dict()
    assert dict(counts.quarantined) == {"burned-in-text": 1, "pixel-header-mismatch": 1}
    from curation.quarantine import list_quarantine

    details = {
        q.detail
        for q in list_quarantine("decode-rows", "r1")
        if q.reason == "pixel-header-mismatch"
    }
    assert details == {"an RLE segment holds more rows than the header"}, details
