"""One read per object (curation.integrity.ObjectRead) and durability per study (LocalStore).

The run reads each file once: the header it triages, checks and scans is what a header-only
read gives, the whole object what ``read_whole`` gives (rejections included), and the fast
path given the bytes writes what it writes from the file. A study's objects are made durable
together; a study whose work fails leaves none of them behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from curation.integrity import ObjectRead, read_whole
from deid_recipes import Engine, SubjectContext, load_recipe
from deid_recipes.fastpath import deidentify_bytes, deidentify_to_bytes
from export.local import LocalStore
from export.phi_scan import pixel_data_start
from export.store import durable_together
from ridl.dicomfile import read_file
from ridl.errors import ObjectRejected
from ridl.pseudonyms import Pseudonymizer

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan_truncated.dcm", "SC_rgb_rle.dcm"]


def _rejection(read: ObjectRead | Path) -> tuple[str, str] | None:
    try:
        read.whole() if isinstance(read, ObjectRead) else read_whole(read)
    except ObjectRejected as rej:
        return (str(rej.reason), rej.detail)
    return None


@pytest.mark.parametrize("name", FILES)
def test_one_read_gives_the_header_and_the_whole_object(name: str, tmp_path: Path) -> None:
    path = Path(get_testdata_file(name))
    read = ObjectRead.from_path(path)
    header = read_file(path, stop_before_pixels=True)
    assert list(read.header.keys()) == list(header.keys())
    assert read.header == header
    assert read.header.file_meta == header.file_meta
    assert _rejection(read) == _rejection(path)
    if _rejection(path) is None:
        whole = read.whole()
        assert whole == read_whole(path) and whole is read.whole()
    # A cut pixel data element: rejected as truncated, the header still reads.
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-100])
    assert _rejection(ObjectRead.from_path(cut)) == _rejection(cut)


def test_a_change_to_the_whole_object_never_shows_in_the_header() -> None:
    read = ObjectRead.from_path(Path(get_testdata_file("CT_small.dcm")))
    uid = str(read.header.SOPInstanceUID)
    whole = read.whole()
    whole.SOPInstanceUID = "1.2.3"
    whole.PatientName = "changed"
    whole.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    assert str(read.header.SOPInstanceUID) == uid
    assert str(read.header.PatientName) != "changed"
    assert str(read.header.file_meta.MediaStorageSOPInstanceUID) == uid
    assert "PixelData" not in read.header and "PixelData" in whole


def test_the_fast_path_from_bytes_writes_what_it_writes_from_the_file(synth_dir) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(load_recipe("ridl-basic"), Pseudonymizer(b"f" * 64))
    subject = SubjectContext("R-000001", 10)
    bad = set(synth_dir.truncated) | set(synth_dir.not_dicom)
    served = 0
    for path in [p for p in synth_dir.files if p not in bad][:25]:
        from_file = deidentify_to_bytes(engine, lambda _h: subject, path)
        from_bytes = deidentify_bytes(engine, lambda _h: subject, path.read_bytes())
        assert (from_file is None) == (from_bytes is None)
        if from_file is not None and from_bytes is not None:
            assert from_bytes[2] == from_file[2] and from_bytes[0] == from_file[0]
            # Where the pixel data begins comes with the bytes (the verifier's raw prefilter
            # stops there): the same as found by reading the bytes back.
            assert from_bytes[3] == from_file[3] == pixel_data_start(from_file[2])
            served += 1
    assert served > 10


def test_a_study_s_objects_are_stored_together_or_not_at_all(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with durable_together(store):
        store.put_bytes("a/1.dcm", b"one")
        store.put_bytes("a/b/2.dcm", b"two")
        assert not store.exists("a/1.dcm"), "renamed into place only when the block ends"
    assert store.get_bytes("a/1.dcm") == b"one" and store.get_bytes("a/b/2.dcm") == b"two"
    with pytest.raises(RuntimeError), durable_together(store):
        store.put_bytes("c/3.dcm", b"three")
        raise RuntimeError("the study's work failed")
    assert not store.exists("c/3.dcm")
    assert [p.name for p in (tmp_path / "store").rglob("*.tmp")] == []
    store.put_bytes("d/4.dcm", b"four")  # outside a block: durable on return, as before
    assert store.get_bytes("d/4.dcm") == b"four"
