"""The extraction run end to end through Prefect: demo, release contents, PHI, resume."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from export.local import LocalStore
from flows.cli import app
from flows.runplan import prepare_run
from flows.work import process_batch

pytestmark = pytest.mark.prefect
runner = CliRunner()
RELEASE_FILES = {"manifest.parquet", "manifest.csv", "summary.json"}


def _exported(store_root: Path, prefix: str) -> dict[str, bytes]:
    base = store_root / prefix
    return {p.relative_to(store_root).as_posix(): p.read_bytes() for p in base.rglob("*.dcm")}


def test_demo_end_to_end(ridl_home: Path) -> None:
    result = runner.invoke(app, ["demo", "--patients", "12"])
    assert result.exit_code == 0, result.output
    assert "manifest:" in result.output and "quarantined: truncated" in result.output
    assert "Traceback" not in result.output
    store_root = ridl_home / "store"
    manifest = pq.read_table(store_root / "demo/r1/manifest.parquet").to_pandas()
    objects = _exported(store_root, "demo/r1")
    assert sorted(manifest["key"]) == sorted(objects), "manifest rows equal the stored objects"
    for row in manifest.itertuples():
        data = objects[row.key]
        assert row.size == len(data)
        assert row.sha256 == hashlib.sha256(data).hexdigest()
    summary = json.loads((store_root / "demo/r1/summary.json").read_text())
    assert summary["instances_exported"] == len(manifest)
    assert summary["quarantined"]["truncated"] == 1
    assert summary["quarantined"]["not-dicom"] == 1
    csv = (store_root / "demo/r1/manifest.csv").read_text().splitlines()
    assert len(csv) == len(manifest) + 1

    # No original Patient ID, name or health number in any byte that left.
    from ridl.synth import synthesize

    phi = synthesize(ridl_home / "again", patients=12, sites=3, seed=0).phi_strings()
    leaving = [p for p in store_root.rglob("*") if p.is_file()]
    for path in leaving:
        data = path.read_bytes()
        if path.suffix == ".sig":  # base64 of random-looking bytes: "Roy" can be in it by chance
            data = base64.b64decode(data)
        for value in phi:
            assert value.encode() not in data, f"PHI found in {path.name}"
    for value in phi:
        assert value not in result.output


def test_resume_after_a_stop_half_way_gives_the_same_release(
    synth_dir,
    project,
    ridl_home: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from flows.extract import extract_run

    source = f"folder:{synth_dir.root}"
    whole = tmp_path / "whole"
    extract_run(project=project.id, release="r1", source=source, destination=f"file:{whole}")

    # A second store for the same release: stop half way (as a killed run leaves it), resume.
    # A release is bound to the store it was frozen for, so the second one is made as if by
    # another research office: its on-premises state starts afresh (same secret and catalog).
    import shutil

    from ridl.releases import release_dir

    shutil.move(release_dir(project.id, "r1"), tmp_path / "first-office-r1")
    halted = tmp_path / "halted"
    plan = prepare_run(project.id, "r1", source, f"file:{halted}")
    process_batch(plan.ctx, plan.studies[: len(plan.studies) // 2])
    leftover = halted / project.id / "r1" / ".partial.dcm.1234.abcd.tmp"
    leftover.write_bytes(b"half an object")
    summary = extract_run(
        project=project.id, release="r1", source=source, destination=f"file:{halted}",
        batch_size=7,
    )  # fmt: skip
    assert summary["studies_skipped_as_done"] == len(plan.studies) // 2
    assert not leftover.exists(), "half-written objects are cleaned"
    prefix = f"{project.id}/r1"
    for name in ("manifest.parquet", "manifest.csv"):
        assert (whole / prefix / name).read_bytes() == (halted / prefix / name).read_bytes()
    assert _exported(whole, prefix) == _exported(halted, prefix)
    assert LocalStore(halted).exists(f"{prefix}/summary.json")
