"""Back-ends named by dotted strings, imported on first use (pattern: fsspec's registry).

Object stores (``export.store.STORES``) and DIR sources (``ridl.sources.base.SOURCES``) keep a
table from URL scheme to ``("module:Class", install hint)``; the interface modules import no
back-end, so boto3, pynetdicom and dicomweb-client load only when one of their kind is opened.
"""

from __future__ import annotations

import importlib

from ridl.errors import ConfigError


def import_backend(table: dict[str, tuple[str, str]], scheme: str, setting: str) -> type:
    """The class registered for ``scheme`` in ``table``, imported now.

    ``setting`` names what the user sets, for the messages (``--source``, ``object store``).

    Raises:
        ConfigError: no back-end has that scheme (the known ones are listed), or its module
            cannot be imported (the message gives the install hint).
    """
    entry = table.get(scheme)
    if entry is None:
        known = ", ".join(sorted(table))
        raise ConfigError(f"{setting} scheme '{scheme}' is not supported (known: {known})")
    target, hint = entry
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{setting} scheme '{scheme}' needs a module that is missing ({exc.name}): {hint}"
        ) from None
    cls: type = getattr(module, class_name)
    return cls
