"""The researcher's pull client against the S3 server: verified, resumable, refuses bad input."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from export.access import grant_access
from export.pull import ChecksumMismatch, DiskFull, ExpiredGrant, PullError, pull
from export.s3 import S3Store
from export.safepath import UnsafePath
from export.signing import SignatureError, load_or_create_signing_key, sign
from export.store import open_store
from flows.cli import app
from ridl.projects import Project
from ridl.synth import SynthReport, synthesize
from tests.export_support import make_bucket, run_and_publish, s3_url
from tests.s3server import FaultyProxy, MotoServer

runner = CliRunner()


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> SynthReport:
    return synthesize(tmp_path_factory.mktemp("pull-dir"), patients=4, sites=3, seed=5)


@pytest.fixture
def published(
    s3_env: MotoServer, s3_proxy: FaultyProxy, small_dir: SynthReport, project: Project
) -> dict[str, Any]:
    """A published release, reached through the counting proxy."""
    url = s3_url(s3_proxy.url)
    store = make_bucket(url)
    assert isinstance(store, S3Store)
    run_and_publish(project.id, "r1", f"folder:{small_dir.root}", url)
    manifest = json.loads(store.get_bytes(f"{project.id}/r1/manifest.json"))
    s3_proxy.reset_counts()
    return {"url": url, "store": store, "manifest": manifest, "project": project, "proxy": s3_proxy}


def _presigned(published: dict[str, Any], tmp_path: Path, **kwargs: Any) -> Path:
    project = published["project"]
    document = grant_access(
        published["url"], project.id, "r1", project.recipients[0], 2, presign=True, **kwargs
    )
    path = tmp_path / "grant.json"
    path.write_text(json.dumps(document))
    published["proxy"].reset_counts()  # count only what the pull fetches
    return path


def _check_tree(dest: Path, published: dict[str, Any]) -> None:
    store: S3Store = published["store"]
    project = published["project"]
    for obj in published["manifest"]["objects"]:
        assert (dest / obj["path"]).read_bytes() == store.get_bytes(
            f"{project.id}/r1/{obj['path']}"
        ), "byte-identical to what was published"


def test_presigned_pull_is_byte_identical_and_verified(
    published: dict[str, Any], tmp_path: Path, s3_proxy: FaultyProxy
) -> None:
    grant = _presigned(published, tmp_path)
    dest = tmp_path / "data"
    report = pull(grant, dest, workers=4)
    objects = published["manifest"]["objects"]
    assert report.failed == {}
    dataset = 2 * len(published["manifest"]["partitions"]["list"])  # Parquet and SHA256SUMS each
    assert (
        report.fetched
        == report.files
        == len(objects) + len(published["manifest"]["files"]) + dataset
    )
    assert s3_proxy.gets("/") == report.files, "one GET per file"
    _check_tree(dest, published)
    assert (dest / "SHA256SUMS").exists() and (dest / "dataset_description.json").exists()
    assert (dest / ".ridl-pull" / "manifest.json").exists()

    again = pull(grant, dest, workers=4)
    assert again.fetched == 0 and again.skipped_verified == report.files


def test_layouts_place_files_by_uid_or_flat(published: dict[str, Any], tmp_path: Path) -> None:
    grant = _presigned(published, tmp_path)
    objects = published["manifest"]["objects"]
    pull(grant, tmp_path / "dicom", layout="dicom")
    for obj in objects:
        path = f"{obj['research_id']}/{obj['study_uid']}/{obj['series_uid']}/{obj['sop_uid']}.dcm"
        assert (tmp_path / "dicom" / path).stat().st_size == obj["size"]
    pull(grant, tmp_path / "flat", layout="flat")
    assert len(list((tmp_path / "flat").glob("*.dcm"))) == len(objects)
    with pytest.raises(PullError, match="same place"):
        pull(grant, tmp_path / "bad", layout="{research_id}.dcm")
    with pytest.raises(UnsafePath):
        pull(grant, tmp_path / "bad2", layout="../{sop_uid}.dcm")


def test_tampered_manifest_is_refused(published: dict[str, Any], tmp_path: Path) -> None:
    grant = _presigned(published, tmp_path)
    document = json.loads(grant.read_text())
    manifest = json.loads(document["manifest"])
    manifest["objects"][0]["sha256"] = "0" * 64
    document["manifest"] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(document))
    with pytest.raises(SignatureError, match="changed after the research office signed it"):
        pull(tampered, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is fetched or created"

    # A valid signature by another key is refused when the office's key is given.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from export.signing import public_pem

    office_key = public_pem(load_or_create_signing_key())
    other = Ed25519PrivateKey.generate()
    document["signature"] = sign(other, document["manifest"].encode())
    document["public_key"] = public_pem(other)
    resigned = tmp_path / "resigned.json"
    resigned.write_text(json.dumps(document))
    with pytest.raises(SignatureError):
        pull(resigned, tmp_path / "out", public_key=office_key)

    result = runner.invoke(app, ["pull", str(tampered), "--dest", str(tmp_path / "cli")])
    assert result.exit_code == 2
    assert "changed after the research office signed it" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_expired_presigned_manifest_fails_clearly(
    published: dict[str, Any], tmp_path: Path, s3_proxy: FaultyProxy
) -> None:
    grant = _presigned(published, tmp_path, expires_in_seconds=1)
    time.sleep(1.5)
    with pytest.raises(ExpiredGrant, match="ask the research office for a new grant"):
        pull(grant, tmp_path / "out")
    assert s3_proxy.gets("/") == 0, "refused before any download"
    result = runner.invoke(app, ["pull", str(grant), "--dest", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "expired" in result.output


def test_interrupted_pull_resumes_without_refetching_verified_files(
    published: dict[str, Any], tmp_path: Path, s3_proxy: FaultyProxy
) -> None:
    grant = _presigned(published, tmp_path)
    dest = tmp_path / "data"
    done: list[str] = []

    def stop_half_way(path: str) -> None:
        done.append(path)
        if len(done) == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull(grant, dest, workers=1, on_file_done=stop_half_way)
    assert len(done) >= 8  # a download already running when the interrupt came may finish
    # A half-written file (a kill mid-download) is fetched again, not trusted.
    victim = published["manifest"]["objects"][-1]["path"]
    (dest / victim).parent.mkdir(parents=True, exist_ok=True)
    (dest / victim).write_bytes(b"half")

    report = pull(grant, dest, workers=4)
    assert report.skipped_verified == len(done) and report.failed == {}
    assert report.fetched == report.files - len(done)
    for path in done:
        assert s3_proxy.gets(path) == 1, "verified files are never fetched again"
    assert s3_proxy.gets(victim) == 1
    _check_tree(dest, published)


def test_checksum_mismatch_is_retried_once_then_reported(
    published: dict[str, Any], tmp_path: Path, s3_proxy: FaultyProxy
) -> None:
    store: S3Store = published["store"]
    project = published["project"]
    victim = published["manifest"]["objects"][0]["path"]
    store.client.put_object(
        Bucket=store.bucket, Key=store.s3_key(f"{project.id}/r1/{victim}"), Body=b"replaced"
    )
    grant = _presigned(published, tmp_path)
    report = pull(grant, tmp_path / "data", workers=2)
    assert list(report.failed) == [victim]
    assert "SHA-256 does not match" in report.failed[victim]
    assert report.retried == 1 and s3_proxy.gets(victim) == 2
    assert not (tmp_path / "data" / victim).exists(), "a bad file is never left in place"
    assert report.fetched == report.files - 1
    result = runner.invoke(app, ["pull", str(grant), "--dest", str(tmp_path / "data")])
    assert result.exit_code == 1 and "SHA-256 does not match" in " ".join(result.output.split())
    assert issubclass(ChecksumMismatch, PullError)


def test_full_disk_is_refused_before_starting(
    published: dict[str, Any], tmp_path: Path, s3_proxy: FaultyProxy
) -> None:
    grant = _presigned(published, tmp_path)
    with pytest.raises(DiskFull, match="not enough space"):
        pull(grant, tmp_path / "data", keep_free=10**18)
    assert s3_proxy.gets("/") == 0


def test_paths_never_leave_dest(published: dict[str, Any], tmp_path: Path) -> None:
    grant = _presigned(published, tmp_path)
    dest = tmp_path / "data"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    first = published["manifest"]["objects"][0]["path"].split("/")[0]
    (dest / first).symlink_to(outside)
    with pytest.raises(UnsafePath, match="symlink"):
        pull(grant, dest)
    assert list(outside.iterdir()) == []

    # A manifest signed by the office but naming a path that climbs out is refused too.
    document = json.loads(grant.read_text())
    manifest = json.loads(document["manifest"])
    manifest["objects"][0]["path"] = "../../escaped.dcm"
    text = json.dumps(manifest)
    document.update(manifest=text, signature=sign(load_or_create_signing_key(), text.encode()))
    document["urls"]["../../escaped.dcm"] = next(iter(document["urls"].values()))
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(document))
    with pytest.raises(UnsafePath):
        pull(evil, tmp_path / "d2")
    assert not (tmp_path / "escaped.dcm").exists()


def test_pull_with_credentials_and_cli_summary(published: dict[str, Any], tmp_path: Path) -> None:
    store: S3Store = published["store"]
    project = published["project"]
    folder = tmp_path / "release"
    folder.mkdir()
    for name in ("manifest.json", "manifest.json.sig", "release-signing.pub"):
        (folder / name).write_bytes(store.get_bytes(f"{project.id}/r1/{name}"))
    result = runner.invoke(
        app, ["pull", str(folder / "manifest.json"), "--dest", str(tmp_path / "data")]
    )
    assert result.exit_code == 0, result.output
    assert "fetched and verified" in result.output and "ed25519:" in result.output
    _check_tree(tmp_path / "data", published)
    # The pulled folder reads as the store does: the dataset and its per-partition checks.
    assert len(pd.read_parquet(tmp_path / "data" / "manifest")) == len(
        published["manifest"]["objects"]
    )
    checked = subprocess.run(
        ["sha256sum", "-c", "partitions/bucket=000/SHA256SUMS"],
        cwd=tmp_path / "data", capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    signature = (folder / "manifest.json.sig").read_text()
    raw = bytearray(base64.b64decode(signature))
    raw[0] ^= 1
    (folder / "manifest.json.sig").write_text(base64.b64encode(bytes(raw)).decode())
    with pytest.raises(SignatureError):
        pull(folder / "manifest.json", tmp_path / "again")
    assert open_store(published["url"]).url == published["url"]


def test_pull_retries_server_errors_and_dropped_connections(
    published: dict[str, Any], tmp_path: Path, s3_proxy: FaultyProxy
) -> None:
    from tests.s3server import FaultPlan

    grant = _presigned(published, tmp_path)
    s3_proxy.reset_counts(FaultPlan(status={1: 503, 5: 500, 6: 502}, drop_before={3, 9}))
    report = pull(grant, tmp_path / "data", workers=2)
    assert s3_proxy.faults == 5 and report.failed == {}
    assert report.fetched == report.files
    _check_tree(tmp_path / "data", published)
    s3_proxy.reset_counts()


def test_a_cohort_grant_is_pulled_as_a_cohort_and_refuses_partitions_it_lacks(
    s3_env: MotoServer,
    small_dir: SynthReport,
    project: Project,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A grant of one partition: pulled whole, the summary counts the cohort (not the
    release); asked for another partition, one error names what the grant covers."""
    monkeypatch.setenv("RIDL_MANIFEST_PARTITION_ROWS", "10")
    monkeypatch.setenv("RIDL_SMALL_RELEASE_OBJECTS", "0")
    url = s3_url(s3_env.url)
    make_bucket(url)
    run_and_publish(project.id, "r1", f"folder:{small_dir.root}", url)
    index = json.loads(open_store(url).get_bytes(f"{project.id}/r1/manifest.json"))
    filled = [e["bucket"] for e in index["partitions"]["list"] if e["rows"]]
    assert len(index["partitions"]["list"]) > 1 and filled  # research IDs are keyed: any bucket
    granted = filled[0]
    other = next(e["bucket"] for e in index["partitions"]["list"] if e["bucket"] != granted)
    document = grant_access(
        url, project.id, "r1", project.recipients[0], 2, presign=True, partitions=[granted]
    )
    grant = tmp_path / "grant.json"
    grant.write_text(json.dumps(document))
    objects = sum(1 for path in document["urls"] if path.endswith(".dcm"))
    assert objects > 0
    report = pull(grant, tmp_path / "p1")
    assert report.failed == {} and report.selected == objects
    result = runner.invoke(app, ["pull", str(grant), "--dest", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "files in the cohort" in result.output and "files in release" not in result.output
    with pytest.raises(PullError, match=rf"covers partition\(s\) {granted} only"):
        pull(grant, tmp_path / "p0", partitions=[other])
    assert not (tmp_path / "p0").exists(), "--dest left as it was found"
