"""Release manifests: every exported object with its size and SHA-256, and the run's counts.

A study's worker records what it did in a *manifest part*, ``<project>/<release>/parts/<study
key>.json`` (one more, ``parts/_source.json``, counts the files of the source that belong to no
study). The manifest is assembled from the parts in the object store, sorted by key, so a resumed
run and an uninterrupted one write the same manifest byte for byte.

This module owns the records at that seam: :class:`ObjectRow` (one exported object),
:class:`ManifestPart` (one part) and :class:`ReleaseSummary` (``summary.json``). They are
TypedDicts, so what is written is exactly ``json.dumps`` of the record and what is read is the
parsed JSON: every writer and reader goes through :func:`study_part`, :func:`source_part`,
:func:`write_part`, :func:`read_part` / :func:`read_parts` and :func:`read_summary`.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NotRequired, TypedDict, cast

import orjson

from export.store import ObjectStore, read_in_order

# Arrow and pandas are imported where a table is read or written: the per-study work (a run's
# batches, ridl deid) uses this module's records and keys only, and starts half a second sooner.
if TYPE_CHECKING:
    import pandas as pd
    from pydicom.dataset import Dataset

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

# The part of what the source held that belongs to no study (unreadable files, selection's
# exclusions); its "study" is None.
SOURCE_PART = "_source"


class ObjectRow(TypedDict):
    """One exported object, as a manifest part lists it (all values de-identified).

    ``key`` is the object's key in the store (``<project>/<release>/<research id>/<study UID>/
    <series UID>/<SOP Instance UID>.dcm``); ``size`` its length in bytes; ``sha256`` the hex
    SHA-256 of its bytes. The UIDs are the de-identified Study, Series and SOP Instance UIDs and
    the SOP Class UID; ``modality`` is upper case; ``study_date`` the shifted StudyDate (DICOM DA,
    ``YYYYMMDD``, or ``""``); ``study_description`` the retained StudyDescription or ``""``.
    The manifest tables keep every field but ``study_description`` (:data:`MANIFEST_COLUMNS`).
    """

    key: str
    size: int
    sha256: str
    research_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    study_date: str
    study_description: str


class VerificationRecord(TypedDict):
    """How a study was verified in the stream, before any of its objects was stored.

    ``passed`` is True when every object stored for the study was searched and nothing was
    found in it (objects with a hit are quarantined, never stored, and counted in ``hits``);
    ``objects`` and ``bytes`` (in bytes) are what was searched; ``terms`` the dictionary's
    terms by kind (:meth:`export.identifiers.IdentifierDictionary.kinds`, cross-study terms
    included); ``cross_study_terms`` how many of those came from other studies;
    ``ocr_objects`` the objects whose pixel text (read once, by curation) was searched too;
    ``engine`` the ridl version, ``rules`` :data:`export.identifiers.RULES_VERSION` and
    ``recipe`` the hex SHA-256 of the compiled recipe the objects were de-identified with.
    """

    passed: bool
    objects: int
    bytes: int
    hits: int
    terms: dict[str, int]
    cross_study_terms: int
    ocr_objects: int
    engine: str
    rules: str
    recipe: str


class FailedRetrieval(TypedDict):
    """Why the archive could not deliver a study: ``reason`` a code of the ``retrieval`` group
    of :class:`ridl.reasons.Reason`, ``detail`` the status or HTTP code (never a UID or name)."""

    reason: str
    detail: str


class FailedStudy(FailedRetrieval):
    """A failed study as the summary lists it: its study key (de-identified Study Instance UID)
    with the reason and detail of its part."""

    study: str


class ManifestPart(TypedDict):
    """What one study's work recorded: ``parts/<study key>.json``; written last, so it marks the
    study done.

    ``study`` is the study key (the de-identified Study Instance UID), or None for the source
    part. ``objects`` are the exported objects sorted by key; ``excluded`` and ``quarantined``
    count instances by reason code. A study part also has ``site`` (a keyed token of the Issuer
    of Patient ID, never its name) and ``iocm_rejected`` (de-identified SOP Instance UIDs that
    IOCM rejected, sorted); the source part has neither. A part is published with the release,
    so it holds nothing derived from an original file's bytes or path: the review IDs of objects
    held for a reviewer (SHA-256 of source objects) stay on premises (``curation.review``);
    parts written before that may still hold them under ``review``. A study part written since
    stream verification also has ``verification`` (:class:`VerificationRecord`); parts written
    before it lack the key and still parse, but the release gate refuses them.
    A *failed-study part* (the archive could not deliver the study) has ``failed``
    (:class:`FailedRetrieval`) and no objects; it is not counted as done, and
    ``ridl run --retry-failed`` works the study again.
    """

    study: str | None
    objects: list[ObjectRow]
    excluded: dict[str, int]
    quarantined: dict[str, int]
    site: NotRequired[str]
    iocm_rejected: NotRequired[list[str]]
    verification: NotRequired[VerificationRecord]
    failed: NotRequired[FailedRetrieval]


class LabelsFile(TypedDict):
    """The release's labels table as the summary names it: key, size in bytes, hex SHA-256, rows."""

    key: str
    size: int
    sha256: str
    rows: int


