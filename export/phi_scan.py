"""The byte scan: every byte of a de-identified object searched for the dictionary's identifiers.

An object is searched whole (header, sequences, private elements, file meta) in every character
set it declares, with the automaton of :class:`export.identifiers.IdentifierDictionary`; a hit
is located by walking the parsed object to the attribute whose value holds it, so a
:class:`Hit` names the object key and the attribute path
(``RequestAttributesSequence[0].RequestedProcedureDescription``, ``(0029,1010)``,
``file_meta.…``), never the value. Text an OCR function finds in the pixels of at-risk objects is
searched too. Rules R3, R4, R5, R7 and R10 of :mod:`export.identifiers` apply here.

Engines floor (``export/``): the search half of the PHI gate; the dictionary comes from
:mod:`export.identifiers` and the report types from :mod:`export.verification`. The OCR function
and the at-risk rule are passed in (``flows.gate`` passes curation's OCR), so this module imports
no OCR engine and holds no module state.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ahocorasick
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.tag import BaseTag, Tag

from export.identifiers import (
    BULK_TAGS,
    DATE_VRS,
    IdentifierDictionary,
    Term,
    declared_charsets,
    text_values,
    vr_of,
)
from ridl.reasons import Reason

log = logging.getLogger(__name__)

UNVERIFIABLE = Reason.UNVERIFIABLE_OBJECT

# --- searching -----------------------------------------------------------------------------------


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ord(ch) >= 0x80


def _is_ascii_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def scan(
    hay: str, auto: ahocorasick.Automaton, *, text: bool = True, dates: bool = False
) -> Iterator[tuple[int, int, list[Term]]]:
    """Whole-word matches (R3) in a lowered latin-1 haystack: (start, end, terms).

    ``hay`` is bytes ASCII-lowered and read as Latin-1 text (one character per byte, so offsets
    are byte offsets; ``end`` is exclusive); ``auto`` is
    :meth:`export.identifiers.IdentifierDictionary.automaton`.

    ``text=True`` for a value's own text, where non-ASCII neighbours are letters; ``text=False``
    for a whole object's bytes, where a value's neighbours are binary tags and lengths, so only
    ASCII letters and digits count as word characters (a lenient pre-filter).

    ``dates=True`` where a DT value may hold a date followed by its time of day: a ``YYYYMMDD``
    date term (:attr:`Term.date`) also matches when digits follow it (R3's one exception); such
    a match yields the date terms only.
    """
    word = _is_word_char if text else _is_ascii_word_char
    n = len(hay)
    for end, (length, terms) in auto.iter(hay):
        start = end - length + 1
        if start > 0 and word(hay[start - 1]) and word(hay[start]):
            continue
        if end + 1 < n and word(hay[end + 1]) and word(hay[end]):
            if not (dates and hay[end + 1].isdigit()):
                continue
            terms = [term for term in terms if term.date]
            if not terms:
                continue
        yield start, end + 1, terms


def _hay(data: bytes) -> str:
    return data.lower().decode("latin-1")


@dataclass(frozen=True)
class Hit:
    """Where an identifier was found: object key, attribute path and the kind of identifier.

    ``path`` is an attribute path (``Seq[0].Keyword``, ``(gggg,eeee)`` for private elements,
    ``file_meta.…``), or a description in parentheses for bytes outside any attribute; ``kind``
    is a term kind (:class:`export.identifiers.Term`) or ``unverifiable-object``.
    """

    key: str
    path: str
    kind: str

    def __str__(self) -> str:
        return f"{self.key}: {self.path} holds a {self.kind}"


@dataclass(frozen=True)
class _Span:
    start: int  # absolute offsets: exact for top-level values, -1 inside sequences
    end: int
    path: str
    vr: str
    hay: str  # the value's bytes, lowered, as latin-1 text


def _name(tag: BaseTag, elem: DataElement | RawDataElement) -> str:

    if tag.is_private:
        return f"({tag.group:04X},{tag.element:04X})"
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def _value_hay(raw: DataElement | RawDataElement, encodings: list[str]) -> str:
    value = raw.value
    if isinstance(value, bytes | bytearray):
        return _hay(bytes(value))
    texts = text_values(value)
    out = []
    for text in texts:
        for enc in encodings or ["latin_1"]:
            try:
                out.append(_hay(text.encode(enc)))
            except (UnicodeEncodeError, LookupError):
                continue
    return "\x00".join(out)


def element_spans(
    ds: Dataset, prefix: str = "", depth: int = 0, encodings: list[str] | None = None
) -> Iterator[_Span]:
    """Every leaf value of the parsed object with its attribute path and VR, sequences walked.

    Yields spans with the value's byte offsets in the file (top level only; -1 inside
    sequences), its path under ``prefix``, its VR and its text in each of ``encodings``
    (Python codec names; Latin-1 and UTF-8 by default), lowered. Sequences deeper than 64
    levels are not walked.
    """
    if depth > 64:
        return
    encodings = encodings or ["latin_1", "utf_8"]
    for tag in list(ds.keys()):
        tag = Tag(tag)
        try:
            raw = ds.get_item(tag)
        except Exception:
            continue
        if raw is None:
            continue
        path = f"{prefix}{_name(tag, raw)}"
        vr = vr_of(raw, tag)
        if vr == "SQ" or (isinstance(raw, RawDataElement) and raw.length == 0xFFFFFFFF):
            try:
                value = ds[tag].value
            except Exception:
                value = None
            if isinstance(value, PydicomSequence | list):
                for i, item in enumerate(value):
                    if not isinstance(item, Dataset):
                        continue
                    yield from element_spans(item, f"{path}[{i}].", depth + 1, encodings)
                continue
        start = end = -1
        if depth == 0 and isinstance(raw, RawDataElement):
            start = raw.value_tell
            end = start + (len(raw.value or b"") if raw.length == 0xFFFFFFFF else raw.length)
        try:
            hay = _value_hay(raw, encodings)
        except Exception:
            hay = ""
        yield _Span(start, end, path, vr, hay)


@dataclass
class ObjectResult:
    """What one object's check found: its hits, and whether its pixels were read by OCR."""

    hits: list[Hit] = field(default_factory=list)
    ocr_checked: bool = False


