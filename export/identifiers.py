"""The identifier dictionary: which values of a study's source headers are searched for, and how.

A release must not hold an identifier of its sources. The identifying values of the source
headers (every name component, patient IDs and health numbers, dates of birth, accession and
procedure numbers, dates of the encounter, addresses, telephone numbers, institution,
department and station names, the Code Meaning of Institution Code Sequence items, the values
of structured-report content items that name a person, an organisation or a device
(:data:`ridl.identity.IDENTIFYING_CONCEPTS`), and the text values of private tags) go into an
:class:`IdentifierDictionary`, which compiles them into an Aho-Corasick automaton per set of
character sets, so one pass over an object finds all of them at once. :mod:`export.phi_scan`
runs the search and locates each hit.

The tuning rules (documented in the README and tested one by one) keep common words and short
numbers from blocking a release without reason:

R1  terms shorter than 4 characters are not searched alone (name components: 3, or 2 of Han,
    kana or Hangul, whose name groups are also searched written without spaces);
R2  terms made only of digits (and separators) need at least 6 digits;
R3  a term matches only as a whole word: the characters on both sides are not letters or digits
    (exceptions for dates: a date may be followed by the digits of a time inside a DT value,
    and anywhere by ``T`` and a time, as ISO 8601 writes a date and time; a term that starts
    or ends with Han, kana or Hangul needs no boundary on that side, as Chinese and Japanese
    write no spaces between words and Korean writes particles and titles after a name:
    ``患者山田花子様``, ``홍길동님``; the final byte of an ISO 2022 escape sequence before a
    term is no letter);
R4  name components and private-tag values that are common words (``COMMON_WORDS``) block only
    when they are found in a person-name (PN) attribute;
R5  a date of birth or of the encounter (study, series, acquisition, procedure step dates, in
    every DA / DT form: ranges, several values, DT, and written for people: with ``-``, ``/`` or
    ``.``, day or month first, 2-digit years, English and French month names and abbreviations,
    ordinal days; see :func:`written_dates`) blocks
    when found in an object of the same research subject; in another subject's object it is a
    coincidence (a date alone names nobody else; the stream, which knows only the study's own
    subject, and the release gate's sample, which merges several studies, then agree), and so
    is, in the subject's own date attributes, an original date that equals another of its
    dates moved by its date shift; a date of no known subject blocks in a non-date attribute;
R6  private-tag, institution and station values that are UIDs, or equal to a public
    non-identifying attribute of the same header, are not searched, nor any term equal to a
    manufacturer, model or software version of any selected header; private creators are not;
R7  matching ignores ASCII case; a term with other letters is also searched in its lower-case,
    upper-case and capitalized forms (``CÔTÉ`` written ``Côté``; Cyrillic, Greek, Turkish),
    and in each of them without accents (``Gélinas`` written ``GELINAS``) and with its accents
    written apart (Unicode NFD);
R8  address parts are searched when they hold a digit or several words (a lone city name is not);
R9  values of attributes that the project's approved scope retains are not searched;
R10 pixel data, overlay bitmaps and waveform samples are image bytes, not text: hits inside them
    are ignored (the OCR step reads the text in pixels);
R11 a value equal to one of ridl's own dummies (``OWN_VALUES``: what the PS3.15 "D" action
    writes), or made only of them (``Anonymous^Anonymous``), is not searched: every
    de-identified object may carry it, whoever the patient;
R12 ridl's own vocabulary (``OWN_WORDS``: the words of its reason codes and of the field names
    of its parts, manifests and summary, and its dummies) is never an identifier: a value made
    only of those words is not searched, except a name, which blocks only when found in a
    person-name (PN) attribute (as R4): a patient named "Modality" does not match the
    ``modality`` key of every part;
R13 a name found in a coded string (CS) value of a de-identified object is not a hit: a CS value
    is a defined term (Image Type ``PERFUSION``, PS3.5 6.2), not a person's name;
R14 a term found in an attribute ridl's de-identification writes in place of the source's
    (Patient Identity Removed, De-identification Method and its Code Sequence, Longitudinal
    Temporal Information Modified: PS3.15 E.1.1; the File Meta's Implementation Class UID and
    Version Name: PS3.10 7.1) is not a hit: a patient named "Basic" or "Clean" does not match
    the code meaning of the profile ridl applied (``export.phi_scan.RIDL_WRITTEN``);
R15 each word of a hyphenated name component is a term too (``Gagnon`` for ``Tremblay-Gagnon``);
    a person name is also searched with its words run together, as typed text writes it
    (family and given names joined either way round, the first given name with the family
    name, a component of several words alone, a name without its apostrophe:
    ``TREMBLAYJOSEE``, ``MarieRoy``, ``SaintPierre``, ``OConnor``; words of 3 letters or
    particles, forms of 5 or more, no initials, no word of PS3.16's concept meanings:
    ``S`` + ``PINE`` and ``Or^Don`` make words; common words run together block in PN only,
    R4), and an identifier made of a letter prefix and 5 digits or more with its prefix joined
    or set apart (``MRN 00123``, ``MRN-00123``, ``MRN#00123``… for ``MRN00123``):
    ``ridl.written_forms``, whose name forms de-identification removes from free text too.
R16 a public element is read with the VR of the data dictionary (PS3.6) when that is one VR
    whose value is text or a person name and the header wrote another (PS3.5 6.2, 7.1.2: a
    Patient Name written LO, UN or US is still a name; a Patient ID written US still an ID; a
    sequence written UN is read as a sequence);
    what a top-level element contributed is remembered by its tag, written VR, bytes and
    character set, so the same bytes written with another VR are read again (:func:`read_as`).

:data:`RULES_VERSION` names this set of rules; a study's verification record carries it, and the
release gate refuses a record made under other rules. Bump it whenever a rule, a keyword set or
``COMMON_WORDS`` changes.

Staff names (the person-name attributes of :data:`STAFF_KEYWORDS`) and institution, department
and station names met while a header is read are also kept in
:attr:`IdentifierDictionary.shared`, so the caller can search them in *other* studies
(``ridl.crossterms``); :meth:`IdentifierDictionary.add_shared` adds such a term back.

Engines floor (``export/``): one of the three parts of the PHI gate, with :mod:`export.phi_scan`
(the byte scan) and :mod:`export.verification` (the report); ``flows.gate`` builds the dictionary
from the source headers and runs the scan.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import repeat
from typing import Any, cast

import ahocorasick_rs
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.tag import BaseTag, Tag

from ridl.identity import TEXT_VALUE, Named, content_item_names
from ridl.reasons import Reason
from ridl.written_forms import (
    CJK_LETTERS,
    capitalized,
    joined_name_forms,
    split_identifier_forms,
    unaccented,
)

RULES_VERSION = "ridl-identifiers/14"
# The encodings every dictionary searches its terms in, beside those a header declares (Python
# codec names): Latin-1 and UTF-8 write ASCII as ASCII.
OWN_ENCODINGS = ("latin_1", "utf_8")
# 14: the dictionary's VR for a public element written with another (R16);
# 13: names run together, identifiers split (R15); 12: JPEG RES and JPG segments are text;
# 11: compressed frames' comments searched (R10); 10: Han/kana/Hangul ends, ISO 2022 escapes
# (R3), dashes and spaces; 9: more date forms, ISO T (R5), NFD (R7); 8: case forms

MIN_TERM = 4
MEMO_CAP = 100_000  # distinct top-level elements an ElementMemo remembers
# Kinds whose terms R6 also drops when found inside an equipment name.
_PLACE_OR_PRIVATE = frozenset({"institution-or-station", "private-tag"})
# Terms each tier of a CrossStudyDictionary holds before it is folded into the next (the last
# tier is unbounded): a new term recompiles the smallest automaton, the big one rarely.
TIER_TERMS = (256, 8192)
MEMO_MAX_VALUE = 65_536  # bytes: larger elements are read every time, never remembered
# A top-level element as its bytes were read: (tag, VR as written or None, value bytes, Specific
# Character Set). The VR is part of it: the same bytes written as US and as LO read differently.
ElementKey = tuple[int, str | None, bytes, str]
_SUBJECT = "\x00subject"  # stands for the reading header's research ID in a remembered element
MIN_NAME = 3
# Han ideographs, kana and Hangul (and their half-width forms): a name component of two of them
# is as specific as a Latin one of three letters or more (R1), and names in them are written
# without spaces.
_CJK_ONLY = re.compile(CJK_LETTERS + "+")
MIN_DIGITS = 6

ID_KEYWORDS = {
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "MedicalRecordLocator",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "AdmissionID",
    "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberProcedure",
    "FillerOrderNumberProcedure",
    "StudyID",
    "PatientInsurancePlanCodeSequence",
}
BIRTH_KEYWORDS = {"PatientBirthDate"}
# Dates of the encounter (PS3.3 C.7.2.1 General Study, C.7.3.1 General Series, C.7.6.1 General
# Image, C.4.14 Performed Procedure Step, C.4.10 Scheduled Procedure Step, C.3.5 Visit Status):
# searched as the subject's dates (R5) in every DA / DT form they are written in.
DATE_KEYWORDS = {
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "AcquisitionDateTime",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepStartDateTime",
    "PerformedProcedureStepEndDateTime",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepEndDate",
    "ScheduledProcedureStepStartDateTime",
    "AdmittingDate",
    "DischargeDate",
    "StudyVerifiedDate",
    "StudyReadDate",
    "StudyArrivalDate",
    "StudyCompletionDate",
    "IssueDateOfImagingServiceRequest",
}
# Placeholders archives write for an unknown date: in every subject's headers, not a date of one.
PLACEHOLDER_DATES = frozenset({"19000101"})
SCOPED_KINDS = frozenset({"birth-date", "encounter-date"})
ADDRESS_KEYWORDS = {
    "PatientAddress",
    "InstitutionAddress",
    "ReferringPhysicianAddress",
    "CountryOfResidence",
    "RegionOfResidence",
}
PHONE_KEYWORDS = {
    "PatientTelephoneNumbers",
    "ReferringPhysicianTelephoneNumbers",
    "PersonTelephoneNumbers",
}
EQUIPMENT_KEYWORDS = {"Manufacturer", "ManufacturerModelName", "SoftwareVersions"}
# Institution, organisation and station names (PS3.3 C.7.5.1 General Equipment, C.17.2 SR
# Document General: Verifying Organization, C.7.1.1 Patient: Responsible Organization).
PLACE_KEYWORDS = {
    "InstitutionName",
    "InstitutionalDepartmentName",
    "StationName",
    "VerifyingOrganization",
    "ResponsibleOrganization",
}
INSTITUTION_CODE_SEQUENCE = 0x00080082
CODE_MEANING = 0x00080104
# Person names of staff, not of the patient (PS3.15 Table E.1-1 lists each as identifying):
# searched in every other study of the project too (``ridl.crossterms``).
STAFF_KEYWORDS = {
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "ScheduledPerformingPhysicianName",
    "ConsultingPhysicianName",
    "ReviewerName",
    "VerifyingObserverName",
    "ContentCreatorName",
    "PhysicianApprovingInterpretation",
    "InterpretationRecorder",
    "InterpretationTranscriber",
    "DistributionName",
    "SecondaryReviewerName",
}
INTERESTING_KEYWORDS = (
    ID_KEYWORDS
    | BIRTH_KEYWORDS
    | DATE_KEYWORDS
    | ADDRESS_KEYWORDS
    | PHONE_KEYWORDS
    | PLACE_KEYWORDS
)
TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UT"}
# Tags whose bytes are image samples, not text (R10).
BULK_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009, 0x54001010}
DATE_VRS = {"DA", "DT"}

_COMMON = """
    abdomen adult anonymous april august avenue axial baker bay bell berry bill bird black
    blood body bond bone both boulevard brain breast brown bush cash center centre chest child
    church clinic cole contrast cook coronal cross dale day dean derived doctor dose east
    emergency faith female field fish ford foot fox frank frontal general gold grace gray green
    grey hall hand head health heart helical hill hope hospital house hunt image imaging ivory
    jack james joy june king knee knight lane lateral law left little liver long love lung main
    male march mark may medical miller moss neck none normal north original other page park
    patient pelvis phantom physician pope portable price primary prone radiology reed report
    rice rich right rose routine rue saint sagittal scout screen secondary series sharp short
    small snow soft south spine spiral spring stone street strong study summer supine test
    tissue unknown upright ward west white will winter wood young name first last middle
    given family here anonymized
    text burned annotation truncated duplicate instance rejected note approved failed check
    pixel decode missing header consistency orientation size gap spacing localizer capture
    known regions blanked review quarantined excluded
    côté léger légère petit petite grand grande blanc blanche gauche droit droite parent plante
    pointe fort haut bas simple clair
