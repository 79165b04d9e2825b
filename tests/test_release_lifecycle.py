"""The release lifecycle as a research office lives it: reruns, concurrent runs, withdrawals,
empty runs, one name per destination, and PHI at rest under RIDL_HOME (issue 15)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import flows.extract
from curation.labels import export_worklist, store_label_rows
from export.local import LocalStore
from export.manifest import build_manifest, read_summary
from export.release import publish_release
from flows.cli import app
from flows.gate import verify_release
from flows.runplan import prepare_run, recipe_sha256
from flows.work import process_batch
from ridl import settings
from ridl.catalog import study_refs
from ridl.errors import EmptyRelease
from ridl.projects import Project, create_project
from ridl.releases import load_frozen, load_withdrawn, lock_holder, lock_path, release_lock
from ridl.synth import SynthReport, synthesize
from tests.curation_data import set_section
from tests.export_support import run_and_publish


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> SynthReport:
    return synthesize(tmp_path_factory.mktemp("small-dir"), patients=4, sites=3, seed=3)


@pytest.fixture
def no_prefect(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt to start the flow (none of these runs may get that far)."""
    started: list[str] = []
    monkeypatch.setattr(flows.extract, "extract_run", lambda **kw: started.append("flow"))
    return started


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return " ".join(lines[0].split())


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _run_args(project: str, release: str, source: str, dest: str, *more: str) -> list[str]:
    return ["run", "--project", project, "--release", release, "--source", source,
            "--dest", dest, *more]  # fmt: skip


# --- 1. a rerun of a published release; two runs at once; what the gate searches ----------------


def test_rerun_of_a_published_release_is_a_no_op_that_says_so(
    small_dir: SynthReport, project: Project, tmp_path: Path, no_prefect: list[str]
) -> None:
    dest = f"file:{tmp_path / 'lib'}"
    source = f"folder:{small_dir.root}"
    run_and_publish(project.id, "r1", source, dest)
    before = _snapshot(tmp_path / "lib")
    code, out, err = _cli(*_run_args(project.id, "r1", source, dest))
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "already published" in lines[0], out
    assert err.strip() == "" and no_prefect == []
    assert _snapshot(tmp_path / "lib") == before, "nothing re-gated, nothing written"

    # The scope widened since (an amendment): the same command is still a no-op, although the
    # modalities it leaves to the scope now differ from the frozen ones.
    widened = [*project.scope.modalities, "MR"]
    args = [a for m in widened for a in ("--modality", m)]
    code, out, err = _cli("project", "update", project.id, *args, "--reb-amendment", "AM-1")
    assert code == 0, err
    code, out, err = _cli(*_run_args(project.id, "r1", source, dest))
    assert code == 0 and "already published" in out, out + err
    # Asking for another modality explicitly is asking for another release.
    code, out, err = _cli(*_run_args(project.id, "r1", source, dest, "--modality", "MR"))
    assert code == 2 and "modalities" in _one_error_line(err)
    assert _snapshot(tmp_path / "lib") == before


def test_a_second_run_of_a_running_release_is_refused_by_its_lock(
    small_dir: SynthReport, project: Project, tmp_path: Path, no_prefect: list[str]
) -> None:
    dest = f"file:{tmp_path / 'lib'}"
    source = f"folder:{small_dir.root}"
    prepare_run(project.id, "r1", source, dest)  # a run that started (selection frozen)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = lock_path(project.id, "r1")
        path.write_text(
            json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "x"})
        )
        code, out, err = _cli(*_run_args(project.id, "r1", source, dest))
        assert code == 2
        line = _one_error_line(err)
        assert f"process {other.pid}" in line and "run.lock" in line, line
        assert no_prefect == []
        with (
            pytest.raises(Exception, match="is being run by process"),
            release_lock(project.id, "r1"),
        ):
            pass
    finally:
        other.kill()
        other.wait()
    # The holder is gone: its lock is stale, and is taken over.
    assert lock_holder(project.id, "r1") is None and not path.exists()
    with release_lock(project.id, "r1"):
        assert lock_holder(project.id, "r1")["pid"] == os.getpid()  # type: ignore[index]
        with release_lock(project.id, "r1"):  # the flow inside the CLI's run: re-entrant
            pass
        assert path.exists()
    assert not path.exists()


