"""Publishing a release: immutable, versioned, signed, and able to retract what must go.

After the flow's manifest step, :func:`publish_release` adds to the release prefix:

* ``manifest.json`` — every object (path relative to the release, size, SHA-256, research ID,
  UIDs), where the release is stored, and the SHA-256 of every other release file; it is the
  document researchers verify, signed with Ed25519 in ``manifest.json.sig``;
* ``SHA256SUMS`` — ``sha256sum -c`` format, paths relative to the release prefix;
* ``s5cmd-commands.txt`` — one ``cp`` per object and per release file (all that ``SHA256SUMS``
  covers, ``SHA256SUMS`` itself, the manifest, its signature and the notes), for ``s5cmd run``;
* ``dataset_description.json`` — Name, License, Authors, EthicsApprovals (the REB number),
  GeneratedBy (ridl version and recipe hash), HowToAcknowledge;
* ``release-signing.pub`` and ``RELEASE_NOTES.md`` — the public key and its fingerprint;
* ``retractions.json`` (every release after the first) — what changed against the previous
  release and what was retracted from earlier releases: subjects who withdrew, instances that
  IOCM rejected after they were published. Retracted objects are deleted from storage.

The signature is written last: it is what marks a release as published. Publishing again with
the same objects returns the existing publication; anything else is refused, because a
published release never changes (publish a new release instead).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from export import partitions as pt
from export.local import LocalStore
from export.manifest import read_manifest, read_parts, release_files, write_single_tables
from export.signing import fingerprint, load_or_create_signing_key, public_pem, sign
from export.store import ObjectStore, open_store
from ridl import __version__
from ridl.errors import ReleaseError
from ridl.projects import load_project
from ridl.reasons import Reason
from ridl.releases import load_withdrawn

FORMAT = "ridl-release/1"
MANIFEST_JSON = "manifest.json"
SIGNATURE = "manifest.json.sig"
PUBLIC_KEY = "release-signing.pub"
SUMS = "SHA256SUMS"
COMMANDS = "s5cmd-commands.txt"
DESCRIPTION = "dataset_description.json"
NOTES = "RELEASE_NOTES.md"
RETRACTIONS = "retractions.json"
INDEX = "releases.json"
# Keys of a partition's publish entry that stay out of the signed index (counts for summary.json).
UNSIGNED = frozenset({"withdrawn_excluded", "kept"})
OBJECT_FIELDS = ("research_id", "study_uid", "series_uid", "sop_uid", "modality", "study_date")


@dataclass(frozen=True)
class Publication:
    """What a publish did; counts and names only."""

    project: str
    release: str
    objects: int
    bytes: int
    fingerprint: str
    already_published: bool
    previous_release: str | None
    retracted: int
    withdrawn_excluded: int

    def as_dict(self) -> dict[str, Any]:
        """The publication as a plain dict (JSON-ready)."""
        return dict(self.__dict__)


# --- helpers ---------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def storage_info(store: ObjectStore, prefix: str) -> dict[str, Any]:
    """Where a researcher's client fetches the release from (no credentials, ever)."""
    from export.s3 import S3Store

    if isinstance(store, S3Store):
        return {
            "type": "s3",
            "bucket": store.bucket,
            "prefix": store.s3_key(prefix),
            "endpoint_url": store.settings.endpoint_url,
            "region": store.settings.region,
        }
    if isinstance(store, LocalStore):
        return {"type": "file", "root": str(store.root / prefix)}
    return {"type": "other", "url": store.url, "prefix": prefix}


def read_published(store: ObjectStore, prefix: str) -> dict[str, Any] | None:
    """A published release's manifest.json, or None when it is not (fully) published."""
    if not store.exists(f"{prefix}/{SIGNATURE}"):
        return None
    data: dict[str, Any] = json.loads(store.get_bytes(f"{prefix}/{MANIFEST_JSON}"))
    return data


def read_index(store: ObjectStore, project_id: str) -> list[dict[str, Any]]:
    """The project's release index (``<project>/releases.json``): one entry per published
    release (``release``, ``published_at``, ``key`` of its manifest), oldest first; [] if none."""
    key = f"{project_id}/{INDEX}"
    if not store.exists(key):
        return []
    entries: list[dict[str, Any]] = json.loads(store.get_bytes(key))["releases"]
    return entries


