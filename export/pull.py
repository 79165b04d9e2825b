"""The researcher's pull client: fetch exactly one release, verified, resumable.

Input is either a presigned manifest (from ``ridl access grant --presign``: no AWS credentials
needed) or a release's ``manifest.json`` with its ``manifest.json.sig`` (objects are then read
with the researcher's own AWS credentials). Before any byte is fetched:

* the manifest's Ed25519 signature is checked (public key given with ``--public-key``, or the one
  shipped with the manifest, whose fingerprint is printed to compare with the release notes);
* a presigned manifest's expiry is read from its URLs (what S3 enforces), and an expired one is
  refused with a message that says to ask for a new grant;
* every destination path is checked to stay inside DEST (no ``..``, no absolute path, no symlink);
* files already there with the right SHA-256 are skipped (resume), and the free space is compared
  with what is left to fetch.

A presigned manifest also lists what later releases retracted (withdrawn subjects, IOCM
rejections); those files are not fetched and the summary counts them. That list is not signed:
editing it can only hide files, never change what a fetched file holds.

The first file is fetched alone: when the server refuses it (access denied, bad credentials, an
endpoint that does not answer) the pull stops there with one error and leaves nothing behind,
rather than asking for every file in turn. Transient errors (5xx, throttling, dropped
connections) are retried per request by botocore or urllib3 as usual.

With the researcher's own credentials, the S3 endpoint is, in order: ``--endpoint-url``,
``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, then the one the manifest records (the research
office's); credentials, profile and region come from the standard AWS environment.

Files are fetched in parallel into a temporary name beside their destination, hashed while they
arrive, and renamed into place only when size and SHA-256 match. A mismatch is fetched once more,
then reported as a failure naming the file.

Engines floor (``export/``): the one module of ridl a researcher runs (``ridl pull``); it reads
storage itself (presigned URLs with urllib3, or S3 with the client of :mod:`export.s3`) and
checks with :mod:`export.signing` and :mod:`export.safepath`. Layouts name the destination of
each object from its manifest row (:data:`LAYOUTS`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import urllib3
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from export.partitions import parse_where, partition_keys, select_rows, subject_buckets
from export.safepath import safe_destination
from export.signing import fingerprint, verify
from ridl.errors import RidlError

OBJECT_FIELDS = ("research_id", "study_uid", "series_uid", "sop_uid", "modality", "study_date")
LAYOUTS = {
    "release": "{path}",
    "dicom": "{research_id}/{study_uid}/{series_uid}/{sop_uid}.dcm",
    "flat": "{sop_uid}.dcm",
}
CHUNK = 1024 * 1024
STATE_DIR = ".ridl-pull"
MARKER = f"{STATE_DIR}/release.json"
"""Written under DEST when a pull starts: which release the folder holds (project, release,
signing key), so that another release is never pulled into it."""
SHIPPED_KEY = "release-signing.pub"


class PullError(RidlError):
    """A pull cannot start or could not finish; the message says what to do."""


class ExpiredGrant(PullError):
    """The presigned manifest's URLs have expired (or S3 says so): ask for a new grant."""


class DiskFull(PullError):
    """DEST has less free space than what is left to fetch plus the margin kept free."""


class AccessRefused(PullError):
    """The server refused a request for a reason retrying cannot fix: access denied, unknown or
    wrong credentials, or an endpoint that cannot be reached after botocore's retries."""


class ChecksumMismatch(PullError):
    """A file's size or SHA-256 did not match the signed manifest, twice."""


@dataclass(frozen=True)
class PullItem:
    """One file to fetch: its key in the release, its size in bytes, its hex SHA-256 (from the
    signed manifest) and where it goes under DEST."""

    path: str  # relative to the release prefix (the key in the manifest)
    size: int
    sha256: str
    target: str  # relative to DEST, from the layout


@dataclass
class LoadedManifest:
    """A manifest whose signature was checked, with what is needed to fetch its files.

    ``manifest`` is the parsed ``manifest.json`` and ``manifest_bytes`` the bytes that were
    signed; ``signature`` is base64; ``public_key`` PEM; ``urls`` {path: presigned URL} (None
    when objects are read with the researcher's own credentials); ``expires_at`` the earliest
    URL expiry (UTC) or None; ``retracted`` {path: reason} of files not to fetch;
    ``partitions`` the buckets a partition or cohort grant covers (None: all); ``key_source``
    where the public key came from (``--public-key``, the presigned manifest, or
    ``release-signing.pub`` beside ``manifest.json``).
    """

    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: str
    public_key: str
    urls: dict[str, str] | None
    expires_at: dt.datetime | None
    retracted: dict[str, str] = field(default_factory=dict)
    partitions: list[int] | None = None
    key_source: str = "--public-key"

    @property
    def fingerprint(self) -> str:
        """The public key's fingerprint (``ed25519:`` + 32 hex), to compare with the notes.

        Raises:
            SignatureError: the public key is not an Ed25519 PEM key.
        """
        return fingerprint(self.public_key)


