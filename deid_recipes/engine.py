"""The de-identification engine: applies a compiled recipe to one dataset, in place.

Why it is fast: pydicom reads elements as raw bytes and converts one only when it is touched.
The engine decides per tag once (the plan caches it), deletes what goes and leaves what stays
as raw bytes, so the writer copies them verbatim; pixel data is never decoded. Only elements it
must change (UIDs, dates, identity, cleaned text) and sequences (walked to any depth) are
converted.

What holds for every output (see the README's "De-identification" section):

* private elements are removed, except with the Retain Safe Private option those whose private
  creator + group + element byte are in PS3.15 Table E.3.10-1 (matched by creator);
* every UID-valued (VR UI) attribute not kept by a rule is remapped with the project key, at any
  depth, so references still resolve; standard UIDs (SOP classes, transfer syntaxes) stay;
* Patient Identity Removed = YES, De-identification Method and its Code Sequence (CID 7050)
  name the profile and options; Original Attributes Sequence never survives; File Meta is
  rebuilt from the de-identified dataset;
* anything the engine cannot de-identify with certainty (unknown VR kept, a sequence that does
  not parse, an unknown character set, text it cannot decode) raises :class:`DeidError`, so
  the caller quarantines the object instead of exporting it half done.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, UID_dictionary

from deid_recipes.recipe import Action, Recipe
from ridl import __version__
from ridl.errors import ObjectRejected
from ridl.pseudonyms import Pseudonymizer
from ridl.reasons import Reason

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1420.1"
IMPLEMENTATION_VERSION = f"RIDL_{__version__}"[:16]
MAX_DEPTH = 32
DUMMY_BY_VR: dict[str, Any] = {
    "PN": "ANONYMOUS",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "DS": "0",
    "IS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": None,
}
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW"}
TEXT_VRS = {"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT", "UR", "PN"}
FREE_TEXT_VRS = {"LO", "LT", "SH", "ST", "UC", "UT", "PN"}
PIXEL_DATA = 0x7FE00010
# Code Value, Coding Scheme Designator / Version, Long Code Value, URN Code Value: the
# identity of a coded concept, kept as is even inside cleaned or dummied content.
CODE_TAGS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080119, 0x00080120})
ORIGINAL_ATTRIBUTES_SEQUENCE = 0x04000561
SPECIFIC_CHARACTER_SET = 0x00080005
DEID_METHOD = 0x00120063
DEID_METHOD_CODES = 0x00120064

# Attributes whose values identify the patient or the encounter: func:clean removes every token
# of free text that equals a token of one of these values in the same dataset.
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "StudyID",
    "AdmissionID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "StationName",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
)
_TOKEN_SPLIT = re.compile(r"([^0-9A-Za-z\u00c0-\uffff]+)")
_DIGITS = re.compile(r"\d")


class DeidError(ObjectRejected):
    """The object cannot be de-identified with certainty; quarantined as ``deid-<reason>``.

    ``reason`` is a ``Reason.DEID_*`` member (or its code without the ``deid-`` prefix, which is
    added). The message names the reason (and a detail such as a tag or an exception type),
    never a value.

    Raises:
        ValueError: ``deid-<reason>`` is not a :class:`~ridl.reasons.Reason` code.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason if reason.startswith("deid-") else f"deid-{reason}", detail)


@dataclass(frozen=True)
class SubjectContext:
    """Per-subject values every object of that subject gets: research ID and date shift."""

    research_id: str
    shift_days: int


@dataclass
class _State:
    """Per-dataset state of one ``apply``: the subject and, for func:clean, identifying tokens."""

    subject: SubjectContext
    identifying: frozenset[str] = frozenset()


