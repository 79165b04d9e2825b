"""The REB registry: what is stored, and every request it must refuse before any work."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.runplan import check_request
from ridl.errors import ScopeError
from ridl.projects import load_project
from ridl.secrets import load_secret, secret_path
from tests.conftest import make_project

runner = CliRunner()


def test_create_from_cli_stores_toml_and_a_private_secret(ridl_home: Path) -> None:
    result = runner.invoke(
        app,
        [
            "project", "create", "reb-1",
            "--reb-number", "REB-77", "--title", "Lungs", "--pi", "Dr Who",
            "--approved", "2026-01-01", "--expires", "2099-01-01",
            "--from", "2016-01-01", "--to", "2020-12-31",
            "--modality", "ct", "--modality", "CR", "--site", "SITE-A",
            "--retain", "PatientAge", "--recipient", "Ana",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    project = load_project("reb-1")
    assert project.scope.modalities == ("CT", "CR")
    assert project.scope.retain == ("PatientAge",)
    assert project.recipients == ("Ana",)
    path = secret_path("reb-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = load_secret("reb-1").decode()
    assert secret not in result.output
    shown = runner.invoke(app, ["project", "show", "reb-1"])
    assert "REB-77" in shown.output and secret not in shown.output
    listed = runner.invoke(app, ["project", "list"])
    assert "reb-1" in listed.output and "active" in listed.output


def test_duplicate_project_is_refused(ridl_home: Path) -> None:
    make_project("dup")
    with pytest.raises(Exception, match="already exists"):
        make_project("dup")


def test_secret_readable_by_others_is_refused(ridl_home: Path) -> None:
    make_project("loose")
    secret_path("loose").chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        load_secret("loose")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"date_from": dt.date(2014, 12, 31)}, "--from"),
        ({"date_to": dt.date(2025, 1, 1)}, "--to"),
        ({"modalities": ["MR"]}, "--modality"),
        ({"sites": ["SITE-Z"]}, "--site"),
    ],
)
def test_out_of_scope_requests_are_refused_naming_the_field(
    ridl_home: Path, kwargs: dict[str, object], field: str
) -> None:
    make_project("scoped")
    with pytest.raises(ScopeError) as info:
        check_request("scoped", "r1", **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert f"change: {field}" in str(info.value)


def test_expired_project_is_refused(ridl_home: Path) -> None:
    make_project("old", expires=dt.date.today() - dt.timedelta(days=1))
    with pytest.raises(ScopeError, match="expired") as info:
        check_request("old", "r1")
    assert info.value.field == "expires"


def test_cli_run_refuses_before_any_work(ridl_home: Path, tmp_path: Path) -> None:
    make_project("cli-scope")
    result = runner.invoke(
        app,
        [
            "run", "--project", "cli-scope", "--release", "r1",
            "--source", f"folder:{tmp_path}", "--modality", "MR",
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "change: --modality" in result.output
    assert not (ridl_home / "catalogs").exists()
    assert not (ridl_home / "prefect").exists()


def test_unknown_project_message_says_what_to_do(ridl_home: Path) -> None:
    with pytest.raises(Exception, match="ridl project create"):
        check_request("nope", "r1")
