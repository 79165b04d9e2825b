"""The verification gate: no release is published while an identifier of its sources is in it.

De-identification is checked independently of the recipe that did it. The identifying values of
the selected studies are read again from the source headers (through the frozen selection) into a
dictionary: every name component, patient IDs and health numbers, dates of birth, accession and
procedure numbers, addresses, telephone numbers, institution, department and station names, and
the text values of private tags. Every byte of every object under the release's prefix is then
searched for all of them at once with an Aho-Corasick automaton (one pass per object, whatever
the size of the dictionary), in every character set the objects declare, and a hit is located by
walking the parsed object to the attribute whose value holds it: the report names the object key
and the attribute path (``RequestAttributesSequence[0].RequestedProcedureDescription``,
``(0029,1010)``, ``file_meta.…``), never the value. Text that OCR finds in the pixels of at-risk
objects is searched too, when an OCR function is available (see :func:`load_ocr`).

The tuning rules (documented in the README and tested one by one) keep common words and short
numbers from blocking a release without reason:

R1  terms shorter than 4 characters are not searched alone (name components: 3);
R2  terms made only of digits (and separators) need at least 6 digits;
R3  a term matches only as a whole word: the characters on both sides are not letters or digits;
R4  name components and private-tag values that are common words (``COMMON_WORDS``) block only
    when they are found in a person-name (PN) attribute;
R5  a date of birth blocks when found in an object of the same research subject, or in a
    non-date attribute; the same date in a date attribute of another subject is a coincidence;
R6  private-tag, institution and station values that are UIDs, or equal to a public
    non-identifying attribute of the same header, are not searched, nor any term equal to a
    manufacturer, model or software version of any selected header; private creators are not;
R7  matching ignores ASCII case;
R8  address parts are searched when they hold a digit or several words (a lone city name is not);
R9  values of attributes that the project's approved scope retains are not searched;
R10 pixel data, overlay bitmaps and waveform samples are image bytes, not text: hits inside them
    are ignored (the OCR step reads the text in pixels).
"""

from __future__ import annotations

import datetime as dt
import importlib
import io
import json
import logging
import re
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ahocorasick
from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.tag import BaseTag, Tag

from export.store import ObjectStore, open_store
from ridl import settings
from ridl.errors import ReleaseError

log = logging.getLogger(__name__)

MIN_TERM = 4
MIN_NAME = 3
MIN_DIGITS = 6
REPORT_NAME = "verification.json"
UNVERIFIABLE = "unverifiable-object"

ID_KEYWORDS = {
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "MedicalRecordLocator",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "AdmissionID",
    "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberProcedure",
    "FillerOrderNumberProcedure",
    "StudyID",
    "PatientInsurancePlanCodeSequence",
}
BIRTH_KEYWORDS = {"PatientBirthDate"}
ADDRESS_KEYWORDS = {
    "PatientAddress",
    "InstitutionAddress",
    "ReferringPhysicianAddress",
    "CountryOfResidence",
    "RegionOfResidence",
}
PHONE_KEYWORDS = {
    "PatientTelephoneNumbers",
    "ReferringPhysicianTelephoneNumbers",
    "PersonTelephoneNumbers",
}
EQUIPMENT_KEYWORDS = {"Manufacturer", "ManufacturerModelName", "SoftwareVersions"}
PLACE_KEYWORDS = {"InstitutionName", "InstitutionalDepartmentName", "StationName"}
INTERESTING_KEYWORDS = (
    ID_KEYWORDS | BIRTH_KEYWORDS | ADDRESS_KEYWORDS | PHONE_KEYWORDS | PLACE_KEYWORDS
)
TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UT"}
# Tags whose bytes are image samples, not text (R10).
BULK_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009, 0x54001010}
DATE_VRS = {"DA", "DT"}

