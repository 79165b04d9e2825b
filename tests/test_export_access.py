"""Access grants: refused outside the REB approval, and enforced by the S3 server's IAM."""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from export.access import MAX_PRESIGN_DAYS, grant_access, reb_end
from export.pull import AccessRefused, pull
from export.s3 import S3Store
from flows.cli import app
from ridl.errors import ReleaseError, ScopeError
from ridl.synth import SynthReport, synthesize
from tests.conftest import make_project
from tests.export_support import make_bucket, run_and_publish, s3_url
from tests.s3server import MotoServer

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> SynthReport:
    return synthesize(tmp_path_factory.mktemp("access-dir"), patients=2, sites=2, seed=11)


def _policy_allows_list(policy: dict[str, Any], bucket: str, prefix: str) -> bool:
    """AWS's reading of our ListBucket statement: resource and s3:prefix StringLike."""
    for statement in policy["Statement"]:
        if statement["Action"] != "s3:ListBucket" or statement["Effect"] != "Allow":
            continue
        if statement["Resource"] != f"arn:aws:s3:::{bucket}":
            continue
        patterns = statement["Condition"]["StringLike"]["s3:prefix"]
        if any(fnmatch.fnmatchcase(prefix, p) for p in patterns):
            return True
    return False


def test_grants_are_refused_outside_the_approval(
    s3_env: MotoServer, tiny_dir: SynthReport, ridl_home: Path
) -> None:
    url = s3_url(s3_env.url)
    make_bucket(url)
    project = make_project("study-a")
    run_and_publish(project.id, "r1", f"folder:{tiny_dir.root}", url)
    with pytest.raises(ScopeError, match="not an approved recipient") as err:
        grant_access(url, project.id, "r1", "Someone Else", 3)
    assert err.value.field == "--researcher"
    with pytest.raises(ScopeError, match="7 days at most"):
        grant_access(url, project.id, "r1", "Researcher One", MAX_PRESIGN_DAYS + 1, presign=True)
    with pytest.raises(ReleaseError, match="not published"):
        grant_access(url, project.id, "r9", "Researcher One", 3)
    later = dt.datetime.combine(project.expires + dt.timedelta(days=2), dt.time(9), dt.UTC)
    with pytest.raises(ScopeError, match="expired"):
        grant_access(url, project.id, "r1", "Researcher One", 3, now=later)

    result = runner.invoke(
        app,
        ["access", "grant", "--project", project.id, "--release", "r1", "--researcher", "Nobody",
         "--days", "3", "--dest", url],
    )  # fmt: skip
    assert result.exit_code == 2 and "--researcher" in result.output
    assert "Traceback" not in result.output


