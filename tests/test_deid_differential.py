"""Differential test: the engine against ``deid.dicom.replace_identifiers``, element by element.

Both apply the same single recipe file to the same corpus (synthetic DIR files and pydicom's own
test files). The engine runs with deid-compatible settings (unmatched KEEP); deid gets lookup
functions that compute the same values (keyed UIDs, dummies, research ID, date shift), so any
difference is a difference in how the recipe is applied. Every difference must fall in one of
the documented classes below, and each class has its own test showing why deid is wrong there.

Documented differences (deid 0.4.13):

* ``sequence-function``: REPLACE with a function on a sequence (D, C and X/Z/U* rows of
  sequences). deid sets the sequence's value to whatever the function returns (a TypeError for
  anything but a list of datasets), so in practice the items stay as they were: free text in
  Content Sequence, codes with names, IDs leak. The engine keeps the structure and de-identifies
  each item (dummy text, cleaned text or remapped UIDs).
* ``kept-sequence-shield``: deid's KEEP of a sequence protects every element nested in it from
  REPLACE, so original UIDs inside kept reference sequences survive and references no longer
  match the remapped instances. The engine applies the rules to nested elements too.
* ``time-jitter``: deid's JITTER parses a TM (or SH) value as a date and writes a date into it
  (StudyTime 072730 becomes 2030-06-27). The engine leaves times of day alone (intervals are
  kept by shifting dates) and never jitters a value that is not a date.
* ``dt-precision``: deid rewrites a jittered DT with microseconds it did not have
  (``.000000``), claiming a precision the source did not; the engine keeps the source's form.

* ``codestream-text``: the engine strips the text compressed frames carry beside their samples
  (JPEG comments and application segments, JPEG 2000 main-header comments:
  ``ridl.codestream``); deid copies Pixel Data as it is, comments included. The samples decode
  the same.
Attributes the engine adds by design (Patient Identity Removed, De-identification Method and
its Code Sequence) are not compared.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from deid_recipes import Engine, SubjectContext, load_recipe
from deid_recipes.dicombytes import BINARY_VRS
from deid_recipes.engine import DUMMY_BY_VR, clean_text, identifying_tokens
from deid_recipes.recipe import Recipe, find_recipe
from ridl.pseudonyms import Pseudonymizer

RECIPES = [
    "ps3.15-basic",
    "ridl-basic",
    "ps3.15-retain-long-modified-dates",
    "ps3.15-clean-descriptors",
    "ps3.15-retain-uids",
]
PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "waveform_ecg.dcm", "JPEG2000.dcm"]
ENGINE_ADDED = {0x00120062, 0x00120063, 0x00120064}
KEYS = Pseudonymizer(b"d" * 64)
SUBJECT = SubjectContext("RS-DIFF", -30)


def _quiet_deid() -> None:
    logging.getLogger("deid").setLevel(logging.ERROR)
    from deid.logger import bot

    bot.level = 0


@pytest.fixture(scope="module")
def corpus(synth_dir) -> list[Path]:  # type: ignore[no-untyped-def]
    bad = set(synth_dir.truncated) | set(synth_dir.not_dicom)
    first = synth_dir.registrations[0]
    mine = [p for p in synth_dir.files if p not in bad and first.issuer in p.parts]
    kinds: dict[str, Path] = {}
    for path in mine + [p for p in synth_dir.files if p not in bad]:
        kinds.setdefault(path.name, path)
    files = list(kinds.values())
    for name in PYDICOM_FILES:
        found = get_testdata_file(name)
        if found:
            files.append(Path(str(found)))
    return files


def _lookups(engine: Engine, ds: Dataset) -> dict[str, Any]:
    """deid lookup functions computing what the engine computes for a plain element."""
    identifying = identifying_tokens(ds)

    def uid(field: Any, **_: Any) -> Any:
        value = field.element.value
        if field.element.VR == "SQ":
            return value
        if isinstance(value, list | MultiValue):
            return [engine.remap_uid(str(v)) for v in value]
        return engine.remap_uid(str(value)) if value else value

    def dummy(field: Any, **_: Any) -> Any:
        vr = field.element.VR
        if vr == "SQ":
            return field.element.value
        if vr == "UI":
            return uid(field)
        if vr in BINARY_VRS:
            return b""
        return DUMMY_BY_VR.get(vr, "ANONYMOUS" if vr == "PN" else "ANON")

    def clean(field: Any, **_: Any) -> Any:
        if field.element.VR == "SQ":
            return field.element.value
        return clean_text(str(field.element.value or ""), identifying)

    def research(**_: Any) -> str:
        return SUBJECT.research_id

    return {
        "uid": uid,
        "dummy": dummy,
        "clean": clean,
        "research_id": research,
        "research_name": research,
        "date_shift": SUBJECT.shift_days,
    }


def _flat(ds: Dataset, prefix: tuple[int, ...] = ()) -> dict[tuple[int, ...], str]:
    out: dict[tuple[int, ...], str] = {}
    for elem in ds:
        tag = int(elem.tag)
        if elem.tag.is_private or elem.tag.group == 2 or tag in ENGINE_ADDED:
            continue
        key = (*prefix, tag)
        if elem.VR == "SQ":
            out[key] = f"SQ[{len(elem.value)}]"
            for index, item in enumerate(elem.value):
                out.update(_flat(item, (*key, index)))
            continue
        value = elem.value
        if value in (None, "", b""):
            text = ""
        elif isinstance(value, list | MultiValue):
            text = "\\".join(str(v) for v in value)
        elif isinstance(value, bytes):
            text = value.hex()
        else:
            text = str(value)
        out[key] = text
    return out


def run_both(recipe_name: str, path: Path) -> tuple[Dataset, Dataset]:
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    _quiet_deid()
    engine = Engine(load_recipe(recipe_name, unmatched="KEEP"), KEYS)
    ours = engine.apply(dcmread(path), SUBJECT)
    lookups = _lookups(engine, dcmread(path))
    recipe = DeidRecipe(str(find_recipe(recipe_name)), base=False)
    theirs = replace_identifiers(
        [str(path)], ids={str(path): lookups}, deid=recipe, remove_private=True
    )[0]
    return ours, theirs


def _rule(recipe: Recipe, tag: int) -> tuple[str, str | None] | None:
    action = recipe.action_for(Tag(tag))
    return (action.name, action.value) if action else None


def classify(
    recipe: Recipe, key: tuple[int, ...], ours: str | None, theirs: str | None, vr: str
) -> str | None:
    """The documented class of one difference, or None when it is not documented."""
    tags = key[0::2]
    if tags == (0x7FE00010,):
        return "codestream-text"
    for parent in tags[:-1]:
        rule = _rule(recipe, parent)
        if rule and rule[0] == "REPLACE" and str(rule[1]).startswith("func:"):
            return "sequence-function"
    for parent in tags[:-1]:
        rule = _rule(recipe, parent)
        if rule and rule[0] == "KEEP":
            own = _rule(recipe, tags[-1])
            if own and own[0] in ("REPLACE", "JITTER"):
                return "kept-sequence-shield"
    own = _rule(recipe, tags[-1])
    if own and own[0] == "JITTER" and vr not in ("DA", "DT"):
        return "time-jitter"
    if vr == "DT" and ours and theirs == f"{ours}.000000":
        return "dt-precision"
    return None


def _vr(ds: Dataset, key: tuple[int, ...]) -> str:
    node: Any = ds
    for index, part in enumerate(key):
        if index % 2 == 0:
            if part not in node:
                return ""
            elem = node[part]
            if index == len(key) - 1:
                return str(elem.VR)
            node = elem.value
        else:
            node = node[part]
    return ""


@pytest.mark.parametrize("recipe_name", RECIPES)
def test_engine_matches_deid_except_documented_differences(
    recipe_name: str, corpus: list[Path]
) -> None:
    recipe = load_recipe(recipe_name, unmatched="KEEP")
    compared = 0
    undocumented: list[str] = []
    for path in corpus:
        ours, theirs = run_both(recipe_name, path)
        a, b = _flat(ours), _flat(theirs)
        for key in sorted(set(a) | set(b)):
            if a.get(key) == b.get(key):
                continue
            vr = _vr(ours, key) or _vr(theirs, key)
            if classify(recipe, key, a.get(key), b.get(key), vr) is None:
                undocumented.append(f"{path.name} {[hex(t) for t in key[0::2]]}")
        compared += len(a)
    assert compared > 500
    assert not undocumented, undocumented[:10]


def _synth(corpus: list[Path], name: str) -> Path:
    return next(p for p in corpus if p.name == name)


def test_deid_leaves_text_in_a_sequence_replaced_by_a_function(corpus: list[Path]) -> None:
    report = _synth(corpus, "report.dcm")
    source = dcmread(report)
    text = str(source.ContentSequence[0].TextValue)
    ours, theirs = run_both("ps3.15-basic", report)
    assert str(theirs.ContentSequence[0].TextValue) == text  # deid: the report text leaks
    assert ours.ContentSequence[0].TextValue == "ANON"  # engine: structure kept, text dummied


def test_deid_copies_the_comments_of_compressed_frames() -> None:
    from ridl.codestream import codestream_texts

    path = Path(get_testdata_file("JPEG2000.dcm"))
    ours, theirs = run_both("ps3.15-basic", path)
    assert codestream_texts(theirs.PixelData), "deid: the encoder's comment is still there"
    assert codestream_texts(ours.PixelData) == []
    assert (ours.pixel_array == theirs.pixel_array).all()


def test_deid_keep_on_a_sequence_shields_nested_uids(corpus: list[Path]) -> None:
    kos = _synth(corpus, "kos.dcm")
    original = str(dcmread(kos).CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID)
    ours, theirs = run_both("ridl-basic", kos)
    assert theirs.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == original
    nested = ours.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID
    assert nested == KEYS.uid(original) != original


def test_deid_jitter_writes_dates_into_times(corpus: list[Path]) -> None:
    ct = next(p for p in corpus if p.name == "CT_small.dcm")
    before = str(dcmread(ct).StudyTime)
    ours, theirs = run_both("ps3.15-retain-long-modified-dates", ct)
    assert str(ours.StudyTime) == before
    assert str(theirs.StudyTime) != before and len(str(theirs.StudyTime)) == 8  # a date


def test_deid_jitter_adds_precision_to_datetimes(corpus: list[Path]) -> None:
    ecg = next(p for p in corpus if p.name == "waveform_ecg.dcm")
    ours, theirs = run_both("ridl-basic", ecg)
    assert str(theirs.AcquisitionDateTime) == f"{ours.AcquisitionDateTime}.000000"
    assert "." not in str(ours.AcquisitionDateTime)


def test_classifier_flags_an_undocumented_difference() -> None:
    recipe = load_recipe("ps3.15-basic", unmatched="KEEP")
    key = (0x00100020,)  # Patient ID at the top level: no documented reason to differ
    assert classify(recipe, key, "RS-1", "MRN", "LO") is None
