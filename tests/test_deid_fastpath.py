"""The fast path (header bytes + kernel-copied pixels) gives what the dataset path gives."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from deid_recipes import Engine, SubjectContext, load_recipe
from deid_recipes.fastpath import deidentify_file
from ridl.pseudonyms import Pseudonymizer

SUBJECT = SubjectContext("RS-FAST", -77)
RECIPES = [
    "ridl-basic",
    "ridl-safe-public+ps3.15-basic",
    "ridl-safe-public+ps3.15-basic+ps3.15-retain-long-modified-dates+ps3.15-retain-uids",
    "ridl-safe-public+ps3.15-basic+ps3.15-retain-safe-private+ps3.15-retain-device-id",
    "ridl-safe-public+ps3.15-basic+ps3.15-clean-descriptors+ps3.15-clean-structured-content",
]


def _slow(engine: Engine, path: Path) -> Dataset:
    ds = dcmread(path)
    engine.apply(ds, SUBJECT)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def _fields(ds: Dataset) -> dict[str, object]:
    out: dict[str, object] = {}
    for elem in ds.iterall():
        out[f"{elem.tag}{len(out)}"] = (elem.VR, elem.value if elem.VR != "SQ" else len(elem.value))
    return out


@pytest.mark.parametrize("spec", RECIPES)
def test_fast_path_equals_dataset_path(spec: str, synth_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(load_recipe(spec), Pseudonymizer(b"f" * 64))
    bad = set(synth_dir.truncated) | set(synth_dir.not_dicom)
    taken = 0
    for path in [p for p in synth_dir.files if p not in bad][:25]:
        if str(dcmread(path, stop_before_pixels=True).get("BurnedInAnnotation", "")) == "YES":
            continue
        target = tmp_path / f"{taken}.dcm"
        done = deidentify_file(engine, lambda ds: SUBJECT, path, lambda ds, s, t=target: t)
        if done is None:
            continue  # no pixel data or another layout: the dataset path is the only path
        fast = dcmread(target)
        slow = _slow(engine, path)
        assert _fields(fast) == _fields(slow), path.name
        assert fast.file_meta.MediaStorageSOPInstanceUID == slow.SOPInstanceUID
        assert fast.file_meta == slow.file_meta
        assert fast.PixelData == dcmread(path).PixelData
        taken += 1
    assert taken >= 5