def test_the_gate_searches_deidentified_data_not_the_office_metadata(
    small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    # The README's example: the PI shares a family name with a patient of the DIR.
    family = small_dir.registrations[0].person.family
    project = replace(project, id="tremblay-lab", pi=f"Dr. A. {family}")
    create_project(project)
    dest = f"file:{tmp_path / 'lib'}"
    run_and_publish(project.id, "r1", f"folder:{small_dir.root}", dest)
    prefix = tmp_path / "lib" / project.id / "r1"
    assert family in (prefix / "dataset_description.json").read_text()
    labels = pa.Table.from_pylist([{"research_study_id": "RS-X-1", "assignee": f"J. {family}"}])
    sink = io.BytesIO()
    pq.write_table(labels, sink)
    (prefix / "labels.parquet").write_bytes(sink.getvalue())
    report = verify_release(project.id, "r1", dest, ocr=False)
    assert report.passed, [h.key for h in report.hits]
    assert report.objects_checked > 0


# --- 2. a withdrawal recorded before a run ------------------------------------------------------


LABELS = {"fields": [{"name": "finding", "type": "choice", "values": ["normal", "abnormal"]}]}


def test_a_withdrawn_subject_is_excluded_at_selection_and_left_out_everywhere(
    small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    set_section(project.id, "labels", LABELS)
    root = tmp_path / "lib"
    dest = f"file:{root}"
    source = f"folder:{small_dir.root}"
    run_and_publish(project.id, "r1", source, dest)
    m1 = json.loads((root / project.id / "r1" / "manifest.json").read_text())
    gone = sorted({o["research_id"] for o in m1["objects"]})[0]
    code, out, err = _cli("release", "withdraw", "--project", project.id,
                          "--research-id", gone.lower())  # fmt: skip
    assert code == 0, err
    assert load_withdrawn(project.id) == {gone}, "accepted whatever the letter case"

    plan = prepare_run(project.id, "r2", source, dest)
    from ridl.pseudonyms import Pseudonymizer, SubjectKey
    from ridl.secrets import load_secret

    keys = Pseudonymizer(load_secret(project.id))
    ids = {
        keys.research_id(SubjectKey(s.health_number, s.issuer, s.patient_id)) for s in plan.studies
    }
    assert gone not in ids, "never retrieved, de-identified or written"
    # Their studies in r1's selection (a study of theirs may have exported nothing in r1).
    frozen_r1 = load_frozen(project.id, "r1")
    assert frozen_r1 is not None
    n_gone = sum(
        keys.research_id(SubjectKey(s.health_number, s.issuer, s.patient_id)) == gone
        for s in study_refs(frozen_r1[1])
    )
    process_batch(plan.ctx, plan.studies)
    store = LocalStore(root)
    build_manifest(store, f"{project.id}/r2", len(plan.studies), project.id, "r2")
    summary = read_summary(store, f"{project.id}/r2")
    assert summary["excluded"].get("withdrawn") == n_gone, summary["excluded"]
    assert summary["subjects"] == len({o["research_id"] for o in m1["objects"]}) - 1
    assert not [p for p in (root / project.id / "r2").rglob("*.dcm") if gone in str(p)]
    publish_release(store, project.id, "r2", recipe_sha256=recipe_sha256(project.recipe_spec()))

    # Worklists of the old and the new release leave the subject out; labels are refused.
    for release in ("r1", "r2"):
        out_path, n = export_worklist(
            store, project.id, release, "Reader", tmp_path / f"{release}.csv"
        )
        sheet = pd.read_csv(out_path, dtype=str)
        assert not sheet["research_study_id"].str.startswith(gone + "-").any(), release
    from curation.labels import release_studies, research_study_id

    study = next(o["study_uid"] for o in m1["objects"] if o["research_id"] == gone)
    rsid = research_study_id(gone, study)
    assert rsid in set(
        release_studies(store, project.id, "r1", include_withdrawn=True)["research_study_id"]
    )
    report = store_label_rows(
        store, project.id, "r1", [(2, {"research_study_id": rsid, "assignee": "Reader",
                                       "finding": "normal"})], source="import",
    )  # fmt: skip
    assert report.errors and "withdrew" in report.errors[0][1]
    # Retracted from r1 on publishing r2; no empty folder is left behind.
    assert not [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]


def test_a_withdrawal_recorded_mid_run_is_removed_at_publish_and_not_counted(
    small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    """The subject withdraws after the run worked their studies and before it publishes: the
    objects are removed at publish, and summary.json (and what the CLI prints from it) counts
    what the release holds, the removed objects under ``withdrawn``; a publish killed after the
    summary was rewritten and run again gives the same summary."""
    root = tmp_path / "lib"
    store = LocalStore(root)
    source = f"folder:{small_dir.root}"
    run_and_publish(project.id, "r1", source, f"file:{root}")
    m1 = json.loads((root / project.id / "r1" / "manifest.json").read_text())
    plan = prepare_run(project.id, "r2", source, f"file:{root}")
    process_batch(plan.ctx, plan.studies)
    before = build_manifest(store, f"{project.id}/r2", len(plan.studies), project.id, "r2")
    gone = sorted({o["research_id"] for o in m1["objects"]})[0]
    code, _, err = _cli("release", "withdraw", "--project", project.id, "--research-id", gone)
    assert code == 0, err
    recipe = recipe_sha256(project.recipe_spec())
    publish_release(store, project.id, "r2", recipe_sha256=recipe)
    summary = read_summary(store, f"{project.id}/r2")
    m2 = json.loads((root / project.id / "r2" / "manifest.json").read_text())
    kept = m2["objects"]
    assert kept and all(o["research_id"] != gone for o in kept)
    assert summary["instances_exported"] == len(kept) < before["instances_exported"]
    assert summary["subjects"] == len({o["research_id"] for o in kept}) == before["subjects"] - 1
    assert summary["studies_exported"] == len({o["study_uid"] for o in kept})
    assert summary["bytes_exported"] == sum(o["size"] for o in kept)
    assert sum(summary["by_modality"].values()) == len(kept)
    removed = before["instances_exported"] - len(kept)
    assert summary["excluded"]["withdrawn"] == removed
    assert "withdrawn" not in summary.get("excluded_studies", {}), "instances, not studies"
    assert summary["withdrawn_at_publish"] == {
        "instances": removed,
        "studies": before["studies_exported"] - len({o["study_uid"] for o in kept}),
    }
    # The signed summary is the rewritten one (SHA256SUMS covers it).
    sums = (root / project.id / "r2" / "SHA256SUMS").read_text()
    digest = hashlib.sha256((root / project.id / "r2" / "summary.json").read_bytes()).hexdigest()
    assert f"{digest}  summary.json" in sums
    # Idempotent: rewriting again from the same partitions changes nothing.
    from export.release import _count_withdrawal

    entries = [
        json.loads(p.read_text())
        for p in sorted((root / project.id / "r2").rglob("*.published.json"))
    ]
    assert entries and all(e["withdrawn_excluded"] >= 0 for e in entries)
    _count_withdrawal(store, f"{project.id}/r2", entries)
    assert read_summary(store, f"{project.id}/r2") == summary


def test_a_withdrawal_recorded_mid_run_is_left_out_before_the_end_stages_count(
    small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    """The flow's withdraw stage, before the manifest: the part loses the subject's objects
    (counted as withdrawn instances), the objects leave the store, and manifest, summary and
    report are built without them; publishing then removes nothing more."""
    from flows.extract import withdraw_stage

    root = tmp_path / "lib"
    store = LocalStore(root)
    source = f"folder:{small_dir.root}"
    plan = prepare_run(project.id, "r1", source, f"file:{root}")
    process_batch(plan.ctx, plan.studies)
    assert withdraw_stage(plan.ctx) == 0, "nobody withdrew since the freeze: nothing to do"
    objects = [p for p in (root / project.id / "r1").rglob("*.dcm")]
    gone = sorted({p.relative_to(root / project.id / "r1").parts[0] for p in objects})[0]
    theirs = [p for p in objects if f"/{gone}/" in str(p)]
    code, _, err = _cli("release", "withdraw", "--project", project.id, "--research-id", gone)
    assert code == 0, err
    assert withdraw_stage(plan.ctx) == len(theirs) > 0
    assert not any(p.exists() for p in theirs)
    summary = build_manifest(store, f"{project.id}/r1", len(plan.studies), project.id, "r1")
    assert summary["instances_exported"] == len(objects) - len(theirs)
    assert summary["excluded"]["withdrawn"] == len(theirs)
    published = publish_release(
        store, project.id, "r1", recipe_sha256=recipe_sha256(project.recipe_spec())
    )
    assert published["withdrawn_excluded"] == 0, "nothing left for publish to remove"
    assert "withdrawn_at_publish" not in read_summary(store, f"{project.id}/r1")


def test_withdrawing_a_research_id_of_no_release_is_refused(
    small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    run_and_publish(project.id, "r1", f"folder:{small_dir.root}", f"file:{tmp_path / 'lib'}")
    code, out, err = _cli("release", "withdraw", "--project", project.id,
                          "--research-id", "RS-NOSUCHID0")  # fmt: skip
    assert code == 2
    assert "in no release" in _one_error_line(err)
    assert load_withdrawn(project.id) == set()


# --- 3. empty releases --------------------------------------------------------------------------


def test_an_empty_source_or_window_is_refused_before_prefect(
    small_dir: SynthReport, project: Project, tmp_path: Path, no_prefect: list[str]
) -> None:
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    dest = f"file:{tmp_path / 'lib'}"
    cases = [
        (f"folder:{empty}", ()),
        (f"folder:{small_dir.root}", ("--from", "2015-01-01", "--to", "2015-01-02")),
    ]
    for source, window in cases:
        code, out, err = _cli(*_run_args(project.id, "r1", source, dest, *window))
        assert code == 2, out
        line = _one_error_line(err)
        assert "would be empty" in line and "--allow-empty" in line, line
        assert load_frozen(project.id, "r1") is None and no_prefect == []
        assert not (settings.releases_dir() / project.id / "r1").exists(), "no empty folder"
    assert not (tmp_path / "lib" / project.id).exists(), "nothing written to the store"


def test_an_empty_release_is_never_the_previous_release(
    small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    dest = f"file:{tmp_path / 'lib'}"
    source = f"folder:{small_dir.root}"
    run_and_publish(project.id, "r1", source, dest)
    with pytest.raises(EmptyRelease):
        prepare_run(
            project.id, "r2", source, dest, date_from=_d("2015-01-01"), date_to=_d("2015-01-02")
        )
    plan = prepare_run(project.id, "r2", source, dest, date_from=_d("2015-01-01"),
                       date_to=_d("2015-01-02"), allow_empty=True)  # fmt: skip
    assert plan.studies == []
    store = LocalStore(tmp_path / "lib")
    build_manifest(store, f"{project.id}/r2", 0, project.id, "r2")
    spec = recipe_sha256(project.recipe_spec())
    assert publish_release(store, project.id, "r2", recipe_sha256=spec)["objects"] == 0
    r3 = run_and_publish(project.id, "r3", source, dest)
    assert r3["previous_release"] == "r1"


def _d(text: str):  # type: ignore[no-untyped-def]
    import datetime as dt

    return dt.date.fromisoformat(text)


# --- 4. one release name, one destination -------------------------------------------------------


def test_a_release_is_bound_to_its_destination(
    small_dir: SynthReport, project: Project, tmp_path: Path, no_prefect: list[str]
) -> None:
    source = f"folder:{small_dir.root}"
    first, second = f"file:{tmp_path / 'a'}", f"file:{tmp_path / 'b'}"
    run_and_publish(project.id, "r1", source, first)
    code, out, err = _cli(*_run_args(project.id, "r1", source, second))
    assert code == 2
    line = _one_error_line(err)
    assert f"destination: frozen {first}, asked {second}" in line, line
    assert no_prefect == [] and not (tmp_path / "b" / project.id).exists()


# --- 11. PHI at rest ----------------------------------------------------------------------------


def _loose(home: Path) -> list[str]:
    found = []
    for path in [home, *home.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir() and mode != 0o700 or path.is_file() and mode != 0o600:
            found.append(f"{oct(mode)} {path.relative_to(home)}")
    return found


def test_everything_under_ridl_home_is_owner_only_whatever_the_umask(
    small_dir: SynthReport, ridl_home: Path, tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        from tests.conftest import make_project

        project = make_project("umask-lab")
        code, _, err = _cli("optout", "add", "--project", project.id, "--hn", "9999999999")
        assert code == 0, err
        # Library calls too (a worker, a deployment): catalogs, frozen selections, quarantine.
        plan = prepare_run(project.id, "r1", f"folder:{small_dir.root}", f"file:{tmp_path / 'lib'}")
        process_batch(plan.ctx, plan.studies[:2])
        code, _, err = _cli("dir", "index", f"folder:{small_dir.root}")
        assert code == 0, err
    finally:
        os.umask(old)
    assert (settings.quarantine_dir() / project.id).exists(), "the synthetic DIR has junk files"
    assert _loose(ridl_home) == []
