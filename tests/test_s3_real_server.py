"""Against SeaweedFS, a production S3 server: what moto does not enforce, and the researcher's
clients (``s5cmd run``, ``aws s3 sync``, ``rclone``, ``ridl pull``) as the README shows them.

One SeaweedFS per module (``seaweed_server``) and one bucket with two published projects
(``published``), so the module costs two publishes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from export.access import grant_access
from export.pull import AccessRefused, pull
from export.s3 import S3Store
from flows.cli import app
from ridl.synth import SynthReport, synthesize
from tests.conftest import make_project, require_program
from tests.export_support import make_bucket, run_and_publish, s3_url
from tests.s3server import ADMIN_KEYS, FaultPlan, FaultyProxy, SeaweedServer, seaweed_server

__all__ = ["seaweed_server"]  # the module-scoped fixture, imported for this module

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> SynthReport:
    root = tmp_path_factory.mktemp("weed-dir")
    return synthesize(root, patients=2, sites=2, seed=13, ct_slices=1)


def _admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ADMIN_KEYS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ADMIN_KEYS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "RIDL_S3_ACCESS_KEY_ID",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def weed(monkeypatch: pytest.MonkeyPatch, seaweed_server: SeaweedServer) -> SeaweedServer:
    """Admin credentials for SeaweedFS in the usual AWS environment variables."""
    _admin_env(monkeypatch)
    return seaweed_server


@pytest.fixture(scope="module")
def published(
    seaweed_server: SeaweedServer, tiny_dir: SynthReport, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """Projects study-a and study-b, release r1 of each, published in one bucket: its URL."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _admin_env(monkeypatch)
        monkeypatch.setenv("RIDL_HOME", str(tmp_path_factory.mktemp("weed-home")))
        url = s3_url(seaweed_server.url)
        make_bucket(url)
        for project in ("study-a", "study-b"):
            make_project(project)
            run_and_publish(project, "r1", f"folder:{tiny_dir.root}", url)
        yield url


def _user(server: SeaweedServer, name: str) -> tuple[str, dict[str, str]]:
    """A new IAM user without any policy of its own: its ARN and boto3 key arguments."""
    iam = server.client("iam")
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    arn = iam.get_user(UserName=name)["User"]["Arn"]
    return arn, {
        "aws_access_key_id": key["AccessKeyId"],
        "aws_secret_access_key": key["SecretAccessKey"],
    }


def _code(call: Any) -> str:
    try:
        call()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "allowed"


