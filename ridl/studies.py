""":class:`StudyRef`, the study the per-study work gets (selected from a catalog: ``ridl.catalog``).

Kept apart from the catalog so that what only handles studies (the sources' retrieval, the
retrieval process of ``flows.retrieval``) does not import the catalog's Arrow and pandas: about
half a second of every such process's start.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StudyRef:
    """One selected study, as the per-study work needs it (on-premises only: holds PHI).

    ``study_date`` is DICOM ``YYYYMMDD``; ``issuer`` is the Issuer of Patient ID (0010,0021);
    ``locations`` are source-specific (file paths for a folder source, empty for network ones).
    """

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
