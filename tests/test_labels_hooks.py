"""A site package registers a labeling hook and a curation check through entry points only."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curation.checks import Policy, load_checks
from curation.labels import read_labels
from curation.pipeline import Curator
from export.local import LocalStore
from flows.cli import app
from flows.runplan import prepare_run
from flows.work import process_batch
from tests.curation_data import header, set_section

HOOK_CODE = '''
"""A site's pre-labels: every CT is 'abnormal'; one row names a study that does not exist."""

from curation.checks import PASS, check, exclude


def prelabel(studies, schema):
    assert "finding" in schema.names
    rows = []
    for study in studies:
        if "CT" in study.modality.split("/"):
            rows.append({"research_study_id": study.research_study_id, "finding": "abnormal"})
    rows.append({"research_study_id": "RID-NOT-THERE", "finding": "normal"})
    rows.append({"research_study_id": studies[0].research_study_id, "finding": "weird"})
    return rows


@check("site-no-cr")
def no_cr(obj):
    return exclude("site-policy-cr") if obj.header.get("Modality") == "CR" else PASS
'''


@pytest.fixture
def site_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package installed only by putting it and its *.dist-info on sys.path."""
    root = tmp_path / "site-packages"
    (root / "ridl_site_hooks").mkdir(parents=True)
    (root / "ridl_site_hooks" / "__init__.py").write_text(HOOK_CODE)
    info = root / "ridl_site_hooks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ridl-site-hooks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [ridl.labeling_hooks]
            site-prelabels = ridl_site_hooks:prelabel

            [ridl.curation_checks]
            site-no-cr = ridl_site_hooks:no_cr
            """
        )
    )
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop("ridl_site_hooks", None)


def test_a_site_check_runs_without_editing_ridl(site_package: Path, synth_dir) -> None:  # type: ignore[no-untyped-def]
    (chk,) = load_checks(["site-no-cr"])
    curator = Curator("study-a", "r1", Policy(checks=("integrity", "site-no-cr")))
    cr = next(p for p in synth_dir.files if p.name == "cr_001.dcm")
    hdr = header(cr)
    result = curator.curate(cr, hdr, curator.study([hdr]), "k")
    assert (chk.name, result.action, result.reason) == ("site-no-cr", "exclude", "site-policy-cr")


def test_hook_rows_are_validated_and_marked_with_their_source(  # type: ignore[no-untyped-def]
    site_package: Path, synth_dir, project, tmp_path: Path
) -> None:
    set_section(
        project.id,
        "labels",
        {"fields": [{"name": "finding", "type": "choice", "values": ["normal", "abnormal"]}]},
    )
    store = LocalStore(tmp_path / "store")
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", store.url)
    process_batch(plan.ctx, plan.studies)
    result = CliRunner().invoke(
        app,
        ["labels", "hooks", "--project", project.id, "--release", "r1", "--dest", store.url]
        + ["--hook", "site-prelabels"],
    )
    out = " ".join(result.output.split())
    assert result.exit_code == 1, "the hook's bad rows are reported"
    assert "unknown study 'RID-NOT-THERE'" in out and "'weird' is not one of" in out
    labels = read_labels(store, project.id, "r1")
    assert len(labels) > 0
    assert set(labels["source"]) == {"hook:site-prelabels"}
    assert set(labels["assignee"]) == {"hook:site-prelabels"}
    assert set(labels["finding"]) == {"abnormal"}
    missing = CliRunner().invoke(
        app,
        ["labels", "hooks", "--project", project.id, "--release", "r1", "--dest", store.url]
        + ["--hook", "nope"],
    )
    assert missing.exit_code == 2 and "not installed" in missing.output
