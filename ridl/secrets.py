"""Per-project pseudonym secrets.

The secret keys every research ID, UID and date shift of a project. It never leaves the research
office: it is never printed, logged, exported, or put in a manifest. Losing it breaks linkage
between releases of the project, so it is created once and never silently replaced.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ridl import settings
from ridl.errors import ConfigError

ENV_PREFIX = "RIDL_SECRET_"


def secret_path(project_id: str) -> Path:
    return settings.secrets_dir() / f"{project_id}.key"


def _env_name(project_id: str) -> str:
    return ENV_PREFIX + project_id.upper().replace("-", "_")


def create_secret(project_id: str) -> None:
    """Create the project's secret file with mode 0600 unless a secret already exists."""
    if os.environ.get(_env_name(project_id)):
        return
    path = secret_path(project_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))


def load_secret(project_id: str) -> bytes:
    """The project's secret, from ``RIDL_SECRET_<ID>`` or its 0600 file."""
    from_env = os.environ.get(_env_name(project_id))
    if from_env:
        return from_env.encode()
    path = secret_path(project_id)
    if not path.exists():
        raise ConfigError(
            f"project '{project_id}' has no pseudonym secret; set {_env_name(project_id)} "
            "or restore its key file from the research office's backup"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"the secret file of project '{project_id}' is readable by others "
            f"(mode {oct(mode)}); run: chmod 600 {path}"
        )
    value = path.read_text().strip()
    if len(value) < 32:
        raise ConfigError(f"the secret file of project '{project_id}' is too short")
    return value.encode()
