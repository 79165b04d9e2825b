"""Per-study work without Prefect: quarantine, IOCM, scope, and what a part records."""

from __future__ import annotations

import json
from pathlib import Path

from curation.quarantine import list_quarantine
from export.local import LocalStore
from flows.runplan import prepare_run
from flows.work import process_batch


def test_truncated_and_non_dicom_files_are_quarantined_and_the_run_goes_on(
    synth_dir,
    project,
    ridl_home: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    store_root = tmp_path / "store"
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", f"file:{store_root}")
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.studies == len(plan.studies)
    assert counts.quarantined["truncated"] == 1
    assert counts.exported > 0
    records = list_quarantine(project.id, "r1")
    reasons = sorted(r.reason for r in records)
    assert "truncated" in reasons and "not-dicom" in reasons
    truncated = next(r for r in records if r.reason == "truncated")
    kept = ridl_home / "quarantine" / project.id / "r1" / f"{truncated.sha256}.bin"
    assert kept.read_bytes() == synth_dir.truncated[0].read_bytes(), "nothing is lost"
    # Quarantine stays on premises: nothing of it is in the object store.
    assert not any("quarantine" in p.as_posix() for p in store_root.rglob("*"))


def test_iocm_rejected_series_and_the_note_are_not_exported(
    synth_dir,
    project,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", f"file:{tmp_path}")
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.excluded["iocm-rejection-note"] == 1
    assert counts.excluded["iocm-rejected"] == 4
    store = LocalStore(tmp_path)
    exported = set()
    for info in store.list(f"{project.id}/r1/parts/"):
        for obj in json.loads(store.get_bytes(info.key))["objects"]:
            exported.add(obj["modality"])
    assert "KO" not in exported


def test_parts_mark_studies_done_and_skip_them_on_rerun(
    synth_dir,
    project,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", f"file:{tmp_path}")
    first = process_batch(plan.ctx, plan.studies[:5])
    assert first.skipped == 0
    again = process_batch(plan.ctx, plan.studies[:5])
    assert again.skipped == 5 and again.exported == first.exported
