"""Source settings and archive protection: URL parsing, time window, rate, slots, retries."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from ridl.errors import ConfigError
from ridl.sources.base import open_source, parse_source_url
from ridl.sources.dicomweb import DicomwebSource
from ridl.sources.dimse import DimseSource
from ridl.sources.folder import FolderSource
from ridl.sources.protect import (
    ArchiveGuard,
    ArchiveLimits,
    ArchiveUnavailable,
    seconds_until_allowed,
)

runner = CliRunner()


def test_source_urls_choose_the_source(tmp_path: Path) -> None:
    assert isinstance(open_source(f"folder:{tmp_path}"), FolderSource)
    assert isinstance(open_source(str(tmp_path)), FolderSource)
    dimse = open_source(
        "dimse://DIR_QR@pacs.example:104?calling=RIDL&retrieval=move&move_port=11113"
    )
    assert isinstance(dimse, DimseSource)
    assert (dimse.called_aet, dimse.host, dimse.port) == ("DIR_QR", "pacs.example", 104)
    assert dimse.calling_aet == "RIDL" and dimse.retrieval == "move" and dimse.move_port == 11113
    web = open_source("dicomwebs://vna.example:443/dicom-web")
    assert isinstance(web, DicomwebSource)
    assert web.base_url == "https://vna.example:443/dicom-web"
    plain = open_source("dicomweb://127.0.0.1:8042/dicom-web/")
    assert isinstance(plain, DicomwebSource)
    assert plain.base_url == "http://127.0.0.1:8042/dicom-web"
    assert parse_source_url("dimse://A@h:1?calling=B").options == {"calling": "B"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://bucket/x", "scheme 's3' is not supported"),
        ("dimse://host:104", "must name the archive's AE"),
        ("dimse://AE@host", "needs a host and a port"),
        ("dimse://AE@host:104?retrieval=push", "'get' or 'move'"),
        ("dimse://AE@host:104?retrieval=move", "needs move_port"),
        ("dimse://AE@host:104?colour=red", "unknown --source option"),
        ("dimse://A_VERY_LONG_AE_TITLE_X@host:104", "1 to 16 characters"),
        ("dicomweb://user:secret@host:80/x", "must not carry a password"),
        ("dicomweb://host:80/x?page=0", "at least 1"),
    ],
)
def test_bad_source_settings_fail_naming_the_option(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--source|AE titles"):
        try:
            open_source(url)
        except ConfigError as exc:
            assert message in str(exc)
            raise


def test_allowed_hours_window_wraps_midnight() -> None:
    night = "19:00-07:00"
    assert seconds_until_allowed(night, dt.datetime(2026, 1, 5, 23, 0)) == 0
    assert seconds_until_allowed(night, dt.datetime(2026, 1, 5, 6, 59)) == 0
    assert seconds_until_allowed(night, dt.datetime(2026, 1, 5, 18, 0)) == 3600
    assert seconds_until_allowed(night, dt.datetime(2026, 1, 5, 7, 0)) == 12 * 3600
    assert seconds_until_allowed("01:00-05:00", dt.datetime(2026, 1, 5, 6, 0)) == 19 * 3600
    assert seconds_until_allowed(None, dt.datetime(2026, 1, 5, 12, 0)) == 0
    with pytest.raises(ConfigError, match="--allowed-hours"):
        ArchiveLimits(allowed_hours="evenings")


def test_guard_waits_for_the_window_before_asking(ridl_home: Path) -> None:
    now = [dt.datetime(2026, 1, 5, 17, 0)]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += dt.timedelta(seconds=seconds)

    guard = ArchiveGuard(
        ArchiveLimits(allowed_hours="19:00-07:00", rate_limit=0),
        "host:a",
        clock=lambda: now[0],
        sleep=sleep,
    )
    asked_at: list[dt.datetime] = []
    guard.call(lambda: asked_at.append(now[0]), "C-FIND")
    assert asked_at == [dt.datetime(2026, 1, 5, 19, 0)]
    assert slept == [600.0] * 12, "waits in steps, re-reading the clock"


def test_guard_retries_with_backoff_then_gives_up(ridl_home: Path) -> None:
    slept: list[float] = []
    guard = ArchiveGuard(
        ArchiveLimits(rate_limit=0, retries=3, backoff_s=1.0), "host:b", sleep=slept.append
    )
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ArchiveUnavailable("association aborted")
        return "ok"

    assert guard.call(flaky, "C-GET") == "ok"
    assert slept == [1.0, 2.0] and guard.refusals == 2

    def down() -> None:
        raise ArchiveUnavailable("association rejected")

    slept.clear()
    with pytest.raises(ArchiveUnavailable, match="C-GET: the archive refused or dropped 4"):
        guard.call(down, "C-GET")
    assert slept == [1.0, 2.0, 4.0]


def test_a_spare_slot_is_taken_only_when_free_and_its_attempt_never_waits(
    ridl_home: Path,
) -> None:
    now = [dt.datetime(2026, 1, 5, 20, 0)]
    guard = ArchiveGuard(
        ArchiveLimits(max_associations=2, rate_limit=0, allowed_hours="19:00-07:00"),
        "host:spare",
        clock=lambda: now[0],
    )
    got: list[bool] = []

    def helper() -> None:
        with guard.spare_slot() as held:
            got.append(held)
            if held:
                got.append(guard.attempt(lambda: True, "WADO-RS"))

    with guard.session():  # one slot of two: a helper gets the other
        thread = threading.Thread(target=helper)
        thread.start()
        thread.join()
        assert got == [True, True]
        with guard.slot():  # the session's own slot: no second one taken
            pass
        other = ArchiveGuard(ArchiveLimits(max_associations=2, rate_limit=0), "host:spare")
        with other.session():  # both slots taken (as by another process): no spare, no wait
            got.clear()
            started = time.monotonic()
            thread = threading.Thread(target=helper)
            thread.start()
            thread.join()
            assert got == [False] and time.monotonic() - started < 1.0
        # Outside the allowed hours an attempt is refused at once, for the session to wait.
        now[0] = dt.datetime(2026, 1, 5, 12, 0)
        with pytest.raises(ArchiveUnavailable, match="allowed hours"):
            guard.attempt(lambda: True, "WADO-RS")
    with pytest.raises(RuntimeError):
        guard.attempt(lambda: True, "WADO-RS")  # no slot held by this thread


def test_rate_limit_spaces_requests(ridl_home: Path) -> None:
    guard = ArchiveGuard(ArchiveLimits(rate_limit=20), "host:c")
    start = time.monotonic()
    for _ in range(5):
        guard.call(lambda: None, "QIDO-RS")
    assert time.monotonic() - start >= 4 / 20 * 0.9


def test_concurrency_cap_holds_across_processes(ridl_home: Path) -> None:
    """Another process holds the only slot: this one waits until it lets go."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from ridl.sources.protect import ArchiveGuard, ArchiveLimits\n"
            "g = ArchiveGuard(ArchiveLimits(max_associations=1), 'host:d')\n"
            "with g.slot():\n"
            "    print('held', flush=True)\n"
            "    sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    guard = ArchiveGuard(ArchiveLimits(max_associations=1), "host:d")
    got = threading.Event()

    def take() -> None:
        with guard.slot():
            got.set()

    thread = threading.Thread(target=take)
    thread.start()
    assert not got.wait(0.5), "the slot is held by the other process"
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert got.wait(10), "released slot is taken"
    thread.join()
    holder.wait(10)
    # Two slots: two holders at once.
    wide = ArchiveGuard(ArchiveLimits(max_associations=2), "host:e")
    with wide.slot(), wide.slot():
        pass


