"""The CLI's one error boundary: a RidlError from any command is one line on stderr, exit 2."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from ridl.errors import ReleaseError, RidlError

ROOT = Path(__file__).resolve().parents[1]
CLI_MODULES = ("flows/cli.py", "export/cli.py", "curation/cli.py")
MESSAGE = "the store refused [bold]this[/bold] (change: --dest)"  # brackets stay plain text


def _raise(exc: Exception) -> Callable[..., object]:
    """A stand-in that raises ``exc`` whatever it is called with."""

    def fail(*args: object, **kwargs: object) -> object:
        raise exc

    return fail


# (module attribute a command calls deep inside, the command line), one per CLI module
DEEP = [
    ("ridl.projects.list_projects", ["project", "list"]),
    ("export.release.show_release", ["release", "show", "--project", "p", "--release", "r1"]),
    ("ridl.projects.load_project", ["release", "publish", "--project", "p", "--release", "r1"]),
    ("curation.review.decide", ["review", "decide", "--project", "p", "--release", "r1", "abc",
                                "approve", "--reviewer", "me"]),
]  # fmt: skip


@pytest.mark.parametrize(("target", "argv"), DEEP, ids=[" ".join(a[:2]) for _, a in DEEP])
def test_ridl_error_is_one_line_and_exit_2(
    target: str, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target, _raise(ReleaseError(MESSAGE)))
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: {MESSAGE}"]
    assert result.stdout == ""


def test_command_failures_that_were_not_ridl_errors_go_through_the_boundary() -> None:
    missing = CliRunner().invoke(app, ["summary", "--project", "p", "--release", "r1"])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: no summary for p/r1 in ")
    assert len(missing.stderr.splitlines()) == 1
    argv = ["run", "--project", "p", "--release", "r1", "--source", "folder:/nowhere"]
    bad_date = CliRunner().invoke(app, [*argv, "--from", "2020-13-01"])
    assert bad_date.exit_code == 2
    assert bad_date.stderr.splitlines() == ["error: --from must be a date written YYYY-MM-DD"]


def test_usage_errors_keep_clicks_message_and_code() -> None:
    result = CliRunner().invoke(app, ["project", "show"])
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr and "error:" not in result.stderr


def test_unexpected_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ridl.projects.list_projects", _raise(RuntimeError("a bug")))
    result = CliRunner().invoke(app, ["project", "list"])
    assert isinstance(result.exception, RuntimeError)
    assert result.exit_code == 1 and "error:" not in result.stderr


def test_console_script_prints_one_line_and_exits_2(ridl_home: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RIDL_HOME=str(ridl_home))
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "project", "show", "no-such-project"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "no-such-project" in lines[0] and proc.stdout == ""


def _handled_errors(handler: ast.ExceptHandler) -> set[str]:
    nodes = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in nodes if n}


def test_commands_do_not_catch_ridl_errors_themselves() -> None:
    import ridl.errors

    ridl_errors = {
        name
        for name, value in vars(ridl.errors).items()
        if isinstance(value, type) and issubclass(value, RidlError)
    }
    found = []
    for rel in CLI_MODULES:
        tree = ast.parse((ROOT / rel).read_text())
        boundary = {
            id(node)
            for cls in ast.walk(tree)
            if isinstance(cls, ast.ClassDef) and cls.name == "RidlGroup"
            for node in ast.walk(cls)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "_fail":
                found.append(f"{rel}: a _fail helper")
            if (
                isinstance(node, ast.ExceptHandler)
                and id(node) not in boundary
                and _handled_errors(node) & ridl_errors
            ):
                found.append(f"{rel}:{node.lineno}: except {ast.unparse(node.type or node)}")
    assert found == [], "raise a RidlError and let flows.cli.RidlGroup report it"


def test_pydicom_never_prints_a_source_value(tmp_path: Path) -> None:
    """A header value pydicom finds invalid (a study date written 2001.02.03, as some archives
    hold it, read here from DICOM JSON as WADO-RS delivers it) is not quoted in a warning on
    the console once ridl is imported."""
    script = (
        "import ridl\n"
        "from pydicom import Dataset\n"
        "ds = Dataset.from_json({'00080020': {'vr': 'DA', 'Value': ['2001.02.03']},\n"
        "                        '00081030': {'vr': 'LO', 'Value': ['x' * 122]}})\n"
        "print(ds.StudyDate, len(ds.StudyDescription))\n"
        "open('"
        + str(tmp_path / "cut.dcm")
        + "', 'wb').write(b'\\0' * 128 + b'DICM' + b'\\2\\0')\n"
        "from pydicom import dcmread\n"
        "try:\n"
        "    dcmread('" + str(tmp_path / "cut.dcm") + "')\n"
        "except Exception:\n"
        "    pass\n"
        "ds.save_as('" + str(tmp_path / "o.dcm") + "', implicit_vr=False, little_endian=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "2001.02.03" not in proc.stderr and "Invalid value" not in proc.stderr, proc.stderr
    assert "exceeds the maximum length" not in proc.stderr, proc.stderr
    assert str(tmp_path) not in proc.stderr, "no file path either"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--full", "--sample", "3"], "--sample reads a sample back; --full reads every object"),
        (["--workers", "2"], "--workers sets the processes of --full; add --full or drop"),
        (["--dest", "bogus:/x"], "object store scheme 'bogus' is not supported; use file:PATH"),
    ],
)
def test_verify_refuses_options_it_would_ignore_in_one_line(
    extra: list[str],
    message: str,
    project,  # type: ignore[no-untyped-def]
) -> None:
    # Found by a fresh-user check: each was silently ignored (or, for a mistyped scheme, read
    # as a folder named "bogus:").
    result = CliRunner().invoke(app, ["verify", "--project", project.id, "--release", "r1", *extra])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"error: {message}")


def test_verify_names_a_project_that_does_not_exist(ridl_home: Path) -> None:
    result = CliRunner().invoke(app, ["verify", "--project", "nope", "--release", "r1"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: no project 'nope' in {ridl_home / 'projects'}; create it with "
        "`ridl project create` or set RIDL_HOME"
    ]
