"""A release's on-premises state, in one place: its folder, frozen selection, run record,
verification report, published marker, and the project's withdrawals.

Everything here lives under ``RIDL_HOME/releases/<project>/`` and may hold PHI (the frozen
selection carries the patient couplet), so it never leaves the research office::

    <project>/withdrawn.json               research IDs of subjects who withdrew, with dates
    <project>/<release>/run.json           the parameters the release was frozen with (RunRecord)
    <project>/<release>/selection.parquet  the studies chosen, frozen once
    <project>/<release>/verification.json  the PHI gate's report (keys and attribute paths only)
    <project>/<release>/terms/<xx>/<study key>.json
                                           the identifiers a study was verified against in the
                                           stream (PHI; files 0600, folders 0700), so the gate
                                           re-derives a sampled study's without the DIR
    <project>/<release>/published.json     written once the release passed the gate and was
                                           published, with a fingerprint of the project secret
    <project>/<release>/run.lock           held while a run of the release works (pid, host):
                                           a second run of the same release is refused

Files are 0600 and folders 0700 whatever the umask (:func:`ridl.settings.private_dir`).

The object store has its own copy of the published marker, written by whoever publishes (the
gate in ``flows.gate``); this module only knows the research office's disk, so it imports no
object store and no other floor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ridl import audit, settings
from ridl.errors import ReleaseError

# Arrow and pandas only where the frozen selection is written or read: the per-study work uses
# the rest of this module (a study's terms, the withdrawn list) and starts without them.
if TYPE_CHECKING:
    import pandas as pd

RELEASE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MARKER = "published.json"
REPORT_NAME = "verification.json"
WITHDRAWALS = "withdrawn.json"
LOCK = "run.lock"


# --- the release folder ------------------------------------------------------------------------


def release_dir(project: str, release: str) -> Path:
    """The release's on-premises folder (not created).

    Raises:
        ReleaseError: the release name holds characters other than letters, digits, '.', '_'
            and '-', or starts with '.'.
    """
    if not release or not set(release) <= RELEASE_NAME_CHARS or release.startswith("."):
        raise ReleaseError("release names use letters, digits, '.', '_' and '-' only")
    return settings.releases_dir() / project / release


# --- the frozen selection and its run record ----------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """The parameters a release was frozen with; a resumed run must ask for the same.

    Dates are ISO ``YYYY-MM-DD``; modalities and sites sorted; ``recipe`` is the project's recipe
    specification (``ps3.15-basic+clean-descriptors``...).
    """

    project: str
    release: str
    source: str
    date_from: str
    date_to: str
    modalities: list[str]
    sites: list[str]
    recipe: str
    destination: str = ""

    def differences(self, other: RunRecord) -> dict[str, tuple[Any, Any]]:
        """{parameter: (frozen value, asked value)} for each parameter ``other`` asks otherwise.

        A record frozen without a destination accepts any (it predates the binding).
        """
        old, new = asdict(self), asdict(other)
        if not self.destination:
            old.pop("destination")
            new.pop("destination")
        return {name: (old[name], new[name]) for name in old if old[name] != new[name]}

    def same_request(self, other: RunRecord) -> bool:
        """True when ``other`` asks for exactly what this record was frozen with."""
        return not self.differences(other)


def freeze_selection(record: RunRecord, selection: pd.DataFrame) -> Path:
    """Write the selection (one row per study, catalog columns) and its parameters, once.

    Returns the path of ``selection.parquet``; the freeze is audited with the file's SHA-256.

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = settings.private_dir(release_dir(record.project, record.release))
    table = pa.Table.from_pandas(selection, preserve_index=False)
    tmp = folder / "selection.parquet.tmp"
    pq.write_table(table, tmp)
    settings.private_file(tmp)
    _write_private(folder / "run.json", json.dumps(asdict(record), indent=2, sort_keys=True))
    tmp.replace(folder / "selection.parquet")
    digest = hashlib.sha256((folder / "selection.parquet").read_bytes()).hexdigest()
    audit.record(
        "selection.frozen",
        project=record.project,
        release=record.release,
        studies=len(selection),
        selection_sha256=digest,
        date_from=record.date_from,
        date_to=record.date_to,
        modalities=record.modalities,
        sites=record.sites,
    )
    return folder / "selection.parquet"


def selection_path(project: str, release: str) -> Path:
    """Where the frozen selection of a release is (or will be)."""
    return release_dir(project, release) / "selection.parquet"


