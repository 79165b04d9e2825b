"""The DIR source interface: find studies, then hand over one study's files at a time.

A folder of files, a DIMSE archive and a DICOMweb server all look the same to the flow: each
builds a study catalog for a date window and fetches a selected study into a working folder.

This module is the interface half of the sources room (ground floor, ``ridl/sources/``): the
:class:`StudySource` protocol, the parsed ``--source`` setting (:class:`SourceAddress`) and the
:data:`SOURCES` table from scheme to ``"module:Class"``, imported on first use by
:func:`open_source`, so this module imports no back-end (pynetdicom and dicomweb-client stay
unloaded until such a source is opened). The back-ends are ``folder``, ``dimse`` and
``dicomweb``; all read the health number through :mod:`ridl.sources.hn` and press on a network
archive only through :mod:`ridl.sources.protect`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ridl.backends import import_backend
from ridl.projects import DEFAULT_HN_ISSUER
from ridl.sources.protect import ArchiveLimits
from ridl.studies import StudyRef


class StudySource(Protocol):
    """What the flow needs of a DIR: a study catalog for a date window, then one study at a time.

    ``url`` is the setting that reopens the same source in a worker; ``hn_issuer`` is the Issuer
    of Patient ID (0010,0021) of the Other Patient IDs Sequence (0010,1002) item that holds the
    health number (the project's ``hn_issuer``).

    Network sources also have ``session()``, a context manager under which one thread
    retrieves several studies over one association (one slot of the archive's cap held for the
    block); ``flows.work.process_batch`` retrieves a batch ahead of its work inside one when the
    source has it (a folder has none: its files are read in place).
    """

    url: str
    hn_issuer: str

    def build_catalog(self, catalog_dir: Path, date_from: dt.date, date_to: dt.date) -> None:
        """Write ``studies.parquet`` (and whatever else the source needs) under catalog_dir.

        The window is inclusive (local study dates); the table has one row per study, in the
        columns of :data:`ridl.catalog.STUDY_SCHEMA`.

        Raises:
            ConfigError: the source cannot be read as configured (missing folder, port taken).
            ArchiveUnavailable: a network archive kept refusing after the retries allowed.
            RidlError: a network archive refused a query outright.
        """
        ...

    def fetch_study(self, study: StudyRef, workdir: Path) -> list[Path]:
        """Make the study's files readable locally and return their paths.

        A list of paths of DICOM Part 10 files (in ``workdir``, or in place for a folder); an
        empty list when the study is gone from the archive.

        Raises:
            ConfigError: the source is misconfigured for retrieval (a location outside the
                folder, an unknown C-MOVE destination).
            ArchiveUnavailable: a network archive kept refusing after the retries allowed.
            RidlError: a network archive refused the retrieval outright.
        """
        ...

    def release_study(self, study: StudyRef, workdir: Path) -> None:
        """Clean up what fetch_study made (a no-op for sources that read in place)."""
        ...


@dataclass(frozen=True)
class SourceAddress:
    """A parsed source setting: scheme, host part, path and options (never credentials).

    ``user`` is the called AE title of a DIMSE archive (empty otherwise); ``port`` is 0 for a
    folder; ``options`` are the ``?key=value`` query pairs.
    """

    scheme: str
    user: str
    host: str
    port: int
    path: str
    options: dict[str, str]

    def checked_options(self, known: set[str]) -> dict[str, str]:
        """The options as a new dict, once all are among ``known``.

        Raises:
            ConfigError: an option is not in ``known`` (the message names both sets).
        """
        from ridl.errors import ConfigError

        unknown = set(self.options) - known
        if unknown:
            raise ConfigError(
                f"unknown --source option(s) {sorted(unknown)} for {self.scheme}://; known: "
                f"{sorted(known)}"
            )
        return dict(self.options)


def parse_source_url(url: str) -> SourceAddress:
    """Split ``folder:PATH``, ``dimse://AET@host:port?k=v`` or ``dicomweb[s]://host:port/path``.

    Unknown schemes and malformed addresses fail with a message naming ``--source``. A setting
    without ``://`` is a folder path.

    Raises:
        ConfigError: an unknown scheme, a password in the URL, a missing host or port, a port
            that is not a number, or options not written ``?key=value&...``.
    """
    from urllib.parse import parse_qsl, urlsplit

    from ridl.errors import ConfigError

    if url.startswith("folder:"):
        return SourceAddress("folder", "", "", 0, url[len("folder:") :], {})
    if "://" not in url:
        return SourceAddress("folder", "", "", 0, url, {})
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SOURCES or scheme == "folder":
        raise ConfigError(
            f"--source scheme '{scheme}' is not supported; use folder:PATH, "
            "dimse://CALLED_AET@host:port?calling=AET or dicomweb://host:port/path"
        )
    if parts.password:
        raise ConfigError("--source must not carry a password; use the archive's own auth setup")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"--source port must be a number from 1 to 65535 in '{scheme}://...'"
        ) from None
    if not parts.hostname or port is None:
        raise ConfigError(f"--source needs a host and a port: {scheme}://host:port")
    try:
        options = dict(parse_qsl(parts.query, keep_blank_values=False, strict_parsing=False))
    except ValueError:
        raise ConfigError("--source options must be written ?key=value&key=value") from None
    return SourceAddress(
        scheme, parts.username or "", parts.hostname, port, parts.path or "", options
    )


# Back-ends by scheme, as "module:Class", imported on first use so this interface module imports
# none of them (pynetdicom and dicomweb-client stay unloaded until such a source is opened). Each
# class has ``from_address(address, limits, hn_issuer) -> StudySource``. Pattern: fsspec's
# ``known_implementations``; ``ridl.secrets.PROVIDERS``.
SOURCES: dict[str, tuple[str, str]] = {
    "folder": ("ridl.sources.folder:FolderSource", "part of ridl"),
    "dimse": ("ridl.sources.dimse:DimseSource", "pip install pynetdicom"),
    "dicomweb": ("ridl.sources.dicomweb:DicomwebSource", "pip install dicomweb-client"),
    "dicomwebs": ("ridl.sources.dicomweb:DicomwebSource", "pip install dicomweb-client"),
}


def source_class(scheme: str) -> type:
    """The source class registered for ``scheme``, imported now.

    Raises:
        ConfigError: no source has that scheme, or its module cannot be imported (the message
            gives the install hint).
    """
    return import_backend(SOURCES, scheme, "--source")


def open_source(
    url: str, limits: ArchiveLimits | None = None, hn_issuer: str = DEFAULT_HN_ISSUER
) -> StudySource:
    """A source from its URL-like setting (``folder:PATH``, ``dimse://...``, ``dicomweb://...``).

    Network sources honour the archive ``limits``; every source reads the health number from the
    Other Patient IDs Sequence item issued by ``hn_issuer`` (the project's setting).

    Raises:
        ConfigError: unknown scheme, malformed address or unknown option (naming ``--source``),
            or the back-end's module is not installed (with the install hint).
    """
    address = parse_source_url(url)
    cls = source_class(address.scheme)
    source: StudySource = cls.from_address(  # type: ignore[attr-defined]
        address, limits or ArchiveLimits(), hn_issuer
    )
    return source