class ReleaseSummary(TypedDict):
    """``summary.json``: the release's counts, written by :func:`build_manifest`.

    Counts are of studies, subjects (research IDs) and instances; ``bytes_exported`` is in bytes;
    ``by_modality`` counts exported instances per modality, ``excluded`` and ``quarantined``
    count instances per reason code (all three sorted by key), except that ``excluded`` also
    adds what selection removed, in whole studies (duplicate studies, opt-outs, withdrawals);
    ``excluded_studies`` (there when selection removed any) holds those study counts by
    reason, so a reader can tell the units apart. ``studies_done`` counts the
    study parts in the store (studies worked, exported or not), failed-study parts left out;
    when the archive could not deliver some studies, ``studies_failed`` counts them by reason
    code and ``failed_studies`` lists them (:class:`FailedStudy`, sorted by study key).
    ``manifest`` and ``manifest_csv`` are the store keys of the single manifest tables of a
    small release (for a large one, ``manifest`` is the dataset's folder and ``manifest_csv``
    is ""); ``manifest_dataset`` is the partitioned dataset's folder (``<prefix>/manifest/``)
    and ``partitions`` its number of partitions; ``labels`` is there once the release has a
    labels table.
    """

    project: str
    release: str
    studies_selected: int
    studies_done: int
    studies_exported: int
    subjects: int
    instances_exported: int
    bytes_exported: int
    by_modality: dict[str, int]
    excluded: dict[str, int]
    quarantined: dict[str, int]
    manifest: str
    manifest_csv: str
    excluded_studies: NotRequired[dict[str, int]]
    manifest_dataset: NotRequired[str]
    partitions: NotRequired[int]
    labels: NotRequired[LabelsFile]
    studies_failed: NotRequired[dict[str, int]]
    failed_studies: NotRequired[list[FailedStudy]]


@dataclass(frozen=True)
class ReleaseFiles:
    """Store keys of a release's manifest tables and summary."""

    manifest_parquet: str
    manifest_csv: str
    summary: str


def release_files(prefix: str) -> ReleaseFiles:
    """The keys under ``prefix``: manifest.parquet, manifest.csv and summary.json."""
    return ReleaseFiles(
        manifest_parquet=f"{prefix}/manifest.parquet",
        manifest_csv=f"{prefix}/manifest.csv",
        summary=f"{prefix}/summary.json",
    )


# --- manifest parts ------------------------------------------------------------------------------


def object_path(research_id: str, ds: Dataset) -> str:
    """An exported object's path in a release (its store key without ``<project>/<release>/``):
    ``<research id>/<Study Instance UID>/<Series Instance UID>/<SOP Instance UID>.dcm``, from
    the de-identified dataset ``ds``."""
    return f"{research_id}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


def part_key(prefix: str, study_key: str) -> str:
    """The store key of a study's part: ``<prefix>/parts/<study key>.json``."""
    return f"{prefix}/parts/{study_key}.json"


def source_part_key(prefix: str) -> str:
    """The store key of the source part: ``<prefix>/parts/_source.json``."""
    return part_key(prefix, SOURCE_PART)


def is_source_part(key: str) -> bool:
    """Whether a part's store key is the source part's (which belongs to no study)."""
    return key.endswith(f"/{SOURCE_PART}.json")


def _counts(counts: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items()))


def study_part(
    study: str,
    site: str,
    objects: list[ObjectRow],
    *,
    excluded: Mapping[str, int],
    quarantined: Mapping[str, int],
    iocm_rejected: Iterable[str] = (),
    verification: VerificationRecord | None = None,
    failed: FailedRetrieval | None = None,
) -> ManifestPart:
    """The part of one study: its key, site token, exported objects and counts by reason.

    ``objects`` are kept in the order given (the worker sorts them by key); counts are sorted by
    reason code, ``iocm_rejected`` sorted; ``verification`` is the study's stream
    verification record (left out when None); ``failed`` makes it a failed-study part (left out
    when None).
    """
    part = ManifestPart(
        study=study,
        site=site,
        objects=objects,
        excluded=_counts(excluded),
        quarantined=_counts(quarantined),
        iocm_rejected=sorted(iocm_rejected),
    )
    if verification is not None:
        part["verification"] = verification
    if failed is not None:
        part["failed"] = failed
    return part


