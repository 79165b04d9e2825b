"""Whether a release is published, and the marker that publishing writes.

A release is published once it has passed verification and its marker is written: on premises
(``RIDL_HOME/releases/<project>/<release>/published.json``, with a fingerprint of the project
secret it was made with) and in the object store (``<project>/<release>/published.json``, for
researchers and the pull client). Anything that publishes a release calls :func:`mark_published`;
anything that must not change once a release is out (the project secret) asks
:func:`release_is_published` or :func:`published_releases`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from export.store import ObjectStore, open_store
from ridl import settings

MARKER = "published.json"


def _marker_path(project: str, release: str) -> Path:
    from ridl.catalog import release_dir

    return release_dir(project, release) / MARKER


def mark_published(
    project: str, release: str, store: ObjectStore, **details: Any
) -> dict[str, Any]:
    """Write both markers; ``details`` are counts and keys only (they go to the store too)."""
    from ridl import audit
    from ridl.secrets import load_secret, secret_fingerprint

    record: dict[str, Any] = {
        "project": project,
        "release": release,
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **details,
    }
    store.put_bytes(f"{project}/{release}/{MARKER}", json.dumps(record, indent=2).encode())
    on_prem = dict(
        record,
        store=store.url,
        secret_fingerprint=secret_fingerprint(load_secret(project, check_published=False)),
    )
    path = _marker_path(project, release)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(on_prem, indent=2, sort_keys=True))
    audit.record("release.published", project=project, release=release, store=store.url, **details)
    return record


def release_is_published(project: str, release: str, store_url: str | None = None) -> bool:
    """True when the on-premises marker exists, or the store given holds the release's marker."""
    if _marker_path(project, release).exists():
        return True
    if store_url is not None:
        return open_store(store_url).exists(f"{project}/{release}/{MARKER}")
    return False


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