"""
# The lines after "anonymized" are ridl's own vocabulary (reason codes, column names of parts and
# manifests): a patient named "Text" must not block every release whose parts say
# "burned-in-text". The last two are French words that are also surnames common in Quebec and
# that clinical descriptions use ("côté gauche", "épanchement léger").
# OWN_WORDS (R12) completes it from the sources themselves, so a new field or code is covered.
COMMON_WORDS = frozenset(_COMMON.split())
# R11: the dummy values de-identification writes (deid_recipes.engine.DUMMY_BY_VR and the text
# dummy ANON), lower case; tests/test_verify.py keeps this list equal to the engine's.
OWN_VALUES = frozenset({"anon", "anonymous", "19000101", "000000", "19000101000000", "000d", "0"})


def _own_words() -> frozenset[str]:
    """R12: the words ridl itself writes into every release, lower case: the words of every
    reason code (:class:`ridl.reasons.Reason`, split at ``-``), of every field name of the
    derived files (manifest part, object row, verification record, summary, labels entry and
    the manifest columns of :mod:`export.manifest`, split at ``_``) and the dummies (R11)."""
    from export import manifest

    names: set[str] = set(manifest.MANIFEST_COLUMNS)
    for record in (
        manifest.ObjectRow,
        manifest.ManifestPart,
        manifest.VerificationRecord,
        manifest.ReleaseSummary,
        manifest.LabelsFile,
    ):
        names.update(record.__annotations__)
    words = {w for name in names for w in name.lower().split("_")}
    words |= {w for code in Reason for w in str(code).split("-")}
    return frozenset(w for w in words | OWN_VALUES if w)


OWN_WORDS = _own_words()
# Kinds of term that name a person: a coded (CS) value of a de-identified object is a code
# from a defined list, never a name (R13).
NAME_KINDS = frozenset({"name", "staff"})

_DIGITS = re.compile(r"^[\d\s\-./()+]+$")
_UIDLIKE = re.compile(r"^[\d.]+$")


# --- the dictionary ------------------------------------------------------------------------------


@dataclass(slots=True)
class Term:
    """One searched value's rules (never its value in anything that leaves this module).

    ``kinds`` are where the value came from (``name``, ``identifier``, ``birth-date``,
    ``encounter-date``, ``address``, ``telephone``, ``private-tag``,
    ``institution-or-station``); ``name_only``: it blocks only in a PN attribute (R4);
    ``owners``: research IDs whose birth or encounter date it is (R5); ``date``: the term is a
    ``YYYYMMDD`` date, searched in every written form (:func:`written_dates`, one term for all
    of them), which as written in DICOM may also match as the start of a DT value (digits
    follow: R3's exception for dates).
    """

    kinds: set[str] = field(default_factory=set)
    name_only: bool = True
    owners: set[str] = field(default_factory=set)  # research IDs of a date (R5)
    anyone: bool = False  # a contribution that is not a subject's date blocks for every subject
    date: bool = False
    # Research IDs for whom this date is also one of their dates moved by their date shift:
    # in their date attributes it may be a shifted date, so it is a coincidence there (R5).
    coincident: set[str] = field(default_factory=set)

    def merge(self, kind: str, name_only: bool, owner: str | None) -> None:
        """Add one more source of the same value: it is name-only only if every source is, and
        it blocks for everyone as soon as a source is not a subject's date with an owner."""
        self.kinds.add(kind)
        self.name_only = self.name_only and name_only
        if kind in SCOPED_KINDS and owner is not None:
            self.owners.add(owner)
        elif kind != "encounter-date":  # an encounter date of nobody known: scoped to nobody
            self.anyone = True

    @property
    def scoped(self) -> bool:
        """True when the value is only a birth date of known subjects (R5 applies)."""
        return not self.anyone


def _norm(value: str) -> str:
    return " ".join(value.replace("\x00", " ").split()).strip()


_WORD_SPLIT = re.compile(r"[\s^,\-_]+")
_DUMMY_SPLIT = re.compile(r"[\s^=,.\-_]+")


def _is_common(value: str) -> bool:
    words = [w for w in _WORD_SPLIT.split(value.lower()) if w]
    return bool(words) and all(w in COMMON_WORDS or w in OWN_WORDS for w in words)


def _only_dummies(value: str) -> bool:
    words = [w for w in _DUMMY_SPLIT.split(value.lower()) if w]
    return bool(words) and all(w in OWN_VALUES for w in words)


def is_own_vocabulary(value: str) -> bool:
    """Whether every word of ``value`` is one ridl writes itself (R11, R12): a dummy, a word of
    a reason code or of a field name of the derived files (case ignored)."""
    words = [w for w in _WORD_SPLIT.split(value.lower()) if w]
    return bool(words) and all(w in OWN_WORDS for w in words)


# {value as read: (normalized, not searched under R11, made of ridl's own words under R12)}:
# the written forms of one date, names and places recur across the studies of a worker.
_VERDICTS: dict[str, tuple[str, bool, bool]] = {}


def _verdict(value: str) -> tuple[str, bool, bool]:
    """(``value`` whitespace normalized, whether R11 drops it, whether R12 holds for it),
    remembered per process (at most :data:`MEMO_CAP` values, then started again)."""
    found = _VERDICTS.get(value)
    if found is None:
        norm = _norm(value)
        low = norm.lower()
        # As _only_dummies and is_own_vocabulary, lower-casing once and stopping at the first
        # word outside the vocabulary (most values: a name, a date).
        dropped = not norm or low in OWN_VALUES or _all_in(_DUMMY_SPLIT.split(low), OWN_VALUES)
        found = (norm, dropped, not dropped and _all_in(_WORD_SPLIT.split(low), OWN_WORDS))
        if len(_VERDICTS) >= MEMO_CAP:
            _VERDICTS.clear()
        _VERDICTS[value] = found
    return found


def _all_in(words: list[str], vocabulary: frozenset[str]) -> bool:
    """Whether the non-empty ``words`` are at least one, and each in ``vocabulary``."""
    some = False
    for word in words:
        if word:
            if word not in vocabulary:
                return False
            some = True
    return some


def _long_enough(value: str, minimum: int = MIN_TERM) -> bool:
    if _DIGITS.match(value):
        return sum(c.isdigit() for c in value) >= MIN_DIGITS
    return len(value) >= minimum


_NAME_WORD_SPLIT = re.compile("[ \\-\u2010-\u2015]")  # a space, a hyphen or a dash


def name_terms(value: str) -> Iterator[tuple[str, bool]]:
    """(term, name_only) for a person name: the whole value and every component (R1, R4).

    ``value`` is a PN value (component groups split by ``=``, components by ``^``, PS3.5
    6.2.1); each component and each of its words of 3 characters or more (not digits only) is
    a term, and so are the name's words run together (``ridl.written_forms.joined_name_forms``:
    ``TREMBLAYJOSEE``, ``SaintPierre``);
    ``name_only`` is True when the term is made of common words only.
    """
    whole = _norm(value)
    if not whole:
        return
    if _long_enough(whole.replace("^", " ").strip(), MIN_TERM):
        yield whole.rstrip("^"), _is_common(whole)
    for group in whole.split("="):
        components = [c for c in (_norm(c) for c in group.split("^")) if c]
        if len(components) > 1 and _CJK_ONLY.fullmatch("".join(components)):
            # An ideographic or phonetic group (PS3.5 6.2.1.2) is written without spaces
            # ("山田太郎") as often as with them.
            yield "".join(components), False
            yield " ".join(components), False
        for component in components:
            # Each word of a component is a term too, a hyphen splitting words as a space does:
            # "Mme Gagnon" names Tremblay-Gagnon (de-identification's tokens split alike).
            for part in {component, *_NAME_WORD_SPLIT.split(component)}:
                part = part.strip(" ,.")
                if _DIGITS.match(part):
                    continue
                if len(part) >= MIN_NAME or (len(part) >= 2 and _CJK_ONLY.fullmatch(part)):
                    yield part, _is_common(part)
        for form, words in joined_name_forms(group):
            # Run together, common words can make a word (WOOD^ROSE: "ROSEWOOD"): PN only (R4).
            yield form, all(_is_common(w) or is_own_vocabulary(w) for w in words)


def identifier_terms(value: str) -> Iterator[str]:
    """An identifier of 4 characters or more (R1, R2), and its other forms when it is a letter
    prefix and digits (``ridl.written_forms.split_identifier_forms``: ``MRN00123`` is also
    searched as ``MRN 00123`` and ``MRN-00123``)."""
    if _long_enough(_norm(value)):
        yield value
        yield from split_identifier_forms(_norm(value))


def address_terms(value: str) -> Iterator[str]:
    """The whole address and its parts with a digit or several words (R8).

    Parts are split at ``^``, ``,``, ``;`` and line breaks; each term has 4 characters or more
    (6 digits for numbers, R1, R2).
    """
    whole = _norm(value)
    if _long_enough(whole):
        yield whole
    for part in re.split(r"[\^,\n\r;]+", value):
        part = _norm(part)
        if _long_enough(part) and (any(c.isdigit() for c in part) or " " in part):
            yield part


def phone_terms(value: str) -> Iterator[str]:
    """Each telephone number of a value (split at ``\\`` and ``^``), as written and, when it
    has 7 digits or more, as its digits alone (R2)."""
    for number in re.split(r"[\\^]", value):
        number = _norm(number)
        if _long_enough(number):
            yield number
        digits = "".join(c for c in number if c.isdigit())
        if len(digits) >= 7:
            yield digits


# Month names as people write them (English and French, as :mod:`deid_recipes.dates` reads):
# (English abbreviation, English name, French name, French abbreviation).
_MONTHS = (
    ("Jan", "January", "janvier", "janv"),
    ("Feb", "February", "février", "févr"),
    ("Mar", "March", "mars", "mars"),
    ("Apr", "April", "avril", "avr"),
    ("May", "May", "mai", "mai"),
    ("Jun", "June", "juin", "juin"),
    ("Jul", "July", "juillet", "juil"),
    ("Aug", "August", "août", "août"),
    ("Sep", "September", "septembre", "sept"),
    ("Oct", "October", "octobre", "oct"),
    ("Nov", "November", "novembre", "nov"),
    ("Dec", "December", "décembre", "déc"),
)


def written_dates(date: str) -> Iterator[str]:
    """A ``YYYYMMDD`` date in the forms people write it, each once (R5): see
    :func:`_written_dates`, cached (a study names the same few dates in every object)."""
    yield from _written_forms(date)


@lru_cache(maxsize=4096)
def _written_forms(date: str) -> tuple[str, ...]:
    return tuple(_written_dates(date))


def _ordinal(day: int) -> str:
    """The English ordinal suffix of a day of the month (1st, 2nd, 3rd, 4th, 11th, 21st)."""
    if day in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _written_dates(date: str) -> Iterator[str]:
    """A ``YYYYMMDD`` date in the forms people write it, each once (R5).

    ``YYYYMMDD``; ``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYY.MM.DD``, the same without leading
    zeros, ``YY-MM-DD``, ``DD MM YYYY``; ``DD/MM/YYYY``, ``MM/DD/YYYY``, ``DD.MM.YYYY``,
    ``DD-MM-YYYY``, the same without leading zeros and with a 2-digit year (zero-padded, and
    ``D/M/YY`` and ``M/D/YY`` with slashes only); ``D Mon YYYY``, ``D Mon, YYYY``,
    ``D-Mon-YYYY``, ``DDMonYYYY``, ``DDMONYY``, ``D/Mon/YYYY``, ``D.Mon.YYYY``,
    ``YYYY-Mon-D``, ``Mon-D-YYYY``, ``D Mon YY``, ``D-Mon-YY``, ``D Mon 'YY``,
    ``D Month YYYY``, ``Mon D YYYY``, ``Mon D, YYYY``, ``Mon D,YYYY``, ``Mon D, 'YY``,
    ``Mon. D, YYYY``, ``Month D, YYYY``, ordinal days
    (``12th February 1947``, ``February 12th, 1947``, ``1er août 2019``) with English
    abbreviations and names and French names and abbreviations (``12 févr. 1947``); case is
    ignored when matching and accents may be left out or written apart (R7). A date followed
    by ``T`` and a time (ISO 8601) matches too (R3). Nothing for a value that is not 8 digits.
    The forms :func:`deid_recipes.dates.remove_written_dates` takes out of free text are among
    them.
    """
    if len(date) != 8 or not date.isdigit():
        return
    yield from _forms_of(date[:4], date[2:4], date[4:6], date[6:])


def _forms_of(y: str, yy: str, m: str, d: str) -> Iterator[str]:
    """:func:`_written_dates` of the date whose year is written ``y`` (4 digits) or ``yy``
    (2), month ``m`` and day ``d`` (2 digits each); each form once. The year may be a
    placeholder (:func:`_date_templates`): no form depends on its digits."""
    date = f"{y}{m}{d}"
    mi, di = str(int(m)), str(int(d))
    forms = [date, f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{y}.{m}.{d}", f"{d} {m} {y}"]
    forms += [f"{y}-{mi}-{di}", f"{y}/{mi}/{di}", f"{y}.{mi}.{di}", f"{yy}-{m}-{d}"]
    for sep in "/.-":
        forms += [f"{d}{sep}{m}{sep}{y}", f"{m}{sep}{d}{sep}{y}"]
        forms += [f"{di}{sep}{mi}{sep}{y}", f"{mi}{sep}{di}{sep}{y}"]
        forms += [f"{d}{sep}{m}{sep}{yy}", f"{m}{sep}{d}{sep}{yy}"]
    forms += [f"{di}/{mi}/{yy}", f"{mi}/{di}/{yy}"]  # US and UK short forms: slashes only
    if 1 <= int(m) <= 12:
        abbreviation, english, french, short = _MONTHS[int(m) - 1]
        nth = di + _ordinal(int(d))
        days = (di, d) if di != d else (di,)
        for name in (abbreviation, english, french, f"{abbreviation}.", short, f"{short}."):
            for day in days:
                forms += [f"{day} {name} {y}", f"{day} {name}, {y}"]
                forms += [] if name.endswith(".") else [f"{day}-{name}-{y}"]
        for day in days:
            forms += [f"{day}{abbreviation}{y}", f"{day}{abbreviation}{yy}"]
            forms += [f"{day}/{abbreviation}/{y}", f"{day}.{abbreviation}.{y}"]
            forms += [f"{y}-{abbreviation}-{day}", f"{abbreviation}-{day}-{y}"]
        for name in (abbreviation, english, short):  # a 2-digit year needs the month's name
            for day in days:
                forms += [f"{day} {name} {yy}", f"{day}-{name}-{yy}", f"{day} {name} '{yy}"]
        for name in (abbreviation, english, f"{abbreviation}."):
            forms += [f"{name} {di} {y}", f"{name} {di}, {y}", f"{name} {d}, {y}"]
            forms += [f"{name} {d} {y}", f"{name} {nth}, {y}", f"{name} {nth} {y}"]
            forms += [f"{name} {di},{y}", f"{name} {di}, '{yy}", f"{name} {di} '{yy}"]
        for name in (abbreviation, english):
            forms += [f"{nth} {name} {y}", f"{nth} {name}, {y}", f"{nth} of {name} {y}"]
            forms += [f"{nth} of {name}, {y}"]
        if di == "1":
            forms += [f"1er {french} {y}", f"1er {short} {y}", f"1er {short}. {y}"]
    seen: set[str] = set()
    for form in forms:
        if form not in seen:
            seen.add(form)
            yield form


def birth_terms(value: str) -> Iterator[str]:
    """A DA date of birth: the ``YYYYMMDD`` date it names (its written forms,
    :func:`written_dates`, are searched with it: :meth:`IdentifierDictionary.automaton`);
    nothing for a value that is not 8 digits or a placeholder (:data:`PLACEHOLDER_DATES`)."""
    date = _norm(value)
    if len(date) == 8 and date.isdigit() and date not in PLACEHOLDER_DATES:
        yield date


_DATE_IN_VALUE = re.compile(r"(?:^|(?<=[-\\\s]))(\d{4})\.?(\d{2})\.?(\d{2})")


def dates_in(value: str) -> list[str]:
    """The calendar dates (``YYYYMMDD``) a DA or DT value names (PS3.5 6.2).

    Each of several values (``\\``), both ends of a range (``A-B``, ``-B``, ``A-``), the
    date of a DT with its time, fraction and UTC offset, the ACR-NEMA form ``YYYY.MM.DD``;
    partial dates (``YYYY``, ``YYYYMM``) name no day and give nothing, nor do days that do
    not exist. Duplicates are given once, in order.
    """
    found: list[str] = []
    for match in _DATE_IN_VALUE.finditer(value):
        try:
            dt.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            continue
        date = match[1] + match[2] + match[3]
        if date not in found:
            found.append(date)
    return found


def _moved(date: str, days: int) -> str:
    """A ``YYYYMMDD`` date moved by ``days`` (as a JITTER moves it); ``""`` out of range."""
    try:
        day = dt.date(int(date[:4]), int(date[4:6]), int(date[6:])) + dt.timedelta(days)
    except (ValueError, OverflowError):
        return ""
    return day.strftime("%Y%m%d")


def date_terms(value: str) -> Iterator[str]:
    """Every date (``YYYYMMDD``) a DA or DT value names (:func:`dates_in`), each searched in
    every form of :func:`written_dates` (:meth:`IdentifierDictionary.automaton`); placeholders
    (:data:`PLACEHOLDER_DATES`) give nothing."""
    for date in dates_in(value):
        if date not in PLACEHOLDER_DATES:
            yield date


def _raw_texts(raw: DataElement | RawDataElement, vr: str) -> list[str]:
    """A public text value, cheaply: ASCII raw bytes are split without pydicom's conversion."""
    if vr not in TEXT_VRS:
        return []
    value = raw.value
    if isinstance(value, bytes):
        if not value.isascii():
            return []
        return [t for t in (_norm(v) for v in value.decode("ascii").split("\\")) if t]
    return [_norm(v) for v in text_values(value) if _norm(v)]


# Character sets whose text values, when ASCII without escape sequences, decode as ASCII
# (PS3.3 C.12.1.1.2: the default repertoire, ISO_IR 100 and ISO_IR 192).
_ASCII_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
# How pydicom turns the bytes of a text VR into values (pydicom.values): split at "\\" then
# each value stripped of trailing NUL and space (SH, LO, UC); the whole value stripped, then
# split (PN, CS, DA, DT; a person name's text drops trailing "="); the whole value stripped,
# not split (ST, LT, UT).
_SPLIT_EACH = frozenset({"SH", "LO", "UC"})
_SPLIT_WHOLE = frozenset({"PN", "CS", "DA", "DT"})
_UNSPLIT = frozenset({"ST", "LT", "UT"})


def _plain_text_values(
    raw: DataElement | RawDataElement, vr: str, charset_key: str
) -> list[str] | None:
    """:func:`text_values` of the value pydicom would convert ``raw`` to, without converting
    it (the dictionary's main cost was pydicom's conversion of values it only reads as text);
    None when the value is not raw ASCII text of a plain text VR in an ASCII character set
    (then the caller converts it with pydicom)."""
    if type(raw) is not RawDataElement or charset_key not in _ASCII_CHARSETS:
        return None
    value = raw.value
    if not isinstance(value, bytes) or not value.isascii() or b"\x1b" in value:
        return None
    if vr in _SPLIT_EACH:
        texts = [v.rstrip("\x00 ") for v in value.decode("ascii").split("\\")]
    elif vr == "PN":  # a PersonName's text drops its empty trailing component groups
        texts = [v.rstrip("=") for v in value.decode("ascii").rstrip("\x00 ").split("\\")]
    elif vr in _SPLIT_WHOLE:
        texts = value.decode("ascii").rstrip("\x00 ").split("\\")
    elif vr in _UNSPLIT:
        texts = [value.decode("ascii").rstrip("\x00 ")]
    else:
        return None
    return [t for t in texts if t]


def text_values(value: Any) -> list[str]:
    """The text values of an element value (multi-valued, PN, bytes), as strings.

    A list of non-empty strings; bytes are decoded as Latin-1 (trailing NUL and space padding
    removed) and kept only when printable; None gives [].
    """
    if value is None:
        return []
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00 ").decode("latin-1")
        return [text] if text and text.isprintable() else []
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value if v is not None and str(v)]
    return [str(value)] if str(value) else []


def vr_of(elem: DataElement | RawDataElement, tag: BaseTag) -> str:
    """The VR of an element: its own, else the dictionary's; private or unknown tags are UN.

    A two-letter VR code (PS3.5 6.2), as a string.
    """
    vr = getattr(elem, "VR", None)
    if vr:
        return str(vr)
    if tag.is_private:
        return "UN"
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


# The VRs whose value is text (PS3.5 6.2), read as such whatever VR a header wrote for them.
_TEXT_OR_NAME = frozenset(TEXT_VRS | {"PN", "UR", "UI"})
_READ_AS: dict[tuple[int, str | None], str] = {}


def read_as(tag: BaseTag, vr: str | None) -> str:
    """The VR an element of public ``tag`` written with ``vr`` is read with (R16): the data
    dictionary's (PS3.6) when that is one VR whose value is text or a person name and the
    header wrote another (a Patient Name written LO, UN or US is a name; a Patient ID written
    US is an ID), or a sequence when the dictionary's VR is SQ and the header wrote UN (as a
    node that did not know the tag leaves it, PS3.5 6.2.2), else ``vr`` (``UN`` when none and
    the dictionary has none). A sequence (SQ) is read as one whatever its tag. Private tags
    keep their written VR."""
    key = (int(tag), vr)
    found = _READ_AS.get(key)
    if found is None:
        written = vr or "UN"
        known = "UN" if tag.is_private else _tag_info(tag)[1]
        found = known if known in _TEXT_OR_NAME and written not in (known, "SQ") else written
        if known == "SQ" and written == "UN":
            found = "SQ"
        if len(_READ_AS) < 100_000:
            _READ_AS[key] = found
    return found


class IdentifierDictionary:
    """The identifying values of the selected studies, compiled into one automaton per encoding set.

    Terms are kept with their rules only; the report refers to a term by its kind.
    ``retained`` are keywords of attributes the approved scope retains (not searched, R9).
    ``terms`` is {normalized value: :class:`Term`}; ``len()`` is the number of terms.
    """

    def __init__(self, retained: Iterable[str] = (), memo: ElementMemo | None = None) -> None:
        self.retained = set(retained)
        self.terms: dict[str, Term] = {}
        self.encodings: set[str] = set(OWN_ENCODINGS)
        self._own_encodings = frozenset(self.encodings)
        self.equipment: set[str] = set()  # vendor and model names: never identifiers (R6)
        self._seen: set[tuple[int, str | None, bytes, str | None, str]] = set()
        self._charset_key = ""
        self._automata: dict[frozenset[str], Automaton] = {}
        self._shift: int | None = None
        self._shifted: dict[str, set[str]] = {}  # research ID -> its dates, moved by its shift
        # What each distinct top-level element contributed; shared between the dictionaries of
        # one worker (same retained attributes) so a value met in an earlier study is not
        # parsed again.
        self._memo = memo if memo is not None else ElementMemo()
        self._recording: list[tuple[str, ...]] | None = None
        # Costly top-level elements this dictionary read for one subject and shift:
        # {ElementKey: what they contributed} (add_header skips them after).
        self._done: dict[ElementKey, Any] = {}
        self._done_for: tuple[str | None, int | None] | None = None
        self._done_bytes = 0
        # {lower-cased private or place value: (tag, VR, bytes, "" or the Specific Character
        # Set) of a plain public element, or of a costly one, whose text equalled it (R6)}: a
        # header holding that element rejects it again at once.
        self._rejected: dict[str, ElementKey] = {}
        # Private and place candidates (kind, value) that :meth:`_holds` found held: terms are
        # never removed nor made more lenient, so they stay held (add_header skips them).
        self._settled: set[tuple[str, str]] = set()
        self._subject: str | None = None
        # (kind, value) of staff names ("staff") and institution, department and station names
        # ("place") met in the headers read: the caller searches them in other studies.
        self.shared: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self.terms)

    def kinds(self) -> dict[str, int]:
        """{kind: number of terms of that kind}, sorted by kind (a term may count under two)."""
        counts: dict[str, int] = {}
        for term in self.terms.values():
            for kind in term.kinds:
                counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items()))

    def add(self, value: str, kind: str, name_only: bool = False, owner: str | None = None) -> None:
        """Add one term (whitespace normalized; empty values are ignored) of ``kind``.

        ``owner`` is the research ID of a birth date (R5). The compiled automata are dropped.
        """
        # R11 drops a dummy, or a value made of them ("Anonymous^Anonymous"); R12: ridl's own
        # words are never an identifier, and a name made of them blocks in PN only.
        value, dropped, own = _verdict(value)
        if dropped:
            return
        if own:
            if kind not in NAME_KINDS:
                return
            name_only = True
        if self._recording is not None:
            who = _SUBJECT if owner is not None and owner == self._subject else (owner or "")
            self._recording.append(("add", value, kind, "1" if name_only else "", who))
        self._put(value, kind, name_only, owner)

    def add_equipment(self, names: Iterable[str]) -> None:
        """Note manufacturer, model and software-version names (lower-cased, whitespace
        normalized, as :attr:`equipment` holds them) met in other headers: a term equal to one,
        or an institution, station or private term inside one, is not searched (R6, across
        studies). The compiled automata are dropped when a new name removes one of their
        terms: each new name is run through them to find the terms it holds (a big dictionary
        is not recompiled for a new vendor whose names are none of its terms).
        """
        fresh = set(names) - self.equipment
        if fresh:
            self.equipment |= fresh
            if any(_drops_terms(auto, name) for auto in self._automata.values() for name in fresh):
                self._automata.clear()

    def _put(self, value: str, kind: str, name_only: bool, owner: str | None) -> None:
        """:meth:`add` of a value already normalized and not one of ridl's own (R11)."""
        term = self.terms.get(value)
        if term is None:
            term = self.terms[value] = Term()
        term.merge(kind, name_only, owner)
        if kind in SCOPED_KINDS and len(value) == 8 and value.isdigit():
            term.date = True
        self._automata.clear()

    def add_header(
        self, ds: Dataset, research_id: str | None = None, shift_days: int | None = None
    ) -> None:
        """Collect the identifying values of one source header, at every depth.

        ``ds`` is a source (not de-identified) header, sequences followed up to 64 levels;
        ``research_id`` is its subject's, to scope its birth and encounter dates (R5);
        ``shift_days`` is that subject's date shift, when known: an original date of the
        subject that equals another of its dates moved by the shift is a coincidence in its
        own date attributes too. The rules R1-R9 of the module docstring decide what is added.

        The objects of a study repeat most of their header byte for byte, and every addition is
        idempotent: a costly top-level element (:func:`_costly`) whose bytes this dictionary
        already read for the same subject and shift adds nothing new, so it is not read again
        (what it offered for R6 is kept); the texts of plain public elements, which only R6
        needs, are read only when a private or institution value is new to the dictionary. The
        result is the dictionary :meth:`add_header_walk` builds (tests/test_identifier_cache.py).
        """
        self._shift = shift_days if research_id is not None else None
        charset_key, charsets = _charsets_of(ds)
        self.encodings.update(charsets)
        self._charset_key = charset_key
        subject = (research_id, self._shift)
        if subject != self._done_for or self._done_bytes > DONE_CAP_BYTES:
            self._done, self._done_for, self._done_bytes = {}, subject, 0
        done = self._done
        public_values: set[str] = set()  # from elements read element by element
        pubs: list[tuple[ElementKey, frozenset[str]]] = []  # costly elements
        private: list[tuple[str, str]] = []
        converted: list[DataElement] = []  # plain public elements already converted
        slow = partial(
            self._look_element, ds, research_id, charset_key, pubs, private, converted,
            public_values,
        )  # fmt: skip
        # What the tables settle (plain values, costly ones already read) is settled by the
        # look (compiled where it was built), anything else comes back to _look_element, in order.
        (_LOOK or python_look)(
            ds._dict, RawDataElement, DataElement, _PLAIN, _CONVERTED_PLAIN, done,
            charset_key, MEMO_MAX_VALUE, pubs, private, converted, slow,
        )  # fmt: skip
        public: dict[str, ElementKey | None] | None = None
        settled = self._settled
        for pair in private:
            if pair in settled:
                continue  # held already: a dictionary only grows, so it stays held
            kind, value = pair
            if _UIDLIKE.match(value) or not _long_enough(value):
                continue  # R6, R1, R2
            if self._holds(kind, value):
                settled.add(pair)
                continue  # adding it again would change nothing, whatever R6 says
            low = value.lower()
            witness = self._rejected.get(low)
            if witness is not None and _holds_bytes(ds, witness, charset_key):
                continue  # R6: the public element that equalled it is in this header too
            if public is None:
                public = _plain_texts(ds)
                for key, texts in pubs:
                    for text in texts:
                        public.setdefault(text, key)
                for elem in converted:
                    public_values.update(v.lower() for v in _raw_texts(elem, elem.VR))
                for text in public_values:
                    public.setdefault(text, None)
            if low in public:
                equal = public.get(low)
                if equal is not None:
                    if len(self._rejected) >= MEMO_CAP:
                        self._rejected.clear()
                    self._rejected[low] = equal
                continue  # R6
            self.add(value, kind, name_only=_is_common(value))
            if kind == "institution-or-station":
                self.shared.add(("place", value))

    def _look_element(
        self,
        ds: Dataset,
        research_id: str | None,
        charset_key: str,
        pubs: list[tuple[ElementKey, frozenset[str]]],
        private: list[tuple[str, str]],
        converted: list[DataElement],
        public_values: set[str],
        tag: BaseTag,
        raw: DataElement | RawDataElement | None,
    ) -> None:
        """:meth:`add_header`'s look at one top-level element ``raw`` of ``ds`` (``tag``):
        a plain public value is left for R6 (its texts read only if a private or place
        candidate needs them), a costly one (:func:`_costly`) is read through this
        dictionary's skip list and the worker's :class:`ElementMemo`, a converted plain one
        goes to ``converted``, anything else is read element by element. ``pubs``,
        ``private``, ``converted`` and ``public_values`` are the header's, appended to.
        The look (:func:`python_look`, or ``export._header_look`` in C) settles what its
        tables know and calls this for the rest."""
        if type(raw) is RawDataElement:
            data = raw.value
            if type(data) is bytes:
                # A plain int (``tag + 0``): a BaseTag compares in Python, an int in C.
                itag = tag + 0
                if _plain_kind(itag, raw) != _COSTLY:
                    # _PUBLIC: its texts are read later, only if R6 needs them;
                    # _OTHER: a public value without text, nothing to collect.
                    return
                if len(data) <= MEMO_MAX_VALUE:
                    key = (itag, raw.VR, data, charset_key)
                    done = self._done
                    seen = done.get(key)
                    if seen is None:
                        seen = self._read_costly(ds, Tag(tag), raw, research_id, charset_key)
                        done[key] = seen
                        self._done_bytes += len(data) + 100
                    if seen[0]:
                        pubs.append((key, seen[0]))
                    if seen[1]:
                        private.extend(seen[1])
                    return
        elif type(raw) is DataElement:
            # Converted already (pydicom's reader converts the Specific Character Set):
            # a plain public one is read later, only if R6 needs its texts, as raw ones.
            converted_key = (int(tag), raw.VR)
            plain_text = _CONVERTED_PLAIN.get(converted_key)
            if plain_text is None:
                plain_text = _CONVERTED_PLAIN[converted_key] = _plain_converted(Tag(tag), raw)
            if plain_text:
                converted.append(raw)
                return
        elif raw is None:
            return
        # Elements already converted, large ones, and public ones with no text.
        self._collect_one(ds, Tag(tag), raw, research_id, public_values, private, charset_key)

    def add_header_walk(
        self, ds: Dataset, research_id: str | None = None, shift_days: int | None = None
    ) -> None:
        """:meth:`add_header`, reading every element of the header again (no per-dictionary
        skipping): the reference its result is tested against. Same arguments."""
        self._shift = shift_days if research_id is not None else None
        for charset in declared_charsets(ds):
            self.encodings.add(charset)
        public_values: set[str] = set()
        private: list[tuple[str, str]] = []
        self._collect(ds, research_id, public_values, private, depth=0, institution=False)
        for kind, value in private:
            if value.lower() in public_values or _UIDLIKE.match(value):
                continue  # R6
            if _long_enough(value):
                self.add(value, kind, name_only=_is_common(value))
                if kind == "institution-or-station":
                    self.shared.add(("place", value))

    def _holds(self, kind: str, value: str) -> bool:
        """Whether adding the private or institution candidate ``(kind, value)`` (normalized)
        would change nothing: the term is there with that kind, blocking for anyone, as
        name-only as it would be, and shared when it is a place."""
        term = self.terms.get(value)
        if term is None or kind not in term.kinds or not term.anyone:
            return False
        if term.name_only and not _is_common(value):
            return False
        return kind != "institution-or-station" or ("place", value) in self.shared

    def add_shared(self, kind: str, value: str) -> None:
        """Add a term learned in another study: ``kind`` ``staff`` (a PN value: its whole and
        its components, R1, R4, as kind ``staff``) or ``place`` (an institution, department or
        station name, kind ``institution-or-station``; common words block only in PN, R4).
        Other kinds are ignored.
        """
        if kind == "staff":
            for term, name_only in name_terms(value):
                self.add(term, "staff", name_only=name_only)
        elif kind == "place" and _long_enough(_norm(value)) and not _UIDLIKE.match(value):
            self.add(value, "institution-or-station", name_only=_is_common(value))

    def to_record(self) -> dict[str, Any]:
        """The dictionary as JSON-ready data, to rebuild it later without the source headers.

        ``{"terms": [[value, kinds, name_only, owners, anyone, coincident], ...], "encodings":
        [...], "equipment": [...], "shifted": {research ID: [dates moved by its shift]}}``,
        sorted; ``coincident`` are the research IDs for whom the date is also one of their
        dates moved by their shift (R5), ``shifted`` lets a merge of several studies' records
        find the same across them. It holds PHI (every searched
        value): it is kept on premises only (``ridl.releases``), never exported.
        """
        self._mark_coincident()
        terms = self.terms
        rows = []
        for v in sorted(terms):
            t = terms[v]
            kinds, owners, coincident = t.kinds, t.owners, t.coincident
            rows.append(
                [
                    v,
                    list(kinds) if len(kinds) < 2 else sorted(kinds),
                    t.name_only,
                    list(owners) if len(owners) < 2 else sorted(owners),
                    t.anyone,
                    list(coincident) if len(coincident) < 2 else sorted(coincident),
                ]
            )
        return {
            "terms": rows,
            "encodings": sorted(self.encodings),
            "equipment": sorted(self.equipment),
            "shifted": {owner: sorted(dates) for owner, dates in sorted(self._shifted.items())},
        }

    def merge_record(self, record: dict[str, Any]) -> None:
        """Add the terms of a :meth:`to_record` record (of one study) to this dictionary.

        Raises:
            KeyError: the record has no ``terms``.
        """
        for value, kinds, name_only, owners, anyone, *rest in record["terms"]:
            if value.lower() in OWN_VALUES or _only_dummies(value):  # R11, older records too
                continue
            if is_own_vocabulary(value):  # R12
                if not set(kinds) & NAME_KINDS:
                    continue
                name_only = True
            term = self.terms.setdefault(value, Term())
            term.kinds.update(kinds)
            term.name_only = term.name_only and bool(name_only)
            term.owners.update(owners)
            term.anyone = term.anyone or bool(anyone)
            if rest:  # records written before date shifts were kept have no coincident owners
                term.coincident.update(rest[0])
            if term.kinds & SCOPED_KINDS and len(value) == 8 and value.isdigit():
                term.date = True
        self.encodings.update(record.get("encodings", ()))
        self.equipment.update(record.get("equipment", ()))
        # R5 across merged studies: a subject's date in one study that equals another of its
        # dates, from another study, moved by its shift is a coincidence too.
        for owner, dates in record.get("shifted", {}).items():
            self._shifted.setdefault(owner, set()).update(dates)
        self._automata.clear()

    def _mark_coincident(self) -> None:
        """Note, on each date term, the subjects for whom it is also one of their own dates
        moved by their shift (R5: a coincidence in their date attributes)."""
        for owner, moved in self._shifted.items():
            for date in moved:
                found = self.terms.get(date)
                if found is not None:
                    found.coincident.add(owner)

    def _collect(
        self,
        ds: Dataset,
        research_id: str | None,
        public_values: set[str],
        private: list[tuple[str, str]],
        depth: int,
        institution: bool,
    ) -> None:
        if depth > 64:
            return
        if depth == 0:
            self._charset_key = str(ds.get("SpecificCharacterSet", ""))
        charset_key = self._charset_key
        # A content item whose concept names a person, organisation or device (ridl.identity).
        named = content_item_names(ds) if depth > 0 else None
        for tag, raw in list(ds.items()):
            tag = Tag(tag)
            # Values stay raw (unconverted) unless they may hold an identifier: converting every
            # element is what would make the dictionary cost as much as de-identifying.
            if raw is None:
                continue
            if depth == 0 and isinstance(raw, RawDataElement) and not tag.is_private:
                keyword, vr = _tag_info(tag)
                vr = read_as(tag, raw.VR or vr)  # R16
                if (
                    vr not in ("SQ", "PN")
                    and raw.length != 0xFFFFFFFF
                    and keyword not in INTERESTING_KEYWORDS
                    and keyword not in EQUIPMENT_KEYWORDS
                ):
                    # A plain public value: only its text is kept, for R6.
                    if vr in TEXT_VRS and tag not in BULK_TAGS:
                        public_values.update(v.lower() for v in _raw_texts(raw, vr))
                    continue
            # The objects of a study repeat most of their elements byte for byte (a series'
            # sequences above all): what one top-level element contributed is remembered and
            # replayed, so each distinct element is parsed once per dictionary.
            if (
                depth == 0
                and isinstance(raw, RawDataElement)
                and isinstance(raw.value, bytes)
                and len(raw.value) <= MEMO_MAX_VALUE
                and _costly(raw, tag)
            ):
                seen = self._read_costly(ds, tag, raw, research_id, charset_key)
                public_values.update(seen[0])
                private.extend(seen[1])
                continue
            self._element(
                ds, tag, raw, research_id, public_values, private, depth, charset_key,
                named=named, institution=institution,
            )  # fmt: skip

    def _collect_one(
        self,
        ds: Dataset,
        tag: BaseTag,
        raw: DataElement | RawDataElement,
        research_id: str | None,
        public_values: set[str],
        private: list[tuple[str, str]],
        charset_key: str,
    ) -> None:
        """One top-level element, read as :meth:`_collect` reads it (no memo: converted,
        large or text-less elements)."""  # fmt: skip
        if isinstance(raw, RawDataElement) and not tag.is_private:
            keyword, vr = _tag_info(tag)
            vr = read_as(tag, raw.VR or vr)  # R16
            if (
                vr not in ("SQ", "PN")
                and raw.length != 0xFFFFFFFF
                and keyword not in INTERESTING_KEYWORDS
                and keyword not in EQUIPMENT_KEYWORDS
            ):
                if vr in TEXT_VRS and tag not in BULK_TAGS:
                    public_values.update(v.lower() for v in _raw_texts(raw, vr))
                return
        self._element(ds, tag, raw, research_id, public_values, private, 0, charset_key)

    def _read_costly(
        self,
        ds: Dataset,
        tag: BaseTag,
        raw: RawDataElement,
        research_id: str | None,
        charset_key: str,
    ) -> tuple[frozenset[str], tuple[tuple[str, str], ...], tuple[tuple[str, ...], ...]]:
        """Read one costly top-level element (:func:`_costly`) through the worker's
        :class:`ElementMemo`: parsed the first time its bytes are met, replayed after.

        Returns what it contributed: (public values, private candidates, recorded additions).
        """  # fmt: skip
        memo_key = (int(tag), raw.VR, cast(bytes, raw.value), charset_key)
        seen = self._memo.get(memo_key)
        if seen is None:
            pub: set[str] = set()
            priv: list[tuple[str, str]] = []
            self._recording, self._subject = [], research_id
            try:
                self._element(ds, tag, raw, research_id, pub, priv, 0, charset_key)
                ops = tuple(self._recording)
            finally:
                self._recording = self._subject = None
            seen = (frozenset(pub), tuple(priv), ops)
            self._memo.put(memo_key, seen)
        else:
            self._replay(seen[2], research_id)
        return cast(
            tuple[frozenset[str], tuple[tuple[str, str], ...], tuple[tuple[str, ...], ...]], seen
        )

    def _share(self, kind: str, value: str) -> None:
        """Note a staff or place name (``shared``) or an equipment name (R6), recorded too."""
        if self._recording is not None:
            self._recording.append(("share", kind, value))
        if kind == "equipment":
            self.equipment.add(value)
        else:
            self.shared.add((kind, value))

    def _dates(self, value: str, research_id: str | None) -> None:
        """Note the dates of an encounter-date value moved by the subject's shift (R5), recorded
        too: the shift is the reading header's, so a replay moves them by its own."""
        if self._recording is not None:
            self._recording.append(("dates", value))
        if research_id is not None and self._shift is not None:
            moved = self._shifted.setdefault(research_id, set())
            moved.update(_moved(d, self._shift) for d in dates_in(value))

    def _replay(self, ops: tuple[tuple[str, ...], ...], research_id: str | None) -> None:
        """Apply what an element contributed when it was first read (see :class:`ElementMemo`)."""
        for op in ops:
            if op[0] == "add":
                _, value, kind, name_only, who = op
                owner = research_id if who == _SUBJECT else (who or None)
                self._put(value, kind, bool(name_only), owner)  # recorded after add's checks
            elif op[0] == "dates":
                self._dates(op[1], research_id)
            else:
                self._share(op[1], op[2])

    def _element(
        self,
        ds: Dataset,
        tag: BaseTag,
        raw: DataElement | RawDataElement,
        research_id: str | None,
        public_values: set[str],
        private: list[tuple[str, str]],
        depth: int,
        charset_key: str,
        *,
        named: Named | None = None,
        institution: bool = False,
    ) -> None:
        """Collect one element of ``ds`` (at ``depth``): the rules R1-R9 of the module doc.

        ``named`` says what the Text Value of a content item ``ds`` names (ridl.identity);
        ``institution``: ``ds`` is an item of Institution Code Sequence (its Code Meaning names
        an organisation).
        """
        written = vr_of(raw, tag)
        vr = written if tag.is_private else read_as(tag, written)  # R16
        keyword = "" if tag.is_private else (keyword_for_tag(tag) or "")
        undefined = isinstance(raw, RawDataElement) and raw.length == 0xFFFFFFFF
        if vr == "SQ" or (undefined and tag not in BULK_TAGS):
            try:
                value = ds[tag].value
            except Exception:
                return
            if isinstance(value, PydicomSequence | list):
                for item in value:
                    if isinstance(item, Dataset):
                        self._collect(
                            item, research_id, public_values, private, depth + 1,
                            institution=tag == INSTITUTION_CODE_SEQUENCE,
                        )  # fmt: skip
            return
        if tag in BULK_TAGS:
            return
        held = Named.ORGANIZATION if institution and tag == CODE_MEANING else None
        if named is not None and tag == TEXT_VALUE:
            held = named
        if held is not None:
            if keyword not in self.retained:  # R9
                self._named(ds, tag, held, private)
            return
        wanted = (
            tag.is_private
            or vr == "PN"
            or keyword in INTERESTING_KEYWORDS
            or keyword in EQUIPMENT_KEYWORDS
        )
        if not wanted:
            public_values.update(v.lower() for v in _raw_texts(raw, vr))
            return
        if tag.is_private and 0x0010 <= tag.element <= 0x00FF:
            return  # private creator (R6)
        if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
            # The objects of a series repeat most values: convert each distinct one once.
            owner = research_id if keyword in BIRTH_KEYWORDS | DATE_KEYWORDS else None
            signature = (int(tag), raw.VR, raw.value, owner, charset_key)
            if signature in self._seen and not tag.is_private and self._recording is None:
                return
            self._seen.add(signature)
        values = None if tag.is_private else _plain_text_values(raw, vr, charset_key)
        if values is None:
            try:
                if vr != written and type(raw) is RawDataElement:
                    # R16: converted as the VR it is read with, not the one it was written with
                    elem = convert_raw_data_element(
                        raw._replace(VR=vr), encoding=ds._character_set, ds=ds
                    )
                else:
                    elem = ds[tag]
            except Exception:  # an unparseable value holds nothing we can search for
                return
            if tag.is_private:
                private.extend(("private-tag", _norm(v)) for v in text_values(elem.value))
                return
            values = text_values(elem.value)
            vr = "PN" if read_as(tag, elem.VR) == "PN" else vr
        if keyword in self.retained:
            return  # R9
        if vr == "PN":
            for v in values:
                for term, name_only in name_terms(v):
                    self.add(term, "name", name_only=name_only)
                if keyword in STAFF_KEYWORDS and _norm(v):
                    self._share("staff", _norm(v))
        elif keyword in ID_KEYWORDS:
            for v in values:
                for term in identifier_terms(v):
                    self.add(term, "identifier")
        elif keyword in BIRTH_KEYWORDS:
            for v in values:
                for term in birth_terms(v):
                    self.add(term, "birth-date", owner=research_id)
        elif keyword in DATE_KEYWORDS:
            public_values.update(_norm(v).lower() for v in values)  # R6 as before
            for v in values:
                for term in date_terms(v):
                    self.add(term, "encounter-date", owner=research_id)
                self._dates(v, research_id)
        elif keyword in ADDRESS_KEYWORDS:
            for v in values:
                for term in address_terms(v):
                    self.add(term, "address")
        elif keyword in PHONE_KEYWORDS:
            for v in values:
                for term in phone_terms(v):
                    self.add(term, "telephone")
        elif keyword in PLACE_KEYWORDS:  # checked against public values like private ones
            private.extend(("institution-or-station", _norm(v)) for v in values)
        else:
            public_values.update(_norm(v).lower() for v in values)
            if keyword in EQUIPMENT_KEYWORDS:
                for v in values:
                    self._share("equipment", _norm(v).lower())

    def _named(
        self, ds: Dataset, tag: BaseTag, named: Named, private: list[tuple[str, str]]
    ) -> None:
        """Terms of a value that names a person (``name``, R1, R4), an identifier, or an
        organisation or device (``institution-or-station``, checked like private values, R6)."""
        try:
            values = text_values(ds[tag].value)
        except Exception:  # an unparseable value holds nothing we can search for
            return
        for v in values:
            if named is Named.PERSON:
                for term, name_only in name_terms(v):
                    self.add(term, "name", name_only=name_only)
            elif named is Named.IDENTIFIER:
                for term in identifier_terms(v):
                    self.add(term, "identifier")
            else:
                private.append(("institution-or-station", _norm(v)))

    def automaton(self, encodings: Iterable[str] = ()) -> Automaton:
        """The automaton over every term in every encoding, keyed by ASCII-lowered bytes.

        ``encodings`` are Python codec names added to the dictionary's own (Latin-1, UTF-8 and
        those declared by the headers). Each key is the term's encoded bytes, ASCII-lowered
        and read as Latin-1 text; each value is (key length in bytes, list of :class:`Term`).
        Cached per set of encodings until a term is added.
        """
        extra = set(encodings)
        if extra <= self.encodings:  # most calls: the dictionary's own encodings
            own = self._own_encodings
            if len(own) != len(self.encodings):  # encodings are only ever added
                own = self._own_encodings = frozenset(self.encodings)
            encs = own
        else:
            encs = frozenset(self.encodings | extra)
        cached = self._automata.get(encs)
        if cached is not None:
            return cached
        self._mark_coincident()
        # {key: its terms}: a tuple shared by every key of one term until another term joins it
        # (no container made a key: a study's ~260 lists fed the garbage collector, whose
        # passes over a worker's heap cost more than the lists themselves).
        entries: dict[str, tuple[Term, ...]] = {}
        unspaced: dict[str, tuple[bool, bool]] = {}  # keys whose term starts or ends in CJK (R3)
        cores: set[str] = set()  # ISO 2022 keys' bytes without their escape (R3, _run_of)
        # Whole ideographic or phonetic names written without spaces (name_terms keeps both).
        groups = {v.replace(" ", "") for v in self.terms if " " in v and not v.isascii()}
        # Encodings that write every ASCII text as ASCII: an ASCII term has one key in all.
        ascii_same = [enc for enc in encs if _ascii_transparent(enc)]
        others = [enc for enc in encs if enc not in ascii_same]
        ascii_key, others_key = tuple(sorted(ascii_same)), tuple(sorted(others))
        equipment = self.equipment
        for value, term in self.terms.items():
            low = value.lower()
            if low in equipment or (
                equipment and term.kinds <= _PLACE_OR_PRIVATE and any(low in e for e in equipment)
            ):
                continue  # R6
            keys: Sequence[str]
            if term.date:  # R5: one term for every written form of the date
                keys = _date_keys(value, ascii_key, others_key)
            else:
                keys = _keys(value, ascii_same, others)
            ends = _unspaced_ends(value, value in groups)
            alone = (term,)
            if not value.isascii():
                cores.update(core for core in map(_iso2022_core, keys) if core)
            elif len(keys) > 8 and ends == (False, False) and not entries.keys() & keys:
                # A date's ~100 keys, none met yet (most): all of them this term alone.
                entries.update(zip(keys, repeat(alone, len(keys)), strict=True))
                continue
            for key in keys:
                found = entries.get(key)
                if found is None:
                    entries[key] = alone
                    if ends != (False, False):
                        unspaced[key] = ends
                elif term not in found:
                    entries[key] = (*found, term)
                    if ends != (False, False):
                        start, end = unspaced.get(key, (False, False))
                        unspaced[key] = (start or ends[0], end or ends[1])
        auto = Automaton(entries, unspaced, cores)
        self._automata[encs] = auto
        return auto


