"""`ridl deid SRC DST --project P` end to end, and dciodvfy on what it writes."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import tomli_w
from pydicom import dcmread
from typer.testing import CliRunner

from flows.cli import app
from ridl.projects import project_path
from tests.conftest import accept_test_edit
from tests.processes import loaded_by

from .conftest import make_project, require_program

OPTIONS = ["retain-long-modified-dates", "clean-descriptors", "retain-safe-private"]


def _ps315_project(project_id: str = "deid-a", options: list[str] | None = None) -> None:
    make_project(project_id, recipe="ps3.15-basic")
    path = project_path(project_id)
    data = tomllib.loads(path.read_text())
    data["scope"]["deid_options"] = OPTIONS
    # `ridl deid` applies the approved scope: approve every modality of the synthetic DIR.
    data["scope"]["modalities"] = ["CT", "CR", "US", "SR", "KO"]
    data["deid_options"] = OPTIONS if options is None else options
    # `ridl deid` curates as a run does: keep the kinds a run excludes by default, so that every
    # kind of the synthetic DIR is de-identified (and checked by dciodvfy) where curation allows.
    data["curation"] = {"non_image": "keep", "screen_captures": "keep", "localizers": "keep"}
    path.write_text(tomli_w.dumps(data))
    accept_test_edit(project_id)  # the edit is recorded, as an office would


def test_deid_command_writes_deidentified_tree_and_summary(synth_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _ps315_project()
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["deid", str(synth_dir.root), str(out), "--project", "deid-a"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    written = sorted(out.rglob("*.dcm"))
    assert summary["exported"] == len(written) > 0
    bad = len(synth_dir.truncated) + len(synth_dir.not_dicom)
    assert sum(summary["quarantined"].values()) >= bad
    # Excluded: IHE IOCM rejection notes and the instances they reject, as a run excludes them.
    assert summary["files"] == summary["exported"] + sum(summary["quarantined"].values()) + sum(
        summary["excluded"].values()
    )
    phi = synth_dir.phi_strings()
    for path in written[:40]:
        data = path.read_bytes()
        for value in phi:
            assert value.encode() not in data, "PHI in output"
        ds = dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        codes = {c.CodeValue for c in ds.DeidentificationMethodCodeSequence}
        assert codes == {"113100", "113107", "113105", "113111"}
        assert path.parent.parent.parent.name == ds.PatientID  # research ID folder
    # The same person at two sites (linked by HN) lands under one research ID.
    linked = {}
    for reg in synth_dir.registrations:
        if reg.person.health_number:
            linked.setdefault(reg.person.health_number, set()).add(reg.issuer)
    assert any(len(sites) > 1 for sites in linked.values())
    assert summary["subjects"] < len(synth_dir.registrations)
    # The dose screens carry text outside any known region: held for review, as a run holds them.
    assert summary["quarantined"].get("burned-in-text", 0) >= 1
    assert summary["held_for_review"] >= summary["quarantined"]["burned-in-text"]
    for reason in summary["quarantined"]:
        assert re.fullmatch(r"[a-z0-9-]+", reason)


def test_project_create_records_options_and_refuses_unapproved_ones() -> None:
    base = [
        "project", "create", "opt-cli", "--reb-number", "R-1", "--title", "T", "--pi", "P",
        "--approved", "2026-01-01", "--expires", "2030-01-01", "--from", "2016-01-01",
        "--to", "2024-12-31", "--modality", "CT", "--site", "SITE-A",
        "--recipe", "ps3.15-basic", "--deid-option", "retain-uids",
    ]  # fmt: skip
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code == 2 and "deid_options" in refused.output
    accepted = CliRunner().invoke(app, [*base, "--allow-deid-option", "retain-uids"])
    assert accepted.exit_code == 0, accepted.output
    data = tomllib.loads(project_path("opt-cli").read_text())
    assert data["deid_options"] == ["retain-uids"]
    assert data["scope"]["deid_options"] == ["retain-uids"]


def test_deid_command_refuses_an_option_outside_the_scope(synth_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _ps315_project("deid-b", options=["retain-uids"])
    result = CliRunner().invoke(
        app, ["deid", str(synth_dir.root), str(tmp_path / "o"), "--project", "deid-b"]
    )
    assert result.exit_code == 2
    assert "retain-uids" in result.output and "deid_options" in result.output
    assert not (tmp_path / "o").exists()


def _errors(dciodvfy: str, path: Path) -> set[str]:
    proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {re.sub(r"\s+", " ", line.strip()) for line in lines if line.startswith("Error")}


def test_dciodvfy_reports_no_new_errors(synth_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dciodvfy = require_program("dciodvfy")
    _ps315_project("deid-c")
    out = tmp_path / "out"
    picks: dict[str, Path] = {}
    for path in synth_dir.files:
        kind = path.name.split("_")[0].split(".")[0]
        if path not in synth_dir.truncated and path not in synth_dir.not_dicom:
            picks.setdefault(kind, path)
    src = tmp_path / "src"
    src.mkdir()
    for kind, path in picks.items():
        (src / f"{kind}.dcm").write_bytes(path.read_bytes())
    result = CliRunner().invoke(app, ["deid", str(src), str(out), "--project", "deid-c"])
    assert result.exit_code == 0, result.output
    outputs = {dcmread(p).SOPClassUID: p for p in out.rglob("*.dcm")}
    checked = 0
    for path in src.iterdir():
        ds = dcmread(path, stop_before_pixels=True)
        produced = outputs.get(ds.SOPClassUID)
        if produced is None:
            continue  # quarantined (e.g. burned-in annotation): nothing exported to check
        before = _errors(dciodvfy, path)
        after = _errors(dciodvfy, produced)
        assert after <= before, f"{path.name}: new errors {sorted(after - before)}"
        checked += 1
    assert checked >= 3


def test_the_per_study_work_starts_without_arrow_and_pandas() -> None:
    # ridl deid and a run's batches import these modules; Arrow and pandas (half a second of a
    # process's start) are only for tables: the catalog, the frozen selection, the manifest.
    assert loaded_by("flows.deid, flows.work", ("pandas", "pyarrow")) == []
