"""Checks that need no DICOM work end a run (or ``ridl deid``) in one ``error:`` line, exit 2,
before Prefect starts and before any object is read or copied to quarantine."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import flows.extract
from flows.cli import app
from flows.runplan import prepare_run
from ridl.releases import load_frozen


@pytest.fixture
def no_prefect(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt to start the flow (it must not happen in these tests)."""
    started: list[str] = []
    monkeypatch.setattr(flows.extract, "extract_run", lambda **kw: started.append("flow"))
    return started


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["run", *args])
    return result.exit_code, result.stdout, result.stderr


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


@pytest.mark.parametrize(
    ("source", "dest", "named"),
    [
        ("folder:", "file:{tmp}/lib", "--source"),
        ("folder:{tmp}/no-such-dir", "file:{tmp}/lib", "--source"),
        ("folder:{dir}", "file:", "--dest"),
    ],
)
def test_bad_source_or_destination_fails_before_prefect(
    source: str, dest: str, named: str, synth_dir, project, tmp_path: Path, no_prefect: list[str]
) -> None:  # type: ignore[no-untyped-def]
    fill = {"tmp": str(tmp_path), "dir": str(synth_dir.root)}
    code, out, err = _run(
        "--project", project.id, "--release", "r1",
        "--source", source.format(**fill), "--dest", dest.format(**fill),
    )  # fmt: skip
    assert code == 2
    assert named in _one_error_line(err)
    assert "starting Prefect" not in out and no_prefect == []
    assert load_frozen(project.id, "r1") is None, "nothing was selected or frozen"


def test_rerun_with_other_parameters_names_the_parameter_before_prefect(
    synth_dir, project, tmp_path: Path, no_prefect: list[str]
) -> None:  # type: ignore[no-untyped-def]
    source = f"folder:{synth_dir.root}"
    prepare_run(project.id, "r1", source, f"file:{tmp_path / 'lib'}", modalities=["CT"])
    code, out, err = _run(
        "--project", project.id, "--release", "r1", "--source", source,
        "--dest", f"file:{tmp_path / 'lib'}", "--modality", "CR",
    )  # fmt: skip
    assert code == 2
    line = _one_error_line(err)
    assert "modalities: frozen CT, asked CR" in line, line
    assert no_prefect == []


def test_deid_into_a_file_fails_before_any_object_is_read(
    synth_dir, project, tmp_path: Path, ridl_home: Path
) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    result = CliRunner().invoke(
        app, ["deid", str(synth_dir.root), str(blocker / "out"), "--project", project.id]
    )
    assert result.exit_code == 2
    assert "is not a folder" in _one_error_line(result.stderr)
    assert not (ridl_home / "quarantine").exists(), "no source object was copied anywhere"


def test_deid_with_an_unknown_project_fails_before_work(synth_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        app, ["deid", str(synth_dir.root), str(tmp_path / "out"), "--project", "nope"]
    )
    assert result.exit_code == 2
    assert "nope" in _one_error_line(result.stderr)


def test_verify_of_a_store_without_the_release_is_an_error(project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        app,
        ["verify", "--project", project.id, "--release", "r1", "--dest", f"file:{tmp_path}"],
    )
    assert result.exit_code == 2
    assert "holds nothing of release" in _one_error_line(result.stderr)


def test_a_run_configures_prefect_before_anything_imports_it(
    synth_dir, project, ridl_home: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """``ridl run`` in a fresh process: Prefect's settings (home under RIDL_HOME, the long
    ephemeral start-up timeout) are in place by the time the flow would start."""
    import os
    import subprocess
    import sys

    script = f"""
import os, sys, types
from flows.cli import launch_run

def fake(**kw):
    from prefect.settings import get_current_settings
    s = get_current_settings()
    ok = str(s.home).startswith(os.environ["RIDL_HOME"]) and (
        s.server.ephemeral.startup_timeout_seconds >= 180
    )
    sys.exit(0 if ok else 3)

stand_in = types.ModuleType("flows.extract")  # the real one imports Prefect itself
stand_in.extract_run = fake
sys.modules["flows.extract"] = stand_in
launch_run({project.id!r}, "r1", "folder:{synth_dir.root}", "file:{tmp_path / "lib"}")
sys.exit(4)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_destination_that_cannot_be_a_folder_fails_before_prefect(
    synth_dir, project, tmp_path: Path, no_prefect: list[str]
) -> None:  # type: ignore[no-untyped-def]
    """A file where the store folder should be, or a folder that cannot be created: one error
    line naming --dest, and nothing left under RIDL_HOME for the release."""
    (tmp_path / "afile").write_text("hi\n")
    for dest in (f"file:{tmp_path / 'afile'}", f"file:{tmp_path / 'afile' / 'lib'}"):
        code, out, err = _run(
            "--project", project.id, "--release", "r1",
            "--source", f"folder:{synth_dir.root}", "--dest", dest,
        )  # fmt: skip
        assert code == 2, err
        assert "--dest" in _one_error_line(err)
        assert "starting Prefect" not in out and no_prefect == []
        assert load_frozen(project.id, "r1") is None


def test_checks_before_work_do_not_even_import_prefect(ridl_home: Path) -> None:
    """Importing Prefect alone takes seconds: a request refused before any work never pays it."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from flows.cli import app\n"
        "r = CliRunner().invoke(app, ['run', '--project', 'p', '--release', 'r1', '--source',\n"
        "                            'folder:/nowhere'])\n"
        "print(r.exit_code, 'prefect' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
