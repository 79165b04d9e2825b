"""Governance in the audit log (issue 15, defects 5, 6 and the listing commands): opt-outs,
withdrawals, review decisions, label imports and access grants are recorded in the hash chain;
`ridl project update` changes a project within what the REB allows; a project file edited
outside ridl is refused; `ridl deid` under a project applies its approval and is audited."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from pathlib import Path

import pytest
import tomli_w
from pydicom import dcmread
from typer.testing import CliRunner

from curation.labels import store_label_rows
from curation.review import ReviewRecord, record_object
from export.access import grant_access
from flows.cli import app
from ridl.audit import read_entries, verify_log
from ridl.errors import ScopeError
from ridl.projects import Project, load_project, project_path
from ridl.releases import load_frozen
from ridl.synth import SynthReport, synthesize
from tests.curation_data import set_section
from tests.export_support import make_bucket, run_and_publish, s3_url
from tests.s3server import MotoServer

LABELS = {"fields": [{"name": "finding", "type": "choice", "values": ["normal", "abnormal"]}]}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> SynthReport:
    return synthesize(tmp_path_factory.mktemp("gov-dir"), patients=3, sites=3, seed=5)


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return " ".join(lines[0].split())


def _events(name: str) -> list[dict[str, object]]:
    return [e["fields"] for e in read_entries() if e["event"] == name]


def test_governance_actions_are_in_the_audit_chain_without_phi(
    s3_env: MotoServer, tiny_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    set_section(project.id, "labels", LABELS)
    url = s3_url(s3_env.url)
    make_bucket(url)
    run_and_publish(project.id, "r1", f"folder:{tiny_dir.root}", url)
    frozen = load_frozen(project.id, "r1")
    assert frozen is not None
    selection = frozen[1]
    patient_id, issuer = str(selection["patient_id"].iloc[0]), str(selection["issuer"].iloc[0])

    code, _, err = _cli("optout", "add", "--project", project.id, "--issuer", issuer,
                        "--patient-id", patient_id)  # fmt: skip
    assert code == 0, err
    assert _events("optout.added") == [{"project": project.id, "new_tokens": 1}]

    from curation.labels import release_studies

    store = make_bucket(url)
    studies = release_studies(store, project.id, "r1")
    gone = str(studies["research_id"].iloc[0])
    code, _, err = _cli("release", "withdraw", "--project", project.id, "--research-id", gone)
    assert code == 0, err
    assert _events("subject.withdrawn") == [
        {"project": project.id, "research_id": gone, "new": True}
    ]

    obj = "ab" * 32
    record_object(project.id, "r1", ReviewRecord(obj, "study-key", "quarantined", "burned-in-text"))
    code, _, err = _cli("review", "decide", "--project", project.id, "--release", "r1", obj,
                        "reject", "--reviewer", "Office Reviewer")  # fmt: skip
    assert code == 0, err
    assert _events("review.decided") == [
        {"project": project.id, "release": "r1", "object": obj, "decision": "reject",
         "reviewer": "Office Reviewer"}
    ]  # fmt: skip

    kept = studies[studies["research_id"] != gone]["research_study_id"].iloc[0]
    rows = [
        (2, {"research_study_id": kept, "assignee": "Reader", "finding": "normal"}),
        (3, {"research_study_id": "RS-NONE-0", "assignee": "Reader", "finding": "normal"}),
    ]
    store_label_rows(store, project.id, "r1", rows, source="import")
    (imported,) = _events("labels.imported")
    assert imported["stored"] == 1 and imported["refused"] == 1, imported

    grant_access(url, project.id, "r1", "Researcher One", 3)
    with pytest.raises(ScopeError):
        grant_access(url, project.id, "r1", "Someone Else", 3)
    (granted,) = _events("access.granted")
    assert granted["researcher"] == "Researcher One" and granted["kind"] == "iam-policy"
    (refused,) = _events("access.refused")
    assert refused["researcher"] == "Someone Else"
    assert "not an approved recipient" in str(refused["reason"])

    code, out, err = _cli("access", "list", "--project", project.id, "--json")
    assert code == 0, err
    (listed,) = json.loads(out)
    assert listed["researcher"] == "Researcher One" and listed["active"] is True
    code, out, err = _cli("release", "list", "--project", project.id, "--json")
    assert code == 0, err
    (r1,) = json.loads(out)
    assert r1["state"] == "published" and r1["withdrawn"] == 1, r1

    count, problems = verify_log()
    assert count and not problems
    text = (Path(str(settings_home())) / "audit" / "audit.jsonl").read_text()
    for value in set(selection["patient_id"]) | set(selection["health_number"].dropna()):
        assert str(value) not in text, "no patient identifier in the audit log"


def settings_home() -> Path:
    from ridl import settings

    return settings.ridl_home()


def test_project_update_narrows_freely_and_widens_only_with_an_amendment(
    project: Project, tmp_path: Path
) -> None:
    pid = project.id
    code, out, err = _cli("project", "update", pid, "--modality", "CT", "--to", "2023-12-31")
    assert code == 0, err
    assert load_project(pid).scope.modalities == ("CT",)
    code, _, err = _cli("project", "update", pid, "--modality", "CT", "--modality", "MR")
    assert code == 2 and "--reb-amendment" in _one_error_line(err)
    code, _, err = _cli("project", "update", pid, "--add-recipient", "New Researcher")
    assert code == 2 and "--reb-amendment" in _one_error_line(err)
    later = (project.expires + dt.timedelta(days=365)).isoformat()
    code, _, err = _cli("project", "update", pid, "--expires", later)
    assert code == 2 and "--renewal-date" in _one_error_line(err)
    today = dt.date.today().isoformat()
    code, _, err = _cli("project", "update", pid, "--expires", later, "--renewal-date", today,
                        "--modality", "CT", "--modality", "MR",
                        "--reb-amendment", "AMEND-7")  # fmt: skip
    assert code == 0, err
    schema = tmp_path / "labels.toml"
    schema.write_text(tomli_w.dumps({"labels": LABELS}))
    code, _, err = _cli("project", "update", pid, "--labels", str(schema))
    assert code == 0, err
    updated = load_project(pid)
    assert updated.expires.isoformat() == later and updated.scope.modalities == ("CT", "MR")
    assert updated.extra["labels"] == LABELS
    entries = _events("project.updated")
    assert len(entries) == 3
    assert entries[1]["reb_amendment"] == "AMEND-7"
    assert entries[1]["changes"]["expires"]["new"] == later  # type: ignore[index]
    assert "labels" in entries[2]["changes"]  # type: ignore[operator]
    assert not verify_log()[1]


def test_a_project_file_edited_outside_ridl_is_refused_until_recorded(
    project: Project, tmp_path: Path
) -> None:
    path = project_path(project.id)
    data = tomllib.loads(path.read_text())
    data["scope"]["modalities"] = ["CT", "CR", "US", "MR"]  # a widening by hand
    path.write_text(tomli_w.dumps(data))
    dest = f"file:{tmp_path / 'lib'}"
    run = ["run", "--project", project.id, "--release", "r1", "--source", f"folder:{tmp_path}",
           "--dest", dest]  # fmt: skip
    for args in (["project", "show", project.id], run):
        code, _, err = _cli(*args)
        assert code == 2
        line = _one_error_line(err)
        assert "changed outside ridl" in line and "--accept-edit" in line, line
    code, _, err = _cli("project", "update", project.id, "--accept-edit")
    assert code == 2 and "--reb-amendment" in _one_error_line(err)
    code, _, err = _cli("project", "update", project.id, "--accept-edit",
                        "--reb-amendment", "AMEND-8", "--note", "MR added by the REB")  # fmt: skip
    assert code == 0, err
    assert "MR" in load_project(project.id).scope.modalities
    (entry,) = _events("project.updated")
    assert entry["hand_edit"] is True and entry["reb_amendment"] == "AMEND-8"


def test_deid_under_a_project_applies_its_approval_and_is_audited(
    tiny_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    """Outside the approved modalities, dates or sites, opted out or withdrawn: excluded, counted
    with a reason, never written; the request is audited (started, ended, counts only)."""
    src = tmp_path / "in"
    src.mkdir()
    dicoms = []
    for i, f in enumerate(p for p in tiny_dir.files if p not in tiny_dir.not_dicom):
        if f in tiny_dir.truncated:
            continue
        dicoms.append(f)
        (src / f"{i:04d}.dcm").write_bytes(f.read_bytes())
    headers = [dcmread(p, stop_before_pixels=True) for p in sorted(src.iterdir())]
    scope = project.scope
    site = scope.sites[0]
    lo, hi = scope.date_from.strftime("%Y%m%d"), scope.date_to.strftime("%Y%m%d")

    def why(h: object) -> str | None:  # the first reason, in the order ridl checks them
        if str(getattr(h, "Modality", "")) not in scope.modalities:
            return "modality-not-approved"
        if not lo <= str(getattr(h, "StudyDate", "")) <= hi:
            return "date-not-approved"
        if str(getattr(h, "IssuerOfPatientID", "")) != site:
            return "site-not-approved"
        return None

    expected: dict[str, int] = {}
    for h in headers:
        reason = why(h)
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    # Narrow the approval to one site, and opt one subject of that site out.
    code, _, err = _cli("project", "update", project.id, "--site", site)
    assert code == 0, err
    at_site = [h for h in headers if why(h) is None]
    code, _, err = _cli("optout", "add", "--project", project.id, "--issuer", site,
                        "--patient-id", str(at_site[0].PatientID))  # fmt: skip
    assert code == 0, err
    dst = tmp_path / "out"
    code, out, err = _cli("deid", str(src), str(dst), "--project", project.id)
    assert code == 0, err
    summary = json.loads(out)
    excluded = summary["excluded"]
    opted = sum(why(h) is None and str(h.PatientID) == str(at_site[0].PatientID) for h in headers)
    assert excluded == {**expected, "opted-out": opted}, excluded
    assert expected.get("site-not-approved") and opted
    assert summary["files"] == len(headers)
    assert summary["exported"] + sum(excluded.values()) + sum(
        summary["quarantined"].values()
    ) == len(headers)
    written = [dcmread(p) for p in dst.rglob("*.dcm")]
    assert len(written) == summary["exported"]
    (started,) = _events("deid.started")
    (ended,) = _events("deid.ended")
    assert started["project"] == project.id
    assert ended["exported"] == summary["exported"] and ended["excluded"] == excluded
    assert str(src) not in json.dumps(started), "paths can carry names: not in the audit log"
