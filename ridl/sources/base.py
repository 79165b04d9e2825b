"""The DIR source interface: find studies, then hand over one study's files at a time.

A folder of files, a DIMSE archive and a DICOMweb server all look the same to the flow: each
builds a study catalog for a date window and fetches a selected study into a working folder.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ridl.sources.protect import ArchiveLimits


@dataclass(frozen=True)
class StudyRef:
    """One selected study, as the per-study work needs it (on-premises only: holds PHI)."""

    study_uid: str
    issuer: str
    patient_id: str
    health_number: str | None
    study_date: str
    locations: tuple[str, ...] = field(default_factory=tuple)
    # False when the catalog could not see Other Patient IDs Sequence (QIDO-RS, or an archive
    # whose C-FIND leaves it out): the per-study work then reads the subject key from the
    # retrieved headers, so research IDs and date shifts match the other sources.
    hn_known: bool = True


class StudySource(Protocol):
    url: str

    def build_catalog(self, catalog_dir: Path, date_from: dt.date, date_to: dt.date) -> None:
        """Write ``studies.parquet`` (and whatever else the source needs) under catalog_dir."""
        ...

    def fetch_study(self, study: StudyRef, workdir: Path) -> list[Path]:
        """Make the study's files readable locally and return their paths."""
        ...

    def release_study(self, study: StudyRef, workdir: Path) -> None:
        """Clean up what fetch_study made (a no-op for sources that read in place)."""
        ...


@dataclass(frozen=True)
class SourceAddress:
    """A parsed source setting: scheme, host part, path and options (never credentials)."""

    scheme: str
    user: str
    host: str
    port: int
    path: str
    options: dict[str, str]

    def checked_options(self, known: set[str]) -> dict[str, str]:
        """The options, or a ConfigError naming the unknown ones and the known ones."""
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

    Unknown schemes and malformed addresses fail with a message naming ``--source``.
    """
    from urllib.parse import parse_qsl, urlsplit

    from ridl.errors import ConfigError

    if url.startswith("folder:"):
        return SourceAddress("folder", "", "", 0, url[len("folder:") :], {})
    if "://" not in url:
        return SourceAddress("folder", "", "", 0, url, {})
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"dimse", "dicomweb", "dicomwebs"}:
        raise ConfigError(
            f"--source scheme '{scheme}' is not supported; use folder:PATH, "
            "dimse://CALLED_AET@host:port?calling=AET or dicomweb://host:port/path"
        )
    if parts.password:
        raise ConfigError("--source must not carry a password; use the archive's own auth setup")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--source port is not a number in '{scheme}://...'") from None
    if not parts.hostname or port is None:
        raise ConfigError(f"--source needs a host and a port: {scheme}://host:port")
    try:
        options = dict(parse_qsl(parts.query, keep_blank_values=False, strict_parsing=False))
    except ValueError:
        raise ConfigError("--source options must be written ?key=value&key=value") from None
    return SourceAddress(
        scheme, parts.username or "", parts.hostname, port, parts.path or "", options
    )


def open_source(url: str, limits: ArchiveLimits | None = None) -> StudySource:
    """A source from its URL-like setting; network sources honour the archive ``limits``."""
    from ridl.sources.folder import FolderSource

    address = parse_source_url(url)
    if address.scheme == "folder":
        return FolderSource(Path(address.path))
    if address.scheme == "dimse":
        from ridl.sources.dimse import DimseSource

        return DimseSource(address, limits or ArchiveLimits())
    from ridl.sources.dicomweb import DicomwebSource

    return DicomwebSource(address, limits or ArchiveLimits())


def subject_from_headers(study: StudyRef, headers: Iterable[Any], hn_issuer: str) -> StudyRef:
    """The study with its subject key read from retrieved headers.

    Used when the catalog could not see Other Patient IDs Sequence: the header of the study's
    own patient couplet is preferred (a study sent by two feeds may carry two couplets).
    """
    from dataclasses import replace

    from ridl.sources.folder import health_number

    chosen = None
    for ds in headers:
        issuer = str(getattr(ds, "IssuerOfPatientID", "") or "")
        patient_id = str(getattr(ds, "PatientID", "") or "")
        if chosen is None or (issuer, patient_id) == (study.issuer, study.patient_id):
            chosen = ds
            if (issuer, patient_id) == (study.issuer, study.patient_id):
                break
    if chosen is None:
        return study
    return replace(
        study,
        issuer=str(getattr(chosen, "IssuerOfPatientID", "") or "") or study.issuer,
        patient_id=str(getattr(chosen, "PatientID", "") or "") or study.patient_id,
        health_number=health_number(chosen, hn_issuer),
        hn_known=True,
    )
