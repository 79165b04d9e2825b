"""A local folder used as an object store: the embedded default (``file:PATH``).

Keys are relative paths under the root; every write goes to a temporary name in the same folder,
is fsynced, then renamed into place, so a reader never sees half an object. Inside
:meth:`LocalStore.together` (a study's objects, :func:`export.store.durable_together`) the
writes are made durable together when the block ends: every temporary file is written, then each
is fsynced and renamed, then each folder that received one is fsynced once.

The ``file`` back-end of :data:`export.store.STORES` (engines floor); it needs nothing beyond the
standard library. Every method that takes a key raises ValueError for an unsafe one
(:func:`export.store.check_key`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from export.store import ObjectInfo, check_key
from ridl.errors import ConfigError


class LocalStore:
    """A folder used as an object store: keys are relative paths under ``root``."""

    read_ahead = 0  # export.store.read_in_order: a local read needs no reads in flight

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = f"file:{self.root}"
        # Inside together(): the writes not yet durable, (temporary file, final path).
        self._pending: list[tuple[Path, Path]] | None = None

    @classmethod
    def from_url(cls, url: str) -> LocalStore:
        """The store of ``file:PATH`` (a relative path is taken from the current folder)."""
        path = url[len("file:") :] if url.startswith("file:") else url
        if not path.strip():
            raise ConfigError("--dest file: needs the store folder's path: file:PATH")
        return cls(Path(path))

    def check_writable(self, create: bool = True) -> None:
        """Make sure a run can write here: the root is a folder (created when missing, unless
        ``create`` is False: then its nearest existing parent must be a writable folder) that
        this process may write into.

        Raises:
            ConfigError: the root is a file, cannot be created, or is not writable.
        """
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--dest {self.url} is a file, not a folder; give a folder")
        if not create and not self.root.exists():
            parent = self.root.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"--dest {self.url}: the folder cannot be created under {parent}; "
                    "give a folder this user can write"
                )
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--dest {self.url}: the folder cannot be created ({exc.strerror}); "
                "give a folder this user can write"
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ConfigError(f"--dest {self.url} is not writable by this user; give another")

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to a dot-named temporary file, fsync it, rename it to ``key``.

        Inside :meth:`together`, the fsync and the rename wait for the end of the block.
        """
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            if self._pending is not None:
                self._pending.append((tmp, path))
                return
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Make the puts of the block durable together when it ends.

        Each object is written to its temporary file in the block; at its end each temporary
        file is fsynced and renamed into place, then every folder that received one is fsynced
        once (the renames are durable). A block left by an exception removes its temporary
        files: none of its objects is stored. Not re-entrant.

        Raises:
            OSError: a write, fsync or rename failed.
        """
        pending: list[tuple[Path, Path]] = []
        self._pending = pending
        try:
            yield
            self._pending = None
            folders: dict[Path, None] = {}
            for tmp, _ in pending:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for tmp, path in pending:
                os.replace(tmp, path)
                folders[path.parent] = None
            pending = []  # renamed: nothing left to remove
            for folder in folders:
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            self._pending = None
            for tmp, _ in pending:
                tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        """The file's bytes.

        Raises:
            FileNotFoundError: no object has that key.
        """
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a file under the root."""
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Files under the folder ``prefix`` ("" for all), sizes in bytes, sorted by key in
        UTF-8 binary order (the order of S3's ListObjectsV2, so a listing can be merged with a
        sorted manifest whatever the back-end); temporary files of writes in progress
        (dot-named) are left out.
        """
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.is_dir():
            return
        yield from self._walk(base)

    def _walk(self, folder: Path) -> Iterator[ObjectInfo]:
        """Files under ``folder`` in key order: a sub-folder's keys sort as its name plus "/"
        (keys are ASCII, :func:`export.store.check_key`, so str order is byte order)."""
        entries: list[tuple[str, os.DirEntry[str]]] = []
        with os.scandir(folder) as scan:
            for entry in scan:
                if entry.is_dir(follow_symlinks=False):
                    entries.append((entry.name + "/", entry))
                elif entry.is_file() and not entry.name.startswith("."):  # writes in progress
                    entries.append((entry.name, entry))
        for name, entry in sorted(entries, key=lambda e: e[0]):
            if name.endswith("/"):
                yield from self._walk(Path(entry.path))
            else:
                path = Path(entry.path)
                yield ObjectInfo(path.relative_to(self.root).as_posix(), entry.stat().st_size)

    def delete(self, key: str) -> None:
        """Remove the file under ``key``, if there is one, and the folders it leaves empty
        (up to the store's root), as an object store has no empty "folders" either."""
        path = self._path(key)
        if path.exists():
            path.unlink()
        folder = path.parent
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()  # only succeeds when empty
            except OSError:
                break
            folder = folder.parent

    def clean_partial_writes(self, prefix: str) -> int:
        """Remove temporary files left by a killed writer; returns how many were removed."""
        base = self.root / prefix
        removed = 0
        if base.exists():
            for tmp in base.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed
