"""Where a compressed frame's codestream ends, and the text it carries beside its samples.

Encapsulated Pixel Data (PS3.5 A.4) holds JPEG, JPEG-LS, JPEG 2000 or HTJ2K codestreams (ISO/IEC
10918-1, 14495-1, 15444-1, 15444-15), sometimes in a JP2 file (15444-1 I.5). A codestream is
walked by its markers: segment lengths in its headers, entropy-coded data up to the next marker
(JPEG), tile-part lengths (JPEG 2000). :func:`codestream_texts` gives what of a frame is neither
samples nor structure (comments, application segments, stray bytes, what follows the end), which
stream verification searches for identifiers (``export.phi_scan``, rules version 11);
:func:`codestream_end` gives where one codestream ends, which curation uses to tell a frame of
one image from a frame hiding a second one (``curation.decoding``).

Ground floor (``ridl/``): the DICOM byte path shared by verification and curation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

ITEM_TAG = b"\xfe\xff\x00\xe0"
# A JPEG marker inside entropy-coded data: FF then neither 00 (a stuffed FF), RSTn (D0-D7) nor FF
# (fill) (ISO/IEC 10918-1 B.1.1.2, B.1.1.5); in JPEG-LS scan data an FF is followed by a byte
# below 80 unless it begins a marker (ISO/IEC 14495-1 A.1).
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_JPEG_LS_MARKER = re.compile(rb"\xff[\x80-\xcf\xd8-\xfe]")
_SOI, _SOC, _JP2 = b"\xff\xd8\xff", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  "
# JPEG markers reserved (RES 02-BF, JPG C8, JPGn F0-FD; ISO/IEC 10918-1 B.1.1.3 Table B.1) but the
# JPEG-LS ones (F7 SOF55, F8 LSE, 14495-1 C.1): a segment under one is read by no decoder, so it
# is text (rules version 12 added RES and JPG).
_JPEG_RESERVED = (frozenset(range(0x02, 0xC0)) | {0xC8} | frozenset(range(0xF0, 0xFE))) - {
    0xF7,
    0xF8,
}
# JPEG 2000 and HTJ2K marker segments a decoder reads (15444-1 A.2, 15444-15 A.2): CAP, SIZ,
# COD, COC, TLM, PRF, PLM, PLT, CPF, QCD, QCC, RGN, POC, PPM, PPT, CRG (COM is text).
_J2K_MARKERS = frozenset(
    {0x50, 0x51, 0x52, 0x53, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5C, 0x5D, 0x5E, 0x5F, 0x60, 0x61}
    | {0x63, 0x90}
)


def codestream_texts(value: bytes | memoryview) -> list[bytes]:
    """The text a compressed frame carries beside its image samples: what of encapsulated Pixel
    Data is not entropy-coded data nor a codestream's structure.

    ``value`` is the Pixel Data value of undefined length from its first item on (the Basic
    Offset Table item, then the fragments, PS3.5 A.4). The fragments are read joined (a frame
    may span several). When they begin a JPEG or JPEG-LS codestream (SOI, ISO/IEC 10918-1 B.2,
    14495-1), a JPEG 2000 or HTJ2K codestream (SOC, ISO/IEC 15444-1 A.4) or a JP2 file (15444-1
    I.5), each codestream is walked to its end (EOI, EOC), one frame after another, and the
    text is: JPEG COM (FFFE), APPn (FFE0-FFEF) and reserved JPGn segments, anywhere between
    scans; JPEG 2000 COM (FF64, after Rcom) and unknown marker segments of the main and
    tile-part headers; every JP2 box but the codestream, and what follows the codestream in its
    box; bytes where a marker should be (stray bytes), after a codestream's end, or between
    codestreams; the Basic Offset Table's bytes when they are no table of offsets. A text
    holding NUL bytes is also given decoded as UTF-16 (both byte orders) and written in UTF-8.
    Fragments of another codec (RLE, MPEG) give no text: their bytes are samples (R10), as are
    bytes hidden inside a scan's entropy-coded data or a tile-part's packets, which only
    decoding could tell from samples.
    Never raises; a truncated codestream gives what was read.
    """
    fragments: list[bytes | memoryview] = []
    table = b""
    at, n, first = 0, len(value), True
    while at + 8 <= n:
        if value[at : at + 4] != ITEM_TAG:
            break  # the Sequence Delimitation Item, or damage
        length = int.from_bytes(value[at + 4 : at + 8], "little")
        if first:  # the Basic Offset Table: offsets, read as text as well (nothing else hides)
            table = bytes(value[at + 8 : at + 8 + length])
        else:
            fragments.append(value[at + 8 : at + 8 + length])
        first = False
        at += 8 + length
    data = b"".join(fragments)
    texts: list[bytes] = [] if _is_offset_table(table, len(data)) else [table]
    at, n = 0, len(data)
    codec = data.startswith((_SOI[:2], _SOC, _JP2))  # else another codec's samples (R10)
    while codec and at < n:
        if data.startswith(_SOI[:2], at):
            at = _jpeg_texts(data, at, texts)
        elif data.startswith(_SOC, at):
            at = _j2k_texts(data, at, n, texts)
        elif data.startswith(_JP2, at):
            at = _jp2_texts(data, at, texts)
        else:  # after a codestream's end: text up to the next codestream
            found = [i for i in (data.find(m, at) for m in (_SOI, _SOC, _JP2)) if i > at]
            end = min(found, default=n)
            texts.append(data[at:end])
            at = end
    out: list[bytes] = []
    for text in texts:
        stripped = text.strip(b"\0")  # padding to an even length, between codestreams
        if not stripped:
            continue
        out.append(stripped)
        if b"\0" in stripped:  # UTF-16 (a JPEG 2000 COM of Rcom 0, EXIF XP tags), either offset
            for start in (0, 1):
                for encoding in ("utf-16-le", "utf-16-be"):
                    out.append(text[start:].decode(encoding, "ignore").encode("utf-8"))
    return out


def _is_offset_table(table: bytes, size: int) -> bool:
    """Whether ``table`` is a Basic Offset Table of fragments holding ``size`` bytes: empty, or
    32-bit little-endian offsets from 0, increasing, each within them (PS3.5 A.4)."""
    if not table:
        return True
    if len(table) % 4:
        return False
    offsets = [int.from_bytes(table[i : i + 4], "little") for i in range(0, len(table), 4)]
    rising = all(a < b for a, b in zip(offsets, offsets[1:], strict=False))
    return offsets[0] == 0 and rising and offsets[-1] < max(size, 1)


# What :func:`_jpeg_walk` yields besides marker segments (whose kind is their marker code).
_STRAY, _FILL, _BARE, _SCAN, _BROKEN = -1, -2, -3, -4, -5


def _jpeg_walk(data: bytes, at: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The parts of the JPEG or JPEG-LS codestream whose SOI is at ``at``, within ``data[:end]``,
    as decoders walk it (ISO/IEC 10918-1 B.1.1, 14495-1 C.1): ``(kind, start, stop)`` in order,
    from just after SOI. ``kind`` is the marker code of a marker segment (``stop`` is where its
    length says it ends, which may pass ``end``), :data:`_STRAY` for bytes where a marker
    should be (up to the next marker), :data:`_FILL` for a fill byte, :data:`_BARE` for a marker
    without a length (TEM, RSTn), :data:`_SCAN` for the entropy-coded data after SOS (up to the
    next marker; JPEG-LS markers once SOF55 is met), ``0xD9`` for EOI (the walk ends after it)
    and :data:`_BROKEN` for a segment length under 2 (the walk ends there)."""
    p = at + 2
    marker_in_scan = _JPEG_MARKER
    while p + 1 < end:
        if data[p] != 0xFF:
            found = marker_in_scan.search(data, p, end)
            stop = found.start() if found else end
            yield _STRAY, p, stop
            p = stop
            continue
        marker = data[p + 1]
        if marker == 0xFF:
            yield _FILL, p, p + 1
            p += 1
            continue
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:
            yield _BARE, p, p + 2
            p += 2
            continue
        if marker == 0xD9:
            yield 0xD9, p, p + 2
            return
        length = int.from_bytes(data[p + 2 : p + 4], "big")
        if length < 2:
            yield _BROKEN, p, end
            return
        yield marker, p, p + 2 + length
        if marker == 0xF7:  # SOF55: a JPEG-LS frame
            marker_in_scan = _JPEG_LS_MARKER
        p += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next marker
            found = marker_in_scan.search(data, p, end)
            stop = found.start() if found else end
            yield _SCAN, p, stop
            p = stop


