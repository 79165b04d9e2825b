"""Access grants: let one approved researcher read one published release, and nothing else.

Two forms, both refused when the REB approval has expired or the researcher is not one of the
project's approved recipients:

* an IAM policy document for the storage administrator to attach to the researcher's identity:
  ``s3:ListBucket`` only with an ``s3:prefix`` condition on the release prefix, ``s3:GetObject``
  only on objects under it, both ending at the grant's expiry (``aws:CurrentTime``); or, given
  the researcher's principal ARN, the same statements as a bucket policy (``Principal`` set),
  for servers that evaluate ``aws:CurrentTime`` only in bucket policies: SeaweedFS 4 enforces
  the prefix and read-only parts of an identity policy but not its date condition (the
  statements then never match, so the grant refuses everything), while its bucket policies
  enforce all three; AWS S3 enforces both forms;
* a presigned manifest: the signed release manifest as published, its signature and public key,
  and a presigned GET URL per file, all expiring at the earlier of N days (7 at most, the longest
  a SigV4 presigned URL lives) and the end of the REB approval. No AWS credentials are needed.

Every grant is recorded on premises (``RIDL_HOME/grants/<project>.jsonl``, listed by ``ridl
access list``) and in the audit log (``access.granted``); a refused grant is audited too
(``access.refused``, with the reason).

Engines floor (``export/``): it reads the published release through :mod:`export.release` and
needs an S3 store (:mod:`export.s3`); ``ridl release grant`` (``export.cli``) calls it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export import partitions as pt
from export.release import (
    MANIFEST_JSON,
    PUBLIC_KEY,
    SIGNATURE,
    read_published,
    retracted_paths,
)
from export.store import ObjectStore, open_store
from ridl import audit, settings
from ridl.errors import ConfigError, ReleaseError, RidlError, ScopeError
from ridl.projects import Project, load_project

if TYPE_CHECKING:  # boto3 loads only when an S3 store is opened
    from export.s3 import S3Store

MAX_PRESIGN_DAYS = 7
PRESIGNED_FORMAT = "ridl-presigned-manifest/1"


def reb_end(project: Project) -> dt.datetime:
    """The approval is valid through its expiry date: access ends at the next midnight UTC.

    A timezone-aware UTC datetime: 00:00 on the day after ``project.expires``.
    """
    return dt.datetime.combine(project.expires + dt.timedelta(days=1), dt.time(0), dt.UTC)


def check_grant(
    project_id: str, researcher: str, days: int, presign: bool, now: dt.datetime
) -> tuple[Project, dt.datetime]:
    """Refuse a grant the REB approval does not allow; return the project and the expiry.

    ``days`` is the grant's length in days from ``now`` (timezone-aware); the expiry is the
    earlier of that and :func:`reb_end`.

    Raises:
        ConfigError: the project id or file is invalid.
        ProjectNotFound: no such project.
        ScopeError: the approval has expired or not started, the researcher is not an approved
            recipient (``--researcher``), ``days`` < 1, or > 7 for presigned URLs (``--days``).
    """
    project = load_project(project_id)
    project.check_active(now.date())
    if researcher not in project.recipients:
        approved = ", ".join(project.recipients) or "none recorded"
        raise ScopeError(
            "--researcher",
            f"'{researcher}' is not an approved recipient of project '{project_id}' "
            f"(approved: {approved}); the REB must approve them first",
        )
    if days < 1:
        raise ScopeError("--days", "a grant lasts at least one day")
    if presign and days > MAX_PRESIGN_DAYS:
        raise ScopeError(
            "--days",
            f"presigned URLs last {MAX_PRESIGN_DAYS} days at most; grant again when they expire",
        )
    return project, min(now + dt.timedelta(days=days), reb_end(project))


def iam_policy(store: S3Store, prefix: str, expires: dt.datetime) -> dict[str, Any]:
    """An identity policy allowing listing and reading of one release prefix only.

    An IAM policy document (dict, ``Version`` 2012-10-17) whose statements end at ``expires``
    (UTC, to the second); ``prefix`` is ``<project>/<release>`` in the store.
    """
    release_prefix = store.s3_key(prefix) + "/"
    until = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListOnlyThisRelease",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{store.bucket}",
                "Condition": {
                    "StringLike": {"s3:prefix": [release_prefix, release_prefix + "*"]},
                    "DateLessThan": {"aws:CurrentTime": until},
                },
            },
            {
                "Sid": "ReadOnlyThisRelease",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{store.bucket}/{release_prefix}*",
                "Condition": {"DateLessThan": {"aws:CurrentTime": until}},
            },
        ],
    }


def bucket_policy(
    store: S3Store, prefix: str, expires: dt.datetime, principal: str
) -> dict[str, Any]:
    """The statements of :func:`iam_policy` as a bucket policy for one principal.

    ``principal`` is the researcher's IAM ARN (``arn:aws:iam::ACCOUNT:user/NAME``); ``prefix``
    and ``expires`` as for :func:`iam_policy`. The ``Sid`` of each statement names the release
    and a digest of the principal, so the statements of several grants can be merged into the
    bucket's one policy (``aws s3api put-bucket-policy``) without clashing.

    Raises:
        ScopeError: ``principal`` is not an ARN (``--principal``).
    """
    if not principal.startswith("arn:"):
        raise ScopeError(
            "--principal", "give the researcher's IAM ARN (arn:aws:iam::ACCOUNT:user/NAME)"
        )
    document = iam_policy(store, prefix, expires)
    tag = "".join(c for c in prefix.title() if c.isalnum())
    tag += hashlib.sha256(principal.encode()).hexdigest()[:8]
    for statement in document["Statement"]:
        statement["Sid"] = f"{statement['Sid']}{tag}"
        statement["Principal"] = {"AWS": [principal]}
    return document


def presigned_manifest(
    store: S3Store,
    prefix: str,
    manifest: dict[str, Any],
    expires_in: int,
    partitions: list[int] | None = None,
    where: str | None = None,
) -> dict[str, Any]:
    """The signed manifest with a presigned URL for every object and release file.

    ``prefix`` is ``<project>/<release>``; ``manifest`` the parsed ``manifest.json``;
    ``expires_in`` the URLs' lifetime in seconds. Returns {format, manifest (the text as
    signed), signature, public_key, urls: {path: URL}, retracted: {path: reason}}; retracted
    objects get no URL. With ``partitions`` (bucket numbers) or ``where`` (a cohort query,
    :func:`export.partitions.parse_where`) only those partitions' files and the objects the
    query selects in them get URLs, the partitions read one at a time, and the document names
    the covered buckets in ``partitions``; a large release (no object list in its manifest) is
    presigned only that way.

    Raises:
        FileNotFoundError: the manifest, its signature or public key is missing from the store.
        ScopeError: a large release asked whole (``--partition``), an unknown partition, or a
            query ridl cannot read (``--where``).
    """
    manifest_text = store.get_bytes(f"{prefix}/{MANIFEST_JSON}").decode()
    signature = store.get_bytes(f"{prefix}/{SIGNATURE}").decode().strip()
    public_key = store.get_bytes(f"{prefix}/{PUBLIC_KEY}").decode()
    project_id, release = prefix.split("/", 1)
    retracted = retracted_paths(store, project_id, release)
    covered: list[int] | None = None
    if partitions is None and where is None:
        if "objects" not in manifest:
            raise ScopeError(
                "--partition",
                f"release {prefix} has {manifest['counts']['objects']:,} objects: presign it by "
                "partition (--partition N) or cohort (--where ...), never as one file",
            )
        paths = [o["path"] for o in manifest["objects"]] + sorted(manifest["files"])
        info = manifest.get("partitions") or {}
        for entry in info.get("list", []):  # the dataset too: the pulled folder reads as stored
            keys = pt.partition_keys(int(entry["bucket"]), int(info["buckets"]))
            paths += [keys.parquet, keys.sums]
    else:
        covered, paths = _cohort_paths(store, prefix, manifest, partitions, where)
        paths += sorted(manifest["files"])
    urls = {
        path: store.presign_get(f"{prefix}/{path}", expires_in)
        for path in paths
        if path not in retracted
    }
    return {
        "format": PRESIGNED_FORMAT,
        "manifest": manifest_text,
        "signature": signature,
        "public_key": public_key,
        "urls": urls,
        # Retracted since publication (withdrawn subjects, IOCM rejections): not to be fetched.
        "retracted": retracted,
        **({"partitions": covered, "where": where} if covered is not None else {}),
    }


def _cohort_paths(
    store: ObjectStore,
    prefix: str,
    manifest: dict[str, Any],
    partitions: list[int] | None,
    where: str | None,
) -> tuple[list[int], list[str]]:
    """(buckets covered, paths to presign) for a partition or cohort grant."""
    info = manifest.get("partitions") or {}
    buckets = int(info.get("buckets", 0))
    chosen = list(range(buckets)) if partitions is None else sorted(set(partitions))
    if not buckets or any(b < 0 or b >= buckets for b in chosen):
        raise ScopeError(
            "--partition", f"release {prefix} has partitions 0 to {max(buckets - 1, 0)}"
        )
    query = pt.parse_where(where) if where is not None else None
    covered: list[int] = []
    paths: list[str] = []
    for bucket in chosen:
        rows = pt.select_rows(pt.read_partition(store, prefix, bucket, buckets), query, bucket)
        if where is not None and rows.num_rows == 0:
            continue  # nothing of the cohort here: no URL for this partition
        keys = pt.partition_keys(bucket, buckets)
        covered.append(bucket)
        paths += [keys.parquet, keys.sums]
        paths += [k[len(prefix) + 1 :] for k in rows.column("key").to_pylist()]
    return covered, paths


def grant_access(
    store: ObjectStore | str | None,
    project_id: str,
    release: str,
    researcher: str,
    days: int,
    presign: bool = False,
    now: dt.datetime | None = None,
    expires_in_seconds: int | None = None,
    principal: str | None = None,
    partitions: list[int] | None = None,
    where: str | None = None,
) -> dict[str, Any]:
    """Check the grant, build the policy or the presigned manifest, record it; return it.

    ``partitions`` and ``where`` restrict a presigned manifest to some partitions or a cohort
    (see :func:`presigned_manifest`); an IAM or bucket policy always covers the whole release.

    ``expires_in_seconds`` shortens presigned URLs below the computed expiry (never beyond it).
    ``principal`` (the researcher's IAM ARN) asks for a bucket policy (:func:`bucket_policy`)
    instead of an identity policy.
    ``store`` is an open store, its URL, or None for the default store; ``days`` and ``now``
    are as for :func:`check_grant`. Returns the IAM policy (:func:`iam_policy`) or the presigned
    manifest (:func:`presigned_manifest`, with ``expires_at`` in ISO 8601). The grant is
    audited (``access.granted``), and so is a refusal (``access.refused``, with its reason).

    Raises:
        ConfigError: the project id or file is invalid, the store is not S3, or the store
            cannot be opened (see :func:`export.store.open_store`).
        ProjectNotFound: no such project.
        ScopeError: the grant is not allowed (see :func:`check_grant`), presigned URLs would
            already have expired, ``principal`` is given with ``presign``, or it is not an ARN.
        ReleaseError: the release is not published in the store.
    """
    now = now or dt.datetime.now(dt.UTC)
    try:
        return _grant(
            store, project_id, release, researcher, days, presign, now,
            expires_in_seconds, principal, partitions, where,
        )  # fmt: skip
    except RidlError as exc:
        audit.record(
            "access.refused",
            project=project_id,
            release=release,
            researcher=researcher,
            days=days,
            kind=_kind(presign, principal),
            reason=str(exc),
        )
        raise


def _kind(presign: bool, principal: str | None) -> str:
    return "presigned-manifest" if presign else "bucket-policy" if principal else "iam-policy"


def _grant(
    store: ObjectStore | str | None,
    project_id: str,
    release: str,
    researcher: str,
    days: int,
    presign: bool,
    now: dt.datetime,
    expires_in_seconds: int | None,
    principal: str | None,
    partitions: list[int] | None,
    where: str | None,
) -> dict[str, Any]:
    _, expires = check_grant(project_id, researcher, days, presign, now)
    if presign and principal is not None:
        raise ScopeError("--principal", "a presigned manifest needs no principal; drop one")
    if not presign and (partitions is not None or where is not None):
        raise ScopeError(
            "--partition" if partitions is not None else "--where",
            "a policy grants the whole release; a partition or cohort is granted with --presign",
        )
    store = store if store is not None and not isinstance(store, str) else open_store(store)
    from export.s3 import S3Store

    if not isinstance(store, S3Store):
        raise ConfigError(
            f"access grants need an S3 store; {store.url} is not one (change: --dest)"
        )
    prefix = f"{project_id}/{release}"
    manifest = read_published(store, prefix)
    if manifest is None:
        raise ReleaseError(
            f"release {prefix} is not published; run `ridl release publish` first (change: "
            "--release)"
        )
    if presign:
        seconds = int((expires - now).total_seconds())
        if expires_in_seconds is not None:
            seconds = min(seconds, expires_in_seconds)
        if seconds < 1:
            raise ScopeError("--days", "the grant would already have expired")
        expires = now + dt.timedelta(seconds=seconds)
        document = presigned_manifest(store, prefix, manifest, seconds, partitions, where)
        document["expires_at"] = expires.isoformat(timespec="seconds")
    elif principal is not None:
        document = bucket_policy(store, prefix, expires, principal)
    else:
        document = iam_policy(store, prefix, expires)
    document_kind = _kind(presign, principal)
    scope = _scope(document, presign, partitions, where)
    if (partitions is not None or where is not None) and not scope["objects"]:
        raise ScopeError(
            "--where" if where is not None else "--partition",
            f"the cohort selects no object of release {prefix}: nothing to grant; check the "
            "query (values are case-sensitive: modality = 'CT')",
        )
    _record(project_id, release, researcher, document_kind, now, expires, scope)
    audit.record(
        "access.granted",
        project=project_id,
        release=release,
        researcher=researcher,
        kind=document_kind,
        granted_at=now.isoformat(timespec="seconds"),
        expires_at=expires.isoformat(timespec="seconds"),
        scope=scope,
    )
    return document


def _scope(
    document: dict[str, Any], presign: bool, partitions: list[int] | None, where: str | None
) -> dict[str, Any]:
    """What a grant covers, as recorded on premises and audited: the whole release (a policy,
    or a presigned small release) or the partitions and query of a presigned cohort, with the
    number of objects its URLs fetch (research IDs and counts only: no PHI)."""
    if not presign:
        return {"release": "whole", "partitions": None, "where": None, "objects": None}
    objects = sum(1 for path in document.get("urls", {}) if path.endswith(".dcm"))
    whole = partitions is None and where is None
    return {
        "release": "whole" if whole else "cohort",
        "partitions": document.get("partitions"),
        "where": where,
        "objects": objects,
    }


def _record(
    project_id: str,
    release: str,
    researcher: str,
    kind: str,
    now: dt.datetime,
    expires: dt.datetime,
    scope: dict[str, Any],
) -> None:
    path = grants_path(project_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "project": project_id,
        "release": release,
        "researcher": researcher,
        "kind": kind,
        "granted_at": now.isoformat(timespec="seconds"),
        "expires_at": expires.isoformat(timespec="seconds"),
        "scope": scope,
    }
    with open(path, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")


def grants_path(project_id: str) -> Path:
    """The project's grant records, ``RIDL_HOME/grants/<project>.jsonl`` (a JSON object a line)."""
    return settings.ridl_home() / "grants" / f"{project_id}.jsonl"


def list_grants(project_id: str, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The project's recorded grants, oldest first, each with ``active`` (not yet expired at
    ``now``, default the current time, UTC).

    Each dict has ``project``, ``release``, ``researcher``, ``kind`` (iam-policy,
    bucket-policy or presigned-manifest), ``granted_at`` and ``expires_at`` (ISO 8601) and
    ``active`` (bool). Empty when nothing was granted.
    """
    now = now or dt.datetime.now(dt.UTC)
    path = grants_path(project_id)
    if not path.exists():
        return []
    grants = []
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            entry["active"] = dt.datetime.fromisoformat(entry["expires_at"]) > now
            grants.append(entry)
    return grants
