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
* the output keeps its IOD (:mod:`deid_recipes.iod`): an attribute the IOD requires that the
  plan would remove stays empty (Type 2) or dummied (Type 1), a blanked optional sequence is
  removed rather than written with zero items, and no Frame Increment Pointer or Dimension
  Index Pointer is left naming an attribute the plan removed;
* anything the engine cannot de-identify with certainty (unknown VR kept, a sequence that does
  not parse, an unknown character set, text it cannot decode) raises :class:`DeidError`, so
  the caller quarantines the object instead of exporting it half done.

The byte-level rules it shares with the fast path (element layout, VR sets, sequence framing,
character sets) live in :mod:`deid_recipes.dicombytes`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, UID_dictionary
from pydicom.valuerep import VR as ValueRepresentation

from deid_recipes.dates import TEMPORAL_VRS, remove_written_dates, shift_temporal
from deid_recipes.dicombytes import (
    BINARY_VRS,
    MAX_DEPTH,
    PIXEL_DATA,
    SPECIFIC_CHARACTER_SET,
    UNDEFINED_LENGTH,
    check_sequence_bytes,
    unsupported_charset,
)
from deid_recipes.iod import (
    drop_dangling_pointers,
    keeps_empty_sequence,
    pointer_targets,
    required_action,
    value_required,
)
from deid_recipes.recipe import Action, Recipe
from ridl import __version__
from ridl.codestream import strip_pixel_data_text
from ridl.errors import ObjectRejected
from ridl.identity import PERSON_NAME, STANDARD_SCHEMES, TEXT_VALUE, content_item_names
from ridl.pseudonyms import Pseudonymizer
from ridl.reasons import Reason
from ridl.written_forms import joined_name_forms, unaccented

# Every value representation of PS3.5 6.2 (and pydicom's ambiguous "US or SS"-style forms).
VALID_VRS = frozenset(v.value for v in ValueRepresentation)
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1420.1"
IMPLEMENTATION_VERSION = f"RIDL_{__version__}"[:16]
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
TEXT_VRS = {"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT", "UR", "PN"}
FREE_TEXT_VRS = {"LO", "LT", "SH", "ST", "UC", "UT", "PN"}
# Code Value, Coding Scheme Designator / Version, Long Code Value, URN Code Value: the
# identity of a coded concept, kept as is even inside cleaned or dummied content.
CODE_TAGS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080119, 0x00080120})
ORIGINAL_ATTRIBUTES_SEQUENCE = 0x04000561
DEID_METHOD = 0x00120063
DEID_METHOD_CODES = 0x00120064
ITEM_TAG_BYTES = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian: a sequence's first item

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
# Values that name an organisation (PS3.3 C.7.5.1, C.17.2: Verifying Organization;
# Responsible Organization, C.7.1.1): their tokens are removed wherever they appear.
INSTITUTION_KEYWORDS = (
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "VerifyingOrganization",
    "ResponsibleOrganization",
)
_IDENTIFYING_TAGS = frozenset(
    int(tag_for_keyword(k) or 0) for k in IDENTIFYING_KEYWORDS + INSTITUTION_KEYWORDS
)
INSTITUTION_CODE_SEQUENCE = 0x00080082
CODE_MEANING = 0x00080104
_TOKEN_SPLIT = re.compile(r"([^0-9A-Za-z\u00c0-\uffff]+)")
_DIGITS = re.compile(r"\d")
_WORD = re.compile(r"[0-9A-Za-z\u00c0-\uffff]")


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
    """Per-subject values every object of that subject gets: research ID and date shift.

    ``identifying`` holds func:clean tokens (lower-cased, see :func:`identifying_tokens`) read
    from the other headers of the object's study, where the caller has them: cleaning removes
    them as well as the object's own.
    """

    research_id: str
    shift_days: int
    identifying: frozenset[str] = frozenset()