@dataclass
class PullReport:
    """What a pull did: files in the plan, fetched, skipped (already there and verified),
    retracted (not fetched), bytes fetched, retries, ``failed`` {path: message} and the
    wall-clock duration in seconds.

    ``key_source`` says where the signing key came from; ``retracted_on_disk`` {path relative
    to DEST: reason} lists files retracted since publication (a subject withdrew, an IOCM
    rejection) that an earlier pull left in DEST; ``retracted_deleted`` those of them removed
    (``delete_retracted``). For a cohort (``--where``, ``--subjects``, ``--partition``):
    ``selected`` the objects it selects (None for a whole pull), ``subjects_listed`` and
    ``subjects_missing`` the research IDs given and how many of them are not in the release,
    ``subjects_missing_examples`` up to five of those (research IDs, not PHI).
    """

    project: str
    release: str
    fingerprint: str
    key_source: str = ""
    retracted_on_disk: dict[str, str] = field(default_factory=dict)
    retracted_deleted: list[str] = field(default_factory=list)
    files: int = 0
    fetched: int = 0
    skipped_verified: int = 0
    retracted: int = 0
    bytes_fetched: int = 0
    retried: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    selected: int | None = None
    subjects_listed: int = 0
    subjects_missing: int = 0
    subjects_missing_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report's fields as a plain dict (JSON-ready)."""
        return dict(self.__dict__)


# --- reading and checking the manifest ------------------------------------------------------------


def url_expiry(url: str) -> dt.datetime | None:
    """When a SigV4 presigned URL stops working (X-Amz-Date + X-Amz-Expires).

    A UTC datetime; a SigV2 URL's ``Expires`` (epoch seconds) is read too; None when the URL
    carries no expiry.
    """
    query = parse_qs(urlsplit(url).query)
    if "Expires" in query:  # SigV2 query authentication: an epoch second
        return dt.datetime.fromtimestamp(int(query["Expires"][0]), dt.UTC)
    if "X-Amz-Date" not in query or "X-Amz-Expires" not in query:
        return None
    signed = dt.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    return signed + dt.timedelta(seconds=int(query["X-Amz-Expires"][0]))


def load_manifest(
    path: Path, public_key: str | None = None, signature_path: Path | None = None
) -> LoadedManifest:
    """Read a presigned manifest or a manifest.json (+ .sig), and check its signature.

    ``public_key`` (PEM) overrides the key shipped with the manifest (the presigned
    document's, or ``release-signing.pub`` beside ``manifest.json``); ``signature_path``
    defaults to ``<manifest>.sig``.

    Raises:
        PullError: the file cannot be read or is not JSON, the signature file is missing, no
            public key is at hand, or a presigned manifest lacks URLs for some objects.
        SignatureError: the manifest does not match its signature, or the key is not an
            Ed25519 PEM key.
    """
    try:
        raw = path.read_bytes()
        document = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise PullError(f"cannot read the manifest {path}: {exc}") from None
    urls: dict[str, str] | None = None
    retracted: dict[str, str] = {}
    covered: list[int] | None = None
    if isinstance(document, dict) and str(document.get("format", "")).startswith(
        "ridl-presigned-manifest/"
    ):
        manifest_bytes = str(document["manifest"]).encode()
        signature = str(document["signature"])
        shipped_key = str(document["public_key"])
        shipped_from = "shipped in the presigned manifest"
        urls = {str(k): str(v) for k, v in document["urls"].items()}
        retracted = {str(k): str(v) for k, v in document.get("retracted", {}).items()}
        if document.get("partitions") is not None:
            covered = [int(b) for b in document["partitions"]]
    else:
        manifest_bytes = raw
        sig_path = signature_path or path.with_name(path.name + ".sig")
        if not sig_path.exists():
            raise PullError(
                f"no signature beside {path} (expected {sig_path.name}, published with the "
                "release): download it too, or pass --signature"
            )
        signature = sig_path.read_text()
        key_path = path.with_name(SHIPPED_KEY)
        shipped_key = key_path.read_text() if key_path.is_file() else ""
        shipped_from = f"{SHIPPED_KEY} beside {path.name}"
    key = public_key or shipped_key
    if not key:
        raise PullError(
            f"no public key: {SHIPPED_KEY} is not beside {path.name}; download it with the "
            "release, or pass --public-key (the key is in the release notes)"
        )
    verify(key, manifest_bytes, signature)  # raises SignatureError when tampered
    manifest = json.loads(manifest_bytes)
    expires: dt.datetime | None = None
    if urls is not None:
        needed = {o["path"] for o in manifest.get("objects", [])} if covered is None else set()
        missing = needed - set(urls) - set(retracted)
        if missing:
            raise PullError(f"the presigned manifest lacks URLs for {len(missing)} files")
        expiries = [e for e in (url_expiry(u) for u in urls.values()) if e is not None]
        expires = min(expiries) if expiries else None
    source = "--public-key" if public_key else shipped_from
    return LoadedManifest(
        manifest, manifest_bytes, signature, key, urls, expires, retracted, covered, source
    )


