"""A release's on-premises state, in one place: its folder, frozen selection, run record,
verification report, published marker, and the project's withdrawals.

Everything here lives under ``RIDL_HOME/releases/<project>/`` and may hold PHI (the frozen
selection carries the patient couplet), so it never leaves the research office::

    <project>/withdrawn.json               research IDs of subjects who withdrew, with dates
    <project>/<release>/run.json           the parameters the release was frozen with (RunRecord)
    <project>/<release>/selection.parquet  the studies chosen, frozen once
    <project>/<release>/verification.json  the PHI gate's report (keys and attribute paths only)
    <project>/<release>/terms/<host>-<pid>.sqlite
                                           the identifiers each study was verified against in
                                           the stream, a row a study, a database per process
                                           (PHI; files 0600, folders 0700), so the gate
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
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

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
    """Where earlier versions of ridl kept a study's identifiers, one JSON file a study
    (spread over 256 folders by the first two hex digits of the key's SHA-256):
    :func:`read_study_terms` still reads them.

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`).
    """
    shard = hashlib.sha256(study_key.encode()).hexdigest()[:2]
    return release_dir(project, release) / "terms" / shard / f"{study_key}.json"


def terms_folder(project: str, release: str) -> Path:
    """The folder of a release's kept terms: one SQLite database per process that kept any
    (``<host>-<pid>.sqlite``), so workers never wait on each other's writes.

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`).
    """
    return release_dir(project, release) / "terms"


# {(project, release, RIDL_HOME, pid): (database path as text, its connection)}, for this
# process's writes (one database per process); the few last opened (a process that made
# releases under several homes closes the older ones).
_TERMS_DBS: dict[tuple[str, str, Path, int], tuple[str, sqlite3.Connection]] = {}
_TERMS_DBS_OPEN = 4
_TERMS_LOCK = threading.Lock()
_TERMS_TABLE = (
    "CREATE TABLE IF NOT EXISTS study_terms "
    "(study TEXT PRIMARY KEY, written INTEGER NOT NULL, record TEXT NOT NULL)"
)


def _terms_db(project: str, release: str) -> sqlite3.Connection:
    """This process's terms database of a release, opened once: created owner-only (0600, in
    0700 folders; SQLite gives its write-ahead log the database's mode), WAL journal."""
    key = (project, release, settings.ridl_home(), os.getpid())
    found = _TERMS_DBS.get(key)
    if found is not None:
        if os.path.exists(found[0]):
            return found[1]
        found[1].close()  # the release's folder was removed under this process: start again
        del _TERMS_DBS[key]
    while len(_TERMS_DBS) >= _TERMS_DBS_OPEN:
        _TERMS_DBS.pop(next(iter(_TERMS_DBS)))[1].close()
    path = terms_folder(project, release) / f"{socket.gethostname()}-{key[3]}.sqlite"
    settings.private_dir(path.parent)
    try:
        db = _open_terms_db(path)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):
            raise  # a full or read-only disk: the caller says so
        # A damaged file at this process's name (an earlier process with the same host and
        # pid): left as it is, for the gate to name, and this process keeps its own beside it.
        path = path.with_name(f"{path.stem}-{time.time_ns()}.sqlite")
        db = _open_terms_db(path)
    _TERMS_DBS[key] = (str(path), db)
    return db


def close_terms_databases() -> None:
    """Close this process's terms databases: each folds its write-ahead log in and removes it,
    as when the process ends."""
    with _TERMS_LOCK:
        while _TERMS_DBS:
            _TERMS_DBS.popitem()[1][1].close()


