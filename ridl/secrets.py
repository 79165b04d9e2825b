"""Per-project pseudonym secrets.

The secret keys every research ID, UID and date shift of a project. It never leaves the research
office: it is never printed, logged, exported, or put in a manifest or an error message. Losing it
breaks linkage between releases of the project, so it is created once and never silently replaced:
once a release of the project is published, changing it is refused, and a secret that differs from
the one a published release was made with is refused when it is loaded.

Where the secret comes from, first match wins:

1. ``RIDL_SECRET_<ID>`` (upper case, '-' as '_'): for deployments that inject secrets as
   environment variables;
2. the provider named by ``RIDL_SECRETS_PROVIDER``: ``file`` (default: a mode-0600 file under
   ``RIDL_HOME/secrets``) or ``aws`` (AWS Secrets Manager through boto3, secret id
   ``$RIDL_SECRETS_PREFIX<ID>``, default prefix ``ridl/``). Other providers implement
   :class:`SecretProvider` and are registered in :data:`PROVIDERS`.

Ground floor (``ridl/``): boto3 is imported only when the ``aws`` provider is built, and the
published-release check reads :mod:`ridl.releases` (same floor).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ridl import settings
from ridl.errors import ConfigError

ENV_PREFIX = "RIDL_SECRET_"
PROVIDER_ENV = "RIDL_SECRETS_PROVIDER"
MIN_LENGTH = 32


def secret_path(project_id: str) -> Path:
    """The file provider's key file of a project, ``RIDL_HOME/secrets/<project>.key``."""
    return settings.secrets_dir() / f"{project_id}.key"


def _env_name(project_id: str) -> str:
    return ENV_PREFIX + project_id.upper().replace("-", "_")


class SecretProvider(Protocol):
    """Where secrets live when they are not in the environment."""

    name: str

    def get(self, project_id: str) -> bytes | None:
        """The project's secret, or None when there is none.

        Raises:
            ConfigError: the secret exists but cannot be read safely or at all.
        """
        ...

    def put(self, project_id: str, value: bytes, *, replace: bool) -> bool:
        """Store a secret; returns False when one exists and ``replace`` is False."""
        ...


class FileProvider:
    """0600 files under ``RIDL_HOME/secrets`` (a 0700 folder)."""

    name = "file"

    def get(self, project_id: str) -> bytes | None:
        """The project's secret (whitespace stripped), or None when it has no key file.

        Raises:
            ConfigError: the key file is readable by group or others (mode not 0600).
        """
        path = secret_path(project_id)
        if not path.exists():
            return None
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"the secret file of project '{project_id}' is readable by others "
                f"(mode {oct(mode)}); run: chmod 600 {path}"
            )
        return path.read_text().strip().encode()

    def put(self, project_id: str, value: bytes, *, replace: bool) -> bool:
        """Write the key file (mode 0600, folder 0700); False when one exists and not ``replace``.

        A replacement is written to a temporary file and renamed over the old one.
        """
        path = secret_path(project_id)
        settings.private_dir(path.parent)
        if replace:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(value)
            tmp.replace(path)
            return True
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(value)
        return True


class AwsSecretsManagerProvider:
    """AWS Secrets Manager (boto3): secret id ``$RIDL_SECRETS_PREFIX<project id>``.

    Credentials and region come from boto3's usual chain (instance role, environment, profile).
    """

    name = "aws"

    def __init__(self) -> None:
        """Build the boto3 client.

        Raises:
            ConfigError: boto3 is not installed.
        """
        try:
            import boto3
        except ImportError:
            raise ConfigError(
                f"{PROVIDER_ENV}=aws needs boto3: pip install boto3, or use the file provider"
            ) from None
        self.prefix = os.environ.get("RIDL_SECRETS_PREFIX", "ridl/")
        self.client = boto3.client("secretsmanager")

    def get(self, project_id: str) -> bytes | None:
        """The project's ``SecretString`` (stripped) as bytes, or None when there is none.

        Raises:
            ConfigError: the service refused or failed (only the exception type is reported).
        """
        try:
            answer = self.client.get_secret_value(SecretId=self.prefix + project_id)
        except self.client.exceptions.ResourceNotFoundException:
            return None
        except Exception as exc:  # never echo the service's message: it may quote the request
            raise ConfigError(
                f"the secrets manager did not return the secret of project '{project_id}' "
                f"({type(exc).__name__})"
            ) from None
        return str(answer["SecretString"]).strip().encode()

    def put(self, project_id: str, value: bytes, *, replace: bool) -> bool:
        """Create the secret, or replace its value when ``replace``; False when it exists.

        Raises:
            ConfigError: reading the current secret failed (see :meth:`get`).
        """
        name = self.prefix + project_id
        if self.get(project_id) is not None:
            if not replace:
                return False
            self.client.put_secret_value(SecretId=name, SecretString=value.decode())
            return True
        self.client.create_secret(Name=name, SecretString=value.decode())
        return True