def _is_jpeg_text(marker: int) -> bool:
    """COM, APPn and reserved segments: read by no decoder's sample path (R10)."""
    return marker == 0xFE or 0xE0 <= marker <= 0xEF or marker in _JPEG_RESERVED


def _jpeg_texts(data: bytes, at: int, texts: list[bytes]) -> int:
    """The JPEG or JPEG-LS codestream at ``at`` (its SOI): its text into ``texts``; returns
    where it ends (after EOI, or the end of ``data``)."""
    n = len(data)
    for kind, start, stop in _jpeg_walk(data, at, n):
        if kind == _STRAY:  # stray bytes where a marker should be: text
            texts.append(data[start:stop])
        elif kind == _BROKEN:
            texts.append(data[start:])
            return n
        elif kind == 0xD9:
            return stop
        elif kind >= 0 and _is_jpeg_text(kind):
            texts.append(data[start + 4 : stop])
    return n


def _j2k_texts(data: bytes, at: int, end: int, texts: list[bytes]) -> int:
    """The JPEG 2000 codestream at ``at`` (its SOC), within ``data[:end]``: its COM text into
    ``texts``; returns where it ends (after EOC, or ``end``). Tile-part data (after SOD) is
    skipped by the tile-part's length (Psot; 0: to the codestream's end)."""
    p, tile_end = at + 2, end
    while p + 1 < end:
        if data[p] != 0xFF:  # stray bytes where a marker should be: text, to the next FF
            found = data.find(b"\xff", p, end)
            stop = found if found >= 0 else end
            texts.append(data[p:stop])
            p = stop
            continue
        marker = data[p + 1]
        if marker == 0xD9:  # EOC
            return p + 2
        if marker == 0x93:  # SOD: this tile-part's data, then the next marker
            if tile_end <= p:
                return end
            p = tile_end
            continue
        length = int.from_bytes(data[p + 2 : p + 4], "big")
        if length < 2:
            texts.append(data[p:end])
            return end
        if marker == 0x90:  # SOT: Psot, the tile-part's length from this marker
            psot = int.from_bytes(data[p + 6 : p + 10], "big")
            # Psot 0: to the codestream's EOC, the first FF D9 (no FF above 8F in packet data,
            # 15444-1 B.10.1)
            eoc = data.find(b"\xff\xd9", p, end)
            tile_end = p + psot if psot else (eoc if eoc > p else end)
        elif marker == 0x64:
            texts.append(data[p + 6 : p + 2 + length])
        elif marker not in _J2K_MARKERS:  # a segment no decoder reads: its payload is text
            texts.append(data[p + 4 : p + 2 + length])
        p += 2 + length
    return end


