"""The same flow on a Dask cluster (processes, one thread each) gives the local run's release.

The Dask workers get their own RIDL_HOME and the project secret through ``RIDL_SECRET_<ID>``:
no disk is shared with the flow but the DIR (read) and the object store (written), and they
report to the session's Prefect server, as workers of a real cluster do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ridl.secrets import load_secret

pytestmark = pytest.mark.prefect


def _dcm(store: Path, prefix: str) -> dict[str, bytes]:
    base = store / prefix
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in base.rglob("*.dcm")}


def test_dask_cluster_run_gives_the_same_release_as_a_local_run(
    synth_dir,
    project,
    ridl_home: Path,
    tmp_path: Path,
    prefect_server: str,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.extract import extract_run

    source = f"folder:{synth_dir.root}"
    # The Dask run gets its own on-premises home with the same project and secret, so both runs
    # select and freeze the release from scratch.
    dask_home = tmp_path / "dask-home"
    shutil.copytree(ridl_home, dask_home)
    local_store, dask_store = tmp_path / "local", tmp_path / "dask"
    worker_env = {
        "RIDL_HOME": str(tmp_path / "worker-home"),
        "RIDL_SECRET_" + project.id.upper().replace("-", "_"): load_secret(project.id).decode(),
        "PREFECT_API_URL": prefect_server,
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    # Dask workers read PREFECT_API_URL when they start (a real cluster: set it where the
    # workers are launched); without it each would start a temporary server of its own.
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        local = extract_run(
            project=project.id, release="r1", source=source, destination=f"file:{local_store}",
            batch_size=4, workers=2,
        )  # fmt: skip
        with LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
            env=worker_env,
        ) as cluster:  # fmt: skip
            monkeypatch.setenv("RIDL_DASK_ADDRESS", cluster.scheduler_address)
            monkeypatch.setenv("RIDL_HOME", str(dask_home))
            distributed = extract_run(
                project=project.id, release="r1", source=source,
                destination=f"file:{dask_store}", batch_size=4, max_batches_per_flow=2,
            )  # fmt: skip
            seen = cluster.get_client().run(lambda: __import__("os").environ["RIDL_HOME"])
    assert set(seen.values()) == {worker_env["RIDL_HOME"]}, "workers used their own home"
    assert distributed["flow_runs"] > 1, "the selection was split into several child flow runs"
    prefix = f"{project.id}/r1"
    for name in ("manifest.parquet", "manifest.csv", "summary.json"):
        assert (local_store / prefix / name).read_bytes() == (
            dask_store / prefix / name
        ).read_bytes()
    objects = _dcm(dask_store, prefix)
    assert objects and objects == _dcm(local_store, prefix)
    assert local["instances_exported"] == distributed["instances_exported"] == len(objects)
    # The workers, not the flow's process, did the work: their home holds the quarantine.
    assert any((tmp_path / "worker-home" / "quarantine").rglob("*.bin"))
