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

ITEM_TAG = b"\xfe\xff\x00\xe0"
# A JPEG marker inside entropy-coded data: FF then neither 00 (a stuffed FF), RSTn (D0-D7) nor FF
# (fill) (ISO/IEC 10918-1 B.1.1.2, B.1.1.5); in JPEG-LS scan data an FF is followed by a byte
# below 80 unless it begins a marker (ISO/IEC 14495-1 A.1).
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_JPEG_LS_MARKER = re.compile(rb"\xff[\x80-\xcf\xd8-\xfe]")
_SOI, _SOC, _JP2 = b"\xff\xd8\xff", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  "
# JPEG markers reserved for extensions (JPGn, ISO/IEC 10918-1 B.1.1.3) but the JPEG-LS ones (F7
# SOF55, F8 LSE, 14495-1 C.1): a segment under one is read by no decoder, so it is text.
_JPEG_RESERVED = frozenset(range(0xF0, 0xFE)) - {0xF7, 0xF8}
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


def _jpeg_texts(data: bytes, at: int, texts: list[bytes]) -> int:
    """The JPEG or JPEG-LS codestream at ``at`` (its SOI): its text into ``texts``; returns
    where it ends (after EOI, or the end of ``data``)."""
    n, p = len(data), at + 2
    marker_in_scan = _JPEG_MARKER
    while p + 1 < n:
        if data[p] != 0xFF:  # stray bytes where a marker should be: text, to the next marker
            found = marker_in_scan.search(data, p)
            end = found.start() if found else n
            texts.append(data[p:end])
            p = end
            continue
        marker = data[p + 1]
        if marker == 0xFF:  # fill byte
            p += 1
            continue
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:  # no length: TEM, RSTn
            p += 2
            continue
        if marker == 0xD9:  # EOI
            return p + 2
        length = int.from_bytes(data[p + 2 : p + 4], "big")
        if length < 2:
            texts.append(data[p:])
            return n
        if marker == 0xFE or 0xE0 <= marker <= 0xEF or marker in _JPEG_RESERVED:
            texts.append(data[p + 4 : p + 2 + length])
        elif marker == 0xF7:  # SOF55: a JPEG-LS frame
            marker_in_scan = _JPEG_LS_MARKER
        p += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next marker
            found = marker_in_scan.search(data, p)
            p = found.start() if found else n
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