class Engine:
    """One project's recipe and keys, ready to de-identify any number of datasets."""

    def __init__(self, recipe: Recipe, keys: Pseudonymizer, retain: Iterable[str] = ()) -> None:
        self.recipe = recipe
        self.keys = keys
        self.retain: set[int] = set()
        for keyword in retain:
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise DeidError(Reason.DEID_UNKNOWN_RETAINED_ATTRIBUTE, keyword)
            self.retain.add(tag)
        self.secure = recipe.unmatched == "REMOVE"
        self.uses_clean = recipe.uses_clean
        self._plan: dict[tuple[int, str | None], tuple[str, str | None, str]] = {}
        self.method = _method_values(recipe)
        self._codes = recipe.codes
        self._adds = [(_resolve_tag(r.field), r.value or "") for r in recipe.adds]

    # ---- public ----

    def apply(self, ds: Dataset, subject: SubjectContext) -> Dataset:
        """De-identify ``ds`` in place and return it (raise :class:`DeidError` when unsure)."""
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            raise DeidError(Reason.DEID_NO_TRANSFER_SYNTAX)
        state = _State(subject)
        if self.uses_clean:
            state.identifying = _identifying_tokens(ds)
        self._walk(ds, state, 0, mode="")
        for tag, expr in self._adds:
            vr = dictionary_VR(tag)
            value = self._value(expr, vr, None, state)
            if value is not None:
                ds.add(DataElement(tag, vr, value))
        ds.PatientIdentityRemoved = "YES"
        ds.add(DataElement(DEID_METHOD, "LO", list(self.method)))
        if self._codes:
            items = []
            for code, meaning in self._codes:
                item = Dataset()
                item.CodeValue = code
                item.CodingSchemeDesignator = "DCM"
                item.CodeMeaning = meaning
                items.append(item)
            ds.add(DataElement(DEID_METHOD_CODES, "SQ", Sequence(items)))
        elif DEID_METHOD_CODES in ds:
            del ds[DEID_METHOD_CODES]
        self._rebuild_meta(ds)
        return ds

    # ---- plan ----

    def _decide(self, tag: int, raw_vr: str | None) -> tuple[str, str | None, str]:
        """(action, value expression, VR) for a public tag; cached per tag and raw VR."""
        key = (tag, raw_vr)
        try:
            return self._plan[key]
        except KeyError:
            pass
        try:
            dict_vr = dictionary_VR(tag)
        except KeyError:
            dict_vr = "UN"
        vr = dict_vr if raw_vr in (None, "UN") else str(raw_vr)
        if " or " in vr:  # ambiguous (US or SS): either way it is not text or a sequence
            vr = vr.split(" or ")[0]
        retained = tag in self.retain
        action = Action("KEEP") if retained else self.recipe.action_for(BaseTag(tag), vr)
        if action is None:
            name, value = "UNMATCHED", None
        else:
            name, value = action.name, action.value
        if tag == ORIGINAL_ATTRIBUTES_SEQUENCE:
            name, value = "REMOVE", None
        if tag == PIXEL_DATA and name == "UNMATCHED":
            name = "KEEP"  # pixel bytes go through untouched unless a recipe names them
        decision = (name, value, vr)
        self._plan[key] = decision
        return decision

    # ---- walking ----

    def _walk(self, ds: Dataset, state: _State, depth: int, mode: str) -> None:
        """De-identify one dataset level.

        ``mode`` is "" at the top and in kept / UID-remapped sequences, "clean" inside a
        sequence a func:clean rule names (Clean Structured Content, Clean Graphics) and
        "dummy" inside a sequence the basic profile replaces with a dummy (D): the structure
        stays (a Type 1 sequence stays valid) and every free text in it becomes a dummy.
        """
        if depth > MAX_DEPTH:
            raise DeidError(Reason.DEID_SEQUENCE_TOO_DEEP, f"more than {MAX_DEPTH} levels")
        elements = _elements(ds)
        if SPECIFIC_CHARACTER_SET in elements:
            _check_charset(ds)
        private: list[int] = []
        for tag in list(elements):
            group = tag >> 16
            if group & 1:
                private.append(tag)
                continue
            if group == 0x0002 or group == 0xFFFE or not tag & 0xFFFF:
                del elements[tag]
                continue
            raw = elements[tag]
            name, value, vr = self._decide(tag, raw.VR)
            if name == "UNMATCHED":
                if mode:
                    name, value = _mode_default(vr, mode)
                elif not self.secure:
                    name = "KEEP"
                elif vr == "UI":
                    name, value = "REPLACE", "func:uid"
                else:
                    name = "REMOVE"
            elif mode and name == "KEEP" and vr in FREE_TEXT_VRS and tag not in CODE_TAGS:
                name, value = "REPLACE", f"func:{mode}"  # text inside cleaned / dummied content
            if name == "REMOVE":
                del elements[tag]
                continue
            if name == "KEEP":
                if vr == "SQ":
                    self._walk_items(ds, tag, state, depth, mode)
                elif vr == "UN" and tag != PIXEL_DATA:
                    # Value representation unknown: its contents cannot be checked.
                    raise DeidError(Reason.DEID_UNKNOWN_VR, str(Tag(tag)))
                continue
            self._change(ds, tag, name, value, vr, state, depth, mode)
        if private:
            self._private(ds, private, state, depth)

    def _walk_items(self, ds: Dataset, tag: int, state: _State, depth: int, mode: str) -> None:
        raw = _elements(ds)[tag]
        if (
            isinstance(raw, RawDataElement)
            and isinstance(raw.value, bytes)
            and raw.is_little_endian
        ):
            # pydicom reads a damaged sequence without complaint; check its framing first.
            try:
                check_sequence_bytes(raw.value, raw.is_implicit_VR)
            except ValueError as exc:
                raise DeidError(Reason.DEID_UNPARSEABLE_SEQUENCE, str(exc)) from None
        try:
            elem = ds[tag]
            items = elem.value
            if elem.VR != "SQ":
                raise DeidError(Reason.DEID_UNKNOWN_VR, str(Tag(tag)))
        except DeidError:
            raise
        except Exception as exc:  # a sequence pydicom cannot parse
            raise DeidError(Reason.DEID_UNPARSEABLE_SEQUENCE, type(exc).__name__) from None
        for item in items:
            self._walk(item, state, depth + 1, mode)

    def _change(
        self,
        ds: Dataset,
        tag: int,
        name: str,
        expr: str | None,
        vr: str,
        state: _State,
        depth: int,
        mode: str = "",
    ) -> None:
        elements = _elements(ds)
        if vr == "SQ":
            if name == "REPLACE" and expr == "func:uid":
                # X/Z/U* reference sequences: keep them, remap UIDs and de-identify the items.
                self._walk_items(ds, tag, state, depth, mode)
            elif name == "REPLACE" and expr == "func:clean":
                self._walk_items(ds, tag, state, depth, "clean")
            elif name == "REPLACE" and expr == "func:dummy":
                self._walk_items(ds, tag, state, depth, "dummy")
            elif name in ("BLANK", "REPLACE"):
                elements[tag] = DataElement(tag, "SQ", Sequence())
            else:  # JITTER of a sequence: nothing to shift, nothing known safe
                del elements[tag]
            return
        if vr == "UN":
            raise DeidError(Reason.DEID_UNKNOWN_VR, str(Tag(tag)))
        try:
            elem = ds[tag]
        except Exception as exc:  # a value pydicom cannot parse (bad length, bad VR)
            raise DeidError(Reason.DEID_UNPARSEABLE_ELEMENT, type(exc).__name__) from None
        if name == "BLANK":
            elements[tag] = DataElement(tag, vr, b"" if vr in BINARY_VRS else None)
            return
        if name == "JITTER":
            shifted = _jitter(elem.value, vr, state.subject.shift_days)
            if shifted is None:
                del elements[tag]
            else:
                elements[tag] = DataElement(tag, vr, shifted)
            return
        if name == "REPLACE":
            new = self._value(expr or "", vr, elem.value, state, elem)
            if new is None:
                del elements[tag]
            else:
                elements[tag] = DataElement(tag, vr, new)
            return
        raise DeidError(Reason.DEID_UNSUPPORTED_ACTION, name)

    def _private(self, ds: Dataset, tags: list[int], state: _State, depth: int) -> None:
        """Remove private elements, except those the safe-private table keeps by creator."""
        elements = _elements(ds)
        safe = self.recipe.safe_private
        keep: set[int] = set()
        if safe:
            creators: dict[int, str] = {}
            for tag in tags:
                element = tag & 0xFFFF
                if 0x0010 <= element <= 0x00FF:
                    raw = elements[tag]
                    value = raw.value
                    if isinstance(value, bytes):
                        value = value.decode("latin-1")
                    creators[tag] = str(value or "").strip(" \x00")
            for tag in tags:
                group, element = tag >> 16, tag & 0xFFFF
                if element < 0x1000:
                    continue
                creator_tag = (group << 16) | (element >> 8)
                creator = creators.get(creator_tag)
                if creator and (creator, group, element & 0xFF) in safe:
                    keep.add(tag)
                    keep.add(creator_tag)
        for tag in tags:
            if tag not in keep:
                del elements[tag]
            elif elements[tag].VR == "SQ":
                self._walk_items(ds, tag, state, depth, "")

    # ---- values ----

    def _value(
        self,
        expr: str,
        vr: str,
        current: object,
        state: _State,
        elem: DataElement | RawDataElement | None = None,
    ) -> object:
        if expr.startswith("func:"):
            func = expr[5:]
            if func in ("research_id", "research_name"):
                return state.subject.research_id
            if func == "uid":
                return self._remap_uids(current)
            if func == "dummy":
                if vr == "UI":
                    return self._remap_uids(current)
                if vr in BINARY_VRS:
                    return b""
                return DUMMY_BY_VR.get(vr, "ANONYMOUS" if vr == "PN" else "ANON")
            if func == "clean":
                return self._clean(vr, current, state)
            if func == "accession":
                return self.keys.token("accession", str(current or ""), 16) if current else ""
            raise DeidError(Reason.DEID_UNKNOWN_RECIPE_FUNCTION, func)
        if expr.startswith("var:"):
            if expr[4:] == "research_id":
                return state.subject.research_id
            if expr[4:] == "date_shift":
                return str(state.subject.shift_days)
            raise DeidError(Reason.DEID_UNKNOWN_RECIPE_VARIABLE, expr[4:])
        return expr

    def _clean(self, vr: str, current: object, state: _State) -> object:
        """Keep free text, minus every token that identifies this patient or encounter."""
        if vr == "UI":
            return self._remap_uids(current)
        if vr in ("DA", "DT", "TM"):
            return None  # a date in cleaned content could identify the encounter: it goes
        if vr in TEXT_VRS and vr not in FREE_TEXT_VRS:
            return current  # codes (CS), AE titles and URIs carry no free text to clean
        if vr not in FREE_TEXT_VRS:
            return current  # numbers and binary values of graphics and curves carry no names
        values = current if isinstance(current, MultiValue | list) else [current]
        texts = [str(v) if v is not None else "" for v in values]
        if any("\ufffd" in t for t in texts):  # pydicom could not decode it with the charset
            raise DeidError(Reason.DEID_UNDECODABLE_TEXT)
        cleaned = [clean_text(t, state.identifying) for t in texts]
        return cleaned if len(cleaned) > 1 else cleaned[0]

    def _remap_uids(self, current: object) -> object:
        if current is None or current == "":
            return current
        if isinstance(current, MultiValue | list):
            return [self._remap_one(str(v)) for v in current]
        return self._remap_one(str(current))

    def _remap_one(self, uid: str) -> str:
        uid = uid.strip().rstrip("\x00")
        if not uid or uid in UID_dictionary:  # standard UIDs (SOP classes, syntaxes) stay
            return uid
        return self.keys.uid(uid)

    def _rebuild_meta(self, ds: Dataset) -> None:
        old = ds.file_meta
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        try:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        except AttributeError:
            raise DeidError(Reason.DEID_NO_SOP_INSTANCE) from None
        meta.TransferSyntaxUID = old.TransferSyntaxUID
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta


