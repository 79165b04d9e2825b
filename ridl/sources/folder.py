"""A folder of DICOM files as a DIR: the embedded default, and how exports arrive on disk.

The ``folder`` back-end of :data:`ridl.sources.base.SOURCES` (setting ``folder:PATH``, or a plain
path). It reads headers only, in place, and needs no archive limits: nothing is copied.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydicom.errors import InvalidDicomError

from ridl import settings
from ridl.dicomfile import read_file
from ridl.errors import ConfigError
from ridl.projects import DEFAULT_HN_ISSUER
from ridl.reasons import Reason
from ridl.sources.base import SourceAddress
from ridl.sources.hn import health_number
from ridl.sources.protect import ArchiveLimits
from ridl.studies import StudyRef

HEADER_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "StudyDate",
    "StudyDescription",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
]

INSTANCE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("study_uid", pa.string()),
        ("series_uid", pa.string()),
        ("sop_uid", pa.string()),
        ("sop_class_uid", pa.string()),
        ("modality", pa.string()),
        ("study_date", pa.string()),
        ("description", pa.string()),
        ("issuer", pa.string()),
        ("patient_id", pa.string()),
        ("health_number", pa.string()),
        ("size", pa.int64()),
    ]
)
UNREADABLE_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string())])


class FolderSource:
    """Reads a folder tree in place; fetching a study needs no copy.

    ``url`` is ``folder:<absolute root>``; ``hn_issuer`` names the health number's issuer.
    """

    def __init__(self, root: Path, hn_issuer: str = DEFAULT_HN_ISSUER) -> None:
        self.root = root.resolve()
        self.hn_issuer = hn_issuer
        self.url = f"folder:{self.root}"

    @classmethod
    def from_address(
        cls, address: SourceAddress, limits: ArchiveLimits, hn_issuer: str
    ) -> FolderSource:
        """The source of ``folder:PATH`` (read in place: no archive limits apply).

        Raises:
            ConfigError: no path is given, or the folder does not exist (naming ``--source``).
        """
        if not address.path.strip():
            raise ConfigError("--source folder: needs the DIR folder's path: folder:PATH")
        root = Path(address.path)
        if not root.is_dir():
            raise ConfigError(f"DIR folder {root} does not exist; check --source")
        return cls(root, hn_issuer)

    def changed_since(self, when_ns: int) -> int:
        """How many of the root folder and its direct subfolders were modified after
        ``when_ns`` (POSIX time in nanoseconds, e.g. the catalog's ``studies.parquet``
        mtime): a study folder added or removed under a site or patient folder changes that
        folder's mtime. Files added inside an existing study folder are not seen. Cost: one
        ``stat`` per direct subfolder, never a walk of the tree. 0 when the root is gone.
        """
        try:
            count = int(self.root.stat().st_mtime_ns > when_ns)
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        count += int(entry.stat(follow_symlinks=False).st_mtime_ns > when_ns)
        except OSError:
            return 0
        return count

    def build_catalog(self, catalog_dir: Path, date_from: dt.date, date_to: dt.date) -> None:
        """Index every file's header (never pixel data) into instance and study tables.

        Writes ``instances.parquet`` (one row per readable file, :data:`INSTANCE_SCHEMA`, sizes
        in bytes, paths relative to the root), ``unreadable.parquet`` (path and reason:
        ``not-dicom`` or ``unreadable-header``) and the study table. Files without the preamble or
        without File Meta are read as dcmtk reads them (:func:`ridl.dicomfile.read_file`). The
        whole folder is indexed whatever the dates: the catalog's window is "everything", so it
        covers any window.

        Raises:
            ConfigError: the root folder does not exist.
        """
        if not self.root.is_dir():
            raise ConfigError(f"DIR folder {self.root} does not exist; check --source")
        rows: list[dict[str, object]] = []
        bad: list[dict[str, str]] = []
        for dirpath, dirs, files in os.walk(self.root):
            dirs.sort()
            for name in sorted(files):
                path = Path(dirpath) / name
                rel = path.relative_to(self.root).as_posix()
                try:
                    ds = read_file(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
                    study_uid = str(ds.StudyInstanceUID)
                    sop_uid = str(ds.SOPInstanceUID)
                except InvalidDicomError:
                    bad.append({"path": rel, "reason": Reason.NOT_DICOM})
                    continue
                except Exception:  # header unreadable: truncated, corrupt, missing key UIDs
                    bad.append({"path": rel, "reason": Reason.UNREADABLE_HEADER})
                    continue
                rows.append(
                    {
                        "path": rel,
                        "study_uid": study_uid,
                        "series_uid": str(getattr(ds, "SeriesInstanceUID", "")),
                        "sop_uid": sop_uid,
                        "sop_class_uid": str(getattr(ds, "SOPClassUID", "")),
                        "modality": str(getattr(ds, "Modality", "")).upper(),
                        "study_date": str(getattr(ds, "StudyDate", "")),
                        "description": str(getattr(ds, "StudyDescription", "")),
                        "issuer": str(getattr(ds, "IssuerOfPatientID", "")),
                        "patient_id": str(getattr(ds, "PatientID", "")),
                        "health_number": health_number(ds, self.hn_issuer),
                        "size": path.stat().st_size,
                    }
                )
        settings.private_dir(catalog_dir)  # PHI: 0700, files 0600 whatever the umask
        instances = pa.Table.from_pylist(rows, schema=INSTANCE_SCHEMA)
        pq.write_table(instances, catalog_dir / "instances.parquet")
        pq.write_table(
            pa.Table.from_pylist(bad, schema=UNREADABLE_SCHEMA), catalog_dir / "unreadable.parquet"
        )
        for name in ("instances.parquet", "unreadable.parquet"):
            settings.private_file(catalog_dir / name)
        from ridl.catalog import write_study_table

        write_study_table(instances, catalog_dir)

    def fetch_study(self, study: StudyRef, workdir: Path) -> list[Path]:
        """The study's files in place: the root joined with each catalog location (no copy).

        Raises:
            ConfigError: a location resolves outside the root folder.
        """
        paths = [self.root / loc for loc in study.locations]
        for path in paths:
            if self.root not in path.resolve().parents:
                raise ConfigError("a catalog location points outside the DIR folder")
        return paths

    def release_study(self, study: StudyRef, workdir: Path) -> None:
        """Nothing to clean up: the files were read in place."""
        return None