def _copy_release_files(store: S3Store, prefix: str, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("manifest.json", "manifest.json.sig", "release-signing.pub"):
        (folder / name).write_bytes(store.get_bytes(f"{prefix}/{name}"))
    return folder / "manifest.json"


def test_bucket_policy_grant_confines_the_researcher(
    weed: SeaweedServer, published: str, ridl_home: Path, tmp_path: Path
) -> None:
    url = published
    store = S3Store.from_url(url)
    a = make_project("study-a")  # in this test's RIDL_HOME, for the grant's checks
    b = make_project("study-b")
    arn, keys = _user(weed, "researcher-one")
    late_arn, late_keys = _user(weed, "researcher-late")

    result = runner.invoke(
        app,
        ["access", "grant", "--project", a.id, "--release", "r1", "--researcher",
         "Researcher One", "--days", "30", "--dest", url, "--principal", arn,
         "--out", str(tmp_path / "grant.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    policy = json.loads((tmp_path / "grant.json").read_text())
    # A grant made three days ago for one day: it ended two days ago.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    expired = grant_access(store, a.id, "r1", "Researcher One", 1, now=past, principal=late_arn)
    merged = {"Version": "2012-10-17", "Statement": policy["Statement"] + expired["Statement"]}
    admin = weed.client("s3")
    admin.put_bucket_policy(Bucket=store.bucket, Policy=json.dumps(merged))
    time.sleep(0.5)  # the S3 gateway reloads bucket policies from the filer

    researcher = weed.client("s3", keys)
    release = store.s3_key(f"{a.id}/r1") + "/"
    a_key = release + "manifest.json"
    b_key = store.s3_key(f"{b.id}/r1/manifest.json")
    assert researcher.get_object(Bucket=store.bucket, Key=a_key)["Body"].read()
    listed = researcher.list_objects_v2(Bucket=store.bucket, Prefix=release)
    assert listed["KeyCount"] > 0
    assert all(o["Key"].startswith(release) for o in listed["Contents"])

    def listing(prefix: str) -> Any:
        return lambda: researcher.list_objects_v2(Bucket=store.bucket, Prefix=prefix)

    # Confined to the release: other projects' keys are neither listed nor read.
    assert _code(listing("")) == "AccessDenied"
    assert _code(listing(store.s3_key(b.id) + "/")) == "AccessDenied"
    assert _code(listing(store.s3_key(a.id) + "/")) == "AccessDenied"
    assert _code(lambda: researcher.get_object(Bucket=store.bucket, Key=b_key)) == "AccessDenied"
    # Read-only.
    put = lambda: researcher.put_object(Bucket=store.bucket, Key=release + "x", Body=b"x")  # noqa: E731
    assert _code(put) == "AccessDenied"
    assert _code(lambda: researcher.delete_object(Bucket=store.bucket, Key=a_key)) in (
        "AccessDenied"
    )
    assert store.exists(f"{a.id}/r1/manifest.json")
    # The expired grant is refused.
    late = weed.client("s3", late_keys)
    assert _code(lambda: late.get_object(Bucket=store.bucket, Key=a_key)) == "AccessDenied"
    assert _code(lambda: late.list_objects_v2(Bucket=store.bucket, Prefix=release)) == (
        "AccessDenied"
    )

    # The researcher pulls with their own keys and --endpoint-url; project B is refused at once.
    env = {"AWS_ACCESS_KEY_ID": keys["aws_access_key_id"]}
    env["AWS_SECRET_ACCESS_KEY"] = keys["aws_secret_access_key"]
    a_manifest = _copy_release_files(store, f"{a.id}/r1", tmp_path / "a-release")
    b_manifest = _copy_release_files(store, f"{b.id}/r1", tmp_path / "b-release")
    pulled = tmp_path / "pulled"
    result = runner.invoke(
        app, ["pull", str(a_manifest), "--dest", str(pulled), "--endpoint-url", weed.url], env=env
    )
    assert result.exit_code == 0, result.output
    assert (pulled / ".ridl-pull" / "manifest.json").exists()
    _check_sums(pulled)
    stolen = tmp_path / "stolen"
    result = runner.invoke(
        app, ["pull", str(b_manifest), "--dest", str(stolen), "--endpoint-url", weed.url], env=env
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "access denied" in errors[0], result.output
    assert "Traceback" not in result.output
    assert not stolen.exists(), "a refused pull leaves no folder behind"


def test_a_wrong_checksum_is_refused_by_the_server(weed: SeaweedServer) -> None:
    store = make_bucket(s3_url(weed.url))
    assert isinstance(store, S3Store)
    data = b"de-identified bytes"
    with pytest.raises(ClientError) as refused:
        store.put_stream(
            "p/r1/x.dcm", io.BytesIO(data), len(data), hashlib.sha256(b"x").hexdigest()
        )
    assert refused.value.response["Error"]["Code"] in ("BadDigest", "InvalidDigest")
    assert not store.exists("p/r1/x.dcm")
    assert store.put_stream(
        "p/r1/x.dcm", io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest()
    )
    assert store.get_bytes("p/r1/x.dcm") == data


def _check_sums(folder: Path) -> None:
    sha256sum = require_program("sha256sum")
    done = subprocess.run(
        [sha256sum, "-c", "--strict", "SHA256SUMS"], cwd=folder, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_s5cmd_aws_and_rclone_download_a_release_that_checks(
    weed: SeaweedServer, published: str, tmp_path: Path
) -> None:
    store = S3Store.from_url(published)
    prefix = "study-a/r1"
    env = dict(os.environ)

    # As the README says: s5cmd run s5cmd-commands.txt, then sha256sum -c SHA256SUMS.
    s5cmd = require_program("s5cmd")
    folder = tmp_path / "s5cmd"
    folder.mkdir()
    (folder / "s5cmd-commands.txt").write_bytes(store.get_bytes(f"{prefix}/s5cmd-commands.txt"))
    done = subprocess.run(
        [s5cmd, "--endpoint-url", weed.url, "run", "s5cmd-commands.txt"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    _check_sums(folder)
    for name in ("manifest.json", "manifest.json.sig", "RELEASE_NOTES.md"):
        assert (folder / name).exists()

    source = f"s3://{store.bucket}/{store.s3_key(prefix)}/"
    aws = require_program("aws")
    folder = tmp_path / "aws"
    done = subprocess.run(
        [aws, "--endpoint-url", weed.url, "s3", "sync", source, str(folder), "--only-show-errors"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    _check_sums(folder)

    # A cohort of subjects in one aws command, as the README shows: each subject's objects lie
    # under its research ID; the sums are checked for what was fetched.
    subjects = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("RS-"))
    cohort = tmp_path / "aws-cohort"
    include = ["--include", f"{subjects[0]}/*"]
    done = subprocess.run(
        [aws, "--endpoint-url", weed.url, "s3", "cp", "--recursive", source, str(cohort),
         "--exclude", "*", *include, "--include", "SHA256SUMS", "--only-show-errors"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    fetched = sorted(p.name for p in cohort.iterdir() if p.is_dir())
    assert len(subjects) > 1 and fetched == subjects[:1]
    checked = subprocess.run(
        [require_program("sha256sum"), "-c", "--ignore-missing", "--strict", "SHA256SUMS"],
        cwd=cohort, capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": OK") == sum(1 for p in cohort.rglob("*.dcm"))

    rclone = require_program("rclone")
    folder = tmp_path / "rclone"
    remote = {
        "RCLONE_CONFIG_LIB_TYPE": "s3",
        "RCLONE_CONFIG_LIB_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_LIB_ENDPOINT": weed.url,
        "RCLONE_CONFIG_LIB_ACCESS_KEY_ID": ADMIN_KEYS["aws_access_key_id"],
        "RCLONE_CONFIG_LIB_SECRET_ACCESS_KEY": ADMIN_KEYS["aws_secret_access_key"],
        "RCLONE_CONFIG": str(tmp_path / "rclone.conf"),
    }
    done = subprocess.run(
        [rclone, "copy", f"lib:{store.bucket}/{store.s3_key(prefix)}", str(folder)],
        env=env | remote,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    _check_sums(folder)


def test_pull_stops_at_the_first_refusal_and_retries_transient_errors(
    weed: SeaweedServer, published: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3Store.from_url(published)
    manifest = _copy_release_files(store, "study-a/r1", tmp_path / "release")
    proxy = FaultyProxy(weed.url).start()
    try:
        # Unknown keys: the server answers 403 to everything; one request, one error, no folder.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEY")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        proxy.reset_counts()
        dest = tmp_path / "refused"
        with pytest.raises(AccessRefused, match="refused your credentials"):
            pull(manifest, dest, workers=4, endpoint_url=proxy.url)
        assert proxy.count == 1
        assert not dest.exists()

        # AWS_ENDPOINT_URL is read too; a 503 and a dropped connection are retried.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ADMIN_KEYS["aws_access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ADMIN_KEYS["aws_secret_access_key"])
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proxy.reset_counts(FaultPlan(status={1: 503}, drop_before={3}))
        report = pull(manifest, tmp_path / "pulled", workers=4)
        assert report.failed == {} and report.fetched == report.files
        assert proxy.faults == 2
    finally:
        proxy.stop()
