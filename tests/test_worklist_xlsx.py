"""Worklists as research offices use them: an Excel sheet with dropdowns and links, re-imports
that skip what is stored, corrections on request, rejected rows in a file to send back, and
summary tables whose every line names its unit.

The release here is written as manifest parts (the store format the workers write), so the tests
need no DICOM work; every value is invented.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from openpyxl import load_workbook
from typer.testing import CliRunner

from curation.labels import read_labels, sheet_title
from export.local import LocalStore
from export.manifest import ObjectRow, part_key, study_part, write_part
from flows.cli import app
from ridl.audit import log_path
from tests.curation_data import set_section

RELEASE = "2026-spring-chest-ct-pilot-cohort-r1"  # 36 characters: longer than a sheet name
SCHEMA = {
    "viewer": "https://ohif.example.org/viewer?StudyInstanceUIDs={study_uid}",
    "fields": [
        {"name": "finding", "type": "choice", "values": ["normal", "abnormal, see note"],
         "required": True},
        {"name": "confidence", "type": "int"},
        {"name": "urgent", "type": "bool"},
        {"name": "note", "type": "text"},
    ],
}  # fmt: skip


def _row(i: int, j: int) -> ObjectRow:
    study = f"2.25.{1000 + i}"
    return ObjectRow(
        key=f"RS-{i:04d}/{study}/{j}.dcm", size=100, sha256=f"{i:02d}{j:02d}" * 16,
        research_id=f"RS-{i:04d}", study_uid=study, series_uid=f"{study}.1",
        sop_uid=f"{study}.1.{j}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", modality="CT",
        study_date="20200101", study_description="CT CHEST",
    )  # fmt: skip


@pytest.fixture
def release(project, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Five exported studies of one release, each with two CT instances, and a label schema."""
    set_section(project.id, "labels", SCHEMA)
    store = LocalStore(tmp_path / "store")
    for i in range(5):
        part = study_part(
            f"2.25.{1000 + i}", "site-x", [_row(i, 0), _row(i, 1)], excluded={}, quarantined={}
        )
        write_part(store, part_key(f"{project.id}/{RELEASE}", f"2.25.{1000 + i}"), part)
    return project.id, store


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def _export(store: LocalStore, project: str, out: Path, *args: str) -> None:
    code, text = _cli("labels", "export", "--project", project, "--release", RELEASE,
                      "--dest", store.url, "--out", str(out), *args)  # fmt: skip
    assert code == 0, text


def _import(store: LocalStore, path: Path, *args: str) -> tuple[int, str]:
    return _cli("labels", "import", str(path), "--dest", store.url, *args)


def _audit(event: str) -> list[dict]:  # type: ignore[type-arg]
    lines = log_path().read_text().splitlines()
    return [e["fields"] for e in map(json.loads, lines) if e["event"] == event]


def test_sheet_names_follow_excel_rules() -> None:
    assert sheet_title("r1") == "r1"
    assert sheet_title("a" * 40) == "a" * 31
    assert sheet_title("r1/2026:[pilot]*?\\") == "r1_2026__pilot____"
    assert sheet_title("'r1'") == "r1" and sheet_title("") == "worklist"
    assert sheet_title("History") == "History_"