# VRs whose explicit-VR element header has a 4-byte length (PS3.5 7.1.2).
LONG_VRS = {
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
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


def check_sequence_bytes(data: bytes, implicit: bool) -> None:
    """Raise ValueError unless ``data`` is a well-framed little-endian sequence value.

    Every item must start with an Item tag, every length must stay inside its parent, undefined
    lengths must end with their delimiter, and nested sequences are checked the same way.
    """
    end = _check_items(data, 0, len(data), implicit, undefined=False, depth=0)
    if end != len(data):
        raise ValueError("trailing bytes after the last item")


def _u32(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 4], "little")


def _tag_at(data: bytes, pos: int) -> int:
    group = int.from_bytes(data[pos : pos + 2], "little")
    element = int.from_bytes(data[pos + 2 : pos + 4], "little")
    return (group << 16) | element


def _check_items(
    data: bytes, pos: int, end: int, implicit: bool, undefined: bool, depth: int
) -> int:
    if depth > MAX_DEPTH:
        raise ValueError("sequence too deep")
    while pos < end:
        if pos + 8 > end:
            raise ValueError("item header cut short")
        tag, length = _tag_at(data, pos), _u32(data, pos + 4)
        if tag == _SEQ_END and undefined:
            return pos + 8
        if tag != _ITEM:
            raise ValueError("expected an item tag")
        pos += 8
        if length == _UNDEFINED:
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
        tag = _tag_at(data, pos)
        if tag == _ITEM_END and undefined:
            return pos + 8
        if implicit:
            vr = b""
            length = _u32(data, pos + 4)
            pos += 8
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in LONG_VRS:
                if pos + 12 > end:
                    raise ValueError("element header cut short")
                length = _u32(data, pos + 8)
                pos += 12
            else:
                length = int.from_bytes(data[pos + 6 : pos + 8], "little")
                pos += 8
        is_seq = vr == b"SQ" or (implicit and _implicit_is_sequence(tag))
        if length == _UNDEFINED:
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