_NEVER = "\x00\x00never\x00\x00"  # the one key of an automaton without terms


def _run_of(key: str, cores: set[str]) -> int:
    """1 when ``key`` is in ``cores``, the bytes of a name in a multi-byte ISO 2022 set without
    its escape sequence (:func:`_keys`), which match only inside a run of that set; -1 when it
    is other ASCII text, which never does (the bytes of ``腫瘤`` in JIS X 0208 are ``<paN``:
    not the name ``Pan``); else 0 (:func:`export.phi_scan.scan`)."""
    if key in cores:
        return 1
    return -1 if key.isascii() and "\x1b" not in key else 0


# Scripts written without spaces between words (Han, Hiragana, Katakana, half-width Katakana,
# the ideographic iteration mark) and Hangul, whose particles and titles follow a name: a term
# that starts or ends with one needs no word boundary on that side (R3).
UNSPACED_SCRIPTS = re.compile(
    "[\u3005\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
    "\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002ffff]"
)


_HAN = re.compile("[\u3005\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")


def _unspaced_ends(value: str, group: bool = False) -> tuple[bool, bool]:
    """Whether the term ``value`` needs no word boundary at its start, and at its end (R3): it
    starts (ends) with Han, or with kana or Hangul in a whole name written without spaces
    (``group``: ``김구``) or a term of 3 such characters or more. A short kana or Hangul name
    component (``リン``, ``アキ``, ``영상``) is part of too many words (``リンパ節``,
    ``アキシャル``, ``자기공명영상``) to be searched inside them."""
    if value.isascii():
        return False, False
    long = group or len(UNSPACED_SCRIPTS.findall(value)) >= 3

    def free(ch: str) -> bool:
        return bool(_HAN.match(ch)) or (long and bool(UNSPACED_SCRIPTS.match(ch)))

    return free(value[0]), free(value[-1])


