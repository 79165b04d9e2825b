"""Reason codes: why an object was quarantined, excluded, retracted or blocked from a release.

Every code ridl itself writes into a count (``excluded`` / ``quarantined`` of a part, summary or
manifest), a quarantine record, a review record, a retraction or a verification hit is one member
of :class:`Reason`. Members are ``str`` (``enum.StrEnum``), so JSON, Parquet, Counters and
f-strings see exactly the code text; a code is safe to log and count because it never carries a
value read from an object.

Each member carries its ``group`` (see :data:`GROUPS`) and a one-line ``meaning``; README's
"Reason codes" section lists them and ``tests/test_reasons.py`` keeps the two alike
(:func:`markdown` prints the section).

Two kinds of codes are not members, on purpose: a site's own curation check (an entry-point
plug-in) returns its own reason strings, and a check that crashes is quarantined as
``check-failed-<check name>`` (:func:`check_failed`), since check names are the site's.
"""

from __future__ import annotations

import enum

# Where a code is used; the README groups the codes under these titles, in this order.
GROUPS: dict[str, str] = {
    "quarantine": "Quarantine: kept on premises, never exported",
    "policy": "Curation checks: excluded or quarantined as the project's `[curation]` says",
    "exclusion": "Exclusion: left out of the release and counted",
    "verification": "Verification: the gate blocks the release",
    "retraction": "Retraction: removed from an earlier, published release",
    "retrieval": "Retrieval: a study the archive could not deliver (recorded as failed, the run "
    "goes on; `ridl run --retry-failed` tries it again)",
    "review": "Review sheet: why an at-risk object was exported or held",
}

CHECK_FAILED_PREFIX = "check-failed-"


