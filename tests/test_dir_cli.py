"""`ridl dir index` says what it found; `ridl dir synth` never writes into a non-empty folder
(issue 15, "what users expected")."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from flows.cli import app
from ridl.catalog import catalog_dir_for
from ridl.sources.folder import FolderSource
from ridl.synth import SynthReport

runner = CliRunner()


def test_dir_index_prints_years_sites_and_modalities_without_phi(
    synth_dir: SynthReport, ridl_home: Path
) -> None:
    result = runner.invoke(app, ["dir", "index", f"folder:{synth_dir.root}"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    studies = pq.read_table(
        catalog_dir_for(FolderSource(synth_dir.root).url) / "studies.parquet"
    ).to_pylist()
    instances = sum(s["n_instances"] for s in studies)
    assert f"catalog of {synth_dir.studies} studies ({instances} instances)" in text
    years = sorted(int(s["study_date"][:4]) for s in studies)
    assert f"study dates: {years[0]} to {years[-1]}" in text
    sites = {s["issuer"] for s in studies}
    site_counts = ", ".join(
        f"{site} {sum(s['issuer'] == site for s in studies)}" for site in sorted(sites)
    )
    assert f"sites (studies): {site_counts}" in text
    ct = sum("CT" in s["modalities"] for s in studies)
    assert "modalities (studies): " in text and f"CT {ct}" in text
    for value in synth_dir.phi_strings():
        assert value not in result.output
    for study in studies:  # never a full study date either
        assert study["study_date"] not in result.output


def test_dir_index_of_a_folder_without_dicom_says_what_to_check(
    tmp_path: Path, ridl_home: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    result = runner.invoke(app, ["dir", "index", f"folder:{empty}"])
    assert result.exit_code == 0, result.output
    assert "catalog of 0 studies" in result.output and "no DICOM study found" in result.output


def test_dir_synth_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    (target / "mine.txt").write_text("the researcher's own file")
    args = ["dir", "synth", str(target), "--patients", "2", "--sites", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "is not empty" in result.output
    assert [p.name for p in target.iterdir()] == ["mine.txt"], "nothing written"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = runner.invoke(app, ["dir", "synth", str(a_file)])
    assert result.exit_code == 2 and "is not a folder" in result.output

    fresh = tmp_path / "fresh"
    fresh.mkdir()  # an empty folder is fine, and so is a new one
    assert runner.invoke(app, ["dir", "synth", str(fresh), "--patients", "2"]).exit_code == 0
    assert (
        runner.invoke(app, ["dir", "synth", str(tmp_path / "new"), "--patients", "2"]).exit_code
        == 0
    )
