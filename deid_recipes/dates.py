"""Moving DA, DT and TM values by a subject's date shift: every form, whole or not at all.

Why its own module: the engine (on decoded values) and the fast path (on bytes) must shift
exactly the same way, and a value shifted by half (the first date of a range moved, the second
left as it was) publishes the original date. So one function reads every form PS3.5 allows and
gives the whole shifted value, or None when any part of it cannot be shifted with certainty (the
caller then removes the element).

Forms read (PS3.5 6.2 Table 6.2-1, ranges as PS3.4 C.2.2.2.5 writes them, which worklists copy
into performed-procedure-step attributes):

* DA ``YYYYMMDD``, the ACR-NEMA form ``YYYY.MM.DD`` (written back as ``YYYYMMDD``), partial dates
  ``YYYY`` and ``YYYYMM``;
* DT ``YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]``: the calendar date moves, the time of day,
  fraction and UTC offset stay as written;
* TM ``HH[MM[SS[.F{1,6}]]]`` (and ``HH:MM:SS``): a shift by whole days leaves a time of day as
  it is, so a well-formed TM is kept and one that is not goes;
* ranges ``A-B``, ``-B`` and ``A-`` of each, and several values separated by ``\\``.

A partial date (``YYYY``, ``YYYYMM``, or a DT of that precision) is moved from the middle of the
period it names (1 July, the 15th) and written back at the same precision.
"""

from __future__ import annotations

import datetime as dt
import re

_DA = re.compile(r"(\d{4})(?:\.?(\d{2})(?:\.?(\d{2}))?)?")
_DT = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?"
)
_TM = re.compile(r"\d{2}(?::?\d{2}(?::?\d{2}(?:\.\d{1,6})?)?)?")
TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})


def _shift_date(year: str, month: str | None, day: str | None, days: int) -> str | None:
    """``year[month[day]]`` moved by ``days``, at the precision given; None when invalid."""
    try:
        date = dt.date(int(year), int(month or 7), int(day or (15 if month else 1)))
        moved = date + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    text = f"{moved.year:04d}{moved.month:02d}{moved.day:02d}"
    return text[: 4 + (2 if month else 0) + (2 if day else 0)]


def _one(text: str, vr: str, days: int) -> str | None:
    """One date, date-time or time (no range, no backslash), shifted; None when malformed."""
    if vr == "TM":
        return text if _TM.fullmatch(text) else None
    if vr == "DA":
        match = _DA.fullmatch(text)
        if match is None:
            return None
        return _shift_date(match[1], match[2], match[3], days)
    match = _DT.fullmatch(text)
    if match is None:
        return None
    date = _shift_date(match[1], match[2], match[3], days)
    if date is None:
        return None
    return date + (match[4] or "") + (match[5] or "")


def _value(text: str, vr: str, days: int) -> str | None:
    """One value of a multi-valued element: a single value or a range, shifted whole."""
    single = _one(text, vr, days)
    if single is not None:
        return single  # a DT with a negative UTC offset reads as one value before a range
    # A range: split at each '-' in turn; both sides must be a value or empty (open range).
    for index in [i for i, c in enumerate(text) if c == "-"]:
        low, high = text[:index].strip(), text[index + 1 :].strip()
        if not low and not high:
            continue
        low_out = _one(low, vr, days) if low else ""
        high_out = _one(high, vr, days) if high else ""
        if low_out is not None and high_out is not None:
            return f"{low_out}-{high_out}"
    return None


def shift_temporal(text: str, vr: str, days: int) -> str | None:
    """Shift a whole DA, DT or TM value by ``days``, every value and both ends of every range.

    Args:
        text: the element's value as text, values separated by ``\\``; padding (spaces, NUL)
            around each value is ignored.
        vr: ``"DA"``, ``"DT"`` or ``"TM"``.
        days: whole days to add (negative moves back).

    Returns:
        The shifted value (values joined by ``\\``; an empty value stays empty, an empty text
        gives ``""``), or None when some part is not a form of the module docstring, names a
        day that does not exist, or would leave years 1-9999: the caller removes the element
        rather than export a value shifted by half.

    Raises:
        ValueError: ``vr`` is not DA, DT or TM.
    """
    if vr not in TEMPORAL_VRS:
        raise ValueError(f"not a temporal VR: {vr}")
    text = text.replace("\x00", " ").strip()
    if not text:
        return ""
    out: list[str] = []
    for item in text.split("\\"):
        item = item.strip()
        if not item:
            out.append("")
            continue
        shifted = _value(item, vr, days)
        if shifted is None:
            return None
        out.append(shifted)
    return "\\".join(out)


__all__ = ["TEMPORAL_VRS", "shift_temporal"]