PROVIDERS: dict[str, Callable[[], SecretProvider]] = {
    "file": FileProvider,
    "aws": AwsSecretsManagerProvider,
}


def provider() -> SecretProvider:
    """The provider named by ``RIDL_SECRETS_PROVIDER`` (default ``file``), built now.

    Raises:
        ConfigError: the name is not in :data:`PROVIDERS`, or the provider cannot be built
            (``aws`` without boto3).
    """
    name = os.environ.get(PROVIDER_ENV, "file") or "file"
    factory = PROVIDERS.get(name)
    if factory is None:
        raise ConfigError(
            f"{PROVIDER_ENV}={name!r} is not a known secrets provider "
            f"(known: {', '.join(sorted(PROVIDERS))})"
        )
    return factory()


def create_secret(project_id: str) -> None:
    """Create the project's secret unless one already exists (never replaces one).

    The secret is 64 hex characters (32 random bytes); nothing is written when
    ``RIDL_SECRET_<ID>`` is set.

    Raises:
        ConfigError: the provider cannot be built or reached (see :func:`provider`).
    """
    if os.environ.get(_env_name(project_id)):
        return
    provider().put(project_id, secrets.token_hex(32).encode(), replace=False)


def secret_fingerprint(secret: bytes) -> str:
    """A short keyed digest that tells two secrets apart without revealing either.

    16 hex characters (the first 64 bits of an HMAC-SHA-256 keyed with the secret).
    """
    return hmac.new(secret, b"ridl secret fingerprint v1", hashlib.sha256).hexdigest()[:16]


def load_secret(project_id: str, *, check_published: bool = True) -> bytes:
    """The project's secret, from ``RIDL_SECRET_<ID>`` or the provider.

    With ``check_published`` (the default), a secret that is not the one a published release of
    the project was made with is refused: using it would silently break linkage.

    Returns the secret's bytes (at least 32).

    Raises:
        ConfigError: the project has no secret, it is shorter than 32 bytes, it differs from the
            one a published release was made with, or the provider failed (see
            :func:`provider`, :meth:`FileProvider.get`).
    """
    from_env = os.environ.get(_env_name(project_id))
    value = from_env.encode() if from_env else provider().get(project_id)
    if value is None:
        raise ConfigError(
            f"project '{project_id}' has no pseudonym secret; set {_env_name(project_id)} "
            "or restore its key file from the research office's backup"
        )
    if len(value) < MIN_LENGTH:
        raise ConfigError(f"the secret of project '{project_id}' is too short")
    if check_published:
        _check_matches_published(project_id, value)
    return value


def _check_matches_published(project_id: str, value: bytes) -> None:
    from ridl.releases import published_releases

    fingerprint = secret_fingerprint(value)
    for release, marker in published_releases(project_id).items():
        expected = marker.get("secret_fingerprint")
        if expected and not hmac.compare_digest(str(expected), fingerprint):
            raise ConfigError(
                f"the pseudonym secret of project '{project_id}' is not the one release "
                f"'{release}' was published with; restore the original secret (changing it "
                "after publishing would break linkage between releases)"
            )


def change_secret(project_id: str, new_value: bytes | None = None) -> None:
    """Replace a project's secret: refused once any release of the project is published.

    ``new_value`` defaults to 64 fresh hex characters; the change is audited (without the value).

    Raises:
        ConfigError: a release of the project is published, the secret comes from
            ``RIDL_SECRET_<ID>``, ``new_value`` is shorter than 32 bytes, or the provider failed.
    """
    from ridl import audit
    from ridl.releases import published_releases

    published = sorted(published_releases(project_id))
    if published:
        raise ConfigError(
            f"project '{project_id}' has published release(s) {', '.join(published)}; its "
            "pseudonym secret cannot change (research IDs would no longer link across releases)"
        )
    if os.environ.get(_env_name(project_id)):
        raise ConfigError(
            f"the secret of project '{project_id}' comes from {_env_name(project_id)}; "
            "change it where that variable is set"
        )
    value = new_value if new_value is not None else secrets.token_hex(32).encode()
    if len(value) < MIN_LENGTH:
        raise ConfigError(f"a pseudonym secret must be at least {MIN_LENGTH} characters")
    provider().put(project_id, value, replace=True)
    audit.record("project.secret-changed", project=project_id)