def _elements(ds: Dataset) -> MutableMapping[int, Any]:
    """The dataset's element map, raw elements unconverted.

    Going through it (instead of ``ds[tag]``) is what keeps elements that are deleted or copied
    verbatim from ever being converted. Keys are BaseTag, an int subclass with the same hash.
    """
    return cast("MutableMapping[int, Any]", ds._dict)


def _mode_default(vr: str, mode: str) -> tuple[str, str | None]:
    """Inside a sequence being cleaned or dummied, what an element no rule names becomes."""
    if vr == "SQ":
        return "KEEP", None  # walked in the same mode
    if vr in FREE_TEXT_VRS or (mode == "dummy" and vr in ("DA", "DT", "TM")):
        return "REPLACE", f"func:{mode}"
    if vr == "UI":
        return "REPLACE", "func:uid"
    if vr == "UN":
        return "REMOVE", None
    return "KEEP", None


def clean_text(text: str, identifying: frozenset[str]) -> str:
    """Remove identifying tokens from free text, keep the rest.

    A token goes when it equals (case-insensitively) a token of an identifying value of the same
    dataset (name components, IDs, health number, accession, institution, dates), or when it
    carries four or more digits (dates, phone numbers, record numbers of other systems).
    """
    parts = _TOKEN_SPLIT.split(text)
    out: list[str] = []
    for index, part in enumerate(parts):
        if (
            index % 2 == 0
            and part
            and (part.lower() in identifying or len(_DIGITS.findall(part)) >= 4)
        ):
            continue
        out.append(part)
    return " ".join("".join(out).split())