class Automaton:
    """A dictionary's compiled keys (:meth:`IdentifierDictionary.automaton`): each key is a
    text's bytes, ASCII-lowered and read as Latin-1 (one character per byte), with the terms
    it stands for.

    Searched with the Rust ``aho-corasick`` crate (``ahocorasick_rs``, contiguous NFA): every
    match, overlapping. It scans a header about twice as fast as ``pyahocorasick`` and builds
    somewhat slower (README "Cost of verification", seventh pass; ``benchmarks/end_stage.py``).
    """

    __slots__ = ("_cores", "_entries", "_search", "_unspaced", "_values")

    def __init__(
        self,
        entries: dict[str, tuple[Term, ...]],
        unspaced: dict[str, tuple[bool, bool]] | None = None,
        cores: set[str] | None = None,
    ) -> None:
        """``entries``: {key: its terms}; keys hold characters up to U+00FF only.
        ``unspaced``: {key: (no word boundary needed before it, after it)}, R3 (absent:
        both needed); ``cores``: keys that are a multi-byte ISO 2022 set's bytes without
        their escape sequence (:func:`_run_of`).

        Raises:
            UnicodeEncodeError: a key holds a character above U+00FF.
        """
        if not entries:
            entries = {_NEVER: ()}
        self._entries, self._unspaced, self._cores = entries, unspaced or {}, cores or set()
        self._values: list[tuple[int, tuple[Term, ...], bool, bool, int]] | None = None
        self._search = ahocorasick_rs.BytesAhoCorasick(
            list(map(str.encode, entries, repeat("latin-1"))),
            implementation=ahocorasick_rs.Implementation.ContiguousNFA,
        )

    @property
    def values(self) -> list[tuple[int, tuple[Term, ...], bool, bool, int]]:
        """(key length in bytes, terms, no boundary needed before, after, run) by pattern
        index; run (:func:`_run_of`): 1 for the bytes of a multi-byte ISO 2022 set that match
        only inside a run of it, -1 for an ASCII key that never does, else 0. Made on first use:
        most objects match no key, so most of a study's automata never need them (about 0.15
        ms a study of ~380 keys)."""
        values = self._values
        if values is None:
            unspaced, cores = self._unspaced, self._cores
            values = self._values = [
                (len(k), t, *unspaced.get(k, (False, False)), _run_of(k, cores))
                for k, t in self._entries.items()
            ]
        return values

    def __len__(self) -> int:
        return len(self._entries)

    def matches(self, hay: str) -> list[tuple[int, int, int]]:
        """Every match in ``hay`` (characters up to U+00FF, as :func:`export.phi_scan.scan`
        searches): (pattern index into :attr:`values`, start, end exclusive), overlapping, in
        order of their end.

        Raises:
            UnicodeEncodeError: ``hay`` holds a character above U+00FF.
        """
        return self._search.find_matches_as_indexes(hay.encode("latin-1"), overlapping=True)


