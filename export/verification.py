"""What the PHI gate reports: the verification report and the error that blocks a release.

Engines floor (``export/``): the report types of the PHI gate, kept apart from the dictionary
(:mod:`export.identifiers`) and the byte scan (:mod:`export.phi_scan`) so that whoever reads or
writes a report (``flows.gate``, the release commands) needs neither. The report is written on
premises (``ridl.releases.report_path``); it names keys, attribute paths and kinds, never values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from export.phi_scan import Hit
from ridl.errors import ReleaseError


@dataclass
class VerificationReport:
    """What the gate found; names keys, paths and kinds, never a value.

    ``store`` is the store URL; ``bytes_checked`` in bytes; ``dictionary_kinds`` {kind: terms};
    ``studies_read`` / ``headers_read`` count the studies whose identifiers were used and the
    source headers read for them (0 in ``sample`` mode: nothing is read from the DIR); ``ocr``
    says whether OCR was used; ``seconds_*`` are wall-clock seconds; ``checked_at`` is an ISO
    8601 UTC time. ``mode`` is ``sample`` (the run's gate, ``flows.gate.audit_release``) or
    ``full`` (``ridl verify --full``); ``parts_checked`` counts study parts whose verification
    record was checked, ``objects_listed`` the ``.dcm`` objects in the store under the release,
    ``studies_without_terms`` sampled studies whose kept terms were missing (checked against
    the frozen selection's identifiers instead), ``removed`` the keys a blocked gate deleted.
    """

    project: str
    release: str
    store: str
    passed: bool
    objects_checked: int
    bytes_checked: int
    dictionary_terms: int
    dictionary_kinds: dict[str, int]
    studies_read: int
    headers_read: int
    ocr: str
    ocr_objects: int
    hits: list[Hit]
    seconds_dictionary: float
    seconds_search: float
    checked_at: str
    mode: str = "full"
    parts_checked: int = 0
    objects_listed: int = 0
    studies_without_terms: int = 0
    removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict, each hit as {key, path, kind}."""
        data = asdict(self)
        data["hits"] = [asdict(h) for h in self.hits]
        return data

    def render(self) -> str:
        """The report as lines of text for the console (the first 200 hits listed)."""
        status = "PASSED" if self.passed else "BLOCKED"
        lines = [f"verification of {self.project}/{self.release} ({self.mode}): {status}"]
        if self.mode == "sample":
            lines += [
                f"  study parts with a verification record checked: {self.parts_checked}",
                f"  objects in the store: {self.objects_listed}, each listed by a part or named "
                "below",
                f"  objects read back and searched again: {self.objects_checked} "
                f"({self.bytes_checked:,} bytes)",
                f"  dictionary: {self.dictionary_terms} terms of {self.studies_read} sampled "
                f"studies and cross-study terms {self.dictionary_kinds} (no DIR retrieval; "
                f"{self.studies_without_terms} sampled studies without kept terms, searched for "
                "their patient ID and health number only)",
            ]
        else:
            lines += [
                f"  objects checked: {self.objects_checked} ({self.bytes_checked:,} bytes)",
                f"  dictionary: {self.dictionary_terms} terms from {self.headers_read} source "
                f"headers of {self.studies_read} studies {self.dictionary_kinds}",
            ]
        lines += [
            f"  OCR: {self.ocr} ({self.ocr_objects} objects read)",
            f"  time: dictionary {self.seconds_dictionary:.2f}s, search {self.seconds_search:.2f}s",
        ]
        if self.removed:
            lines.append(f"  {len(self.removed)} object(s) removed from the store")
        if self.hits:
            lines.append(f"  {len(self.hits)} finding(s); publishing is blocked:")
            lines.extend(f"    {hit}" for hit in self.hits[:200])
            if len(self.hits) > 200:
                lines.append(f"    ... and {len(self.hits) - 200} more (see the report file)")
        return "\n".join(lines)


class VerificationFailed(ReleaseError):
    """Identifiers were found in a release: it stays unpublished.

    ``report`` is kept on the exception; the message gives the number of hits and objects and
    the path of the report file, never a value.
    """

    def __init__(self, report: VerificationReport, report_path: Path) -> None:
        self.report = report
        objects = len({h.key for h in report.hits})
        super().__init__(
            f"release {report.project}/{report.release} is NOT published: verification found "
            f"{len(report.hits)} problem(s) (identifiers, unverified studies, objects outside "
            f"the manifest) in {objects} object(s) or part(s); the report names each object "
            f"and attribute: {report_path}"
        )
