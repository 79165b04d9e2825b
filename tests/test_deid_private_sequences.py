"""Kept private sequences: "safe" applies to an element, never to a subtree (PS3.15 E.3.10).

With retain-safe-private, a private sequence whose creator and element are in Table E.3.10-1 is
kept, and every element inside it (public or private, at any depth) goes through the plan: the
patient's name, ID, birth date and accession number written into its items do not leave. The
inputs are modelled on vendor files: implicit VR little endian with defined lengths, undefined
lengths, nesting, a block reserved at another element byte, explicit VR, and the sequence
encoded as UN; the sequences are one pydicom knows (Philips Stack Sequence), one it does not
(the table's VR decides) and one the table gives no VR for (the bytes decide).
"""

from __future__ import annotations

import copy
import io
import tempfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deid_recipes import Engine, SubjectContext, load_recipe
from ridl.pseudonyms import Pseudonymizer

from .dciodvfy import new_errors
from .deid_run_support import PHI, ct, deid_cli, project, run_folder, save, write_output

STACK = ("Philips Imaging DD 001", 0x2001, 0x5F)  # SQ, known to pydicom's private dictionary
UNKNOWN_SQ = ("Philips Imaging DD 002", 0x2001, 0x5F)  # SQ in the table only
NO_VR = ("SIEMENS Ultrasound SC2000", 0x0129, 0x03)  # the table gives no VR
NOT_SAFE = 0x0D  # (2001,xx0D) of Philips Imaging DD 001 is not in the table
ORIGINAL_REF = "1.2.826.0.1.3680043.8.498.77"


def _phi_item(nested: Dataset | None = None) -> Dataset:
    item = Dataset()
    item.PatientName = "Tremblay^Josee"
    item.PatientID = "MRN00123"
    item.PatientBirthDate = "19600102"
    item.AccessionNumber = "ACC778899"
    item.InstitutionName = "Hopital Saint-Luc"
    if nested is not None:
        creator, group, element = STACK
        block = item.private_block(group, creator, create=True)
        block.add_new(element, "SQ", Sequence([nested]))
        block.add_new(NOT_SAFE, "LO", "Tremblay^Josee")
    return item


def _inner() -> Dataset:
    inner = Dataset()
    inner.PatientName = "Tremblay^Josee"
    inner.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    inner.ReferencedSOPInstanceUID = ORIGINAL_REF
    return inner


def _with_sequence(
    number: int, where: tuple[str, int, int], item: Dataset, undefined: bool = False
) -> Dataset:
    ds = ct(number)
    creator, group, element = where
    block = ds.private_block(group, creator, create=True)
    block.add_new(element, "SQ", Sequence([item]))
    ds[block.get_tag(element)].is_undefined_length = undefined
    return ds


def _as_un(ds: Dataset, where: tuple[str, int, int]) -> Dataset:
    """The private sequence re-encoded as UN (implicit VR items inside, PS3.5 6.2.2)."""
    save(copy.deepcopy(ds), Path(tmp := tempfile.mkdtemp()) / "un.dcm", implicit=True)
    raw = dcmread(Path(tmp) / "un.dcm")
    creator, group, element = where
    tag = raw.private_block(group, creator).get_tag(element)
    value = raw.get_item(tag).value
    del ds[tag]
    ds.add_new(tag, "UN", value)
    return ds


def _inputs(folder: Path) -> dict[int, tuple[Path, tuple[str, int, int], bool]]:
    """{Instance Number: (file, where the sequence is, nested?)}."""
    made: dict[int, tuple[Path, tuple[str, int, int], bool]] = {}

    def put(n: int, ds: Dataset, where: tuple[str, int, int], nested: bool, implicit: bool) -> None:
        made[n] = (save(ds, folder / f"{n}.dcm", implicit=implicit), where, nested)

    put(1, _with_sequence(1, STACK, _phi_item()), STACK, False, True)
    put(2, _with_sequence(2, UNKNOWN_SQ, _phi_item()), UNKNOWN_SQ, False, True)
    put(3, _with_sequence(3, NO_VR, _phi_item()), NO_VR, False, True)
    put(4, _with_sequence(4, STACK, _phi_item(_inner()), undefined=True), STACK, True, True)
    put(5, _with_sequence(5, UNKNOWN_SQ, _phi_item(_inner())), UNKNOWN_SQ, True, True)
    put(6, _with_sequence(6, STACK, _phi_item(_inner())), STACK, True, False)  # explicit VR
    put(7, _as_un(_with_sequence(7, UNKNOWN_SQ, _phi_item()), UNKNOWN_SQ), UNKNOWN_SQ, False, False)
    # The block reserved at element byte 0x11 instead of 0x10: matched by creator.
    ds = ct(8)
    ds.add_new(0x20010010, "LO", "ACME OTHER")
    block = ds.private_block(0x2001, STACK[0], create=True)
    assert block.block_start == 0x1100
    block.add_new(STACK[2], "SQ", Sequence([_phi_item()]))
    put(8, ds, STACK, False, True)
    return made


