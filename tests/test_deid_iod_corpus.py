"""Every recipe and option over one object of each IOD: no new dciodvfy error (issue 14).

The corpus: one object per SOP class from the synthetic DIR (``ridl.synth``), pydicom's own test
files, deid-data, and the objects of :mod:`tests.iod_objects` (Enhanced MR and CT, NM, DX, MR,
US multi-frame, SR, with identifiers inside functional groups and pointers to private
attributes). Each goes through ``ridl-basic`` and ``ps3.15-basic`` alone and with each PS3.15
option, the way ``ridl deid`` does it (the fast path where the layout allows, the whole-object
path otherwise), and dciodvfy's errors on the output must all be errors of the input too.
UIDs are masked in the comparison: remapping changes them, not the error.
"""

from __future__ import annotations

import io
import re
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from deid_recipes import Engine, SubjectContext, load_recipe
from deid_recipes.fastpath import deidentify_to_bytes
from ridl.errors import ObjectRejected
from ridl.projects import DEID_OPTIONS
from ridl.pseudonyms import Pseudonymizer
from ridl.synth import synthesize

from .conftest import require_program
from .iod_objects import VARIANTS, write

SUBJECT = SubjectContext("RS-CORPUS", -30)
KEY = b"c" * 64
RECIPES = {
    "ridl-basic": ["ridl-safe-public", "ridl-basic"],
    "ps3.15-basic": ["ridl-safe-public", "ps3.15-basic"],
    **{o: ["ridl-safe-public", "ps3.15-basic", f"ps3.15-{o}"] for o in DEID_OPTIONS},
}
_UID = re.compile(r"\d+(\.\d+){2,}")


def _corpus(root: Path) -> dict[str, Path]:
    """One readable object per SOP class (and every own variant), keyed by a short name."""
    report = synthesize(root / "synth", patients=3, sites=2, seed=11)
    broken = set(report.truncated) | set(report.not_dicom)
    found: list[Path] = [p for p in report.files if p not in broken]
    found += sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))
    import deid_data

    found += sorted(Path(deid_data.__path__[0]).rglob("*.dcm"))
    picks: dict[str, Path] = {}
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in found:
            try:
                ds = dcmread(path, stop_before_pixels=True)
                sop = str(ds.SOPClassUID)
                _ = ds.file_meta.TransferSyntaxUID, str(ds.SOPInstanceUID)
            except Exception:
                continue  # the odd files: their handling is tested elsewhere
            if sop not in seen:
                seen.add(sop)
                picks[f"{path.parent.name}-{path.name}"] = path
    for name, build in VARIANTS.items():
        picks[name] = write(build(), root / "own", name)
    return picks


def _errors(dciodvfy: str, path: Path) -> set[str]:
    proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {
        _UID.sub("<uid>", re.sub(r"\s+", " ", line.strip()))
        for line in lines
        if line.startswith("Error")
    }


def _deidentify(engine: Engine, path: Path) -> bytes:
    """As ``ridl deid`` does: the fast path when the layout allows, else the whole object."""

    def subject(_: Dataset) -> SubjectContext:
        return SUBJECT

    done = deidentify_to_bytes(engine, subject, path)
    if done is not None:
        return done[2]
    ds = dcmread(path)
    engine.apply(ds, SUBJECT)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Path], Path]:
    dciodvfy = require_program("dciodvfy")
    root = tmp_path_factory.mktemp("iod-corpus")
    return dciodvfy, _corpus(root), root


def test_corpus_holds_the_iods_the_issue_names(corpus) -> None:  # type: ignore[no-untyped-def]
    _, picks, _ = corpus
    classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in picks.values()}
    for uid in (
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
        "1.2.840.10008.5.1.4.1.1.20",  # NM
        "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
        "1.2.840.10008.5.1.4.1.1.4",  # MR
        "1.2.840.10008.5.1.4.1.1.2",  # CT
        "1.2.840.10008.5.1.4.1.1.6.1",  # US
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    ):
        assert uid in classes, uid


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_no_recipe_or_option_adds_a_dciodvfy_error(corpus, recipe: str) -> None:  # type: ignore[no-untyped-def]
    dciodvfy, picks, root = corpus
    engine = Engine(load_recipe(RECIPES[recipe]), Pseudonymizer(KEY))
    out = root / "out" / recipe
    out.mkdir(parents=True)
    outputs: dict[str, Path] = {}
    for name, path in picks.items():
        try:
            data = _deidentify(engine, path)
        except ObjectRejected:
            continue  # quarantined with its reason, nothing exported to check
        outputs[name] = out / f"{name}.dcm"
        outputs[name].write_bytes(data)
    assert len(outputs) >= len(picks) - 2
    names = sorted(outputs)
    with ThreadPoolExecutor(max_workers=2) as pool:
        before = list(pool.map(lambda n: _errors(dciodvfy, picks[n]), names))
        after = list(pool.map(lambda n: _errors(dciodvfy, outputs[n]), names))
    new = {n: sorted(a - b) for n, b, a in zip(names, before, after, strict=True) if a - b}
    assert not new, f"{recipe}: new dciodvfy errors {new}"
