"""How people write a name or an identifier run together or split apart.

A header holds a person name as components (``TREMBLAY^JOSEE``, PS3.5 6.2.1) and a patient ID
as one string (``MRN00123``), but the free text typed beside it (a series description, an
image comment, text burned into the pixels) writes them the way people do: ``TremblayJosee``,
``SaintPierre``, ``MRN 00123``. Matched as whole words, the components alone miss those
forms. Two engines need the same forms and neither may import the other (floors:
``deid_recipes`` and ``export`` are siblings): de-identification removes the name forms from
free text (``deid_recipes.engine.identifying_tokens``; an identifier's digits set apart go as
any token of 4 digits or more) and the stream's verification searches all of them
(``export.identifiers.name_terms`` and ``identifier_terms``), so they live on the ground floor.

Rules (ridl's own, rule R15 of ``export.identifiers``):

* a name's words are its letter runs (NFC; a hyphen, dash, apostrophe, dot or invisible
  character splits them; a note in brackets and what follows a comma in a component, such as
  ``(Jo)`` or ``, Jr``, are not words); a group without ``^`` is read as ``Family, Given`` or,
  without a comma, as one component;
* the family and given names are written joined either way round (``TremblayJosee``,
  ``JoseeTremblay``); a given name of several words also gives its first word with the family
  name (``MarieRoy``, ``RoyMarie``) and its words joined (``MarieEve``); a family name of
  several words gives its words joined (``SaintPierre``);
* every word joined has 2 letters or more and every form 5 or more; initials are not joined: an
  initial and a family name make English words too often (``S`` + ``PINE``, ``F`` + ``LAIR``,
  ``LOWE`` + ``R``), and a staff name's forms are searched in every study of the project;
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

MIN_JOINED = 5
MIN_WORD = 2
MIN_ID_DIGITS = 5

_WORDS = re.compile(r"[^\W\d_]+")  # runs of letters: hyphens, dashes, dots, quotes split them
_ASIDE = re.compile(r"\([^)]*\)|\[[^\]]*\]")  # a nickname or note: "Josee (Jo)"
_CJK = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_CONTROL = re.compile(r"[\x00-\x1f]")
_PREFIXED_ID = re.compile(rf"([^\W\d_]+)(?:: |# |[ \-_/.#:])?(\d{{{MIN_ID_DIGITS},}})")
ID_SEPARATORS = ("", " ", "-", "_", "#", ":", ": ")


def _words(component: str) -> list[str]:
    """The letter runs of a name component, before a comma (a suffix: "Tremblay, Jr")."""
    return _WORDS.findall(component.partition(",")[0])


def _capitalized(word: str) -> str:
    return word[:1].upper() + word[1:].lower()


def joined_name_forms(value: str) -> list[tuple[str, tuple[str, ...]]]:
    """The forms of a person name written run together, as the module doc lists them.

    ``value`` is a PN value (component groups split by ``=``, components by ``^``; PS3.5
    6.2.1); a group with no ``^`` is read as ``Family, Given`` or as words (``Luc Gagnon``).
    Returns ``(form, words)`` pairs, each form once: the form in the value's own case (and, for
    letters outside ASCII, also with each word capitalized: ``JoséeÉthier``), and the name
    words it joins (for rule R4: common words). [] for a name written in Han, kana or Hangul,
    or with nothing to join.
    """
    forms: list[tuple[str, tuple[str, ...]]] = []

    def put(*parts: list[str]) -> None:
        """Add the parts (each a list of words) joined, when each has 2 letters or more."""
        joined = ["".join(part) for part in parts]
        plain = "".join(joined)
        if len(parts) < 2 or len(plain) < MIN_JOINED or any(len(j) < MIN_WORD for j in joined):
            return
        camel = "".join(_capitalized(word) for part in parts for word in part)
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
        if len(given) > 1:  # "Roy^Marie Eve": "MarieRoy", "RoyMarie", "MarieEve"
            put(given[:1], family)
            put(family, given[:1])
            put(*([word] for word in given))
        put(*([word] for word in family))  # "SaintPierre"; one component "Luc Gagnon"
    return forms


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
