"""GDCM decodes only in a child process: a JPEG frame that makes GDCM end its process (a stray
byte before a marker: libjpeg's warning becomes a C++ exception through C code, exit 134) costs
that object alone, which is quarantined with its reason while the rest of the request goes on.

The JPEG Lossless (Process 14) objects are made by dcmtk's ``dcmcjpeg`` from the synthetic DIR's
radiograph (all values invented); only GDCM decodes that syntax here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless

from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.synth import SynthReport
from tests.conftest import SITES, make_project, require_program

RIDL = str(Path(sys.executable).with_name("ridl"))


def _lossless_cr(
    synth_dir: SynthReport, folder: Path, number: int, stray: bool
) -> tuple[Path, np.ndarray]:
    """A JPEG Lossless SV1 copy of the synthetic radiograph (its own SOP Instance UID); with
    ``stray``, one extra byte right after the frame's SOI marker. Returns the path and the
    native pixels."""
    dcmcjpeg = require_program("dcmcjpeg")
    source = next(p for p in synth_dir.files if p.name == "cr_001.dcm")
    ds = dcmread(source)
    ds.StudyDate, ds.IssuerOfPatientID = "20200115", SITES[0]
    ds.SOPInstanceUID = f"{ds.SeriesInstanceUID}.9{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    native = folder / f"native_{number}.dcm"
    ds.save_as(native, enforce_file_format=True)
    path = folder / f"cr_{number}.dcm"
    subprocess.run([dcmcjpeg, "+e1", str(native), str(path)], check=True, capture_output=True)
    native.unlink()
    compressed = dcmread(path)
    assert compressed.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    if stray:
        (frame,) = generate_frames(compressed.PixelData, number_of_frames=1)
        compressed.PixelData = encapsulate([frame[:2] + b"\x00" + frame[2:]])
        compressed.save_as(path)
    return path, ds.pixel_array


def test_gdcm_decodes_in_a_child_and_a_frame_that_ends_it_fails_alone(
    synth_dir: SynthReport,
    tmp_path: Path,
) -> None:
    import curation.pixels  # noqa: F401  (its import isolates GDCM, before any decode)
    from curation.decoding import PLUGIN

    for uid in (JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless):
        plugins = get_decoder(uid).available_plugins
        assert "gdcm" not in plugins and PLUGIN in plugins, (uid.name, plugins)
    good, pixels = _lossless_cr(synth_dir, tmp_path, 1, stray=False)
    bad, _ = _lossless_cr(synth_dir, tmp_path, 2, stray=True)

    assert np.array_equal(dcmread(good).pixel_array, pixels), "lossless: the samples come back"
    with pytest.raises(RuntimeError, match=r"GDCM decoder process ended \(signal 6\)"):
        dcmread(bad).pixel_array  # noqa: B018  (decoding is the point)
    assert np.array_equal(dcmread(good).pixel_array, pixels), "a new child decodes the next one"


def test_deid_quarantines_the_frame_that_ends_gdcm_and_exports_the_rest(
    synth_dir: SynthReport,
    tmp_path: Path,
    ridl_home: Path,
) -> None:
    """A real ``ridl deid`` process: every radiograph is screened for burned-in text, so both
    are decoded; before, the broken one ended the process (exit 134, nothing reported)."""
    make_project("decode-cr", modalities=("CR",))
    src = tmp_path / "src"
    src.mkdir()
    _lossless_cr(synth_dir, src, 1, stray=False)
    _lossless_cr(synth_dir, src, 2, stray=True)
    env = dict(os.environ, RIDL_HOME=str(ridl_home))
    out = tmp_path / "out"
    result = subprocess.run(
        [RIDL, "deid", str(src), str(out), "--project", "decode-cr"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["exported"] == 1, summary
    assert sum(summary["quarantined"].values()) == 1, summary
    assert "terminate called" not in result.stderr, "GDCM's last words stay in the child"
    (written,) = list(out.rglob("*.dcm"))
    assert dcmread(written).Modality == "CR"

    from curation.quarantine import list_quarantine

    (held,) = list_quarantine("decode-cr", "adhoc")
    assert held.detail == "RuntimeError; GDCM decoder process ended (signal 6)", held.detail

    # A run's batch (the Prefect flow's task body) treats them alike.
    plan = prepare_run("decode-cr", "r1", f"folder:{src}", f"file:{tmp_path / 'store'}")
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.exported == 1 and dict(counts.quarantined) == {"pixel-decode-failed": 1}, (
        counts.as_dict()
    )
    (held,) = list_quarantine("decode-cr", "r1")
    assert held.detail == "RuntimeError; GDCM decoder process ended (signal 6)", held.detail
