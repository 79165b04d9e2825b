"""The byte scan: every byte of a de-identified object searched for the dictionary's identifiers.

An object is searched whole (header, sequences, private elements, file meta) in every character
set it declares, with the automaton of :class:`export.identifiers.IdentifierDictionary`; a hit
is located by walking the parsed object to the attribute whose value holds it, so a
:class:`Hit` names the object key and the attribute path
(``RequestAttributesSequence[0].RequestedProcedureDescription``, ``(0029,1010)``,
``file_meta.…``), never the value. Text an OCR function finds in the pixels of at-risk objects is
searched too. Rules R3, R4, R5, R7, R10, R13 and R14 of :mod:`export.identifiers` apply here.

Engines floor (``export/``): the search half of the PHI gate; the dictionary comes from
:mod:`export.identifiers` and the report types from :mod:`export.verification`. The OCR function
and the at-risk rule are passed in (``flows.gate`` passes curation's OCR), so this module imports
no OCR engine; its only module state is a small cache of character set codecs.
"""

from __future__ import annotations

import io
import json
import logging
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as PydicomSequence
from pydicom.tag import BaseTag, Tag

from export.identifiers import (
    BULK_TAGS,
    DATE_VRS,
    NAME_KINDS,
    OWN_ENCODINGS,
    UNSPACED_SCRIPTS,
    Automaton,
    IdentifierDictionary,
    Term,
    charset_codecs,
    declared_charsets,
    is_own_vocabulary,
    text_values,
    vr_of,
)
from ridl.codestream import ITEM_TAG, codestream_texts
from ridl.reasons import Reason

log = logging.getLogger(__name__)

UNVERIFIABLE = Reason.UNVERIFIABLE_OBJECT
DEFLATED_UID = b"1.2.840.10008.1.2.1.99"
# Hit kinds that are verdicts on an object or a part, not kinds of identifier.
_OBJECT_CODES = {
    Reason.UNVERIFIED_STUDY,
    Reason.OBJECT_NOT_IN_MANIFEST,
    Reason.OBJECT_CHANGED,
}

# --- searching -----------------------------------------------------------------------------------


# Bytes above 0x7F that are punctuation or spaces in ISO 8859-1 (no-break space, inverted
# marks, guillemets, middle dot), written alone: not letters, so a term beside one is a word.
_HIGH_NON_WORD = frozenset("\xa0\xa1\xab\xb7\xbb\xbf")


def _unicode_word(text: str) -> bool:
    """Whether one decoded character is part of a word: a letter, a digit or a combining mark
    (an accent written apart, NFD, belongs to the letter before it)."""
    return len(text) == 1 and unicodedata.category(text)[0] in "LNM"