def plan_items(
    manifest: dict[str, Any], layout: str, skip: set[str] | frozenset[str] = frozenset()
) -> list[PullItem]:
    """Each object's destination under the layout; refuses unsafe or colliding paths.

    ``layout`` is a name of :data:`LAYOUTS` or a template over the manifest row's fields (and
    ``name``, the last part of its path); ``skip`` holds paths not to fetch (retracted). The
    release files (``manifest["files"]``) follow the objects, at their own names. Paths are
    checked for safety when fetched (:func:`export.safepath.safe_destination`).

    Raises:
        PullError: the template names an unknown field, or two files would land at the same
            place.
    """
    template = LAYOUTS.get(layout, layout)
    items: list[PullItem] = []
    seen: dict[str, str] = {}
    for obj in manifest["objects"]:
        if obj["path"] in skip:
            continue
        fields = dict(obj)
        fields["name"] = obj["path"].rsplit("/", 1)[-1]
        try:
            target = template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise PullError(
                f"the layout {template!r} uses an unknown field ({exc}); fields: "
                + ", ".join(sorted(fields))
            ) from None
        if target in seen:
            raise PullError(
                f"the layout {template!r} puts two files at the same place; add a field"
            )
        seen[target] = obj["path"]
        items.append(PullItem(obj["path"], int(obj["size"]), obj["sha256"], target))
    for name, info in sorted(manifest.get("files", {}).items()):
        if name in seen:
            raise PullError(f"the layout puts a file where the release file {name} goes")
        items.append(PullItem(name, int(info["size"]), info["sha256"], name))
    return items


def _dataset_items(
    manifest: dict[str, Any], layout: str, urls: dict[str, str] | None
) -> list[PullItem]:
    """The partitioned dataset's files of a small release pulled whole in the ``release``
    layout (each partition's Parquet and SHA256SUMS, as the signed index lists them), so the
    pulled folder reads as the store does (``pd.read_parquet("manifest")``, ``sha256sum -c
    partitions/bucket=000/SHA256SUMS``); under a presigned grant, those it has URLs for."""
    info = manifest.get("partitions") or {}
    if layout != "release" or not info.get("list"):
        return []
    buckets = int(info["buckets"])
    items = []
    for entry in info["list"]:
        keys = partition_keys(int(entry["bucket"]), buckets)
        for name in (keys.parquet, keys.sums):
            described = entry["files"].get(name)
            if described is not None and (urls is None or name in urls):
                items.append(PullItem(name, int(described["size"]), str(described["sha256"]), name))
    return items


# --- fetching -------------------------------------------------------------------------------


