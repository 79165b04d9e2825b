"""Verification inside the Prefect flow: a leak is stopped in the stream (quarantined, never
stored, the quarantine naming where); the gate publishes and audits; the secret appears in no
output of either run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from ridl import audit
from tests.conftest import make_project

pytestmark = pytest.mark.prefect
runner = CliRunner()
SECRET = "s3cr3t-" + "9f2c" * 12


def _project(project_id: str, retain: tuple[str, ...] = ()) -> None:
    make_project(project_id, modalities=("CT",), retain=retain)


def test_gate_in_the_flow_blocks_a_leak_and_publishes_a_clean_release(
    synth_dir,
    ridl_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("RIDL_SECRET_LEAKY", SECRET)
    monkeypatch.setenv("RIDL_SECRET_CLEAN", SECRET)
    caplog.set_level(logging.DEBUG)
    # A project whose approved scope keeps StudyDescription, which the synthetic DIR fills with
    # the patient's family name: every such object is stopped before the store, naming where.
    _project("leaky", retain=("StudyDescription",))
    store = tmp_path / "store"
    source = f"folder:{synth_dir.root}"
    # Every object is held, so the release holds none: published empty only when asked.
    leaky = runner.invoke(
        app, ["run", "--project", "leaky", "--release", "r1", "--source", source,
              "--dest", f"file:{store}", "--allow-empty"],
    )  # fmt: skip
    assert leaky.exit_code == 0, leaky.output
    assert "quarantined: verification-hit" in leaky.output
    from curation.quarantine import list_quarantine

    held = [r for r in list_quarantine("leaky", "r1") if r.reason == "verification-hit"]
    assert held and all("StudyDescription holds a name" in r.detail for r in held)
    for path in store.rglob("*"):
        if path.is_file():
            for reg in synth_dir.registrations:
                assert reg.person.family.encode() not in path.read_bytes(), path.name
    report = json.loads((ridl_home / "releases/leaky/r1/verification.json").read_text())
    assert report["passed"] is True and report["mode"] == "sample"

    _project("clean")
    clean = runner.invoke(
        app, ["run", "--project", "clean", "--release", "r1", "--source", source,
              "--dest", f"file:{store}"],
    )  # fmt: skip
    assert clean.exit_code == 0, clean.output
    assert "passed: published" in clean.output
    assert (store / "clean/r1/published.json").exists()

    verify_again = runner.invoke(
        app, ["verify", "--project", "clean", "--release", "r1", "--dest", f"file:{store}"]
    )
    assert verify_again.exit_code == 0 and "PASSED" in verify_again.output
    full = runner.invoke(
        app,
        ["verify", "--full", "--project", "clean", "--release", "r1", "--dest", f"file:{store}"],
    )
    assert full.exit_code == 0 and "(full): PASSED" in full.output

    events = [(e["event"], e["fields"].get("project")) for e in audit.read_entries()]
    for expected in [
        ("project.created", "leaky"),
        ("selection.frozen", "leaky"),
        ("run.started", "leaky"),
        ("verification.result", "leaky"),
        ("run.started", "clean"),
        ("verification.result", "clean"),
        ("release.published", "clean"),
        ("run.ended", "clean"),
    ]:
        assert expected in events, expected
    ended = [e["fields"] for e in audit.read_entries() if e["event"] == "run.ended"]
    assert [(f["project"], f["status"]) for f in ended] == [
        ("leaky", "published"),
        ("clean", "published"),
    ]
    started = next(e for e in audit.read_entries() if e["event"] == "run.started")
    assert len(started["fields"]["recipe_sha256"]) == 64 and started["who"]
    count, problems = audit.verify_log()
    assert count >= 10 and problems == []

    # The secret is in no file written, no output printed and no log record.
    for path in list(ridl_home.rglob("*")) + list(store.rglob("*")):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path.name
    assert SECRET not in leaky.output + clean.output + verify_again.output + full.output
    assert SECRET not in caplog.text
    # Nor does PHI reach the audit log, the report or the quarantine records' details.
    audit_text = audit.log_path().read_text()
    report_text = (ridl_home / "releases/leaky/r1/verification.json").read_text()
    details = " ".join(r.detail for r in held)
    for value in synth_dir.phi_strings():
        assert value not in audit_text and value not in report_text and value not in details
