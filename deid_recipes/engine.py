"""The de-identification engine: applies a compiled recipe to one dataset, in place.

Pixel data is never decoded here: the engine walks the header, and the pixel bytes go through
untouched. Anything it cannot handle with certainty raises :class:`DeidError`, so the caller
quarantines the object rather than export it half done.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, UID_dictionary

from deid_recipes.recipe import Action, Recipe
from ridl import __version__
from ridl.pseudonyms import Pseudonymizer

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1420.1"
MAX_DEPTH = 32
DUMMY_BY_VR = {
    "PN": "ANONYMOUS",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "DS": "0",
    "IS": "0",
    "UI": None,  # never a dummy: UIDs are remapped
}
TEXT_VRS = {"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT", "UR", "PN"}
SEQ_DELETE = object()


class DeidError(Exception):
    """The object cannot be de-identified with certainty; the message names the reason only."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class SubjectContext:
    """Per-subject values every object of that subject gets: research ID and date shift."""

    research_id: str
    shift_days: int


class Engine:
    """One project's recipe and keys, ready to de-identify any number of datasets."""

    def __init__(self, recipe: Recipe, keys: Pseudonymizer, retain: Iterable[str] = ()) -> None:
        self.recipe = recipe
        self.keys = keys
        self.retain: set[int] = set()
        for keyword in retain:
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise DeidError("unknown-retained-attribute", keyword)
            self.retain.add(tag)
        self.method = f"ridl {__version__} recipe {recipe.name} sha256:{recipe.digest[:16]}"

    def apply(self, ds: Dataset, subject: SubjectContext) -> Dataset:
        """De-identify ``ds`` in place and return it."""
        self._walk(ds, subject, depth=0)
        for rule in self.recipe.adds:
            tag = _resolve_tag(rule.field)
            vr = dictionary_VR(tag)
            value = self._value(rule.value or "", vr, None, subject)
            if value is not None:
                ds.add(DataElement(tag, vr, value))
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = self.method
        self._rebuild_meta(ds)
        return ds

    def _walk(self, ds: Dataset, subject: SubjectContext, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise DeidError("sequence-too-deep", f"more than {MAX_DEPTH} levels")
        for tag in list(ds.keys()):
            tag = Tag(tag)
            if tag.is_private or tag.element == 0 or tag.group in (0x0002, 0xFFFE):
                del ds[tag]
                continue
            try:
                elem = ds[tag]
            except Exception as exc:  # a value pydicom cannot parse (bad VR, bad length)
                raise DeidError("unparseable-element", type(exc).__name__) from None
            action = self._action(tag)
            self._apply_action(ds, elem, action, subject, depth)

    def _action(self, tag: BaseTag) -> Action:
        if tag in self.retain:
            return Action("KEEP")
        if tag == 0x7FE00010:  # pixel data goes through untouched unless a recipe removes it
            return self.recipe.action_for(tag) or Action("KEEP")
        return self.recipe.action_for(tag) or Action(self.recipe.unmatched)

    def _apply_action(
        self, ds: Dataset, elem: DataElement, action: Action, subject: SubjectContext, depth: int
    ) -> None:
        name = action.name
        if name == "REMOVE":
            del ds[elem.tag]
            return
        if elem.VR == "SQ":
            if name == "KEEP":
                for item in elem.value:
                    self._walk(item, subject, depth + 1)
            else:  # a sequence cannot take a dummy or shifted value: empty it
                elem.value = Sequence()
            return
        if elem.VR == "UN" and name == "KEEP":
            # Value representation unknown: its contents cannot be checked, so never keep it.
            raise DeidError("unknown-vr", str(elem.tag))
        if name == "KEEP":
            return
        if name == "BLANK":
            elem.value = None if elem.VR not in TEXT_VRS else ""
            return
        if name == "JITTER":
            shifted = self._jitter(elem, subject)
            if shifted is None:
                del ds[elem.tag]
            else:
                elem.value = shifted
            return
        if name == "REPLACE":
            value = self._value(action.value or "", elem.VR, elem.value, subject)
            if value is None:
                del ds[elem.tag]
            else:
                elem.value = value
            return
        raise DeidError("unsupported-action", name)

    def _value(self, expr: str, vr: str, current: object, subject: SubjectContext) -> object:
        if expr.startswith("func:"):
            func = expr[5:]
            if func in ("research_id", "research_name"):
                return subject.research_id
            if func == "uid":
                return self._remap_uids(current)
            if func == "dummy":
                if vr == "UI":
                    return self._remap_uids(current)
                return DUMMY_BY_VR.get(vr, "ANON" if vr in TEXT_VRS else None)
            if func == "clean":
                return "" if vr in TEXT_VRS else None
            if func == "accession":
                return self.keys.token("accession", str(current or ""), 16) if current else ""
            raise DeidError("unknown-recipe-function", func)
        if expr.startswith("var:"):
            if expr[4:] == "research_id":
                return subject.research_id
            if expr[4:] == "date_shift":
                return str(subject.shift_days)
            raise DeidError("unknown-recipe-variable", expr[4:])
        return expr

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

    def _jitter(self, elem: DataElement, subject: SubjectContext) -> object:
        if elem.VR not in ("DA", "DT"):
            return elem.value  # times of day carry no date; intervals stay intact
        values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
        out: list[str] = []
        for value in values:
            text = str(value).strip()
            if not text:
                out.append(text)
                continue
            try:
                date = dt.datetime.strptime(text[:8], "%Y%m%d").date()
            except ValueError:
                return None  # cannot shift with certainty: drop the value
            shifted = (date + dt.timedelta(days=subject.shift_days)).strftime("%Y%m%d")
            out.append(shifted + text[8:])
        return out if len(out) > 1 else out[0]

    def _rebuild_meta(self, ds: Dataset) -> None:
        old = getattr(ds, "file_meta", None)
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if old is None or "TransferSyntaxUID" not in old:
            raise DeidError("no-transfer-syntax")
        meta.TransferSyntaxUID = old.TransferSyntaxUID
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = f"RIDL_{__version__}"[:16]
        ds.file_meta = meta


def _resolve_tag(field: str) -> BaseTag:
    tag = tag_for_keyword(field)
    if tag is not None:
        return Tag(tag)
    return Tag(int(field.strip("()").replace(",", ""), 16))