def _items(ds: Dataset, where: tuple[str, int, int]) -> list[Dataset]:
    """The items of the private sequence ``where`` in ``ds``, whatever VR it was read with."""
    creator, group, element = where
    tag = ds.private_block(group, creator).get_tag(element)
    raw = ds.get_item(tag)
    if raw.VR != "SQ":
        implicit = raw.is_implicit_VR or raw.VR == "UN"
        ds._dict[tag] = raw._replace(VR="SQ", is_implicit_VR=implicit)
    return list(ds[tag].value)


def _check_output(data: bytes, where: tuple[str, int, int], nested: bool) -> None:
    assert not any(value.encode() in data for value in PHI), "PHI inside a kept sequence"
    ds = dcmread(io.BytesIO(data))
    research_id = ds.PatientID
    assert research_id.startswith("RS-")
    (item,) = _items(ds, where)  # the sequence is kept, with its item
    assert item.PatientName == research_id and item.PatientID == research_id
    assert not item.get("PatientBirthDate") and not item.get("AccessionNumber")
    assert item.get("InstitutionName", "ANON") == "ANON"
    if nested:
        assert not any(e.tag.element & 0xFF == NOT_SAFE for e in item if e.tag.group == 0x2001)
        (inner,) = _items(item, STACK)
        assert inner.PatientName == research_id
        assert inner.ReferencedSOPInstanceUID.startswith("2.25.")
        assert inner.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"


def test_every_element_inside_a_kept_private_sequence_goes_through_the_plan(
    tmp_path: Path,
) -> None:
    engine = Engine(
        load_recipe("ridl-safe-public+ps3.15-basic+ps3.15-retain-safe-private"),
        Pseudonymizer(b"k" * 64),
    )
    for _n, (path, where, nested) in _inputs(tmp_path / "src").items():
        ds = engine.apply(dcmread(path), SubjectContext("RS-ENGINE", -30))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        assert b"RS-ENGINE" in data
        assert not any(value.encode() in data for value in PHI), path.name
        (item,) = _items(dcmread(io.BytesIO(data)), where)
        assert item.PatientName == "RS-ENGINE" and not item.get("PatientBirthDate")
        if nested:
            assert _items(item, STACK)[0].ReferencedSOPInstanceUID != ORIGINAL_REF


def test_a_table_sequence_that_is_not_framed_as_one_is_refused(tmp_path: Path) -> None:
    ds = ct(1)
    block = ds.private_block(UNKNOWN_SQ[1], UNKNOWN_SQ[0], create=True)
    block.add_new(UNKNOWN_SQ[2], "UN", b"Tremblay^Josee  ")  # the table says SQ: it is not one
    path = save(ds, tmp_path / "bad.dcm", implicit=True)
    engine = Engine(
        load_recipe("ridl-safe-public+ps3.15-basic+ps3.15-retain-safe-private"),
        Pseudonymizer(b"k" * 64),
    )
    with pytest.raises(Exception, match="unparseable-sequence"):
        engine.apply(dcmread(path), SubjectContext("RS-ENGINE", -30))


def test_kept_private_sequences_through_ridl_deid_and_a_run(tmp_path: Path) -> None:
    project_id = project("priv-seq", options=("retain-safe-private",))
    src = tmp_path / "src"
    inputs = _inputs(src)
    written = deid_cli(src, tmp_path / "out", project_id)
    stored = run_folder(src, tmp_path, project_id)
    assert sorted(written) == sorted(stored) == sorted(inputs)
    for n, (path, where, nested) in inputs.items():
        _check_output(written[n].read_bytes(), where, nested)
        _check_output(stored[n], where, nested)
        assert new_errors(path, written[n]) == [], path.name
        assert new_errors(path, write_output(stored[n], tmp_path / f"run-{n}.dcm")) == []


def test_without_the_option_private_sequences_go_whole(tmp_path: Path) -> None:
    project_id = project("priv-none")
    src = tmp_path / "src"
    inputs = _inputs(src)
    written = deid_cli(src, tmp_path / "out", project_id)
    for n in inputs:
        ds = dcmread(written[n])
        assert not any(e.tag.is_private for e in ds)
        data = written[n].read_bytes()
        assert not any(value.encode() in data for value in PHI)
