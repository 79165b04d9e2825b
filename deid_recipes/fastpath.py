"""The fast path: de-identify the header, copy the pixel data with the kernel.

Why: pixel data is most of the bytes of an image and the profile never changes them, yet reading
them into Python and writing them back is what makes a pydicom round trip run at about 0.3x of a
file copy. For the common layout (explicit VR little endian, pixel data the last element of the
dataset) this module reads only the header bytes and applies the engine's per-tag plan to them
as bytes (:class:`ByteEngine`: copy, drop, blank, dummy, UID remap, research ID, date shift, and
kept / UID-remapped sequences item by item); only what needs more (dummied or cleaned content,
safe private blocks, nested character sets) goes to :class:`Engine` as a small dataset. It then
writes the de-identified header and appends the pixel data element by ``os.copy_file_range``
(``os.sendfile`` where that is missing) straight from the source file, so those bytes never pass
through Python.

Compressed frames (JPEG, JPEG-LS, JPEG 2000) are the exception: their pixel data element is read
and written again without the text beside the samples (comments, application segments:
``ridl.codestream.stripped_pixel_element``), as :meth:`Engine.apply` strips it; an object with an
Extended Offset Table whose frames change takes the whole-object path.

Anything else (implicit VR, big endian, deflate, elements after the pixel data, a header larger
than ``MAX_HEADER``, elements read as UN or naming no VR) returns ``None``, and the caller uses
the ordinary whole-object path; both give the same bytes (``tests/test_deid_fastpath.py`` and,
for runs, ``tests/test_run_fastpath.py`` check it).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID
from pydicom.valuerep import VR as _VR

from deid_recipes.dates import TEMPORAL_VRS, shift_temporal
from deid_recipes.dicombytes import (
    BINARY_VRS,
    ITEM,
    ITEM_DELIMITATION,
    LONG_VRS,
    MAX_DEPTH,
    NUMERIC_SIZES,
    PIXEL_DATA,
    SEQUENCE_DELIMITATION,
    SPACE_PADDED_VRS,
    SPECIFIC_CHARACTER_SET,
    UNDEFINED_LENGTH,
    element_value,
    encode_element,
    read_tag,
    read_u16,
    read_u32,
    value_offset,
)
from deid_recipes.engine import (
    DUMMY_BY_VR,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION,
    DeidError,
    Engine,
    SubjectContext,
    check_charset,
)
from deid_recipes.iod import (
    DIMENSION_INDEX_SEQUENCE,
    FRAME_INCREMENT_POINTER,
    keeps_empty_sequence,
    pointers_at_risk,
)
from ridl.codestream import stripped_pixel_element
from ridl.errors import ObjectRejected
from ridl.reasons import Reason

CHUNK = 16 * 1024
MAX_HEADER = 16 * 1024 * 1024
# Dataset encodings the fast path reads: explicit VR little endian, native or encapsulated.
NOT_FAST = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
}


SubjectFor = Callable[[Dataset], SubjectContext]
TargetFor = Callable[[Dataset, SubjectContext], Path]


class _Truncated(Exception):
    """More header bytes are needed."""


@dataclass
class Header:
    """A file's header bytes, where its dataset starts and where the pixel data element lies."""

    raw: bytes
    start: int  # first dataset element, after the File Meta
    syntax: str
    pixel_offset: int  # start of the (7FE0,0010) element
    pixel_end: int  # end of the pixel data element (the file size: it is last)
    elements: list[tuple[int, int, int, str]]  # top-level (tag, begin, end, VR) before it