_COMMON = """
    abdomen adult anonymous april august avenue axial baker bay bell berry bill bird black
    blood body bond bone both boulevard brain breast brown bush cash center centre chest child
    church clinic cole contrast cook coronal cross dale day dean derived doctor dose east
    emergency faith female field fish ford foot fox frank frontal general gold grace gray green
    grey hall hand head health heart helical hill hope hospital house hunt image imaging ivory
    jack james joy june king knee knight lane lateral law left little liver long love lung main
    male march mark may medical miller moss neck none normal north original other page park
    patient pelvis phantom physician pope portable price primary prone radiology reed report
    rice rich right rose routine rue saint sagittal scout screen secondary series sharp short
    small snow soft south spine spiral spring stone street strong study summer supine test
    tissue unknown upright ward west white will winter wood young name first last middle
    given family here anonymized
    text burned annotation truncated duplicate instance rejected note approved failed check
    pixel decode missing header consistency orientation size gap spacing localizer capture
    known regions blanked review quarantined excluded
"""
# The last lines are ridl's own vocabulary (reason codes, column names of parts and manifests):
# a patient named "Text" must not block every release whose parts say "burned-in-text".
COMMON_WORDS = frozenset(_COMMON.split())

_DIGITS = re.compile(r"^[\d\s\-./()+]+$")
_UIDLIKE = re.compile(r"^[\d.]+$")


# --- the dictionary ------------------------------------------------------------------------------


@dataclass
class Term:
    """One searched value's rules (never its value in anything that leaves this module)."""

    kinds: set[str] = field(default_factory=set)
    name_only: bool = True
    owners: set[str] = field(default_factory=set)  # research IDs of a birth date (R5)
    anyone: bool = False  # a contribution that is not a birth date blocks for every subject

    def merge(self, kind: str, name_only: bool, owner: str | None) -> None:
        self.kinds.add(kind)
        self.name_only = self.name_only and name_only
        if kind == "birth-date" and owner is not None:
            self.owners.add(owner)
        else:
            self.anyone = True

    @property
    def scoped(self) -> bool:
        return not self.anyone


def _norm(value: str) -> str:
    return " ".join(value.replace("\x00", " ").split()).strip()


def _is_common(value: str) -> bool:
    words = re.split(r"[\s^,\-]+", value.lower())
    words = [w for w in words if w]
    return bool(words) and all(w in COMMON_WORDS for w in words)


def _long_enough(value: str, minimum: int = MIN_TERM) -> bool:
    if _DIGITS.match(value):
        return sum(c.isdigit() for c in value) >= MIN_DIGITS
    return len(value) >= minimum


def name_terms(value: str) -> Iterator[tuple[str, bool]]:
    """(term, name_only) for a person name: the whole value and every component (R1, R4)."""
    whole = _norm(value)
    if not whole:
        return
    if _long_enough(whole.replace("^", " ").strip(), MIN_TERM):
        yield whole.rstrip("^"), _is_common(whole)
    for group in whole.split("="):
        for component in group.split("^"):
            component = _norm(component)
            for part in {component, *component.split(" ")}:
                part = part.strip(" ,.")
                if len(part) >= MIN_NAME and not _DIGITS.match(part):
                    yield part, _is_common(part)


def address_terms(value: str) -> Iterator[str]:
    """The whole address and its parts with a digit or several words (R8)."""
    whole = _norm(value)
    if _long_enough(whole):
        yield whole
    for part in re.split(r"[\^,\n\r;]+", value):
        part = _norm(part)
        if _long_enough(part) and (any(c.isdigit() for c in part) or " " in part):
            yield part


def phone_terms(value: str) -> Iterator[str]:
    for number in re.split(r"[\\^]", value):
        number = _norm(number)
        if _long_enough(number):
            yield number
        digits = "".join(c for c in number if c.isdigit())
        if len(digits) >= 7:
            yield digits


def birth_terms(value: str) -> Iterator[str]:
    text = _norm(value)
    if len(text) != 8 or not text.isdigit():
        return
    y, m, d = text[:4], text[4:6], text[6:]
    yield from (text, f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}/{m}/{y}", f"{m}/{d}/{y}")


