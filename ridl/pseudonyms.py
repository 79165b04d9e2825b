"""Keyed pseudonyms: research IDs, UIDs and date shifts derived with HMAC from a project secret.

Derivation instead of a lookup table means every worker computes the same pseudonym on its own
(no shared state across a cluster), a rerun gives the same answer, and two projects' pseudonyms
cannot be linked without both secrets.
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
        if self.health_number:
            return "hn:" + self.health_number.strip()
        return "pid:" + self.issuer.strip() + "\x1f" + self.patient_id.strip()


class Pseudonymizer:
    """All keyed derivations of one project."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._uid = lru_cache(maxsize=1_000_000)(self._uid_uncached)

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def research_id(self, subject: SubjectKey) -> str:
        """A short, readable research subject ID, e.g. ``RS-7K2M9QXA4T``."""
        digest = self._mac("subject", subject.canonical())
        return "RS-" + base64.b32encode(digest[:10]).decode().rstrip("=")[:10]

    def date_shift_days(self, subject: SubjectKey) -> int:
        """Days to move every date of this subject back; the same for all their studies."""
        digest = self._mac("shift", subject.canonical())
        return -(1 + int.from_bytes(digest[:4], "big") % MAX_SHIFT_DAYS)

    def uid(self, original: str) -> str:
        """A UID under the 2.25 root (PS3.5 B.2), one-to-one with the original in this project."""
        return self._uid(original)

    def _uid_uncached(self, original: str) -> str:
        digest = self._mac("uid", original.strip().rstrip("\x00"))
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def token(self, purpose: str, value: str, length: int = 12) -> str:
        """A keyed token for other identifiers (accession numbers, opt-out hashes)."""
        digest = self._mac(purpose, value)
        return base64.b32encode(digest).decode().rstrip("=")[:length]
