"""The audit log: who ran what, what left, and whether it was verified, in a tamper-evident chain.

Privacy offices ask for proof, not promises. Every event that matters (a project created or
changed or updated, a run started and ended, a selection frozen, a verification result, a release
published, access granted or refused, labels imported, an opt-out or withdrawal recorded, a review
decision, a ``ridl deid`` request started and ended) is appended as one JSON line under
``RIDL_HOME/audit``. Each line carries the SHA-256 of the line before it and a hash of itself,
so editing, removing or reordering any entry breaks the chain, and :func:`verify_log` says
where. A small head file records the last sequence number and hash, so cutting entries off the
end is detected too.

Entries carry research IDs, counts, project ids, release names and object keys, never PHI:
:func:`record` refuses values that are not plain JSON scalars, lists or objects, and callers pass
only what they would show a privacy officer.

Ground floor (``ridl/``): every floor records its events here; the module imports only
:mod:`ridl.settings`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ridl import __version__, settings

GENESIS = "0" * 64
LOG_NAME = "audit.jsonl"
HEAD_NAME = "audit.head"

# Event names others may record; free-form names are allowed, these are the documented ones.
EVENTS = (
    "project.created",
    "project.changed",
    "project.updated",
    "project.secret-changed",
    "run.started",
    "run.ended",
    "selection.frozen",
    "verification.result",
    "release.published",
    "access.granted",
    "access.refused",
    "labels.imported",
    "labels.corrected",
    "optout.added",
    "subject.withdrawn",
    "review.decided",
    "deid.started",
    "deid.ended",
)


def audit_dir() -> Path:
    """The audit folder (``RIDL_HOME/audit``): the log and its head file."""
    return settings.ridl_home() / "audit"


def log_path() -> Path:
    """The audit log file, ``RIDL_HOME/audit/audit.jsonl`` (one JSON entry a line)."""
    return audit_dir() / LOG_NAME


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers: fall back to the numeric id
        return f"uid:{os.getuid()}"


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _check_plain(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit field {path} has a non-string key")
            _check_plain(item, f"{path}.{key}")
        return
    raise TypeError(f"audit field {path} is a {type(value).__name__}; pass plain JSON values")


def _last_line(handle: Any) -> bytes | None:
    """The last non-empty line of an open binary file, read from the end."""
    handle.seek(0, os.SEEK_END)
    end = handle.tell()
    if end == 0:
        return None
    block = 4096
    data = b""
    pos = end
    while pos > 0:
        step = min(block, pos)
        pos -= step
        handle.seek(pos)
        data = handle.read(step) + data
        stripped = data.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    stripped = data.rstrip(b"\n")
    return stripped or None


def record(event: str, **fields: Any) -> dict[str, Any]:
    """Append one event to the audit log and return the entry as written.

    Safe from several processes at once (an exclusive lock is held while the previous entry is
    read and the new one appended). Fields must be plain JSON values and never PHI.

    Returns the entry dict: ``seq``, ``time`` (UTC ISO 8601, microseconds), ``event``, ``who``,
    ``ridl`` (version), ``fields``, ``prev`` and ``hash`` (SHA-256 hex digests).

    Raises:
        ValueError: ``event`` is empty or not a string.
        TypeError: a field is not a plain JSON value (None, bool, number, string, list, or a
            dict with string keys).
    """
    if not event or not isinstance(event, str):
        raise ValueError("an audit event needs a name")
    _check_plain(fields, "fields")
    folder = audit_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / LOG_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            last = _last_line(handle)
            if last is None:
                seq, prev = 1, GENESIS
            else:
                seq = int(json.loads(last)["seq"]) + 1
                prev = hashlib.sha256(last).hexdigest()
            entry: dict[str, Any] = {
                "seq": seq,
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                "event": event,
                "who": _who(),
                "ridl": __version__,
                "fields": fields,
                "prev": prev,
            }
            entry["hash"] = _entry_hash(entry)
            line = _canonical(entry)
            handle.seek(0, os.SEEK_END)
            handle.write(line + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            _write_head(folder, seq, hashlib.sha256(line).hexdigest())
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return entry


def _write_head(folder: Path, seq: int, line_hash: str) -> None:
    tmp = folder / f".{HEAD_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"seq": seq, "sha256": line_hash}) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(folder / HEAD_NAME)


@dataclass(frozen=True)
class Problem:
    """One break in the chain: the line number (1-based) and what is wrong there."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def read_entries(path: Path | None = None) -> Iterator[dict[str, Any]]:
    """The log's entries in order, one dict each (unverified; :func:`verify_log` checks them).

    ``path`` defaults to :func:`log_path`; a missing log yields nothing.
    """
    path = path or log_path()
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for raw in handle:
            raw = raw.rstrip(b"\n")
            if raw:
                yield json.loads(raw)


