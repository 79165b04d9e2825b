"""Review sheets and decisions: a decision is honoured by the next run of the same release."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from curation.quarantine import list_quarantine
from curation.review import list_records, read_decisions, read_held, review_dir
from export.local import LocalStore
from flows.cli import app
from flows.runplan import prepare_run
from flows.work import process_batch
from tests.curation_data import set_section


def test_review_sheet_and_decisions_are_honoured_on_rerun(
    synth_dir,
    project,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    # This project keeps screen captures: its dose screens are all text, so OCR holds them.
    set_section(project.id, "curation", {"screen_captures": "keep"})
    store_url = f"file:{tmp_path / 'store'}"
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", store_url)
    first = process_batch(plan.ctx, plan.studies)
    held = [r for r in list_records(project.id, "r1") if r.reason == "burned-in-text"]
    assert first.quarantined["burned-in-text"] == len(held) >= 2
    exported_us = [r for r in list_records(project.id, "r1") if r.modality == "US"]
    assert exported_us and all(r.status == "exported" for r in exported_us)

    runner = CliRunner()
    sheet = runner.invoke(app, ["review", "sheet", "--project", project.id, "--release", "r1"])
    assert sheet.exit_code == 0, sheet.output
    page = (review_dir(project.id, "r1") / "index.html").read_text()
    assert page.count('class="card quarantined"') >= len(held)
    for record in held:
        assert (review_dir(project.id, "r1") / record.thumbnail).stat().st_size > 0
    # The sheet never shows text read from the pixels or any name from the headers.
    assert not any(phi in page for phi in synth_dir.phi_strings())

    approve, reject = held[0].object, held[1].object
    for obj, decision in ((approve, "approve"), (reject, "reject")):
        result = runner.invoke(
            app,
            ["review", "decide", "--project", project.id, "--release", "r1", obj, decision]
            + ["--reviewer", "Dr Reviewer"],
        )
        assert result.exit_code == 0, result.output
    assert read_decisions(review_dir(project.id, "r1") / "decisions.csv") == {
        approve: "approve",
        reject: "reject",
    }

    again = process_batch(plan.ctx, plan.studies)
    assert again.quarantined["burned-in-text"] == len(held) - 2
    assert again.excluded["review-rejected"] == 1
    # An approval releases the object from curation, not from the stream verification: the
    # approved dose screen shows its patient's name and ID, so it is stopped before the store.
    assert again.quarantined["verification-hit"] == 1
    assert again.exported == first.exported
    assert again.skipped == len(plan.studies) - len(_studies(held[:2]))
    # Neither the approved (stopped by verification) nor the rejected object is pending.
    store = LocalStore(tmp_path / "store")
    parts = [json.loads(store.get_bytes(i.key)) for i in store.list(f"{project.id}/r1/parts/")]
    # Held review IDs stay on premises; a published part never names an original file.
    assert not any("review" in p for p in parts)
    pending = {o for p in parts for o in read_held(project.id, "r1", p["study"])}
    assert approve not in pending and reject not in pending
    assert {q.sha256 for q in list_quarantine(project.id, "r1")} >= {approve, reject}


def _studies(records) -> set[str]:  # type: ignore[no-untyped-def]
    return {r.study_key for r in records}


def test_decide_refuses_unknown_objects_and_bad_decisions(project) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["review", "decide", "--project", project.id, "--release", "r1", "abc", "approve"]
        + ["--reviewer", "x"],
    )
    assert result.exit_code == 2 and "no object abc" in result.output