def retracted_paths(store: ObjectStore, project_id: str, release: str) -> dict[str, str]:
    """Objects of ``release`` that later releases retracted (path -> reason)."""
    found: dict[str, str] = {}
    for entry in read_index(store, project_id):
        key = f"{project_id}/{entry['release']}/{RETRACTIONS}"
        if entry["release"] == release or not store.exists(key):
            continue
        for item in json.loads(store.get_bytes(key))["retracted"]:
            if item["release"] == release:
                found[item["path"]] = item["reason"]
    return found


def _write_manifest_tables(store: ObjectStore, prefix: str, frame: Any) -> None:
    """Write the manifest again from ``frame`` (a pandas frame of MANIFEST_COLUMNS): each
    partition with its rows, and the single tables (tests change a manifest with it)."""
    buckets = pt.dataset_buckets(store, prefix)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    rids = table.column("research_id").to_pylist()
    for bucket in range(buckets):
        mask = pa.array([pt.bucket_of(r, buckets) == bucket for r in rids])
        data = pt.parquet_bytes(table.filter(mask).sort_by("key"))
        store.put_bytes(f"{prefix}/{pt.partition_keys(bucket, buckets).parquet}", data)
    write_single_tables(store, prefix, frame)


# --- publishing --------------------------------------------------------------------------------


