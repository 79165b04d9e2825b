"""Text inside compressed frames: the comment and application segments of a JPEG or JPEG 2000
codestream are text, not image samples (R10 does not cover them), and the stream searches them
before an object is stored."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless
from typer.testing import CliRunner

from export.identifiers import IdentifierDictionary
from export.phi_scan import Verifier, codestream_texts, pixel_data_start
from flows.cli import app
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.dicomfile import to_bytes
from tests.deid_run_support import ct, project

NOTE = b"PATIENT TREMBLAY JOSEE MRN00123"


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, 2 + len(payload)) + payload


def _jpeg(*segments: bytes, between: bytes = b"") -> bytes:
    """A JPEG codestream: SOI, the given segments, a scan, ``between``, a second scan, EOI.
    Each scan's entropy-coded data holds a stuffed FF (FF 00) followed by bytes that would
    read as a COM segment if the data were taken for markers, and a restart marker."""
    scan = _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + b"\x12\xff\x00\xfe\x00\x08junk\xff\xd3"
    return b"\xff\xd8" + b"".join(segments) + scan + between + scan + b"\xff\xd9"


def _ct() -> Dataset:
    """A CT of :func:`ct` at 64 x 64 (JPEG 2000 needs more than 8 x 8 for its resolutions)."""
    ds = ct(1)
    ds.Rows = ds.Columns = 64
    ds.PixelData = bytes(range(256)) * 32
    return ds


def _j2k_frame(ds: Dataset) -> bytes:
    ds.compress(JPEG2000Lossless)
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _with_j2k_comments(frame: bytes, main: bytes, tile: bytes = b"", rcom: int = 1) -> bytes:
    """``frame`` with a COM (Rcom 1: Latin text, 0: binary) after SIZ in the main header and,
    when given, one in the first tile-part header (its Psot grown to match)."""
    assert frame[:2] == b"\xff\x4f" and frame[2:4] == b"\xff\x51"
    after_siz = 4 + int.from_bytes(frame[4:6], "big")
    com = _segment(0x64, rcom.to_bytes(2, "big") + main)
    frame = frame[:after_siz] + com + frame[after_siz:]
    if tile:
        sot = frame.index(b"\xff\x90\x00\x0a")
        com = _segment(0x64, b"\x00\x01" + tile)
        psot = int.from_bytes(frame[sot + 6 : sot + 10], "big")
        grown = frame[: sot + 6] + (psot + len(com)).to_bytes(4, "big") + frame[sot + 10 :]
        frame = grown[: sot + 12] + com + grown[sot + 12 :]
    return frame


def test_codestream_texts_are_what_is_not_samples_nor_structure_in_each_frame() -> None:
    app0 = b"ACME capture 1.2"  # an APPn payload (JFIF, EXIF) is read as text
    jpeg = _jpeg(_segment(0xE0, app0), _segment(0xFE, b"Dr Smith"), _segment(0xDB, b"\1" * 65))
    assert codestream_texts(encapsulate([jpeg])) == [app0, b"Dr Smith"]
    # Between scans, after a stray byte, after the codestream's end: all text.
    later = _jpeg(_segment(0xFE, b"first"), between=_segment(0xFE, b"between scans"))
    assert codestream_texts(encapsulate([later])) == [b"first", b"between scans"]
    stray = b"\xff\xd8\x07" + _segment(0xFE, b"after a stray byte") + later[2:] + b"trailer"
    assert codestream_texts(encapsulate([stray])) == [
        b"\x07",
        b"after a stray byte",
        b"first",
        b"between scans",
        b"trailer",
    ]
    frame = _j2k_frame(_ct())
    own = codestream_texts(encapsulate([frame]))  # the encoder's own note ("Created by ...")
    assert all(b"note" not in text for text in own)
    j2k = _with_j2k_comments(frame, b"main header note", b"tile-part note")
    assert codestream_texts(encapsulate([jpeg, j2k])) == [
        app0,
        b"Dr Smith",
        b"main header note",
        *own,
        b"tile-part note",
    ]
    # One frame over two fragments, cut inside its main header; bytes after EOC.
    cut = (j2k.index(b"main header") - 2) & ~1  # fragments are of even length (PS3.5 A.4)
    assert b"main header note" in codestream_texts(encapsulate([j2k[:cut], j2k[cut:]]))
    assert b"after the end" in codestream_texts(encapsulate([frame + b"after the end"]))
    # A J2K header with a stray byte before a COM; a JP2 file's boxes; UTF-16 text.
    after_siz = 4 + int.from_bytes(frame[4:6], "big")
    odd = frame[:after_siz] + b"\x07" + _segment(0x64, b"\x00\x01stray") + frame[after_siz:]
    assert b"stray" in codestream_texts(encapsulate([odd]))
    jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I", 8 + 8) + b"xml <a>x</a>"
    jp2 += struct.pack(">I", 8 + len(j2k)) + b"jp2c" + j2k
    texts = codestream_texts(encapsulate([jp2]))
    assert b"<a>x</a>" in texts and b"main header note" in texts
    wide = _with_j2k_comments(frame, "Dr Smith".encode("utf-16-le"), rcom=0)
    assert b"Dr Smith" in codestream_texts(encapsulate([wide]))
    # Many empty segments, then one that names someone: every segment is read.
    many = _jpeg(*[_segment(0xEF, b"")] * 300, _segment(0xFE, b"the 301st"))
    assert codestream_texts(encapsulate([many])) == [b"the 301st"]
    # Damaged: what was read up to the damage (a cut segment's text too), no error.
    cut_text = j2k[: j2k.index(b"main header") + 4]
    assert codestream_texts(encapsulate([cut_text])) == [b"main"]
    assert codestream_texts(b"not an item") == []
    # Another codec's fragments (RLE: a 64-byte header of segment offsets) are samples (R10).
    assert codestream_texts(encapsulate([b"\x01\x00\x00\x00@" + bytes(59) + b"Dr Smith"])) == []


def _compressed_ct(note: bytes) -> Dataset:
    ds = _ct()
    ds.PixelData = encapsulate([_with_j2k_comments(_j2k_frame(ds), note)])
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return ds


def test_a_name_in_a_frames_comment_is_found_by_both_searches() -> None:
    dictionary = IdentifierDictionary()
    dictionary.add_header(ct(1), "RID-A", 10)
    out = _compressed_ct(NOTE)
    out.PatientName, out.PatientID, out.PatientBirthDate = "RID-A", "RID-A", ""
    out.AccessionNumber, out.IssuerOfPatientID = "", ""
    data = to_bytes(out)
    start = pixel_data_start(data)
    assert start is not None
    for text_end in (start, None):  # the stream's raw look first, and the whole parse
        hits = Verifier(dictionary).check_bytes("k.dcm", data, text_end=text_end).hits
        assert {(h.path, h.kind) for h in hits if h.path.startswith("PixelData")} == {
            ("PixelData (codestream text)", "name"),
            ("PixelData (codestream text)", "identifier"),
        }
    clean = to_bytes(_compressed_ct(b"Lossless J2K"))
    out_clean = dcmread(io.BytesIO(clean))
    out_clean.PatientName, out_clean.PatientID, out_clean.PatientBirthDate = "RID-A", "RID-A", ""
    out_clean.AccessionNumber, out_clean.IssuerOfPatientID = "", ""
    data = to_bytes(out_clean)
    hits = Verifier(dictionary).check_bytes("k.dcm", data, text_end=None).hits
    assert hits and not [h for h in hits if h.path.startswith("PixelData")]


@pytest.mark.parametrize("where", ["main header", "tile-part"])
@pytest.mark.parametrize("way", ["ridl deid", "run"])
def test_an_object_whose_frame_comments_name_its_subject_never_reaches_the_output(
    ridl_home: Path, tmp_path: Path, way: str, where: str
) -> None:
    """A comment in the main header or in a tile-part header is stripped by de-identification:
    the object is exported without it, its samples as they were."""
    src = tmp_path / "in"
    src.mkdir()
    source = _ct()
    frame = _j2k_frame(source)
    if where == "main header":
        frame = _with_j2k_comments(frame, NOTE)
    else:
        frame = _with_j2k_comments(frame, b"Lossless J2K", tile=NOTE)
    source.PixelData = encapsulate([frame])
    source.save_as(src / "ct1.dcm", enforce_file_format=True)
    project_id = project("codestream")
    out = tmp_path / ("out" if way == "ridl deid" else "store")
    if way == "ridl deid":
        result = CliRunner().invoke(app, ["deid", str(src), str(out), "--project", project_id])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout[result.stdout.index("{") :])
        quarantined, exported = summary["quarantined"], summary["exported"]
        assert b"TREMBLAY" not in result.stdout.encode()
    else:
        plan = prepare_run(project_id, "r1", f"folder:{src}", f"file:{out}")
        counts = process_batch(plan.ctx, plan.studies)
        quarantined, exported = dict(counts.quarantined), counts.exported
    stored = list(out.rglob("*.dcm"))
    assert quarantined == {} and exported == 1, (quarantined, exported)
    (written,) = stored
    assert b"TREMBLAY" not in written.read_bytes()
    assert codestream_texts(dcmread(written).PixelData) == [], "the encoder's note went too"
    assert (dcmread(written).pixel_array == dcmread(src / "ct1.dcm").pixel_array).all()


def _found(text: bytes, value: bytes) -> bool:
    return any(text in each for each in codestream_texts(value))


def test_codestream_texts_read_a_false_offset_table_unknown_segments_and_text_after_eoc() -> None:
    frame = _j2k_frame(_ct())
    note = b"hidden note"
    # The Basic Offset Table item holding text instead of offsets.
    table = b"\xfe\xff\x00\xe0\x0c\x00\x00\x00" + note + b"\0"
    assert _found(note, table + encapsulate([frame])[12:])  # its own table item replaced
    assert codestream_texts(encapsulate([frame, frame], has_bot=True)).count(note) == 0
    # Psot 0 (to EOC), then text and a second FF D9: the tile ends at the first EOC.
    sot = frame.index(b"\xff\x90\x00\x0a")
    zero = frame[: sot + 6] + bytes(4) + frame[sot + 10 :]
    assert _found(note, encapsulate([zero + note + b"\xff\xd9"]))
    second = _with_j2k_comments(frame, note)
    assert _found(note, encapsulate([zero, second]))
    # A marker segment no decoder reads (FF6F), in the main header.
    after_siz = 4 + int.from_bytes(frame[4:6], "big")
    unknown = frame[:after_siz] + _segment(0x6F, note) + frame[after_siz:]
    assert _found(note, encapsulate([unknown]))
    # In a JP2 file, text after the codestream's EOC inside its box (sized, or to the end).
    for size in (8 + len(frame) + len(note), 0):
        jp2 = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I", size) + b"jp2c"
        assert _found(note, encapsulate([jp2 + frame + note]))
    # A JPEG segment under a reserved marker (JPG0, FFF0).
    assert _found(note, encapsulate([_jpeg(_segment(0xF0, note))]))


def _pillow_jpeg(rgb: bool = False) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    mode, size = ("RGB", 3) if rgb else ("L", 1)
    Image.frombytes(mode, (32, 16), bytes(range(256)) * 2 * size).save(out, format="JPEG")
    return out.getvalue()


def test_stripping_drops_what_decoders_skip_and_keeps_what_they_read() -> None:
    """From a fresh-user check of the ninth pass: text after EOI, under reserved markers (RES,
    JPG), in an unknown JPEG 2000 main-header segment, in a JP2 XML box, in the second of two
    JFIF segments, in the frames of a multi-frame object split over fragments, or behind a
    Basic Offset Table of one bogus entry went out; a JP2 file's channel definitions were lost
    (red and blue swapped); a short JFIF segment was padded into one libjpeg reads."""
    from ridl.codestream import stripped_codestream, stripped_frames

    jpeg = _pillow_jpeg()
    sof = jpeg.index(b"\xff\xdb")
    trailer = jpeg + b"Dr Xavier Quintal" + jpeg  # a trailer, then a second codestream
    assert stripped_codestream(trailer) == jpeg
    for marker in (0x02, 0xC8, 0xF0):  # RES, JPG, JPGn: read by no decoder
        hidden = jpeg[:sof] + _segment(marker, NOTE) + jpeg[sof:]
        assert NOTE in b"".join(codestream_texts(encapsulate([hidden]))), hex(marker)
        assert stripped_codestream(hidden) == jpeg, hex(marker)
    jfif = jpeg[2 : 4 + int.from_bytes(jpeg[4:6], "big")]
    twice = jpeg[:2] + jfif + _segment(0xE0, b"JFIF\0" + b"Xavier Q") + jpeg[2 + len(jfif) :]
    assert stripped_codestream(twice) == jpeg, "only the first JFIF segment is kept"
    short = jpeg[:2] + _segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01"[:12]) + jpeg[2 + len(jfif) :]
    assert stripped_codestream(short) is None, "a 12-byte JFIF stays 12 bytes: nothing to strip"

    frame = _j2k_frame(_ct())
    after_siz = 4 + int.from_bytes(frame[4:6], "big")
    unknown = frame[:after_siz] + _segment(0x65, NOTE) + frame[after_siz:]
    bare = stripped_codestream(frame)
    assert bare is not None and stripped_codestream(unknown) == bare  # COM and FF65 dropped

    def box(kind: bytes, payload: bytes) -> bytes:
        return (8 + len(payload)).to_bytes(4, "big") + kind + payload

    head = box(b"jP  ", b"\r\n\x87\n") + box(b"ftyp", b"jp2 \0\0\0\0jp2 ")
    jp2h = box(b"jp2h", box(b"ihdr", bytes(14)) + box(b"cdef", b"\0\x01\0\0\0\0\0\x02"))
    jp2 = head + box(b"xml ", NOTE) + jp2h + box(b"jp2c", frame)
    assert stripped_codestream(jp2) == head + jp2h + box(b"jp2c", bare), "header kept, XML not"

    ds = _ct()  # 3 frames, each over two fragments, no offset table
    ds.NumberOfFrames = 3
    noted = jpeg[:2] + _segment(0xFE, NOTE) + jpeg[2:]
    halves = [part for _ in range(3) for part in (noted[:100], noted[100:])]
    value = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"".join(
        b"\xfe\xff\x00\xe0" + struct.pack("<I", len(h) + len(h) % 2) + h + b"\0" * (len(h) % 2)
        for h in halves
    )
    got = stripped_frames(value, 3)
    assert got is not None and got[0] == [jpeg] * 3 and got[1] is False
    bogus = b"\xfe\xff\x00\xe0\x04\x00\x00\x00\x01\x00\x00\x00"  # a table of one wrong entry
    one = bogus + encapsulate([noted], has_bot=False)[8:]
    assert stripped_frames(one, 1) == ([jpeg], True)


def _tile_parts(j2k: bytes) -> list[int]:
    """Where each SOT of a codestream is (from its first, by each tile-part's Psot)."""
    at, found = j2k.index(b"\xff\x90\x00\x0a"), []
    while j2k[at : at + 2] == b"\xff\x90":
        found.append(at)
        at += int.from_bytes(j2k[at + 6 : at + 10], "big")
    return found


def test_stripping_drops_text_from_every_tile_part_header_and_keeps_the_samples() -> None:
    """A COM in each tile-part header of a 4-tile codestream, an index of tile-part lengths
    (TLM) counting them: the COMs go, each Psot shrinks to match, the TLM goes, and OpenJPEG
    decodes the same samples; with the last Psot 0 (to EOC) too."""
    import numpy as np
    from PIL import Image

    from ridl.codestream import stripped_codestream

    pixels = np.random.default_rng(3).integers(0, 255, (64, 64)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG2000", no_jp2=True, tile_size=(32, 32))
    plain = buffer.getvalue()
    starts = _tile_parts(plain)
    assert len(starts) == 4
    noted, lengths = plain[: starts[0]], []
    for n, at in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(plain) - 2
        com = _segment(0x64, b"\x00\x01" + NOTE + bytes([48 + n]))
        psot = end - at + len(com)
        lengths.append(psot)
        noted += plain[at : at + 6] + psot.to_bytes(4, "big") + plain[at + 10 : at + 12] + com
        noted += plain[at + 12 : end]
    noted += b"\xff\xd9"
    tlm = _segment(0x55, b"\x00\x50" + b"".join(bytes([n]) + p.to_bytes(4, "big")
                                               for n, p in enumerate(lengths)))  # fmt: skip
    after_siz = 4 + int.from_bytes(noted[4:6], "big")
    noted = noted[:after_siz] + tlm + noted[after_siz:]

    def decoded(j2k: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(j2k)))

    assert (decoded(noted) == pixels).all(), "the test's codestream is itself valid"
    assert sum(NOTE in t for t in codestream_texts(encapsulate([noted]))) == 4
    bare = stripped_codestream(plain)  # the encoder's own main-header note dropped
    assert bare is not None
    stripped = stripped_codestream(noted)
    assert stripped == bare, "COMs and TLM gone, every Psot back to its length"
    assert (decoded(stripped) == pixels).all()
    assert codestream_texts(encapsulate([stripped])) == []
    # The last tile-part running to EOC (Psot 0): its COM goes, its Psot stays 0.
    last = _tile_parts(noted)[-1]
    open_end = noted[: last + 6] + bytes(4) + noted[last + 10 :]
    cut = stripped_codestream(open_end)
    assert cut is not None and NOTE not in cut and (decoded(cut) == pixels).all()
    # Tile-parts that do not follow one another up to EOC are left as they were (and searched).
    broken = noted[: last + 6] + (10**6).to_bytes(4, "big") + noted[last + 10 :]
    kept = stripped_codestream(broken)
    assert kept is not None and kept.count(NOTE) == 4


def test_a_segment_no_decoder_reads_that_hides_a_marker_is_left_as_it_is() -> None:
    """From a fresh-user check of the tenth pass: OpenJPEG does not skip an unknown segment by
    its length but looks for the next marker it knows, inside it too, so a COD hidden there is
    read; dropping the segment made the frame decode otherwise. Such a frame (main header) or
    such tile-parts are left as they are; their text is still searched."""
    from ridl.codestream import stripped_codestream

    frame = _j2k_frame(_ct())
    after_siz = 4 + int.from_bytes(frame[4:6], "big")
    cod_at = frame.index(b"\xff\x52")
    cod = frame[cod_at : cod_at + 2 + int.from_bytes(frame[cod_at + 2 : cod_at + 4], "big")]
    hiding = _segment(0x70, NOTE + cod)
    main = frame[:after_siz] + hiding + frame[after_siz:]
    assert stripped_codestream(main) is None
    assert NOTE in b"".join(codestream_texts(encapsulate([main])))
    harmless = frame[:after_siz] + _segment(0x70, NOTE + b"\xff\x00") + frame[after_siz:]
    assert stripped_codestream(harmless) == stripped_codestream(frame), "dropped: no marker"
    sot = frame.index(b"\xff\x90\x00\x0a")
    psot = int.from_bytes(frame[sot + 6 : sot + 10], "big")
    grown = frame[: sot + 6] + (psot + len(hiding)).to_bytes(4, "big") + frame[sot + 10 :]
    tiled = grown[: sot + 12] + hiding + grown[sot + 12 :]
    kept = stripped_codestream(tiled)
    assert kept is not None and kept.endswith(tiled[sot:].rstrip(b"\0")), "the tile-part kept"