_ISO2022_RESET = "\x1b(b"  # ESC ( B, back to ASCII, as the automaton's keys are lowered


def _keys(value: str, ascii_same: Sequence[str], others: Sequence[str]) -> list[str]:
    """The automaton keys of one searched text: its bytes in each encoding (Python codec names),
    ASCII-lowered and read as Latin-1, each once. ``ascii_same``: the searched encodings that
    write ASCII as ASCII (an ASCII text has one key for all of them); ``others``: those that do
    not (ISO 2022, for instance; PS3.5 6.1.2.5.3).
    """
    if value.isascii():
        if not others and "\x1b" not in value:  # most terms: one key, no ISO 2022 escape
            return [value.lower()] if ascii_same else []
        keys = [value.lower()] if ascii_same else []
        forms: tuple[str, ...] = (value,)
        encodings = others
    else:
        keys, forms = [], _case_forms(value)  # R7: ASCII-lowered bytes keep other letters' case
        encodings = [*ascii_same, *others]
    for enc in encodings:
        for form in forms:
            try:
                key = form.encode(enc).lower().decode("latin-1")
            except (UnicodeEncodeError, LookupError):
                continue
            if key not in keys:
                keys.append(key)
    for key in list(keys):
        if key.endswith(_ISO2022_RESET) and key.startswith("\x1b"):
            # ISO 2022 (PS3.5 6.1.2.5.3): a name followed by more of the same script
            # ("佐々木健太郎") has no return to ASCII after it; searched without it.
            keys.append(key[: -len(_ISO2022_RESET)])
    for key in list(keys):
        core = _iso2022_core(key)
        if core:
            # ...and a name after more of the same script ("患者山田花子") has no escape
            # before it: its bytes alone, searched inside a run of that set only (R3).
            keys.append(core)
    return keys