def publish_release(
    store: ObjectStore | str | None,
    project_id: str,
    release: str,
    *,
    recipe_sha256: str,
    license: str | None = None,
    how_to_acknowledge: str | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Sign and publish a release whose manifest the flow has written; see the module doc.

    ``recipe_sha256`` is the hex digest of the compiled recipe the release was made with
    (``deid_recipes.Recipe.digest``); it goes into ``dataset_description.json`` and the manifest.
    Each partition of the manifest gets its ``SHA256SUMS`` and ``s5cmd-commands.txt``
    (:func:`publish_partition`, one partition in memory at a time, skipped when a killed
    publication already finished it); ``manifest.json`` is the release index listing every
    partition's files with their SHA-256 and size (and, for a small release, every object), and
    its signature covers them all. Returns the :class:`Publication` as a dict (counts and names
    only).

    Raises:
        ReleaseError: the release has no manifest yet, or is already published with other
            objects (a published release never changes).
        ProjectNotFound: the project is not in the registry.
    """
    store = store if store is not None and not isinstance(store, str) else open_store(store)
    project = load_project(project_id)
    prefix = f"{project_id}/{release}"
    buckets = pt.dataset_buckets(store, prefix)
    if buckets == 0 or not store.exists(release_files(prefix).summary):
        raise ReleaseError(
            f"release {prefix} has no manifest in {store.url}; run the extraction first"
        )
    now = now or dt.datetime.now(dt.UTC)
    withdrawn = load_withdrawn(project_id)
    storage = storage_info(store, prefix)
    base = f"s3://{storage['bucket']}/{storage['prefix']}" if storage["type"] == "s3" else prefix

    existing = read_published(store, prefix)
    if existing is not None:
        if _same_release(store, prefix, existing, withdrawn, buckets):
            return _publication(existing, already=True)
        raise ReleaseError(
            f"release {prefix} is already published and cannot be changed; "
            "publish the new data as a new release (change: --release)"
        )

    entries = [
        publish_partition(store, prefix, b, buckets, withdrawn, base) for b in range(buckets)
    ]
    total = sum(e["rows"] for e in entries)
    withdrawn_excluded = sum(e["withdrawn_excluded"] for e in entries)
    small = total <= pt.small_release_limit()
    objects: list[dict[str, Any]] | None = None
    if small:
        objects = sorted(
            (o for b in range(buckets) for o in _partition_objects(store, prefix, b, buckets)),
            key=lambda o: o["path"],
        )
        if withdrawn_excluded:  # a subject withdrew before this release was published
            frame = read_manifest(store, prefix)
            frame = frame[~frame["research_id"].isin(sorted(withdrawn))].reset_index(drop=True)
            write_single_tables(store, prefix, frame)
    else:  # the single tables are for small releases only
        for single in (release_files(prefix).manifest_parquet, release_files(prefix).manifest_csv):
            store.delete(single)
    if withdrawn_excluded:  # summary.json counts what the release now holds
        _count_withdrawal(store, prefix, entries)

    index = [e for e in read_index(store, project_id) if e["release"] != release]
    previous = previous_release(store, project_id, index)
    retractions = _retract(store, project_id, release, index, previous, objects, withdrawn, now)

    key = load_or_create_signing_key()
    pem = public_pem(key)
    fp = fingerprint(pem)
    description = {
        "Name": f"{project.title} — release {release}",
        "DatasetType": "raw",
        "License": license or str(project.extra.get("license", "Restricted: REB-approved use")),
        "Authors": [project.pi],
        "EthicsApprovals": [project.reb_number],
        "GeneratedBy": [
            {
                "Name": "ridl",
                "Version": __version__,
                "Recipe": project.recipe_spec(),
                "RecipeHash": "sha256:" + recipe_sha256,
            }
        ],
        "HowToAcknowledge": how_to_acknowledge
        or str(
            project.extra.get(
                "how_to_acknowledge",
                f"Cite REB approval {project.reb_number} and the data provider "
                f"(project '{project.id}', release {release}).",
            )
        ),
    }
    written: dict[str, bytes] = {DESCRIPTION: _json(description), PUBLIC_KEY: pem.encode()}
    if retractions is not None:
        written[RETRACTIONS] = _json(retractions)
    for name in ("manifest.parquet", "manifest.csv", "summary.json"):
        written_name = f"{prefix}/{name}"
        if store.exists(written_name):
            written[name] = store.get_bytes(written_name)
    sums = [f"{o['sha256']}  {o['path']}" for o in objects or []]
    sums += [f"{_sha(data)}  {name}" for name, data in sorted(written.items())]
    written[SUMS] = ("\n".join(sums) + "\n").encode()
    # Everything a researcher needs to check what they fetched: the objects (small release),
    # every file that SHA256SUMS covers, SHA256SUMS itself, and the signed manifest with its
    # signature and notes (``s5cmd run`` then ``sha256sum -c SHA256SUMS`` must pass in the
    # download folder). A large release's objects are fetched partition by partition.
    fetched = [o["path"] for o in objects or []] + sorted(written)
    fetched += [MANIFEST_JSON, SIGNATURE, NOTES]
    written[COMMANDS] = "".join(
        f"cp {base}/{path} {path}\n"
        for path in fetched  # keys are check_key-safe
    ).encode()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "project": project.id,
        "release": release,
        "reb_number": project.reb_number,
        "published_at": now.isoformat(timespec="seconds"),
        "previous_release": previous,
        "generated_by": {"ridl": __version__, "recipe_hash": "sha256:" + recipe_sha256},
        "storage": storage,
        "signing_key": fp,
        "counts": {
            "objects": total,
            "bytes": sum(e["bytes"] for e in entries),
            "subjects": sum(e["subjects"] for e in entries),
            "retracted": len(retractions["retracted"]) if retractions else 0,
            "withdrawn_excluded": withdrawn_excluded,
        },
        "files": {
            name: {"sha256": _sha(data), "size": len(data)}
            for name, data in sorted(written.items())
        },
        "partitions": {
            "buckets": buckets,
            "bucket_of": "first 4 bytes of SHA-256(research_id), big-endian, modulo buckets",
            "list": [{k: v for k, v in e.items() if k not in UNSIGNED} for e in entries],
        },
    }
    if objects is not None:
        manifest["objects"] = objects
    manifest_bytes = _json(manifest)
    written[NOTES] = _notes(manifest, pem).encode()
    for name, data in written.items():
        if name not in ("manifest.parquet", "manifest.csv", "summary.json"):
            store.put_bytes(f"{prefix}/{name}", data)
    store.put_bytes(f"{prefix}/{MANIFEST_JSON}", manifest_bytes)
    store.put_bytes(f"{prefix}/{SIGNATURE}", (sign(key, manifest_bytes) + "\n").encode())
    index.append(
        {
            "release": release,
            "published_at": manifest["published_at"],
            "key": fp,
            "objects": total,
        }
    )
    store.put_bytes(f"{project_id}/{INDEX}", _json({"project": project_id, "releases": index}))
    return _publication(manifest, already=False)


def previous_release(
    store: ObjectStore, project_id: str, index: list[dict[str, Any]]
) -> str | None:
    """The latest published release of ``index`` that holds objects; None when there is none.

    An empty release (published with ``--allow-empty``) is never anybody's previous release: a
    diff against it would list every object as added. Index entries written before they
    carried ``objects`` are counted from their manifest.
    """
    for entry in reversed(index):
        count = entry.get("objects")
        if count is None:
            manifest = read_published(store, f"{project_id}/{entry['release']}")
            count = manifest["counts"]["objects"] if manifest else 0
        if count:
            return str(entry["release"])
    return None


def _object(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {
        "path": row["key"][len(prefix) + 1 :],
        "size": int(row["size"]),
        "sha256": row["sha256"],
        **{f: str(row[f]) for f in OBJECT_FIELDS},
    }


def _partition_objects(
    store: ObjectStore, prefix: str, bucket: int, buckets: int
) -> Iterator[dict[str, Any]]:
    for row in pt.read_partition(store, prefix, bucket, buckets).to_pylist():
        yield _object(row, prefix)


def _count_withdrawal(store: ObjectStore, prefix: str, entries: list[dict[str, Any]]) -> None:
    """Rewrite ``summary.json`` after a withdrawal removed objects at publish: the exported
    counts become what the partitions keep, the removed instances are counted under
    ``withdrawn`` in ``excluded``, and ``withdrawn_at_publish`` ({studies, instances}) says how
    many studies and instances were removed here. Idempotent: a publish
    killed after this and resumed gives the same summary.
    """
    key = release_files(prefix).summary
    summary = json.loads(store.get_bytes(key))
    earlier = summary.pop("withdrawn_at_publish", {"studies": 0, "instances": 0})
    instances = sum(e["withdrawn_excluded"] for e in entries)
    studies = sum(e["kept"]["studies"] for e in entries)
    removed = {
        "studies": summary["studies_exported"] + earlier["studies"] - studies,
        "instances": instances,
    }
    by_modality: Counter[str] = Counter()
    for entry in entries:
        by_modality.update(entry["kept"]["by_modality"])
    summary.update(
        studies_exported=studies,
        subjects=sum(e["subjects"] for e in entries),
        instances_exported=sum(e["rows"] for e in entries),
        bytes_exported=sum(e["bytes"] for e in entries),
        by_modality=dict(sorted(by_modality.items())),
        withdrawn_at_publish=removed,
    )
    # The removed objects are instances left out (``excluded``); ``excluded_studies`` counts
    # only what selection left out in whole studies, so it does not change here.
    counts = dict(summary.get("excluded", {}))
    counts[Reason.WITHDRAWN] = counts.get(Reason.WITHDRAWN, 0) - earlier["instances"] + instances
    summary["excluded"] = dict(sorted(counts.items()))
    store.put_bytes(key, json.dumps(summary, indent=2, sort_keys=True).encode())


def publish_partition(
    store: ObjectStore,
    prefix: str,
    bucket: int,
    buckets: int,
    withdrawn: set[str],
    base: str,
) -> dict[str, Any]:
    """Publish one partition: drop withdrawn subjects, write its checksums and commands.

    ``base`` is where the release's files are fetched from (``s3://bucket/prefix`` or the
    prefix). Objects of subjects in ``withdrawn`` are deleted from storage and the partition's
    Parquet file is written again without them. ``partitions/bucket=NNN/SHA256SUMS`` lists
    the partition's objects and Parquet file with paths relative to the release folder (run
    ``sha256sum -c partitions/bucket=NNN/SHA256SUMS`` there); ``s5cmd-commands.txt`` beside it
    copies those files, the checksum file itself and the signed index (manifest.json, its
    signature and public key) into the same relative paths. Returns the partition's index
    entry: bucket, name, rows, bytes, subjects, ``files`` {path: {sha256, size}} and
    ``withdrawn_excluded`` (not signed). An entry written by an earlier, killed publication
    under the same withdrawals and base is returned as it is.
    """
    keys = pt.partition_keys(bucket, buckets)
    state_key = f"{prefix}/{pt.BUILD}/{keys.name}.published.json"
    tag = _sha(json.dumps([sorted(withdrawn), base]).encode())
    if store.exists(state_key):
        entry: dict[str, Any] = json.loads(store.get_bytes(state_key))
        parquet = f"{prefix}/{keys.parquet}"
        if (
            entry.pop("tag", None) == tag
            and store.exists(parquet)
            and _sha(store.get_bytes(parquet)) == entry["files"][keys.parquet]["sha256"]
        ):
            return entry
    table = pt.read_partition(store, prefix, bucket, buckets)
    leaving = pc.is_in(table.column("research_id"), pa.array(sorted(withdrawn), pa.string()))
    withdrawn_excluded = int(pc.sum(leaving).as_py() or 0)
    if withdrawn_excluded:
        for key in table.filter(leaving).column("key").to_pylist():
            store.delete(key)
        table = table.filter(pc.invert(leaving))
        store.put_bytes(f"{prefix}/{keys.parquet}", pt.parquet_bytes(table))
    # What the partition keeps, for summary.json when a withdrawal removed objects at publish.
    kept = {
        "studies": len(pc.unique(table.column("study_uid"))),
        "by_modality": dict(Counter(table.column("modality").to_pylist())),
    }
    parquet_data = store.get_bytes(f"{prefix}/{keys.parquet}")
    paths = [k[len(prefix) + 1 :] for k in table.column("key").to_pylist()]
    sums = [f"{h}  {p}" for h, p in zip(table.column("sha256").to_pylist(), paths, strict=True)]
    sums.append(f"{_sha(parquet_data)}  {keys.parquet}")
    sums_data = ("\n".join(sums) + "\n").encode()
    fetched = [*paths, keys.parquet, keys.sums, MANIFEST_JSON, SIGNATURE, PUBLIC_KEY]
    commands = "".join(f"cp {base}/{path} {path}\n" for path in fetched).encode()
    store.put_bytes(f"{prefix}/{keys.sums}", sums_data)
    store.put_bytes(f"{prefix}/{keys.commands}", commands)
    entry = {
        "bucket": bucket,
        "name": keys.name,
        "rows": table.num_rows,
        "bytes": int(pc.sum(table.column("size")).as_py() or 0),
        "subjects": len(pc.unique(table.column("research_id"))),
        "files": {
            keys.parquet: {"sha256": _sha(parquet_data), "size": len(parquet_data)},
            keys.sums: {"sha256": _sha(sums_data), "size": len(sums_data)},
            keys.commands: {"sha256": _sha(commands), "size": len(commands)},
        },
        "withdrawn_excluded": withdrawn_excluded,
        "kept": kept,
    }
    store.put_bytes(state_key, json.dumps({**entry, "tag": tag}, sort_keys=True).encode())
    return entry


def _same_release(
    store: ObjectStore,
    prefix: str,
    existing: dict[str, Any],
    withdrawn: set[str],
    buckets: int,
) -> bool:
    """Whether publishing again would publish what is already published (a rerun flow),
    maybe less objects of subjects who withdrew since."""
    if "objects" in existing:
        kept = [o for o in existing["objects"] if o["research_id"] not in withdrawn]
        current = sorted(
            (
                o
                for b in range(buckets)
                for o in _partition_objects(store, prefix, b, buckets)
                if o["research_id"] not in withdrawn
            ),
            key=lambda o: o["path"],
        )
        return kept == current
    published = existing.get("partitions", {})
    if published.get("buckets") != buckets:
        return False
    for entry in published.get("list", []):
        path = pt.partition_keys(entry["bucket"], buckets).parquet
        key = f"{prefix}/{path}"
        if not store.exists(key) or _sha(store.get_bytes(key)) != entry["files"][path]["sha256"]:
            return False
    return True


def published_objects(
    store: ObjectStore, prefix: str, manifest: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Every object a published release lists ({path, size, sha256, research_id, UIDs...}):
    from its manifest.json (small release) or partition by partition (large), never all held."""
    if "objects" in manifest:
        yield from manifest["objects"]
        return
    buckets = int(manifest.get("partitions", {}).get("buckets", 0))
    for bucket in range(buckets):
        yield from _partition_objects(store, prefix, bucket, buckets)


