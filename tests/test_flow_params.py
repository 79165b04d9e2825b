"""Flow logic without Prefect's API: parameter validation, slicing, retry policy, DIR slots."""

from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.params import validate_params
from flows.runners import FileSlots
from flows.transient import is_transient
from ridl.errors import ConfigError, TransientError
from ridl.studies import StudyRef

BASE = {"project": "p", "release": "r1", "source": "folder:/x"}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"workers": 0}, "workers"),
        ({"retrieval_limit": -1}, "retrieval_limit"),
        ({"max_batches_per_flow": 0}, "max_batches_per_flow"),
        ({"cluster": "host:8786"}, "cluster"),
        ({"release": "../r1"}, "release"),
        ({"date_from": "2020-13-01"}, "date_from"),
        ({"unknown_option": 1}, "unknown_option"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(change: dict, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_params(**{**BASE, **change})
    assert f"parameter '{named}'" in str(err.value)


def test_dates_out_of_order_and_good_parameters() -> None:
    with pytest.raises(ConfigError, match="date_from is after date_to"):
        validate_params(**BASE, date_from="2021-01-01", date_to="2020-01-01")
    params = validate_params(**BASE, modalities=["ct"], cluster="tcp://10.0.0.5:8786")
    assert params.modalities == ["CT"] and params.resolved_cluster() == "tcp://10.0.0.5:8786"
    assert validate_params(**BASE).resolved_workers() >= 1


def test_cluster_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIDL_DASK_ADDRESS", "tcp://scheduler:8786")
    assert validate_params(**BASE).resolved_cluster() == "tcp://scheduler:8786"
    monkeypatch.setenv("RIDL_DASK_ADDRESS", "scheduler")
    with pytest.raises(ConfigError, match="RIDL_DASK_ADDRESS"):
        validate_params(**BASE)


def test_cli_refuses_bad_scale_options_before_any_work(project) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    common = ["run", "--project", project.id, "--release", "r1", "--source", "folder:/nowhere"]
    result = runner.invoke(app, [*common, "--batch-size", "0"])
    assert result.exit_code == 2 and "parameter 'batch_size'" in result.output
    result = runner.invoke(app, [*common, "--cluster", "not-an-address"])
    assert result.exit_code == 2 and "parameter 'cluster'" in result.output
    assert "Traceback" not in result.output
    # A cluster without a Prefect server its workers can reach is refused before any work (in a
    # process of its own: this session's flows report to the session's server).
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *common, "--cluster", "tcp://127.0.0.1:8786"],
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "PREFECT_API_URL" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def _study(uid: str, date: str) -> StudyRef:
    return StudyRef(uid, "SITE-A", "MRN1", None, date)


def test_large_selections_split_by_year_into_child_flow_runs() -> None:
    from flows.extract import batches, plan_slices

    studies = [_study(f"1.{i}", f"{2015 + i % 3}0101") for i in range(30)]
    assert [s.label for s in plan_slices(studies, 10, 3)] == ["all"]
    slices = plan_slices(studies, 2, 3)  # 6 studies per flow run; 10 studies a year
    assert [s.label for s in slices] == ["2015-1", "2015-2", "2016-1", "2016-2", "2017-1", "2017-2"]
    picked = [s.study_uid for part in slices for s in part.pick(studies)]
    assert sorted(picked) == sorted(s.study_uid for s in studies), "each study in one slice"
    assert all(len(part.pick(studies)) <= 6 for part in slices)
    assert [len(b) for b in batches(studies[:7], 3)] == [3, 3, 1]


def test_only_transient_failures_are_retried() -> None:
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(TransientError("DIR busy"))
    assert is_transient(OSError(errno.EHOSTUNREACH, "no route"))
    wrapped = RuntimeError("batch failed")
    wrapped.__cause__ = ConnectionRefusedError()
    assert is_transient(wrapped)
    assert not is_transient(ValueError("bug"))
    assert not is_transient(PermissionError(errno.EACCES, "denied"))
    assert not is_transient(ConfigError("missing secret"))


def _hold_slot(slots: FileSlots, log: str) -> None:
    with slots.slot():
        with open(log, "a") as handle:
            handle.write(f"in {time.monotonic()}\n")
        time.sleep(1.0)  # long enough that spawned holders overlap even on a loaded machine
        with open(log, "a") as handle:
            handle.write(f"out {time.monotonic()}\n")


def test_retrieval_slots_limit_processes_and_survive_a_kill(tmp_path: Path) -> None:
    slots = FileSlots(tmp_path / "locks", 2)
    log = str(tmp_path / "log")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hold_slot, args=(slots, log)) for _ in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    events = sorted(
        (float(t), kind)
        for kind, t in (line.split() for line in Path(log).read_text().split("\n") if line)
    )
    inside = peak = 0
    for _, kind in events:
        inside += 1 if kind == "in" else -1
        peak = max(peak, inside)
    assert peak == 2, "never more than retrieval_limit at once"
    # A holder killed with SIGKILL inside its slot gives the slot back.
    killed_log = tmp_path / "killed"
    holder = ctx.Process(target=_hold_slot, args=(FileSlots(tmp_path / "k", 1), str(killed_log)))
    holder.start()
    deadline = time.monotonic() + 30
    while not killed_log.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    holder.kill()
    holder.join()
    assert "out" not in killed_log.read_text(), "killed while holding the slot"
    with FileSlots(tmp_path / "k", 1).slot():
        pass


