"""How people write a name or an identifier run together or split apart.

A header holds a person name as components (``TREMBLAY^JOSEE``, PS3.5 6.2.1) and a patient ID
as one string (``MRN00123``), but the free text typed beside it (a series description, an
image comment, text burned into the pixels) writes them the way people do: ``TremblayJosee``,
``SaintPierre``, ``OConnor``, ``MRN 00123``. Matched as whole words, the components alone miss
those forms. Two engines need the same forms and neither may import the other (floors:
``deid_recipes`` and ``export`` are siblings): de-identification removes the name forms from
free text, with and without accents (``deid_recipes.engine.identifying_tokens``; an
identifier's digits set apart go as any token of 4 digits or more) and the stream's
verification searches all of them (``export.identifiers.name_terms`` and
``identifier_terms``), so they live on the ground floor.

Rules (ridl's own, rule R15 of ``export.identifiers``):

* a name's words are its letter runs (NFC; a hyphen, dash, dot or invisible character splits
  them, an apostrophe does not: ``O'Connor`` is ``OConnor``; a note in brackets and what
  follows a comma in a component, such as ``(Jo)`` or ``, Jr``, are not words); a group without
  ``^`` is read as ``Family, Given`` or, without a comma, as one component;
* the family and given names are written joined either way round (``TremblayJosee``,
  ``JoseeTremblay``); a given name of several words also gives its first word with the family
  name (``MarieRoy``, ``RoyMarie``) and its words joined (``MarieEve``); a family name of
  several words gives its words joined (``SaintPierre``, ``LeBlanc``) and, when its first word
  is a name of its own (4 letters or more, no particle, no saint), that word with the given
  name (``AnneTremblay`` for ``Tremblay-Gagnon^Anne``); a family or given name written with an
  apostrophe is also searched without it (``OConnor``);
* every word joined has 3 letters or more or is a particle (:data:`PARTICLES`: ``de``, ``la``,
  ``van``…), every form has 5 letters or more, and no form is a word of clinical vocabulary
  (:func:`clinical_words`, PS3.16's concept meanings): ``Or^Don`` would make ``DONOR``,
  ``De Lay`` ``DELAY``, ``Ten^Don`` ``TENDON``; initials are never joined (``S`` + ``PINE``,
  ``F`` + ``LAIR``): a staff name's forms are searched in every study of the project;
* a form with letters outside ASCII is also written with each word capitalized
  (``JoséeÉthier`` for ``ÉTHIER^JOSÉE``): verification ignores case only for ASCII letters
  otherwise;
* names written in Han, kana or Hangul are not concerned (they are searched without spaces
  already);
* an identifier made of a letter prefix and at least 5 digits, with at most one separator
  between them, is also written with each of :data:`ID_SEPARATORS` (``MRN00123``,
  ``MRN 00123``, ``MRN-00123``, ``MRN_00123``, ``MRN#00123``, ``MRN:00123``, ``MRN: 00123``).
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache

from ridl.identity import STANDARD_SCHEMES

MIN_JOINED = 5
MIN_WORD = 3
MIN_ID_DIGITS = 5
# Short words that begin family names ("De La Cruz", "Le Blanc", "Van Der Berg", "Mc Neil"):
# joined like longer words. Any other word of fewer than 3 letters is never joined.
# fmt: off
PARTICLES = frozenset({
    "da", "de", "di", "do", "du", "el", "la", "le", "lo", "al", "ben", "bin", "dal", "del",
    "dei", "della", "den", "der", "des", "dos", "mc", "mac", "san", "st", "ste", "ter", "van",
    "von", "zu",
})
# fmt: on

_ACCENTS = re.compile("[\u0300-\u036f]")  # Combining Diacritical Marks (not kana's voicing)
_APOSTROPHES = re.compile("['\u2019\u02bc`\u00b4]")  # "O'Connor" is one word, "OConnor"
_WORDS = re.compile(r"[^\W\d_]+")  # runs of letters: hyphens, dashes, dots split them
_ASIDE = re.compile(r"\([^)]*\)|\[[^\]]*\]")  # a nickname or note: "Josee (Jo)"
# Han ideographs, kana and Hangul (and their half-width forms): names written without spaces.
CJK_LETTERS = (
    "[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\u3005]"
)
_CJK = re.compile(CJK_LETTERS)
_CONTROL = re.compile(r"[\x00-\x1f]")
_PREFIXED_ID = re.compile(rf"([^\W\d_]+)(?:: |# |[ \-_/.#:])?(\d{{{MIN_ID_DIGITS},}})")
ID_SEPARATORS = ("", " ", "-", "_", "#", ":", ": ")


def unaccented(text: str) -> str:
    """``text`` with the accents of Latin, Greek and Cyrillic letters dropped (``Gélinas``:
    ``Gelinas``; ``Пётр``: ``Петр``; ``Ελένη``: ``Ελενη``), as records and keyboards often
    write names: Unicode NFD, Combining Diacritical Marks (U+0300-U+036F) dropped, NFC again;
    other scripts unchanged (kana keep their voicing marks). Rule R7 of
    ``export.identifiers`` searches these forms; de-identification cleans them."""
    return unicodedata.normalize("NFC", _ACCENTS.sub("", unicodedata.normalize("NFD", text)))


@cache
def clinical_words() -> frozenset[str]:
    """The words (letter runs, lower-cased, without accents) of every concept meaning of
    :data:`ridl.identity.STANDARD_SCHEMES` in pydicom's PS3.16 tables: about 8,800 words such
    as ``renal``, ``donor``, ``lamina``, ``delay``, ``tendon``. Read once a process (about
    0.3 s); empty when pydicom has no tables."""
    words: set[str] = set()
    try:
        from pydicom.sr.codedict import Collection

        for scheme in STANDARD_SCHEMES:
            for code in Collection(scheme).concepts.values():
                words.update(_WORDS.findall(unaccented(str(code.meaning)).lower()))
    except Exception:  # no tables: no word is known, every joined form is kept
        return frozenset()
    return frozenset(words)


def _words(component: str) -> list[str]:
    """The words of a name component: its letter runs, apostrophes inside a word dropped,
    before a comma (a suffix: "Tremblay, Jr")."""
    return _WORDS.findall(_APOSTROPHES.sub("", component.partition(",")[0]))


def _joinable(word: str) -> bool:
    return len(word) >= MIN_WORD or word.lower() in PARTICLES


def _barrel(word: str) -> bool:
    """Whether ``word``, first of a family name of several, is a name of its own ("Tremblay" of
    "Tremblay-Gagnon"), not a particle or a saint ("De La Cruz", "Saint-Pierre")."""
    return len(word) >= 4 and word.lower() not in PARTICLES | {"saint", "sainte"}


_WORD_START = re.compile(r"(?<![^\W\d_])([^\W\d_])([^\W\d_]*)")


def capitalized(value: str, upper_i: str = "I") -> str:
    """``value`` with each word's first letter upper case and the rest lower case
    (``upper_i``: the capital of ``i``, ``İ`` in Turkish). Rule R7 of ``export.identifiers``
    searches these forms; R15 writes run-together names with them (``JoséeÉthier``)."""

    def word(match: re.Match[str]) -> str:
        first = upper_i if match[1] == "i" else match[1].upper()
        return first + match[2].lower()

    return _WORD_START.sub(word, value)


@lru_cache(maxsize=4096)
def joined_name_forms(value: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The forms of a person name written run together, as the module doc lists them.

    ``value`` is a PN value (component groups split by ``=``, components by ``^``; PS3.5
    6.2.1); a group with no ``^`` is read as ``Family, Given`` or as words (``Luc Gagnon``).
    Returns ``(form, parts)`` pairs, each form once (remembered for the 4,096 names last asked:
    a study's headers repeat the same names): the form in the value's own case (and, for
    letters outside ASCII, also with each word capitalized: ``JoséeÉthier``), and the parts it
    joins (for rule R4: common words). () for a name written in Han, kana or Hangul, or with
    nothing to join.
    """
    forms: list[tuple[str, tuple[str, ...]]] = []

    def put(*parts: list[str], alone: bool = False) -> None:
        """Add the parts (each a list of words) joined: two parts or more (one ``alone``),
        every word joinable, 5 letters or more, and no clinical word."""
        joined = ["".join(part) for part in parts]
        plain = "".join(joined)
        if len(parts) < (1 if alone else 2) or len(plain) < MIN_JOINED:
            return
        if not all(_joinable(word) for part in parts for word in part):
            return
        if unaccented(plain).lower() in clinical_words():
            return  # "De Lay" is "DELAY", "La Mina" "LAMINA": words of every report
        camel = "".join(capitalized(word) for part in parts for word in part)
        for form in (plain, camel):
            if all(form != f for f, _ in forms) and (form == plain or not form.isascii()):
                forms.append((form, tuple(joined)))

    for group in unicodedata.normalize("NFC", value).split("="):
        group = _ASIDE.sub(" ", group)
        if _CJK.search(group) or _CONTROL.search(group):
            continue  # an ISO 2022 group not decoded holds escapes, not words
        parts = group.split("^")
        if len(parts) == 1 and "," in group:
            parts = group.split(",", 1)  # "Gagnon, Luc"
        family = _words(parts[0])
        given = _words(parts[1]) if len(parts) > 1 else []
        if family and given:  # "TremblayJosee", "JoseeTremblay"
            put(family, given)
            put(given, family)
        if given and len(family) > 1 and _barrel(family[0]):  # "Tremblay-Gagnon^Anne":
            put(family[:1], given)  # "TremblayAnne", "AnneTremblay"
            put(given, family[:1])
        if family and len(given) > 1:  # "Roy^Marie Eve": "MarieRoy", "RoyMarie"
            put(given[:1], family)
            put(family, given[:1])
        for words, component in ((family, parts[0]), (given, parts[1] if given else "")):
            if len(words) > 1:  # "SaintPierre", "MarieEve"; one component "Luc Gagnon"
                put(*([word] for word in words))
            elif words and _APOSTROPHES.search(component):  # "O'Connor": "OConnor"
                put(words, alone=True)
    return tuple(forms)


def split_identifier_forms(value: str) -> list[str]:
    """The other ways an identifier made of a letter prefix and digits is written.

    ``value`` is an ID value (Patient ID, Accession Number, Other Patient IDs…). Returns the
    prefix and the digits joined by each of :data:`ID_SEPARATORS` (nothing, a space, ``-``,
    ``_``, ``#``, ``:``, ``: ``), but the value's own form; [] when ``value`` is not a letter
    prefix and at least 5 digits.
    """
    own = value.strip()
    match = _PREFIXED_ID.fullmatch(own)
    if match is None:
        return []
    prefix, digits = match.groups()
    return [form for sep in ID_SEPARATORS if (form := f"{prefix}{sep}{digits}") != own]