def verify_log(path: Path | None = None) -> tuple[int, list[Problem]]:
    """Check the whole chain; returns (entries read, list of :class:`Problem`). None = intact.

    ``path`` defaults to :func:`log_path`.

    An edited entry fails its own hash (or, if its hash was recomputed, the next entry's link);
    a removed entry breaks the link and the sequence; a reordered entry breaks both too; entries
    cut off the end no longer match the head file.
    """
    path = path or log_path()
    problems: list[Problem] = []
    if not path.exists():
        head = path.parent / HEAD_NAME
        if head.exists():
            problems.append(Problem(0, "the audit log is missing but its head file exists"))
        return 0, problems
    prev_hash = GENESIS
    expected_seq = 1
    count = 0
    last_hash = GENESIS
    last_seq = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\n")
            if not raw:
                problems.append(Problem(number, "empty line"))
                continue
            count += 1
            line_hash = hashlib.sha256(raw).hexdigest()
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                problems.append(Problem(number, "not valid JSON (edited)"))
                prev_hash, last_hash = line_hash, line_hash
                expected_seq += 1
                continue
            if not isinstance(entry, dict) or "hash" not in entry:
                problems.append(Problem(number, "not an audit entry (edited)"))
            elif _entry_hash(entry) != entry["hash"]:
                problems.append(Problem(number, "content does not match its hash (edited)"))
            elif _canonical(entry) != raw:
                problems.append(Problem(number, "not in canonical form (edited)"))
            if isinstance(entry, dict):
                if entry.get("prev") != prev_hash:
                    problems.append(
                        Problem(
                            number,
                            "does not follow the entry before it "
                            "(an entry was edited, removed or reordered)",
                        )
                    )
                seq = entry.get("seq")
                if seq != expected_seq:
                    problems.append(
                        Problem(number, f"sequence number {seq}, expected {expected_seq}")
                    )
                expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
                last_seq = seq if isinstance(seq, int) else last_seq
            prev_hash = line_hash
            last_hash = line_hash
    head_path = path.parent / HEAD_NAME
    if head_path.exists():
        try:
            head = json.loads(head_path.read_text())
            if head.get("seq") != last_seq or head.get("sha256") != last_hash:
                problems.append(
                    Problem(
                        count,
                        f"the log ends at entry {last_seq} but the head file records entry "
                        f"{head.get('seq')} (entries removed from the end, or the last edited)",
                    )
                )
        except (json.JSONDecodeError, AttributeError):
            problems.append(Problem(count, "the head file is not readable"))
    elif count:
        problems.append(Problem(count, "the head file is missing"))
    return count, problems


def run_end_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What ``run.ended`` records: the release's counts (no PHI).

    ``summary`` is the release summary dict (``project``, ``release``, ``studies_exported``,
    ``instances_exported``, ``subjects``, ``excluded`` and ``quarantined`` ({reason: count}),
    ``verification``); the result is a flat dict of those, plus ``status`` ("published" when the
    verification passed, else "unpublished").
    """
    return {
        "project": summary["project"],
        "release": summary["release"],
        "status": "published" if summary.get("verification", {}).get("passed") else "unpublished",
        "studies_exported": summary["studies_exported"],
        "instances_exported": summary["instances_exported"],
        "subjects": summary["subjects"],
        "excluded": summary["excluded"],
        "quarantined": summary["quarantined"],
    }
