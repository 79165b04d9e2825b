"""Labeling lists: export worklists that do not overlap, import them with every bad row reported."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.labels import labels_key, read_labels
from export.local import LocalStore
from export.manifest import build_manifest
from flows.cli import app
from flows.runplan import prepare_run
from flows.work import process_batch
from tests.curation_data import set_section

SCHEMA = {
    "viewer": "https://ohif.example.org/viewer?StudyInstanceUIDs={study_uid}",
    "fields": [
        {"name": "finding", "type": "choice", "values": ["normal", "abnormal"], "required": True},
        {"name": "confidence", "type": "int", "required": False},
        {"name": "urgent", "type": "bool"},
    ],
}


@pytest.fixture
def release(synth_dir, project, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A finished release of the synthetic DIR with a label schema."""
    set_section(project.id, "labels", SCHEMA)
    store_root = tmp_path / "store"
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", f"file:{store_root}")
    process_batch(plan.ctx, plan.studies)
    store = LocalStore(store_root)
    build_manifest(store, f"{project.id}/r1", len(plan.studies), project.id, "r1")
    return project.id, store


def export(store: LocalStore, project: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        ["labels", "export", "--project", project, "--release", "r1", "--dest", store.url, *args],
    )
    return result.exit_code, result.output


def test_worklists_carry_deidentified_columns_and_do_not_overlap(  # type: ignore[no-untyped-def]
    release, synth_dir, tmp_path: Path
) -> None:
    project, store = release
    a, b = tmp_path / "alice.csv", tmp_path / "bob.xlsx"
    code, out = export(store, project, "--assignee", "alice", "--count", "4", "--out", str(a))
    assert code == 0, out
    code, out = export(
        store, project, "--assignee", "bob", "--count", "4", "--format", "xlsx", "--out", str(b)
    )
    assert code == 0, out
    alice = pd.read_csv(a, dtype=str).fillna("")
    bob = pd.read_excel(b, dtype=str).fillna("")
    assert len(alice) == len(bob) == 4
    assert not set(alice["research_study_id"]) & set(bob["research_study_id"])
    assert list(alice.columns[-3:]) == ["finding", "confidence", "urgent"]
    assert (alice["finding"] == "").all()
    manifest = pq.read_table(store.root / project / "r1" / "manifest.parquet").to_pandas()
    row = alice.iloc[0]
    assert row["research_id"] in set(manifest["research_id"])
    study_uid = row["viewer_link"].rsplit("=", 1)[1]
    assert study_uid in set(manifest["study_uid"]), "viewer link uses the de-identified UID"
    assert row["study_date"] in set(manifest["study_date"]), "shifted date"
    text = a.read_text()
    assert not any(phi in text for phi in synth_dir.phi_strings())
    # Asked for overlap, alice may get bob's studies but never her own again.
    c = tmp_path / "alice2.csv"
    code, _ = export(store, project, "--assignee", "alice", "--overlap", "--out", str(c))
    again = pd.read_csv(c, dtype=str)
    assert code == 0 and set(bob["research_study_id"]) <= set(again["research_study_id"])
    assert not set(alice["research_study_id"]) & set(again["research_study_id"])
    # A spreadsheet comes back the same way: bad rows by their line in the sheet.
    bob.loc[0, "finding"] = "abnormal"
    bob.loc[1, "finding"] = "unsure"
    bob.to_excel(b, index=False)
    result = CliRunner().invoke(app, ["labels", "import", str(b), "--dest", store.url])
    assert "bob.xlsx line 3: finding: 'unsure'" in " ".join(result.output.split())
    assert list(read_labels(store, project, "r1")["assignee"]) == ["bob"]


def test_import_reports_each_bad_row_by_line_and_stores_the_good(  # type: ignore[no-untyped-def]
    release, tmp_path: Path
) -> None:
    project, store = release
    path = tmp_path / "alice.csv"
    assert export(store, project, "--assignee", "alice", "--count", "6", "--out", str(path))[0] == 0
    rows = list(csv.DictReader(path.open()))
    rows[0].update(finding="normal", confidence="3", urgent="no")  # line 2: good
    rows[1].update(finding="abnormal", urgent="yes")  # line 3: good
    rows[2].update(finding="maybe")  # line 4: value outside the schema
    rows[3].update(confidence="4")  # line 5: required field missing
    rows[4].update(finding="normal", research_study_id="RID-NOPE-0000")  # line 6: unknown
    rows.append(dict(rows[0]))  # line 8: same study labeled twice by alice
    # line 7 (rows[5]) stays empty: not labeled yet, not an error.
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = CliRunner().invoke(app, ["labels", "import", str(path), "--dest", store.url])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "line 4: finding: 'maybe' is not one of normal, abnormal" in out
    assert "line 5: finding: required field is empty" in out
    assert "line 6: unknown study 'RID-NOPE-0000'" in out
    assert "line 8: study " in out and "already labeled by alice" in out
    assert "line 2" not in out and "line 3" not in out and "line 7" not in out
    assert "2 label rows stored, 1 rows not labeled, 4 rows rejected" in out

    labels = read_labels(store, project, "r1")
    assert len(labels) == 2 and set(labels["assignee"]) == {"alice"}
    assert set(labels["source"]) == {"import"} and labels["labeled_at"].notna().all()
    assert list(labels["finding"]) == ["normal", "abnormal"]
    assert list(labels["urgent"]) == ["False", "True"]

    # Importing the same file again: the two good rows are already stored, so they are skipped
    # (issue 15: a re-import is harmless); the study twice in the file is still refused.
    again = CliRunner().invoke(app, ["labels", "import", str(path), "--dest", store.url])
    again_out = " ".join(again.output.split())
    assert "line 2: study" not in again_out and "2 rows already stored (skipped)" in again_out
    assert "line 8: study " in again_out
    assert "already labeled by alice in an earlier row" in again_out
    assert len(read_labels(store, project, "r1")) == 2

    summary = build_manifest(store, f"{project}/r1", 0, project, "r1")
    assert summary["labels"]["key"] == labels_key(project, "r1")
    assert summary["labels"]["rows"] == 2
    on_disk = json.loads((store.root / project / "r1" / "summary.json").read_text())
    assert on_disk["labels"]["sha256"] == summary["labels"]["sha256"]
    table = pq.read_table(io.BytesIO(store.get_bytes(labels_key(project, "r1"))))
    assert {"research_study_id", "assignee", "source", "labeled_at", "finding"} <= set(
        table.column_names
    )


def test_a_project_without_a_schema_is_told_what_to_add(project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out = export(LocalStore(tmp_path), project.id, "--assignee", "alice")
    assert code == 2 and "labels.fields" in out
