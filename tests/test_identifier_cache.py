"""The study dictionary that stream verification builds is the one the element-by-element
reading builds.

``IdentifierDictionary.add_header`` skips what a dictionary already read for the same subject
(costly elements met before, the texts of plain public elements when R6 does not need them);
``add_header_walk`` reads every element of every header. Both must give the same terms with
the same kinds, name-only flags, owners and coincidences, the same shared staff and place
names, equipment and encodings, on the synthetic DIR, on pydicom's and deid-data's files
(hostile input) and on the IOD corpus, whatever the order headers come in and with one
element memo shared across the dictionaries of a worker. Each comparison runs twice: with the
compiled per-element look (``export/_header_look.c``) and with the Python one it falls back to.
"""

from __future__ import annotations

import copy
import os
import random
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset

import export.identifiers as identifiers
from export.identifiers import ElementMemo, IdentifierDictionary
from ridl.synth import SynthReport

from .iod_objects import VARIANTS, write


@pytest.fixture(autouse=True, params=["compiled", "python"])
def look(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test with the compiled look of add_header, then with the Python one."""
    if request.param == "python":
        monkeypatch.setattr(identifiers, "_LOOK", None)
        monkeypatch.setattr(identifiers, "_ELEMENT_OF", None)
    elif identifiers._LOOK is None:
        if os.environ.get("CI") == "true":
            pytest.fail("export._header_look was not built: the install needs a C compiler")
        pytest.skip("export._header_look was not built (no C compiler where ridl was installed)")
    yield request.param


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


def test_every_day_of_the_year_prepared_once_a_process() -> None:
    """A worker makes the written forms of every day of the year once, at its start: a study's
    dates then make none again, and their keys are the ones made on demand (R5)."""
    import export.identifiers as identifiers

    def dictionary() -> IdentifierDictionary:
        made = IdentifierDictionary()
        made.add("19840229", "birth-date", owner="R1")
        made.add("20191231", "encounter-date", owner="R1")
        made.add("Doe^Jane", "name")
        return made

    identifiers._date_templates.cache_clear()
    identifiers._date_keys.cache_clear()
    on_demand = set(dictionary().automaton(())._entries)
    identifiers._date_templates.cache_clear()
    identifiers._date_keys.cache_clear()
    identifiers.prepare_date_keys()
    prepared = identifiers._date_templates.cache_info()
    assert prepared.currsize == 366
    assert set(dictionary().automaton(())._entries) == on_demand
    assert identifiers._date_templates.cache_info().misses == prepared.misses
    assert {"29 feb 1984", "february 29th, 1984", "31/12/2019", "dec 31, 2019"} <= on_demand
