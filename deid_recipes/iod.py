"""What an object's IOD needs after de-identification: required attributes and pointers.

Why: a recipe says what to do with an attribute, not whether the object's IOD (PS3.3 Part A)
still holds afterwards. Three rules keep the output an instance of its IOD without keeping
anything that identifies someone:

* an attribute the IOD requires (Type 1 or 2) that the plan would remove is kept as an empty
  value (Type 2) or a dummy (Type 1: the PS3.15 "D" action, text becomes ``ANON``, a sequence
  keeps its structure with every free text, date and name in it dummied) - never with its value.
  :data:`REQUIRED` lists those attributes, each with its PS3.3 source; the technical ones that
  identify no one are kept as they are by the ``ridl-safe-public`` recipe instead;
* a Type 1 / 1C value that func:clean leaves empty (:func:`value_required`) becomes a dummy;
* a sequence the plan blanks is removed unless :data:`REQUIRED` says Type 2: a Type 3 sequence
  written with zero items is an error (PS3.5 7.5.3 allows it only where the IOD makes it Type 2);
* a pointer is never left naming an attribute the plan removed: a value of Frame Increment
  Pointer (0028,0009, PS3.3 C.7.6.6) whose target went is dropped (the pointer goes with its
  last value), and a Dimension Index (PS3.3 C.7.6.17) whose Dimension Index Pointer target went
  is dropped with its value in every frame's Dimension Index Values.

Engines floor (``deid_recipes/``): :class:`deid_recipes.engine.Engine` consults
:data:`REQUIRED` when it plans an element and calls :func:`pointer_targets` /
:func:`drop_dangling_pointers` around its walk; the fast path hands an object whose pointers
would dangle to the engine (:func:`pointers_at_risk`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

FRAME_INCREMENT_POINTER = 0x00280009
DIMENSION_INDEX_SEQUENCE = 0x00209222
DIMENSION_INDEX_POINTER = 0x00209165
FUNCTIONAL_GROUP_POINTER = 0x00209167
DIMENSION_INDEX_VALUES = 0x00209157
SHARED_FUNCTIONAL_GROUPS = 0x52009229
PER_FRAME_FUNCTIONAL_GROUPS = 0x52009230
FRAME_CONTENT_SEQUENCE = 0x00209111

# keyword -> Type where an IOD requires it and the recipes may remove it. Type 2: kept empty;
# Type 1: a dummy. Only attributes whose value could identify someone (names, labels, serial
# numbers, dates, free text, person-identifying sequences) are here; technical ones are kept by
# ridl-safe-public. Present in the input only: nothing is added that the input lacked.
REQUIRED_KEYWORDS: dict[str, int] = {
    # Enhanced General Equipment C.7.5.2: Device Serial Number, Type 1.
    "DeviceSerialNumber": 1,
    # RT Series C.8.8.1 and others: Operators' Name, Type 2.
    "OperatorsName": 2,
    # RT General Plan C.8.8.9: RT Plan Label Type 1, RT Plan Date / Time Type 2.
    "RTPlanLabel": 1,
    "RTPlanDate": 2,
    "RTPlanTime": 2,
    # Segmentation Image C.8.20.2, Segment Description macro: Segment Label, Type 1.
    "SegmentLabel": 1,
    # Segmentation Image C.8.20.2: Segment Algorithm Name, Type 1C (algorithm segments).
    "SegmentAlgorithmName": 1,
    # Content Identification macro (PS3.3 Table 10-12): Content Description, Type 2;
    # Content Creator's Name, Type 2.
    "ContentDescription": 2,
    "ContentCreatorName": 2,
    # SR Document General C.17.2: Verifying Observer Sequence Type 1C (VERIFIED documents),
    # and in its items Verifying Observer Name Type 1, Verifying Observer Identification Code
    # Sequence Type 2, Verifying Organization Type 1, Verification DateTime Type 1; Performed
    # Procedure Code Sequence Type 2.
    "VerifyingObserverSequence": 1,
    "VerifyingObserverName": 1,
    "VerifyingObserverIdentificationCodeSequence": 2,
    "VerifyingOrganization": 1,
    "VerificationDateTime": 1,
    "PerformedProcedureCodeSequence": 2,
    # SR Document Series C.17.1: Referenced Performed Procedure Step Sequence, Type 2.
    "ReferencedPerformedProcedureStepSequence": 2,
    # MR Receive Coil / MR Transmit Coil macros C.8.13.5.7, C.8.13.5.8: Receive Coil Name,
    # Multi-Coil Element Name and Transmit Coil Name, Type 1 (site-chosen labels: dummied).
    "ReceiveCoilName": 1,
    "MultiCoilElementName": 1,
    "TransmitCoilName": 1,
    # Acquisition Context C.7.6.14: Acquisition Context Sequence, Type 2.
    "AcquisitionContextSequence": 2,
    # Specimen C.7.6.22: Container Identifier Type 1, Issuer of the Container Identifier
    # Sequence Type 2, Specimen Identifier Type 1, Issuer of the Specimen Identifier Sequence
    # Type 2, Specimen Preparation Sequence Type 2.
    "ContainerIdentifier": 1,
    "IssuerOfTheContainerIdentifierSequence": 2,
    "SpecimenIdentifier": 1,
    "IssuerOfTheSpecimenIdentifierSequence": 2,
    "SpecimenPreparationSequence": 2,
    # Real World Value Mapping Item Macro (PS3.3 C.7.6.16.2.11, Table C.7.6.16-12, in shared /
    # per-frame functional groups): LUT Explanation (free text) and LUT Label, Type 1.
    "LUTExplanation": 1,
    "LUTLabel": 1,
}
# Type 1 / 1C attributes that func:clean may leave without content (every token of a name, a
# date expression): written as a dummy instead (PS3.5 7.4: a Type 1 value is never empty).
# Document Content Macro (PS3.3 C.17.3, Table C.17-5): Text Value, Person Name of TEXT / PNAME
# items; Text Object macro of Graphic Annotation (C.10.5): Unformatted Text Value; Code Sequence
# Macro (PS3.3 Table 8.8-1): Code Meaning.
VALUE_REQUIRED_KEYWORDS = ("TextValue", "PersonName", "UnformattedTextValue", "CodeMeaning")
REQUIRED: dict[int, int] = {
    int(tag_for_keyword(keyword) or 0): kind for keyword, kind in REQUIRED_KEYWORDS.items()
}


VALUE_REQUIRED: frozenset[int] = frozenset(
    int(tag_for_keyword(keyword) or 0) for keyword in VALUE_REQUIRED_KEYWORDS
) | frozenset(tag for tag, kind in REQUIRED.items() if kind == 1)


def value_required(tag: int) -> bool:
    """Whether an IOD requires a value where this attribute is present (Type 1 or 1C).

    Args:
        tag: the element's tag as ``(group << 16) | element``.

    Returns:
        True for the Type 1 attributes of :data:`REQUIRED` and those of
        :data:`VALUE_REQUIRED_KEYWORDS`: a cleaning that leaves nothing of such a value writes a
        dummy instead (:class:`deid_recipes.engine.Engine`).
    """
    return tag in VALUE_REQUIRED


def required_action(tag: int) -> tuple[str, str | None] | None:
    """The action that keeps a required attribute the plan would remove, or None.

    Args:
        tag: the element's tag as ``(group << 16) | element``.

    Returns:
        ``("BLANK", None)`` for a Type 2 attribute of :data:`REQUIRED`, ``("REPLACE",
        "func:dummy")`` for a Type 1 one, None for any other attribute.
    """
    kind = REQUIRED.get(tag)
    if kind is None:
        return None
    return ("BLANK", None) if kind == 2 else ("REPLACE", "func:dummy")


def keeps_empty_sequence(tag: int) -> bool:
    """Whether a blanked sequence stays, with zero items (Type 2 in :data:`REQUIRED`)."""
    return REQUIRED.get(tag) == 2


def _tags(value: object) -> list[int]:
    if value is None or value == "":
        return []
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [int(str(v), 0) if isinstance(v, str) else int(cast(int, v)) for v in values]


def _groups(ds: Dataset, group: int) -> Iterable[Dataset]:
    """The functional group macro items ``group`` of the shared and every per-frame item."""
    for outer in (SHARED_FUNCTIONAL_GROUPS, PER_FRAME_FUNCTIONAL_GROUPS):
        for item in ds.get(outer, DataElement(outer, "SQ", Sequence())).value or []:
            if group in item:
                yield from item[group].value or []


def _resolves(ds: Dataset, target: int, group: int | None) -> bool:
    if group is None:
        return target in ds
    return any(target in item for item in _groups(ds, group))


def pointer_targets(ds: Dataset) -> set[tuple[int, int | None]]:
    """The pointers of ``ds`` whose targets are present, before the plan runs.

    Args:
        ds: the top-level data set.

    Returns:
        ``(target tag, functional group sequence tag or None)`` for each value of Frame
        Increment Pointer and each Dimension Index Pointer (with its Functional Group Pointer)
        that names an attribute present in ``ds``.
    """
    found: set[tuple[int, int | None]] = set()
    if FRAME_INCREMENT_POINTER in ds:
        for target in _tags(ds[FRAME_INCREMENT_POINTER].value):
            if target in ds:
                found.add((target, None))
    for item in _dimension_items(ds):
        pointer = _pointer(item)
        if pointer is not None and _resolves(ds, *pointer):
            found.add(pointer)
    return found


def _dimension_items(ds: Dataset) -> list[Dataset]:
    if DIMENSION_INDEX_SEQUENCE not in ds:
        return []
    return list(ds[DIMENSION_INDEX_SEQUENCE].value or [])


def _pointer(item: Dataset) -> tuple[int, int | None] | None:
    if DIMENSION_INDEX_POINTER not in item:
        return None
    targets = _tags(item[DIMENSION_INDEX_POINTER].value)
    if not targets:
        return None
    groups = _tags(item[FUNCTIONAL_GROUP_POINTER].value) if FUNCTIONAL_GROUP_POINTER in item else []
    return targets[0], (groups[0] if groups else None)


def drop_dangling_pointers(ds: Dataset, before: set[tuple[int, int | None]]) -> None:
    """Drop the pointers whose targets were present before the plan and are gone now.

    Frame Increment Pointer keeps its other values (it goes with its last one). A Dimension
    Index item goes with the value at its position in every Dimension Index Values (0020,9157)
    of the Frame Content Sequence; with its last item, the Dimension Index Sequence and those
    values go.

    Args:
        ds: the top-level data set, de-identified.
        before: :func:`pointer_targets` of the input.
    """
    if FRAME_INCREMENT_POINTER in ds:
        values = _tags(ds[FRAME_INCREMENT_POINTER].value)
        kept = [t for t in values if (t, None) not in before or t in ds]
        if not kept:
            del ds[FRAME_INCREMENT_POINTER]
        elif len(kept) != len(values):
            ds[FRAME_INCREMENT_POINTER] = DataElement(
                FRAME_INCREMENT_POINTER, "AT", kept if len(kept) > 1 else kept[0]
            )
    items = _dimension_items(ds)
    gone = [
        i
        for i, item in enumerate(items)
        if (pointer := _pointer(item)) is not None
        and pointer in before
        and not _resolves(ds, *pointer)
    ]
    if not gone:
        return
    left = [item for i, item in enumerate(items) if i not in gone]
    if left:
        ds[DIMENSION_INDEX_SEQUENCE].value = Sequence(left)
    else:
        del ds[DIMENSION_INDEX_SEQUENCE]
    for content in _groups(ds, FRAME_CONTENT_SEQUENCE):
        if DIMENSION_INDEX_VALUES not in content:
            continue
        values = _tags(content[DIMENSION_INDEX_VALUES].value)
        kept_values = [v for i, v in enumerate(values) if i not in gone]
        if kept_values and left:
            content[DIMENSION_INDEX_VALUES] = DataElement(
                DIMENSION_INDEX_VALUES,
                "UL",
                kept_values if len(kept_values) > 1 else kept_values[0],
            )
        else:
            del content[DIMENSION_INDEX_VALUES]


def pointers_at_risk(
    frame_pointers: Iterable[int],
    dimension_pointers: Iterable[tuple[int, int | None]],
    removes: Callable[[int], bool],
) -> bool:
    """Whether the plan would remove the target of a pointer (the fast path then hands off).

    Args:
        frame_pointers: the values of Frame Increment Pointer.
        dimension_pointers: ``(Dimension Index Pointer, Functional Group Pointer or None)``.
        removes: ``removes(tag)`` is True when the plan removes a public element with that tag;
            a private tag always counts as removed.

    Returns:
        True when one target (or the functional group sequence holding it) would go.
    """

    def gone(tag: int) -> bool:
        return bool((tag >> 16) & 1) or removes(tag)

    if any(gone(t) for t in frame_pointers):
        return True
    return any(gone(t) or (g is not None and gone(g)) for t, g in dimension_pointers)


__all__ = [
    "REQUIRED",
    "drop_dangling_pointers",
    "keeps_empty_sequence",
    "pointer_targets",
    "pointers_at_risk",
    "required_action",
    "value_required",
]
