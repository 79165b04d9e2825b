"""Publishing releases to the S3 server: contents, signature, immutability, retractions."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from export.manifest import read_manifest
from export.release import publish_release, show_release
from export.s3 import S3Store
from export.signing import SignatureError, signing_key_path, verify
from flows.runplan import recipe_sha256
from ridl.errors import ReleaseError
from ridl.projects import Project
from ridl.releases import load_withdrawn, record_withdrawal
from ridl.synth import SynthReport, synthesize
from tests.conftest import require_program
from tests.export_support import make_bucket, run_and_publish, s3_url
from tests.s3server import MotoServer


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> SynthReport:
    return synthesize(tmp_path_factory.mktemp("small-dir"), patients=4, sites=3, seed=3)


def test_published_release_holds_signed_manifest_sums_and_description(
    s3_env: MotoServer, small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    url = s3_url(s3_env.url)
    store = make_bucket(url)
    assert isinstance(store, S3Store)
    result = run_and_publish(project.id, "r1", f"folder:{small_dir.root}", url)
    assert result["objects"] > 0 and not result["already_published"]
    prefix = f"{project.id}/r1"
    names = {
        o.key[len(prefix) + 1 :]
        for o in store.list(prefix + "/")
        if "/" not in o.key[len(prefix) + 1 :]
    }
    assert {
        "manifest.parquet",
        "manifest.csv",
        "summary.json",
        "manifest.json",
        "manifest.json.sig",
        "SHA256SUMS",
        "s5cmd-commands.txt",
        "dataset_description.json",
        "release-signing.pub",
        "RELEASE_NOTES.md",
    } <= names
    assert "retractions.json" not in names, "a first release has nothing to retract"

    manifest_bytes = store.get_bytes(f"{prefix}/manifest.json")
    signature = store.get_bytes(f"{prefix}/manifest.json.sig").decode()
    public = store.get_bytes(f"{prefix}/release-signing.pub")
    verify(public, manifest_bytes, signature)
    with pytest.raises(SignatureError):
        verify(public, manifest_bytes.replace(b'"r1"', b'"r2"'), signature)
    assert stat.S_IMODE(signing_key_path().stat().st_mode) == 0o600
    assert public.decode() in store.get_bytes(f"{prefix}/RELEASE_NOTES.md").decode()

    manifest = json.loads(manifest_bytes)
    frame = read_manifest(store, prefix)
    assert [o["path"] for o in manifest["objects"]] == [k[len(prefix) + 1 :] for k in frame["key"]]
    assert manifest["storage"]["bucket"] == store.bucket
    assert manifest["storage"]["prefix"] == f"library/{prefix}"

    description = json.loads(store.get_bytes(f"{prefix}/dataset_description.json"))
    assert description["EthicsApprovals"] == [project.reb_number]
    assert description["Authors"] == [project.pi]
    assert description["GeneratedBy"][0]["Name"] == "ridl"
    assert description["GeneratedBy"][0]["RecipeHash"].startswith("sha256:")
    assert description["License"] and description["HowToAcknowledge"]

    commands = store.get_bytes(f"{prefix}/s5cmd-commands.txt").decode().splitlines()
    listed = {line.split()[-1] for line in commands}
    assert len(commands) == len(frame) + len(manifest["files"]) + 2  # + the manifest and its .sig
    assert {"SHA256SUMS", "manifest.json", "manifest.json.sig", "RELEASE_NOTES.md"} <= listed
    first_path = json.loads(manifest_bytes)["objects"][0]["path"]
    assert commands[0] == f"cp s3://{store.bucket}/library/{prefix}/{first_path} {first_path}"

    # SHA256SUMS checks with the real sha256sum against a copy of the release.
    sha256sum = require_program("sha256sum")
    mirror = tmp_path / "mirror"
    for info in store.list(prefix + "/"):
        rel = info.key[len(prefix) + 1 :]
        if rel.startswith("parts/"):
            continue
        target = mirror / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get_bytes(info.key))
    check = subprocess.run(
        [sha256sum, "-c", "--strict", "SHA256SUMS"], cwd=mirror, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(frame) + 5  # + description, key, tables, summary
    first = manifest["objects"][0]["path"]
    (mirror / first).write_bytes(b"changed")
    check = subprocess.run([sha256sum, "-c", "SHA256SUMS"], cwd=mirror, capture_output=True)
    assert check.returncode != 0

    header = show_release(url, project.id, "r1")
    assert header["counts"]["objects"] == len(frame) and "objects" not in header


def test_a_published_release_cannot_be_overwritten(
    s3_env: MotoServer, small_dir: SynthReport, project: Project
) -> None:
    url = s3_url(s3_env.url)
    store = make_bucket(url)
    first = run_and_publish(project.id, "r1", f"folder:{small_dir.root}", url)
    before = store.get_bytes(f"{project.id}/r1/manifest.json")
    again = publish_release(
        url, project.id, "r1", recipe_sha256=recipe_sha256(project.recipe_spec())
    )
    assert again["already_published"] and again["objects"] == first["objects"]
    assert store.get_bytes(f"{project.id}/r1/manifest.json") == before

    # Change the release's manifest behind ridl's back: publishing is refused.
    from export.release import _write_manifest_tables

    frame = read_manifest(store, f"{project.id}/r1")
    _write_manifest_tables(store, f"{project.id}/r1", frame.iloc[1:])
    with pytest.raises(ReleaseError, match="already published"):
        publish_release(url, project.id, "r1", recipe_sha256=recipe_sha256(project.recipe_spec()))
    assert store.get_bytes(f"{project.id}/r1/manifest.json") == before

    from typer.testing import CliRunner

    from flows.cli import app

    cli = CliRunner()
    refused = cli.invoke(
        app, ["release", "publish", "--project", project.id, "--release", "r1", "--dest", url]
    )
    assert refused.exit_code == 2 and "already published" in refused.output
    shown = cli.invoke(
        app, ["release", "show", "--project", project.id, "--release", "r1", "--dest", url]
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["counts"]["objects"] == first["objects"]


def test_second_release_retracts_withdrawn_subjects_and_late_iocm_rejections(
    s3_env: MotoServer, project: Project, tmp_path: Path
) -> None:
    report = synthesize(tmp_path / "dir", patients=4, sites=3, seed=3)
    kos = next(report.root.rglob("kos.dcm"))
    held = tmp_path / "kos.dcm"
    shutil.move(kos, held)  # the rejection note has not reached the DIR yet
    url = s3_url(s3_env.url)
    store = make_bucket(url)
    source = f"folder:{report.root}"
    r1 = run_and_publish(project.id, "r1", source, url)
    m1 = json.loads(store.get_bytes(f"{project.id}/r1/manifest.json"))
    rejected_series = report.rejected_series[0]
    # r1 holds the series the PACS later rejects (its UIDs are remapped, so find it by count).
    by_series: dict[str, list[dict[str, str]]] = {}
    for obj in m1["objects"]:
        by_series.setdefault(obj["series_uid"], []).append(obj)
    from ridl.pseudonyms import Pseudonymizer
    from ridl.secrets import load_secret

    rejected_uid = Pseudonymizer(load_secret(project.id)).uid(rejected_series)
    rejected_objects = by_series[rejected_uid]
    assert rejected_objects, "r1 published the series before its rejection note arrived"

    shutil.move(held, kos)  # the rejection note arrives
    subjects = sorted({o["research_id"] for o in m1["objects"]})
    withdrawn = next(s for s in subjects if s != rejected_objects[0]["research_id"])
    assert record_withdrawal(project.id, withdrawn)
    from typer.testing import CliRunner

    from flows.cli import app

    again = CliRunner().invoke(
        app, ["release", "withdraw", "--project", project.id, "--research-id", withdrawn]
    )
    assert again.exit_code == 0 and "already recorded" in again.output
    assert load_withdrawn(project.id) == {withdrawn}
    with pytest.raises(ReleaseError):
        record_withdrawal(project.id, "MRN000123")

    r2 = run_and_publish(project.id, "r2", source, url, reindex=True)
    assert r2["previous_release"] == "r1"
    withdrawn_in_r1 = [o for o in m1["objects"] if o["research_id"] == withdrawn]
    assert r2["retracted"] == len(withdrawn_in_r1) + len(rejected_objects)
    # The new release leaves them out at selection (issue 15): nothing of theirs was written,
    # so publishing has nothing to remove; the summary counts their studies as withdrawn.
    assert r2["withdrawn_excluded"] == 0
    r2_summary = json.loads(store.get_bytes(f"{project.id}/r2/summary.json"))
    assert r2_summary["excluded"]["withdrawn"] == len({o["study_uid"] for o in withdrawn_in_r1})

    retractions = json.loads(store.get_bytes(f"{project.id}/r2/retractions.json"))
    assert retractions["previous_release"] == "r1"
    reasons = {(r["path"], r["reason"]) for r in retractions["retracted"]}
    assert reasons == {(o["path"], "subject-withdrew") for o in withdrawn_in_r1} | {
        (o["path"], "iocm-rejected") for o in rejected_objects
    }
    for obj in withdrawn_in_r1 + rejected_objects:
        assert not store.exists(f"{project.id}/r1/{obj['path']}"), "retracted objects are deleted"
    kept = [o for o in m1["objects"] if o not in withdrawn_in_r1 and o not in rejected_objects]
    for obj in kept:
        assert store.exists(f"{project.id}/r1/{obj['path']}")
    m2 = json.loads(store.get_bytes(f"{project.id}/r2/manifest.json"))
    assert not {o["research_id"] for o in m2["objects"]} & {withdrawn}
    assert not {o["sop_uid"] for o in m2["objects"]} & {o["sop_uid"] for o in rejected_objects}
    changes = retractions["changes"]
    assert set(changes["removed"]) == {o["sop_uid"] for o in withdrawn_in_r1 + rejected_objects}
    assert changes["added"] == [] and changes["unchanged"] == len(kept)
    assert "retractions.json" in m2["files"]
    assert r1["objects"] == len(m1["objects"])
    for obj in m2["objects"]:
        data = store.get_bytes(f"{project.id}/r2/{obj['path']}")
        assert hashlib.sha256(data).hexdigest() == obj["sha256"]
    assert not any(
        phi in store.get_bytes(f"{project.id}/r2/retractions.json").decode()
        for phi in report.phi_strings()
    )

    # A researcher granted r1 now gets r1 without what was retracted, and is told so.
    from export.access import grant_access
    from export.pull import pull

    document = grant_access(url, project.id, "r1", "Researcher One", 1, presign=True)
    assert set(document["retracted"]) == {o["path"] for o in withdrawn_in_r1 + rejected_objects}
    grant = tmp_path / "grant.json"
    grant.write_text(json.dumps(document))
    pulled = pull(grant, tmp_path / "r1")
    assert pulled.failed == {} and pulled.retracted == len(withdrawn_in_r1 + rejected_objects)
    dataset = 2 * len(m1["partitions"]["list"])  # each partition's Parquet and SHA256SUMS
    assert pulled.fetched == len(kept) + len(m1["files"]) + dataset
    for obj in withdrawn_in_r1 + rejected_objects:
        assert not (tmp_path / "r1" / obj["path"]).exists()


@pytest.mark.prefect
def test_ridl_run_to_s3_end_to_end_then_pull(
    s3_env: MotoServer, small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    """`ridl run --dest s3://...`: the flow does not know which store it has."""
    from typer.testing import CliRunner

    from export.access import grant_access
    from export.pull import pull
    from flows.cli import app

    url = s3_url(s3_env.url)
    store = make_bucket(url)
    result = CliRunner().invoke(
        app,
        ["run", "--project", project.id, "--release", "r1", "--source",
         f"folder:{small_dir.root}", "--dest", url],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    prefix = f"{project.id}/r1"
    assert store.exists(f"{prefix}/manifest.json.sig"), "the flow published the release"
    frame = read_manifest(store, prefix)
    assert len(frame) > 0
    for row in frame.itertuples():
        assert hashlib.sha256(store.get_bytes(row.key)).hexdigest() == row.sha256

    grant = tmp_path / "grant.json"
    document = grant_access(url, project.id, "r1", "Researcher One", 1, presign=True)
    grant.write_text(json.dumps(document))
    report = pull(grant, tmp_path / "data")
    assert report.failed == {} and report.fetched == report.files
    for row in frame.itertuples():
        local = tmp_path / "data" / row.key[len(prefix) + 1 :]
        assert local.read_bytes() == store.get_bytes(row.key), "byte-identical after the pull"

    # Rerunning the finished release resumes (nothing to do) and leaves the publication alone.
    before = store.get_bytes(f"{prefix}/manifest.json")
    again = CliRunner().invoke(
        app,
        ["run", "--project", project.id, "--release", "r1", "--source",
         f"folder:{small_dir.root}", "--dest", url],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert store.get_bytes(f"{prefix}/manifest.json") == before


def test_local_store_release_pulls_with_its_signature_beside_it(
    small_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    from export.pull import pull

    root = tmp_path / "library"
    result = run_and_publish(project.id, "r1", f"folder:{small_dir.root}", f"file:{root}")
    report = pull(root / project.id / "r1" / "manifest.json", tmp_path / "data", layout="flat")
    assert report.failed == {} and report.fetched == result["objects"] + len(
        json.loads((root / project.id / "r1" / "manifest.json").read_text())["files"]
    )
    assert len(list((tmp_path / "data").glob("*.dcm"))) == result["objects"]