class _Fetcher:
    """Streams one object, from a presigned URL or with AWS credentials."""

    def __init__(
        self, loaded: LoadedManifest, workers: int, endpoint_url: str | None = None
    ) -> None:
        self.urls = loaded.urls
        self.storage = loaded.manifest["storage"]
        self._http: urllib3.PoolManager | None = None
        self._s3: Any = None
        if self.urls is not None:
            retry = urllib3.util.Retry(
                total=5,
                backoff_factor=0.2,
                status_forcelist=(500, 502, 503, 504),
                allowed_methods=("GET",),
                raise_on_status=False,
            )
            self._http = urllib3.PoolManager(maxsize=workers, retries=retry)
        elif self.storage["type"] == "s3":
            from export.s3 import S3Settings, make_client

            endpoint = (
                endpoint_url
                or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL")
                or self.storage.get("endpoint_url")
            )
            settings = S3Settings(
                bucket=self.storage["bucket"],
                endpoint_url=endpoint,
                region=os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION")
                or self.storage.get("region"),
            )
            from botocore.exceptions import BotoCoreError

            try:
                self._s3 = make_client(settings)
            except BotoCoreError as exc:  # e.g. ProfileNotFound: AWS_PROFILE names no profile
                raise AccessRefused(
                    f"cannot use your AWS settings ({type(exc).__name__}: {exc}); check "
                    "AWS_PROFILE or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or use a "
                    "presigned manifest"
                ) from None
        elif self.storage["type"] != "file":
            raise PullError(f"cannot fetch from storage of type {self.storage['type']!r}")

    def open(self, path: str) -> Iterator[bytes]:
        """Send the request now (refusals raise here); return the body's chunks."""
        if self._http is not None and self.urls is not None:
            try:
                response = self._http.request("GET", self.urls[path], preload_content=False)
            except urllib3.exceptions.HTTPError as exc:
                raise AccessRefused(
                    f"cannot reach the storage server for {path} ({type(exc).__name__}) after "
                    "retries; check your network"
                ) from None
            if response.status != 200:
                body = response.read(4096).decode(errors="replace")
                response.release_conn()
                raise _http_error(response.status, body, path)
            return _streamed(response)
        if self._s3 is not None:
            from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

            key = f"{self.storage['prefix']}/{path}"
            try:
                response = self._s3.get_object(Bucket=self.storage["bucket"], Key=key)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in ("AccessDenied", "403"):
                    raise AccessRefused(
                        f"access denied to {path}: your credentials do not grant this release "
                        "(ask the research office for a grant)"
                    ) from None
                if code in REFUSED_CREDENTIALS:
                    raise AccessRefused(
                        f"the S3 server refused your credentials ({code}); check "
                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and "
                        "--endpoint-url"
                    ) from None
                if code in ("NoSuchKey", "404"):
                    raise PullError(f"{path} is not in storage (retracted?)") from None
                raise PullError(f"fetching {path} failed: S3 answered {code or exc}") from None
            except NoCredentialsError:
                raise AccessRefused(
                    "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                    "AWS_PROFILE, or use a presigned manifest"
                ) from None
            except BotoCoreError as exc:
                raise AccessRefused(
                    f"cannot reach the S3 endpoint {self._s3.meta.endpoint_url} "
                    f"({type(exc).__name__}) after retries; pass --endpoint-url (or set "
                    "AWS_ENDPOINT_URL) to the address you were given"
                ) from None
            return iter(response["Body"].iter_chunks(CHUNK))
        local = Path(self.storage["root"]) / path
        if not local.is_file():
            raise PullError(f"{path} is not in storage (retracted?)")
        return _file_chunks(local)


REFUSED_CREDENTIALS = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
)


def _streamed(response: Any) -> Iterator[bytes]:
    try:
        yield from response.stream(CHUNK)
    finally:
        response.release_conn()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(CHUNK), b"")


def _http_error(status: int, body: str, path: str) -> PullError:
    if status == 403 and ("expired" in body.lower()):
        return ExpiredGrant(
            "the presigned manifest has expired; ask the research office for a new grant "
            "(`ridl access grant --presign`)"
        )
    if status == 403:
        return AccessRefused(f"access denied to {path} (HTTP 403): the grant is not valid for it")
    if status == 404:
        return PullError(f"{path} is not in storage (HTTP 404; retracted?)")
    return PullError(f"fetching {path} failed with HTTP {status}")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, item: PullItem) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != item.size:
            return False
    except OSError:
        return False
    return file_sha256(path) == item.sha256


