"""The same flow on a Dask cluster (processes, one thread each) gives the local run's release.

Both runs are ``ridl run`` processes reporting to the session's Prefect server; the second only
adds ``--cluster``. The Dask workers get their own RIDL_HOME and the project secret through
``RIDL_SECRET_<ID>``: no disk is shared with the flow but the DIR (read) and the object store
(written), as on a real cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ridl.secrets import load_secret
from ridl.synth import synthesize

pytestmark = pytest.mark.prefect
RIDL = str(Path(sys.executable).with_name("ridl"))


def _dcm(store: Path, prefix: str) -> dict[str, bytes]:
    base = store / prefix
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in base.rglob("*.dcm")}


def _ridl_run(home: Path, api: str, source: str, store: Path, *extra: str) -> str:
    env = dict(os.environ, RIDL_HOME=str(home), PREFECT_API_URL=api)
    env.pop("RIDL_DASK_ADDRESS", None)
    done = subprocess.run(
        [RIDL, "run", "--project", "study-a", "--release", "r1", "--source", source,
         "--dest", f"file:{store}", "--batch-size", "2", *extra],
        env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout.decode()


def test_dask_cluster_run_gives_the_same_release_as_a_local_run(
    project,
    ridl_home: Path,
    tmp_path: Path,
    prefect_server: str,  # type: ignore[no-untyped-def]
) -> None:
    from distributed import LocalCluster

    # 6 patients (about 15 studies, a truncated file and one that is not DICOM), in batches of
    # 2: several batches per child flow run, and several child flow runs.
    source = f"folder:{synthesize(tmp_path / 'dir', patients=6, sites=3, seed=5).root}"
    local_store, dask_store = tmp_path / "local", tmp_path / "dask"
    # The Dask run's flow gets its own on-premises home with the same project and secret, so
    # both runs select and freeze the release from scratch.
    dask_home = tmp_path / "dask-home"
    shutil.copytree(ridl_home, dask_home)
    worker_home = tmp_path / "worker-home"
    worker_env = {
        "RIDL_HOME": str(worker_home),
        "RIDL_SECRET_" + project.id.upper().replace("-", "_"): load_secret(project.id).decode(),
        "PREFECT_API_URL": prefect_server,
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    _ridl_run(ridl_home, prefect_server, source, local_store, "--workers", "2")
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, env=worker_env
    ) as cluster:
        output = _ridl_run(
            dask_home, prefect_server, source, dask_store,
            "--cluster", cluster.scheduler_address, "--max-batches-per-flow", "2",
        )  # fmt: skip
        seen = cluster.get_client().run(lambda: os.environ["RIDL_HOME"])
    assert set(seen.values()) == {str(worker_home)}, "workers used their own home"
    assert "child flow runs" in output, "the selection was split into several child flow runs"
    prefix = f"{project.id}/r1"
    for name in ("manifest.parquet", "manifest.csv", "summary.json"):
        assert (local_store / prefix / name).read_bytes() == (
            dask_store / prefix / name
        ).read_bytes()
    objects = _dcm(dask_store, prefix)
    assert objects and objects == _dcm(local_store, prefix)
    # The workers, not the flow's machine, did the work: their home holds the quarantine.
    assert any((worker_home / "quarantine").rglob("*.bin"))