def _raw_texts(raw: DataElement | RawDataElement, vr: str) -> list[str]:
    """A public text value, cheaply: ASCII raw bytes are split without pydicom's conversion."""
    if vr not in TEXT_VRS:
        return []
    value = raw.value
    if isinstance(value, bytes):
        if not value.isascii():
            return []
        return [t for t in (_norm(v) for v in value.decode("ascii").split("\\")) if t]
    return [_norm(v) for v in _text_values(value) if _norm(v)]


def _text_values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00 ").decode("latin-1")
        return [text] if text and text.isprintable() else []
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value if v is not None and str(v)]
    return [str(value)] if str(value) else []


class IdentifierDictionary:
    """The identifying values of the selected studies, compiled into one automaton per encoding set.

    Terms are kept with their rules only; the report refers to a term by its kind.
    """

    def __init__(self, retained: Iterable[str] = ()) -> None:
        self.retained = set(retained)
        self.terms: dict[str, Term] = {}
        self.encodings: set[str] = {"latin_1", "utf_8"}
        self.equipment: set[str] = set()  # vendor and model names: never identifiers (R6)
        self._seen: set[tuple[int, bytes, str | None, str]] = set()
        self._charset_key = ""
        self._automata: dict[frozenset[str], ahocorasick.Automaton] = {}

    def __len__(self) -> int:
        return len(self.terms)

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for term in self.terms.values():
            for kind in term.kinds:
                counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items()))

    def add(self, value: str, kind: str, name_only: bool = False, owner: str | None = None) -> None:
        value = _norm(value)
        if not value:
            return
        term = self.terms.setdefault(value, Term())
        term.merge(kind, name_only, owner)
        self._automata.clear()

    def add_header(self, ds: Dataset, research_id: str | None = None) -> None:
        """Collect the identifying values of one source header, at every depth."""
        for charset in _charsets(ds):
            self.encodings.add(charset)
        public_values: set[str] = set()
        private: list[tuple[str, str]] = []
        self._collect(ds, research_id, public_values, private, depth=0)
        for kind, value in private:
            if value.lower() in public_values or _UIDLIKE.match(value):
                continue  # R6
            if _long_enough(value):
                self.add(value, kind, name_only=_is_common(value))

    def _collect(
        self,
        ds: Dataset,
        research_id: str | None,
        public_values: set[str],
        private: list[tuple[str, str]],
        depth: int,
    ) -> None:
        if depth > 64:
            return
        if depth == 0:
            self._charset_key = str(ds.get("SpecificCharacterSet", ""))
        charset_key = self._charset_key
        for tag in list(ds.keys()):
            tag = Tag(tag)
            # Values stay raw (unconverted) unless they may hold an identifier: converting every
            # element is what would make the dictionary cost as much as de-identifying.
            try:
                raw = ds.get_item(tag)
            except Exception:
                continue
            if raw is None:
                continue
            vr = _vr_of(raw, tag)
            keyword = "" if tag.is_private else (keyword_for_tag(tag) or "")
            undefined = isinstance(raw, RawDataElement) and raw.length == 0xFFFFFFFF
            if vr == "SQ" or (undefined and tag not in BULK_TAGS):
                try:
                    value = ds[tag].value
                except Exception:
                    continue
                if isinstance(value, PydicomSequence | list):
                    for item in value:
                        if isinstance(item, Dataset):
                            self._collect(item, research_id, public_values, private, depth + 1)
                continue
            if tag in BULK_TAGS:
                continue
            wanted = (
                tag.is_private
                or vr == "PN"
                or keyword in INTERESTING_KEYWORDS
                or keyword in EQUIPMENT_KEYWORDS
            )
            if not wanted:
                public_values.update(v.lower() for v in _raw_texts(raw, vr))
                continue
            if tag.is_private and 0x0010 <= tag.element <= 0x00FF:
                continue  # private creator (R6)
            if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
                # The objects of a series repeat most values: convert each distinct one once.
                owner = research_id if keyword in BIRTH_KEYWORDS else None
                signature = (int(tag), raw.value, owner, charset_key)
                if signature in self._seen and not tag.is_private:
                    continue
                self._seen.add(signature)
            try:
                elem = ds[tag]
            except Exception:  # an unparseable value holds nothing we can search for
                continue
            if tag.is_private:
                private.extend(("private-tag", _norm(v)) for v in _text_values(elem.value))
                continue
            if keyword in self.retained:
                continue  # R9
            values = _text_values(elem.value)
            if vr == "PN" or elem.VR == "PN":
                for v in values:
                    for term, name_only in name_terms(v):
                        self.add(term, "name", name_only=name_only)
            elif keyword in ID_KEYWORDS:
                for v in values:
                    if _long_enough(_norm(v)):
                        self.add(v, "identifier")
            elif keyword in BIRTH_KEYWORDS:
                for v in values:
                    for term in birth_terms(v):
                        self.add(term, "birth-date", owner=research_id)
            elif keyword in ADDRESS_KEYWORDS:
                for v in values:
                    for term in address_terms(v):
                        self.add(term, "address")
            elif keyword in PHONE_KEYWORDS:
                for v in values:
                    for term in phone_terms(v):
                        self.add(term, "telephone")
            elif keyword in PLACE_KEYWORDS:  # checked against public values like private ones
                private.extend(("institution-or-station", _norm(v)) for v in values)
            else:
                public_values.update(_norm(v).lower() for v in values)
                if keyword in EQUIPMENT_KEYWORDS:
                    self.equipment.update(_norm(v).lower() for v in values)

    def automaton(self, encodings: Iterable[str] = ()) -> ahocorasick.Automaton:
        """The automaton over every term in every encoding, keyed by ASCII-lowered bytes."""
        encs = frozenset(self.encodings | set(encodings))
        cached = self._automata.get(encs)
        if cached is not None:
            return cached
        auto = ahocorasick.Automaton()
        for value, term in self.terms.items():
            low = value.lower()
            if low in self.equipment or (
                term.kinds <= {"institution-or-station", "private-tag"}
                and any(low in e for e in self.equipment)
            ):
                continue  # R6
            for enc in encs:
                try:
                    raw = value.encode(enc)
                except (UnicodeEncodeError, LookupError):
                    continue
                key = raw.lower().decode("latin-1")
                old = auto.get(key, None)
                if old is None:
                    auto.add_word(key, (len(key), [term]))
                elif term not in old[1]:
                    old[1].append(term)
        if len(auto) == 0:
            auto.add_word("\x00\x00never\x00\x00", (9, []))
        auto.make_automaton()
        self._automata[encs] = auto
        return auto