@dataclass
class _State:
    """Per-dataset state of one ``apply``: the subject and, for func:clean, identifying tokens."""

    subject: SubjectContext
    identifying: frozenset[str] = frozenset()


class Engine:
    """One project's recipe and keys, ready to de-identify any number of datasets.

    Attributes read by the fast path and by callers: ``recipe``, ``keys``, ``retain`` (tags kept
    whatever the recipe says), ``secure`` (an element no rule names is removed), ``uses_clean``
    (a rule uses func:clean), ``method`` (the De-identification Method values) and ``codes``
    (the CID 7050 (code value, code meaning) pairs of the De-identification Method Code
    Sequence; empty when no layer is a PS3.15 profile or option).
    """

    def __init__(self, recipe: Recipe, keys: Pseudonymizer, retain: Iterable[str] = ()) -> None:
        """Prepare ``recipe`` with the project's pseudonymization ``keys``.

        Args:
            recipe: the compiled recipe (see :func:`deid_recipes.recipe.load_recipe`).
            keys: the project's keyed pseudonymizer (UID remapping, accession tokens).
            retain: attribute keywords kept as they are whatever the recipe says.

        Raises:
            DeidError: ``deid-unknown-retained-attribute`` when a keyword of ``retain`` is not
                in the data dictionary.
        """
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
        self.codes = recipe.codes
        self._adds = [(_resolve_tag(r.field), r.value or "") for r in recipe.adds]

    # ---- public ----

    def apply(self, ds: Dataset, subject: SubjectContext) -> Dataset:
        """De-identify ``ds`` in place and return it.

        Every element is kept, removed or changed by the recipe's plan (sequences at any depth);
        the text of compressed frames (JPEG comments and application segments, JPEG 2000
        comments: ``ridl.codestream.strip_pixel_data_text``) is stripped; then the recipe's
        ADDs, Patient Identity Removed, De-identification Method and its Code Sequence (PS3.15
        E.1.1, CID 7050) are set and File Meta is rebuilt (PS3.10 7.1).

        Args:
            ds: a whole object as read by pydicom, with File Meta holding Transfer Syntax UID.
            subject: the research ID and date shift of the object's subject.

        Returns:
            ``ds`` itself, de-identified.

        Raises:
            DeidError: the engine cannot de-identify it with certainty (no transfer syntax, no
                SOP Instance UID, unknown VR kept, unparseable sequence or element, sequences
                deeper than MAX_DEPTH, unknown character set, undecodable text, unknown recipe
                function, variable or action). An ObjectRejected subclass: the object is
                quarantined, never exported half done.
        """
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:
            raise DeidError(Reason.DEID_NO_TRANSFER_SYNTAX)
        state = _State(subject)
        if self.uses_clean:
            state.identifying = identifying_tokens(ds) | subject.identifying
        pointers = pointer_targets(ds)
        self._walk(ds, state, 0, mode="")
        drop_dangling_pointers(ds, pointers)  # PS3.3 C.7.6.6, C.7.6.17 (deid_recipes.iod)
        strip_pixel_data_text(ds)  # comments, EXIF, thumbnails in JPEG / JPEG 2000 frames
        for tag, expr in self._adds:
            vr = dictionary_VR(tag)
            value = self._value(expr, vr, None, state)
            if value is not None:
                ds.add(DataElement(tag, vr, value))
        ds.PatientIdentityRemoved = "YES"
        ds.add(DataElement(DEID_METHOD, "LO", list(self.method)))
        if self.codes:
            items = []
            for code, meaning in self.codes:
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

    def apply_elements(
        self, ds: Dataset, subject: SubjectContext, identifying_from: Dataset | None = None
    ) -> None:
        """De-identify the elements of ``ds`` in place, and nothing more.

        What :meth:`apply` does to the elements, without its ADDs, the De-identification Method
        elements or File Meta: for a part of an object (the fast path hands over the elements
        it does not encode itself, with the ADDs and File Meta made on its side).

        Args:
            ds: a data set holding some top-level elements of one object.
            subject: the research ID and date shift of the object's subject.
            identifying_from: the data set func:clean takes identifying values from (see
                :func:`identifying_tokens`); ``ds`` itself when None. Read only when a rule
                uses func:clean.

        Raises:
            DeidError: as for :meth:`apply`, bar the File Meta reasons.
        """
        state = _State(subject)
        if self.uses_clean:
            state.identifying = subject.identifying | identifying_tokens(
                ds if identifying_from is None else identifying_from
            )
        self._walk(ds, state, 0, mode="")

    def decide(self, tag: int, raw_vr: str | None) -> tuple[str, str | None, str]:
        """What the plan does with a public element, cached per tag and VR.

        Args:
            tag: the element's tag as ``(group << 16) | element`` (group even).
            raw_vr: the VR it was read with; None or ``"UN"`` takes the dictionary VR.

        Returns:
            ``(action, value expression, VR)``: action is KEEP, REMOVE, BLANK, REPLACE, JITTER
            or UNMATCHED (no rule names it: the caller applies the unmatched default, or the
            sequence mode's); the expression is a rule's value (``func:uid``, a literal...) or
            None; VR is the one the element is handled as (the first of an ambiguous pair).
            Original Attributes Sequence is always REMOVE; unnamed Pixel Data is KEEP; with
            the secure default, an attribute an IOD requires (:data:`deid_recipes.iod.REQUIRED`)
            that would be removed is BLANK (Type 2) or ``func:dummy`` (Type 1) instead.
        """
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
        if (
            self.secure
            and not retained
            and (name == "REMOVE" or (name == "UNMATCHED" and vr != "UI"))
            and (required := required_action(tag)) is not None
        ):
            name, value = required  # the IOD requires it: empty (Type 2) or dummy (Type 1)
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
            check_charset(ds)
        private: list[int] = []
        # A content item whose concept names a person, organisation or device (PS3.16 TID 1003,
        # 1004, 1020, 1021; ridl.identity): in cleaned content its value is dummied, not cleaned.
        named = mode == "clean" and content_item_names(ds) is not None
        for tag in list(elements):
            group = tag >> 16
            if group & 1:
                private.append(tag)
                continue
            if group == 0x0002 or group == 0xFFFE or not tag & 0xFFFF:
                del elements[tag]
                continue
            raw = elements[tag]
            if raw.VR is not None and raw.VR not in VALID_VRS:
                # Explicit VR bytes that are no VR (a damaged header): a kept element would be
                # written back as it came, unreadable; its value cannot be checked either.
                raise DeidError(Reason.DEID_UNKNOWN_VR, str(Tag(tag)))
            name, value, vr = self.decide(tag, raw.VR)
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
            if named and tag in (TEXT_VALUE, PERSON_NAME) and name != "REMOVE":
                name, value = "REPLACE", "func:dummy"
            elif mode and tag == CODE_MEANING and name == "REPLACE" and _standard_meaning(ds):
                name = "KEEP"  # vocabulary of a standard coding scheme, not free text
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
            elif name in ("BLANK", "REPLACE") and keeps_empty_sequence(tag):
                elements[tag] = DataElement(tag, "SQ", Sequence())  # Type 2: zero items
            elif name in ("BLANK", "REPLACE"):
                del elements[tag]  # an optional sequence is never written with zero items
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
            if expr == "func:clean" and _emptied(elem.value, new) and value_required(tag):
                # Cleaning left nothing of a value the IOD requires (Type 1 / 1C): a dummy, as
                # func:dummy writes it, never an empty or missing value (deid_recipes.iod).
                new = self._value("func:dummy", vr, elem.value, state, elem)
            if new is None:
                del elements[tag]
            else:
                elements[tag] = DataElement(tag, vr, new)
            return
        raise DeidError(Reason.DEID_UNSUPPORTED_ACTION, name)

    def _private(self, ds: Dataset, tags: list[int], state: _State, depth: int) -> None:
        """Remove private elements, except those the safe-private table keeps by creator.

        "Safe" applies to an element, not to a subtree (PS3.15 E.3.10): a kept private sequence
        has its items walked like any other level, so every element inside it, public or
        private, goes through the plan.
        """
        elements = _elements(ds)
        safe = self.recipe.safe_private
        keep: dict[int, tuple[str, int, int] | None] = {}
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
                key = (creator or "", group, element & 0xFF)
                if creator and key in safe:
                    keep[tag] = key
                    keep.setdefault(creator_tag, None)
        for tag in tags:
            if tag not in keep:
                del elements[tag]
                continue
            kept = keep[tag]
            if kept is not None and self._private_sequence(elements, tag, kept):
                self._walk_items(ds, tag, state, depth, "")

    def _private_sequence(
        self, elements: MutableMapping[int, Any], tag: int, key: tuple[str, int, int]
    ) -> bool:
        """Whether a kept private element is a sequence; one read without a VR is made one.

        Implicit VR (PS3.5 7.1.3) and UN (PS3.5 6.2.2) carry no VR for a private element: the
        VR Table E.3.10-1 gives decides, and where it gives none, an undefined length or a
        value that starts with an Item tag. Such a value is read as implicit VR little endian
        items (how both encode a sequence's content), so its items can be walked.
        """
        elem = elements[tag]
        vr = elem.VR
        if vr == "SQ":
            return True
        value = elem.value
        if vr not in (None, "UN") or not isinstance(value, bytes):
            return False
        listed = self.recipe.safe_private_vr.get(key, "")
        if isinstance(elem, RawDataElement):
            undefined = elem.length == UNDEFINED_LENGTH
        else:
            undefined = bool(elem.is_undefined_length)
        if listed != "SQ" and (listed or not (undefined or value[:4] == ITEM_TAG_BYTES)):
            return False
        if isinstance(elem, RawDataElement):
            implicit = elem.is_implicit_VR or vr == "UN"
            elements[tag] = elem._replace(VR="SQ", is_implicit_VR=implicit)
        else:
            elements[tag] = RawDataElement(
                BaseTag(tag), "SQ", UNDEFINED_LENGTH if undefined else len(value), value, 0,
                True, True,
            )  # fmt: skip
        return True

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
            return [self.remap_uid(str(v)) for v in current]
        return self.remap_uid(str(current))

    def remap_uid(self, uid: str) -> str:
        """The project's UID for ``uid``; standard UIDs (SOP classes, transfer syntaxes) stay.

        Args:
            uid: one UID value, padding (spaces, trailing NUL) allowed.

        Returns:
            The keyed replacement (same UID in, same UID out, for the whole project), or the
            stripped value when it is empty or in pydicom's UID dictionary.
        """
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
        # PS3.10 7.1: the preamble is written as zeros, never the source's (a dual-personality
        # file's TIFF header is not a de-identified value).
        ds.preamble = None