def _identifying_tokens(ds: Dataset) -> frozenset[str]:
    tokens: set[str] = set()

    def add(value: object) -> None:
        values = value if isinstance(value, MultiValue | list) else [value]
        for v in values:
            for part in _TOKEN_SPLIT.split(str(v))[::2]:
                if len(part) >= 2:
                    tokens.add(part.lower())

    try:
        for keyword in IDENTIFYING_KEYWORDS:
            value = ds.get(keyword)
            if value:
                add(value)
        for item in ds.get("OtherPatientIDsSequence") or []:
            add(item.get("PatientID", ""))
    except Exception as exc:
        raise DeidError(Reason.DEID_UNPARSEABLE_ELEMENT, type(exc).__name__) from None
    return frozenset(tokens)


def _check_charset(ds: Dataset) -> None:
    """Refuse a character set pydicom cannot decode (text could be misread, names missed)."""
    raw = _elements(ds)[SPECIFIC_CHARACTER_SET]
    value = raw.value
    if isinstance(value, bytes):
        terms = [t.strip(" \x00") for t in value.decode("ascii", "replace").split("\\")]
    elif isinstance(value, MultiValue | list):
        terms = [str(t).strip() for t in value]
    else:
        terms = [str(value or "").strip()]
    for term in terms:
        if term and term not in python_encoding:
            raise DeidError(Reason.DEID_UNKNOWN_CHARSET)


def _jitter(value: object, vr: str, shift_days: int) -> object:
    if vr not in ("DA", "DT"):
        return value  # times of day carry no date; intervals stay intact
    values = value if isinstance(value, MultiValue | list) else [value]
    out: list[str] = []
    for item in values:
        text = str(item).strip() if item is not None else ""
        if not text:
            out.append(text)
            continue
        try:
            date = dt.datetime.strptime(text[:8], "%Y%m%d").date()
        except ValueError:
            return None  # cannot shift with certainty: drop the value
        shifted = (date + dt.timedelta(days=shift_days)).strftime("%Y%m%d")
        out.append(shifted + text[8:])
    return out if len(out) > 1 else out[0]


def _method_values(recipe: Recipe) -> list[str]:
    """De-identification Method (LO, each value at most 64 characters)."""
    values = [f"ridl {__version__} plan sha256:{recipe.digest[:16]}"]
    for name in recipe.layer_names:
        values.append(name[:64])
    return values


def _resolve_tag(field: str) -> BaseTag:
    tag = tag_for_keyword(field)
    if tag is not None:
        return Tag(tag)
    return Tag(int(field.strip("()").replace(",", ""), 16))


__all__ = ["DeidError", "Engine", "SubjectContext", "clean_text"]
