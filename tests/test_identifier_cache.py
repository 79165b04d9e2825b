"""The study dictionary that stream verification builds is the one the element-by-element
reading builds.

``IdentifierDictionary.add_header`` skips what a dictionary already read for the same subject
(costly elements met before, the texts of plain public elements when R6 does not need them);
``add_header_walk`` reads every element of every header. Both must give the same terms with
the same kinds, name-only flags, owners and coincidences, the same shared staff and place
names, equipment and encodings, on the synthetic DIR, on pydicom's and deid-data's files
(hostile input) and on the IOD corpus, whatever the order headers come in and with one
element memo shared across the dictionaries of a worker.
"""

from __future__ import annotations

import copy
import random
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

from export.identifiers import ElementMemo, IdentifierDictionary
from ridl.synth import SynthReport

from .iod_objects import VARIANTS, write


def _state(dictionary: IdentifierDictionary) -> dict[str, Any]:
    return {
        **dictionary.to_record(),
        "kinds": dictionary.kinds(),
        "shared": sorted(dictionary.shared),
    }


def _read(paths: list[Path]) -> list[Dataset]:
    headers = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            try:
                headers.append(dcmread(path, stop_before_pixels=True, force=True))
            except Exception:
                continue  # unreadable files are quarantined before any dictionary
    return headers


def _both(
    paths: list[Path], subject: str | None, shift: int | None, memo: ElementMemo
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state of add_header with the shared memo, state of add_header_walk with its own).

    Each reads its own copy of the headers: reading converts elements in place.
    """
    fast = IdentifierDictionary(retained=("StudyDescription",), memo=memo)
    walk = IdentifierDictionary(retained=("StudyDescription",))
    for header in _read(paths):
        fast.add_header(header, subject, shift)
    for header in _read(paths):
        walk.add_header_walk(header, subject, shift)
    return _state(fast), _state(walk)


def test_synthetic_dir_studies_give_the_same_dictionary(synth_dir: SynthReport) -> None:
    studies: dict[str, list[Path]] = defaultdict(list)
    for path in synth_dir.files:
        for header in _read([path]):
            studies[str(header.get("StudyInstanceUID", ""))].append(path)
    memo = ElementMemo()
    terms = 0
    for n, (uid, paths) in enumerate(sorted(studies.items())):
        fast, walk = _both(paths, f"R{n % 7}", 3 + n % 5, memo)
        assert fast == walk, uid
        terms += len(fast["terms"])
    assert terms > 500  # the comparison is about real dictionaries


def test_hostile_and_iod_corpora_give_the_same_dictionary(tmp_path: Path) -> None:
    import deid_data

    files = [Path(f) for f in get_testdata_files() if Path(f).is_file()]
    files += sorted((Path(deid_data.__file__).parent / "data").rglob("*.dcm"))
    files += [write(build(), tmp_path, name) for name, build in VARIANTS.items()]
    assert len(_read(files)) > 150
    memo = ElementMemo()
    # Each object as its own study, then all of them as one study (one subject), in two orders.
    for path in files:
        fast, walk = _both([path], "R1", 11, memo)
        assert fast == walk, path.name
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    for order in (files, shuffled):
        fast, walk = _both(order + order, "R2", -5, memo)
        assert fast == walk
        assert len(fast["terms"]) > 100


def test_subjects_changing_within_one_dictionary(synth_dir: SynthReport) -> None:
    """The gate's full mode reads many studies into one dictionary: the skipping is per
    subject and shift, never across them."""
    paths = list(synth_dir.files)[:80]
    fast = IdentifierDictionary()
    walk = IdentifierDictionary()
    for n, header in enumerate(_read(paths + paths)):
        fast.add_header(header, *((f"R{n % 3}", n % 2) if n % 4 else (None, None)))
    for n, header in enumerate(_read(paths + paths)):
        walk.add_header_walk(header, *((f"R{n % 3}", n % 2) if n % 4 else (None, None)))
    assert _state(fast) == _state(walk)


def test_in_memory_datasets_give_the_same_dictionary() -> None:
    """Datasets built in memory (converted elements, no raw bytes) are read element by element."""
    for name, build in VARIANTS.items():
        fast = IdentifierDictionary()
        walk = IdentifierDictionary()
        ds = build()
        fast.add_header(copy.deepcopy(ds), "R9", 2)
        fast.add_header(copy.deepcopy(ds), "R9", 2)
        walk.add_header_walk(copy.deepcopy(ds), "R9", 2)
        walk.add_header_walk(ds, "R9", 2)
        assert _state(fast) == _state(walk), name


def test_kept_terms_cut_short_read_as_absent(ridl_home: Path) -> None:
    """The study's terms are written straight to their file: a write cut short never reads
    as a smaller dictionary, only as no record (the gate then falls back to the selection)."""
    from ridl.releases import read_study_terms, study_terms_path, write_study_terms

    dictionary = IdentifierDictionary()
    dictionary.add("Doe^Jane", "name")
    record = {"site": "S", "research_id": "R1", **dictionary.to_record()}
    write_study_terms("p", "r1", "1.2.3", record)
    path = study_terms_path("p", "r1", "1.2.3")
    assert read_study_terms("p", "r1", "1.2.3") == record
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    data = path.read_bytes()
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        assert read_study_terms("p", "r1", "1.2.3") is None, cut
    write_study_terms("p", "r1", "1.2.3", record)  # a redone study's terms replace them whole
    assert read_study_terms("p", "r1", "1.2.3") == record
    assert not [p for p in path.parent.iterdir() if p.name != path.name]


def test_kept_terms_folders_made_at_once_owner_only(ridl_home: Path) -> None:
    """The first study a process keeps makes the release's 256 shard folders, owner-only; a
    release folder removed while the process runs is made again by the next study."""
    import shutil

    from ridl.releases import read_study_terms, study_terms_path, write_study_terms

    dictionary = IdentifierDictionary()
    dictionary.add("Doe^Jane", "name")
    record = {"site": "S", "research_id": "R1", **dictionary.to_record()}
    write_study_terms("p", "r2", "1.2.3", record)
    terms = study_terms_path("p", "r2", "1.2.3").parent.parent
    shards = sorted(p.name for p in terms.iterdir())
    assert shards == [f"{i:02x}" for i in range(256)]
    for folder in [terms.parent, terms, *(terms / s for s in shards)]:
        assert folder.stat().st_mode & 0o777 == 0o700, folder.name
    shutil.rmtree(terms.parent)
    write_study_terms("p", "r2", "1.2.4", record)
    assert read_study_terms("p", "r2", "1.2.4") == record
    assert study_terms_path("p", "r2", "1.2.4").parent.stat().st_mode & 0o777 == 0o700
