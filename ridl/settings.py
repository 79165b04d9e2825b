"""Where ridl keeps its on-premises state, and the environment Prefect needs to run offline.

Ground floor (``ridl/``): every other floor asks this module for its folders; it imports nothing
of the project. The folders are not created here; the module that writes into one creates it.

Everything that may hold PHI (catalogs, frozen selections, quarantine, pseudonym secrets) lives
under ``RIDL_HOME`` on the research office's own disk; only de-identified objects go to the
object store.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

DEFAULT_HOME = ".ridl"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
OWNER_ONLY_UMASK = 0o077


def ridl_home() -> Path:
    """The on-premises state folder: ``$RIDL_HOME`` or ``./.ridl``, absolute, links resolved.

    Resolved once per setting and working folder (``Path.resolve`` checks every component on
    disk: ~0.15 ms, and a run asks for it several times a study).
    """
    raw = os.environ.get("RIDL_HOME", DEFAULT_HOME)
    return _resolved(raw, "" if os.path.isabs(raw) else os.getcwd())


@functools.lru_cache(maxsize=16)
def _resolved(raw: str, cwd: str) -> Path:
    """``raw`` made absolute against ``cwd`` (ignored when ``raw`` is absolute), links resolved."""
    return Path(cwd, raw).resolve()


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) owner-only, whatever the umask; returns ``path``.

    Every folder created on the way gets mode 0700, and so does ``path`` itself when it existed
    already, so on-premises state that may hold PHI is never readable by other accounts.
    """
    for attempt in range(3):
        try:
            _make_private(path)
            return path
        except FileNotFoundError:
            # Another thread (a worker's prefetch, a finished study's clean-up) removed an empty
            # parent between our mkdir and chmod: create the chain again.
            if attempt == 2:
                raise
    return path


def _make_private(path: Path) -> None:
    missing: list[Path] = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        os.chmod(folder, PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)


def private_file(path: Path) -> Path:
    """Make a file written under ``RIDL_HOME`` owner-only (0600), whatever the umask."""
    os.chmod(path, PRIVATE_FILE_MODE)
    return path


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """Create files and folders owner-only (umask 077) while the block runs, then restore.

    The CLI runs every command inside it, so whatever a library writes under ``RIDL_HOME``
    (Parquet catalogs, quarantine copies, worker processes' files) is 0600 in 0700 folders,
    even for a user whose umask is 022.
    """
    previous = os.umask(OWNER_ONLY_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def projects_dir() -> Path:
    """The project registry (``RIDL_HOME/projects``).

    Holds ``<project>.toml`` per REB project and its opt-out list ``<project>.optout.tsv``.
    """
    return ridl_home() / "projects"


def secrets_dir() -> Path:
    """The file provider's pseudonym secrets (``RIDL_HOME/secrets``), ``<project>.key`` each."""
    return ridl_home() / "secrets"


def catalogs_dir() -> Path:
    """Study catalogs (``RIDL_HOME/catalogs``), one folder per source named by a hash of its URL.

    They hold PHI (patient IDs, health numbers) and never leave the research office.
    """
    return ridl_home() / "catalogs"


def releases_dir() -> Path:
    """Per-release on-premises state (``RIDL_HOME/releases``); see :mod:`ridl.releases`."""
    return ridl_home() / "releases"


def quarantine_dir() -> Path:
    """Objects a stage refused (``RIDL_HOME/quarantine``), under ``<project>/<release>/``; PHI."""
    return ridl_home() / "quarantine"


def work_dir() -> Path:
    """Scratch space (``RIDL_HOME/work``): a folder per study in process, removed after it."""
    return ridl_home() / "work"


def default_store_root() -> Path:
    """The embedded object store: a local folder, used when no destination is given."""
    return Path(os.environ.get("RIDL_STORE", str(ridl_home() / "store"))).resolve()


def configure_prefect_environment() -> None:
    """Make Prefect quiet and offline-safe before it is imported.

    The machine a research office runs this on usually has no internet: analytics must be off so
    nothing tries to phone home, and the ephemeral API needs longer than the default to start on a
    fresh ``PREFECT_HOME``. Values the user set themselves are left alone.
    """
    defaults = {
        "PREFECT_HOME": str(ridl_home() / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LOG_PRINTS": "false",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_TASKS_REFRESH_CACHE": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
