"""Keyed pseudonyms: research IDs, UIDs and date shifts derived with HMAC from a project secret.

Derivation instead of a lookup table means every worker computes the same pseudonym on its own
(no shared state across a cluster), a rerun gives the same answer, and two projects' pseudonyms
cannot be linked without both secrets.

Ground floor (``ridl/``): pure functions of the secret, used by the opt-out list, the
de-identification engine (``deid_recipes``) and the per-study work (``flows``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

# Shifts move dates into the past by 1 to MAX_SHIFT_DAYS days, same for all of a subject's studies.
MAX_SHIFT_DAYS = 3650


@dataclass(frozen=True)
class SubjectKey:
    """Who a study belongs to, across sites.

    The health number links one person's studies across hospitals; without it the patient couplet
    (Issuer of Patient ID, Patient ID) is the only safe key, since two sites may reuse a Patient ID.
    """

    health_number: str | None
    issuer: str
    patient_id: str

    def canonical(self) -> str:
        """The key as one string: ``hn:<health number>``, else ``pid:<issuer>\x1f<Patient ID>``."""
        if self.health_number:
            return "hn:" + self.health_number.strip()
        return "pid:" + self.issuer.strip() + "\x1f" + self.patient_id.strip()


RESEARCH_ID_PREFIX = "RS-"  # every research subject ID starts so; the store keys its objects by it


class Pseudonymizer:
    """All keyed derivations of one project (HMAC-SHA-256 keyed with its secret, bytes)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._uid = lru_cache(maxsize=1_000_000)(self._uid_uncached)

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def research_id(self, subject: SubjectKey) -> str:
        """A short, readable research subject ID, e.g. ``RS-7K2M9QXA4T``.

        ``RS-`` and 10 base32 characters (50 bits of the subject key's HMAC).
        """
        digest = self._mac("subject", subject.canonical())
        return RESEARCH_ID_PREFIX + base64.b32encode(digest[:10]).decode().rstrip("=")[:10]

    def date_shift_days(self, subject: SubjectKey) -> int:
        """Days to move every date of this subject back; the same for all their studies.

        A negative whole number of days, from -1 to -``MAX_SHIFT_DAYS`` (-3650).
        """
        digest = self._mac("shift", subject.canonical())
        return -(1 + int.from_bytes(digest[:4], "big") % MAX_SHIFT_DAYS)

    def uid(self, original: str) -> str:
        """A UID under the 2.25 root (PS3.5 B.2), one-to-one with the original in this project.

        ``2.25.`` and the decimal of 128 bits of the HMAC (at most 64 characters, PS3.5 9.1);
        trailing NUL padding of the original is ignored. Cached (up to a million UIDs).
        """
        return self._uid(original)

    def _uid_uncached(self, original: str) -> str:
        digest = self._mac("uid", original.strip().rstrip("\x00"))
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def token(self, purpose: str, value: str, length: int = 12) -> str:
        """A keyed token for other identifiers (accession numbers, opt-out hashes).

        ``length`` base32 characters (at most 52, 5 bits each) of the HMAC of ``purpose`` and
        ``value``; different purposes give unrelated tokens.
        """
        digest = self._mac(purpose, value)
        return base64.b32encode(digest).decode().rstrip("=")[:length]