def _iso2022_core(key: str) -> str | None:
    """``key`` without the escape sequence of a multi-byte set designated to G0 that starts it
    (:data:`_ISO2022_G0`), or None when it starts with none or is nothing else. :func:`_keys`
    adds these keys; :class:`Automaton` searches them inside a run of that set only."""
    core = _ISO2022_G0.match(key)
    return key[core.end() :] if core is not None and len(key) > core.end() else None


# The escape sequence that starts a key written in a multi-byte set designated to G0 (ESC $ B,
# ESC $ @, ESC $ A, ESC $ ( D; lowered as keys are): PS3.5 6.1.2.5.3, ISO/IEC 2022.
_ISO2022_G0 = re.compile("\x1b\\$\\(?[\x30-\x7e]")


@lru_cache(maxsize=8192)
def _date_keys(date: str, ascii_same: tuple[str, ...], others: tuple[str, ...]) -> tuple[str, ...]:
    """The automaton keys of a ``YYYYMMDD`` date term: :func:`_keys` of each of its written
    forms (:func:`written_dates`, R5), each once; cached (the same dates recur in every study
    of a day). Where every encoding writes ASCII as ASCII, made from the keys of its month and
    day (:func:`_date_templates`) with its year written in: the same keys, without encoding
    ~100 forms again for each new date. Nothing for a value that is not 8 digits."""
    if len(date) != 8 or not date.isdigit():
        return ()
    if others:  # ISO 2022 and the like: each form's keys made in full
        keys: dict[str, None] = {}
        for form in written_dates(date):
            keys.update(dict.fromkeys(_keys(form, ascii_same, others)))
        return tuple(keys)
    # The month's and day's keys joined into one text: the year is written into all of them
    # with two replacements, not two per key.
    joined = _date_templates(date[4:], ascii_same)
    written = joined.replace(_YEAR4, date[:4]).replace(_YEAR2, date[2:4])
    return tuple(dict.fromkeys(written.split(_JOIN)))