def load_frozen(project: str, release: str) -> tuple[RunRecord, pd.DataFrame] | None:
    """The release's run record and frozen selection, or None when it was never frozen.

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`).
    """
    folder = release_dir(project, release)
    sel = folder / "selection.parquet"
    if not sel.exists():
        return None
    record = RunRecord(**json.loads((folder / "run.json").read_text()))
    import pyarrow.parquet as pq

    return record, pq.read_table(sel).to_pandas()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole (a temporary file renamed), 0600 in a 0700 folder."""
    settings.private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, settings.PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    settings.private_file(tmp)
    tmp.replace(path)


# --- the lock of a running release -------------------------------------------------------------


def lock_path(project: str, release: str) -> Path:
    """Where the lock of a running release is (``<project>/<release>/run.lock``)."""
    return release_dir(project, release) / LOCK


def lock_holder(project: str, release: str) -> dict[str, Any] | None:
    """Who holds the release's run lock: ``{"pid", "host", "started"}``, or None when nobody.

    A lock left by a process that is gone (same host, pid no longer running) is stale: it is
    removed and None returned. A lock held by another host cannot be checked and counts as held.

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`).
    """
    path = lock_path(project, release)
    try:
        holder: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        holder = {}
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    return holder


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another account's process
    return True


def check_not_locked(project: str, release: str) -> None:
    """Refuse when another live process runs the release (this process's own lock is fine).

    Raises:
        ReleaseError: another run of the release holds its lock (pid, host and lock file named).
    """
    holder = lock_holder(project, release)
    if holder is None or _ours(holder):
        return
    raise ReleaseError(
        f"release '{release}' of project '{project}' is being run by process "
        f"{holder.get('pid', '?')} on {holder.get('host', '?')} (since "
        f"{holder.get('started', '?')}); wait for it to end, or if that process is gone for "
        f"good, remove {lock_path(project, release)}"
    )


def _ours(holder: dict[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


@contextlib.contextmanager
def release_lock(project: str, release: str) -> Iterator[None]:
    """Hold the release's run lock while the block runs; re-entrant within one process.

    The lock file (``run.lock``, 0600) holds the pid, host and start time; it is created with
    ``O_EXCL``, so of two runs starting together only one gets it. A stale lock (its process is
    gone) is taken over.

    Raises:
        ReleaseError: another live process holds the lock (see :func:`check_not_locked`).
    """
    path = lock_path(project, release)
    settings.private_dir(path.parent)
    for _ in range(2):
        check_not_locked(project, release)
        holder = lock_holder(project, release)
        if holder is not None and _ours(holder):
            yield  # this process holds it already (the CLI, then the flow it starts)
            return
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, settings.PRIVATE_FILE_MODE)
        except FileExistsError:
            continue  # another run took it between the check and now: check again
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record, out)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(OSError):  # a refused run leaves no empty folder behind
                path.parent.rmdir()
        return
    check_not_locked(project, release)
    raise ReleaseError(f"could not take the lock {path}; try the run again")


# --- the verification report ------------------------------------------------------------------


def report_path(project: str, release: str) -> Path:
    """Where the PHI gate writes its report for the release (on premises)."""
    return release_dir(project, release) / REPORT_NAME


# --- the identifiers each study was verified against --------------------------------------------


def study_terms_path(project: str, release: str, study_key: str) -> Path:
    """Where the per-study work keeps the identifiers it verified a study against.

    ``study_key`` is the study's key in the release (its de-identified Study Instance UID);
    files are spread over 256 folders by the first two hex digits of the key's SHA-256.

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`).
    """
    shard = hashlib.sha256(study_key.encode()).hexdigest()[:2]
    return release_dir(project, release) / "terms" / shard / f"{study_key}.json"


# The terms folders (:func:`study_terms_path`) whose 256 shard folders this process has made.
_SHARDS_MADE: set[Path] = set()


def _make_shards(terms: Path) -> None:
    """Make a release's terms folder and its 256 shard folders, owner-only (0700), once a
    process: its studies' terms are then each one file created in a folder already there."""
    terms.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the release's folder
    terms.mkdir(exist_ok=True, mode=0o700)
    for shard in range(256):
        (terms / f"{shard:02x}").mkdir(exist_ok=True, mode=0o700)
    _SHARDS_MADE.add(terms)


