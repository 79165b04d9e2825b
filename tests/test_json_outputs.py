"""The list and show commands print JSON with --json (issue 15), parseable as it is."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from flows.cli import app
from ridl.projects import Project


def test_project_list_and_show_and_audit_show_print_json(project: Project) -> None:
    listed = CliRunner().invoke(app, ["project", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [project.id] and rows[0]["status"] == "active"
    shown = CliRunner().invoke(app, ["project", "show", project.id, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["reb_number"] == project.reb_number
    audit = CliRunner().invoke(app, ["audit", "show", "--json", "--event", "project.created"])
    assert audit.exit_code == 0, audit.output
    entries = [json.loads(line) for line in audit.stdout.splitlines()]
    assert entries and all(e["event"] == "project.created" for e in entries)
    wrong = CliRunner().invoke(app, ["audit", "show", "--event", "project.create"])
    assert wrong.exit_code == 2 and "project.created" in wrong.stderr