# Stand-ins for a date's year in its key templates: ASCII control characters, which every
# encoding that writes ASCII as ASCII writes as themselves, and which no case, accent or word
# rule of :func:`_case_forms` changes or reads as a letter.
_YEAR4, _YEAR2 = "\x01", "\x02"
_JOIN = "\x03"  # between two templates in :func:`_date_templates`' text: in no key either


@lru_cache(maxsize=1024)
def _date_templates(month_day: str, ascii_same: tuple[str, ...]) -> str:
    """The keys (:func:`_keys` in the encodings ``ascii_same``) of every written form of the
    day ``month_day`` (``MMDD``) of any year, the year written :data:`_YEAR4` (4 digits) and
    :data:`_YEAR2` (2): no form's spelling depends on the year's digits (:func:`_forms_of`).
    Each key once, joined by :data:`_JOIN` into one text."""
    keys: dict[str, None] = {}
    for form in _forms_of(_YEAR4, _YEAR2, month_day[:2], month_day[2:]):
        keys.update(dict.fromkeys(_keys(form, ascii_same, ())))
    return _JOIN.join(keys)


def prepare_date_keys(encodings: Iterable[str] = OWN_ENCODINGS) -> None:
    """Make the automaton keys of every day of the year's written forms (:func:`_date_templates`)
    in ``encodings`` (Python codec names that write ASCII as ASCII; a dictionary's own by
    default), once a process (~45 ms): a worker meets every day of the year within its first
    few hundred studies anyway, each first meeting costing its study 0.1-0.5 ms.
    """
    ascii_same = tuple(sorted(enc for enc in encodings if _ascii_transparent(enc)))
    day = dt.date(2000, 1, 1)  # a leap year: February 29th too
    while day.year == 2000:
        _date_templates(day.strftime("%m%d"), ascii_same)
        day += dt.timedelta(days=1)


@lru_cache(maxsize=4096)
def _case_forms(value: str) -> tuple[str, ...]:
    """A term with letters outside ASCII as it may be written (R7): as read, lower case, upper
    case and each word capitalized (``CÔTÉ^HÉLÈNE``, ``côté^hélène``, ``Côté^Hélène``), each of
    those without accents (``COTE^HELENE``) and with its accents written apart (NFD, PS3.5
    6.1.2.2 leaves normalization to the writer), each once.
    The automaton's keys are lowered for ASCII only (byte by byte, whatever the encoding), so
    each form whose other letters differ is a key of its own."""
    candidates = [value, value.lower(), value.upper(), capitalized(value)]
    if any(c in value for c in "İıIi"):
        # Turkish pairs dotted and dotless i (İ/i, I/ı): ÖZTÜRK^İLKER is "ilker", IŞIK "ışık".
        lower = value.replace("İ", "i").replace("I", "ı").lower()
        upper = value.replace("i", "İ").replace("ı", "I").upper()
        candidates += [lower, upper, capitalized(lower, upper_i="İ")]
    candidates += [unaccented(form) for form in candidates]
    # Accents written apart (NFD, as some systems store text: "e" then U+0301).
    candidates += [unicodedata.normalize("NFD", form) for form in candidates]
    forms: list[str] = []
    for form in candidates:
        if form not in forms:
            forms.append(form)
    return tuple(forms)


def _drops_terms(auto: Automaton, name: str) -> bool:
    """Whether the equipment name ``name`` (lower-cased) removes a term compiled in ``auto``
    (:meth:`IdentifierDictionary.automaton`) under R6: a term equal to it, or an institution,
    station or private term inside it. A name that is not ASCII is assumed to (its terms' keys
    may be written in another encoding)."""
    if not name.isascii():
        return True
    for index, _start, _end in auto.matches(name):
        length, terms, _, _, _ = auto.values[index]
        if terms and (length == len(name) or any(t.kinds <= _PLACE_OR_PRIVATE for t in terms)):
            return True  # the whole name is a term, or a place or private term is inside it
    return False


@lru_cache(maxsize=64)
def _ascii_transparent(encoding: str) -> bool:
    """Whether the Python codec ``encoding`` writes each of the 128 ASCII characters as its own
    byte (then an ASCII term's bytes are the same in it as in ASCII); False for an unknown codec."""
    text = bytes(range(128)).decode("ascii")
    try:
        return text.encode(encoding) == text.encode("ascii")
    except (UnicodeError, LookupError):
        return False


_TAG_INFO: dict[int, tuple[str, str]] = {}


def _tag_info(tag: BaseTag) -> tuple[str, str]:
    """(keyword, dictionary VR) of a public tag, cached ("" and "UN" when unknown)."""
    info = _TAG_INFO.get(tag)
    if info is None:
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            vr = "UN"
        info = _TAG_INFO[int(tag)] = (keyword_for_tag(tag) or "", vr)
    return info


def _costly(raw: RawDataElement, tag: BaseTag) -> bool:
    """Whether reading an element means parsing or converting it (sequences, private tags,
    person names, identifying and equipment keywords), so remembering it pays."""
    if tag.is_private or raw.length == 0xFFFFFFFF:
        return True
    vr = read_as(tag, vr_of(raw, tag))  # R16
    if vr in ("SQ", "PN"):
        return True
    keyword = keyword_for_tag(tag) or ""
    return keyword in INTERESTING_KEYWORDS or keyword in EQUIPMENT_KEYWORDS


_PUBLIC, _COSTLY, _OTHER = 0, 1, 2


def python_look(
    items: MutableMapping[Any, Any],
    raw_type: type[RawDataElement],
    element_type: type[DataElement],
    plain: dict[str | None, dict[int, int]],
    converted_plain: dict[tuple[int, str], bool],
    done: dict[ElementKey, Any],
    charset_key: str,
    memo_max: int,
    pubs: list[Any],
    private: list[tuple[str, str]],
    converted: list[Any],
    slow: Callable[[Any, Any], None],
) -> None:
    """The per-element look of :meth:`IdentifierDictionary.add_header` in Python, as
    ``export._header_look.look`` makes it in C (where that is not built): over the header's
    ``items`` ({tag: element}), a raw element whose kind ``plain`` ({VR: {tag: kind}}) gives as
    plain is passed; a costly one found in ``done`` ({(tag, VR, bytes, ``charset_key``):
    (public values, private pairs, ...)}) adds its public values to ``pubs`` with its key and its
    private pairs to ``private``; a converted one ``converted_plain`` ({(tag, VR): bool}) says is
    plain goes to ``converted``; every other element (unknown kind, value over ``memo_max``
    bytes or not bytes, not read yet) is handed to ``slow(tag, element)``, in order.

    Raises:
        RuntimeError: the header's elements changed in number while read.
    """
    for tag, raw in items.items():
        if type(raw) is raw_type:
            data = raw.value
            if type(data) is bytes:
                # A plain int (``tag + 0``): a BaseTag compares in Python, an int in C.
                itag = tag + 0
                if raw.length == 0xFFFFFFFF:
                    how: int | None = _COSTLY
                else:
                    known = plain.get(raw.VR)
                    how = known.get(itag) if known is not None else None
                    if how is None:
                        slow(tag, raw)  # a VR or tag not met yet
                        continue
                if how != _COSTLY:
                    continue  # public or other: read later only if R6 needs its text
                if len(data) <= memo_max:
                    key = (itag, raw.VR, data, charset_key)
                    seen = done.get(key)
                    if seen is not None:
                        if seen[0]:
                            pubs.append((key, seen[0]))
                        if seen[1]:
                            private.extend(seen[1])
                        continue
            slow(tag, raw)
        elif type(raw) is element_type:
            if converted_plain.get((int(tag), raw.VR)):
                converted.append(raw)
            else:
                slow(tag, raw)
        elif raw is not None:
            slow(tag, raw)


