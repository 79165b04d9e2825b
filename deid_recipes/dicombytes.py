"""Byte-level DICOM helpers shared by the engine and the fast path.

Why a module of its own: the engine (:mod:`deid_recipes.engine`) checks the framing of a
sequence's raw bytes before pydicom reads it, and the fast path (:mod:`deid_recipes.fastpath`)
reads, re-encodes and writes header elements as bytes without pydicom. Both need the same
encoding rules: which VRs take a 4-byte length, how an element header is laid out, the item
and delimiter tags, how a value is padded, which character sets can be decoded. Keeping them
here gives each rule one owner and lets both callers use public names.

Everything here is for little-endian data; only explicit VR is encoded. The rules come from
DICOM PS3.5: 6.2 (value representations, padding), 7.1.2 (explicit VR element layout), 7.1.3
(implicit VR), 7.5 (nesting of data sets: items and delimitation), 6.1.2.3 / Annex E
(Specific Character Set defined terms). No function here logs or returns a value read from an
element beyond what its caller asked for.
"""

from __future__ import annotations

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.multival import MultiValue

# Deepest sequence nesting read or written (a deeper object is refused, never half done).
MAX_DEPTH = 32

PIXEL_DATA = 0x7FE00010
SPECIFIC_CHARACTER_SET = 0x00080005

# Item, Item Delimitation Item and Sequence Delimitation Item tags (PS3.5 7.5).
ITEM = 0xFFFEE000
ITEM_DELIMITATION = 0xFFFEE00D
SEQUENCE_DELIMITATION = 0xFFFEE0DD
# A length of FFFFFFFFH: the value ends with its delimitation item (PS3.5 7.1.1, 7.5).
UNDEFINED_LENGTH = 0xFFFFFFFF

# VRs whose explicit VR element header has two reserved bytes and a 4-byte length
# (PS3.5 7.1.2, Table 7.1-1); every other VR has a 2-byte length.
LONG_VRS = frozenset(
    {
        b"OB",
        b"OD",
        b"OF",
        b"OL",
        b"OV",
        b"OW",
        b"SQ",
        b"SV",
        b"UC",
        b"UN",
        b"UR",
        b"UT",
        b"UV",
    }
)
# VRs holding a stream of bytes or words rather than text or numbers (PS3.5 6.2): their empty
# value is ``b""``.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
# Byte size of one value of each fixed-length numeric VR (PS3.5 6.2).
NUMERIC_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "UV": 8, "SV": 8}
# Character-string VRs padded to even length with a trailing space (PS3.5 6.2; UI pads with a
# NUL byte instead, and so do the binary VRs OB and UN).
SPACE_PADDED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
    | {"UR", "UT"}
)


def read_u16(data: bytes, pos: int) -> int:
    """An unsigned 16-bit little-endian integer.

    Parameters
    ----------
    data : bytes
        The encoded bytes.
    pos : int
        Offset of the integer's first byte.

    Returns
    -------
    int
        The value, 0 to 65535 (fewer than two bytes left read as the bytes there are).
    """
    return int.from_bytes(data[pos : pos + 2], "little")


def read_u32(data: bytes, pos: int) -> int:
    """An unsigned 32-bit little-endian integer (a value length, PS3.5 7.1.2).

    Parameters
    ----------
    data : bytes
        The encoded bytes.
    pos : int
        Offset of the integer's first byte.

    Returns
    -------
    int
        The value, 0 to 0xFFFFFFFF (fewer than four bytes left read as the bytes there are).
    """
    return int.from_bytes(data[pos : pos + 4], "little")


def read_tag(data: bytes, pos: int) -> int:
    """A little-endian tag: group number then element number, 16 bits each (PS3.5 7.1.1).

    Parameters
    ----------
    data : bytes
        The encoded bytes.
    pos : int
        Offset of the tag's first byte.

    Returns
    -------
    int
        The tag as ``(group << 16) | element``, e.g. ``0x7FE00010`` for Pixel Data.
    """
    return (read_u16(data, pos) << 16) | read_u16(data, pos + 2)


def value_offset(vr: bytes) -> int:
    """Length of an explicit VR little endian element header (PS3.5 7.1.2).

    Parameters
    ----------
    vr : bytes
        The two VR bytes of the header, e.g. ``b"SQ"``.

    Returns
    -------
    int
        12 for the VRs in :data:`LONG_VRS` (tag, VR, two reserved bytes, 4-byte length), else 8
        (tag, VR, 2-byte length): where the value starts, counted from the element's first byte.
    """
    return 12 if vr in LONG_VRS else 8


def element_value(element: bytes) -> bytes:
    """The value bytes of one encoded explicit VR little endian element (PS3.5 7.1.2).

    Parameters
    ----------
    element : bytes
        One whole element of defined length: header then value.

    Returns
    -------
    bytes
        The value field, padding included (everything after the header).
    """
    return element[value_offset(element[4:6]) :]


