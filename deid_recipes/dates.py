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

Free text holds dates too, written for people: :func:`remove_written_dates` takes them out whole
for func:clean, so no day and month are left behind when the year goes.
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

# Month names and abbreviations, English and French (a trailing dot allowed; accents composed
# or written apart, Unicode NFD: "e" then U+0301).
_MONTH = (
    r"(?:jan(?:uary|vier|v)?|f(?:e\u0301?|\u00e9)(?:b(?:ruary)?|vr(?:ier)?)|mar(?:ch|s)?|"
    r"apr(?:il)?|avr(?:il)?|may|mai|june?|juin|july?|juil(?:let)?|aug(?:ust)?|"
    r"ao(?:u\u0302?|\u00fb)t|sept?(?:ember|embre)?|oct(?:ober|obre)?|nov(?:ember|embre)?|"
    r"d(?:e\u0301?|\u00e9)c(?:ember|embre)?)\.?"
)
_DAY = r"(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th|er)?"
_EDGE_BEFORE = r"(?<![^\W_])"
_EDGE_AFTER = r"(?![^\W_])"
_WRITTEN = re.compile(
    _EDGE_BEFORE
    + r"(?:"
    # YYYY-MM-DD, YYYY/MM/DD, YYYY.MM.DD (one separator throughout)
    + r"(?P<ymd>\d{4}(?P<s1>[-/.])\d{1,2}(?P=s1)\d{1,2})"
    # DD/MM/YYYY, MM/DD/YYYY, DD.MM.YYYY, DD-MM-YYYY, and with a 2-digit year
    + r"|(?P<dmy>(?P<a>\d{1,2})(?P<s2>[-/.])(?P<b>\d{1,2})(?P=s2)(?P<y>\d{4}|\d{2}))"
    # D Mon YYYY, D-Mon-YY, 23Jul2019, D Month, YYYY; D Mon
    + rf"|(?P<dmon>{_DAY}[\s-]*(?P<m1>{_MONTH})(?:,?[\s-]*(?P<y1>\d{{4}}|(?<=-)\d{{2}}|'\d{{2}}))?)"
    # Mon D YYYY, Month D, YYYY; Mon D
    + rf"|(?P<mond>(?P<m2>{_MONTH})[\s-]*{_DAY}(?:,?[\s-]*(?P<y2>\d{{4}}))?)"
    # Mon YYYY, YYYY-MM, MM/YYYY (a month of a year)
    + rf"|(?P<mony>{_MONTH},?[\s-]*\d{{4}})"
    + r"|(?P<ym>\d{4}[-/.](?:0?[1-9]|1[0-2]))|(?P<my>(?:0?[1-9]|1[0-2])[-/.]\d{4})"
    + r")"
    + _EDGE_AFTER,
    re.IGNORECASE,
)
# Month words that are also common words: without a year they are taken for dates only when
# written with a capital ("May 3", not "may 3").
_AMBIGUOUS_MONTHS = frozenset({"may", "mar", "march", "mars", "mai", "jun", "sept", "dec"})


def _written_date(match: re.Match[str]) -> str:
    """The replacement of one candidate: ``" "`` for a date, the text itself for a non-date."""
    if match["dmy"]:
        a, b = int(match["a"]), int(match["b"])
        if len(match["y"]) == 2 and not (
            (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)
        ):
            return match[0]  # a 2-digit year is a date only when day and month are valid
        return " "
    month = match["m1"] if match["dmon"] else match["m2"] if match["mond"] else None
    year = match["y1"] if match["dmon"] else match["y2"] if match["mond"] else "y"
    if month is not None and not year and month.rstrip(".") in _AMBIGUOUS_MONTHS:
        return match[0]  # "may 3", lower case and without a year: not taken for a date
    return " "


def remove_written_dates(text: str) -> str:
    """``text`` with every date written for people taken out whole (each replaced by a space).

    Forms: ``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYY.MM.DD``; ``DD/MM/YYYY``, ``MM/DD/YYYY``,
    ``DD.MM.YYYY``, ``DD-MM-YYYY`` (a 2-digit year where day and month are valid in one order);
    ``D Mon YYYY``, ``D-Mon-YY``, ``Mon D YYYY``, ``Month D, YYYY`` with English or French
    month names or abbreviations, ordinal days (``23rd``, ``1er``), and without the year
    (``Jul 23``; a lower-case ``may``, ``mar``... without a year is left); a month of a year
    (``Jul 2019``, ``2019-07``, ``07/2019``). A date is matched only as a whole word. Digits
    alone (``YYYYMMDD``) are left to the caller (func:clean removes any token of 4 digits).

    Args:
        text: free text, already decoded.

    Returns:
        The text with each date replaced by one space (the caller collapses whitespace).
    """
    return _WRITTEN.sub(_written_date, text)


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


__all__ = ["TEMPORAL_VRS", "remove_written_dates", "shift_temporal"]