def _jp2_texts(data: bytes, at: int, texts: list[bytes]) -> int:
    """The JP2 file at ``at`` (its signature box): every box but the codestream (``jp2c``) is
    text; the codestream is walked as one (:func:`_j2k_texts`). Returns where it ends."""
    n, p = len(data), at
    while p + 8 <= n:
        length = int.from_bytes(data[p : p + 4], "big")
        kind = data[p + 4 : p + 8]
        header = 8
        if length == 1:
            length, header = int.from_bytes(data[p + 8 : p + 16], "big"), 16
        end = n if length == 0 else min(p + length, n)
        if end <= p:
            texts.append(data[p:])
            return n
        if kind == b"jp2c":
            codestream = data.startswith(b"\xff\x4f", p + header)
            stop = _j2k_texts(data, p + header, end, texts) if codestream else p + header
            if stop < end:
                texts.append(data[stop:end])  # after EOC, or no codestream at all
        else:
            texts.append(data[p + header : end])
        p = end
    return n


def codestream_end(frame: bytes) -> int | None:
    """Where the JPEG, JPEG-LS, JPEG 2000 or JP2 codestream starting ``frame`` ends (after its
    EOI or EOC, or the JP2 file's last box), or None when ``frame`` starts with none of them
    (another codec's samples). A truncated codestream ends at ``len(frame)``. Never raises.
    """
    texts: list[bytes] = []
    if frame.startswith(_SOI[:2]):
        return _jpeg_texts(frame, 0, texts)
    if frame.startswith(_SOC):
        return _j2k_texts(frame, 0, len(frame), texts)
    if frame.startswith(_JP2):
        return _jp2_end(frame)
    return None


