"""Project secrets: 0600 files, environment, refusal to change after publishing, never shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from export.local import LocalStore
from export.manifest import build_manifest
from flows.gate import gate_release
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl import secrets
from ridl.errors import ConfigError


def test_secret_file_is_0600_in_a_0700_folder(project) -> None:  # type: ignore[no-untyped-def]
    path = secrets.secret_path(project.id)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        secrets.load_secret(project.id)


def test_environment_secret_wins(project, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RIDL_SECRET_STUDY_A", "e" * 64)
    assert secrets.load_secret(project.id) == b"e" * 64


def test_unknown_provider_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIDL_SECRETS_PROVIDER", "vault9")
    with pytest.raises(ConfigError, match="RIDL_SECRETS_PROVIDER"):
        secrets.load_secret("x-project")


def test_change_before_publishing_is_allowed_and_audited(project) -> None:  # type: ignore[no-untyped-def]
    from ridl import audit

    old = secrets.load_secret(project.id)
    secrets.change_secret(project.id)
    assert secrets.load_secret(project.id) != old
    last = list(audit.read_entries())[-1]
    assert last["event"] == "project.secret-changed"
    assert old.decode() not in audit.log_path().read_text()


def test_secret_change_after_publishing_is_refused_and_never_shown(
    synth_dir,
    project,
    tmp_path: Path,
    ridl_home: Path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    secret = secrets.load_secret(project.id).decode()
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", f"file:{tmp_path / 's'}")
    process_batch(plan.ctx, plan.studies)
    store = LocalStore(tmp_path / "s")
    build_manifest(store, plan.ctx.prefix, len(plan.studies), project.id, "r1")
    report = gate_release(project.id, "r1", store.url)
    assert report.passed
    with pytest.raises(ConfigError, match="published release") as refused:
        secrets.change_secret(project.id)
    assert secret not in str(refused.value)
    # Replacing the file by hand is caught when the secret is next loaded.
    secrets.FileProvider().put(project.id, b"f" * 64, replace=True)
    with pytest.raises(ConfigError, match="not the one release 'r1'") as changed:
        secrets.load_secret(project.id)
    assert "f" * 64 not in str(changed.value)
    # The secret is nowhere in what the run wrote, except its own key file.
    outputs = [p for p in list(ridl_home.rglob("*")) + list(tmp_path.rglob("*")) if p.is_file()]
    for path in outputs:
        if path == secrets.secret_path(project.id):
            continue
        assert secret.encode() not in path.read_bytes(), path.name
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err


@pytest.fixture
def secrets_manager(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """moto's server over HTTP on a free loopback port, as AWS Secrets Manager."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ca-central-1")
    monkeypatch.setenv("RIDL_SECRETS_PROVIDER", "aws")
    monkeypatch.setenv("RIDL_SECRETS_PREFIX", "ridl-test/")
    yield port
    server.stop()


def test_aws_secrets_manager_provider(secrets_manager, ridl_home: Path) -> None:  # type: ignore[no-untyped-def]
    import boto3

    from tests.conftest import make_project

    project = make_project("aws-project")
    assert not secrets.secret_path(project.id).exists(), "no file when a manager is used"
    client = boto3.client("secretsmanager")
    stored = client.get_secret_value(SecretId="ridl-test/aws-project")["SecretString"]
    assert secrets.load_secret(project.id) == stored.encode()
    secrets.create_secret(project.id)  # never replaces an existing secret
    assert secrets.load_secret(project.id) == stored.encode()
    secrets.change_secret(project.id)
    assert secrets.load_secret(project.id) != stored.encode()
    with pytest.raises(ConfigError, match="no pseudonym secret"):
        secrets.load_secret("absent-project")