def _elements(ds: Dataset) -> MutableMapping[int, Any]:
    """The dataset's element map, raw elements unconverted.

    Going through it (instead of ``ds[tag]``) is what keeps elements that are deleted or copied
    verbatim from ever being converted. Keys are BaseTag, an int subclass with the same hash.
    """
    return cast("MutableMapping[int, Any]", ds._dict)


def _emptied(before: object, after: object) -> bool:
    """Whether a change took a value with content (a letter or digit) to one without (None,
    empty, or punctuation only, such as the ``^`` left of a name whose components went)."""

    def blank(value: object) -> bool:
        values = value if isinstance(value, MultiValue | list) else [value]
        return not any(_WORD.search(str(v)) for v in values if v is not None)

    return not blank(before) and blank(after)


_SEMANTIC_TAG = re.compile(r"\s+\([^()]*\)$")


@cache
def _standard_meanings() -> dict[tuple[str, str], frozenset[str]]:
    """{(coding scheme designator, code value): its meanings, case-folded} from pydicom's PS3.16
    tables; a SNOMED CT meaning is also held without its semantic tag ("Lung structure (body
    structure)" and "Lung structure")."""
    table: dict[tuple[str, str], set[str]] = {}
    try:
        from pydicom.sr.codedict import Collection

        for scheme in STANDARD_SCHEMES:
            for code in Collection(scheme).concepts.values():
                meaning = str(code.meaning).casefold()
                meanings = table.setdefault((scheme, str(code.value)), set())
                meanings.update({meaning, _SEMANTIC_TAG.sub("", meaning)})
    except Exception:  # no table: every Code Meaning of cleaned content is treated as text
        return {}
    return {key: frozenset(meanings) for key, meanings in table.items()}