def pull(
    manifest_path: Path,
    dest: Path,
    *,
    layout: str = "release",
    workers: int = 8,
    public_key: str | None = None,
    signature_path: Path | None = None,
    console: Console | None = None,
    keep_free: int = 64 * 1024 * 1024,
    on_file_done: Callable[[str], None] | None = None,
    now: dt.datetime | None = None,
    endpoint_url: str | None = None,
    where: str | None = None,
    subjects: set[str] | None = None,
    partitions: list[int] | None = None,
    delete_retracted: bool = False,
) -> PullReport:
    """Fetch and verify every file of the release (or a cohort of it) into ``dest``.

    See the module doc. A cohort is what ``where`` (a query, :func:`export.partitions.
    parse_where`), ``subjects`` (research IDs) and ``partitions`` (bucket numbers) select
    together; only the partitions it needs are fetched (each verified against the signed
    index), and it is fetched one partition at a time, so memory stays flat. A large release
    (no object list in its manifest.json) is always fetched that way.

    ``layout`` as for :func:`plan_items`; ``workers`` parallel downloads; ``keep_free`` bytes
    that must stay free on ``dest``'s disk (64 MiB); ``console`` shows progress (None: quiet);
    ``on_file_done`` is called with each fetched path; ``now`` (UTC) is for tests;
    ``endpoint_url`` replaces the S3 endpoint the manifest records (credentials path only; see
    the module doc for the environment variables). The first file is fetched alone; when it is
    refused the pull stops (:class:`AccessRefused`). A pull that stops before any file arrived
    leaves ``dest`` as it found it (no folder, no marker). Later, a file that fails (HTTP
    refusal, checksum twice wrong) is recorded in the report's ``failed`` and the others go on;
    the signed manifest, its signature and key are kept under ``dest/.ridl-pull``.

    ``dest`` holds one release: :data:`MARKER` names it, and a pull of another release into it
    is refused (the same release again resumes or updates it). Files that later releases
    retracted (withdrawn subjects, IOCM rejections; listed by a presigned manifest) and that an
    earlier pull left in ``dest`` are listed in the report's ``retracted_on_disk`` and, with
    ``delete_retracted``, removed with the folders they leave empty.

    Raises:
        PullError: the manifest cannot be loaded or planned (see :func:`load_manifest`,
            :func:`plan_items`), the storage type is unknown, or ``dest`` holds another
            release.
        SignatureError: the manifest does not match its signature.
        ExpiredGrant: the presigned manifest has expired (checked before, and during, fetching).
        AccessRefused: the server refused the first file (access denied, bad credentials, an
            endpoint that does not answer).
        DiskFull: less space is free than what is left to fetch plus ``keep_free``.
        UnsafePath: a destination path would leave ``dest``.
        ScopeError: ``where`` is not a query ridl reads (``--where``).
    """
    started = time.monotonic()
    loaded = load_manifest(manifest_path, public_key, signature_path)
    manifest = loaded.manifest
    report = PullReport(
        manifest["project"], manifest["release"], loaded.fingerprint, loaded.key_source
    )
    if console is not None:
        advice = (
            "" if loaded.key_source == "--public-key" else
            "; compare it with the fingerprint in the release notes the research office sent "
            "you (a different one: stop and ask them)"
        )  # fmt: skip
        console.print(
            f"signing key {report.fingerprint} ({loaded.key_source}){advice}",
            highlight=False,
            soft_wrap=True,
        )
    now = now or dt.datetime.now(dt.UTC)
    if loaded.expires_at is not None and loaded.expires_at <= now:
        raise ExpiredGrant(
            f"the presigned manifest expired at {loaded.expires_at.isoformat()}; ask the "
            "research office for a new grant (`ridl access grant --presign`)"
        )
    report.retracted = len(loaded.retracted)
    query = parse_where(where) if where is not None else None  # before any folder is made
    check_dest(dest, manifest)
    fetcher = _Fetcher(loaded, workers, endpoint_url)  # bad AWS settings fail before any folder
    made_dest = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    made_marker = _write_marker(dest, loaded)
    lock = threading.Lock()
    arrived: list[str] = []  # DEST-relative targets fetched by this run
    index_files: set[str] = set()  # of them, the partitions' Parquet and SHA256SUMS
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=console is None,
    )  # one files bar and one bytes bar for the whole pull: totals grow per partition
    files_task = progress.add_task("files", total=0)
    bytes_task = progress.add_task("bytes", total=0)

    def transfer(items: list[PullItem]) -> None:
        # Folders are made as files arrive, so a refused pull leaves none behind.
        targets = {
            item.path: safe_destination(dest, item.target, create_parents=False) for item in items
        }

        todo: list[PullItem] = []
        for item in items:
            if _verified(targets[item.path], item):
                report.skipped_verified += 1
            else:
                todo.append(item)
        report.files += len(items)
        needed = sum(i.size for i in todo)
        free = shutil.disk_usage(dest).free
        if needed + keep_free > free:
            raise DiskFull(
                f"not enough space in {dest}: {needed:,} bytes to fetch (+{keep_free:,} kept free) "
                f"but {free:,} free; free some space or choose another --dest"
            )
        with lock:
            files_total = progress.tasks[0].total or 0
            bytes_total = progress.tasks[1].total or 0
            progress.update(files_task, total=files_total + len(items))
            progress.advance(files_task, len(items) - len(todo))
            progress.update(bytes_task, total=bytes_total + needed)

        def fetch(item: PullItem, files_task: TaskID, bytes_task: TaskID) -> None:
            for attempt in (1, 2):
                body = fetcher.open(item.path)  # a refusal raises before any folder is made
                target = safe_destination(dest, item.target)
                tmp = target.with_name(f".{target.name}.part")
                digest = hashlib.sha256()
                received = 0
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                try:
                    with os.fdopen(fd, "wb") as handle:
                        for chunk in body:
                            handle.write(chunk)
                            digest.update(chunk)
                            received += len(chunk)
                            progress.advance(bytes_task, len(chunk))
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                if received == item.size and digest.hexdigest() == item.sha256:
                    os.replace(tmp, target)
                    with lock:
                        report.fetched += 1
                        report.bytes_fetched += received
                        arrived.append(item.target)
                    progress.advance(files_task)
                    if on_file_done is not None:
                        on_file_done(item.path)
                    return
                tmp.unlink(missing_ok=True)
                progress.advance(bytes_task, -received)
                if attempt == 1:
                    with lock:
                        report.retried += 1
            raise ChecksumMismatch(
                f"{item.path}: SHA-256 does not match the signed manifest after a retry; the "
                "stored object is damaged or was replaced: report it to the research office"
            )

        stop = threading.Event()

        def guarded(item: PullItem, files_task: TaskID, bytes_task: TaskID) -> None:
            if not stop.is_set():
                fetch(item, files_task, bytes_task)

        fatal: BaseException | None = None
        if todo:  # the first file alone: a server that refuses it is not asked again
            try:
                fetch(todo[0], files_task, bytes_task)
            except (AccessRefused, ExpiredGrant, DiskFull):
                raise  # the caller leaves DEST as it found it when nothing arrived
            except PullError as first_failure:
                report.failed[todo[0].path] = str(first_failure)
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            futures = {pool.submit(guarded, i, files_task, bytes_task): i for i in todo[1:]}
            for future in as_completed(futures):
                exc = future.exception()
                if exc is None:
                    continue
                if isinstance(exc, PullError) and not isinstance(exc, ExpiredGrant | DiskFull):
                    report.failed[futures[future].path] = str(exc)
                elif fatal is None:
                    fatal = exc
                    stop.set()  # an expired grant, an interrupt, a disk error: stop all
        except BaseException:  # Ctrl-C in the main thread: stop queued downloads, keep files
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if fatal is not None:
            raise fatal

    def retract(objects: list[dict[str, Any]]) -> None:
        found = _retracted_on_disk(dest, objects, loaded.retracted, layout)
        report.retracted_on_disk.update(found)
        if delete_retracted:
            for target in sorted(found):
                _delete_with_empty_parents(dest, target)
                report.retracted_deleted.append(target)

    selecting = where is not None or subjects is not None or partitions is not None
    if selecting or loaded.partitions is not None:  # a cohort: a selection or a cohort grant
        report.selected = 0
    try:
        with progress:
            if "objects" in manifest and not selecting and loaded.partitions is None:
                retract(manifest["objects"])
                transfer(plan_items(manifest, layout, skip=set(loaded.retracted)))
                transfer(_dataset_items(manifest, layout, loaded.urls))
            else:
                rows = _partition_rows(
                    loaded, dest, layout, transfer, query, subjects, partitions, report, index_files
                )
                for table in rows:
                    objects = [_object_of(row, manifest) for row in table.to_pylist()]
                    retract(objects)
                    if loaded.urls is not None:  # a grant for a cohort or partition: its objects
                        objects = [o for o in objects if o["path"] in loaded.urls]
                    if report.selected is not None:
                        report.selected += len(objects)
                    plan = {"objects": objects, "files": {}}
                    transfer(plan_items(plan, layout, skip=set(loaded.retracted)))
                transfer(plan_items({"objects": [], "files": manifest.get("files", {})}, layout))
    except BaseException:
        if not report.retracted_deleted and set(arrived) <= index_files:
            for target in arrived:  # only partition files arrived: DEST as it was found
                _delete_with_empty_parents(dest, target)
            _undo_start(dest, made_dest, made_marker)
        raise
    _save_release_files(dest, loaded)
    report.seconds = time.monotonic() - started
    return report


