"""Object stores: where de-identified objects and release files go.

The flow only sees :class:`ObjectStore`; a local folder (the embedded default) and S3 are two
implementations of it. Writes are atomic, so a reader (or a resumed run) never sees half an
object, and the presence of a study's manifest part is what marks the study as done.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ridl.errors import ConfigError

_SAFE_KEY = re.compile(r"^[A-Za-z0-9._=+\-][A-Za-z0-9._=+\-/]*$")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


def check_key(key: str) -> str:
    """Refuse keys that could escape a prefix: absolute paths, '..', backslashes, empty parts."""
    parts = key.split("/")
    if (
        not key
        or not _SAFE_KEY.match(key)
        or any(p in ("", ".", "..") for p in parts)
        or key.startswith("/")
    ):
        raise ValueError(f"unsafe object key {key!r}")
    return key


class ObjectStore(Protocol):
    """What ridl needs of object storage, whichever backend holds it."""

    url: str

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...


class LocalStore:
    """A folder used as an object store: keys are relative paths under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = f"file:{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.exists():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in sorted(files):
                if name.startswith("."):
                    continue  # temporary files of writes in progress
                path = Path(dirpath) / name
                yield ObjectInfo(path.relative_to(self.root).as_posix(), path.stat().st_size)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.exists():
            path.unlink()

    def clean_partial_writes(self, prefix: str) -> int:
        """Remove temporary files left by a killed writer; returns how many were removed."""
        base = self.root / prefix
        removed = 0
        if base.exists():
            for tmp in base.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed


def open_store(url: str | None) -> ObjectStore:
    """An object store from a URL-like setting: ``file:PATH``, a folder path or ``s3://...``."""
    from ridl import settings

    if not url:
        return LocalStore(settings.default_store_root())
    if url.startswith("file:"):
        return LocalStore(Path(url[5:]))
    if url.startswith("s3://"):
        from export.s3 import S3Store, parse_s3_url

        store = S3Store(parse_s3_url(url))
        store.check()  # a wrong bucket, endpoint or credentials fails here, before any work
        return store
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"object store scheme '{scheme}' is not supported; use file:PATH or s3://BUCKET/PREFIX"
        )
    return LocalStore(Path(url))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
