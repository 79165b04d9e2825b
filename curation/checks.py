"""Quality checks as plug-ins: each looks at one object and says pass, exclude or quarantine.

A check is any object with a ``name``, a ``needs_pixels`` flag and a ``__call__(obj) -> Verdict``.
Checks are found through the entry-point group ``ridl.curation_checks`` (ridl's own are registered
in its ``pyproject.toml``), so a site adds its own by installing a package that declares one,
without editing ridl. A project lists the checks it runs in its TOML (``[curation] checks``);
when it lists none, :data:`DEFAULT_CHECKS` run.

Checks see the header only. One that sets ``needs_pixels`` may call ``obj.whole()``, which reads
the whole object once (pixel bytes included, never decoded) and shares it with the later steps.
Reasons are short codes: they are counted and logged, so they never carry a header value.
ridl's own checks use :class:`ridl.reasons.Reason` members; a site's check may return its own
code (a plain string), which is counted and recorded as it is.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydicom.dataset import Dataset
from pydicom.uid import UID

from curation.integrity import ObjectRead, read_whole
from ridl.errors import ConfigError, ObjectRejected
from ridl.reasons import Reason, check_failed

ENTRY_POINT_GROUP = "ridl.curation_checks"
Action = Literal["pass", "exclude", "quarantine"]

DEFAULT_CHECKS: tuple[str, ...] = (
    "integrity",
    "no-pixel-data",
    "decodable",
    "localizer",
    "dose-report",
    "non-image",
    "duplicate-sop-instance",
    "series-consistency",
)


@dataclass(frozen=True)
class Verdict:
    """A check's answer: ``pass``, or ``exclude`` / ``quarantine`` with a short reason code.

    ``reason`` is a :class:`~ridl.reasons.Reason` for ridl's checks, any short string for a
    site's own (entry-point plug-ins are not limited to ridl's codes).
    """

    action: Action
    reason: str = ""
    detail: str = ""

    @property
    def passed(self) -> bool:
        """True when the action is ``pass``."""
        return self.action == "pass"


PASS = Verdict("pass")


def exclude(reason: str, detail: str = "") -> Verdict:
    """An ``exclude`` verdict: the object is left out of the release and counted by reason."""
    return Verdict("exclude", reason, detail)


def quarantine(reason: str, detail: str = "") -> Verdict:
    """A ``quarantine`` verdict: the object is kept on premises for review, counted by reason."""
    return Verdict("quarantine", reason, detail)


@dataclass(frozen=True)
class Policy:
    """The project's curation choices (``[curation]`` in its TOML).

    ``checks`` are entry-point names, run in order; the four policies say what happens to
    non-image objects, screen captures, localizers and inconsistent series (``exclude``,
    ``quarantine`` or ``keep``); ``ocr_min_score`` (0-1) and ``ocr_min_chars`` (characters) tune
    the burned-in text detector; ``burned_in_text`` says what detected text does (``quarantine``:
    held for review, the default; ``redact``: the boxes are blanked in every frame and the object
    screened again); ``keep_markers`` leaves single characters and laterality or view markers
    (L, R, RT, LT, AP, PA, LAT...) alone; ``filters`` are extra triage filter files; ``extra``
    keeps the other keys of the section.
    """

    checks: tuple[str, ...] = DEFAULT_CHECKS
    non_image: Literal["exclude", "quarantine", "keep"] = "exclude"
    screen_captures: Literal["exclude", "quarantine", "keep"] = "exclude"
    localizers: Literal["exclude", "quarantine", "keep"] = "exclude"
    series_inconsistency: Literal["exclude", "quarantine", "keep"] = "quarantine"
    ocr: bool = True
    ocr_min_score: float = 0.6
    ocr_min_chars: int = 2
    burned_in_text: Literal["redact", "quarantine"] = "quarantine"
    keep_markers: bool = False
    filters: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_project(cls, section: Mapping[str, Any] | None) -> Policy:
        """Read ``[curation]``; a wrong value fails before any work, naming the setting.

        ``section`` is the parsed TOML table (None: all defaults).

        Raises:
            ConfigError: a policy value other than ``exclude``, ``quarantine`` or ``keep``;
                ``burned_in_text`` other than ``redact`` or ``quarantine``; ``keep_markers``
                not a boolean.
            ValueError: ``ocr_min_score`` or ``ocr_min_chars`` is not a number.
        """
        data = dict(section or {})
        kwargs: dict[str, Any] = {}
        if "checks" in data:
            kwargs["checks"] = tuple(str(c) for c in data.pop("checks"))
        for key in ("non_image", "screen_captures", "localizers", "series_inconsistency"):
            if key in data:
                value = str(data.pop(key))
                if value not in ("exclude", "quarantine", "keep"):
                    raise ConfigError(
                        f"curation.{key} must be 'exclude', 'quarantine' or 'keep' (got {value!r})"
                    )
                kwargs[key] = value
        if "burned_in_text" in data:
            value = str(data.pop("burned_in_text"))
            if value not in ("redact", "quarantine"):
                raise ConfigError(
                    f"curation.burned_in_text must be 'redact' or 'quarantine' (got {value!r})"
                )
            kwargs["burned_in_text"] = value
        if "keep_markers" in data:
            keep = data.pop("keep_markers")
            if not isinstance(keep, bool):
                raise ConfigError(f"curation.keep_markers must be true or false (got {keep!r})")
            kwargs["keep_markers"] = keep
        if "ocr" in data:
            kwargs["ocr"] = bool(data.pop("ocr"))
        if "ocr_min_score" in data:
            kwargs["ocr_min_score"] = float(data.pop("ocr_min_score"))
        if "ocr_min_chars" in data:
            kwargs["ocr_min_chars"] = int(data.pop("ocr_min_chars"))
        if "filters" in data:
            kwargs["filters"] = tuple(str(f) for f in data.pop("filters"))
        return cls(extra=data, **kwargs)


@dataclass
class StudyView:
    """What a check may know about the rest of the study: every header that reached the checks.

    ``seen_sops`` holds the SOP Instance UIDs already passed by the duplicate check.
    """

    headers: list[Dataset]
    seen_sops: set[str] = field(default_factory=set)
    _series: dict[str, dict[str, Any]] | None = None
    _samples: frozenset[str] | None = None

    def screening_sample(self) -> frozenset[str]:
        """SOP Instance UIDs of the study's cross-sectional series samples (first, middle and
        last image by Instance Number), computed once for the study
        (:func:`curation.screening.series_samples`)."""
        if self._samples is None:
            from curation.screening import series_samples

            self._samples = series_samples(self.headers)
        return self._samples

    def series_report(self, series_uid: str) -> dict[str, Any]:
        """The consistency report of one series, computed once for the study.

        {``outliers``: {SOP Instance UID: reason}, ``series_problem``: reason or None}; an
        empty dict for a series of multi-frame or non-image objects only.
        """
        if self._series is None:
            self._series = _series_reports(self.headers)
        return self._series.get(series_uid, {})


@dataclass
class CheckObject:
    """One object as the checks see it.

    ``header`` is read without pixel data; ``needs_decoding`` is True when a later step (pixel
    cleaning, OCR) will decode its pixels. ``read``, when the caller already read the file
    (:class:`curation.integrity.ObjectRead`), is where :meth:`whole` takes the object from.
    """

    path: Path
    header: Dataset
    study: StudyView
    policy: Policy
    needs_decoding: bool = False
    read: ObjectRead | None = None
    _whole: Dataset | None = None

    def whole(self) -> Dataset:
        """The whole object, read once (raises :class:`ObjectRejected` when it is not whole)."""
        if self._whole is None:
            self._whole = self.read.whole() if self.read is not None else read_whole(self.path)
        return self._whole


@runtime_checkable
class Check(Protocol):
    """A curation check: a ``name`` (its entry-point name), whether it reads pixel bytes, and
    a call that gives a :class:`Verdict` for one object. It may raise ``ObjectRejected``
    (quarantined with its reason); any other exception quarantines with
    ``check-failed-<name>``."""

    name: str
    needs_pixels: bool

    def __call__(self, obj: CheckObject) -> Verdict: ...


@dataclass(frozen=True)
class FunctionCheck:
    """Wrap a plain function as a check (what the ``check`` decorator returns)."""

    name: str
    func: Callable[[CheckObject], Verdict]
    needs_pixels: bool = False

    def __call__(self, obj: CheckObject) -> Verdict:
        return self.func(obj)


def check(
    name: str, *, needs_pixels: bool = False
) -> Callable[[Callable[[CheckObject], Verdict]], FunctionCheck]:
    """Declare a check; register the result under ``ridl.curation_checks`` to make it usable.

    A decorator: the function (``CheckObject -> Verdict``) becomes a :class:`FunctionCheck`.
    """

    def wrap(func: Callable[[CheckObject], Verdict]) -> FunctionCheck:
        return FunctionCheck(name, func, needs_pixels)

    return wrap


def available_checks() -> dict[str, Any]:
    """Every check registered through the entry-point group, by name (read from the installed
    distributions at each call, so a package installed since is seen).

    {name: entry point}; nothing is imported here.
    """
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_checks(names: Iterable[str]) -> list[Check]:
    """The checks a project lists, in its order; an unknown name fails before any work.

    Classes are instantiated with no arguments.

    Raises:
        ConfigError: a name is not installed, or its entry point is not a check.
    """
    registry = available_checks()
    loaded: list[Check] = []
    for name in names:
        if name not in registry:
            known = ", ".join(sorted(registry)) or "none"
            raise ConfigError(
                f"curation check {name!r} is not installed (known: {known}); "
                "fix curation.checks in the project file or install the package that provides it"
            )
        obj = registry[name].load()
        if isinstance(obj, type):
            obj = obj()
        if not isinstance(obj, Check):
            raise ConfigError(f"entry point {name!r} of {ENTRY_POINT_GROUP} is not a check")
        loaded.append(obj)
    return loaded


def run_checks(checks: Iterable[Check], obj: CheckObject) -> Verdict:
    """The first verdict that is not ``pass`` wins; a check that crashes quarantines the object.

    An ``ObjectRejected`` raised by a check becomes a quarantine with its reason and detail;
    any other exception the reason ``check-failed-<name>`` (detail ``check=<name>`` and the
    exception type). Never raises for a check's failure.
    """
    for chk in checks:
        try:
            verdict = chk(obj)
        except ObjectRejected as rej:
            return quarantine(rej.reason, rej.detail)
        except Exception as exc:  # a site's check must not stop the run
            return quarantine(check_failed(chk.name), f"check={chk.name} {type(exc).__name__}")
        if not verdict.passed:
            return verdict
    return PASS


# --- built-in checks --------------------------------------------------------------------------

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
PR_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
KO_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
DOSE_SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.68",  # Radiopharmaceutical Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.73",  # Patient Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.75",  # Acquisition Context SR
    "1.2.840.10008.5.1.4.1.1.88.76",  # Enhanced X-Ray Radiation Dose SR
}
NON_IMAGE_MODALITIES = {"SR", "PR", "KO"}
# The reason names the Modality only when it is one of these: a code never carries header text.
NON_IMAGE_REASONS = {
    "SR": Reason.NON_IMAGE_SR,
    "PR": Reason.NON_IMAGE_PR,
    "KO": Reason.NON_IMAGE_KO,
}
LOCALIZER_WORDS = re.compile(r"\b(LOCALI[SZ]ER|SCOUT|TOPOGRAM|SCANOGRAM|SURVIEW|PILOT)\b", re.I)
DOSE_WORDS = re.compile(r"\b(DOSE|EXPOSURE) (REPORT|INFO|SUMMARY)\b|\bDOSE\b", re.I)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, list | tuple) or hasattr(value, "__iter__") and not isinstance(value, str):
        try:
            return "\\".join(str(v) for v in value)
        except TypeError:
            return str(value)
    return str(value)


def _image_types(ds: Dataset) -> set[str]:
    return {part.strip().upper() for part in _text(ds, "ImageType").split("\\") if part.strip()}


def is_image_sop_class(uid: str) -> bool:
    """Storage SOP classes whose name says they hold an image (pydicom's UID dictionary).

    True when the UID's name (PS3.6 Annex A) contains "Image Storage"; False for an empty or
    unknown UID.
    """
    name = UID(uid).name if uid else ""
    return "Image Storage" in name


@check("integrity", needs_pixels=True)
def integrity_check(obj: CheckObject) -> Verdict:
    """Unreadable, truncated or non-DICOM objects go to quarantine (curation.integrity).

    Raises:
        ObjectRejected: ``not-dicom``, ``unreadable`` or ``truncated`` (see
            :func:`curation.integrity.read_whole`); :func:`run_checks` turns it into a verdict.
    """
    obj.whole()
    return PASS


@check("no-pixel-data", needs_pixels=True)
def no_pixel_data_check(obj: CheckObject) -> Verdict:
    """An image SOP class without pixel data is broken: nothing to show a researcher.

    Raises:
        ObjectRejected: the object is not whole (see :func:`curation.integrity.read_whole`).
    """
    sop_class = str(obj.header.get("SOPClassUID", ""))
    if is_image_sop_class(sop_class) and "PixelData" not in obj.whole():
        return quarantine(Reason.IMAGE_WITHOUT_PIXEL_DATA)
    return PASS


@check("decodable")
def decodable_check(obj: CheckObject) -> Verdict:
    """When pixels must be read (cleaning, OCR), the transfer syntax must have a decoder.

    Decoders are pydicom's own plus pylibjpeg-openjpeg and python-gdcm (no GPL decoders).
    Only objects with ``needs_decoding`` and pixels are checked; transfer syntaxes per PS3.5
    Section 10 and Annex A.
    """
    if not obj.needs_decoding or "PixelData" not in obj.header and not obj.header.get("Rows"):
        return PASS
    meta = getattr(obj.header, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not ts:
        return quarantine(Reason.UNDECODABLE_TRANSFER_SYNTAX, "none")
    if not transfer_syntax_decodable(ts):
        return quarantine(Reason.UNDECODABLE_TRANSFER_SYNTAX, UID(ts).name)
    return PASS


@lru_cache(maxsize=64)
def transfer_syntax_decodable(ts: str) -> bool:
    """Whether pixel data in transfer syntax ``ts`` (a UID) can be decoded here.

    Native syntaxes always can; an encapsulated one (PS3.5 A.4) when pydicom has an available
    decoder for it. Cached per UID.
    """
    from pydicom.pixels import get_decoder

    uid = UID(ts)
    if not uid.is_encapsulated:
        return uid.is_transfer_syntax
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


@check("localizer")
def localizer_check(obj: CheckObject) -> Verdict:
    """Localizers and scouts are planning images, not research data (policy: localizers).

    Recognised by Image Type (0008,0008, PS3.3 C.7.6.1.1.2) values LOCALIZER, SCOUT or
    TOPOGRAM, or by words in Series Description (localizer, scout, topogram, scanogram,
    surview, pilot).
    """
    if obj.policy.localizers == "keep":
        return PASS
    types = _image_types(obj.header)
    if "LOCALIZER" in types or "SCOUT" in types or "TOPOGRAM" in types:
        return _by_policy(obj.policy.localizers, Reason.LOCALIZER)
    if LOCALIZER_WORDS.search(_text(obj.header, "SeriesDescription")):
        return _by_policy(obj.policy.localizers, Reason.LOCALIZER)
    return PASS


@check("dose-report")
def dose_report_check(obj: CheckObject) -> Verdict:
    """Dose reports and screen captures are pictures of text (policy: screen_captures).

    Radiation dose SR SOP classes (:data:`DOSE_SR_CLASSES`) are always excluded. Screen
    captures are Image Type SCREEN SAVE, or Secondary Capture (PS3.3 A.8) with Conversion Type
    (0008,0064) WSD (workstation, PS3.3 C.8.6.1); those whose Series Description speaks of a
    dose are reported as ``dose-report``.
    """
    ds = obj.header
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in DOSE_SR_CLASSES:
        return exclude(Reason.DOSE_REPORT)
    if obj.policy.screen_captures == "keep":
        return PASS
    types = _image_types(ds)
    screen = "SCREEN SAVE" in types or ("SCREEN" in types and "SAVE" in types)
    is_sc = sop_class.startswith(SC_PREFIX)
    if (is_sc or screen) and DOSE_WORDS.search(_text(ds, "SeriesDescription")):
        return _by_policy(obj.policy.screen_captures, Reason.DOSE_REPORT)
    if screen or (is_sc and str(ds.get("ConversionType", "")).upper() == "WSD"):
        return _by_policy(obj.policy.screen_captures, Reason.SCREEN_CAPTURE)
    return PASS


@check("non-image")
def non_image_check(obj: CheckObject) -> Verdict:
    """Structured reports, presentation states and key objects, by policy (non_image).

    The reason is ``non-image-sr``, ``-pr`` or ``-ko`` by Modality, and ``non-image-object`` for
    an SR, PR or KO SOP class with any other Modality (their series modules require SR, PR or
    KO: PS3.3 C.17.1, C.11.9, C.17.6.1).
    """
    ds = obj.header
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    if (
        sop_class.startswith(SR_PREFIX)
        or sop_class.startswith(PR_PREFIX)
        or sop_class == KO_SOP_CLASS
        or modality in NON_IMAGE_MODALITIES
    ):
        return _by_policy(
            obj.policy.non_image, NON_IMAGE_REASONS.get(modality, Reason.NON_IMAGE_OBJECT)
        )
    return PASS


@check("duplicate-sop-instance")
def duplicate_check(obj: CheckObject) -> Verdict:
    """A second object with the same SOP Instance UID in a study is a duplicate: keep the first.

    Records the UID in the study's ``seen_sops``.
    """
    uid = str(obj.header.get("SOPInstanceUID", ""))
    if uid in obj.study.seen_sops:
        return exclude(Reason.DUPLICATE_SOP_INSTANCE)
    obj.study.seen_sops.add(uid)
    return PASS


@check("series-consistency")
def series_consistency_check(obj: CheckObject) -> Verdict:
    """Rows, columns and orientation agree within a series; slices are evenly spaced, no gaps.

    Single-frame objects of image storage SOP classes only (an RT Dose frame is a dose grid,
    not a slice of a stack: PS3.3 C.8.8.3). An object whose size or Image Orientation (Patient)
    differs from the series' majority is an outlier; a series with repeated or missing Instance
    Numbers, or slice positions along the normal (Image Position (Patient), PS3.3 C.7.6.2) whose
    steps differ from the median by more than 10% (0.01 mm at least), has a series-wide problem.
    """
    if obj.policy.series_inconsistency == "keep":
        return PASS
    series = str(obj.header.get("SeriesInstanceUID", ""))
    report = obj.study.series_report(series)
    sop = str(obj.header.get("SOPInstanceUID", ""))
    problem = report.get("outliers", {}).get(sop) or report.get("series_problem")
    if problem:
        return _by_policy(obj.policy.series_inconsistency, problem)
    return PASS


def _by_policy(action: str, reason: str) -> Verdict:
    if action == "quarantine":
        return quarantine(reason)
    if action == "exclude":
        return exclude(reason)
    return PASS


def _number(value: Any) -> float | None:
    """An IS or DS value as a number, or None when it is not one (real files hold "1A")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _numbers(values: Any) -> list[float] | None:
    """A multi-valued DS as numbers, or None when any value is not a number."""
    if not values:
        return None
    single = isinstance(values, str | bytes | int | float)
    got = [_number(v) for v in ([values] if single else values)]
    return None if any(v is None for v in got) else [v for v in got if v is not None]


def _geometry(ds: Dataset) -> tuple[Any, ...]:
    orientation = _numbers(ds.get("ImageOrientationPatient"))
    rounded = tuple(round(v, 3) for v in orientation) if orientation else None
    return (ds.get("Rows"), ds.get("Columns"), rounded)


def _series_reports(headers: list[Dataset]) -> dict[str, dict[str, Any]]:
    """Per series: which objects disagree with the majority, and series-wide problems.

    A value that is not a number (an IS or DS as real files hold them: "1A") is unknown: an
    object whose Number of Frames is unknown is left out of the stack, an unknown Instance
    Number leaves the numbering unchecked and an unknown position the spacing.
    """
    by_series: dict[str, list[Dataset]] = {}
    sops: set[str] = set()
    for ds in headers:
        frames = _number(ds.get("NumberOfFrames", 1) or 1)
        if not ds.get("Rows") or frames is None or frames > 1:
            continue
        sop_class = str(ds.get("SOPClassUID", "") or "")
        if sop_class and not is_image_sop_class(sop_class):
            continue  # an RT Dose grid or a waveform is not a stack of slices
        sop = str(ds.get("SOPInstanceUID", ""))
        if sop in sops:
            continue  # a second feed's copy of the same instance is a duplicate, not a gap
        sops.add(sop)
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    reports: dict[str, dict[str, Any]] = {}
    for uid, members in by_series.items():
        report: dict[str, Any] = {"outliers": {}}
        if len(members) > 1:
            shapes = Counter((m.get("Rows"), m.get("Columns")) for m in members)
            common_shape = shapes.most_common(1)[0][0]
            orients = Counter(_geometry(m)[2] for m in members)
            common_orient = orients.most_common(1)[0][0]
            for m in members:
                sop = str(m.get("SOPInstanceUID", ""))
                if (m.get("Rows"), m.get("Columns")) != common_shape:
                    report["outliers"][sop] = Reason.SERIES_INCONSISTENT_SIZE
                elif _geometry(m)[2] != common_orient:
                    report["outliers"][sop] = Reason.SERIES_INCONSISTENT_ORIENTATION
            report["series_problem"] = _gaps_or_spacing(members)
        reports[uid] = report
    return reports


def _gaps_or_spacing(members: list[Dataset]) -> str | None:
    known = [_number(m.get("InstanceNumber")) for m in members]
    numbers = sorted(int(n) for n in known if n is not None)
    if len(numbers) == len(members) and numbers:
        if len(set(numbers)) != len(numbers):
            return Reason.SERIES_DUPLICATE_INSTANCE_NUMBER
        if numbers[-1] - numbers[0] + 1 != len(numbers):
            return Reason.SERIES_INSTANCE_GAP
    positions = []
    for m in members:
        pos = _numbers(m.get("ImagePositionPatient"))
        ori = _numbers(m.get("ImageOrientationPatient"))
        if not pos or not ori or len(ori) != 6 or len(pos) != 3:
            return None
        row, col = ori[:3], ori[3:]
        normal = (
            row[1] * col[2] - row[2] * col[1],
            row[2] * col[0] - row[0] * col[2],
            row[0] * col[1] - row[1] * col[0],
        )
        positions.append(sum(p * n for p, n in zip(pos, normal, strict=True)))
    if len(positions) < 3:
        return None
    positions.sort()
    steps = [b - a for a, b in zip(positions, positions[1:], strict=False)]
    typical = sorted(steps)[len(steps) // 2]
    if typical <= 0 or any(abs(s - typical) > max(0.01, 0.1 * typical) for s in steps):
        return Reason.SERIES_IRREGULAR_SPACING
    return None
