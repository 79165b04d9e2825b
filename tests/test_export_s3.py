"""The S3 object store against moto's S3 server over HTTP: protocol, checksums, retries."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from pathlib import Path

import pytest

from export.s3 import S3Settings, S3Store, parse_s3_url
from export.store import open_store
from ridl.errors import ConfigError
from tests.s3server import FaultPlan, FaultyProxy, MotoServer


def _bucket() -> str:
    return f"ridl-test-{uuid.uuid4().hex[:12]}"


def _store(endpoint: str, bucket: str | None = None, **kwargs: object) -> S3Store:
    settings = S3Settings(
        bucket=bucket or _bucket(),
        prefix="lib",
        endpoint_url=endpoint,
        region="us-east-1",
        **kwargs,  # type: ignore[arg-type]
    )
    store = S3Store(settings)
    store.ensure_bucket()
    return store


def test_open_store_s3_url_round_trips(s3_env: MotoServer) -> None:
    bucket = _bucket()
    url = f"s3://{bucket}/lib/x?endpoint_url={s3_env.url}&region=us-east-1&retry_mode=adaptive"
    with pytest.raises(ConfigError, match="does not exist .*change: --dest"):
        open_store(url)
    S3Store(parse_s3_url(url)).ensure_bucket()
    store = open_store(url)
    assert isinstance(store, S3Store)
    assert parse_s3_url(store.url) == store.settings, "the URL given to workers reopens it"
    assert store.settings.retry_mode == "adaptive"
    assert store.client.meta.config.retries["mode"] == "adaptive"
    store.put_bytes("a/b.bin", b"hello")
    raw = store.client.get_object(Bucket=bucket, Key="lib/x/a/b.bin")["Body"].read()
    assert raw == b"hello"


@pytest.mark.parametrize(
    "url",
    ["s3://b/p?secret=x", "s3://b/p?retry_mode=eager", "s3://b/../p", "s3://b/p?max_attempts=x"],
)
def test_bad_s3_urls_are_refused_with_what_to_change(url: str) -> None:
    with pytest.raises((ConfigError, ValueError)):
        parse_s3_url(url)


def test_store_protocol_checksums_and_idempotent_uploads(s3_env: MotoServer) -> None:
    store = _store(s3_env.url)
    data = os.urandom(4096)
    store.put_bytes("p/r/one.dcm", data)
    assert store.exists("p/r/one.dcm") and not store.exists("p/r/two.dcm")
    assert store.get_bytes("p/r/one.dcm") == data
    digest = hashlib.sha256(data).hexdigest()
    head = store.client.head_object(
        Bucket=store.bucket, Key="lib/p/r/one.dcm", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(digest)).decode()
    assert head["Metadata"]["sha256"] == digest
    assert store.stats.uploaded == 1

    store.put_bytes("p/r/one.dcm", data)  # the same bytes again: not sent
    assert store.stats.uploaded == 1 and store.stats.skipped == 1
    store.put_bytes("p/r/one.dcm", data[::-1])  # other bytes: sent
    assert store.stats.uploaded == 2 and store.get_bytes("p/r/one.dcm") == data[::-1]

    store.put_bytes("p/r/sub/two.dcm", b"2")
    store.put_bytes("p/other.dcm", b"3")
    assert [(o.key, o.size) for o in store.list("p/r/")] == [
        ("p/r/one.dcm", 4096),
        ("p/r/sub/two.dcm", 1),
    ]
    store.delete("p/r/sub/two.dcm")
    assert not store.exists("p/r/sub/two.dcm")
    with pytest.raises(FileNotFoundError):
        store.get_bytes("p/r/sub/two.dcm")
    with pytest.raises(ValueError):
        store.put_bytes("../escape", b"x")


def test_large_objects_go_multipart_with_sha256(s3_env: MotoServer) -> None:
    store = _store(s3_env.url, multipart_threshold=5 * 1024 * 1024, chunk_size=5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024)
    store.put_bytes("big.bin", data)
    assert store.stats.multipart == 1
    assert store.get_bytes("big.bin") == data
    head = store.client.head_object(Bucket=store.bucket, Key="lib/big.bin", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3"), "three parts of 5 MiB, 5 MiB and 1 MiB"
    assert head.get("ChecksumSHA256"), "SHA-256 sent with every part and recorded by S3"
    assert store.stored_sha256("big.bin") == hashlib.sha256(data).hexdigest()
    store.put_bytes("big.bin", data)
    assert store.stats.skipped == 1, "a large object already there is not sent again"


def test_injected_server_errors_are_retried_nothing_lost_or_duplicated(
    s3_env: MotoServer, s3_proxy: FaultyProxy
) -> None:
    bucket = _bucket()
    _store(s3_env.url, bucket=bucket)  # create the bucket directly
    store = _store(s3_proxy.url, bucket=bucket)
    objects = {f"p/r/{i:03d}.dcm": os.urandom(2000 + i) for i in range(30)}
    # 500 and 503 answers, connections dropped before the server saw the request, and
    # connections dropped after the server stored the object (the client never hears back).
    plan = FaultPlan(
        status={1: 503, 4: 500, 9: 503, 10: 503, 30: 500},
        drop_before={6, 20},
        drop_after={13, 41},
    )
    s3_proxy.reset_counts(plan)
    for key, data in objects.items():
        store.put_bytes(key, data)
    assert s3_proxy.faults == 9, "every planned fault was hit"
    listed = {o.key: o.size for o in store.list("p/r/")}
    assert sorted(listed) == sorted(objects), "nothing lost, nothing duplicated"
    direct = _store(s3_env.url, bucket=bucket)
    for key, data in objects.items():
        assert direct.get_bytes(key) == data
        assert direct.stored_sha256(key) == hashlib.sha256(data).hexdigest()
    s3_proxy.reset_counts()


def test_too_many_failures_surface_as_an_error(s3_env: MotoServer, s3_proxy: FaultyProxy) -> None:
    from botocore.exceptions import ClientError

    bucket = _bucket()
    _store(s3_env.url, bucket=bucket)
    store = _store(s3_proxy.url, bucket=bucket, max_attempts=2)
    s3_proxy.reset_counts(FaultPlan(status={n: 503 for n in range(1, 20)}))
    with pytest.raises(ClientError):
        store.put_bytes("x.bin", b"x")
    s3_proxy.reset_counts()


def test_run_to_a_missing_bucket_or_dead_endpoint_fails_before_any_work(
    s3_env: MotoServer, project: object, ridl_home: object, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    for dest, message in (
        (f"s3://{_bucket()}/lib?endpoint_url={s3_env.url}&region=us-east-1", "S3 bucket"),
        ("s3://b-1234/lib?endpoint_url=http://127.0.0.1:9&region=us-east-1&max_attempts=1",
         "cannot reach the S3 endpoint"),
    ):  # fmt: skip
        result = CliRunner().invoke(
            app,
            ["run", "--project", "study-a", "--release", "r1", "--source", f"folder:{tmp_path}",
             "--dest", dest],
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output
