"""S3 object store: the same interface as the local folder store, over boto3.

Works with AWS S3, MinIO and any S3-compatible server. What it adds over a plain ``put_object``:

* every object is sent with its SHA-256 (``ChecksumSHA256`` for single-part uploads,
  ``ChecksumAlgorithm=SHA256`` per part for multipart ones), so the server refuses bytes that
  changed on the way, and the hex digest is kept in the object's metadata (``x-amz-meta-sha256``)
  so that the same digest recorded in the manifest can be compared without reading the object;
* idempotent uploads: an object already there with the same SHA-256 is not sent again, so a
  resumed run or a second publish costs a HEAD, not the bytes;
* large objects go through boto3's transfer manager (multipart, parallel parts);
* botocore's retry modes (``standard`` by default, ``adaptive`` to also rate-limit the client)
  retry 5xx answers, throttling and dropped connections.

Credentials never appear in the store URL (it is logged and passed to workers): they come from
``RIDL_S3_ACCESS_KEY_ID`` / ``RIDL_S3_SECRET_ACCESS_KEY`` / ``RIDL_S3_SESSION_TOKEN`` when set,
else from boto3's usual chain (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, instance roles...).

The ``s3`` back-end of :data:`export.store.STORES` (engines floor), imported only when an ``s3://``
store is opened, so boto3 stays unloaded otherwise. Every method that takes a key raises
ValueError for an unsafe one (:func:`export.store.check_key`); S3 errors other than "not found"
pass through as botocore's ``ClientError`` after botocore's own retries.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from export.store import ObjectInfo, check_key
from ridl.errors import ConfigError

DEFAULT_MULTIPART_THRESHOLD = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
RETRY_MODES = ("standard", "adaptive", "legacy")
SHA256_META = "sha256"


@dataclass(frozen=True)
class S3Settings:
    """Where the store is and how to talk to it; everything here is safe to log.

    ``prefix`` is the key prefix inside the bucket (no slashes at its ends); ``max_attempts`` is
    botocore's total attempts per request; ``multipart_threshold`` and ``chunk_size`` are in
    bytes (16 MiB, 8 MiB); ``max_concurrency`` is parallel parts per multipart upload.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    retry_mode: str = "standard"
    max_attempts: int = 8
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_concurrency: int = 8

    def url(self) -> str:
        """The ``s3://`` URL that :func:`parse_s3_url` reads back to these settings.

        Only non-default options appear; it never carries credentials.
        """
        query: dict[str, str] = {}
        if self.endpoint_url:
            query["endpoint_url"] = self.endpoint_url
        if self.region:
            query["region"] = self.region
        if self.retry_mode != "standard":
            query["retry_mode"] = self.retry_mode
        if self.max_attempts != 8:
            query["max_attempts"] = str(self.max_attempts)
        path = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{path}?{urlencode(query, safe=':/')}" if query else path


