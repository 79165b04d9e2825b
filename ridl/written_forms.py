"""How people write a name or an identifier run together or split apart.

A header holds a person name as components (``TREMBLAY^JOSEE``, PS3.5 6.2.1) and a patient ID
as one string (``MRN00123``), but the free text typed beside it (a series description, an
image comment, a login name, text burned into the pixels) writes them the way people do:
``TremblayJosee``, ``jtremblay``, ``MRN 00123``. Matched as whole words, the components alone
miss those forms. Two engines need the same forms and neither may import the other (floors:
``deid_recipes`` and ``export`` are siblings): de-identification removes them from free text
(``deid_recipes.engine.identifying_tokens``: names; an identifier's digits apart are removed
as any token of 4 digits or more) and the stream's verification searches them
(``export.identifiers.name_terms`` and ``identifier_terms``), so they live on the ground floor.

Rules (ridl's own; the forms are those of hospital login names and of IDs written with their
prefix apart):

* a name's family and given components (the first two of a component group) are also written
  joined either way round (``TREMBLAYJOSEE``, ``JOSEETREMBLAY``), and with the given name's
  initial before or after the family name (``JTREMBLAY``, ``TREMBLAYJ``) when the family name
  has 4 letters or more; spaces, hyphens, apostrophes and dots inside a component are dropped
  (``SAINT-PIERRE`` gives ``SAINTPIERREJOSEE``); every form has 5 letters or more; names
  written in Han, kana or Hangul are not concerned (they are searched without spaces already);
* an identifier made of a letter prefix and at least 5 digits, with at most one separator
  between them (space, ``-``, ``_``, ``/``, ``.`` or ``#``), is also written with none, a space,
  or a hyphen (``MRN00123``, ``MRN 00123``, ``MRN-00123``).
"""

from __future__ import annotations

import re

MIN_JOINED = 5
MIN_FAMILY_FOR_INITIAL = 4
MIN_ID_DIGITS = 5

_DROPPED_IN_NAME = re.compile(r"[\s\-'.\u2019]+")
_LETTERS = re.compile(r"[^\W\d_]+")
_CJK = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_PREFIXED_ID = re.compile(rf"([^\W\d_]+)[ \-_/.#]?(\d{{{MIN_ID_DIGITS},}})")


def joined_name_forms(value: str) -> list[tuple[str, bool]]:
    """The forms of a person name written run together, as the module doc lists them.

    ``value`` is a PN value (component groups split by ``=``, components by ``^``; PS3.5
    6.2.1). Returns ``(form, initial)`` pairs in the value's own case, each form once;
    ``initial`` is True for a form made with the given name's initial. [] for a name with
    fewer than two components or written in Han, kana or Hangul.
    """
    forms: list[tuple[str, bool]] = []
    for group in value.split("="):
        parts = group.split("^")
        if len(parts) < 2:
            continue
        family = _DROPPED_IN_NAME.sub("", parts[0])
        given = _DROPPED_IN_NAME.sub("", parts[1])
        if not (_LETTERS.fullmatch(family) and _LETTERS.fullmatch(given)):
            continue
        if _CJK.search(family + given):
            continue
        candidates = [(family + given, False), (given + family, False)]
        if len(family) >= MIN_FAMILY_FOR_INITIAL and len(given) > 1:
            candidates += [(given[0] + family, True), (family + given[0], True)]
        for form, initial in candidates:
            if len(form) >= MIN_JOINED and all(form != f for f, _ in forms):
                forms.append((form, initial))
    return forms


def split_identifier_forms(value: str) -> list[str]:
    """The other ways an identifier made of a letter prefix and digits is written.

    ``value`` is an ID value (Patient ID, Accession Number, Other Patient IDs…). Returns the
    prefix and the digits joined with nothing, a space and a hyphen, but the value's own form;
    [] when ``value`` is not a letter prefix and at least 5 digits.
    """
    match = _PREFIXED_ID.fullmatch(value.strip())
    if match is None:
        return []
    prefix, digits = match.groups()
    own = value.strip()
    forms = (prefix + digits, f"{prefix} {digits}", f"{prefix}-{digits}")
    return [form for form in forms if form != own]