def _standard_meaning(item: Dataset) -> bool:
    """Whether the Code Meaning of a code item is the standard meaning of its code.

    True when Coding Scheme Designator is one of :data:`STANDARD_SCHEMES` and Code Meaning
    equals (ignoring case and padding) a meaning PS3.16 gives that Code Value, as pydicom's
    tables hold it: standard vocabulary, the same for every patient, so it identifies no one
    and is kept inside dummied or cleaned content. A local scheme (``99...``) or a meaning
    written differently stays text (dummied or cleaned).
    """
    try:
        scheme = str(item.get(0x00080102).value or "").strip(" \x00")
        code = str(item.get(0x00080100).value or "").strip(" \x00")
        meaning = str(item.get(CODE_MEANING).value or "").strip(" \x00")
    except Exception:
        return False
    if scheme not in STANDARD_SCHEMES or not code or not meaning:
        return False
    return meaning.casefold() in _standard_meanings().get((scheme, code), frozenset())


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

    Dates written for people go whole first (:func:`deid_recipes.dates.remove_written_dates`:
    ``23/07/2019``, ``2019-07-23``, ``Jul 23 2019``... never a day and month left without their
    year). Then a token goes when it equals (case-insensitively) a token of an identifying value
    of the same dataset (name components, IDs, health number, accession, institution, dates), or
    when it carries four or more digits (dates, phone numbers, record numbers of other systems).

    Args:
        text: one value of a free-text VR (LO, LT, SH, ST, UC, UT, PN), already decoded.
        identifying: lower-cased tokens from :func:`identifying_tokens`.

    Returns:
        The remaining text, runs of whitespace collapsed to one space (may be empty).
    """
    parts = _TOKEN_SPLIT.split(remove_written_dates(text))
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


def identifying_tokens(ds: Dataset) -> frozenset[str]:
    """The tokens func:clean removes from free text of this data set (see :func:`clean_text`).

    Read at every depth, without changing ``ds`` (values are converted on the side): the
    attributes of :data:`IDENTIFYING_KEYWORDS` and :data:`INSTITUTION_KEYWORDS`, every
    person name (VR PN: Verifying Observer Name, Person Name of content items of value type
    PNAME and of Participant Sequence items, PS3.3 C.17.2 and C.17.3), the Code Meaning of
    Institution Code Sequence items, and the Text Value of content items whose concept names a
    person, an organisation or a device (:data:`ridl.identity.IDENTIFYING_CONCEPTS`: Person
    Observer's Organization Name and others of PS3.16 TID 1003, 1004, 1020, 1021). A sequence
    whose framing is broken is not read here (de-identifying it refuses the object).

    Args:
        ds: the top-level data set.

    Returns:
        Lower-cased tokens of two characters or more, split on anything but letters and digits;
        with them, each person name's words run together
        (:func:`ridl.written_forms.joined_name_forms`), and a person name's tokens and forms
        without accents (``josee`` for ``Josée``, as verification searches them, R7). An
        identifier written apart (``MRN 00123``) needs none: :func:`clean_text` removes every
        token of 4 digits or more.

    Raises:
        DeidError: ``deid-unparseable-element`` when one of those values cannot be read.
    """
    tokens: set[str] = set()

    def add(value: object, vr: str | None) -> None:
        values = value if isinstance(value, MultiValue | list) else [value]
        for v in values:
            text = str(v)
            words = {part.lower() for part in _TOKEN_SPLIT.split(text)[::2] if len(part) >= 2}
            if vr == "PN":  # run together ("TremblayJosee", "OConnor"), typed without accents
                words.update(form.lower() for form, _ in joined_name_forms(text))
                words.update([unaccented(word) for word in words if not word.isascii()])
            tokens.update(words)

    def walk(level: Dataset, depth: int, institution: bool) -> None:
        if depth > MAX_DEPTH:
            return
        named = depth > 0 and content_item_names(level) is not None
        for tag, raw in list(_elements(level).items()):
            tag = int(tag)
            vr = raw.VR
            if vr in (None, "UN") and not tag >> 16 & 1:
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    continue
            if vr == "SQ":
                for item in _sequence_items(level, raw):
                    walk(item, depth + 1, tag == INSTITUTION_CODE_SEQUENCE)
                continue
            wanted = vr == "PN" or tag in _IDENTIFYING_TAGS or (named and tag == TEXT_VALUE)
            if not wanted and not (institution and tag == CODE_MEANING):
                continue
            try:
                value = _converted(level, raw).value
            except Exception as exc:
                raise DeidError(Reason.DEID_UNPARSEABLE_ELEMENT, type(exc).__name__) from None
            if value:
                add(value, vr)

    walk(ds, 0, False)
    return frozenset(tokens)


def _converted(level: Dataset, raw: Any) -> DataElement:
    """``raw`` as a DataElement, made on the side: ``level`` keeps its raw element."""
    if isinstance(raw, RawDataElement):
        return convert_raw_data_element(raw, encoding=level._character_set, ds=level)
    return cast("DataElement", raw)


def _sequence_items(level: Dataset, raw: Any) -> list[Dataset]:
    """The items of a sequence element of ``level``, read on the side; [] when its framing is
    broken or pydicom cannot read it (walking it later refuses the object)."""
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes) and raw.is_little_endian:
        try:
            check_sequence_bytes(raw.value, raw.is_implicit_VR)
        except ValueError:
            return []
        raw = raw._replace(VR="SQ")
    try:
        value = _converted(level, raw).value
    except Exception:
        return []
    return [item for item in value or [] if isinstance(item, Dataset)]


def check_charset(ds: Dataset) -> None:
    """Refuse a data set whose Specific Character Set pydicom cannot decode.

    Text in it could be misread and a name in it missed, so it is not de-identified at all. The
    element is read as it is (raw bytes stay unconverted); see
    :func:`deid_recipes.dicombytes.unsupported_charset` for the rule (PS3.3 C.12.1.1.2).

    Args:
        ds: one data set level (top level or a sequence item); one without Specific Character
            Set (0008,0005) passes.

    Raises:
        DeidError: ``deid-unknown-charset`` (an ObjectRejected: the object is quarantined).
    """
    raw = _elements(ds).get(SPECIFIC_CHARACTER_SET)
    if raw is not None and unsupported_charset(raw.value):
        raise DeidError(Reason.DEID_UNKNOWN_CHARSET)


def _jitter(value: object, vr: str, shift_days: int) -> object:
    """A JITTER's new value: DA, DT and TM shifted whole (see :mod:`deid_recipes.dates`).

    Any other VR is returned as it is; None means the value cannot be shifted with certainty
    and the element goes.
    """
    if vr not in TEMPORAL_VRS:
        return value
    values = value if isinstance(value, MultiValue | list) else [value]
    text = "\\".join("" if v is None else str(v) for v in values)
    shifted = shift_temporal(text, vr, shift_days)
    if shifted is None:
        return None
    out = shifted.split("\\")
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


__all__ = [
    "DeidError",
    "Engine",
    "SubjectContext",
    "check_charset",
    "clean_text",
    "identifying_tokens",
]