_ElementOf = Callable[[MutableMapping[Any, Any], int], Any]


def _compiled() -> tuple[Callable[..., None] | None, _ElementOf | None]:
    """``export._header_look``'s ``look`` and ``element_of``, or None where the extension was
    not built (no C compiler where ridl was installed): :meth:`IdentifierDictionary.add_header`
    then uses :func:`python_look`, with the same result (tests/test_identifier_cache.py)."""
    if RawDataElement._fields[:4] != ("tag", "VR", "length", "value"):
        return None, None  # the compiled look reads a raw element's fields by position
    try:
        from export._header_look import element_of, look
    except ImportError:
        return None, None
    return look, element_of


_LOOK, _ELEMENT_OF = _compiled()
# {VR read (None: implicit VR): {tag as int: how add_header reads a defined-length raw
# top-level element of that VR}} (two levels: no tuple key built per element)
_PLAIN: dict[str | None, dict[int, int]] = {}
DONE_CAP_BYTES = 32 * 1024 * 1024  # bytes of element values a dictionary's skip list holds
_CHARSETS: dict[tuple[str, Any], tuple[str, list[str]]] = {}
_ABSENT = object()
_CHARSET_TAG = BaseTag(0x00080005)  # Specific Character Set


# {(tag, VR): whether a converted top-level element is a plain public value (R6 only)}
_CONVERTED_PLAIN: dict[tuple[int, str], bool] = {}


def _plain_converted(tag: BaseTag, elem: DataElement) -> bool:
    """Whether :meth:`IdentifierDictionary._element` reads a converted top-level element for
    its texts only (R6): public, not a sequence, person name or bulk tag, and of a keyword
    the dictionary does not collect."""
    if tag.is_private or read_as(tag, elem.VR) in ("SQ", "PN") or tag in BULK_TAGS:
        return False
    keyword = keyword_for_tag(tag) or ""
    return keyword not in INTERESTING_KEYWORDS and keyword not in EQUIPMENT_KEYWORDS


def _plain_kind(tag: int, raw: RawDataElement) -> int:
    """:func:`_kind_of` of a raw top-level element, remembered in :data:`_PLAIN` by VR and
    tag (an undefined length is always ``_COSTLY``: a sequence to read)."""
    if raw.length == 0xFFFFFFFF:
        return _COSTLY
    known = _PLAIN.get(raw.VR)
    if known is None:
        known = _PLAIN[raw.VR] = {}
    how = known.get(tag)
    if how is None:
        how = known[tag] = _kind_of(BaseTag(tag), raw)
    return how


def _kind_of(tag: BaseTag, raw: RawDataElement) -> int:
    """How :meth:`IdentifierDictionary.add_header` reads a raw top-level element: ``_PUBLIC``
    (a plain public text value: only R6 needs its texts), ``_COSTLY`` (:func:`_costly`) or
    ``_OTHER`` (a plain public value without text, or a bulk tag: read element by element)."""
    tag = Tag(tag)
    if _costly(raw, tag):
        return _COSTLY
    keyword, vr = _tag_info(tag)
    vr = read_as(tag, raw.VR or vr)  # R16
    if vr in TEXT_VRS and tag not in BULK_TAGS:
        return _PUBLIC
    return _OTHER


def _plain_texts(ds: Dataset) -> dict[str, ElementKey | None]:
    """The lower-cased texts of the plain public top-level elements of a header (R6), as
    :meth:`IdentifierDictionary._collect` reads them: {text: (tag, VR, bytes, "") of an
    element holding it}."""
    texts: dict[str, ElementKey | None] = {}
    for tag, raw in ds.items():
        if (
            type(raw) is RawDataElement
            and isinstance(raw.value, bytes)
            and _plain_kind(tag + 0, raw) == _PUBLIC
        ):
            vr = read_as(Tag(tag), raw.VR or _tag_info(Tag(tag))[1])  # R16
            for text in _raw_texts(raw, vr):
                texts.setdefault(text.lower(), (int(tag), raw.VR, raw.value, ""))
    return texts


def _holds_bytes(ds: Dataset, witness: ElementKey, charset_key: str) -> bool:
    """Whether ``ds`` (of Specific Character Set ``charset_key``) has, unconverted, the
    element of ``witness``: (tag, VR, bytes, "") of a plain public element, or (tag, VR,
    bytes, character set) of a costly one read in that character set."""
    tag, vr, value, charset = witness
    raw = ds._dict.get(BaseTag(tag))
    if type(raw) is not RawDataElement or vr != raw.VR or raw.value != value:
        return False
    kind = _plain_kind(int(raw.tag), raw)
    if charset:
        return kind == _COSTLY and charset == charset_key and len(value) <= MEMO_MAX_VALUE
    return kind == _PUBLIC


def _charsets_of(ds: Dataset) -> tuple[str, list[str]]:
    """(the header's Specific Character Set as text, its codecs: :func:`declared_charsets`),
    cached by value."""
    # The lookup by a BaseTag calls its __eq__ (Python) on the key found: the compiled one not.
    raw = ds._dict.get(_CHARSET_TAG) if _ELEMENT_OF is None else _ELEMENT_OF(ds._dict, 0x00080005)
    # Keyed by the raw bytes as read (a worker's headers are raw): no conversion per header.
    key: tuple[str, Any]
    if type(raw) is RawDataElement:
        key = ("raw", raw.value)
    elif type(raw) is DataElement and isinstance(raw.value, str):
        key = ("str", raw.value)  # as pydicom's reader leaves it: converted at once
    else:
        key = (type(raw).__name__, repr(raw))
    found = _CHARSETS.get(key)
    if found is None:
        if len(_CHARSETS) > 1000:
            _CHARSETS.clear()
        value = ds.get("SpecificCharacterSet", _ABSENT)
        text = "" if value is _ABSENT else str(value)
        found = _CHARSETS[key] = (text, declared_charsets(ds))
    return found


class CrossStudyDictionary:
    """The cross-study terms a worker searches (staff and place names met in other studies,
    ``ridl.crossterms``), kept as a few :class:`IdentifierDictionary` tiers of growing size.

    Each compiled automaton covers all of its dictionary's terms, so growing one dictionary by a
    name met in a new study recompiled all of them: 350 ms a study at 20,000 names (60,000
    terms) on the development VM, in every study that named someone new. Here a learned term
    goes into the smallest tier; a tier holding more than its share of :data:`TIER_TERMS` is
    folded into the next (its pairs added there, its automata dropped). A study that teaches a
    name recompiles at most a few hundred terms, the middle tier every few hundred names and
    the last every few thousand. The search is the same: every tier is searched with every
    object (:attr:`dictionaries`, for :class:`export.phi_scan.Verifier`'s ``also``).

    ``pairs`` are ``(kind, value)`` pairs known at the start (:meth:`add_shared`), put in the
    last tier at once.
    """

    def __init__(self, retained: Iterable[str] = (), pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._retained = tuple(retained)
        tiers = len(TIER_TERMS) + 1
        self.dictionaries = [IdentifierDictionary(self._retained) for _ in range(tiers)]
        self.pairs = 0  # (kind, value) pairs added, a pair learned twice counted twice
        # The pairs of each foldable tier (the last one is never folded), to add to the next.
        self._held: list[list[tuple[str, str]]] = [[] for _ in TIER_TERMS]
        self._kinds: list[dict[str, int] | None] = [None] * tiers
        for kind, value in pairs:
            self.dictionaries[-1].add_shared(kind, value)
            self.pairs += 1

    def __len__(self) -> int:
        """Terms searched, summed over the tiers (a value in two tiers counts twice)."""
        return sum(len(d) for d in self.dictionaries)

    def kinds(self) -> dict[str, int]:
        """{kind: number of terms of that kind}, summed over the tiers, sorted by kind (each
        tier's count is kept until the tier changes: no walk of every term per study)."""
        counts: dict[str, int] = {}
        for i, dictionary in enumerate(self.dictionaries):
            tier = self._kinds[i]
            if tier is None:
                tier = self._kinds[i] = dictionary.kinds()
            for kind, n in tier.items():
                counts[kind] = counts.get(kind, 0) + n
        return dict(sorted(counts.items()))

    def add_equipment(self, names: Iterable[str]) -> None:
        """:meth:`IdentifierDictionary.add_equipment` for every tier (R6 across studies)."""
        names = set(names)
        for dictionary in self.dictionaries:
            dictionary.add_equipment(names)

    def add_shared(self, kind: str, value: str) -> None:
        """Learn one term (:meth:`IdentifierDictionary.add_shared`) into the smallest tier,
        then fold each tier past its share of :data:`TIER_TERMS` into the next."""
        self.pairs += 1
        self.dictionaries[0].add_shared(kind, value)
        self._held[0].append((kind, value))
        self._kinds[0] = None
        for i, limit in enumerate(TIER_TERMS):
            if len(self.dictionaries[i]) <= limit:
                break
            into = self.dictionaries[i + 1]
            for pair in self._held[i]:
                into.add_shared(*pair)
            if i + 1 < len(self._held):
                self._held[i + 1].extend(self._held[i])
            self._kinds[i + 1] = None
            emptied = IdentifierDictionary(self._retained)
            emptied.add_equipment(self.dictionaries[i].equipment)
            self.dictionaries[i], self._held[i], self._kinds[i] = emptied, [], None


class ElementMemo:
    """What distinct top-level elements contributed to a dictionary, to replay in another.

    Keyed by (tag, the element's raw bytes, the header's Specific Character Set); the value is
    (public values, private values, recorded additions), the subject's research ID abstracted
    (R5 scopes a birth date to whoever reads it). Share one between dictionaries with the same
    ``retained`` attributes only. Bounded: at :data:`MEMO_CAP` entries it starts again empty.
    """

    def __init__(self) -> None:
        self._entries: dict[ElementKey, Any] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: ElementKey) -> Any:
        """The remembered contribution of an element, or None."""
        return self._entries.get(key)

    def put(self, key: ElementKey, value: Any) -> None:
        """Remember a contribution (the memo is emptied first when it is full)."""
        if len(self._entries) >= MEMO_CAP:
            self._entries.clear()
        self._entries[key] = value


def declared_charsets(ds: Dataset) -> list[str]:
    """The Python codecs of the object's Specific Character Set (0008,0005); [] when unknown.

    Defined terms per PS3.3 C.12.1.1.2, mapped to codecs by pydicom.
    """
    try:
        value = ds.get("SpecificCharacterSet")
        if isinstance(value, DataElement):
            value = value.value
        if value is None:
            return []
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        return charset_codecs([value] if isinstance(value, str) else [str(v) for v in value])
    except Exception:
        return []


def charset_codecs(terms: list[str]) -> list[str]:
    """The Python codecs of Specific Character Set defined terms (PS3.3 C.12.1.1.2), as
    pydicom maps them; surrounding spaces ignored, terms without a codec dropped.

    Raises:
        What ``pydicom.charset.convert_encodings`` raises for a term it cannot map.
    """
    return [e for e in convert_encodings([t.strip() for t in terms]) if e]
