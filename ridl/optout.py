"""The opt-out list: research subjects who withdrew, kept only as keyed hashes.

An entry is the project's keyed token (HMAC with the project secret, see
:meth:`ridl.pseudonyms.Pseudonymizer.token`) of a subject key: a health number, or an
(Issuer of Patient ID, Patient ID) couplet. The list never holds an identifier in clear text, a
token of one project cannot be matched against another project's list, and checking a study costs
two HMACs. Selection drops matching studies; the per-study work checks again with the identity
read from the retrieved headers, so a withdrawal recorded while a run is going is still honoured.

Ground floor (``ridl/``): :mod:`ridl.catalog` filters selections with it; ``flows`` carries a
snapshot of the tokens to workers in the run context.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ridl import settings
from ridl.errors import ConfigError
from ridl.pseudonyms import Pseudonymizer, SubjectKey
from ridl.secrets import load_secret

PURPOSE = "optout"
TOKEN_LENGTH = 32


def optout_path(project_id: str) -> Path:
    """The project's list, ``RIDL_HOME/projects/<project>.optout.tsv`` (token, tab, date added)."""
    return settings.projects_dir() / f"{project_id}.optout.tsv"


def subject_tokens(
    keys: Pseudonymizer, health_number: str | None, issuer: str | None, patient_id: str | None
) -> list[str]:
    """Tokens a study's subject can match: its health number and its patient couplet.

    A list of 0 to 2 tokens (32 characters of base32 each): one for a non-blank health number,
    one for a non-blank Patient ID with its Issuer of Patient ID.
    """
    tokens = []
    if health_number and str(health_number).strip():
        hn_key = SubjectKey(str(health_number), "", "").canonical()
        tokens.append(keys.token(PURPOSE, hn_key, TOKEN_LENGTH))
    if patient_id and str(patient_id).strip():
        couplet = SubjectKey(None, str(issuer or ""), str(patient_id)).canonical()
        tokens.append(keys.token(PURPOSE, couplet, TOKEN_LENGTH))
    return tokens


@dataclass(frozen=True)
class OptOutEntry:
    """One line of the list: a keyed token and the ISO date (``YYYY-MM-DD``) it was added."""

    token: str
    added: str


class OptOutList:
    """A project's opt-out tokens, with the keys to test a study against them.

    ``path`` is the list file to follow (None: a fixed list); ``snapshot`` is tokens carried
    with the run, always kept whatever the file says. ``len()`` is the number of tokens.
    """

    def __init__(
        self,
        keys: Pseudonymizer,
        entries: list[OptOutEntry],
        path: Path | None = None,
        snapshot: Iterable[str] = (),
    ) -> None:
        self.keys = keys
        self.entries = entries
        # Tokens handed over with the run (a worker with no shared disk sees no list file).
        self._snapshot = frozenset(snapshot)
        self._tokens = self._snapshot | {e.token for e in entries}
        self.path = path
        self._stamp = _stamp(path)

    @property
    def tokens(self) -> frozenset[str]:
        """Every token in force: the snapshot's and the list's as last read."""
        return frozenset(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def refresh(self) -> None:
        """Re-read the list if it changed on disk (a withdrawal recorded during a run)."""
        if self.path is None or _stamp(self.path) == self._stamp:
            return
        self._stamp = _stamp(self.path)
        self.entries = _read_entries(self.path)
        self._tokens = self._snapshot | {e.token for e in self.entries}

    def matches(self, health_number: object, issuer: object, patient_id: object) -> bool:
        """Whether the study's subject withdrew, as the list is on disk now."""
        self.refresh()
        return self.contains(health_number, issuer, patient_id)

    def contains(self, health_number: object, issuer: object, patient_id: object) -> bool:
        """Like :meth:`matches` against the list as loaded (for many rows at once)."""
        if not self._tokens:
            return False
        hn = health_number if isinstance(health_number, str) else None
        tokens = subject_tokens(self.keys, hn, str(issuer or ""), str(patient_id or ""))
        return any(t in self._tokens for t in tokens)


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None or not path.exists():
        return None
    info = path.stat()
    return info.st_mtime_ns, info.st_size


def _read_entries(path: Path) -> list[OptOutEntry]:
    entries: list[OptOutEntry] = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                token, _, added = line.partition("\t")
                entries.append(OptOutEntry(token.strip(), added.strip()))
    return entries


def load_optout(project_id: str, snapshot: Iterable[str] = ()) -> OptOutList:
    """The project's list (empty when nobody has opted out); it follows later changes.

    ``snapshot`` is the list as the run started, carried by the run context to workers that
    have no access to the research office's disk; what is on this machine's disk is added.

    Raises:
        ConfigError: the project has no usable secret (see :func:`ridl.secrets.load_secret`).
    """
    keys = Pseudonymizer(load_secret(project_id))
    path = optout_path(project_id)
    return OptOutList(keys, _read_entries(path), path, snapshot)


def add_optout(
    project_id: str,
    *,
    health_number: str | None = None,
    issuer: str | None = None,
    patient_id: str | None = None,
    today: dt.date | None = None,
) -> int:
    """Record a withdrawal; returns how many new tokens were written (0: already listed).

    Give ``health_number``, or ``issuer`` with ``patient_id``, or all three; the list file is
    rewritten atomically with mode 0600. ``today`` (the date recorded) defaults to the local date.
    Each call is audited (``optout.added``, with the count of new tokens, never an identifier).

    Raises:
        ProjectNotFound: no such project.
        ConfigError: neither a health number nor a Patient ID was given, a Patient ID came
            without its issuer, the project id or file is invalid, or the project has no usable
            secret (see :func:`ridl.secrets.load_secret`).
    """
    from ridl.projects import load_project

    load_project(project_id)  # the project must exist
    if not health_number and not patient_id:
        raise ConfigError("give --hn, or --issuer with --patient-id, to record an opt-out")
    if patient_id and not issuer:
        raise ConfigError("--patient-id needs --issuer: a Patient ID is only unique per issuer")
    current = load_optout(project_id)
    new = [
        t
        for t in subject_tokens(current.keys, health_number, issuer, patient_id)
        if t not in current._tokens
    ]
    from ridl import audit

    if not new:
        audit.record("optout.added", project=project_id, new_tokens=0)
        return 0
    stamp = (today or dt.date.today()).isoformat()
    lines = [f"{e.token}\t{e.added}" for e in current.entries] + [f"{t}\t{stamp}" for t in new]
    path = optout_path(project_id)
    settings.private_dir(path.parent)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# ridl opt-out list: keyed tokens, one per line (token, date added)\n")
        handle.write("\n".join(lines) + "\n")
    tmp.replace(path)
    # Counts only: the keyed tokens stay in the list, never the identifiers.
    audit.record("optout.added", project=project_id, new_tokens=len(new))
    return len(new)