def _publication(manifest: dict[str, Any], already: bool) -> dict[str, Any]:
    counts = manifest["counts"]
    return Publication(
        project=manifest["project"],
        release=manifest["release"],
        objects=counts["objects"],
        bytes=counts["bytes"],
        fingerprint=manifest["signing_key"],
        already_published=already,
        previous_release=manifest.get("previous_release"),
        retracted=counts["retracted"],
        withdrawn_excluded=counts["withdrawn_excluded"],
    ).as_dict()


def _retract(
    store: ObjectStore,
    project_id: str,
    release: str,
    index: list[dict[str, Any]],
    previous: str | None,
    objects: list[dict[str, Any]] | None,
    withdrawn: set[str],
    now: dt.datetime,
) -> dict[str, Any] | None:
    """Retract withdrawn subjects and IOCM-rejected instances from earlier releases; diff.

    Earlier releases are read object by object (:func:`published_objects`). The diff against
    ``previous`` (the latest earlier release with objects; ``changes``: SOP Instance UIDs added,
    removed, changed) is written when both releases are small (``objects`` given, the previous
    one lists its objects); otherwise ``changes`` is None: at scale the lists would be as large
    as the release.
    """
    if not index:
        return None
    prefix = f"{project_id}/{release}"
    rejected: set[str] = set()
    for part in read_parts(store, prefix):
        rejected.update(part.get("iocm_rejected", []))
    retracted: list[dict[str, Any]] = []
    previous_objects: list[dict[str, Any]] | None = []
    for entry in index:
        old_prefix = f"{project_id}/{entry['release']}"
        old = read_published(store, old_prefix)
        if old is None:
            continue
        if entry["release"] == previous:
            previous_objects = old.get("objects")
        for obj in published_objects(store, old_prefix, old):
            reason = None
            if obj["research_id"] in withdrawn:
                reason = Reason.SUBJECT_WITHDREW
            elif obj["sop_uid"] in rejected:
                reason = Reason.IOCM_REJECTED
            if reason is None:
                continue
            key = f"{old_prefix}/{obj['path']}"
            was_there = store.exists(key)
            if was_there:
                store.delete(key)
            retracted.append(
                {
                    "release": entry["release"],
                    "path": obj["path"],
                    "research_id": obj["research_id"],
                    "sop_uid": obj["sop_uid"],
                    "sha256": obj["sha256"],
                    "reason": reason,
                    "removed_from_storage": True,
                    "already_removed": not was_there,
                }
            )
    changes: dict[str, Any] | None = None
    if objects is not None and previous_objects is not None:
        before = {o["sop_uid"]: o for o in previous_objects}
        after = {o["sop_uid"]: o for o in objects}
        changed = sorted(
            u for u in before.keys() & after.keys() if before[u]["sha256"] != after[u]["sha256"]
        )
        changes = {
            "added": sorted(after.keys() - before.keys()),
            "removed": sorted(before.keys() - after.keys()),
            "changed": changed,
            "unchanged": len(before.keys() & after.keys()) - len(changed),
        }
    return {
        "project": project_id,
        "release": release,
        "previous_release": previous,
        "generated_at": now.isoformat(timespec="seconds"),
        "changes": changes,
        "retracted": retracted,
        "retracted_by_reason": {
            r: sum(1 for x in retracted if x["reason"] == r)
            for r in sorted({x["reason"] for x in retracted})
        },
    }