class Verifier:
    """Checks objects against one dictionary; holds no PHI beyond the dictionary itself.

    ``owners_of`` gives an object's research subject (default: its Patient ID) for R5; ``ocr``
    returns the text in an object's pixels (a string or a list of strings; None: no OCR);
    ``at_risk`` picks the objects OCR reads (default :func:`default_at_risk`).
    """

    def __init__(
        self,
        dictionary: IdentifierDictionary,
        owners_of: Callable[[Dataset], str | None] | None = None,
        ocr: Callable[[Dataset], Any] | None = None,
        at_risk: Callable[[Dataset], bool] | None = None,
    ) -> None:
        self.dictionary = dictionary
        self.owners_of = owners_of or (lambda ds: str(getattr(ds, "PatientID", "")) or None)
        self.ocr = ocr
        self.at_risk = at_risk or default_at_risk

    def check_bytes(self, key: str, data: bytes) -> ObjectResult:
        """Search one object. An object stored as DICOM that cannot be parsed cannot be shown
        to be clean: its bytes are still searched, and it is reported as unverifiable.

        ``key`` is the object's store key; ``data`` its bytes. A DICOM file (``DICM`` after the
        128-byte preamble, PS3.10 7.1) is searched segment by segment (file meta, and the
        inflated dataset of Deflated Explicit VR Little Endian, PS3.5 A.5); other objects
        (manifests, summaries, Parquet read as CSV) as text. Never raises for a bad object: it
        becomes an ``unverifiable-object`` hit.
        """
        is_dicom = len(data) >= 132 and data[128:132] == b"DICM"
        if not is_dicom:
            result = self._check_file(key, data)
            if key.endswith(".dcm"):
                result.hits.append(Hit(key, "(not a DICOM file)", UNVERIFIABLE))
            return result
        try:
            ds = dcmread(io.BytesIO(data), force=True)
            ds.file_meta  # noqa: B018 - read the meta now
            return self._check_dicom(key, data, ds)
        except Exception:
            result = self._check_file(key, data)
            result.hits.append(Hit(key, "(object could not be parsed)", UNVERIFIABLE))
            return result

    def _check_file(self, key: str, data: bytes) -> ObjectResult:
        """A non-DICOM object (manifest, summary): its bytes as text; Parquet via its table."""
        result = ObjectResult()
        if key.endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(io.BytesIO(data))
                data = table.to_pandas().to_csv(index=False).encode("utf-8")
            except Exception:
                pass
        auto = self.dictionary.automaton()
        seen: set[tuple[str, str]] = set()
        for _s, _e, terms in scan(_hay(data), auto, text=False):
            for term in terms:
                if term.name_only or term.scoped:
                    continue
                kind = sorted(term.kinds)[0]
                if (kind, "file") not in seen:
                    seen.add((kind, "file"))
                    result.hits.append(Hit(key, "(file contents)", kind))
        return result

    def _check_dicom(self, key: str, data: bytes, ds: Dataset) -> ObjectResult:
        result = ObjectResult()
        auto = self.dictionary.automaton(declared_charsets(ds))
        owner = self.owners_of(ds)
        segments = self._segments(data, ds)
        found: set[tuple[str, str]] = set()

        def hit(path: str, kind: str) -> None:
            if (path, kind) not in found:
                found.add((path, kind))
                result.hits.append(Hit(key, path, kind))

        for label, buf, bulk, spans_of in segments:
            candidates: list[tuple[int, int, list[Term], bool]] = []
            for offset, piece in _outside(buf, bulk):  # R10: image bytes are not scanned
                hay = _hay(piece)
                for start, end, terms in scan(hay, auto, text=False, dates=True):
                    # A date followed by digits: only a DT attribute, once located, can hold it.
                    dt_only = end < len(hay) and hay[end].isdigit()
                    start, end = start + offset, end + offset
                    if not any(b0 <= start and end <= b1 for b0, b1 in bulk):
                        candidates.append((start, end, terms, dt_only))
            if not candidates:
                continue
            located: set[int] = set()
            for span in spans_of():
                if span.path in _BULK_NAMES or not span.hay:
                    continue
                for _s, _e, terms in scan(span.hay, auto, dates=span.vr == "DT"):
                    for term in terms:
                        located.add(id(term))
                        if _blocks(term, span.vr, owner, located=True):
                            hit(span.path, sorted(term.kinds)[0])
            for start, end, terms, dt_only in candidates:
                if dt_only:
                    continue  # a date that only a DT value can hold, and none did
                for term in terms:
                    if id(term) in located or not _blocks(term, "UN", owner, located=False):
                        continue
                    if label == "file" and start < 128:
                        hit("preamble", sorted(term.kinds)[0])
                    else:
                        where = f"(bytes {start}-{end} of the {label}, not inside one attribute)"
                        hit(where, sorted(term.kinds)[0])
        if self.ocr is not None and self.at_risk(ds):
            result.ocr_checked = True
            for text in _ocr_texts(self.ocr, ds):
                hay = _hay(text.encode("utf-8", "replace"))
                for _s, _e, terms in scan(hay, auto):
                    for term in terms:
                        if term.scoped and owner in term.owners:
                            pass
                        elif term.name_only or term.scoped:
                            continue
                        hit("PixelData (OCR text)", sorted(term.kinds)[0])
        return result

    def _segments(
        self, data: bytes, ds: Dataset
    ) -> list[tuple[str, bytes, list[tuple[int, int]], Callable[[], list[_Span]]]]:
        """(label, bytes, bulk ranges, attribute spans on demand) for the file, or for its meta
        and its inflated dataset when the transfer syntax is deflated."""
        bulk: list[tuple[int, int]] = []
        for tag in BULK_TAGS:
            try:
                raw = ds.get_item(tag)
            except Exception:
                continue
            if isinstance(raw, RawDataElement) and raw.value is not None:
                bulk.append((raw.value_tell, raw.value_tell + len(raw.value)))

        def meta_spans() -> list[_Span]:
            return [
                _Span(s.start, s.end, "file_meta." + s.path, s.vr, s.hay)
                for s in element_spans(ds.file_meta)
            ]

        def body_spans() -> list[_Span]:
            encodings = sorted({"latin_1", "utf_8", *declared_charsets(ds)})
            return list(element_spans(ds, encodings=encodings))

        ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
        if ts == "1.2.840.10008.1.2.1.99":  # deflated: the dataset is searched inflated
            group_length = int(getattr(ds.file_meta, "FileMetaInformationGroupLength", 0) or 0)
            meta_end = 132 + 12 + group_length
            try:
                body = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
            except zlib.error:
                body = data[meta_end:]
            return [
                ("file", data[:meta_end], [], meta_spans),
                ("inflated dataset", body, bulk, body_spans),
            ]
        return [("file", data, bulk, lambda: meta_spans() + body_spans())]