def encode_element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element of defined length (PS3.5 7.1.2).

    Parameters
    ----------
    tag : int
        The tag as ``(group << 16) | element``.
    vr : str
        Its two-letter VR, e.g. ``"UI"``.
    value : bytes
        The encoded value. An odd length is padded to even (PS3.5 6.2): a NUL byte for UI, OB
        and UN, a space for every other VR.

    Returns
    -------
    bytes
        Tag (group then element, each little endian), VR, then a 2-byte length, or two reserved
        zero bytes and a 4-byte length for :data:`LONG_VRS`, then the padded value.
    """
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB", "UN") else b" "
    head = tag.to_bytes(4, "big")
    head = head[1::-1] + head[:1:-1]  # group then element, each little endian
    if vr.encode() in LONG_VRS:
        return head + vr.encode() + b"\x00\x00" + len(value).to_bytes(4, "little") + value
    return head + vr.encode() + len(value).to_bytes(2, "little") + value


def check_sequence_bytes(data: bytes, implicit: bool) -> None:
    """Check the framing of a little-endian sequence value before anything parses it.

    pydicom reads a damaged sequence without complaint; this walks the items by their headers
    only (PS3.5 7.5): every item must start with an Item tag, every length must stay inside its
    parent, undefined lengths must end with their delimitation item, and nested sequences (an
    SQ VR, or in implicit VR a tag the dictionary calls SQ, PS3.5 7.1.3) are checked the same
    way, down to :data:`MAX_DEPTH` levels.

    Parameters
    ----------
    data : bytes
        The sequence's value field (the bytes after its element header).
    implicit : bool
        True when the data set is encoded in implicit VR (no VR bytes in element headers).

    Raises
    ------
    ValueError
        The framing is broken; the message says how (never a value read from the data).
    """
    end = _check_items(data, 0, len(data), implicit, undefined=False, depth=0)
    if end != len(data):
        raise ValueError("trailing bytes after the last item")


def _check_items(
    data: bytes, pos: int, end: int, implicit: bool, undefined: bool, depth: int
) -> int:
    if depth > MAX_DEPTH:
        raise ValueError("sequence too deep")
    while pos < end:
        if pos + 8 > end:
            raise ValueError("item header cut short")
        tag, length = read_tag(data, pos), read_u32(data, pos + 4)
        if tag == SEQUENCE_DELIMITATION and undefined:
            return pos + 8
        if tag != ITEM:
            raise ValueError("expected an item tag")
        pos += 8
        if length == UNDEFINED_LENGTH:
            pos = _check_elements(data, pos, end, implicit, True, depth)
        else:
            if pos + length > end:
                raise ValueError("item longer than its sequence")
            if _check_elements(data, pos, pos + length, implicit, False, depth) != pos + length:
                raise ValueError("item elements overrun the item")
            pos += length
    if undefined:
        raise ValueError("sequence delimiter missing")
    return pos


def _check_elements(
    data: bytes, pos: int, end: int, implicit: bool, undefined: bool, depth: int
) -> int:
    while pos < end:
        if pos + 8 > end:
            raise ValueError("element header cut short")
        tag = read_tag(data, pos)
        if tag == ITEM_DELIMITATION and undefined:
            return pos + 8
        if implicit:
            vr = b""
            length = read_u32(data, pos + 4)
            pos += 8
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in LONG_VRS:
                if pos + 12 > end:
                    raise ValueError("element header cut short")
                length = read_u32(data, pos + 8)
                pos += 12
            else:
                length = read_u16(data, pos + 6)
                pos += 8
        is_seq = vr == b"SQ" or (implicit and _implicit_is_sequence(tag))
        if length == UNDEFINED_LENGTH:
            if not (is_seq or vr == b"UN" or implicit):
                raise ValueError("undefined length on a value that cannot have one")
            pos = _check_items(data, pos, end, implicit, True, depth + 1)
            continue
        if pos + length > end:
            raise ValueError("value longer than its item")
        if is_seq:
            _check_items(data, pos, pos + length, implicit, False, depth + 1)
        pos += length
    if undefined:
        raise ValueError("item delimiter missing")
    return pos


def _implicit_is_sequence(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def charset_terms(value: object) -> list[str]:
    """The defined terms of a Specific Character Set (0008,0005) value (PS3.3 C.12.1.1.2).

    Parameters
    ----------
    value : bytes, str, list of str or None
        The element's value: raw bytes as read (backslash-separated, PS3.5 6.4), a converted
        single value, or a multi-value.

    Returns
    -------
    list of str
        One term per value, padding (spaces, NUL) stripped; an empty value gives ``[""]``.
    """
    if isinstance(value, bytes):
        return [t.strip(" \x00") for t in value.decode("ascii", "replace").split("\\")]
    if isinstance(value, MultiValue | list):
        return [str(t).strip() for t in value]
    return [str(value or "").strip()]


def unsupported_charset(value: object) -> bool:
    """True when a Specific Character Set names a term pydicom cannot decode.

    Text in such a data set could be misread (and a name in it missed), so callers refuse it.

    Parameters
    ----------
    value : bytes, str, list of str or None
        The Specific Character Set (0008,0005) value, as for :func:`charset_terms`.

    Returns
    -------
    bool
        True when a non-empty term is not one of the defined terms (PS3.3 C.12.1.1.2) that
        ``pydicom.charset.python_encoding`` maps to a Python codec.
    """
    return any(term and term not in python_encoding for term in charset_terms(value))


__all__ = [
    "BINARY_VRS",
    "ITEM",
    "ITEM_DELIMITATION",
    "LONG_VRS",
    "MAX_DEPTH",
    "NUMERIC_SIZES",
    "PIXEL_DATA",
    "SEQUENCE_DELIMITATION",
    "SPACE_PADDED_VRS",
    "SPECIFIC_CHARACTER_SET",
    "UNDEFINED_LENGTH",
    "charset_terms",
    "check_sequence_bytes",
    "element_value",
    "encode_element",
    "read_tag",
    "read_u16",
    "read_u32",
    "unsupported_charset",
]