def test_the_resume_line_keeps_the_archive_protection_and_scale_options() -> None:
    import datetime as dt
    import shlex

    from flows.cli import resume_command
    from ridl.sources.protect import ArchiveLimits

    limits = ArchiveLimits(max_associations=1, rate_limit=2.5, allowed_hours="19:00-07:00")
    line = resume_command(
        "p", "r1", "dimse://QR@pacs:104?calling=RIDL", "file:/lib", dt.date(2016, 1, 1),
        modalities=["CT"], limits=limits, batch_size=50,
        scale={"workers": 4, "retrieval_limit": 4, "retry_failed": True, "audit_sample": None},
    )  # fmt: skip
    words = shlex.split(line)
    assert words[:2] == ["ridl", "run"]
    pairs = dict(zip(words[2::2], words[3::2], strict=False))
    assert (
        pairs["--source"] == "dimse://QR@pacs:104?calling=RIDL" and pairs["--from"] == "2016-01-01"
    )
    assert pairs["--allowed-hours"] == "19:00-07:00" and pairs["--max-associations"] == "1"
    assert pairs["--rate-limit"] == "2.5" and pairs["--batch-size"] == "50"
    assert pairs["--workers"] == "4" and words[-1] == "--retry-failed"
    # Defaults are left out: the line is the shortest that runs the same.
    assert "--retrieval-limit" not in words and "--retries" not in words
    assert "--audit-sample" not in words
    plain = resume_command("p", "r1", "folder:/dir", "file:/lib", limits=ArchiveLimits())
    assert shlex.split(plain) == [
        "ridl", "run", "--project", "p", "--release", "r1", "--source", "folder:/dir",
        "--dest", "file:/lib",
    ]  # fmt: skip


def test_a_run_outside_the_allowed_hours_says_until_when_it_waits() -> None:
    import datetime as dt

    from flows import cli
    from ridl.sources.protect import ArchiveLimits

    now = dt.datetime.now()
    start, end = now + dt.timedelta(hours=2), now + dt.timedelta(hours=3)
    window = f"{start:%H:%M}-{end:%H:%M}"
    with cli.console.capture() as captured:
        cli._say_when_allowed(
            "dimse://QR@pacs:104?calling=RIDL", ArchiveLimits(allowed_hours=window)
        )
        cli._say_when_allowed("folder:/dir", ArchiveLimits(allowed_hours=window))
        cli._say_when_allowed("dicomweb://pacs:80/dicom-web", ArchiveLimits())
    said = " ".join(captured.get().split())
    assert said.count("outside the allowed hours") == 1, said  # a folder is no archive
    assert f"before {start:%H:%M}" in said, said
    assert "(in 1 h 59 min)" in said or "(in 2 h 00 min)" in said, said
