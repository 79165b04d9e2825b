"""Destination paths that stay inside the folder a researcher chose.

A manifest is data from elsewhere: a path in it (or one built from its UIDs by a layout) could
try to climb out with ``..``, be absolute, or go through a symlink someone placed in the
destination. Every path is checked with :func:`export.store.check_key`, built component by
component, and refused if any component already there is a symlink or not a folder.

Engines floor (``export/``): used by :mod:`export.pull` when a researcher downloads a release.
"""

from __future__ import annotations

import os
from pathlib import Path

from export.store import check_key
from ridl.errors import RidlError


class UnsafePath(RidlError):
    """A destination path would leave the destination folder."""


def safe_destination(root: Path, relative: str, create_parents: bool = True) -> Path:
    """``root/relative``, refusing traversal, absolute paths and symlinks on the way.

    ``relative`` is a ``/``-separated key; the folders on the way are created when
    ``create_parents``, one at a time, each checked as it is made. Returns the target path
    (not created).

    Raises:
        UnsafePath: the key is unsafe, a component on the way is a symlink or not a folder, the
            target is a symlink, or the path resolves outside ``root``.
        FileNotFoundError: ``root`` does not exist.
    """
    try:
        check_key(relative)
    except ValueError:
        raise UnsafePath(f"refusing unsafe path {relative!r} from the manifest") from None
    base = root.resolve(strict=True)
    current = base
    parts = relative.split("/")
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise UnsafePath(f"refusing to write through the symlink {current}")
        if current.exists():
            if not current.is_dir():
                raise UnsafePath(f"{current} is in the way and is not a folder")
        elif create_parents:
            try:
                os.mkdir(current)
            except FileExistsError:
                if current.is_symlink() or not current.is_dir():
                    raise UnsafePath(f"refusing to write through {current}") from None
    target = current / parts[-1]
    if target.is_symlink():
        raise UnsafePath(f"refusing to overwrite the symlink {target}")
    if os.path.commonpath([base, target]) != str(base):
        raise UnsafePath(f"refusing {relative!r}: it resolves outside {base}")
    return target
