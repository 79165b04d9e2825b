"""Object stores: where de-identified objects and release files go.

The flow only sees :class:`ObjectStore`; a local folder (the embedded default,
:mod:`export.local`) and S3 (:mod:`export.s3`) are two implementations of it, chosen by the URL's
scheme through :data:`STORES`. Writes are atomic, so a reader (or a resumed run) never sees half an
object, and the presence of a study's manifest part is what marks the study as done.

This module is the interface half of the store room (engines floor, ``export/``): the
:class:`ObjectStore` protocol, key checking, and the :data:`STORES` table from URL scheme to
``"module:Class"``, imported on first use by :func:`open_store`, so this module imports no
back-end (boto3 stays unloaded until an ``s3://`` store is opened). It is one of the two export
modules curation may use (with :mod:`export.manifest`).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from ridl import settings
from ridl.backends import import_backend
from ridl.errors import ConfigError

_SAFE_KEY = re.compile(r"^[A-Za-z0-9._=+\-][A-Za-z0-9._=+\-/]*$")


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as a listing gives it: its key (relative to the store), size in bytes."""

    key: str
    size: int


def check_key(key: str) -> str:
    """Refuse keys that could escape a prefix: absolute paths, '..', backslashes, empty parts.

    A key is ``/``-separated parts of letters, digits and ``._=+-``; it is returned unchanged.

    Raises:
        ValueError: the key is unsafe (not a RidlError: a bad key is a programming error or a
            hostile manifest, and callers that read manifests turn it into their own error).
    """
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
    """What ridl needs of object storage, whichever backend holds it.

    ``url`` reopens the same store in a worker (it never carries credentials). Keys are checked
    with :func:`check_key` by every method that takes one, so each raises ValueError for an
    unsafe key.
    """

    url: str

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically, replacing what was there."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The bytes stored under ``key``.

        Raises:
            FileNotFoundError: no object has that key.
        """
        ...

    def exists(self, key: str) -> bool:
        """Whether an object has exactly this key."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under the folder-like ``prefix`` ("" for all), keys relative to the store.

        Sizes are in bytes; keys come sorted in UTF-8 binary order (S3's ListObjectsV2 order;
        :class:`export.local.LocalStore` lists the same way), so a listing can be merged with a
        sorted list of keys without holding either.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; nothing happens when there is none."""
        ...


def durable_together(store: ObjectStore) -> contextlib.AbstractContextManager[Any]:
    """A block whose puts to ``store`` are made durable together when it ends (a study's
    objects, before its manifest part is written), for a back-end that can
    (``LocalStore.together``: one fsync pass instead of one per object); for the others (an S3
    put is durable when it returns) a block that changes nothing.

    Raises:
        OSError: making the block's writes durable failed (local folder).
    """
    together = getattr(store, "together", None)
    return together() if together is not None else contextlib.nullcontext()


# Back-ends by URL scheme, as "module:Class", imported on first use so this interface module
# imports none of them (boto3 stays unloaded until an s3:// store is opened). Each class has
# ``from_url(url) -> ObjectStore``. Pattern: fsspec's ``known_implementations``.
STORES: dict[str, tuple[str, str]] = {
    "file": ("export.local:LocalStore", "part of ridl"),
    "s3": ("export.s3:S3Store", "pip install boto3"),
}


def store_class(scheme: str) -> type:
    """The back-end class registered for ``scheme``, imported now.

    Raises:
        ConfigError: no back-end has that scheme, or its module cannot be imported (the
            message gives the install hint).
    """
    if scheme not in STORES:
        raise ConfigError(
            f"object store scheme '{scheme}' is not supported; use file:PATH or s3://BUCKET/PREFIX"
        )
    return import_backend(STORES, scheme, "object store")


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two letters or more: not a drive letter


def open_store(url: str | None) -> ObjectStore:
    """An object store from a URL-like setting: ``file:PATH``, a folder path or ``s3://...``.

    No setting means the embedded default (``RIDL_HOME``'s local store folder). A store that can
    be checked (an S3 bucket, its endpoint and credentials) is checked here, before any work.

    Raises:
        ConfigError: unknown scheme, malformed URL, or a store that does not answer as set,
            or the back-end's module is not installed (with the install hint).
        ValueError: an S3 prefix that is not a safe key (see :func:`check_key`).
    """
    if not url:
        url = "file:" + str(settings.default_store_root())
    if "://" in url:
        scheme = url.split("://", 1)[0]
    elif url.startswith("file:"):
        scheme = "file"
    elif _SCHEME.match(url):  # "bogus:/x" is a mistyped setting, not a folder named so
        scheme = url.split(":", 1)[0]
    else:
        url, scheme = "file:" + url, "file"
    store: ObjectStore = store_class(scheme).from_url(url)  # type: ignore[attr-defined]
    return store


READ_AHEAD = 16


def read_in_order(
    store: ObjectStore, objects: Iterable[ObjectInfo], read_ahead: int | None = None
) -> Iterator[tuple[ObjectInfo, bytes]]:
    """(info, bytes) of each object, in the order given, with up to ``read_ahead`` reads in
    flight on threads: an end stage's pass over 10^6-10^7 manifest parts is one GET per part,
    which on S3 costs a round trip each, so reads overlap while the caller parses in order.
    By default the store's own ``read_ahead`` attribute (``LocalStore``: 0, a page-cache read
    being cheaper than a hand-off between threads) or :data:`READ_AHEAD`. Memory: at most
    ``read_ahead`` objects beyond the one the caller holds; the listing is consumed as it goes,
    never held whole.

    Raises:
        FileNotFoundError: an object listed is gone when read (a part being replaced).
    """
    if read_ahead is None:
        read_ahead = int(getattr(store, "read_ahead", READ_AHEAD))
    if read_ahead < 1:
        for info in objects:
            yield info, store.get_bytes(info.key)
        return
    pending: deque[tuple[ObjectInfo, Future[bytes]]] = deque()
    with ThreadPoolExecutor(max_workers=read_ahead, thread_name_prefix="ridl-read") as pool:
        try:
            for info in objects:
                pending.append((info, pool.submit(store.get_bytes, info.key)))
                if len(pending) > read_ahead:
                    first, future = pending.popleft()
                    yield first, future.result()
            while pending:
                first, future = pending.popleft()
                yield first, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (64 lowercase characters), as manifests record it."""
    return hashlib.sha256(data).hexdigest()