# --- one release per folder; retractions on the researcher's disk ------------------------------


def release_in(dest: Path) -> tuple[str, str] | None:
    """(project, release) of the release a folder already holds, or None.

    Read from :data:`MARKER`, else from the manifest an earlier pull kept
    (``.ridl-pull/manifest.json``), else from a ``manifest.json`` at the folder's root (a
    release copied with s5cmd, aws or rclone). A file that is not a ridl manifest is ignored.
    """
    for name in (MARKER, f"{STATE_DIR}/manifest.json", "manifest.json"):
        path = dest / name
        try:
            if path.is_symlink() or not path.is_file():
                continue
            document = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and {"project", "release"} <= document.keys():
            return str(document["project"]), str(document["release"])
    return None


def check_dest(dest: Path, manifest: dict[str, Any]) -> None:
    """Refuse to pull ``manifest``'s release into a folder that holds another release.

    The same release again (resume, update after a retraction, another cohort) is allowed.

    Raises:
        PullError: ``dest`` is not a folder, or holds another release (both are named).
    """
    if dest.exists() and not dest.is_dir():
        raise PullError(f"--dest {dest} is a file, not a folder; choose a folder")
    if not dest.is_dir():
        return
    held = release_in(dest)
    wanted = (str(manifest["project"]), str(manifest["release"]))
    if held is not None and held != wanted:
        raise PullError(
            f"{dest} already holds release {held[0]}/{held[1]}; this manifest is release "
            f"{wanted[0]}/{wanted[1]}: pull it into another --dest (releases are never mixed "
            "in one folder)"
        )


