"""The opt-out list: keyed hashes only, per project, applied at selection and per study."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from flows.cli import app
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.catalog import catalog_dir_for, drop_duplicate_studies, select, write_study_rows
from ridl.optout import load_optout, optout_path
from ridl.projects import Project
from ridl.sources.folder import FolderSource
from ridl.synth import SynthReport
from tests.conftest import make_project

runner = CliRunner()


def test_optout_cli_stores_keyed_hashes_never_identifiers(
    project: Project, ridl_home: Path, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["optout", "add", "--project", project.id, "--hn", "9876543210"])
    assert result.exit_code == 0, result.output
    sheet = tmp_path / "withdrawn.csv"
    sheet.write_text("issuer,patient_id,hn\nSITE-A,MRN000111,\nSITE-B,MRN000222,1234567890\n")
    result = runner.invoke(app, ["optout", "add", "--project", project.id, "--file", str(sheet)])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["optout", "add", "--project", project.id, "--hn", "9876543210"])
    assert "0 new" in again.output

    stored = optout_path(project.id).read_text()
    listing = runner.invoke(app, ["optout", "list", "--project", project.id])
    for value in ("9876543210", "MRN000111", "MRN000222", "1234567890"):
        assert value not in stored and value not in listing.output and value not in result.output
    optout = load_optout(project.id)
    assert len(optout) == 4  # one HN, two couplets, one HN
    assert optout.matches("9876543210", "SITE-C", "ANY")
    assert optout.matches(None, "SITE-A", "MRN000111")
    assert not optout.matches(None, "SITE-B", "MRN000111"), "a Patient ID is per issuer"
    assert "4 entries" in listing.output

    other = make_project("study-b")
    assert not load_optout(other.id).matches("9876543210", "", ""), "lists are per project"

    bad = runner.invoke(app, ["optout", "add", "--project", project.id, "--patient-id", "X"])
    assert bad.exit_code == 2 and "--issuer" in bad.output


def test_folder_selection_and_work_honour_the_optout_list(
    synth_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    reg = next(r for r in synth_dir.registrations if r.person.health_number)
    hn = reg.person.health_number
    src = FolderSource(synth_dir.root)
    catalog = catalog_dir_for(src.url)
    src.build_catalog(catalog, dt.date.min, dt.date.max)
    everyone = select(catalog, project.scope, load_optout(project.id))
    result = runner.invoke(app, ["optout", "add", "--project", project.id, "--hn", str(hn)])
    assert result.exit_code == 0
    chosen = select(catalog, project.scope, load_optout(project.id))
    assert chosen.excluded["opted-out"] > 0
    assert len(chosen.studies) == len(everyone.studies) - chosen.excluded["opted-out"]
    assert hn not in set(chosen.studies["health_number"].dropna())

    # A withdrawal recorded after the selection was frozen is still honoured by the work.
    plan = prepare_run(project.id, "r2", f"folder:{synth_dir.root}", f"file:{tmp_path}")
    process_batch(plan.ctx, [])  # the worker (and its opt-out list) exists before the change
    other = next(
        r
        for r in synth_dir.registrations
        if r.person.health_number is None and r.issuer in project.scope.sites
    )
    add = ["optout", "add", "--project", project.id, "--issuer", other.issuer]
    runner.invoke(app, [*add, "--patient-id", other.patient_id])
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.excluded["opted-out"] > 0


def test_duplicate_studies_keep_the_row_with_the_health_number(ridl_home: Path) -> None:
    def row(uid: str, issuer: str, pid: str, hn: str | None, n: int) -> dict[str, object]:
        return {
            "study_uid": uid,
            "study_date": "20200101",
            "issuer": issuer,
            "patient_id": pid,
            "health_number": hn,
            "hn_known": True,
            "description": "",
            "modalities": ["CT"],
            "n_series": 1,
            "n_instances": n,
            "locations": [],
        }

    rows = [
        row("1.2.3", "SITE-B", "P2", None, 9),
        row("1.2.3", "SITE-A", "P1", "111", 3),
        row("1.2.4", "SITE-A", "P1", "111", 3),
        row("1.2.5", "SITE-C", "P9", None, 2),
        row("1.2.5", "SITE-A", "P8", None, 5),
    ]
    kept, dropped = drop_duplicate_studies(pd.DataFrame(rows))
    assert dropped == 2
    by_uid = {r["study_uid"]: r for r in kept.to_dict("records")}
    assert by_uid["1.2.3"]["issuer"] == "SITE-A", "the copy with the health number"
    assert by_uid["1.2.5"]["issuer"] == "SITE-A", "then the copy with more instances"

    from ridl.projects import Scope

    write_study_rows(rows, ridl_home / "cat")
    scope = Scope(dt.date(2019, 1, 1), dt.date(2021, 1, 1), ("CT",), ("SITE-A", "SITE-B"))
    chosen = select(ridl_home / "cat", scope)
    assert sorted(chosen.studies["study_uid"]) == ["1.2.3", "1.2.4", "1.2.5"]
    assert chosen.excluded == {"duplicate-study": 1}, "SITE-C's copy was out of scope already"


def test_a_worker_without_the_list_file_uses_the_runs_snapshot(ridl_home: Path) -> None:
    """Dask workers have their own disk: the run context carries the tokens (keyed, no PHI)."""
    from ridl.optout import add_optout

    project = make_project("snap")
    add_optout(project.id, health_number="9990001112")
    tokens = load_optout(project.id).tokens
    empty_dir = ridl_home / "empty-dir"
    empty_dir.mkdir()
    plan = prepare_run(
        project.id, "r1", f"folder:{empty_dir}", f"file:{ridl_home / 's'}", allow_empty=True
    )
    assert plan.ctx.optout_tokens == tuple(sorted(tokens)) and tokens
    optout_path(project.id).unlink()  # as on a worker machine: no list file there
    assert not load_optout(project.id).matches("9990001112", "SITE-A", "MRN1")
    on_worker = load_optout(project.id, snapshot=tokens)
    assert on_worker.matches("9990001112", "SITE-A", "MRN1")
    assert not on_worker.matches("1112223334", "SITE-A", "MRN1")
