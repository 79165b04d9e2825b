"""Indexing a folder DIR, selecting by scope, and freezing the selection of a release."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.runplan import prepare_run
from ridl.catalog import catalog_dir_for, select_studies
from ridl.errors import ReleaseError
from ridl.projects import Scope
from ridl.sources.folder import FolderSource


def test_index_builds_study_table_and_lists_unreadable(
    synth_dir,
    ridl_home: Path,  # type: ignore[no-untyped-def]
) -> None:
    src = FolderSource(synth_dir.root)
    catalog = catalog_dir_for(src.url)
    src.build_catalog(catalog, dt.date.min, dt.date.max)
    studies = pq.read_table(catalog / "studies.parquet").to_pandas()
    assert len(studies) == synth_dir.studies
    assert set(studies.columns) >= {"study_date", "modalities", "issuer", "n_series", "n_instances"}
    bad = pq.read_table(catalog / "unreadable.parquet").to_pylist()
    assert [b["reason"] for b in bad] == ["not-dicom"]
    # The truncated file still indexes (its header is whole): it is caught when read in full.
    instances = pq.read_table(catalog / "instances.parquet").to_pandas()
    assert any(p.endswith("cr_002.dcm") for p in instances["path"])


def test_selection_applies_dates_sites_and_modalities(
    synth_dir,
    ridl_home: Path,  # type: ignore[no-untyped-def]
) -> None:
    src = FolderSource(synth_dir.root)
    catalog = catalog_dir_for(src.url)
    src.build_catalog(catalog, dt.date.min, dt.date.max)
    scope = Scope(dt.date(2018, 1, 1), dt.date(2021, 12, 31), ("CR",), ("SITE-A", "SITE-B"))
    chosen = select_studies(catalog, scope)
    assert len(chosen) > 0
    assert chosen["study_date"].between("20180101", "20211231").all()
    assert set(chosen["issuer"]) <= {"SITE-A", "SITE-B"}
    assert all("CR" in list(m) for m in chosen["modalities"])


def test_frozen_selection_is_reused_and_guarded(
    synth_dir, project, ridl_home: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    store = f"file:{tmp_path / 'store'}"
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", store)
    assert not plan.resumed
    frozen = ridl_home / "releases" / project.id / "r1" / "selection.parquet"
    assert pq.ParquetFile(frozen).metadata.num_rows == len(plan.studies)
    again = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", store)
    assert again.resumed and again.studies == plan.studies
    with pytest.raises(ReleaseError, match="new --release"):
        prepare_run(project.id, "r1", f"folder:{synth_dir.root}", store, modalities=["CT"])
