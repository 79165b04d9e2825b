"""Release manifests: every exported object with its size and SHA-256, and the run's counts.

The manifest is assembled from the per-study parts in the object store, sorted by key, so a
resumed run and an uninterrupted one write the same manifest byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from export.store import ObjectStore

MANIFEST_COLUMNS = [
    "key",
    "size",
    "sha256",
    "research_id",
    "study_uid",
    "series_uid",
    "sop_uid",
    "sop_class_uid",
    "modality",
    "study_date",
]


@dataclass(frozen=True)
class ReleaseFiles:
    manifest_parquet: str
    manifest_csv: str
    summary: str


def release_files(prefix: str) -> ReleaseFiles:
    return ReleaseFiles(
        manifest_parquet=f"{prefix}/manifest.parquet",
        manifest_csv=f"{prefix}/manifest.csv",
        summary=f"{prefix}/summary.json",
    )


def read_parts(store: ObjectStore, prefix: str) -> list[dict[str, Any]]:
    parts = []
    for info in store.list(f"{prefix}/parts/"):
        if info.key.endswith(".json"):
            parts.append(json.loads(store.get_bytes(info.key)))
    return parts


def build_manifest(
    store: ObjectStore, prefix: str, selected: int, project: str, release: str
) -> dict[str, Any]:
    """Write manifest.parquet, manifest.csv and summary.json for the release; return the summary."""
    parts = read_parts(store, prefix)
    rows: list[dict[str, Any]] = []
    excluded: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    studies_done = 0
    for part in parts:
        rows.extend(part["objects"])
        excluded.update(part["excluded"])
        quarantined.update(part["quarantined"])
        if part.get("study"):
            studies_done += 1
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).sort_values("key").reset_index(drop=True)
    frame["size"] = frame["size"].astype("int64")
    files = release_files(prefix)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    store.put_bytes(files.manifest_parquet, sink.getvalue())
    store.put_bytes(files.manifest_csv, frame.to_csv(index=False).encode())
    summary: dict[str, Any] = {
        "project": project,
        "release": release,
        "studies_selected": selected,
        "studies_done": studies_done,
        "studies_exported": int(frame["study_uid"].nunique()),
        "subjects": int(frame["research_id"].nunique()),
        "instances_exported": len(frame),
        "bytes_exported": int(frame["size"].sum()),
        "by_modality": {
            k: int(v) for k, v in frame["modality"].value_counts().sort_index().items()
        },
        "excluded": dict(sorted(excluded.items())),
        "quarantined": dict(sorted(quarantined.items())),
        "manifest": files.manifest_parquet,
        "manifest_csv": files.manifest_csv,
    }
    labels_key = f"{prefix}/labels.parquet"
    if store.exists(labels_key):
        # Labels from worklists and hooks (curation.labels) travel with the release.
        data = store.get_bytes(labels_key)
        summary["labels"] = {
            "key": labels_key,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "rows": pq.read_metadata(io.BytesIO(data)).num_rows,
        }
    store.put_bytes(files.summary, json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


def read_manifest(store: ObjectStore, prefix: str) -> pd.DataFrame:
    data = store.get_bytes(release_files(prefix).manifest_parquet)
    return pq.read_table(io.BytesIO(data)).to_pandas()