def _word_at(hay: str, i: int) -> bool:
    """Whether the character whose bytes start at ``hay[i]`` is part of a word (R3).

    ``hay`` is bytes read as Latin-1 (:func:`_hay`), in whatever character set the value was
    written. A byte below 0x80 is ASCII. A UTF-8 sequence starting there is decoded: a
    no-break space, a quotation mark, a guillemet or an ellipsis is no letter, whatever its
    bytes. Any other byte above 0x7F is a letter (ISO 8859 letters, multi-byte scripts), except
    the ISO 8859-1 spaces and punctuation of :data:`_HIGH_NON_WORD`.
    """
    ch = hay[i]
    if ch < "\x80":
        return ch.isalnum()
    lead = ord(ch)
    size = 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if lead < 0xF5 else 0
    if size and i + size <= len(hay):
        try:
            return _unicode_word(hay[i : i + size].encode("latin-1").decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return ch not in _HIGH_NON_WORD


def _word_before(hay: str, i: int) -> bool:
    """Whether the character whose bytes end at ``hay[i]`` is part of a word (see
    :func:`_word_at`; a UTF-8 sequence ending there is decoded from its first byte)."""
    ch = hay[i]
    if ch < "\x80":
        return ch.isalnum() and not _escape_final(hay, i)
    j = i
    while j > max(0, i - 3) and 0x80 <= ord(hay[j]) < 0xC0:
        j -= 1  # back over UTF-8 continuation bytes to a lead byte
    if j < i and ord(hay[j]) >= 0xC2:
        try:
            return _unicode_word(hay[j : i + 1].encode("latin-1").decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return ch not in _HIGH_NON_WORD


def _escape_final(hay: str, i: int) -> bool:
    """Whether ``hay[i]`` is the final byte of an ISO 2022 escape sequence (ESC, up to three
    intermediate bytes 0x20-0x2F, a final byte: ``ESC $ ) C`` before Korean, ``ESC ) I``
    before half-width Katakana; PS3.5 6.1.2.5.3): the text's next character starts a word."""
    j = i - 1
    while j >= max(0, i - 3) and "\x20" <= hay[j] <= "\x2f":
        j -= 1
    return j >= 0 and hay[j] == "\x1b"


def _in_multibyte_run(hay: str, i: int, aligned: bool) -> bool:
    """Whether ``hay[i]`` is inside a run of a multi-byte ISO 2022 set designated to G0
    (``ESC $ B`` JIS X 0208, ``ESC $ ( D`` JIS X 0212...; PS3.5 6.1.2.5.3): the last escape
    sequence before it designates one; with ``aligned``, also a whole number of 2-byte
    characters after it (``hay[i]`` starts a character)."""
    at = hay.rfind("\x1b", 0, i)
    if at < 0 or not hay.startswith("\x1b$", at):
        return False
    first = at + 2
    if first < len(hay) and hay[first] in ")*+-./":
        return False  # designated to G1-G3: its bytes are above 0x7F, ASCII stays ASCII
    if first < len(hay) and hay[first] == "(":
        first += 1
    return not aligned or (i - (first + 1)) % 2 == 0


# First bytes (rows) of 2-byte ISO 2022 characters that are no letters: JIS X 0208 row 1
# (spaces, punctuation: "!!" is the ideographic space), row 2 (symbols), row 8 (box drawing).
_JIS_NON_LETTER_ROWS = frozenset('!"(')


def _jis_letter_at(hay: str, i: int) -> bool:
    """Whether the 2-byte character at ``hay[i]`` (inside a run, :func:`_in_multibyte_run`)
    is a letter: kana, Han, full-width Latin, Greek, Cyrillic; an escape sequence ends it."""
    return i < len(hay) and hay[i] != "\x1b" and hay[i] not in _JIS_NON_LETTER_ROWS


def _jis_letter_before(hay: str, i: int) -> bool:
    """:func:`_jis_letter_at` for the 2-byte character before ``hay[i]`` (no letter when the
    run's escape sequence is right before)."""
    return i >= 2 and not _escape_final(hay, i - 1) and _jis_letter_at(hay, i - 2)


def _unspaced_at(hay: str, i: int) -> bool:
    """Whether the UTF-8 character whose bytes start at ``hay[i]`` is Han, kana or Hangul
    (``患者Smith``: a Latin name beside them is a word of its own, R3)."""
    size = 3 if "\xe0" <= hay[i] < "\xf0" else 4 if "\xf0" <= hay[i] < "\xf5" else 0
    if not size or i + size > len(hay):
        return False
    try:
        return bool(UNSPACED_SCRIPTS.match(hay[i : i + size].encode("latin-1").decode("utf-8")))
    except UnicodeDecodeError:
        return False


def _unspaced_before(hay: str, i: int) -> bool:
    """:func:`_unspaced_at` for the UTF-8 character whose bytes end at ``hay[i]``."""
    return any(i - size + 1 >= 0 and _unspaced_at(hay, i - size + 1) for size in (3, 4))


def _is_ascii_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def scan(
    hay: str,
    auto: Automaton,
    *,
    text: bool = True,
    dates: bool = False,
    ends: bool = True,
) -> Iterator[tuple[int, int, Sequence[Term]]]:
    """Whole-word matches (R3) in a lowered latin-1 haystack: (start, end, terms).

    ``hay`` is bytes ASCII-lowered and read as Latin-1 text (one character per byte, so offsets
    are byte offsets; ``end`` is exclusive); ``auto`` is
    :meth:`export.identifiers.IdentifierDictionary.automaton`.

    ``text=True`` for a value's own text, where a neighbour above 0x7F is a letter unless it is
    a space or punctuation (a no-break space, quotation marks, guillemets: :func:`_word_at`);
    ``text=False``
    for a whole object's bytes, where a value's neighbours are binary tags and lengths, so only
    ASCII letters and digits count as word characters (a lenient pre-filter).

    ``dates=True`` where a DT value may hold a date followed by its time of day: a ``YYYYMMDD``
    date term (:attr:`Term.date`) also matches when digits follow it (R3's exception for dates);
    anywhere, a date in any written form matches when ``T`` and a digit follow it (an ISO 8601
    date and time), and a ``YYYYMMDD`` date when letters come before it (``IMG20190805``).
    Such matches yield the date terms only.

    ``ends=False`` skips the check after a match (a lenient look at raw bytes: the byte after
    a value that fills its even length is the next element's tag, whose group may be written
    ``2``, ``P``, ``T``, ``p``... as for groups 0032, 0050, 0054, 0070; PS3.5 7.1.2).
    """
    found = auto.matches(hay)
    if not found:
        return
    n = len(hay)
    values = auto.values  # only now: made on first use (Automaton.values)
    for index, start, stop in found:
        length, found_terms, free_start, free_end, run = values[index]
        terms: Sequence[Term] = found_terms
        end = stop - 1  # the match's last character
        if run == 1 and not _in_multibyte_run(hay, start, aligned=True):
            continue  # an ISO 2022 set's bytes outside its run, or between two characters
        if run == -1 and "\x1b$" in hay and _in_multibyte_run(hay, start, aligned=False):
            continue  # ASCII text inside a run of a multi-byte set: its bytes, not letters
        if text:
            before = (
                not free_start
                and start > 0
                and _word_before(hay, start - 1)
                and _word_at(hay, start)
                and not (hay[start] < "\x80" and _unspaced_before(hay, start - 1))
            )
            after = (
                not free_end
                and ends
                and end + 1 < n
                and _word_at(hay, end + 1)
                and _word_before(hay, end)
                and not (hay[end] < "\x80" and _unspaced_at(hay, end + 1))
            )
        else:
            before = (
                start > 0
                and _is_ascii_word_char(hay[start - 1])
                and _is_ascii_word_char(hay[start])
                and not _escape_final(hay, start - 1)
            )
            after = (
                ends
                and end + 1 < n
                and _is_ascii_word_char(hay[end + 1])
                and _is_ascii_word_char(hay[end])
            )
        # Inside a run of 2-byte characters the rows of the characters beside the match tell
        # letters apart, whatever their bytes look like in ASCII.
        if run == 1:
            before = not free_start and _jis_letter_before(hay, start)
        if run != -1 and "\x1b$" in hay and _in_multibyte_run(hay, end + 1, aligned=False):
            after = not free_end and ends and _jis_letter_at(hay, end + 1)
        if before:
            if not (hay[start - 1].isalpha() and length == 8 and hay[start].isdigit()):
                continue
            # A date as DICOM writes it after letters ("IMG20190805", "DOB19420630").
            terms = [t for t in terms if t.date and hay[start : end + 1].isdigit()]
            if not terms:
                continue
        if after:
            if hay[end + 1] == "t" and end + 2 < n and hay[end + 2].isdigit():
                # ISO 8601: a date, then T and its time ("2019-08-05T10:15", "20190805T1015").
                terms = [term for term in terms if term.date]
            elif dates and hay[end + 1].isdigit() and length == 8:
                # A DT value: the date as DICOM writes it (YYYYMMDD), then the time's digits.
                terms = [term for term in terms if term.date and hay[start : end + 1].isdigit()]
            else:
                continue
            if not terms:
                continue
        yield start, end + 1, terms


# No-break, narrow and other Unicode spaces between the words of a value (French typography:
# "30\u00a0juin", "DDN\u00a0:"), as bytes read as Latin-1: UTF-8 U+00A0, U+2000-U+200A (en and
# em spaces, figure, punctuation, thin and hair spaces), U+202F, U+205F, U+3000 (ideographic;
# A1 A1 in GB18030, GBK and the EUC sets), the middle dots between the parts of a name (U+00B7,
# U+30FB: "张·伟", "ジョン・スミス"), and the ISO 8859 byte A0 alone (:func:`_space_for`). Each
# match holds one of the bytes A0, A1, B7, E2, E3, which :func:`_spaced` looks for first.
_SPACES = re.compile(
    "\xc2\xa0|\xe2\x80[\x80-\x8a\xaf]|\xe2\x81\x9f|\xe3\x80\x80|\xa1\xa1|\xc2\xb7|\xe3\x83\xbb|\xa0"
)
# Hyphens and dashes of UTF-8 text between a date's or a number's parts ("2017\u201312\u201302"):
# U+2010-U+2015 (hyphen, no-break hyphen, figure dash, en and em dashes, horizontal bar),
# U+2212 (minus sign), U+FE58 (small em dash), U+FE63 (small hyphen-minus), U+FF0D (full-width).
_DASHES = re.compile("\xe2\x80[\x90-\x95]|\xe2\x88\x92|\xef\xb9[\x98\xa3]|\xef\xbc\x8d")


def _space_for(match: re.Match[str]) -> str:
    """A space for one match of :data:`_SPACES`; a byte A0 alone only after an ASCII byte
    (``30\xa0juin``): after any other byte it may end a character (``à`` is C3 A0 in UTF-8,
    ``张`` E5 BC A0, ``範`` B9 A0 in GB18030) and is left as it is."""
    at = match.start()
    if match.group() == "\xa0" and at and match.string[at - 1] >= "\x80":
        return "\xa0"
    return " "


def _spaced(hay: str) -> str:
    """``hay`` (:func:`_hay`) with each no-break or other Unicode space written as a space and
    each UTF-8 hyphen or dash as ``-``, so a term written with those matches a value written
    with these (offsets move). A byte A0 or a UTF-8 dash may also be part of a character of
    another set (``张`` is E5 BC A0 in UTF-8, ``範`` B9 A0 in GB18030), which this rewrites:
    the text is always searched as it is as well (:func:`_hays`)."""
    # One byte looked for each (memchr), without a generator: this runs for every object.
    if "\xa0" in hay or "\xa1" in hay or "\xb7" in hay or "\xe2" in hay or "\xe3" in hay:
        hay = _SPACES.sub(_space_for, hay)
    if "\xe2" in hay or "\xef" in hay:
        hay = _DASHES.sub("-", hay)
    return hay


def _hays(hay: str) -> tuple[str, ...]:
    """The texts to search for ``hay``: itself, and :func:`_spaced` of it when that differs
    (for a search whose offsets are not used, or that only asks whether a term is there)."""
    spaced = _spaced(hay)
    return (hay,) if spaced == hay else (hay, spaced)


FILE_CONTENTS = "(file contents)"  # a hit's path in a file that is not DICOM (a part, a manifest)


def _hay(data: bytes) -> str:
    return data.lower().decode("latin-1")


@dataclass(frozen=True)
class Hit:
    """Where an identifier was found: object key, attribute path and the kind of identifier.

    ``path`` is an attribute path (``Seq[0].Keyword``, ``(gggg,eeee)`` for private elements,
    ``file_meta.…``), or a description in parentheses for bytes outside any attribute; ``kind``
    is a term kind (:class:`export.identifiers.Term`) or ``unverifiable-object``.
    """

    key: str
    path: str
    kind: str

    def __str__(self) -> str:
        if self.kind in _OBJECT_CODES:
            return f"{self.key}: {self.path} [{self.kind}]"
        return f"{self.key}: {self.where}"

    @property
    def where(self) -> str:
        """``<path> holds a <kind>`` (``an`` before a vowel): the attribute and the kind of
        identifier, never the value."""
        article = "an" if self.kind[:1] in "aeiou" else "a"
        return f"{self.path} holds {article} {self.kind}"


@dataclass(frozen=True)
class _Span:
    start: int  # absolute offsets: exact for top-level values, -1 inside sequences
    end: int
    path: str
    vr: str
    hay: str  # the value's bytes, lowered, as latin-1 text


def _name(tag: BaseTag, elem: DataElement | RawDataElement) -> str:

    if tag.is_private:
        return f"({tag.group:04X},{tag.element:04X})"
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def _value_hay(raw: DataElement | RawDataElement, encodings: list[str]) -> str:
    value = raw.value
    if isinstance(value, bytes | bytearray):
        return _hay(bytes(value))
    texts = text_values(value)
    out = []
    for text in texts:
        for enc in encodings or ["latin_1"]:
            try:
                out.append(_hay(text.encode(enc)))
            except (UnicodeEncodeError, LookupError):
                continue
    return "\x00".join(out)


def element_spans(
    ds: Dataset, prefix: str = "", depth: int = 0, encodings: list[str] | None = None
) -> Iterator[_Span]:
    """Every leaf value of the parsed object with its attribute path and VR, sequences walked.

    Yields spans with the value's byte offsets in the file (top level only; -1 inside
    sequences), its path under ``prefix``, its VR and its text in each of ``encodings``
    (Python codec names; Latin-1 and UTF-8 by default), lowered. Sequences deeper than 64
    levels are not walked.
    """
    if depth > 64:
        return
    encodings = encodings or list(OWN_ENCODINGS)
    for tag in list(ds.keys()):
        tag = Tag(tag)
        try:
            raw = ds.get_item(tag)
        except Exception:
            continue
        if raw is None:
            continue
        path = f"{prefix}{_name(tag, raw)}"
        vr = vr_of(raw, tag)
        if vr == "SQ" or (isinstance(raw, RawDataElement) and raw.length == 0xFFFFFFFF):
            try:
                value = ds[tag].value
            except Exception:
                value = None
            if isinstance(value, PydicomSequence | list):
                for i, item in enumerate(value):
                    if not isinstance(item, Dataset):
                        continue
                    yield from element_spans(item, f"{path}[{i}].", depth + 1, encodings)
                continue
        start = end = -1
        if depth == 0 and isinstance(raw, RawDataElement):
            start = raw.value_tell
            end = start + (len(raw.value or b"") if raw.length == 0xFFFFFFFF else raw.length)
        try:
            hay = _value_hay(raw, encodings)
        except Exception:
            hay = ""
        yield _Span(start, end, path, vr, hay)


@dataclass
class ObjectResult:
    """What one object's check found: its hits, and whether its pixels were read by OCR."""

    hits: list[Hit] = field(default_factory=list)
    ocr_checked: bool = False


class Verifier:
    """Checks objects against one dictionary; holds no PHI beyond the dictionary itself.

    ``owners_of`` gives an object's research subject (default: its Patient ID) for R5; ``ocr``
    returns the text in an object's pixels (a string or a list of strings; None: no OCR);
    ``at_risk`` picks the objects OCR reads (default :func:`default_at_risk`); ``also`` are
    further dictionaries searched the same way (cross-study terms).
    """

    def __init__(
        self,
        dictionary: IdentifierDictionary,
        owners_of: Callable[[Dataset], str | None] | None = None,
        ocr: Callable[[Dataset], Any] | None = None,
        at_risk: Callable[[Dataset], bool] | None = None,
        also: Sequence[IdentifierDictionary] = (),
    ) -> None:
        self.dictionary = dictionary
        # Further dictionaries searched with the same rules (the project's cross-study terms,
        # ridl.crossterms): each keeps its own compiled automata, so a small per-study
        # dictionary does not recompile a large shared one.
        self.dictionaries = [dictionary, *also]
        self.owners_of = owners_of or (lambda ds: str(getattr(ds, "PatientID", "")) or None)
        self.ocr = ocr
        self.at_risk = at_risk or default_at_risk

    def check_bytes(
        self,
        key: str,
        data: bytes,
        *,
        text_end: int | None = None,
        pixel_text: Sequence[str] | None = None,
    ) -> ObjectResult:
        """Search one object. An object stored as DICOM that cannot be parsed cannot be shown
        to be clean: its bytes are still searched, and it is reported as unverifiable.

        ``key`` is the object's store key; ``data`` its bytes. A DICOM file (``DICM`` after the
        128-byte preamble, PS3.10 7.1) is searched segment by segment (file meta, and the
        inflated dataset of Deflated Explicit VR Little Endian, PS3.5 A.5); other objects
        (manifests, summaries, Parquet read as CSV) as text. Never raises for a bad object: it
        becomes an ``unverifiable-object`` hit.

        ``text_end`` (a byte offset), when the caller wrote the object and knows it, is where
        the value of the last top-level element, the pixel data, begins: everything from there
        on is image samples (R10). Then the bytes before it are searched raw first, and the
        object is parsed only when a term is found there (same verdict, a fraction of the
        cost). ``pixel_text`` is the text an earlier step already read in the object's pixels
        (lines, PHI: never logged); when given it is searched instead of calling ``ocr``.
        """
        is_dicom = len(data) >= 132 and data[128:132] == b"DICM"
        if (
            is_dicom
            and text_end is not None
            and not pixel_text
            and 132 <= text_end <= len(data)
            and data.find(DEFLATED_UID, 0, min(text_end, 4096)) < 0
        ):
            codecs = _declared_codecs(data, text_end)
            if codecs is not None:
                # The header's bytes, and the text segments of compressed frames (not R10).
                heads = _hays(_hay(data[:text_end]))
                for text in _texts_after(data, text_end):
                    heads += _hays(_hay(text))
                # No term in the object's character sets (each dictionary's keys written in
                # them too): clean. An empty dictionary finds nothing. Most objects match no
                # key at all: the word rules (scan) only run over a text that does.
                if not self._found_in(heads, codecs):
                    return ObjectResult()
        if not is_dicom:
            result = self._check_file(key, data)
            if key.endswith(".dcm"):
                result.hits.append(Hit(key, "(not a DICOM file)", UNVERIFIABLE))
            return result
        try:
            ds = dcmread(io.BytesIO(data), force=True)
            ds.file_meta  # noqa: B018 - read the meta now
            return self._check_dicom(key, data, ds, pixel_text)
        except Exception:
            result = self._check_file(key, data)
            result.hits.append(Hit(key, "(object could not be parsed)", UNVERIFIABLE))
            return result

    def _found_in(self, heads: tuple[str, ...], codecs: frozenset[str]) -> bool:
        """Whether a term of any dictionary is in one of ``heads`` (:func:`_hays` texts of raw
        bytes, searched as :func:`scan` with ``text=False, ends=False``)."""
        for dictionary in self.dictionaries:
            if not dictionary.terms:
                continue
            auto = dictionary.automaton(codecs)
            for head in heads:
                if auto.matches(head):
                    for _ in scan(head, auto, text=False, ends=False):
                        return True
        return False

    def _check_file(self, key: str, data: bytes) -> ObjectResult:
        """A non-DICOM object (manifest, summary): its bytes as text; Parquet via its table."""
        result = ObjectResult()
        if key.endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(io.BytesIO(data))
                # Values only: the column names are ridl's own vocabulary, never identifiers.
                data = table.to_pandas().to_csv(index=False, header=False).encode("utf-8")
            except Exception:
                pass
        elif key.endswith(".json"):
            data = _json_values(data)
        seen: set[tuple[str, str]] = set()
        hays = _hays(_hay(data))
        matches = (
            m for auto in self._automata(()) for hay in hays for m in scan(hay, auto, text=False)
        )
        for _s, _e, terms in matches:
            for term in terms:
                if term.name_only or term.scoped:
                    continue
                kind = sorted(term.kinds)[0]
                if (kind, "file") not in seen:
                    seen.add((kind, "file"))
                    result.hits.append(Hit(key, FILE_CONTENTS, kind))
        return result

    def _check_dicom(
        self, key: str, data: bytes, ds: Dataset, pixel_text: Sequence[str] | None = None
    ) -> ObjectResult:
        result = ObjectResult()
        automata = self._automata(declared_charsets(ds))
        owner = self.owners_of(ds)
        segments = self._segments(data, ds)
        found: set[tuple[str, str]] = set()

        def hit(path: str, kind: str) -> None:
            if (path, kind) not in found:
                found.add((path, kind))
                result.hits.append(Hit(key, path, kind))

        for label, buf, bulk, spans_of in segments:
            candidates: list[tuple[int, int, Sequence[Term], bool]] = []
            pieces = [(offset, _hay(piece)) for offset, piece in _outside(buf, bulk)]  # R10
            for offset, hay in pieces:
                matches = (m for a in automata for m in scan(hay, a, text=False, dates=True))
                for start, end, terms in matches:
                    # A date followed by digits: only a DT attribute, once located, can hold it.
                    dt_only = end < len(hay) and hay[end].isdigit()
                    start, end = start + offset, end + offset
                    if not any(b0 <= start and end <= b1 for b0, b1 in bulk):
                        candidates.append((start, end, terms, dt_only))
            if not candidates and not any(
                next(iter(scan(each, a, text=False, ends=False)), None) is not None
                for _offset, hay in pieces
                for each in _hays(hay)
                for a in automata
            ):
                continue  # not even a term followed by the next element's tag: see scan()
            located: set[int] = set()
            searched: list[tuple[int, int]] = []  # raw top-level values searched as text
            for span in spans_of():
                if span.path in _BULK_NAMES or not span.hay:
                    continue
                if label == "file" and span.start >= 0:
                    searched.append((span.start, span.end))
                dates = span.vr == "DT"
                spans = (
                    m
                    for a in automata
                    for each in _hays(span.hay)
                    for m in scan(each, a, dates=dates)
                )
                own = ridl_written(span.path)
                for _s, _e, terms in spans:
                    for term in terms:
                        located.add(id(term))
                        if not own and _blocks(term, span.vr, owner, located=True):
                            hit(span.path, sorted(term.kinds)[0])
            for start, end, terms, dt_only in candidates:
                if dt_only:
                    continue  # a date that only a DT value can hold, and none did
                if any(s0 <= start and end <= s1 for s0, s1 in searched):
                    continue  # R3: inside a value whose own text was searched ("RENÉ" in "RENÉE")
                for term in terms:
                    if id(term) in located or not _blocks(term, "UN", owner, located=False):
                        continue
                    if label == "file" and start < 128:
                        hit("preamble", sorted(term.kinds)[0])
                    else:
                        where = f"(bytes {start}-{end} of the {label}, not inside one attribute)"
                        hit(where, sorted(term.kinds)[0])

        def pixel_hits(text: bytes, path: str) -> None:
            """Text read from the pixel data (a codestream's, OCR's): a scoped term (a date,
            R5) is a hit only for its own subject, a common word never (R4)."""
            hays = _hays(_hay(text))
            for _s, _e, terms in (m for a in automata for h in hays for m in scan(h, a)):
                for term in terms:
                    if (owner in term.owners) if term.scoped else not term.name_only:
                        hit(path, sorted(term.kinds)[0])

        for segment in _pixel_data_texts(ds):
            pixel_hits(segment, "PixelData (codestream text)")
        texts: list[str] = []
        if pixel_text is not None:
            result.ocr_checked = True
            texts = [str(t) for t in pixel_text]
        elif self.ocr is not None and self.at_risk(ds):
            result.ocr_checked = True
            texts = _ocr_texts(self.ocr, ds)
        for text in texts:
            pixel_hits(text.encode("utf-8", "replace"), "PixelData (OCR text)")
        return result

    def _automata(self, encodings: Iterable[str]) -> list[Automaton]:
        """One compiled automaton per dictionary, for the object's declared encodings."""
        encodings = list(encodings)
        return [d.automaton(encodings) for d in self.dictionaries]

    def _segments(
        self, data: bytes, ds: Dataset
    ) -> list[tuple[str, bytes, list[tuple[int, int]], Callable[[], list[_Span]]]]:
        """(label, bytes, bulk ranges, attribute spans on demand) for the file, or for its meta
        and its inflated dataset when the transfer syntax is deflated."""
        bulk: list[tuple[int, int]] = []
        for tag in BULK_TAGS:
            try:
                raw = ds.get_item(tag)
            except Exception:
                continue
            if isinstance(raw, RawDataElement) and raw.value is not None:
                bulk.append((raw.value_tell, raw.value_tell + len(raw.value)))

        def meta_spans() -> list[_Span]:
            return [
                _Span(s.start, s.end, "file_meta." + s.path, s.vr, s.hay)
                for s in element_spans(ds.file_meta)
            ]

        def body_spans() -> list[_Span]:
            encodings = sorted({*OWN_ENCODINGS, *declared_charsets(ds)})
            return list(element_spans(ds, encodings=encodings))

        ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
        if ts == "1.2.840.10008.1.2.1.99":  # deflated: the dataset is searched inflated
            group_length = int(getattr(ds.file_meta, "FileMetaInformationGroupLength", 0) or 0)
            meta_end = 132 + 12 + group_length
            try:
                body = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
            except zlib.error:
                body = data[meta_end:]
            return [
                ("file", data[:meta_end], [], meta_spans),
                ("inflated dataset", body, bulk, body_spans),
            ]
        return [("file", data, bulk, lambda: meta_spans() + body_spans())]


_PIXEL_TAG = b"\xe0\x7f\x10\x00"
_PIXEL_DATA = BaseTag(0x7FE00010)
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _texts_after(data: bytes, text_end: int) -> list[bytes]:
    """:func:`codestream_texts` of the Pixel Data element whose tag is at ``text_end`` in
    ``data`` (Explicit VR OB/OW with a 4-byte length, PS3.5 7.1.2, or Implicit VR, 7.1.3),
    when its length is undefined (encapsulated); else none."""
    explicit = data[text_end + 4 : text_end + 6] in (b"OB", b"OW")
    length_at = text_end + (8 if explicit else 4)
    if data[length_at : length_at + 4] != b"\xff\xff\xff\xff":
        return []
    return codestream_texts(memoryview(data)[length_at + 4 :])


def _pixel_data_texts(ds: Dataset) -> list[bytes]:
    """:func:`codestream_texts` of a parsed object's encapsulated Pixel Data, if it has one."""
    try:
        raw = ds.get_item(_PIXEL_DATA)
    except Exception:
        return []
    if raw is None:
        return []
    value = raw.value
    if not isinstance(value, bytes) or value[:4] != ITEM_TAG:
        return []
    return codestream_texts(value)


def written_pixel_start(ds: Dataset, data: bytes) -> int | None:
    """Where the Pixel Data element begins in ``data``, the bytes written from ``ds`` (data set
    elements in ascending tag order, PS3.5 7.1), when Pixel Data (7FE0,0010) is the last
    top-level element of ``ds``: :func:`pixel_data_start` of ``data``; else None (an element
    after the pixel data, such as Data Set Trailing Padding (FFFC,FFFC), or no pixel data).

    Lets an object de-identified element by element, its pixels redacted, be searched as the
    byte-level fast path's objects are (``text_end`` of :meth:`Verifier.check_bytes`).
    """
    if _PIXEL_DATA not in ds or max(ds.keys()) != _PIXEL_DATA:
        return None
    return pixel_data_start(data)


def pixel_data_start(data: bytes) -> int | None:
    """Where the Pixel Data element (7FE0,0010) begins when it is the object's last element.

    ``data`` is a whole Part 10 file in a little-endian transfer syntax. Returns the byte offset
    of the element's tag when the element found there runs exactly to the end of ``data``
    (Explicit VR ``OB``/``OW`` with its 4-byte length, PS3.5 7.1.2; Implicit VR, 7.1.3; or an
    undefined length closed by the Sequence Delimitation Item, PS3.5 A.4), else None. Only for
    objects known to end with their pixel data (the byte-level fast path writes no element
    after it): a match found inside the pixel samples themselves only moves the offset earlier,
    so more bytes are searched, never fewer.
    """
    n = len(data)
    end = n
    while True:
        at = data.rfind(_PIXEL_TAG, 132, end)
        if at < 0:
            return None
        end = at
        vr = data[at + 4 : at + 6]
        if vr in (b"OB", b"OW") and data[at + 6 : at + 8] == b"\x00\x00":
            length = int.from_bytes(data[at + 8 : at + 12], "little")
            start = at + 12
        else:
            length = int.from_bytes(data[at + 4 : at + 8], "little")
            start = at + 8
        if length == 0xFFFFFFFF:
            if data.endswith(_SEQUENCE_DELIMITER):
                return at
        elif start + length == n:
            return at


def _declared_codecs(data: bytes, end: int) -> frozenset[str] | None:
    """The Python codecs of the object's Specific Character Set (0008,0005), read in
    ``data[:end]`` from raw bytes (the element's tag in Explicit VR Little Endian, PS3.5
    7.1.2; PS3.3 C.12.1.1.2): empty when there is none; None when it is there but not written
    so, or names a character set without a codec (the object is then searched the long way)."""
    at = data.find(b"\x08\x00\x05\x00CS", 0, end)
    if at < 0:  # none, or not written as Explicit VR: only the first case is known
        return None if data.find(b"\x08\x00\x05\x00", 0, end) >= 0 else frozenset()
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    return _codecs_of(data[at + 8 : min(at + 8 + length, end)])


# {Specific Character Set value bytes: its codecs, or None when pydicom knows none of them}
_CODECS: dict[bytes, frozenset[str] | None] = {}


def _codecs_of(value: bytes) -> frozenset[str] | None:
    """The Python codecs of a raw Specific Character Set value (PS3.3 C.12.1.1.2), remembered
    per value (a worker meets a handful); None when it cannot be mapped."""
    if value in _CODECS:
        return _CODECS[value]
    text = value.decode("ascii", "replace")
    codecs: frozenset[str] | None
    try:
        codecs = frozenset(charset_codecs(text.split("\\")))
    except Exception:
        codecs = None
    if len(_CODECS) >= 256:
        _CODECS.clear()
    _CODECS[value] = codecs
    return codecs


def _outside(buf: bytes, bulk: list[tuple[int, int]]) -> Iterator[tuple[int, bytes]]:
    """The parts of ``buf`` outside the bulk ranges, with their offsets. A few bytes of overlap
    are kept on each side so a term that runs up to a range's edge is still seen whole."""
    edge = 16
    pos = 0
    for b0, b1 in sorted(bulk):
        if b1 - b0 <= 2 * edge or b0 < pos:
            continue
        yield pos, buf[pos : b0 + edge]
        pos = b1 - edge
    yield pos, buf[pos:]


_BULK_NAMES = {"PixelData", "FloatPixelData", "DoubleFloatPixelData", "WaveformData"}
# R14: what ridl's de-identification writes into every object in place of whatever was there
# (PS3.15 E.1.1: Patient Identity Removed (0012,0062), De-identification Method (0012,0063) and
# its Code Sequence (0012,0064), Longitudinal Temporal Information Modified (0028,0303); PS3.10
# 7.1: the File Meta's Implementation Class UID and Version Name).
RIDL_WRITTEN = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
    "file_meta.ImplementationClassUID",
    "file_meta.ImplementationVersionName",
)


def ridl_written(path: str) -> bool:
    """Whether an attribute path (``DeidentificationMethodCodeSequence[0].CodeMeaning``) lies in
    an attribute ridl itself writes (:data:`RIDL_WRITTEN`): a term found there is not a hit
    (R14: a patient named "Basic" or "Clean" does not match the code meaning of the profile)."""
    return any(path == name or path.startswith((name + "[", name + ".")) for name in RIDL_WRITTEN)


def _blocks(term: Term, vr: str, owner: str | None, located: bool) -> bool:
    if term.name_only and vr != "PN":
        return False  # R4
    if vr == "CS" and term.kinds <= NAME_KINDS:
        return False  # R13: a coded value is a defined term, not a name
    if term.scoped and term.owners and owner not in term.owners:
        return False  # R5: another subject's date names nobody in this subject's object
    if term.scoped and vr in DATE_VRS and (owner not in term.owners or owner in term.coincident):
        return False  # R5
    return not (term.name_only and not located)


def default_at_risk(ds: Dataset) -> bool:
    """Objects whose pixels may carry text: ultrasound, secondary capture, screens, and any that
    say so.

    True for Burned In Annotation (0028,0301) ``YES`` (General Image Module, PS3.3 C.7.6.1),
    modalities US, SC, OT, XA, ES, DOC, and Secondary Capture SOP classes
    (``1.2.840.10008.5.1.4.1.1.7*``, PS3.4 B.5).
    """
    if str(getattr(ds, "BurnedInAnnotation", "")).upper() == "YES":
        return True
    if str(getattr(ds, "Modality", "")).upper() in {"US", "SC", "OT", "XA", "ES", "DOC"}:
        return True
    return str(getattr(ds, "SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.7")


def _ocr_texts(ocr: Callable[[Dataset], Any], ds: Dataset) -> list[str]:
    try:
        found = ocr(ds)
    except Exception as exc:  # OCR failing on one object is reported, not fatal
        log.warning("OCR failed on an object (%s); its pixels were not read", type(exc).__name__)
        return []
    if found is None:
        return []
    if isinstance(found, str):
        return [found]
    return [str(x) for x in found]


def _json_values(data: bytes) -> bytes:
    """The string values of a JSON document (ridl's derived files: parts, summary, manifest
    index), one per line, as UTF-8; the bytes unchanged when they are not JSON.

    Booleans, numbers, null and keys that are ridl's own vocabulary (field names, reason codes:
    R12) are its structure, never identifiers, so they are not searched: a private value "TRUE"
    or a patient named "Modality" must not match the structure every part has. Every string
    value and every other key is searched.
    """
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return data
    values: list[str] = []
    stack: list[Any] = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            values.append(item)
        elif isinstance(item, dict):
            # A key ridl did not name itself (a research ID, a study key) is searched too.
            values.extend(k for k in item if not is_own_vocabulary(k))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return "\n".join(values).encode("utf-8")