def _write_marker(dest: Path, loaded: LoadedManifest) -> bool:
    """Write :data:`MARKER` (project, release, signing key) if absent; True when written."""
    target = safe_destination(dest, MARKER, create_parents=False)
    if target.exists():
        return False
    target = safe_destination(dest, MARKER)
    marker = {
        "project": loaded.manifest["project"],
        "release": loaded.manifest["release"],
        "signing_key": loaded.fingerprint,
    }
    target.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return True


def _undo_start(dest: Path, made_dest: bool, made_marker: bool) -> None:
    """After a pull that stopped before any file arrived: remove the marker it wrote, the state
    folder if empty, and DEST itself if the pull made it and nothing else is in it."""
    if made_marker:
        (dest / MARKER).unlink(missing_ok=True)
    _remove_empty_tree(dest / STATE_DIR)
    if made_dest:
        _remove_empty_tree(dest)


def _remove_empty_tree(folder: Path) -> None:
    """Remove ``folder`` and the folders under it when none of them holds a file."""
    if folder.is_symlink() or not folder.is_dir():
        return
    for child in folder.iterdir():
        _remove_empty_tree(child)
    with contextlib.suppress(OSError):  # it holds a file (or a folder that does): keep it
        folder.rmdir()


def _retracted_on_disk(
    dest: Path, objects: list[dict[str, Any]], retracted: dict[str, str], layout: str
) -> dict[str, str]:
    """{path relative to DEST: reason} of retracted objects an earlier pull left in DEST."""
    gone = [o for o in objects if o["path"] in retracted]
    if not gone:
        return {}
    found: dict[str, str] = {}
    for item in plan_items({"objects": gone, "files": {}}, layout):
        target = safe_destination(dest, item.target, create_parents=False)
        if target.is_file() and not target.is_symlink():
            found[item.target] = retracted[item.path]
    return found


def _delete_with_empty_parents(dest: Path, relative: str) -> None:
    """Delete DEST/relative, then each folder above it (below DEST) that it left empty."""
    target = safe_destination(dest, relative, create_parents=False)
    target.unlink(missing_ok=True)
    root = dest.resolve()
    folder = target.parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty
            break
        folder = folder.parent