def write_study_terms(project: str, release: str, study_key: str, record: dict[str, Any]) -> None:
    """Keep a study's identifiers (PHI) on premises, owner-only (file 0600, folders 0700).

    ``record`` is JSON-ready (``flows.work`` writes the study's dictionary record and site). It
    is encoded once and written with one ``write``, straight to its file: a write cut short
    leaves a prefix of a JSON object, which never parses, so :func:`read_study_terms` reads it
    as absent (as a study whose terms were never kept), never as fewer terms.

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`).
    """
    path = study_terms_path(project, release, study_key)
    data = json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    terms = path.parent.parent
    if terms not in _SHARDS_MADE:
        _make_shards(terms)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:  # removed since this process made them: make them again
        try:
            path.parent.mkdir(mode=0o700)  # the shard's folder; "terms" is there after a study
        except FileNotFoundError:
            for folder in (path.parent.parent.parent, path.parent.parent, path.parent):
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except FileExistsError:
            pass  # another worker made it first
        fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_study_terms(project: str, release: str, study_key: str) -> dict[str, Any] | None:
    """A study's identifiers as :func:`write_study_terms` kept them, or None when absent
    (the study ran on a worker without this disk, or before terms were kept).

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`).
    """
    path = study_terms_path(project, release, study_key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- published markers --------------------------------------------------------------------------


def _marker_path(project: str, release: str) -> Path:
    return release_dir(project, release) / MARKER


def mark_published(
    project: str, release: str, store_url: str, secret_fingerprint: str, record: dict[str, Any]
) -> None:
    """Write the on-premises published marker and audit the publication.

    ``record`` is what the store's marker holds (counts and keys, no PHI); the on-premises copy
    adds the store URL and ``secret_fingerprint`` (see ``ridl.secrets.secret_fingerprint``), which
    :func:`published_releases` gives back so the secret can never change under a published
    release.
    """
    on_prem = dict(record, store=store_url, secret_fingerprint=secret_fingerprint)
    _write_private(_marker_path(project, release), json.dumps(on_prem, indent=2, sort_keys=True))
    details = {k: v for k, v in record.items() if k not in {"project", "release", "published_at"}}
    audit.record("release.published", project=project, release=release, store=store_url, **details)


def release_is_published(project: str, release: str) -> bool:
    """True when the on-premises published marker of the release exists."""
    return _marker_path(project, release).exists()


def published_releases(project: str) -> dict[str, dict[str, Any]]:
    """The project's published releases, from the on-premises markers: {release: marker}."""
    folder = settings.releases_dir() / project
    found: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return found
    for marker in sorted(folder.glob(f"*/{MARKER}")):
        try:
            found[marker.parent.name] = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            found[marker.parent.name] = {}
    return found


# --- withdrawals -------------------------------------------------------------------------------


def withdrawals_path(project: str) -> Path:
    """The project's list of withdrawn subjects (research IDs and dates)."""
    return settings.releases_dir() / project / WITHDRAWALS


def load_withdrawn(project: str) -> set[str]:
    """Research IDs (``RS-...``) of subjects who withdrew from the project."""
    path = withdrawals_path(project)
    if not path.exists():
        return set()
    return {entry["research_id"] for entry in json.loads(path.read_text())}


def withdrawn_since_frozen(project: str, release: str) -> set[str]:
    """Research IDs of subjects whose withdrawal was recorded on or after the day the release's
    selection was frozen (its ``selection.parquet``, local date): selection left out everyone
    who withdrew before, so only these can have objects in the release. Empty when the
    release was never frozen.
    """
    frozen = release_dir(project, release) / "selection.parquet"
    path = withdrawals_path(project)
    if not frozen.exists() or not path.exists():
        return set()
    day = dt.date.fromtimestamp(frozen.stat().st_mtime).isoformat()
    return {e["research_id"] for e in json.loads(path.read_text()) if e["recorded"] >= day}


def record_withdrawal(project: str, research_id: str, today: dt.date | None = None) -> bool:
    """Record that a subject withdrew; the next release retracts their objects.

    ``research_id`` is matched case-insensitively (stored upper-case, as ridl writes it).
    Returns False when the subject was already recorded. Audited as ``subject.withdrawn`` (the
    research ID, never a patient identifier). The caller checks that the project
    exists and that the research ID is one of its releases' (this floor reads no store).

    Raises:
        ReleaseError: ``research_id`` is not a research ID (``RS-...``): a patient identifier
            must never be written here.
    """
    research_id = research_id.strip().upper()  # research IDs are upper-case base32
    if not research_id.startswith("RS-"):
        raise ReleaseError("give the subject's research ID (RS-...), never a patient identifier")
    path = withdrawals_path(project)
    entries = json.loads(path.read_text()) if path.exists() else []
    if any(e["research_id"] == research_id for e in entries):
        audit.record("subject.withdrawn", project=project, research_id=research_id, new=False)
        return False
    entries.append({"research_id": research_id, "recorded": (today or dt.date.today()).isoformat()})
    _write_private(path, json.dumps(entries, indent=2))
    audit.record("subject.withdrawn", project=project, research_id=research_id, new=True)
    return True


def frozen_releases(project: str) -> list[str]:
    """Names of the project's releases that have a frozen selection on premises, sorted."""
    folder = settings.releases_dir() / project
    if not folder.is_dir():
        return []
    return sorted(p.parent.name for p in folder.glob("*/selection.parquet"))