def parse_s3_url(url: str) -> S3Settings:
    """``s3://bucket/prefix?endpoint_url=...&region=...&retry_mode=...&max_attempts=...``.

    Missing values fall back to ``RIDL_S3_ENDPOINT_URL`` and ``RIDL_S3_REGION`` (or
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_DEFAULT_REGION``, which boto3 reads itself), and the retry
    options to ``RIDL_S3_RETRY_MODE`` and ``RIDL_S3_MAX_ATTEMPTS``.

    Raises:
        ConfigError: not an ``s3://BUCKET`` URL, an unknown option, credentials in the URL, a
            retry mode other than standard/adaptive/legacy, or max_attempts not a whole number.
        ValueError: the prefix is not a safe key (see :func:`export.store.check_key`).
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"not an S3 URL: {url!r}; write s3://BUCKET[/PREFIX]")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    known = {"endpoint_url", "region", "retry_mode", "max_attempts"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ConfigError(
            f"unknown S3 store option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if any(k.lower() in ("access_key", "secret", "aws_secret_access_key") for k in query):
        raise ConfigError("credentials do not go in the store URL; use the AWS environment")
    retry_mode = query.get("retry_mode", os.environ.get("RIDL_S3_RETRY_MODE", "standard"))
    if retry_mode not in RETRY_MODES:
        raise ConfigError(f"retry_mode must be one of {', '.join(RETRY_MODES)}")
    try:
        attempts = int(query.get("max_attempts", os.environ.get("RIDL_S3_MAX_ATTEMPTS", "8")))
    except ValueError:
        raise ConfigError("max_attempts must be a whole number") from None
    prefix = parts.path.strip("/")
    if prefix:
        check_key(prefix)
    return S3Settings(
        bucket=parts.netloc,
        prefix=prefix,
        endpoint_url=query.get("endpoint_url") or os.environ.get("RIDL_S3_ENDPOINT_URL") or None,
        region=query.get("region") or os.environ.get("RIDL_S3_REGION") or None,
        retry_mode=retry_mode,
        max_attempts=attempts,
    )


def sha256_b64(hex_digest: str) -> str:
    """The base64 form of a SHA-256 that S3's ``ChecksumSHA256`` fields use.

    ``hex_digest`` is 64 hex characters; the result is 44 base64 characters.
    """
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


@dataclass
class UploadStats:
    """What a store sent: objects uploaded and skipped (same SHA-256 already there), bytes sent,
    multipart uploads, and the keys skipped."""

    uploaded: int = 0
    skipped: int = 0
    bytes_sent: int = 0
    multipart: int = 0
    keys_skipped: list[str] = field(default_factory=list)


def make_client(settings: S3Settings, credentials: dict[str, str] | None = None) -> Any:
    """A boto3 S3 client with retries and path-style addressing for custom endpoints.

    ``credentials`` are boto3 session keyword arguments (``aws_access_key_id``...); without them
    ``RIDL_S3_*`` variables, then boto3's chain, are used. Timeouts: 10 s to connect, 60 s to
    read. Signature version 4, so presigned URLs carry an expiry.
    """
    creds = dict(credentials or {})
    if not creds and os.environ.get("RIDL_S3_ACCESS_KEY_ID"):
        creds = {
            "aws_access_key_id": os.environ["RIDL_S3_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ.get("RIDL_S3_SECRET_ACCESS_KEY", ""),
        }
        if os.environ.get("RIDL_S3_SESSION_TOKEN"):
            creds["aws_session_token"] = os.environ["RIDL_S3_SESSION_TOKEN"]
    config = Config(
        retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts},
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
        signature_version="s3v4",  # presigned URLs carry X-Amz-Date and X-Amz-Expires
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max(10, settings.max_concurrency * 2),
    )
    session = boto3.session.Session(**creds)
    return session.client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config
    )


class S3Store:
    """An S3 bucket (and optional prefix) used as an object store.

    ``stats`` tallies this instance's uploads (:class:`UploadStats`). Building one does not
    contact the server; :meth:`from_url` checks the bucket.
    """

    def __init__(self, settings: S3Settings, credentials: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.base = settings.prefix
        self.url = settings.url()
        self.client = make_client(settings, credentials)
        self.transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.chunk_size,
            max_concurrency=settings.max_concurrency,
        )
        self.stats = UploadStats()

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        """The store of ``s3://BUCKET/PREFIX?endpoint_url=...``, checked now.

        Raises:
            ConfigError: the URL is malformed, or the bucket, endpoint or credentials do not
                answer (a wrong setting fails here, before any work).
        """
        store = cls(parse_s3_url(url))
        store.check()
        return store

    def s3_key(self, key: str) -> str:
        """The bucket key of a store key: the store's prefix, ``/``, and the key."""
        check_key(key)
        return f"{self.base}/{key}" if self.base else key

    def _rel(self, s3_key: str) -> str:
        return s3_key[len(self.base) + 1 :] if self.base else s3_key

    # --- the ObjectStore protocol ---------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        """Upload ``data`` with its SHA-256, unless the same bytes are there (see
        :meth:`put_stream`)."""
        self.put_stream(key, io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes, read whole.

        Raises:
            FileNotFoundError: no object has that key.
        """
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.s3_key(key))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no object {key} in {self.url}") from None
            raise
        data: bytes = response["Body"].read()
        return data

    def exists(self, key: str) -> bool:
        """Whether an object has exactly this key (one HEAD request)."""
        return self.head(key) is not None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (sizes in bytes), paged 1,000 at a time.

        A prefix ending in ``/`` (or empty) lists that folder; one without lists every key
        that begins with it, as S3 does. Keys come back relative to the store's prefix.
        """
        full = self.s3_key(prefix.rstrip("/")) if prefix else self.base
        if full and (prefix.endswith("/") or not prefix):
            full += "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                yield ObjectInfo(self._rel(item["Key"]), int(item["Size"]))

    def delete(self, key: str) -> None:
        """Delete the object (S3 answers success whether or not it existed)."""
        self.client.delete_object(Bucket=self.bucket, Key=self.s3_key(key))

    # --- beyond the protocol ----------------------------------------------------------------

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD answer (boto3's dict: ``ContentLength``, ``Metadata``...), or None
        when there is no such object."""
        try:
            result: dict[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=self.s3_key(key)
            )
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return result

    def stored_sha256(self, key: str) -> str | None:
        """The hex SHA-256 recorded with an object; None when there is no object, "" when
        the object has no recorded digest."""
        head = self.head(key)
        if head is None:
            return None
        value = head.get("Metadata", {}).get(SHA256_META)
        return str(value) if value else ""

    def put_stream(self, key: str, stream: Any, size: int, sha256_hex: str) -> bool:
        """Upload unless the same bytes are already there; True when bytes were sent.

        ``stream`` is a binary file-like object of ``size`` bytes whose SHA-256 is
        ``sha256_hex``; below ``multipart_threshold`` it is sent in one PUT with
        ``ChecksumSHA256``, else multipart with a SHA-256 per part. :attr:`stats` is updated.
        """
        s3_key = self.s3_key(key)
        if self.stored_sha256(key) == sha256_hex:
            self.stats.skipped += 1
            self.stats.keys_skipped.append(key)
            return False
        metadata = {SHA256_META: sha256_hex}
        if size < self.settings.multipart_threshold:
            self.client.put_object(
                Bucket=self.bucket,
                Key=s3_key,
                Body=stream.read(),
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=sha256_b64(sha256_hex),
                Metadata=metadata,
            )
        else:
            self.client.upload_fileobj(
                stream,
                self.bucket,
                s3_key,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": metadata},
                Config=self.transfer,
            )
            self.stats.multipart += 1
        self.stats.uploaded += 1
        self.stats.bytes_sent += size
        return True

    def put_file(self, key: str, path: Path, sha256_hex: str | None = None) -> bool:
        """Upload a file from disk (large files stream through the transfer manager).

        ``sha256_hex`` is computed from the file when not given; True when bytes were sent.
        """
        digest = sha256_hex or file_sha256(path)
        with open(path, "rb") as handle:
            return self.put_stream(key, handle, path.stat().st_size, digest)

    def presign_get(self, key: str, expires_in: int) -> str:
        """A presigned GET URL for the object, valid for ``expires_in`` seconds (SigV4).

        Computed locally: no request is made, and the object need not exist. Whoever holds the
        URL can read the object until it expires.
        """
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.s3_key(key)},
            ExpiresIn=expires_in,
        )
        return url

    def check(self) -> None:
        """Fail now, with what to change, when the bucket cannot be used (before any work).

        Raises:
            ConfigError: no credentials, no such bucket, access refused, or the endpoint
                cannot be reached.
        """
        from botocore.exceptions import BotoCoreError, NoCredentialsError

        where = self.settings.endpoint_url or "AWS"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise ConfigError(
                "no S3 credentials: set RIDL_S3_ACCESS_KEY_ID and RIDL_S3_SECRET_ACCESS_KEY "
                "(or the usual AWS_* variables or profile)"
            ) from None
        except ClientError as exc:
            code = _code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(
                    f"S3 bucket '{self.bucket}' does not exist at {where}; create it or fix "
                    "the store URL (change: --dest)"
                ) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ConfigError(
                    f"S3 refused access to bucket '{self.bucket}' ({code}); check the S3 "
                    "credentials (RIDL_S3_ACCESS_KEY_ID or AWS_*) and their permissions"
                ) from None
            raise
        except BotoCoreError as exc:
            raise ConfigError(
                f"cannot reach the S3 endpoint {where} ({type(exc).__name__}); check "
                "endpoint_url in the store URL (change: --dest)"
            ) from None

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (test servers, first use of MinIO)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.settings.region and self.settings.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
            self.client.create_bucket(**kwargs)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