def _jp2_end(data: bytes) -> int:
    """Where the JP2 file at the start of ``data`` ends: after its codestream box's codestream,
    when that box is the last one and runs to the end of ``data`` (length 0, 15444-1 I.4);
    else after its last whole box."""
    n, p = len(data), 0
    while p + 8 <= n:
        length = int.from_bytes(data[p : p + 4], "big")
        header = 8
        if length == 1:
            length, header = int.from_bytes(data[p + 8 : p + 16], "big"), 16
        if (
            length == 0
            and data[p + 4 : p + 8] == b"jp2c"
            and data.startswith(b"\xff\x4f", p + header)
        ):
            return _j2k_texts(data, p + header, n, [])
        end = n if length == 0 else p + length
        if end <= p or end > n:
            return n
        p = end
    return p


# What of a JPEG application segment a decoder reads, kept when its text is stripped: JFIF's
# version, units and densities with no thumbnail (JFIF 1.02: "JFIF\0", 2+1+2+2, then 0 x 0), the
# Adobe transform flag (Adobe TN 5116: "Adobe", version, flags0, flags1, transform) and the
# JPEG-LS colour transform (HP's "mrfx" and its one byte, as CharLS reads it).
_KEPT_APP = {0xE0: (b"JFIF\0", 14), 0xEE: (b"Adobe", 12), 0xE8: (b"mrfx", 5)}


def stripped_codestream(frame: bytes) -> bytes | None:
    """``frame`` (one frame of encapsulated Pixel Data) without the text it carries beside its
    samples, or None when it has none or is not a codestream this can rewrite safely.

    JPEG and JPEG-LS (ISO/IEC 10918-1 B.2, 14495-1): COM segments, APPn segments (EXIF, XMP, ICC
    profiles, thumbnails, vendors' notes) and reserved segments (RES, JPG, JPGn) are dropped,
    but for what a decoder reads of the first JFIF (APP0, its thumbnail dropped), Adobe (APP14)
    and JPEG-LS colour transform (APP8 ``mrfx``) segments, kept at their fixed lengths (a shorter
    one as it is); stray bytes where a marker should be are dropped. JPEG 2000 (15444-1 A): the
    COM segments and segments no decoder reads of the main header and of every tile-part
    header (each tile-part's Psot made smaller to match; the main header's TLM, which an
    encoder may write to index tile-parts, dropped then: it is optional, A.7.1); tile-parts
    that do not follow one another exactly up to EOC are left as they are. Whatever follows
    the codestream's end (EOI, EOC: a trailer, a second codestream) is dropped. A JP2 file
    (15444-1 I, excluded by PS3.5 A.4.4) keeps its signature, file type and header boxes
    (colour, channel definitions, palette) and its one codestream box, stripped; other boxes
    (XML, UUID, IPR) are dropped. The samples decode as before; frames of other codecs and
    codestreams cut short give None (verification still searches their text). Never raises.
    """
    if frame.startswith(_JP2):
        return _jp2_stripped(frame)
    end = codestream_end(frame)
    if end is None:
        return None
    jpeg = frame.startswith(_SOI[:2])
    out = _jpeg_stripped(frame, end) if jpeg else _j2k_stripped(frame, end)
    if out is None or (out == frame[:end] and not frame[end:].strip(b"\0")):
        return None  # cut short, or nothing but padding to drop
    return out