def _open_terms_db(path: Path) -> sqlite3.Connection:
    """Open (creating it owner-only) the terms database ``path`` for writing.

    Raises:
        sqlite3.DatabaseError: ``path`` is not a database; OperationalError: it cannot be
            written.
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    settings.private_file(path)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a committed study survives the process's end
        db.execute(_TERMS_TABLE)
    except sqlite3.Error:
        db.close()
        raise
    return db


def write_study_terms(project: str, release: str, study_key: str, record: dict[str, Any]) -> None:
    """Keep a study's identifiers (PHI) on premises, owner-only (:func:`terms_folder`).

    ``record`` is JSON-ready (``flows.work`` writes the study's dictionary record and site). It
    is one row of this process's database, written in one transaction: a process killed while
    writing leaves the study's terms whole or absent (:func:`read_study_terms` reads it as a
    study whose terms were never kept), never fewer. A study kept again (a redone study)
    replaces its terms; kept by two processes, the later one counts. One insert, no file
    created a study (a file a study cost 0.3 to 1 ms of the stream's CPU time, and 7 million
    files at the seed's scale).

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`), or the terms
            cannot be written (a full or read-only disk, a damaged database): the batch stops,
            and the run resumes once that is fixed.
    """
    data = _json_text(record)
    try:
        with _TERMS_LOCK:  # one connection a process, whichever thread works the study
            _terms_db(project, release).execute(
                "INSERT OR REPLACE INTO study_terms VALUES (?, ?, ?)",
                (study_key, time.time_ns(), data),
            )
    except (sqlite3.Error, OSError) as exc:
        raise ReleaseError(
            f"cannot keep the studies' terms on premises in {terms_folder(project, release)} "
            f"({_why(exc)}): free disk space or make RIDL_HOME writable, then run the release "
            "again (it resumes)"
        ) from None


def _json_text(record: dict[str, Any]) -> str:
    """``record`` as JSON text, keys sorted: by orjson, characters as they are (about 4 µs for
    a study's terms, against 48 µs for the standard library's encoder); what orjson refuses (a
    lone surrogate, which SQLite would refuse too) by the standard library, escaped to ASCII."""
    try:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except TypeError:
        return json.dumps(record, sort_keys=True)


def _why(exc: BaseException) -> str:
    """What went wrong reading or writing a terms database, without a value: SQLite's and the
    system's messages name files and conditions, never a row."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


@dataclass
class KeptTerms:
    """What :func:`read_studies_terms` found: ``records`` {study key: its kept terms} and
    ``unreadable`` [(database file name, why)] for each terms database that could not be read
    whole (damaged, unreadable, a row that is not JSON): the terms it holds are unknown, so a
    gate that reads them must not pass."""

    records: dict[str, dict[str, Any]]
    unreadable: list[tuple[str, str]]


def read_studies_terms(project: str, release: str, study_keys: Iterable[str]) -> KeptTerms:
    """The identifiers :func:`write_study_terms` kept for each of ``study_keys`` that has them,
    by study key: the latest kept when several processes kept one, else the file an earlier
    version of ridl wrote (:func:`study_terms_path`). Each database is read once: read-write
    (a write-ahead log a killed writer left is read too), else read-only, else, when it has no
    log, as an unchanging file (a read-only or full disk). A file with no terms table (empty,
    or made by a process that kept nothing) holds no terms; any other that cannot be read, and
    a row that is not JSON, is named in :attr:`KeptTerms.unreadable`.

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`).
    """
    wanted = sorted(set(study_keys))
    found: dict[str, tuple[int, str, str]] = {}
    unreadable: list[tuple[str, str]] = []
    folder = terms_folder(project, release)
    try:  # os.listdir, not Path.glob: glob reads a folder it may not list as empty
        names = sorted(name for name in os.listdir(folder) if name.endswith(".sqlite"))
    except (FileNotFoundError, NotADirectoryError):
        names = []  # no study kept on this disk
    except OSError as exc:
        names = []
        unreadable.append((folder.name, _why(exc)))
    for path in (folder / name for name in names):
        try:
            rows = _terms_rows(path, wanted)
        except sqlite3.Error as exc:
            unreadable.append((path.name, _why(exc)))
            continue
        for study, written, data in rows:
            if study not in found or written > found[study][0]:
                found[study] = (written, data, path.name)
    records: dict[str, dict[str, Any]] = {}
    for study in wanted:
        if study in found:
            _written, text, name = found[study]
            try:
                record = json.loads(text)
            except (TypeError, ValueError):
                record = None
            if not isinstance(record, dict):
                unreadable.append((name, "a study's row is not a JSON object"))
                continue
            records[study] = record
            continue
        try:  # kept by an earlier version of ridl: a file cut short reads as never kept
            legacy = json.loads(study_terms_path(project, release, study).read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(legacy, dict):
            records[study] = legacy
    return KeptTerms(records, sorted(set(unreadable)))


def _terms_rows(path: Path, wanted: list[str]) -> list[tuple[str, int, str]]:
    """The rows of ``wanted`` studies in the terms database ``path`` (see
    :func:`read_studies_terms` for how it is opened); none when it has no terms table.

    Raises:
        sqlite3.Error: no way of opening it reads it.
    """
    uris = [path.as_uri(), f"{path.as_uri()}?mode=ro"]
    if not path.with_name(path.name + "-wal").exists():
        uris.append(f"{path.as_uri()}?immutable=1")
    failure: sqlite3.Error | None = None
    for uri in uris:
        try:
            db = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as exc:
            failure = exc
            continue
        try:
            tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            if ("study_terms",) not in tables:
                return []
            rows: list[tuple[str, int, str]] = []
            for at in range(0, len(wanted), 500):
                chunk = wanted[at : at + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT study, written, record FROM study_terms WHERE study IN ({marks})"
                rows.extend(db.execute(query, chunk))
            return rows
        except sqlite3.Error as exc:
            failure = exc
        finally:
            db.close()
    assert failure is not None
    raise failure


def read_study_terms(project: str, release: str, study_key: str) -> dict[str, Any] | None:
    """A study's identifiers as :func:`write_study_terms` kept them, or None when absent
    (the study ran on a worker without this disk, or before terms were kept); see
    :func:`read_studies_terms`.

    Raises:
        ReleaseError: the release name is not valid (see :func:`release_dir`), or a terms
            database of the release cannot be read (the study's terms may be there).
    """
    kept = read_studies_terms(project, release, [study_key])
    if kept.unreadable:
        raise ReleaseError(
            f"the kept terms in {terms_folder(project, release)} cannot be read "
            f"({'; '.join(f'{name}: {why}' for name, why in kept.unreadable)})"
        )
    return kept.records.get(study_key)


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