def _skip_undefined(data: bytes, pos: int) -> int:
    """End of an undefined-length value (items up to the sequence delimiter)."""
    depth = 0
    while True:
        if pos + 8 > len(data):
            raise _Truncated
        tag, length = read_tag(data, pos), read_u32(data, pos + 4)
        if tag == SEQUENCE_DELIMITATION:
            if depth == 0:
                return pos + 8
            depth -= 1
            pos += 8
            continue
        if tag in (ITEM, ITEM_DELIMITATION):
            pos += 8
            if tag == ITEM and length != UNDEFINED_LENGTH:
                pos += length
            continue
        # an element inside an undefined-length item (explicit VR)
        if pos + 8 > len(data):
            raise _Truncated
        vr = data[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(data):
                raise _Truncated
            length = read_u32(data, pos + 8)
            pos += 12
        else:
            length = read_u16(data, pos + 6)
            pos += 8
        if length == UNDEFINED_LENGTH:
            depth += 1
        else:
            pos += length
        if pos > len(data):
            raise _Truncated


_HEAD = struct.Struct("<HH2sH")
_LEN = struct.Struct("<I")
Element = tuple[int, int, int, str]


def _walk_top(data: bytes, start: int, stop: int) -> tuple[list[Element], int | None]:
    """Top-level elements of ``data[start:stop]`` (tag, begin, end, VR), stopping at the pixel
    data element, whose offset is returned too (None when the data ends without one).
    Raises _Truncated when an element runs past the bytes read so far."""
    out: list[Element] = []
    pos = start
    unpack, length_at = _HEAD.unpack_from, _LEN.unpack_from
    limit = len(data)
    while pos < stop:
        if pos + 8 > limit:
            raise _Truncated
        group, element, vr, length = unpack(data, pos)
        tag = (group << 16) | element
        if tag == PIXEL_DATA:
            return out, pos
        if vr in LONG_VRS:
            if pos + 12 > limit:
                raise _Truncated
            length = length_at(data, pos + 8)[0]
            value_at = pos + 12
        else:
            value_at = pos + 8
        end = _skip_undefined(data, value_at) if length == UNDEFINED_LENGTH else value_at + length
        if end > limit:
            raise _Truncated
        out.append((tag, pos, end, vr.decode("ascii", "replace")))
        pos = end
    return out, None


def _item_elements(data: bytes, pos: int) -> tuple[list[Element], int]:
    """Elements of an undefined-length item starting at ``pos``, and the end of its delimiter."""
    out: list[Element] = []
    limit = len(data)
    while True:
        if pos + 8 > limit:
            raise _Truncated
        group, element, vr, length = _HEAD.unpack_from(data, pos)
        tag = (group << 16) | element
        if tag == ITEM_DELIMITATION:
            return out, pos + 8
        if vr in LONG_VRS:
            if pos + 12 > limit:
                raise _Truncated
            length = _LEN.unpack_from(data, pos + 8)[0]
            value_at = pos + 12
        else:
            value_at = pos + 8
        end = _skip_undefined(data, value_at) if length == UNDEFINED_LENGTH else value_at + length
        if end > limit:
            raise _Truncated
        out.append((tag, pos, end, vr.decode("ascii", "replace")))
        pos = end


def _split(data: bytes, start: int, stop: int) -> list[Element]:
    """Top-level elements of encoded bytes that hold no pixel data."""
    return _walk_top(data, start, stop)[0]


def _meta_end(data: bytes) -> tuple[int, str] | None:
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    pos = 132
    syntax = ""
    while pos + 8 <= len(data) and read_u16(data, pos) == 0x0002:
        element = read_u16(data, pos + 2)
        vr = data[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            length = read_u32(data, pos + 8)
            value_at = pos + 12
        else:
            length = read_u16(data, pos + 6)
            value_at = pos + 8
        if element == 0x0010:
            syntax = data[value_at : value_at + length].decode("ascii", "replace").strip("\x00 ")
        pos = value_at + length
    return pos, syntax


def read_header(fp: BinaryIO, size: int) -> Header | None:
    """The data set up to the pixel data, or None when this layout is not for the fast path.

    Reads 16 KiB, then doubles what it has read until the top-level elements before Pixel Data
    (7FE0,0010) are whole (at most ``MAX_HEADER`` bytes); the pixel data is never read, only the
    headers of its fragments when it is encapsulated (PS3.5 A.4).

    Args:
        fp: the file, open in binary mode at offset 0.
        size: the file's size in bytes.

    Returns:
        The header bytes and element offsets, or None for a layout the fast path leaves to the
        dataset path: no "DICM" preamble, implicit VR, big endian or deflate transfer syntax, no
        pixel data, elements after the pixel data, or a header over ``MAX_HEADER`` bytes.

    Raises:
        ObjectRejected: ``truncated`` when the pixel data is shorter than its length, its
            fragments or the image (Rows x Columns x Samples per Pixel x Number of Frames x
            Bits Allocated); ``unreadable`` when those image attributes cannot be read.
    """
    data = fp.read(CHUNK)
    meta = _meta_end(data)
    if meta is None:
        return None
    start, syntax = meta
    if not syntax or syntax in NOT_FAST:
        return None
    while True:
        try:
            elements, pixel = _walk_top(data, start, len(data))
            break
        except _Truncated:
            if len(data) >= size or len(data) >= MAX_HEADER:
                return None
            more = fp.read(len(data))
            if not more:
                return None
            data += more
    if pixel is None:
        return None  # no pixel data: nothing to gain, the whole-object path is as fast
    # The pixel data element must be the last one of the file.
    if pixel + 12 > len(data):
        fp.seek(pixel)
        head = fp.read(12)
    else:
        head = data[pixel : pixel + 12]
    if len(head) < 12:
        raise ObjectRejected(Reason.TRUNCATED, "pixel data header")
    length = read_u32(head, 8)
    if length == UNDEFINED_LENGTH:
        end = _encapsulated_end(fp, pixel + 12, size)
        if end is None:
            raise ObjectRejected(Reason.TRUNCATED, "encapsulated pixel data")
    else:
        end = pixel + 12 + length
        if end > size:
            raise ObjectRejected(Reason.TRUNCATED, "pixel data shorter than its length")
    if end != size:
        return None  # elements after the pixel data: let the whole-object path see them
    if not UID(syntax).is_encapsulated:
        _check_native_length(data, elements, length)
    return Header(data, start, syntax, pixel, end, elements)


SAMPLES, FRAMES, ROWS, COLUMNS, BITS = 0x00280002, 0x00280008, 0x00280010, 0x00280011, 0x00280100


def _check_native_length(data: bytes, elements: list[Element], length: int) -> None:
    """Quarantine native pixel data shorter than Rows x Columns x samples x frames says."""
    values: dict[int, bytes] = {}
    for tag, begin, end, vr in elements:
        if tag in (SAMPLES, FRAMES, ROWS, COLUMNS, BITS):
            values[tag] = data[begin + value_offset(vr.encode()) : end]
    if ROWS not in values:
        return
    try:
        rows, columns = (int.from_bytes(values[t][:2], "little") for t in (ROWS, COLUMNS))
        bits = int.from_bytes(values[BITS][:2], "little")
        samples = int.from_bytes(values.get(SAMPLES, b"\x01\x00")[:2], "little")
        frames_text = values.get(FRAMES, b"1").decode("ascii").strip(" \x00") or "1"
        frames = int(float(frames_text))
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise ObjectRejected(Reason.UNREADABLE, type(exc).__name__) from None
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if length < expected:
        raise ObjectRejected(Reason.TRUNCATED, "pixel data shorter than the image")


def _encapsulated_end(fp: BinaryIO, pos: int, size: int) -> int | None:
    """Walk the fragment items by their headers only (seek, never read the pixels)."""
    while pos + 8 <= size:
        fp.seek(pos)
        head = fp.read(8)
        tag, length = read_tag(head, 0), read_u32(head, 4)
        if tag == SEQUENCE_DELIMITATION:
            return pos + 8
        if tag != ITEM or length == UNDEFINED_LENGTH:
            return None
        pos += 8 + length
    return None


def _copy_range(src: int, dst: int, offset: int, count: int) -> None:
    while count > 0:
        try:
            done = os.copy_file_range(src, dst, count, offset)
        except (AttributeError, OSError):
            done = os.sendfile(dst, src, offset, count)
        if done <= 0:
            raise OSError("short copy of pixel data")
        offset += done
        count -= done


# Elements the subject key is computed from (read before anything changes), and Burned In
# Annotation, which callers check before exporting anything.
SUBJECT_TAGS = frozenset({0x00100020, 0x00100021, 0x00101002, 0x00280301})
# Value representations the fast path encodes itself. An element read as UN takes its dictionary
# VR once pydicom reads its value, and bytes that name no VR are for pydicom to refuse; either
# way only the dataset path knows the bytes it would write, so the fast path hands off.
_KNOWN_VRS = frozenset(v.value for v in _VR if " " not in v.value and v.value != "UN")
_ITEM = b"\xfe\xff\x00\xe0"
_UNDEFINED = b"\xff\xff\xff\xff"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


class _HandOff(Exception):
    """This element needs the engine's dataset path."""


class ByteEngine:
    """The engine's plan applied to top-level elements as bytes.

    It covers the actions that give a value without looking inside a sequence: copy, drop,
    blank, dummy, UID remap, research ID and date shift. Every other element (sequences, clean,
    safe private, literal or unknown values) is handed to :class:`Engine` as a small dataset, so
    both paths give the same result; the tests check they do.
    """

    def __init__(self, engine: Engine) -> None:
        """Wrap ``engine`` and encode the elements every output gets the same (see
        :meth:`_constant_elements`).

        Raises:
            ValueError: the recipe ADDs a computed value (``func:`` / ``var:``), which has no
                constant encoding (:func:`byte_engine` gives None then).
            DeidError: as :meth:`Engine.apply`, for the recipe's constant elements.
        """
        self.engine = engine
        self._constant = self._constant_elements()

    def _constant_elements(self) -> dict[int, bytes]:
        """ADDs, Patient Identity Removed, De-identification Method (+ codes): same every time."""
        probe = Dataset()
        probe.file_meta = FileMetaDataset()
        probe.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
        probe.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        probe.SOPInstanceUID = "1.2.3"
        for rule in self.engine.recipe.adds:
            value = rule.value or ""
            if value.startswith(("func:", "var:")):
                raise ValueError("an ADD with a computed value has no constant encoding")
        self.engine.apply(probe, SubjectContext("RS-PROBE", 0))
        del probe[0x00080016]
        del probe[0x00080018]
        return {tag: part for tag, part in _encode(probe).items()}

    def element(
        self, tag: int, vr: str, raw: bytes, value_at: int, subject: SubjectContext, depth: int = 0
    ) -> bytes | None:
        """The output bytes of one public element, as the engine's plan gives them.

        Args:
            tag: the element's tag as ``(group << 16) | element`` (group even).
            vr: the VR read from its header.
            raw: the whole encoded element (explicit VR little endian, PS3.5 7.1.2).
            value_at: where its value starts in ``raw`` (8 or 12).
            subject: the research ID and date shift of the object's subject.
            depth: sequence nesting level (0 at the top level).

        Returns:
            The encoded output element, or None when it is dropped.

        Raises:
            DeidError: ``deid-unparseable-sequence`` when a kept sequence's items are not framed
                as PS3.5 7.5 says.
            _HandOff: (internal) the element needs the engine's dataset path.
        """
        engine = self.engine
        name, expr, dict_vr = engine.decide(tag, vr)
        if name == "UNMATCHED":
            if not engine.secure:
                name = "KEEP"
            elif dict_vr == "UI":
                name, expr = "REPLACE", "func:uid"
            else:
                return None
        if name == "REMOVE":
            return None
        if dict_vr == "UN" or vr == "UN":
            raise _HandOff
        if dict_vr == "SQ" or vr == "SQ":
            if vr != "SQ":
                raise _HandOff
            if name == "BLANK":
                # Type 2: zero items; an optional sequence goes (deid_recipes.iod).
                return encode_element(tag, "SQ", b"") if keeps_empty_sequence(tag) else None
            if name == "KEEP" or (name == "REPLACE" and expr == "func:uid"):
                # Kept and X/Z/U* reference sequences: keep, de-identify every item.
                content = self._sequence(raw[value_at:], subject, depth)
                if read_u32(raw, value_at - 4) != UNDEFINED_LENGTH:
                    return encode_element(tag, "SQ", content)
                # Written as it was read (pydicom keeps the undefined length on the dataset path).
                return raw[:4] + b"SQ\x00\x00" + _UNDEFINED + content + _SEQ_DELIMITER
            if name == "JITTER":
                return None
            raise _HandOff  # dummy or clean content: the engine's dataset path
        if name == "KEEP":
            return raw
        value = raw[value_at:]
        if name == "BLANK":
            return encode_element(tag, vr, b"")
        if name == "JITTER":
            if dict_vr not in TEMPORAL_VRS:
                return raw
            if dict_vr == "TM" and shift_temporal(value.decode("ascii", "replace"), "TM", 0):
                return raw  # a whole-day shift leaves a well-formed time of day as it is
            shifted = _shift(value, dict_vr, subject.shift_days)
            return None if shifted is None else encode_element(tag, vr, shifted)
        if name == "REPLACE" and expr:
            if expr in ("func:research_id", "func:research_name"):
                return encode_element(tag, vr, subject.research_id.encode())
            if expr == "func:uid" or (expr == "func:dummy" and vr == "UI"):
                return encode_element(tag, vr, self._uids(value))
            if expr == "func:dummy":
                return self._dummy(tag, vr)
        raise _HandOff

    def _sequence(self, value: bytes, subject: SubjectContext, depth: int) -> bytes:
        """A sequence value re-encoded with every item's elements de-identified."""
        if depth >= MAX_DEPTH:
            raise _HandOff
        items: list[bytes] = []
        pos, size = 0, len(value)
        while pos < size:
            if pos + 8 > size:
                raise DeidError(Reason.DEID_UNPARSEABLE_SEQUENCE, "item header cut short")
            tag, length = read_tag(value, pos), read_u32(value, pos + 4)
            if tag == SEQUENCE_DELIMITATION:
                if pos + 8 != size:
                    raise DeidError(Reason.DEID_UNPARSEABLE_SEQUENCE, "bytes after the delimiter")
                break
            if tag != ITEM:
                raise DeidError(Reason.DEID_UNPARSEABLE_SEQUENCE, "expected an item tag")
            pos += 8
            undefined_item = length == UNDEFINED_LENGTH
            try:
                if length == UNDEFINED_LENGTH:
                    elements, pos = _item_elements(value, pos)
                else:
                    if pos + length > size:
                        raise DeidError(
                            Reason.DEID_UNPARSEABLE_SEQUENCE, "item longer than its sequence"
                        )
                    elements, pixel = _walk_top(value, pos, pos + length)
                    if pixel is not None:
                        raise _HandOff  # an icon image inside: the dataset path
                    if elements and elements[-1][2] != pos + length:
                        raise DeidError(
                            Reason.DEID_UNPARSEABLE_SEQUENCE, "elements overrun the item"
                        )
                    pos += length
            except _Truncated:
                raise DeidError(Reason.DEID_UNPARSEABLE_SEQUENCE, "element cut short") from None
            parts: list[bytes] = []
            for tag_, begin, end, vr in elements:
                if vr not in _KNOWN_VRS:
                    raise _HandOff  # see _KNOWN_VRS
                group = tag_ >> 16
                if group == 0xFFFE:
                    raise DeidError(Reason.DEID_UNPARSEABLE_SEQUENCE, "delimiter inside an item")
                if not tag_ & 0xFFFF:
                    continue
                if group & 1:
                    if self.engine.recipe.safe_private:
                        raise _HandOff
                    continue
                if tag_ == SPECIFIC_CHARACTER_SET:
                    raise _HandOff
                at = begin + value_offset(vr.encode())
                out = self.element(tag_, vr, value[begin:end], at - begin, subject, depth + 1)
                if out is not None:
                    parts.append(out)
            content = b"".join(parts)
            if undefined_item:
                items.append(_ITEM + _UNDEFINED + content + _ITEM_DELIMITER)
            else:
                items.append(_ITEM + len(content).to_bytes(4, "little") + content)
        return b"".join(items)

    def _uids(self, value: bytes) -> bytes:
        text = value.decode("ascii", "replace").rstrip("\x00 ")
        if not text:
            return b""
        return "\\".join(self.engine.remap_uid(v) for v in text.split("\\")).encode()

    def _dummy(self, tag: int, vr: str) -> bytes | None:
        if vr in NUMERIC_SIZES:
            return encode_element(tag, vr, b"\x00" * NUMERIC_SIZES[vr])
        if vr in BINARY_VRS:
            return encode_element(tag, vr, b"")
        if vr not in SPACE_PADDED_VRS:
            raise _HandOff  # AT and anything unusual: the dataset path decides
        dummy = DUMMY_BY_VR.get(vr, "ANONYMOUS" if vr == "PN" else "ANON")
        return encode_element(tag, vr, str(dummy).encode())


def _shift(value: bytes, vr: str, days: int) -> bytes | None:
    """A DA, DT or TM value's bytes shifted whole, as :func:`deid_recipes.engine` does."""
    shifted = shift_temporal(value.decode("ascii", "replace"), vr, days)
    return None if shifted is None else shifted.encode("ascii")


def _encode(ds: Dataset) -> dict[int, bytes]:
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    encoded = body.getvalue()
    return {t: encoded[b:e] for t, b, e, _ in _split(encoded, 0, len(encoded))}


def _meta(sop_class: bytes, sop_instance: bytes, syntax: str) -> bytes:
    elements = [
        encode_element(0x00020001, "OB", b"\x00\x01"),
        encode_element(0x00020002, "UI", sop_class),
        encode_element(0x00020003, "UI", sop_instance),
        encode_element(0x00020010, "UI", syntax.encode()),
        encode_element(0x00020012, "UI", IMPLEMENTATION_CLASS_UID.encode()),
        encode_element(0x00020013, "SH", IMPLEMENTATION_VERSION.encode()),
    ]
    body = b"".join(elements)
    return encode_element(0x00020000, "UL", len(body).to_bytes(4, "little")) + body


_BYTE_ENGINES: dict[int, ByteEngine | None] = {}


def byte_engine(engine: Engine) -> ByteEngine | None:
    """The :class:`ByteEngine` of ``engine``, made on first use and kept for the process.

    Args:
        engine: a prepared engine.

    Returns:
        The same ByteEngine for the same Engine (its constant elements are computed once), or
        None when the recipe ADDs computed values (``func:`` / ``var:``), which only the dataset
        path gives.

    Raises:
        DeidError: the recipe's constant elements cannot be made (as :meth:`Engine.apply`).
    """
    key = id(engine)
    if key in _BYTE_ENGINES:
        found = _BYTE_ENGINES[key]
        if found is None or found.engine is engine:
            return found
    try:
        made: ByteEngine | None = ByteEngine(engine)
    except ValueError:
        made = None
    _BYTE_ENGINES[key] = made
    return made


@dataclass
class _Done:
    """A de-identified header ready to write: the pixel data follows it from the source."""

    result: Dataset
    subject: SubjectContext
    head: bytes
    pixel_offset: int
    size: int
    pixels: bytes | None = None  # the Pixel Data element rewritten (frames' text stripped)


EXTENDED_OFFSET_TABLE = 0x7FE00001
NUMBER_OF_FRAMES = 0x00280008

# What callers read back from the written header without parsing it: the UIDs that name the
# object, and the attributes a run's manifest row records (with the character set they need).
RESULT_TAGS = (0x00080005, 0x00080016, 0x00080020, 0x00081030)


def _deidentify_header(
    engine: Engine, subject_for: SubjectFor, fp: BinaryIO, size: int | None = None
) -> _Done | None:
    """The de-identified header of an open file (``size``: its size in bytes, else from
    ``fstat``), or None when it needs the whole-object path."""
    fast = byte_engine(engine)
    if fast is None or engine.decide(PIXEL_DATA, None)[0] != "KEEP":
        return None  # computed ADDs or changed pixel data: the dataset path
    if size is None:
        size = os.fstat(fp.fileno()).st_size
    header = read_header(fp, size)
    if header is None:
        return None
    data = header.raw
    elements = header.elements
    if any(vr not in _KNOWN_VRS for _, _, _, vr in elements):
        return None  # UN or no VR at all: see _KNOWN_VRS
    if _pointers_dangle(engine, data, elements):
        return None  # the engine drops pointers to removed attributes (deid_recipes.iod)
    # With func:clean the whole header is read: names at any depth feed the tokens it removes.
    wanted = None if engine.uses_clean else SUBJECT_TAGS
    keyed = [data[b:e] for t, b, e, _ in elements if wanted is None or t in wanted]
    charset = [data[b:e] for t, b, e, _ in elements if t == SPECIFIC_CHARACTER_SET]
    try:
        tiny = read_dataset(
            io.BytesIO(b"".join(keyed if wanted is None else charset + keyed)), False, True
        )
    except Exception as exc:
        raise ObjectRejected(Reason.UNREADABLE, type(exc).__name__) from None
    if charset:
        check_charset(tiny)
    subject = subject_for(tiny)
    parts: dict[int, bytes] = {}
    handed: list[bytes] = []
    for tag, begin, end, vr in elements:
        group = tag >> 16
        if group == 0x0002 or group == 0xFFFE or not tag & 0xFFFF:
            continue
        raw = data[begin:end]
        if group & 1:
            if engine.recipe.safe_private:
                handed.append(raw)
            continue
        try:
            out = fast.element(tag, vr, raw, value_offset(vr.encode()), subject)
        except _HandOff:
            handed.append(raw)
            continue
        if out is not None:
            parts[tag] = out
    if handed:
        try:
            small = read_dataset(io.BytesIO(b"".join(charset + handed)), False, True)
        except Exception as exc:
            raise ObjectRejected(Reason.UNREADABLE, type(exc).__name__) from None
        engine.apply_elements(small, subject, identifying_from=tiny)
        parts.update(_encode(small))
    parts.update(fast._constant)
    if not engine.codes:
        parts.pop(0x00120064, None)
    try:
        sop_class, sop_instance = element_value(parts[0x00080016]), element_value(parts[0x00080018])
    except KeyError:
        raise DeidError(Reason.DEID_NO_SOP_INSTANCE) from None
    meta = _meta(sop_class, sop_instance, header.syntax)
    # PS3.10 7.1: a zero preamble, never the source's (a dual-personality file's TIFF header),
    # as the dataset path writes it (Engine clears the preamble it read).
    head = b"".join([bytes(128), b"DICM", meta, *(parts[t] for t in sorted(parts))])
    try:
        result = read_dataset(
            io.BytesIO(b"".join(parts[t] for t in RESULT_TAGS if t in parts)), False, True
        )
        for _ in result:  # decode each value now, not later in the caller
            pass
    except Exception:
        return None  # values pydicom cannot read: the dataset path decides what they become
    for tag in (0x0020000D, 0x0020000E):
        if tag in parts:
            result.add_new(tag, "UI", element_value(parts[tag]).decode("ascii").rstrip("\x00 "))
    result.SOPInstanceUID = sop_instance.decode("ascii").rstrip("\x00 ")
    pixels = None
    if UID(header.syntax).is_encapsulated:  # compressed frames: their text is stripped
        fp.seek(header.pixel_offset)
        element = fp.read(size - header.pixel_offset)
        pixels = stripped_pixel_element(element, header.syntax, _number_of_frames(data, elements))
        if pixels is not None and any(t == EXTENDED_OFFSET_TABLE for t, _, _, _ in elements):
            return None  # its offsets change: the dataset path writes the table again
    return _Done(result, subject, head, header.pixel_offset, size, pixels)


def _number_of_frames(data: bytes, elements: list[Element]) -> int:
    """Number of Frames (0028,0008, IS) of a header's elements; 1 when absent or unreadable."""
    for tag, begin, end, vr in elements:
        if tag == NUMBER_OF_FRAMES:
            try:
                return int(data[begin + value_offset(vr.encode()) : end].strip(b"\0 ") or 1)
            except ValueError:
                return 1
    return 1


def _pointers_dangle(engine: Engine, data: bytes, elements: list[Element]) -> bool:
    """Whether the plan removes what Frame Increment Pointer or a Dimension Index names."""
    frame: list[int] = []
    dimension: list[tuple[int, int | None]] = []
    for tag, begin, end, vr in elements:
        if tag == FRAME_INCREMENT_POINTER and vr == "AT":
            value = data[begin + value_offset(vr.encode()) : end]
            frame += [
                (read_u16(value, i) << 16) | read_u16(value, i + 2)
                for i in range(0, len(value) - 3, 4)
            ]
        elif tag == DIMENSION_INDEX_SEQUENCE:
            try:
                small = read_dataset(io.BytesIO(data[begin:end]), False, True)
                for item in small[DIMENSION_INDEX_SEQUENCE].value:
                    pointer = item.get("DimensionIndexPointer")
                    group = item.get("FunctionalGroupPointer")
                    if pointer is not None:
                        dimension.append((int(pointer), int(group) if group is not None else None))
            except Exception:
                return True  # the dataset path decides what an unreadable sequence becomes
    if not frame and not dimension:
        return False

    def removes(tag: int) -> bool:
        name, _, vr = engine.decide(tag, None)
        return name == "REMOVE" or (name == "UNMATCHED" and engine.secure and vr != "UI")

    return pointers_at_risk(frame, dimension, removes)


def deidentify_file(
    engine: Engine,
    subject_for: SubjectFor,
    src: Path,
    write_to: TargetFor,
) -> tuple[Dataset, SubjectContext, int] | None:
    """De-identify ``src`` by the fast path; None when its layout needs the whole-object path.

    Each top-level header element is copied verbatim, dropped, re-encoded by
    :class:`ByteEngine`, or handed to the engine in a small dataset; the results are merged in
    tag order with the constant elements and File Meta, and the pixel data is appended by the
    kernel. The target is written as ``<target>.tmp`` and renamed, so it is whole or absent.

    Args:
        engine: the project's engine.
        subject_for: ``subject_for(header)`` gives the subject from a small data set holding
            Patient ID, Issuer of Patient ID, Other Patient IDs Sequence, Burned In Annotation
            and Specific Character Set (with func:clean, every element before the pixel data).
        src: the source file.
        write_to: ``write_to(dataset, subject)`` names the target file (its folder exists).

    Returns:
        ``(dataset, subject, size)``: a small data set with the new Study / Series / SOP
        Instance UIDs, SOP Class UID, Specific Character Set, Study Date and Study Description;
        the subject; the number of bytes written. None when the file's layout needs the
        whole-object path (see :func:`read_header`), or the recipe ADDs computed values or
        changes Pixel Data; nothing is written then.

    Raises:
        DeidError: the object cannot be de-identified with certainty (as :meth:`Engine.apply`;
            an ObjectRejected subclass, so the caller quarantines the object).
        ObjectRejected: ``truncated`` or ``unreadable`` header or pixel data.
        OSError: reading the source or writing the target failed.
    """
    with open(src, "rb") as fp:
        done = _deidentify_header(engine, subject_for, fp)
        if done is None:
            return None
        target = write_to(done.result, done.subject)
        tmp = str(target) + ".tmp"
        out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(done.head if done.pixels is None else done.head + done.pixels)
            while view:
                view = view[os.write(out_fd, view) :]
            count = done.size - done.pixel_offset
            if done.pixels is None:
                _copy_range(fp.fileno(), out_fd, done.pixel_offset, count)
        finally:
            os.close(out_fd)
        os.replace(tmp, target)
        written = count if done.pixels is None else len(done.pixels)
        return done.result, done.subject, len(done.head) + written


def deidentify_to_bytes(
    engine: Engine, subject_for: SubjectFor, src: Path
) -> tuple[Dataset, SubjectContext, bytes, int] | None:
    """The fast path for a caller that needs the object's bytes.

    An extraction run hashes them and hands them to its object store: the de-identified header
    followed by the pixel data element read once with ``os.pread``, never parsed.

    Args:
        engine: the project's engine.
        subject_for: as for :func:`deidentify_file`.
        src: the source file.

    Returns:
        ``(dataset, subject, data, pixel_start)``: dataset and subject as for
        :func:`deidentify_file`, the whole de-identified file (the bytes it would write), and
        the byte offset in it where the Pixel Data element (7FE0,0010), its last element,
        begins (its tag). None when the layout needs the whole-object path.

    Raises:
        DeidError: as for :func:`deidentify_file`.
        ObjectRejected: as for :func:`deidentify_file`, and ``truncated`` when the file
            shrank while it was read.
        OSError: reading the source failed.
    """
    with open(src, "rb") as fp:
        done = _deidentify_header(engine, subject_for, fp)
        if done is None:
            return None
        if done.pixels is not None:
            return done.result, done.subject, done.head + done.pixels, len(done.head)
        count = done.size - done.pixel_offset
        pixels = os.pread(fp.fileno(), count, done.pixel_offset)
        if len(pixels) != count:
            raise ObjectRejected(Reason.TRUNCATED, "pixel data changed while read")
        return done.result, done.subject, done.head + pixels, len(done.head)


def deidentify_bytes(
    engine: Engine, subject_for: SubjectFor, data: bytes
) -> tuple[Dataset, SubjectContext, bytes, int] | None:
    """The fast path of :func:`deidentify_to_bytes` for a file already read into memory.

    A run reads each object once (``curation.integrity.ObjectRead``) and hands the same bytes
    here: the de-identified header followed by the pixel data element sliced from ``data``.
    The result is byte for byte what :func:`deidentify_to_bytes` gives for a file holding
    ``data``.

    Args:
        engine: the project's engine.
        subject_for: as for :func:`deidentify_file`.
        data: the whole source file (PS3.10 bytes).

    Returns:
        ``(dataset, subject, data, pixel_start)`` as for :func:`deidentify_to_bytes`, or None
        when the layout needs the whole-object path.

    Raises:
        DeidError: as for :func:`deidentify_file`.
        ObjectRejected: as for :func:`deidentify_file`.
    """
    done = _deidentify_header(engine, subject_for, io.BytesIO(data), len(data))
    if done is None:
        return None
    pixels = done.pixels if done.pixels is not None else memoryview(data)[done.pixel_offset :]
    return done.result, done.subject, done.head + pixels, len(done.head)