def _notes(manifest: dict[str, Any], pem: str) -> str:
    counts = manifest["counts"]
    lines = [
        f"# Release {manifest['project']}/{manifest['release']}",
        "",
        f"- REB approval: {manifest['reb_number']}",
        f"- published: {manifest['published_at']}",
        f"- objects: {counts['objects']} ({counts['bytes']:,} bytes), "
        f"subjects: {counts['subjects']}",
        f"- previous release: {manifest['previous_release'] or 'none'}",
        f"- retracted from earlier releases: {counts['retracted']} (see {RETRACTIONS})",
        "",
        "## Checking what you received",
        "",
        "`ridl pull` checks the signature of `manifest.json` and the SHA-256 of every file.",
        "By hand: `sha256sum -c SHA256SUMS` in the release folder.",
        "",
        f"Signing key fingerprint: `{manifest['signing_key']}`",
        "",
        "```",
        pem.strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def show_release(store: ObjectStore | str | None, project_id: str, release: str) -> dict[str, Any]:
    """The published manifest's header (everything but the object list)."""
    store = store if store is not None and not isinstance(store, str) else open_store(store)
    manifest = read_published(store, f"{project_id}/{release}")
    if manifest is None:
        raise ReleaseError(f"release {project_id}/{release} is not published in {store.url}")
    return {k: v for k, v in manifest.items() if k != "objects"}
