"""Crash safety: a run killed with SIGKILL at arbitrary points, then finished, gives the release
an uninterrupted run gives, byte for byte, with nothing duplicated, missing or half-written.

Each run is a real ``ridl run`` process (with its Prefect API and worker pool) in its own process
group; the whole group is killed, as a power cut or an OOM kill would.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ridl.synth import synthesize

pytestmark = pytest.mark.prefect
RIDL = str(Path(sys.executable).with_name("ridl"))


def _run_cmd(project: str, source: Path, store: Path) -> list[str]:
    return [
        RIDL, "run", "--project", project, "--release", "r1", "--source", f"folder:{source}",
        "--dest", f"file:{store}", "--batch-size", "2", "--workers", "2",
    ]  # fmt: skip


def _env(home: Path, api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["RIDL_HOME"] = str(home)
    env["PREFECT_API_URL"] = api_url
    env["PREFECT_LOGGING_LEVEL"] = "ERROR"
    return env


def _parts(store: Path, project: str) -> int:
    folder = store / project / "r1" / "parts"
    return sum(1 for p in folder.glob("*.json")) if folder.exists() else 0


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _files(store: Path, prefix: str, suffix: str) -> dict[str, bytes]:
    base = store / prefix
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in base.rglob(f"*{suffix}")}


def test_sigkill_several_times_then_resume_gives_the_uninterrupted_release(
    project,
    ridl_home: Path,
    tmp_path: Path,
    prefect_server: str,  # type: ignore[no-untyped-def]
) -> None:
    source = tmp_path / "dir"
    synthesize(source, patients=6, sites=3, seed=11, ct_slices=6)  # 15 studies
    # A second RIDL_HOME with the same project and secret, for the uninterrupted reference run.
    reference_home = tmp_path / "reference-home"
    shutil.copytree(ridl_home, reference_home)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    rng = random.Random(20261128)

    done = subprocess.run(
        _run_cmd(project.id, source, whole), env=_env(reference_home, prefect_server),
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    total = _parts(whole, project.id)
    assert total > 10

    # Kill points: once early (start-up, selection, freezing), then at growing shares of the
    # studies done, each plus a random delay so the kill lands anywhere inside a batch.
    kills = 0
    targets = [None, 0.2, 0.6]
    for target in targets:
        proc = subprocess.Popen(
            _run_cmd(project.id, source, killed), env=_env(ridl_home, prefect_server),
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 240
        if target is None:
            time.sleep(rng.uniform(1.0, 4.0))
        else:
            while _parts(killed, project.id) < target * total and time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            _kill_group(proc)
            kills += 1
    assert kills >= 2, "the run was killed mid-way several times"
    assert _parts(killed, project.id) < total, "the kills left the release unfinished"

    final = subprocess.run(
        _run_cmd(project.id, source, killed), env=_env(ridl_home, prefect_server),
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr.decode()[-3000:]
    assert "already done (resumed)" in final.stdout.decode()

    prefix = f"{project.id}/r1"
    for name in ("manifest.parquet", "manifest.csv", "summary.json"):
        assert (whole / prefix / name).read_bytes() == (killed / prefix / name).read_bytes(), name
    objects = _files(killed, prefix, ".dcm")
    assert objects == _files(whole, prefix, ".dcm"), "same objects, same bytes"
    manifest = pd.read_parquet(killed / prefix / "manifest.parquet")
    assert manifest["key"].is_unique and sorted(manifest["key"]) == sorted(objects)
    assert _parts(killed, project.id) == total
    hidden = [p for p in killed.rglob(".*") if p.is_file()]
    assert not hidden, "no half-written object is left"
    work = ridl_home / "work" / project.id / "r1"
    assert not work.exists() or not any(work.iterdir()), "working folders are cleaned"