def _jpeg_stripped(data: bytes, end: int) -> bytes | None:
    """The JPEG codestream ``data[:end]`` without its text (see :func:`stripped_codestream`)."""
    kept = [data[:2]]
    seen: set[int] = set()
    for kind, start, stop in _jpeg_walk(data, 0, end):
        if kind in (_STRAY, _FILL):  # stray bytes where a marker should be, fill: dropped
            continue
        if kind == _BROKEN or stop > end:
            return None
        if kind in (_BARE, _SCAN):  # TEM, RSTn; entropy-coded data, as it is
            kept.append(data[start:stop])
        elif kind == 0xD9:
            kept.append(data[start:stop])
            return b"".join(kept)
        elif kind in _KEPT_APP:
            name, size = _KEPT_APP[kind]
            payload = data[start + 4 : stop]
            if payload.startswith(name) and kind not in seen:
                seen.add(kind)  # the first one only: a decoder reads no other
                if len(payload) >= size:  # shorter: as it is (libjpeg reads no JFIF then)
                    payload = payload[:size]
                    if kind == 0xE0:
                        payload = payload[:12] + b"\0\0"  # no thumbnail
                kept.append(bytes([0xFF, kind]) + (2 + len(payload)).to_bytes(2, "big") + payload)
        elif not _is_jpeg_text(kind):
            kept.append(data[start:stop])
    return None  # no EOI


def _j2k_stripped(data: bytes, end: int) -> bytes | None:
    """The JPEG 2000 codestream ``data[:end]`` without its text segments (main header and
    tile-part headers), or None when its main header is not whole."""
    kept = [data[:2]]
    tlm: list[int] = []  # where the main header's TLM segments are in ``kept``
    p = 2
    while p + 4 <= end and data[p] == 0xFF:
        marker = data[p + 1]
        if marker == 0x90:  # the first SOT: the tile-parts follow
            tail, shrunk = _j2k_tile_parts(data, p, end)
            if shrunk:  # TLM (A.7.1) gives tile-part lengths; optional, so dropped
                kept = [segment for n, segment in enumerate(kept) if n not in tlm]
            kept.extend(tail)
            return b"".join(kept)
        length = int.from_bytes(data[p + 2 : p + 4], "big")
        if length < 2:
            return None
        if marker in _J2K_MARKERS:  # COM (64) and segments no decoder reads are dropped
            if marker == 0x55:
                tlm.append(len(kept))
            kept.append(data[p : p + 2 + length])
        elif marker != 0x64 and _hides_marker(data[p + 4 : p + 2 + length]):
            return None
        p += 2 + length
    return None  # a main header that is not whole


def _hides_marker(payload: bytes) -> bool:
    """Whether the payload of an unknown JPEG 2000 segment holds a marker a decoder reads.
    OpenJPEG does not skip such a segment by its length: it looks for the next marker it
    knows, inside the payload too, so a COD hidden there is read (a fresh-user check of the
    tenth pass: the same frame decoded otherwise once the segment was dropped). Such a frame is
    left as it is (its text is still searched)."""
    at = payload.find(b"\xff")
    while at >= 0 and at + 1 < len(payload):
        if payload[at + 1] in _J2K_MARKERS or payload[at + 1] in (0x64, 0x93, 0xD9):
            return True
        at = payload.find(b"\xff", at + 1)
    return False


def _j2k_tile_parts(data: bytes, at: int, end: int) -> tuple[list[bytes], bool]:
    """The tile-parts from ``at`` (the first SOT) to EOC at ``end`` without the COM and unknown
    segments of their headers, each Psot (A.4.2: its length from SOT, 0 for a last tile-part
    running to EOC) made smaller by what went; and whether any went. Tile-parts that do not
    follow one another exactly up to EOC are kept as they are (their text is still searched)."""
    out: list[bytes] = []
    shrunk = False
    p = at
    while p + 12 <= end and data[p : p + 4] == b"\xff\x90\x00\x0a":
        psot = int.from_bytes(data[p + 6 : p + 10], "big")
        tile_end = p + psot if psot else end - 2
        if tile_end > end - 2 or (psot and psot < 14):
            break
        header: list[bytes] = []
        dropped = 0
        q = p + 12
        while q + 2 <= tile_end and data[q] == 0xFF and data[q + 1] != 0x93:  # up to SOD
            length = int.from_bytes(data[q + 2 : q + 4], "big")
            if length < 2 or q + 2 + length > tile_end:
                return [data[at:end]], False
            if data[q + 1] in _J2K_MARKERS and data[q + 1] != 0x90:
                header.append(data[q : q + 2 + length])
            elif data[q + 1] != 0x64 and _hides_marker(data[q + 4 : q + 2 + length]):
                return [data[at:end]], False
            else:
                dropped += 2 + length
            q += 2 + length
        if q + 2 > tile_end or data[q : q + 2] != b"\xff\x93":
            return [data[at:end]], False
        sot = data[p : p + 12]
        if dropped and psot:
            sot = sot[:6] + (psot - dropped).to_bytes(4, "big") + sot[10:]
        shrunk = shrunk or dropped > 0
        out += [sot, *header, data[q:tile_end]]
        p = tile_end
    if p != end - 2 or data[p:end] != b"\xff\xd9":
        return [data[at:end]], False
    out.append(data[p:end])
    return out, shrunk


