"""On-premises quarantine: objects that could not be exported safely, kept with their reason.

Nothing is lost: the original bytes are kept under ``RIDL_HOME/quarantine/<project>/<release>``
named by their SHA-256 (never by a source path, which may carry an accession number), with a
record of the reason and where the object came from. Quarantine never leaves the research office.

Curation floor (``curation/``): the per-study work and ``ridl deid`` (``flows``) quarantine
through :func:`quarantine_file`; :mod:`curation.review` lists what is there.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ridl import settings


@dataclass(frozen=True)
class QuarantineRecord:
    """Why one object is in quarantine: its bytes' hex SHA-256 (its file name), the reason
    code, the source URL (or ``deid``), its location there (a path: may hold PHI, stays on
    premises), its study key when known, and a detail without PHI."""

    sha256: str
    reason: str
    source: str
    location: str
    study_key: str | None
    detail: str = ""


def quarantine_root(project: str, release: str) -> Path:
    """The release's quarantine folder, ``RIDL_HOME/quarantine/<project>/<release>`` (not made)."""
    return settings.quarantine_dir() / project / release


def quarantine_file(
    project: str,
    release: str,
    path: Path,
    reason: str,
    *,
    source: str,
    location: str,
    study_key: str | None = None,
    detail: str = "",
) -> QuarantineRecord:
    """Copy ``path`` into quarantine with its reason; idempotent for the same bytes and reason.

    The bytes go to ``<sha256>.bin`` (written once; a missing file is kept as empty bytes) and
    the record to ``<sha256>.json`` (rewritten) in a 0700 folder. Returns the record.
    """
    data = path.read_bytes() if path.exists() else b""
    digest = hashlib.sha256(data).hexdigest()
    folder = quarantine_root(project, release)
    settings.private_dir(folder)  # PHI: 0700 folders, 0600 files whatever the umask
    blob = folder / f"{digest}.bin"
    if not blob.exists():
        tmp = folder / f".{digest}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        settings.private_file(tmp).replace(blob)
    record = QuarantineRecord(digest, reason, source, location, study_key, detail)
    (folder / f"{digest}.json").write_text(json.dumps(asdict(record), indent=2, sort_keys=True))
    settings.private_file(folder / f"{digest}.json")
    return record


def list_quarantine(project: str, release: str) -> list[QuarantineRecord]:
    """The release's quarantine records, sorted by SHA-256 (empty when there is none)."""
    folder = quarantine_root(project, release)
    if not folder.exists():
        return []
    return [QuarantineRecord(**json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]