def test_presigned_urls_end_with_the_reb_approval(
    s3_env: MotoServer, tiny_dir: SynthReport, ridl_home: Path
) -> None:
    url = s3_url(s3_env.url)
    make_bucket(url)
    today = dt.date.today()
    project = make_project("study-a", expires=today + dt.timedelta(days=2))
    run_and_publish(project.id, "r1", f"folder:{tiny_dir.root}", url)
    now = dt.datetime.now(dt.UTC)
    document = grant_access(url, project.id, "r1", "Researcher One", 7, presign=True, now=now)
    end = reb_end(project)
    expires_at = dt.datetime.fromisoformat(document["expires_at"])
    assert end - dt.timedelta(seconds=2) <= expires_at <= end, "the REB end, not 7 days"
    for link in document["urls"].values():
        query = parse_qs(urlsplit(link).query)
        seconds = int(query["X-Amz-Expires"][0])
        assert abs(seconds - (end - now).total_seconds()) <= 2
    short = grant_access(url, project.id, "r1", "Researcher One", 1, presign=True, now=now)
    assert dt.datetime.fromisoformat(short["expires_at"]) <= now + dt.timedelta(days=1)
    cohort = grant_access(
        url, project.id, "r1", "Researcher One", 1, presign=True, now=now, where="modality = 'CT'"
    )
    ct = sum(1 for path in cohort["urls"] if path.endswith(".dcm"))
    assert ct > 0
    with pytest.raises(ScopeError, match="selects no object"):  # a typo grants nothing
        grant_access(
            url, project.id, "r1", "Researcher One", 1, presign=True, where="modality = 'ct'"
        )
    # What each grant covers is on record, on premises and in the audit log.
    log = (ridl_home / "grants" / f"{project.id}.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in log] == ["presigned-manifest"] * 3
    scopes = [json.loads(line)["scope"] for line in log]
    assert [s["release"] for s in scopes] == ["whole", "whole", "cohort"]
    assert scopes[2]["where"] == "modality = 'CT'" and scopes[2]["objects"] == ct
    assert scopes[0]["objects"] == sum(1 for p in document["urls"] if p.endswith(".dcm")) > ct
    from ridl.audit import read_entries

    granted = [e for e in read_entries() if e["event"] == "access.granted"]
    assert [e["fields"]["scope"] for e in granted] == scopes
    refused = [e for e in read_entries() if e["event"] == "access.refused"]
    assert refused and "selects no object" in refused[-1]["fields"]["reason"]


def test_researcher_of_project_a_cannot_read_project_b(
    s3_env: MotoServer,
    tiny_dir: SynthReport,
    ridl_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = s3_url(s3_env.url)
    store = make_bucket(url)
    assert isinstance(store, S3Store)
    a = make_project("study-a")
    b = make_project("study-b")
    run_and_publish(a.id, "r1", f"folder:{tiny_dir.root}", url)
    run_and_publish(b.id, "r1", f"folder:{tiny_dir.root}", url)
    result = runner.invoke(
        app,
        ["access", "grant", "--project", a.id, "--release", "r1", "--researcher",
         "Researcher One", "--days", "30", "--dest", url, "--out", str(tmp_path / "p.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    policy = json.loads((tmp_path / "p.json").read_text())

    iam = boto3.client("iam", endpoint_url=s3_env.url, region_name="us-east-1")
    iam.create_user(UserName="researcher-one")
    iam.put_user_policy(
        UserName="researcher-one", PolicyName="ridl-study-a-r1", PolicyDocument=json.dumps(policy)
    )
    key = iam.create_access_key(UserName="researcher-one")["AccessKey"]
    iam.create_user(UserName="nobody")
    nobody_key = iam.create_access_key(UserName="nobody")["AccessKey"]
    a_key = store.s3_key(f"{a.id}/r1/manifest.json")
    b_key = store.s3_key(f"{b.id}/r1/manifest.json")
    a_obj = store.s3_key(f"{a.id}/r1/dataset_description.json")
    b_obj = store.s3_key(f"{b.id}/r1/dataset_description.json")
    release = tmp_path / "b-release"
    release.mkdir()
    for name in ("manifest.json", "manifest.json.sig", "release-signing.pub"):
        (release / name).write_bytes(store.get_bytes(f"{b.id}/r1/{name}"))

    def client(access: dict[str, str]) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=s3_env.url,
            region_name="us-east-1",
            aws_access_key_id=access["AccessKeyId"],
            aws_secret_access_key=access["SecretAccessKey"],
        )

    researcher = client(key)
    s3_env.set_auth(True)  # IAM enforcement on: every request is checked against policies
    try:
        assert researcher.get_object(Bucket=store.bucket, Key=a_key)["Body"].read()
        assert researcher.get_object(Bucket=store.bucket, Key=a_obj)["Body"].read()
        listed = researcher.list_objects_v2(
            Bucket=store.bucket, Prefix=store.s3_key(a.id + "/r1") + "/"
        )
        assert listed["KeyCount"] > 0
        for other in (b_key, b_obj):
            with pytest.raises(ClientError) as denied:
                researcher.get_object(Bucket=store.bucket, Key=other)
            assert denied.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError) as denied:
            researcher.put_object(Bucket=store.bucket, Key=store.s3_key(f"{a.id}/r1/x"), Body=b"x")
        assert denied.value.response["Error"]["Code"] == "AccessDenied", "read only"
        with pytest.raises(ClientError):
            client(nobody_key).get_object(Bucket=store.bucket, Key=a_key)

        # The pull client with project A's credentials on project B's manifest: refused.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        # It stops at the first refusal, leaving no folder behind (not one refusal per file).
        with pytest.raises(AccessRefused, match="access denied"):
            pull(release / "manifest.json", tmp_path / "stolen", workers=2)
        assert not (tmp_path / "stolen").exists()
    finally:
        s3_env.set_auth(False)

    # moto 5 evaluates Resource but not the s3:prefix condition of ListBucket, so the listing
    # half of the policy is checked here the way AWS reads it.
    release_prefix = store.s3_key(a.id + "/r1") + "/"
    assert _policy_allows_list(policy, store.bucket, release_prefix)
    assert _policy_allows_list(policy, store.bucket, release_prefix + "RS-X/")
    assert not _policy_allows_list(policy, store.bucket, store.s3_key(b.id + "/r1") + "/")
    assert not _policy_allows_list(policy, store.bucket, store.s3_key(a.id + "/r2") + "/")
    assert not _policy_allows_list(policy, store.bucket, "")
    assert not _policy_allows_list(policy, "other-bucket", release_prefix)
    get = next(s for s in policy["Statement"] if s["Action"] == "s3:GetObject")
    assert get["Resource"] == f"arn:aws:s3:::{store.bucket}/{release_prefix}*"