def _charsets(ds: Dataset) -> list[str]:
    try:
        value = ds.get("SpecificCharacterSet")
        raw = value.value if value is not None else None
        if isinstance(raw, bytes):
            raw = raw.decode("ascii", "replace")
        return [e for e in convert_encodings(raw) if e]
    except Exception:
        return []


# --- searching -----------------------------------------------------------------------------------


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ord(ch) >= 0x80


def _is_ascii_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def scan(
    hay: str, auto: ahocorasick.Automaton, *, text: bool = True
) -> Iterator[tuple[int, int, list[Term]]]:
    """Whole-word matches (R3) in a lowered latin-1 haystack: (start, end, terms).

    ``text=True`` for a value's own text, where non-ASCII neighbours are letters; ``text=False``
    for a whole object's bytes, where a value's neighbours are binary tags and lengths, so only
    ASCII letters and digits count as word characters (a lenient pre-filter).
    """
    word = _is_word_char if text else _is_ascii_word_char
    n = len(hay)
    for end, (length, terms) in auto.iter(hay):
        start = end - length + 1
        if start > 0 and word(hay[start - 1]) and word(hay[start]):
            continue
        if end + 1 < n and word(hay[end + 1]) and word(hay[end]):
            continue
        yield start, end + 1, terms


def _hay(data: bytes) -> str:
    return data.lower().decode("latin-1")