def test_xlsx_worklist_has_dropdowns_links_frozen_header_and_release_sheet(  # type: ignore[no-untyped-def]
    release, tmp_path: Path
) -> None:
    project, store = release
    out = tmp_path / "alice.xlsx"
    _export(store, project, out, "--assignee", "alice", "--format", "xlsx")
    book = load_workbook(out)
    sheet = book.worksheets[0]
    assert sheet.title == RELEASE[:31]
    assert sheet.freeze_panes == "A2"
    header = [c.value for c in sheet[1]]
    col = {name: i + 1 for i, name in enumerate(header)}
    assert sheet.max_row == 6
    # Clickable viewer links with the de-identified Study Instance UID.
    link = sheet.cell(row=2, column=col["viewer_link"])
    assert link.hyperlink is not None and link.hyperlink.target == link.value
    assert str(link.value).endswith("StudyInstanceUIDs=2.25.1000")
    # One dropdown per choice (and yes/no) field over the data rows, none on text or numbers.
    lists = book[book.sheetnames[1]]
    assert lists.sheet_state == "hidden"
    dropdowns = {}
    for check in sheet.data_validations.dataValidation:
        assert check.type == "list" and check.showErrorMessage
        target = str(check.sqref)
        ref = check.formula1.split("!")[1].replace("$", "")
        values = [c.value for row in lists[ref] for c in row]
        dropdowns[header[sheet[target.split(":")[0]].column - 1]] = (target, values)
    finding = sheet.cell(row=2, column=col["finding"]).column_letter
    assert dropdowns["finding"] == (f"{finding}2:{finding}6", ["normal", "abnormal, see note"])
    assert dropdowns["urgent"][1] == ["yes", "no"]
    assert set(dropdowns) == {"finding", "urgent"}
    # The workbook comes back: labels filled in Excel import as from a CSV.
    sheet.cell(row=2, column=col["finding"], value="abnormal, see note")
    sheet.cell(row=2, column=col["confidence"], value=3)
    sheet.cell(row=3, column=col["finding"], value="normal")
    sheet.cell(row=3, column=col["urgent"], value="yes")
    book.save(out)
    code, text = _import(store, out)
    assert code == 0, text
    labels = read_labels(store, project, RELEASE)
    assert list(labels["finding"]) == ["abnormal, see note", "normal"]
    assert list(labels["confidence"].fillna("")) == ["3", ""]


def test_reimport_skips_stored_rows_and_corrections_need_asking(  # type: ignore[no-untyped-def]
    release, tmp_path: Path
) -> None:
    project, store = release
    path = tmp_path / "alice.csv"
    _export(store, project, path, "--assignee", "alice")
    rows = list(csv.DictReader(path.open()))
    rows[0].update(finding="normal", confidence="2", note="small nodule")
    rows[1].update(finding="abnormal, see note")
    _write_csv(path, rows)
    assert _import(store, path)[0] == 0

    # The same file again: nothing refused, nothing added, and the skip is counted.
    code, text = _import(store, path)
    assert code == 0, text
    assert "0 label rows stored" in text and "2 rows already stored (skipped)" in text
    assert len(read_labels(store, project, RELEASE)) == 2

    # A changed value for a study alice labeled is refused unless --correct is given.
    rows[0].update(finding="abnormal, see note", note="nodule, follow up")
    rows[2].update(finding="normal")
    _write_csv(path, rows)
    code, text = _import(store, path)
    assert code == 1
    assert "line 2: study" in text and "already labeled by alice with other values" in text
    assert "--correct" in text and "1 label rows stored" in text
    assert list(read_labels(store, project, RELEASE)["finding"])[0] == "normal"

    code, text = _import(store, path, "--correct")
    assert code == 0, text
    assert "1 rows corrected" in text and "2 rows already stored (skipped)" in text
    labels = read_labels(store, project, RELEASE).set_index("research_study_id")
    assert len(labels) == 3
    assert labels.loc[rows[0]["research_study_id"], "finding"] == "abnormal, see note"
    assert labels.loc[rows[0]["research_study_id"], "note"] == "nodule, follow up"
    # The audit log records the correction by research study ID, old and new values; free
    # text is only said to have changed, and no assignee name is in the correction entry.
    (entry,) = _audit("labels.corrected")
    assert entry["changes"] == [
        {"research_study_id": rows[0]["research_study_id"], "field": "finding",
         "old": "normal", "new": "abnormal, see note"},
        {"research_study_id": rows[0]["research_study_id"], "field": "note",
         "text_changed": True},
    ]  # fmt: skip
    assert "alice" not in json.dumps(entry) and "nodule" not in log_path().read_text()
    assert _audit("labels.imported")[-1]["corrected"] == 1


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_rejected_rows_are_written_back_in_the_input_format_with_a_reason(  # type: ignore[no-untyped-def]
    release, tmp_path: Path, fmt: str
) -> None:
    project, store = release
    path = tmp_path / f"bob.{fmt}"
    _export(store, project, path, "--assignee", "bob", "--format", fmt)
    sheet = pd.read_csv(path, dtype=str) if fmt == "csv" else pd.read_excel(path, dtype=str)
    sheet = sheet.fillna("")
    sheet.loc[0, "finding"] = "normal"  # good
    sheet.loc[1, "finding"] = "unsure"  # not a choice
    sheet.loc[2, "confidence"] = "high"  # required finding missing, confidence not a number
    if fmt == "csv":
        sheet.to_csv(path, index=False)
    else:
        sheet.to_excel(path, index=False)
    code, text = _import(store, path)
    assert code == 1
    rejected = tmp_path / f"bob-rejected.{fmt}"
    assert f"rejected rows, with their reason, to send back: {rejected}" in text
    back = pd.read_csv(rejected, dtype=str) if fmt == "csv" else pd.read_excel(rejected, dtype=str)
    back = back.fillna("")
    assert list(back.columns) == [*sheet.columns, "reason"]
    assert list(back["research_study_id"]) == list(sheet.loc[1:2, "research_study_id"])
    assert "finding: 'unsure' is not one of" in back.loc[0, "reason"]
    assert "required field is empty" in back.loc[1, "reason"]
    assert "not a whole number" in back.loc[1, "reason"]
    if fmt == "xlsx":  # the file sent back is a worklist too: same sheet, dropdowns
        book = load_workbook(rejected)
        assert book.worksheets[0].title == RELEASE[:31]
        assert book.worksheets[0].data_validations.dataValidation
    # Fixed and imported again (the reason column is ignored): the good row is not repeated.
    back.loc[0, "finding"] = "abnormal, see note"
    elsewhere = tmp_path / "office" / f"fixed.{fmt}"
    elsewhere.parent.mkdir()
    if fmt == "csv":
        back.to_csv(elsewhere, index=False)
    else:
        back.to_excel(elsewhere, index=False)
    given = tmp_path / f"still-wrong.{fmt}"
    code, text = _import(store, elsewhere, "--rejected", str(given))
    assert code == 1 and "1 label rows stored" in text
    assert given.exists() and not (elsewhere.parent / f"fixed-rejected.{fmt}").exists()
    again = pd.read_csv(given, dtype=str) if fmt == "csv" else pd.read_excel(given, dtype=str)
    assert list(again.columns).count("reason") == 1 and len(again) == 1
    assert len(read_labels(store, project, RELEASE)) == 2