def source_part(
    excluded: Mapping[str, int] | None = None, quarantined: Mapping[str, int] | None = None
) -> ManifestPart:
    """The source part: no study, no objects; counts by reason code.

    ``excluded`` counts the studies selection removed (duplicates, opt-outs, withdrawals);
    ``quarantined`` the files of the source that are not readable DICOM and so belong to no
    study.
    """
    return ManifestPart(
        study=None,
        objects=[],
        excluded=_counts(excluded or {}),
        quarantined=_counts(quarantined or {}),
    )


def encode_part(part: ManifestPart) -> bytes:
    """A part's bytes as stored: compact JSON with sorted keys (UTF-8)."""
    return json.dumps(part, sort_keys=True).encode()


def parse_part(data: bytes) -> ManifestPart:
    """A part from its stored bytes.

    Raises:
        ValueError: the bytes are not JSON (a part being replaced, or not a part).
    """
    return cast(ManifestPart, orjson.loads(data))  # its error is a ValueError


def write_part(store: ObjectStore, key: str, part: ManifestPart) -> None:
    """Store a part under ``key`` (see :func:`part_key`) in one put: whole or absent."""
    store.put_bytes(key, encode_part(part))


def read_part(store: ObjectStore, key: str) -> ManifestPart | None:
    """The part stored under ``key``, or None when there is none (the study is not done).

    Raises:
        ValueError: the stored bytes are not JSON.
    """
    if not store.exists(key):
        return None
    return parse_part(store.get_bytes(key))


def read_parts(store: ObjectStore, prefix: str) -> list[ManifestPart]:
    """Every part of the release under ``prefix`` (study parts and the source part), in store order.

    Raises:
        ValueError: a stored part is not JSON.
    """
    parts = []
    for info in store.list(f"{prefix}/parts/"):
        if info.key.endswith(".json"):
            parts.append(parse_part(store.get_bytes(info.key)))
    return parts


def part_bytes(part: ManifestPart) -> int:
    """Bytes of the objects a part exported."""
    return sum(o["size"] for o in part["objects"])


def part_instances(part: ManifestPart) -> int:
    """Instances a part met: exported, excluded or quarantined."""
    return len(part["objects"]) + sum(part["excluded"].values()) + sum(part["quarantined"].values())


# --- the manifest and the summary ---------------------------------------------------------------