@dataclass(frozen=True)
class Hit:
    """Where an identifier was found: object key, attribute path and the kind of identifier."""

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


def _vr_of(elem: DataElement | RawDataElement, tag: BaseTag) -> str:
    vr = getattr(elem, "VR", None)
    if vr:
        return str(vr)
    if tag.is_private:
        return "UN"
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _name(tag: BaseTag, elem: DataElement | RawDataElement) -> str:
    from pydicom.datadict import keyword_for_tag

    if tag.is_private:
        return f"({tag.group:04X},{tag.element:04X})"
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def _value_hay(raw: DataElement | RawDataElement, encodings: list[str]) -> str:
    value = raw.value
    if isinstance(value, bytes | bytearray):
        return _hay(bytes(value))
    texts = _text_values(value)
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
    """Every leaf value of the parsed object with its attribute path and VR, sequences walked."""
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
        vr = _vr_of(raw, tag)
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
    hits: list[Hit] = field(default_factory=list)
    ocr_checked: bool = False


class Verifier:
    """Checks objects against one dictionary; holds no PHI beyond the dictionary itself."""

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
        to be clean: its bytes are still searched, and it is reported as unverifiable."""
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
        auto = self.dictionary.automaton(_charsets(ds))
        owner = self.owners_of(ds)
        segments = self._segments(data, ds)
        found: set[tuple[str, str]] = set()

        def hit(path: str, kind: str) -> None:
            if (path, kind) not in found:
                found.add((path, kind))
                result.hits.append(Hit(key, path, kind))

        for label, buf, bulk, spans_of in segments:
            candidates: list[tuple[int, int, list[Term]]] = []
            for offset, piece in _outside(buf, bulk):  # R10: image bytes are not scanned
                for start, end, terms in scan(_hay(piece), auto, text=False):
                    start, end = start + offset, end + offset
                    if not any(b0 <= start and end <= b1 for b0, b1 in bulk):
                        candidates.append((start, end, terms))
            if not candidates:
                continue
            located: set[int] = set()
            for span in spans_of():
                if span.path in _BULK_NAMES or not span.hay:
                    continue
                for _s, _e, terms in scan(span.hay, auto):
                    for term in terms:
                        located.add(id(term))
                        if _blocks(term, span.vr, owner, located=True):
                            hit(span.path, sorted(term.kinds)[0])
            for start, end, terms in candidates:
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
            encodings = sorted({"latin_1", "utf_8", *_charsets(ds)})
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
    if term.scoped and vr in DATE_VRS and owner not in term.owners:
        return False  # R5
    return not (term.name_only and not located)


def default_at_risk(ds: Dataset) -> bool:
    """Objects whose pixels may carry text: ultrasound, secondary capture, screens, and any that
    say so."""
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


def _load_at_risk() -> Callable[[Dataset], bool] | None:
    """``curation.ocr.at_risk`` when the OCR module defines which objects to read."""
    try:
        module = importlib.import_module("curation.ocr")
    except ImportError:
        return None
    func = getattr(module, "at_risk", None)
    return func if callable(func) else None


def load_ocr() -> Callable[[Dataset], Any] | None:
    """The OCR function of ``curation.ocr`` if it is there (``ocr_text``, ``read_text``,
    ``find_text`` or ``detect_text``: Dataset -> text), else None with a logged note."""
    try:
        module = importlib.import_module("curation.ocr")
    except ImportError:
        log.info("no OCR available (curation.ocr not installed): pixel text not searched")
        return None
    for name in ("ocr_text", "read_text", "find_text", "detect_text"):
        func = getattr(module, name, None)
        if callable(func):
            return func
    log.info("curation.ocr has no OCR function this gate knows: pixel text not searched")
    return None


# --- the release -------------------------------------------------------------------------------


@dataclass
class VerificationReport:
    """What the gate found; names keys, paths and kinds, never a value."""

    project: str
    release: str
    store: str
    passed: bool
    objects_checked: int
    bytes_checked: int
    dictionary_terms: int
    dictionary_kinds: dict[str, int]
    studies_read: int
    headers_read: int
    ocr: str
    ocr_objects: int
    hits: list[Hit]
    seconds_dictionary: float
    seconds_search: float
    checked_at: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hits"] = [asdict(h) for h in self.hits]
        return data

    def render(self) -> str:
        status = "PASSED" if self.passed else "BLOCKED"
        lines = [
            f"verification of {self.project}/{self.release}: {status}",
            f"  objects checked: {self.objects_checked} ({self.bytes_checked:,} bytes)",
            f"  dictionary: {self.dictionary_terms} terms from {self.headers_read} source headers "
            f"of {self.studies_read} studies {self.dictionary_kinds}",
            f"  OCR: {self.ocr} ({self.ocr_objects} objects read)",
            f"  time: dictionary {self.seconds_dictionary:.2f}s, search {self.seconds_search:.2f}s",
        ]
        if self.hits:
            lines.append(f"  {len(self.hits)} identifier(s) found; publishing is blocked:")
            lines.extend(f"    {hit}" for hit in self.hits[:200])
            if len(self.hits) > 200:
                lines.append(f"    ... and {len(self.hits) - 200} more (see the report file)")
        return "\n".join(lines)


class VerificationFailed(ReleaseError):
    """Identifiers were found in a release: it stays unpublished."""

    def __init__(self, report: VerificationReport, report_path: Path) -> None:
        self.report = report
        objects = len({h.key for h in report.hits})
        super().__init__(
            f"release {report.project}/{report.release} is NOT published: verification found "
            f"{len(report.hits)} identifier(s) in {objects} object(s); the report names each "
            f"object and attribute: {report_path}"
        )


def report_path(project: str, release: str) -> Path:
    from ridl.catalog import release_dir

    return release_dir(project, release) / REPORT_NAME


def build_dictionary(project: str, release: str) -> tuple[IdentifierDictionary, int, int]:
    """Read the source headers of the release's frozen selection into a dictionary.

    Returns (dictionary, studies read, headers read). Headers are read again from the source,
    not taken from what the run kept, so the check is independent of the run.
    """
    from ridl.catalog import load_frozen, study_refs
    from ridl.projects import load_project
    from ridl.pseudonyms import Pseudonymizer, SubjectKey
    from ridl.secrets import load_secret
    from ridl.sources.base import open_source

    frozen = load_frozen(project, release)
    if frozen is None:
        raise ReleaseError(
            f"release '{release}' of project '{project}' has no frozen selection; run it first"
        )
    record, selection = frozen
    proj = load_project(project)
    keys = Pseudonymizer(load_secret(project))
    source = open_source(record.source)
    if hasattr(source, "hn_issuer"):
        source.hn_issuer = proj.hn_issuer
    dictionary = IdentifierDictionary(retained=proj.scope.retain)
    studies = headers = 0
    for study in study_refs(selection):
        research_id = keys.research_id(
            SubjectKey(study.health_number, study.issuer, study.patient_id)
        )
        workdir = settings.work_dir() / project / release / f"verify-{studies}"
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            files = source.fetch_study(study, workdir)
            for path in files:
                try:
                    header = dcmread(path, stop_before_pixels=True, force=True)
                except Exception:
                    continue  # unreadable objects were quarantined, not exported
                dictionary.add_header(header, research_id)
                headers += 1
        finally:
            source.release_study(study, workdir)
            shutil.rmtree(workdir, ignore_errors=True)
        studies += 1
    return dictionary, studies, headers


def release_objects(store: ObjectStore, prefix: str) -> Iterator[str]:
    """Every object the release put in the store (objects, parts, manifests, summary)."""
    for info in store.list(prefix.rstrip("/") + "/"):
        yield info.key


def verify_release(
    project: str,
    release: str,
    store_url: str | None = None,
    *,
    ocr: Callable[[Dataset], Any] | None | bool = True,
    record_audit: bool = True,
) -> VerificationReport:
    """Verify every object of a release against its source identifiers; write the report.

    ``ocr=True`` loads OCR from ``curation.ocr`` when it is there; pass a function to use
    another, or ``False`` to skip. The report is written on premises next to the frozen selection
    (``RIDL_HOME/releases/<project>/<release>/verification.json``) and the result is audited.
    The caller decides what a failure means; :func:`require_verified` raises on it.
    """
    store = open_store(store_url)
    t0 = time.perf_counter()
    dictionary, studies, headers = build_dictionary(project, release)
    t1 = time.perf_counter()
    ocr_func: Callable[[Dataset], Any] | None
    if ocr is True:
        ocr_func = load_ocr()
    elif ocr is False or ocr is None:
        ocr_func = None
    else:
        ocr_func = ocr
    from ridl.pseudonyms import Pseudonymizer  # noqa: F401 - secret checked above

    verifier = Verifier(
        dictionary, owners_of=_research_id_of, ocr=ocr_func, at_risk=_load_at_risk()
    )
    hits: list[Hit] = []
    objects = nbytes = ocr_objects = 0
    for key in release_objects(store, f"{project}/{release}"):
        if key.endswith(f"/{REPORT_NAME}") or key.endswith("/published.json"):
            continue
        data = store.get_bytes(key)
        result = verifier.check_bytes(key, data)
        hits.extend(result.hits)
        ocr_objects += int(result.ocr_checked)
        objects += 1
        nbytes += len(data)
    t2 = time.perf_counter()
    report = VerificationReport(
        project=project,
        release=release,
        store=store.url,
        passed=not hits,
        objects_checked=objects,
        bytes_checked=nbytes,
        dictionary_terms=len(dictionary),
        dictionary_kinds=dictionary.kinds(),
        studies_read=studies,
        headers_read=headers,
        ocr="used" if ocr_func is not None else "not available (skipped)",
        ocr_objects=ocr_objects,
        hits=hits,
        seconds_dictionary=round(t1 - t0, 3),
        seconds_search=round(t2 - t1, 3),
        checked_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    path = report_path(project, release)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    if record_audit:
        from ridl import audit

        audit.record(
            "verification.result",
            project=project,
            release=release,
            passed=report.passed,
            objects=objects,
            hits=len(hits),
            objects_with_hits=len({h.key for h in hits}),
            dictionary_terms=len(dictionary),
            ocr=report.ocr,
        )
    return report


def _research_id_of(ds: Dataset) -> str | None:
    value = str(getattr(ds, "PatientID", "") or "")
    return value or None


def require_verified(
    project: str,
    release: str,
    store_url: str | None = None,
    *,
    ocr: Callable[[Dataset], Any] | None | bool = True,
) -> VerificationReport:
    """The gate: verify, and raise :class:`VerificationFailed` when anything was found."""
    report = verify_release(project, release, store_url, ocr=ocr)
    if not report.passed:
        raise VerificationFailed(report, report_path(project, release))
    return report


def gate_release(
    project: str,
    release: str,
    store_url: str | None = None,
    *,
    ocr: Callable[[Dataset], Any] | None | bool = True,
) -> VerificationReport:
    """Verify a built release and publish it only if nothing was found.

    On a hit the release's manifest and summary are withdrawn from the store (so no researcher or
    pull client sees a release to fetch), the report is left on premises, and
    :class:`VerificationFailed` says where it is. On success the published markers are written.
    """
    from export.manifest import release_files
    from export.published import mark_published

    store = open_store(store_url)
    report = verify_release(project, release, store.url, ocr=ocr)
    if not report.passed:
        files = release_files(f"{project}/{release}")
        for key in (files.manifest_parquet, files.manifest_csv, files.summary):
            store.delete(key)
        raise VerificationFailed(report, report_path(project, release))
    mark_published(
        project,
        release,
        store,
        objects_verified=report.objects_checked,
        dictionary_terms=report.dictionary_terms,
        ocr=report.ocr,
    )
    return report