def test_a_label_field_named_reason_is_refused(project) -> None:  # type: ignore[no-untyped-def]
    from curation.labels import LabelSchema
    from ridl.errors import ConfigError

    with pytest.raises(ConfigError, match="reserved"):
        LabelSchema.from_project({"fields": [{"name": "reason"}]})


def test_summary_tables_name_the_unit_on_every_line(  # type: ignore[no-untyped-def]
    release, capsys: pytest.CaptureFixture[str]
) -> None:
    from export.manifest import build_manifest, source_part, source_part_key

    project, store = release
    prefix = f"{project}/{RELEASE}"
    write_part(store, source_part_key(prefix), source_part({"withdrawn": 2}, {"not-dicom": 1}))
    part = study_part("2.25.2000", "site-x", [_row(9, 0)], excluded={"iocm-rejected": 3,
                      "withdrawn": 4}, quarantined={"truncated": 1})  # fmt: skip
    write_part(store, part_key(prefix, "2.25.2000"), part)
    summary = build_manifest(store, prefix, 6, project, RELEASE)
    assert summary["excluded"] == {"iocm-rejected": 3, "withdrawn": 6}
    assert summary["excluded_studies"] == {"withdrawn": 2}

    code, text = _cli("summary", "--project", project, "--release", RELEASE, "--dest",
                      store.url, "--table")  # fmt: skip
    assert code == 0, text
    result = CliRunner().invoke(app, ["summary", "--project", project, "--release", RELEASE,
                                      "--dest", store.url, "--table"])  # fmt: skip
    lines = [ln.strip("│ ").strip() for ln in result.output.splitlines() if "│" in ln]
    counts = [ln for ln in lines if ln.split("│")[-1].strip().replace(",", "").isdigit()]
    assert len(counts) >= 10, lines
    units = ("studies", "subjects", "instances", "bytes", "flow runs")
    assert all(any(u in ln.split("│")[0] for u in units) for ln in counts), counts
    assert "studies excluded: withdrawn" in text and "instances excluded: withdrawn" in text
    assert "instances excluded: iocm-rejected" in text
    assert "instances quarantined: truncated" in text

    # The HTML report counts each kind in its unit too (2 studies, 3 + 4 instances).
    from export.report import write_report

    page = store.get_bytes(write_report(store, prefix)).decode()
    assert "<th>studies excluded at selection</th><td>2</td>" in page
    assert "<th>instances excluded</th><td>7</td>" in page
