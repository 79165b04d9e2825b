"""The release report renders its plots from a release, and carries counts only."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd

from export.local import LocalStore
from export.manifest import build_manifest, read_manifest, read_parts
from export.report import render_report, subjects_by_site_count, write_report
from flows.extract import Totals, write_run_log
from flows.runners import run_batch
from flows.runplan import prepare_run
from flows.work import worker_for


def test_report_renders_plots_from_a_release_and_names_nobody(
    synth_dir,
    project,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    store = LocalStore(tmp_path / "store")
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", store.url)
    started = time.time()
    totals = Totals()
    totals.add(run_batch(plan.ctx, plan.studies, retrieval_limit=2))
    write_run_log(plan.ctx, started, totals, 1)
    build_manifest(store, plan.ctx.prefix, len(plan.studies), project.id, "r1")
    worker = worker_for(plan.ctx)
    years = {worker.study_key(s): s.study_date[:4] for s in plan.studies}

    key = write_report(store, plan.ctx.prefix, years)
    page = store.get_bytes(key).decode()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 6, "six plots, embedded"
    for title in ("per year and modality", "Exclusions", "Quarantines", "number of sites"):
        assert title in page
    manifest = read_manifest(store, plan.ctx.prefix)
    # Counts by original year: the years of the selection label the bars, not shifted ones.
    for year in {s.study_date[:4] for s in plan.studies}:
        assert f">{year}<" in page
    # Safe to publish: no research ID, site, Patient ID, name or health number.
    for value in set(manifest["research_id"]) | set(project.scope.sites) | synth_dir.phi_strings():
        assert value not in page, "the report names nobody"
    assert str(len(manifest)) in page and "truncated" in page and "iocm-rejected" in page

    # The synthetic DIR has people seen at two sites, linked by their health number.
    distribution = subjects_by_site_count(manifest, read_parts(store, plan.ctx.prefix))
    assert distribution.get(2, 0) >= 1 and distribution.get(1, 0) >= 1
    assert sum(distribution.values()) == manifest["research_id"].nunique()


def test_report_of_an_empty_release_still_renders() -> None:
    empty = pd.DataFrame(columns=["key", "research_id", "study_uid", "modality", "study_date"])
    page = render_report({"project": "p", "release": "r"}, empty, [], [])
    assert page.count("<svg") == 6 and "nothing exported" in page


def test_throughput_ticks_are_times_not_identifiers() -> None:
    runs = [
        {
            "started_at": 0.0,
            "work_seconds": 2.0,
            "batches": [
                {"finished_at": 60.0, "instances": 10},
                {"finished_at": 120.0, "instances": 30},
            ],
        }
    ]
    page = render_report(
        {"project": "p", "release": "r"},
        pd.DataFrame(columns=["key", "research_id", "study_uid", "modality", "study_date"]),
        [],
        runs,
    )
    assert re.search(r"instances/s per worker.*?<td>20\.0</td>", page)


def test_progress_counts_studies_and_instances_from_parts(
    synth_dir,
    project,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from flows.progress import PartTally, selection_totals

    store = LocalStore(tmp_path / "store")
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", store.url)
    totals = selection_totals(project.id, "r1")
    assert totals is not None and totals[0] == len(plan.studies)
    tally = PartTally(store, plan.ctx.prefix)
    tally.refresh()
    assert (tally.studies, tally.instances) == (0, 0)
    counts = run_batch(plan.ctx, plan.studies[:5], retrieval_limit=1)
    tally.refresh()
    assert tally.studies == 5 and tally.instances == counts["instances"]
    tally.refresh()  # each part is read once
    assert tally.studies == 5
    run_batch(plan.ctx, plan.studies[5:], retrieval_limit=1)
    tally.refresh()
    assert tally.studies == totals[0]
    assert tally.instances <= totals[1]