def _object_of(row: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest row as the object of a manifest.json (path relative to the release)."""
    prefix = f"{manifest['project']}/{manifest['release']}/"
    obj = {k: row[k] for k in ("size", "sha256", *OBJECT_FIELDS)}
    obj["path"] = str(row["key"])[len(prefix) :] if str(row["key"]).startswith(prefix) else ""
    if not obj["path"]:
        raise PullError("a partition of the manifest lists an object outside the release")
    return obj


def _partition_rows(
    loaded: LoadedManifest,
    dest: Path,
    layout: str,
    transfer: Callable[[list[PullItem]], None],
    query: Any,
    subjects: set[str] | None,
    partitions: list[int] | None,
    report: PullReport,
    index_files: set[str],
) -> Iterator[pa.Table]:
    """The selected rows of each needed partition, one partition at a time.

    Each partition's Parquet file is fetched first (verified against the signed index, kept
    under DEST: at its release path for the ``release`` layout, with the partition's
    SHA256SUMS; under ``.ridl-pull/`` otherwise; their DEST paths are added to
    ``index_files``) and then read; only the buckets of ``subjects`` and the ``partitions``
    asked for (and those a grant covers) are fetched. A partition whose Parquet file cannot be
    fetched is recorded in ``report.failed`` under its name and skipped. With ``subjects``,
    every needed partition is fetched before any object, and the research IDs not in the
    release are counted in ``report``.

    Raises:
        PullError: the release has no partitioned manifest or no such partition, or none of
            ``subjects`` is in the release.
    """
    info = loaded.manifest.get("partitions")
    if not info:
        raise PullError(
            "this release has no partitioned manifest; pull it whole (drop --where, "
            "--subjects and --partition)"
        )
    buckets = int(info["buckets"])
    entries = {int(e["bucket"]): e for e in info["list"]}
    chosen = sorted(entries) if loaded.partitions is None else sorted(loaded.partitions)
    if partitions is not None:
        unknown = sorted(set(partitions) - set(entries))
        if unknown:
            raise PullError(
                f"the release has no partition {unknown[0]} (it has 0 to {buckets - 1}); "
                "change --partition"
            )
        outside = sorted(set(partitions) - set(chosen))
        if loaded.partitions is not None and outside:
            covered = ", ".join(str(b) for b in sorted(loaded.partitions))
            raise PullError(
                f"this grant covers partition(s) {covered} only, not {outside[0]}; change "
                "--partition, or ask the research office for a grant of that partition"
            )
        chosen = [b for b in chosen if b in set(partitions)]
    if subjects is not None:
        needed = subject_buckets(subjects, buckets)
        chosen = [b for b in chosen if b in needed]
    inside = "" if layout == "release" else f"{STATE_DIR}/"

    def fetch_partition(bucket: int) -> Path | None:
        keys = partition_keys(bucket, buckets)
        files = entries[bucket]["files"]
        names = [keys.parquet, keys.sums] if layout == "release" else [keys.parquet]
        index_files.update(inside + n for n in names)
        transfer(
            [PullItem(n, int(files[n]["size"]), str(files[n]["sha256"]), inside + n) for n in names]
        )
        local = dest / f"{inside}{keys.parquet}"
        failure = report.failed.pop(keys.parquet, None)
        if failure is not None or not local.is_file():  # not fetched: skip its rows
            why = (
                "its manifest file is not in storage"
                if failure is None or "not in storage" in failure
                else failure
            )
            report.failed[keys.parquet] = (
                f"partition {keys.name}: {why}; none of its objects were pulled (tell the "
                "research office)"
            )
            return None
        return local

    ids = pa.array(sorted(subjects), pa.string()) if subjects is not None else None
    if subjects is not None and ids is not None:  # every partition first: which IDs are there
        found: set[str] = set()
        failed_before = len(report.failed)
        for bucket in chosen:
            local = fetch_partition(bucket)
            if local is not None:
                column = pq.read_table(local, columns=["research_id"]).column("research_id")
                found.update(pc.unique(column.filter(pc.is_in(column, ids))).to_pylist())
        missing = sorted(subjects - found)
        report.subjects_listed = len(subjects)
        report.subjects_missing = len(missing)
        report.subjects_missing_examples = missing[:5]
        if not found and len(report.failed) == failed_before:
            raise PullError(
                f"none of the {len(subjects)} research IDs in --subjects is in this release "
                f"(e.g. {', '.join(missing[:5])}); check the file: one research ID a line, "
                "as the release writes them (RS-...)"
            )
    for bucket in chosen:
        local = dest / f"{inside}{partition_keys(bucket, buckets).parquet}"
        if subjects is None:
            fetched = fetch_partition(bucket)
            if fetched is None:
                continue
        elif not local.is_file():  # failed in the first pass (recorded in the report)
            continue
        table = pq.read_table(local)
        if ids is not None:
            table = table.filter(pc.is_in(table.column("research_id"), ids))
        yield select_rows(table, query, bucket)


def _save_release_files(dest: Path, loaded: LoadedManifest) -> None:
    """Keep the signed manifest beside the data, so the pull can be checked again later."""
    folder = safe_destination(dest, f"{STATE_DIR}/manifest.json")
    folder.write_bytes(loaded.manifest_bytes)
    safe_destination(dest, f"{STATE_DIR}/manifest.json.sig").write_text(loaded.signature)
    safe_destination(dest, f"{STATE_DIR}/release-signing.pub").write_text(loaded.public_key)