# JP2 boxes a decoder reads (15444-1 I.5): signature, file type, header (image header, colour,
# channel definitions, palette, component mapping, resolution) and the codestream.
_JP2_KEPT = (b"jP  ", b"ftyp", b"jp2h")


def _jp2_stripped(frame: bytes) -> bytes | None:
    """A JP2 file with its kept boxes and its one codestream box stripped (see
    :func:`stripped_codestream`), or None when it has not exactly one codestream box."""
    boxes: list[bytes] = []
    codestreams = 0
    for kind, header, content in _jp2_boxes(frame) or []:
        if kind == b"jp2c":
            codestreams += 1
            end = codestream_end(content) if content.startswith(_SOC) else None
            if end is None:
                return None
            inner = _j2k_stripped(content, end) or content[:end]
            boxes.append((8 + len(inner)).to_bytes(4, "big") + b"jp2c" + inner)
        elif kind in _JP2_KEPT:
            boxes.append(header + content)
    if codestreams != 1:
        return None
    out = b"".join(boxes)
    return None if out == frame else out


def _jp2_boxes(frame: bytes) -> list[tuple[bytes, bytes, bytes]] | None:
    """A JP2 file's boxes as ``(type, header bytes, content)``, or None when they do not fill
    the frame (00 or FF padding aside)."""
    boxes = []
    p, n = 0, len(frame)
    while p + 8 <= n:
        length = int.from_bytes(frame[p : p + 4], "big")
        header = 8
        if length == 1:
            length, header = int.from_bytes(frame[p + 8 : p + 16], "big"), 16
        end = n if length == 0 else p + length
        if end < p + header or end > n:
            return None
        boxes.append((frame[p + 4 : p + 8], frame[p : p + header], frame[p + header : end]))
        p = end
    return boxes if frame[p:].strip(b"\0\xff") == b"" else None


def jp2_codestream(frame: bytes) -> bytes | None:
    """The codestream of a JP2 file (15444-1 I.4: boxes of length, type, contents) when it has
    exactly one codestream box (``jp2c``) and its boxes fill the frame (00 or FF padding aside),
    else None. Never raises."""
    found = [content for kind, _, content in _jp2_boxes(frame) or [] if kind == b"jp2c"]
    return found[0] if len(found) == 1 else None


def stripped_frames(value: bytes, frames: int) -> tuple[list[bytes], bool] | None:
    """The frames of encapsulated Pixel Data ``value`` (its items, PS3.5 A.4: the Basic Offset
    Table, then the fragments; a Sequence Delimitation Item after them is ignored) with the
    text of each stripped (:func:`stripped_codestream`), and whether the Basic Offset Table
    held offsets; None when no frame changed or the frames cannot be told apart with certainty
    (left as they are).

    ``frames`` is Number of Frames. One frame is all the fragments; more are told apart by the
    Basic Offset Table, else one fragment a frame, else by the fragments that begin a
    codestream (as pydicom tells them). A frame left as it was is given as it
    was. The caller encapsulates them again (``pydicom.encaps.encapsulate``, one fragment a
    frame; ``encapsulate_extended`` for an Extended Offset Table). Never raises.
    """
    table, fragments = _items(value)
    if not fragments:
        return None
    if frames == 1:  # every fragment, whatever the table says (it is written again)
        split = [b"".join(fragments)]
    elif table:
        offsets = [int.from_bytes(table[i : i + 4], "little") for i in range(0, len(table), 4)]
        starts, position = [], 0
        for fragment in fragments:
            starts.append(position)
            position += 8 + len(fragment)
        if len(offsets) != frames or offsets[0] != 0 or any(o not in starts for o in offsets):
            return None
        index = [starts.index(o) for o in offsets] + [len(fragments)]
        split = [b"".join(fragments[a:b]) for a, b in zip(index, index[1:], strict=False)]
    elif len(fragments) == frames:
        split = list(fragments)
    else:  # no table, frames over several fragments: each frame begins a codestream
        index = [i for i, f in enumerate(fragments) if f.startswith((_SOI[:2], _SOC, _JP2))]
        if len(index) != frames or index[0] != 0:
            return None
        index.append(len(fragments))
        split = [b"".join(fragments[a:b]) for a, b in zip(index, index[1:], strict=False)]
    out = [stripped_codestream(frame) for frame in split]
    if all(frame is None for frame in out):
        return None
    return [o if o is not None else f for o, f in zip(out, split, strict=True)], bool(table)


