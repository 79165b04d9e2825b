"""Structured-report content items whose value names a person, an organisation or a device.

Why here: a structured report can carry an observer's organisation or login name as a TEXT
content item, identified only by its Concept Name (PS3.16), not by an attribute keyword. Two
engines must read the same items: de-identification (``deid_recipes``: the item's value is
dummied and its tokens are removed from every other text) and the PHI gate's dictionary
(``export.identifiers``: the value is a searched term). Neither may import the other, so the
table lives on the ground floor.

Sources (PS3.16, codes of the DCM coding scheme):

* TID 1003 Person Observer Identifying Attributes: Person Observer Name (121008), Person
  Observer's Login Name (128774), Person Observer's Organization Name (121009), Identifier
  within Person Observer's Role (128775). The roles (121010, 121011) are coded, not names.
* TID 1004 Device Observer Identifying Attributes: Device Observer Name (121013), Device
  Observer Serial Number (121016), Device Observer Physical Location During Observation
  (121017), Station AE Title (110119). Manufacturer and model name identify no one.
* TID 1020 Person Participant: Person Name (113870), Person ID (113871), Person ID Issuer
  (113872), Organization Name (113873). TID 1021 Device Participant: Device Name (113877),
  Device Serial Number (113880).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydicom.dataset import Dataset

# Coding schemes whose concepts pydicom ships (PS3.16 Annex D and the resources it draws on):
# standard vocabulary, for de-identification's Code Meanings and R15's clinical words.
STANDARD_SCHEMES = ("DCM", "SCT", "LN", "UCUM", "RADLEX", "NCIt", "FMA", "MDC", "UMLS", "IBSI")
CONCEPT_NAME_CODE_SEQUENCE = 0x0040A043
CODE_VALUE = 0x00080100
CODING_SCHEME_DESIGNATOR = 0x00080102
TEXT_VALUE = 0x0040A160
PERSON_NAME = 0x0040A123


class Named(StrEnum):
    """What an identifying content item's value names."""

    PERSON = "person"
    ORGANIZATION = "organization"
    IDENTIFIER = "identifier"
    DEVICE = "device"


IDENTIFYING_CONCEPTS: dict[tuple[str, str], Named] = {
    ("DCM", "121008"): Named.PERSON,  # Person Observer Name (TID 1003)
    ("DCM", "128774"): Named.PERSON,  # Person Observer's Login Name (TID 1003)
    ("DCM", "113870"): Named.PERSON,  # Person Name (TID 1020)
    ("DCM", "121009"): Named.ORGANIZATION,  # Person Observer's Organization Name (TID 1003)
    ("DCM", "113873"): Named.ORGANIZATION,  # Organization Name (TID 1020)
    ("DCM", "128775"): Named.IDENTIFIER,  # Identifier within Person Observer's Role (TID 1003)
    ("DCM", "113871"): Named.IDENTIFIER,  # Person ID (TID 1020)
    ("DCM", "113872"): Named.ORGANIZATION,  # Person ID Issuer (TID 1020)
    ("DCM", "121013"): Named.DEVICE,  # Device Observer Name (TID 1004)
    ("DCM", "121016"): Named.DEVICE,  # Device Observer Serial Number (TID 1004)
    ("DCM", "121017"): Named.DEVICE,  # Device Observer Physical Location (TID 1004)
    ("DCM", "110119"): Named.DEVICE,  # Station AE Title (TID 1004)
    ("DCM", "113877"): Named.DEVICE,  # Device Name (TID 1021)
    ("DCM", "113880"): Named.DEVICE,  # Device Serial Number (TID 1021)
}


def _text(item: Dataset, tag: int) -> str:
    try:
        elem = item.get(tag)
        value = elem.value if elem is not None else None
    except Exception:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace")
    return str(value or "").strip(" \x00")


def content_item_names(item: Any) -> Named | None:
    """What the value of a content item names, from its Concept Name Code Sequence.

    Args:
        item: one data set (a content item, PS3.3 C.17.3, or any other item); read, never
            changed; a sequence pydicom cannot read counts as absent.

    Returns:
        The :class:`Named` kind when its first Concept Name Code Sequence item is one of
        :data:`IDENTIFYING_CONCEPTS` (scheme and code value compared as written, padding
        stripped), else None.
    """
    if not isinstance(item, Dataset) or CONCEPT_NAME_CODE_SEQUENCE not in item:
        return None
    try:
        codes = item[CONCEPT_NAME_CODE_SEQUENCE].value
        code = codes[0] if codes else None
    except Exception:
        return None
    if not isinstance(code, Dataset):
        return None
    key = (_text(code, CODING_SCHEME_DESIGNATOR), _text(code, CODE_VALUE))
    return IDENTIFYING_CONCEPTS.get(key)


__all__ = ["IDENTIFYING_CONCEPTS", "PERSON_NAME", "TEXT_VALUE", "Named", "content_item_names"]