class Reason(enum.StrEnum):
    """One reason code; ``Reason("not-dicom")`` fails (``ValueError``) on a code ridl never writes.

    ``group`` is a key of :data:`GROUPS`; ``meaning`` one line for people (README).
    """

    group: str
    meaning: str

    def __new__(cls, value: str, group: str = "", meaning: str = "") -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.group = group
        member.meaning = meaning
        return member

    # --- quarantine: the object cannot be handled safely ----------------------------------------
    NOT_DICOM = "not-dicom", "quarantine", "the file is not DICOM (no DICM prefix)"
    UNREADABLE = (
        "unreadable",
        "quarantine",
        "the header cannot be parsed, or the file meta has no transfer syntax",
    )
    UNREADABLE_HEADER = (
        "unreadable-header",
        "quarantine",
        "indexing a folder: the header or its study / SOP Instance UID cannot be read",
    )
    TRUNCATED = "truncated", "quarantine", "the pixel data is shorter than the header says"
    DUPLICATE_ELEMENT = (
        "duplicate-element",
        "quarantine",
        "a top-level element appears twice in the file (PS3.5 7.1: each once, in ascending order)",
    )
    WRITE_FAILED = (
        "write-failed",
        "quarantine",
        "de-identifying, encoding or storing the object failed unexpectedly",
    )
    MISSING_UID = (
        "missing-uid",
        "quarantine",
        "the de-identified object has no Study or Series Instance UID",
    )
    IMAGE_WITHOUT_PIXEL_DATA = (
        "image-without-pixel-data",
        "quarantine",
        "an image storage SOP class without Pixel Data",
    )
    UNDECODABLE_TRANSFER_SYNTAX = (
        "undecodable-transfer-syntax",
        "quarantine",
        "pixels must be read but no installed decoder knows their syntax",
    )
    PIXEL_DECODE_FAILED = (
        "pixel-decode-failed",
        "quarantine",
        "the pixels could not be decoded for region cleaning or text detection",
    )
    PIXEL_SHAPE_UNSUPPORTED = (
        "pixel-shape-unsupported",
        "quarantine",
        "region cleaning does not handle this pixel layout",
    )
    PIXEL_WRITE_FAILED = (
        "pixel-write-failed",
        "quarantine",
        "the cleaned pixels could not be written back",
    )
    PIXEL_HEADER_MISMATCH = (
        "pixel-header-mismatch",
        "quarantine",
        "the compressed frames hold another image size, sample count or frame count than the "
        "header says (rows a decoder would cut off, unscreened)",
    )
    BURNED_IN_TEXT = (
        "burned-in-text",
        "quarantine",
        "text detection found text in the pixels of an at-risk or screened object "
        '(`burned_in_text = "quarantine"`; held for review)',
    )
    BURNED_IN_TEXT_REMAINS = (
        "burned-in-text-remains",
        "quarantine",
        "text was still found after the detected boxes were blanked "
        '(`burned_in_text = "redact"`; held for review)',
    )
    VERIFICATION_HIT = (
        "verification-hit",
        "quarantine",
        "stream verification found an identifier of the study, or a staff, institution or "
        "station name, in the de-identified object: it is never stored",
    )
    BURNED_IN_UNVERIFIED = (
        "burned-in-unverified",
        "quarantine",
        "an at-risk object with no known regions to blank, and text detection off",
    )
    # De-identification cannot be done with certainty (DeidError adds the "deid-" prefix).
    DEID_NO_TRANSFER_SYNTAX = (
        "deid-no-transfer-syntax",
        "quarantine",
        "the file meta has no transfer syntax (found while de-identifying)",
    )
    DEID_NO_SOP_INSTANCE = (
        "deid-no-sop-instance",
        "quarantine",
        "no SOP Class or SOP Instance UID to rebuild the file meta from",
    )
    DEID_SEQUENCE_TOO_DEEP = (
        "deid-sequence-too-deep",
        "quarantine",
        "sequences nested deeper than the engine walks",
    )
    DEID_UNKNOWN_VR = (
        "deid-unknown-vr",
        "quarantine",
        "an element of unknown value representation (UN) cannot be checked",
    )
    DEID_UNPARSEABLE_SEQUENCE = (
        "deid-unparseable-sequence",
        "quarantine",
        "a sequence's items cannot be parsed",
    )
    DEID_UNPARSEABLE_ELEMENT = (
        "deid-unparseable-element",
        "quarantine",
        "an element's value cannot be parsed (bad length or VR)",
    )
    DEID_UNKNOWN_CHARSET = (
        "deid-unknown-charset",
        "quarantine",
        "Specific Character Set names a character set ridl cannot decode",
    )
    DEID_UNDECODABLE_TEXT = (
        "deid-undecodable-text",
        "quarantine",
        "text to clean cannot be decoded with the declared character set",
    )
    DEID_UNSUPPORTED_ACTION = (
        "deid-unsupported-action",
        "quarantine",
        "the recipe names an action the engine does not implement",
    )
    DEID_UNKNOWN_RECIPE_FUNCTION = (
        "deid-unknown-recipe-function",
        "quarantine",
        "the recipe calls a func: the engine does not know",
    )
    DEID_UNKNOWN_RECIPE_VARIABLE = (
        "deid-unknown-recipe-variable",
        "quarantine",
        "the recipe names a var: the engine does not know",
    )
    DEID_UNKNOWN_RETAINED_ATTRIBUTE = (
        "deid-unknown-retained-attribute",
        "quarantine",
        "the project retains a keyword the DICOM dictionary lacks",
    )

    # --- curation checks: exclude or quarantine, as the project's policy says -------------------
    LOCALIZER = "localizer", "policy", "a localizer or scout image (policy: localizers)"
    DOSE_REPORT = (
        "dose-report",
        "policy",
        "a radiation dose SR (always excluded) or a dose screen (policy: screen_captures)",
    )
    SCREEN_CAPTURE = (
        "screen-capture",
        "policy",
        "a screen save or workstation capture (policy: screen_captures)",
    )
    NON_IMAGE_SR = "non-image-sr", "policy", "a structured report (policy: non_image)"
    NON_IMAGE_PR = "non-image-pr", "policy", "a presentation state (policy: non_image)"
    NON_IMAGE_KO = "non-image-ko", "policy", "a key object selection (policy: non_image)"
    NON_IMAGE_OBJECT = (
        "non-image-object",
        "policy",
        "an SR, PR or KO SOP class with another Modality (policy: non_image)",
    )
    SERIES_INCONSISTENT_SIZE = (
        "series-inconsistent-size",
        "policy",
        "rows or columns differ from the rest of the series",
    )
    SERIES_INCONSISTENT_ORIENTATION = (
        "series-inconsistent-orientation",
        "policy",
        "image orientation differs from the rest of the series",
    )
    SERIES_DUPLICATE_INSTANCE_NUMBER = (
        "series-duplicate-instance-number",
        "policy",
        "two images of the series share an Instance Number",
    )
    SERIES_INSTANCE_GAP = (
        "series-instance-gap",
        "policy",
        "Instance Numbers of the series have a gap",
    )
    SERIES_IRREGULAR_SPACING = (
        "series-irregular-spacing",
        "policy",
        "slices of the series are not evenly spaced",
    )

    # --- exclusion: left out of the release on purpose ------------------------------------------
    DUPLICATE_STUDY = (
        "duplicate-study",
        "exclusion",
        "selection: a study listed twice (two feeds); one row is kept",
    )
    OPTED_OUT = "opted-out", "exclusion", "the subject is on the project's opt-out list"
    WITHDRAWN = (
        "withdrawn",
        "exclusion",
        "the subject withdrew from the project (`ridl release withdraw`) before this release",
    )
    IOCM_REJECTION_NOTE = (
        "iocm-rejection-note",
        "exclusion",
        "an IOCM rejection note (Key Object Selection, IHE RAD TF-1 IOCM) itself",
    )
    IOCM_REJECTED = (
        "iocm-rejected",
        "exclusion",
        "an instance a rejection note rejects (also retracted from earlier releases)",
    )
    MODALITY_NOT_APPROVED = (
        "modality-not-approved",
        "exclusion",
        "the object's Modality is outside the REB-approved scope",
    )
    DATE_NOT_APPROVED = (
        "date-not-approved",
        "exclusion",
        "`ridl deid`: the object's Study Date is outside the approved dates (or missing)",
    )
    SITE_NOT_APPROVED = (
        "site-not-approved",
        "exclusion",
        "`ridl deid`: the object's Issuer of Patient ID is not an approved site",
    )
    DUPLICATE_SOP_INSTANCE = (
        "duplicate-sop-instance",
        "exclusion",
        "a second object of the study with the same SOP Instance UID",
    )
    REVIEW_REJECTED = "review-rejected", "exclusion", "a reviewer rejected the at-risk object"

    # --- verification: the PHI gate cannot prove an object clean --------------------------------
    UNVERIFIABLE_OBJECT = (
        "unverifiable-object",
        "verification",
        "a stored .dcm object is not DICOM or cannot be parsed: not shown clean",
    )
    UNVERIFIED_STUDY = (
        "unverified-study",
        "verification",
        "a study's manifest part has no passing verification record made with the current "
        "recipe and dictionary rules",
    )
    OBJECT_NOT_IN_MANIFEST = (
        "object-not-in-manifest",
        "verification",
        "a stored .dcm object no manifest part lists (it bypassed stream verification); removed",
    )
    OBJECT_CHANGED = (
        "object-changed",
        "verification",
        "a sampled object's bytes differ from the SHA-256 its manifest part recorded; removed",
    )
    TERMS_UNREADABLE = (
        "terms-unreadable",
        "verification",
        "a database of the terms studies were verified against (on premises) cannot be read: "
        "the sample is not searched for all their identifiers",
    )

    # --- retraction: removed from an earlier, published release ---------------------------------
    SUBJECT_WITHDREW = (
        "subject-withdrew",
        "retraction",
        "the subject withdrew after the release was published",
    )

    # --- retrieval: a study the archive could not deliver (a failed-study part) ----------------
    STUDY_NOT_FOUND = (
        "study-not-found",
        "retrieval",
        "the archive no longer has the selected study (C-GET/C-MOVE delivered nothing, WADO-RS "
        "answered 404: deleted since selection, or its UID is held under two patients)",
    )
    RETRIEVAL_FAILED = (
        "retrieval-failed",
        "retrieval",
        "the archive failed the study's retrieval with a failure status (C-GET/C-MOVE 0xA7xx, "
        "0xA9xx, 0xAAxx, 0xCxxx) or an HTTP error that is not busy (WADO-RS 4xx, 500)",
    )

    # --- review sheet: what happened to an at-risk object ---------------------------------------
    BURNED_IN_RISK_BLACKLIST = (
        "burned-in-risk-blacklist",
        "review",
        "header triage: a blacklist filter puts the object at risk",
    )
    BURNED_IN_RISK_GRAYLIST = (
        "burned-in-risk-graylist",
        "review",
        "header triage: a graylist filter puts the object at risk",
    )
    KNOWN_REGIONS_BLANKED = (
        "known-regions-blanked",
        "review",
        "exported: known text regions were blanked (text detection off)",
    )
    SCREENED_CLASS = (
        "screened-class",
        "review",
        "screened whatever its header says: a modality, class or Image Type where burned-in "
        "text is common",
    )
    SCREENED_SERIES_SAMPLE = (
        "screened-series-sample",
        "review",
        "screened whatever its header says: first, middle or last image of a CT, MR, PT or NM "
        "series",
    )
    TEXT_REDACTED = (
        "text-redacted",
        "review",
        "exported: the detected text boxes were blanked in every frame and a second screening "
        "found none",
    )
    NO_TEXT_FOUND = "no-text-found", "review", "exported: text detection found no text"
    APPROVED = "approved", "review", "exported: a reviewer approved it (text detection off)"
    APPROVED_WITH_TEXT = (
        "approved-with-text",
        "review",
        "exported: text was found but a reviewer approved it",
    )


def check_failed(check_name: str) -> str:
    """The quarantine code of an object whose curation check ``check_name`` crashed.

    A family, not a :class:`Reason` member: check names are the site's (entry-point plug-ins).
    """
    return f"{CHECK_FAILED_PREFIX}{check_name}"


def markdown() -> str:
    """README's list of reason codes, grouped by :data:`GROUPS`: ``- `code` — meaning`` lines."""
    lines: list[str] = []
    for group, title in GROUPS.items():
        lines.append(f"**{title}**")
        lines.append("")
        lines.extend(f"- `{r}` — {r.meaning}" for r in Reason if r.group == group)
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


__all__ = ["CHECK_FAILED_PREFIX", "GROUPS", "Reason", "check_failed", "markdown"]
