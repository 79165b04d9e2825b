"""Terms that cross studies: staff, institution, department and station names of a project.

A study's own headers name its patient, but a radiologist, a technologist or a station named
in one study can turn up in the text of another (a report, a series description, a private
tag), where that study's own headers do not mention them. Every name of that kind met while a
study is verified (``export.identifiers.IdentifierDictionary.shared``: ``staff`` person names
and ``place`` names) is therefore kept here, per project and per site (Issuer of Patient ID),
and searched in every later study of the project.

On premises only, and owner-only (files 0600 in folders 0700): the names are PHI-adjacent
(staff are identifiable people) and never leave ``RIDL_HOME``::

    RIDL_HOME/crossterms/<project>/<site digest>.jsonl

one JSON line per term seen, ``[kind, value]``, a study's new lines appended with one
``write`` (``O_APPEND``: whole at the end of a local file), so every worker process of a run
can add what it learns while the run goes on, without a lock. The site's file name is the
first 16 hex digits of the SHA-256 of its issuer, so no site is named on disk.

Bounded memory: a site keeps at most :data:`MAX_TERMS_PER_SITE` terms, a run carries at most
:data:`MAX_TERMS_PER_RUN` of them to its workers. Eviction is least recently seen first: a term
is written again the first time a worker process meets it (once per process), so line order is
the order terms were last seen; :func:`load_terms` keeps the newest of each site and rewrites a
file that has grown past twice its cap.

Guarantee: a study is searched for every term known when its run started (carried in the run's
context, so a Dask worker needs no shared disk) and for every term its own worker process has
met since. Terms that another worker learns during the same run reach this study only from the
next run on. On a cluster whose workers do not share ``RIDL_HOME`` with the research office,
what workers learn is written on their own disk and lost with it; the terms of the office's
local runs still travel to them.

Ground floor (``ridl/``): plain files, no other floor imported.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

from ridl import settings

MAX_TERMS_PER_SITE = 5_000
MAX_TERMS_PER_RUN = 20_000
MAX_VALUE_CHARS = 200
KINDS = ("staff", "place")


def terms_dir(project: str) -> Path:
    """The project's cross-study term files (``RIDL_HOME/crossterms/<project>``; not created)."""
    return settings.ridl_home() / "crossterms" / project


def site_file(project: str, site: str) -> Path:
    """The term file of one site: named by a digest of its issuer, never the issuer itself."""
    digest = hashlib.sha256(site.encode("utf-8")).hexdigest()[:16]
    return terms_dir(project) / f"{digest}.jsonl"


def _valid(kind: str, value: str) -> bool:
    return kind in KINDS and 0 < len(value) <= MAX_VALUE_CHARS


def record_terms(project: str, site: str, pairs: Iterable[tuple[str, str]]) -> int:
    """Append ``(kind, value)`` pairs seen in a study of ``site`` to the project's file.

    ``kind`` is ``staff`` or ``place`` (others, empty values and values over 200 characters are
    dropped). Returns the number of lines written. The folder is created 0700, the file 0600.
    """
    lines = [
        json.dumps([kind, value], ensure_ascii=False) + "\n"
        for kind, value in pairs
        if _valid(kind, value)
    ]
    if not lines:
        return 0
    path = site_file(project, site)
    settings.private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        # One write for the study's lines: an O_APPEND write lands whole at the end of a local
        # file even with concurrent writers, so lines are never interleaved.
        os.write(fd, "".join(lines).encode("utf-8"))
    finally:
        os.close(fd)
    return len(lines)


def _read_site(path: Path) -> OrderedDict[tuple[str, str], None]:
    """A site's terms, least recently seen first (a later line moves its term to the end)."""
    seen: OrderedDict[tuple[str, str], None] = OrderedDict()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return seen
    lines = text.splitlines()
    for line in lines:
        try:
            kind, value = json.loads(line)
        except (ValueError, TypeError):
            continue  # a line cut by a killed writer
        if _valid(str(kind), str(value)):
            key = (str(kind), str(value))
            seen.pop(key, None)
            seen[key] = None
    while len(seen) > MAX_TERMS_PER_SITE:
        seen.popitem(last=False)
    if len(lines) > 2 * MAX_TERMS_PER_SITE:  # compact: keep the newest, in order
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(list(k), ensure_ascii=False) + "\n" for k in seen)
        tmp.replace(path)
    return seen


def load_terms(project: str) -> tuple[tuple[str, str], ...]:
    """Every site's terms of the project, as ``(kind, value)`` pairs, newest last.

    At most :data:`MAX_TERMS_PER_SITE` per site and :data:`MAX_TERMS_PER_RUN` in all (the most
    recently seen are kept). Sorted within a site's file order, so a run's context is the same
    for the same files.
    """
    folder = terms_dir(project)
    if not folder.is_dir():
        return ()
    merged: OrderedDict[tuple[str, str], None] = OrderedDict()
    for path in sorted(folder.glob("*.jsonl")):
        for key in _read_site(path):
            merged.pop(key, None)
            merged[key] = None
    pairs = list(merged)
    return tuple(pairs[-MAX_TERMS_PER_RUN:])


class KnownTerms:
    """A worker's own copy of the cross-study terms: those its run started with, grown with
    every study it verifies (bounded like a site file: least recently seen evicted first)."""

    def __init__(self, project: str, start: Iterable[tuple[str, str]] = ()) -> None:
        self.project = project
        self._terms: OrderedDict[tuple[str, str], None] = OrderedDict(
            ((k, v), None) for k, v in start
        )
        self._written: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._terms)

    def __contains__(self, pair: object) -> bool:
        return pair in self._terms

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._terms)

    def pairs(self) -> list[tuple[str, str]]:
        """The known ``(kind, value)`` pairs, least recently seen first."""
        return list(self._terms)

    def learn(self, site: str, pairs: Iterable[tuple[str, str]]) -> int:
        """Add the pairs met in one study of ``site``; each new to this process is written
        to the site's file once (:func:`record_terms`). Returns the number written."""
        fresh: list[tuple[str, str]] = []
        for kind, value in pairs:
            if not _valid(kind, value):
                continue
            key = (kind, value)
            self._terms.pop(key, None)
            self._terms[key] = None
            if key not in self._written:
                self._written.add(key)
                fresh.append(key)
        while len(self._terms) > MAX_TERMS_PER_RUN:
            self._terms.popitem(last=False)
        if len(self._written) > 4 * MAX_TERMS_PER_RUN:
            self._written.clear()  # bounded too: a term may be written once more, no harm
        return record_terms(self.project, site, fresh)
