"""Controlling a run (issue 15): `ridl run --dry-run` shows what would be selected and touches
nothing; a `ridl run` sent SIGTERM stops promptly, workers included, and resumes on a rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flows.extract
from flows.cli import app
from ridl.projects import Project
from ridl.releases import load_frozen, lock_holder
from ridl.synth import SynthReport, synthesize
from tests.processes import alive, descendants


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> SynthReport:
    return synthesize(tmp_path_factory.mktemp("ctl-dir"), patients=4, sites=3, seed=3)


def test_dry_run_shows_the_selection_and_touches_nothing(
    small_dir: SynthReport, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    monkeypatch.setattr(flows.extract, "extract_run", lambda **kw: started.append("flow"))
    lib = tmp_path / "lib"
    args = ["run", "--project", project.id, "--release", "r1", "--source",
            f"folder:{small_dir.root}", "--dest", f"file:{lib}", "--dry-run"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "dry run of" in out and "nothing retrieved, frozen or written" in out, out
    assert "studies" in out and "instances" in out and "CT" in out
    assert "excluded: duplicate-study" in out or "excluded:" not in out
    assert started == [] and load_frozen(project.id, "r1") is None
    assert not lib.exists() or not any(lib.rglob("*")), "nothing written to the store"
    from flows.runplan import preview_run

    preview = preview_run(project.id, "r1", f"folder:{small_dir.root}", f"file:{lib}")
    assert preview["state"] == "new" and preview["studies"] > 0
    assert sum(r["studies"] for r in preview["by_modality_year"]) == preview["studies"]
    assert all(len(r["year"]) == 4 for r in preview["by_modality_year"])
    # A request outside the approval is refused the same way, in one line.
    bad = CliRunner().invoke(app, [*args, "--modality", "MR"])
    assert bad.exit_code == 2 and bad.stderr.strip().startswith("error:")


def test_dry_run_says_why_studies_and_objects_are_left_out(
    small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    """Studies of the catalog outside the request are counted by the filter that leaves them
    out, and modalities outside the request in selected studies are named."""
    import pandas as pd

    from ridl.catalog import catalog_dir_for

    args = ["run", "--project", project.id, "--release", "r1", "--source",
            f"folder:{small_dir.root}", "--dest", f"file:{tmp_path / 'lib'}", "--dry-run",
            "--from", "2019-01-01", "--modality", "CT"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())
    catalog = pd.read_parquet(catalog_dir_for(f"folder:{small_dir.root}") / "studies.parquet")
    early = catalog["study_date"].fillna("") < "20190101"
    late = catalog["study_date"].fillna("") > "20241231"
    dated = catalog[~(early | late)]
    no_ct = dated["modalities"].map(lambda mods: "CT" not in set(mods))
    assert int((early | late).sum()) > 0 and int(no_ct.sum()) > 0, "the DIR has both kinds"
    assert f"left out: {int((early | late).sum())} studies of the catalog: Study Date" in out
    assert f"left out: {int(no_ct.sum())} studies of the catalog: no modality" in out
    with_sr = dated[~no_ct]["modalities"].map(lambda mods: "SR" in set(mods))
    assert f"the SR objects of {int(with_sr.sum())} selected studies" in out, out


@pytest.mark.prefect
def test_sigterm_stops_a_run_promptly_and_a_rerun_resumes(
    project: Project, tmp_path: Path, ridl_home: Path
) -> None:
    big = synthesize(tmp_path / "dir", patients=5, sites=3, seed=9, ct_slices=8)
    lib = tmp_path / "lib"
    args = [sys.executable, "-m", "flows.cli", "run", "--project", project.id, "--release",
            "r1", "--source", f"folder:{big.root}", "--dest", f"file:{lib}",
            "--workers", "2", "--batch-size", "2"]  # fmt: skip
    env = dict(os.environ, RIDL_HOME=str(ridl_home), PYTHONPATH=os.getcwd())
    # Stopped on the ephemeral API, as on a fresh machine: its temporary server must stop too.
    fresh = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    proc = subprocess.Popen(
        args, env=fresh, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    # Mid-run: the selection is frozen and the first objects are written.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if load_frozen(project.id, "r1") is not None and any(lib.rglob("*.dcm")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    workers = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    try:
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - t0
    assert took < 12, f"stopped after {took:.1f} s"
    assert proc.returncode != 0
    time.sleep(0.5)
    left = {p for p in workers if alive(p)}
    assert not left, f"child processes left: {sorted(left)}"
    assert "ridl run --project" in output and "to resume" in output, output[-2000:]
    assert "a local ephemeral API" in output, "no PREFECT_API_URL: the console says so"
    assert lock_holder(project.id, "r1") is None, "the lock is released"
    assert not (lib / project.id / "r1" / "manifest.json").exists(), "nothing published"

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    # With PREFECT_API_URL set, the run does not claim to start a temporary API.
    assert "server in PREFECT_API_URL" in rerun.stdout and "ephemeral" not in rerun.stdout
    manifest = json.loads((lib / project.id / "r1" / "manifest.json").read_text())
    assert manifest["objects"]


@pytest.mark.prefect
def test_an_archive_down_for_good_ends_the_run_in_one_error_line_without_tracebacks(
    small_dir: SynthReport, project: Project, tmp_path: Path, ridl_home: Path
) -> None:
    """Indexed while the archive answered, run after it went away: the retries are spent, and
    the console shows ridl's one error line, with the command that resumes, and no traceback
    from Prefect's task and flow logs (flows.prefect_console)."""
    from tests.orthanc import Orthanc, dicom_files, require_orthanc

    server = Orthanc(require_orthanc(), tmp_path / "down")
    with server:
        server.upload(dicom_files(small_dir.files))
        url = server.dimse_url("get")
        index = CliRunner().invoke(app, ["dir", "index", url])
        assert index.exit_code == 0, index.stderr
    lib = tmp_path / "lib"
    args = [sys.executable, "-m", "flows.cli", "run", "--project", project.id, "--release",
            "r1", "--source", url, "--dest", f"file:{lib}", "--retries", "0"]  # fmt: skip
    env = dict(os.environ, RIDL_HOME=str(ridl_home), PYTHONPATH=os.getcwd())
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "ERROR" not in output, output[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr[-3000:]
    assert "ridl run --project" in " ".join(run.stderr.split()), run.stderr[-3000:]


def test_a_folder_changed_since_it_was_indexed_is_warned_about(
    small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    """A study folder added under a site folder after indexing: the dry run and the run's
    selection warn that the catalog is older than the folder, naming --reindex."""
    import shutil

    root = tmp_path / "dir"
    shutil.copytree(small_dir.root, root)
    args = ["run", "--project", project.id, "--release", "r1", "--source", f"folder:{root}",
            "--dest", f"file:{tmp_path / 'lib'}", "--dry-run"]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.stderr
    assert "warning:" not in first.stderr, "just indexed: nothing changed"
    study = next(p.parent for p in root.rglob("*.dcm"))
    shutil.copytree(study, study.parent / "added-later")
    later = CliRunner().invoke(app, args)
    assert later.exit_code == 0, later.stderr
    said = " ".join(later.stderr.split())
    assert "warning: the source folder changed since it was indexed" in said, said
    assert "--reindex" in said
    fresh = CliRunner().invoke(app, [*args, "--reindex"])
    assert fresh.exit_code == 0 and "warning:" not in fresh.stderr, fresh.stderr
