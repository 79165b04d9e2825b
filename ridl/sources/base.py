"""The DIR source interface: find studies, then hand over one study's files at a time.

A folder of files, a DIMSE archive and a DICOMweb server all look the same to the flow: each
builds a study catalog for a date window and fetches a selected study into a working folder.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StudyRef:
    """One selected study, as the per-study work needs it (on-premises only: holds PHI)."""

    study_uid: str
    issuer: str
    patient_id: str
    health_number: str | None
    study_date: str
    locations: tuple[str, ...] = field(default_factory=tuple)


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


def open_source(url: str) -> StudySource:
    """A source from its URL-like setting (``folder:PATH``, or a plain path)."""
    from ridl.errors import ConfigError
    from ridl.sources.folder import FolderSource

    if url.startswith("folder:"):
        return FolderSource(Path(url[len("folder:") :]))
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(f"DIR source scheme '{scheme}' is not supported; use folder:PATH")
    return FolderSource(Path(url))