def _outside(buf: bytes, bulk: list[tuple[int, int]]) -> Iterator[tuple[int, bytes]]:
    """The parts of ``buf`` outside the bulk ranges, with their offsets. A few bytes of overlap
    are kept on each side so a term that runs up to a range's edge is still seen whole."""
    edge = 16
    pos = 0
    for b0, b1 in sorted(bulk):
        if b1 - b0 <= 2 * edge or b0 < pos:
            continue
        yield pos, buf[pos : b0 + edge]
        pos = b1 - edge
    yield pos, buf[pos:]


_BULK_NAMES = {"PixelData", "FloatPixelData", "DoubleFloatPixelData", "WaveformData"}


def _blocks(term: Term, vr: str, owner: str | None, located: bool) -> bool:
    if term.name_only and vr != "PN":
        return False  # R4
    if term.scoped and vr in DATE_VRS and (owner not in term.owners or owner in term.coincident):
        return False  # R5
    return not (term.name_only and not located)


def default_at_risk(ds: Dataset) -> bool:
    """Objects whose pixels may carry text: ultrasound, secondary capture, screens, and any that
    say so.

    True for Burned In Annotation (0028,0301) ``YES`` (General Image Module, PS3.3 C.7.6.1),
    modalities US, SC, OT, XA, ES, DOC, and Secondary Capture SOP classes
    (``1.2.840.10008.5.1.4.1.1.7*``, PS3.4 B.5).
    """
    if str(getattr(ds, "BurnedInAnnotation", "")).upper() == "YES":
        return True
    if str(getattr(ds, "Modality", "")).upper() in {"US", "SC", "OT", "XA", "ES", "DOC"}:
        return True
    return str(getattr(ds, "SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.7")


def _ocr_texts(ocr: Callable[[Dataset], Any], ds: Dataset) -> list[str]:
    try:
        found = ocr(ds)
    except Exception as exc:  # OCR failing on one object is reported, not fatal
        log.warning("OCR failed on an object (%s); its pixels were not read", type(exc).__name__)
        return []
    if found is None:
        return []
    if isinstance(found, str):
        return [found]
    return [str(x) for x in found]