def _items(value: bytes) -> tuple[bytes, list[bytes]]:
    """The Basic Offset Table and fragments of encapsulated Pixel Data, or ``(b"", [])`` when
    an item is cut or something else than an item or the delimiter follows."""
    fragments: list[bytes] = []
    table: bytes | None = None
    at, n = 0, len(value)
    while at + 8 <= n:
        tag = value[at : at + 4]
        if tag == b"\xfe\xff\xdd\xe0":  # Sequence Delimitation Item
            break
        if tag != ITEM_TAG:
            return b"", []
        length = int.from_bytes(value[at + 4 : at + 8], "little")
        if at + 8 + length > n:
            return b"", []
        item = bytes(value[at + 8 : at + 8 + length])
        if table is None:
            table = item
        else:
            fragments.append(item)
        at += 8 + length
    return table or b"", fragments


def _strippable(transfer_syntax: str) -> bool:
    """JPEG, JPEG-LS, JPEG 2000 and HTJ2K transfer syntaxes (PS3.5 A.4.1-A.4.4, A.4.11), not
    JPEG 2000 Part 2 Multi-component (its marker segments are not all known here)."""
    return transfer_syntax in _STRIPPABLE


_STRIPPABLE = frozenset(
    str(uid) for uid in (*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes)
) - {"1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"}  # Part 2: its markers are left as written


def strip_pixel_data_text(ds: Any) -> bool:
    """Strip the text of each compressed frame of ``ds`` (a pydicom Dataset) in place
    (:func:`stripped_frames`): Pixel Data encapsulated again, one fragment a frame, with a
    Basic Offset Table when it had offsets, or a new Extended Offset Table and its lengths when
    it had one (PS3.5 A.4). Returns whether anything changed. Other transfer syntaxes, native
    pixel data and frames that cannot be told apart are left as they are.

    Raises:
        Nothing of its own; pydicom's errors reading Pixel Data or the header propagate.
    """
    from pydicom.encaps import encapsulate, encapsulate_extended

    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not _strippable(syntax) or "PixelData" not in ds:
        return False
    value = ds.PixelData
    if not isinstance(value, bytes):
        return False
    got = stripped_frames(value, int(ds.get("NumberOfFrames", 1) or 1))
    if got is None:
        return False
    frames, table = got
    if "ExtendedOffsetTable" in ds:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            frames
        )
    else:
        ds.PixelData = encapsulate(frames, has_bot=table)
    return True


def stripped_pixel_element(element: bytes, transfer_syntax: str, frames: int) -> bytes | None:
    """A Pixel Data element's bytes (tag, Explicit VR ``OB`` or ``OW``, undefined length, items,
    Sequence Delimitation Item; PS3.5 7.1.2, A.4) with each frame's text stripped as
    :func:`strip_pixel_data_text` strips it (no Extended Offset Table: the caller checks),
    byte for byte what pydicom writes for the stripped dataset; None when nothing changes.
    Never raises.
    """
    from pydicom.encaps import encapsulate

    if not _strippable(transfer_syntax) or element[8:12] != b"\xff\xff\xff\xff":
        return None
    got = stripped_frames(element[12:], frames)
    if got is None:
        return None
    value = encapsulate(got[0], has_bot=got[1])
    return element[:12] + value + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