def build_manifest(
    store: ObjectStore, prefix: str, selected: int, project: str, release: str
) -> ReleaseSummary:
    """Write the partitioned manifest, the counts of each partition and summary.json; return it.

    ``selected`` is the number of studies the frozen selection holds. The parts are read once,
    in store order, and their rows spilled to local shard files; each partition of the dataset
    (:mod:`export.partitions`: ``manifest/bucket=NNN/part-0.parquet``, one row per exported
    object, :data:`MANIFEST_COLUMNS`, sorted by key) is then written from its shards, so memory
    is bounded by one partition. A partition already written from the same parts is kept (a
    build killed half-way resumes to the same bytes). A release of at most
    :func:`export.partitions.small_release_limit` objects also gets today's single tables,
    ``manifest.parquet`` and ``manifest.csv``. ``summary.json`` is the :class:`ReleaseSummary`
    as indented JSON with sorted keys, written last.

    Raises:
        ValueError: a stored part is not JSON.
        ScopeError: ``RIDL_MANIFEST_PARTITION_ROWS`` or ``RIDL_SMALL_RELEASE_OBJECTS`` is not a
            number.
    """
    from export import partitions as pt

    excluded: Counter[str] = Counter()
    excluded_studies: Counter[str] = Counter()  # the source part's: selection removes studies
    quarantined: Counter[str] = Counter()
    studies_done = 0
    failed: list[FailedStudy] = []
    digest = hashlib.sha256()
    spill = pt.Spill(pt.spill_folder(store, prefix))
    try:
        listing = (i for i in store.list(f"{prefix}/parts/") if i.key.endswith(".json"))
        for info, data in read_in_order(store, listing):
            digest.update(f"{info.key}\n{len(data)}\n".encode())
            digest.update(data)
            part = parse_part(data)
            site = str(part.get("site", ""))
            spill.add_rows(part["objects"], site)
            excluded.update(part["excluded"])
            if part.get("study") is None:
                excluded_studies.update(part["excluded"])
            quarantined.update(part["quarantined"])
            why = part.get("failed")
            if part.get("study") and why is not None:
                failed.append(FailedStudy(study=str(part["study"]), **why))
            elif part.get("study"):
                studies_done += 1
        buckets = pt.bucket_count(spill.rows)
        stats = pt.write_partitions(store, prefix, spill, buckets, digest.hexdigest())
    finally:
        spill.close()
    files = release_files(prefix)
    objects = sum(s["rows"] for s in stats)
    small = objects <= pt.small_release_limit()
    if small:
        _write_single_tables(store, prefix, buckets)
    else:
        for key in (files.manifest_parquet, files.manifest_csv):
            store.delete(key)
    by_modality: Counter[str] = Counter()
    for s in stats:
        by_modality.update(s["by_modality"])
    summary = ReleaseSummary(
        project=project,
        release=release,
        studies_selected=selected,
        studies_done=studies_done,
        studies_exported=sum(s["studies"] for s in stats),
        subjects=sum(s["subjects"] for s in stats),
        instances_exported=objects,
        bytes_exported=sum(s["bytes"] for s in stats),
        by_modality=_counts(by_modality),
        excluded=_counts(excluded),
        quarantined=_counts(quarantined),
        manifest=files.manifest_parquet if small else f"{prefix}/{pt.DATASET}/",
        manifest_csv=files.manifest_csv if small else "",
        manifest_dataset=f"{prefix}/{pt.DATASET}/",
        partitions=buckets,
    )
    if +excluded_studies:
        summary["excluded_studies"] = _counts(+excluded_studies)
    if failed:
        summary["studies_failed"] = _counts(Counter(f["reason"] for f in failed))
        summary["failed_studies"] = sorted(failed, key=lambda f: f["study"])
    labels_key = f"{prefix}/labels.parquet"
    if store.exists(labels_key):
        # Labels from worklists and hooks (curation.labels) travel with the release.
        data = store.get_bytes(labels_key)
        summary["labels"] = LabelsFile(
            key=labels_key,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            rows=_parquet_rows(data),
        )
    store.put_bytes(files.summary, json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


def _parquet_rows(data: bytes) -> int:
    """The number of rows of a Parquet file held in ``data``."""
    import pyarrow.parquet as pq

    return int(pq.read_metadata(io.BytesIO(data)).num_rows)


def _write_single_tables(store: ObjectStore, prefix: str, buckets: int) -> None:
    """manifest.parquet and manifest.csv of a small release: every partition, by key."""
    import pandas as pd
    import pyarrow as pa

    from export import partitions as pt

    tables = [pt.read_partition(store, prefix, b, buckets) for b in range(buckets)]
    table = pa.concat_tables(tables).sort_by("key") if tables else pt.SCHEMA.empty_table()
    frame = table.to_pandas()
    frame = pd.DataFrame(frame, columns=MANIFEST_COLUMNS)
    frame["size"] = frame["size"].astype("int64")
    write_single_tables(store, prefix, frame)


def write_single_tables(store: ObjectStore, prefix: str, frame: pd.DataFrame) -> None:
    """Write a small release's ``manifest.parquet`` and ``manifest.csv`` from ``frame``
    (:data:`MANIFEST_COLUMNS`, sorted by key)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = release_files(prefix)
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    store.put_bytes(files.manifest_parquet, sink.getvalue())
    store.put_bytes(files.manifest_csv, frame.to_csv(index=False).encode())


def read_summary(store: ObjectStore, prefix: str) -> ReleaseSummary:
    """The release's ``summary.json`` as :func:`build_manifest` wrote it.

    Raises:
        FileNotFoundError: the release has no summary yet (the run has not finished).
        ValueError: the stored summary is not JSON.
    """
    return cast(ReleaseSummary, json.loads(store.get_bytes(release_files(prefix).summary)))


def read_manifest(store: ObjectStore, prefix: str) -> pd.DataFrame:
    """The manifest table: one row per exported object, :data:`MANIFEST_COLUMNS`, by key.

    The whole release in memory: for a small release (its ``manifest.parquet``) or a test;
    code that must scale reads one partition at a time (:mod:`export.partitions`).

    Raises:
        FileNotFoundError: the release has no manifest yet.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = release_files(prefix)
    if store.exists(files.manifest_parquet):
        return pq.read_table(io.BytesIO(store.get_bytes(files.manifest_parquet))).to_pandas()
    from export import partitions as pt

    tables = [t for _, _, t in pt.iter_partitions(store, prefix)]
    if not tables:
        raise FileNotFoundError(files.manifest_parquet)
    return pa.concat_tables(tables).sort_by("key").to_pandas()