def test_run_help_shows_archive_protection_and_sources() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    for option in ("--max-associations", "--rate-limit", "--allowed-hours", "--retries"):
        assert option in result.output
    assert "dimse://" in result.output and "dicomweb" in result.output
    # On an 80-column terminal the source templates wrap between words, never inside one.
    narrow = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    words = narrow.output.split()
    for template in ("dimse://CALLED_AET@host:port?calling=AET",
                     "&retrieval=move&move_aet=AET&move_port=N);",
                     "dicomweb[s]://host:port/path"):  # fmt: skip
        assert template in words, narrow.output


def test_run_refuses_a_bad_source_before_prefect(project, ridl_home: Path) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(
        app,
        ["run", "--project", project.id, "--release", "r1", "--source", "dimse://host:104"],
    )
    assert result.exit_code == 2
    assert "must name the archive's AE" in result.output
    assert not (ridl_home / "prefect").exists(), "refused before Prefect started"


def test_run_refuses_c_move_with_several_local_workers_before_prefect(
    project,  # type: ignore[no-untyped-def]
    ridl_home: Path,
) -> None:
    move = "dimse://QR@127.0.0.1:1?calling=RIDL&retrieval=move&move_aet=RIDL&move_port=11999"
    result = runner.invoke(
        app,
        ["run", "--project", project.id, "--release", "r1", "--source", move, "--workers", "2"],
    )
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert said.startswith("error:") and "--workers 1" in said and "move_port 11999" in said
    assert "Traceback" not in result.output
    assert not (ridl_home / "prefect").exists(), "refused before Prefect started"
    assert not (ridl_home / "releases" / project.id / "r1").exists(), "nothing selected"
    # A dry run says so too: the run it previews would be refused.
    dry = runner.invoke(
        app,
        ["run", "--project", project.id, "--release", "r1", "--source", move, "--workers", "2",
         "--dry-run"],
    )  # fmt: skip
    assert dry.exit_code == 2 and "--workers 1" in " ".join(dry.output.split()), dry.output
