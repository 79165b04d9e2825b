"""The audit log: a hash chain that detects an edited, a removed and a reordered entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from ridl import audit

runner = CliRunner()


def _write_some() -> Path:
    audit.record("project.created", project="p1")
    audit.record("run.started", project="p1", release="r1", batch_size=10)
    audit.record("selection.frozen", project="p1", release="r1", studies=12)
    audit.record("run.ended", project="p1", release="r1", exported=40)
    return audit.log_path()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_an_intact_log_verifies_and_records_who_and_version() -> None:
    path = _write_some()
    count, problems = audit.verify_log(path)
    assert count == 4 and problems == []
    entries = list(audit.read_entries(path))
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["prev"] == audit.GENESIS
    assert entries[1]["who"] and entries[1]["ridl"]
    assert entries[2]["fields"] == {"project": "p1", "release": "r1", "studies": 12}
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_an_edited_entry_is_detected() -> None:
    path = _write_some()
    lines = _lines(path)
    lines[1] = lines[1].replace(b'"batch_size":10', b'"batch_size":99')
    path.write_bytes(b"".join(lines))
    _, problems = audit.verify_log(path)
    assert any(p.line == 2 and "edited" in p.message for p in problems)


def test_an_edited_entry_with_its_own_hash_recomputed_still_breaks_the_chain() -> None:
    path = _write_some()
    lines = _lines(path)
    entry = json.loads(lines[1])
    entry["fields"]["batch_size"] = 99
    entry["hash"] = audit._entry_hash(entry)
    lines[1] = audit._canonical(entry) + b"\n"
    path.write_bytes(b"".join(lines))
    _, problems = audit.verify_log(path)
    assert [p.line for p in problems] == [3], problems


def test_a_removed_entry_is_detected() -> None:
    path = _write_some()
    lines = _lines(path)
    del lines[1]
    path.write_bytes(b"".join(lines))
    _, problems = audit.verify_log(path)
    assert any(p.line == 2 and "removed" in p.message for p in problems)
    assert any("sequence number 3, expected 2" in p.message for p in problems)


def test_a_removed_last_entry_is_detected_by_the_head() -> None:
    path = _write_some()
    path.write_bytes(b"".join(_lines(path)[:-1]))
    _, problems = audit.verify_log(path)
    assert problems and "head file records entry 4" in problems[0].message


def test_reordered_entries_are_detected() -> None:
    path = _write_some()
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    _, problems = audit.verify_log(path)
    assert {p.line for p in problems} >= {2, 3}
    assert any("reordered" in p.message for p in problems)


def test_appending_continues_the_chain_after_reopening() -> None:
    path = _write_some()
    audit.record("verification.result", project="p1", release="r1", passed=True, hits=0)
    count, problems = audit.verify_log(path)
    assert count == 5 and problems == []


def test_record_refuses_values_that_are_not_plain_json() -> None:
    with pytest.raises(TypeError):
        audit.record("run.started", when=object())


def test_cli_audit_verify_and_show() -> None:
    path = _write_some()
    ok = runner.invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert "4 entries" in ok.output and "intact" in ok.output
    shown = runner.invoke(app, ["audit", "show", "--last", "2"])
    assert shown.exit_code == 0, shown.output
    assert "selection.frozen" in shown.output and "run.ended" in shown.output
    assert "project.created" not in shown.output
    lines = _lines(path)
    lines[0], lines[1] = lines[1], lines[0]
    path.write_bytes(b"".join(lines))
    bad = runner.invoke(app, ["audit", "verify"])
    assert bad.exit_code == 1
    assert "line 1" in bad.output and "Traceback" not in bad.output
