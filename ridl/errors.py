"""Errors that ridl reports to a person.

Every error here is meant to be shown as-is at the CLI: its message says what is wrong and what to
change, and never carries a value read from a patient's header (PHI stays out of messages).
"""

from __future__ import annotations

from ridl.reasons import Reason


class RidlError(Exception):
    """Base for errors a user can act on; the CLI prints the message without a traceback."""


class ConfigError(RidlError):
    """A setting, a project file or a command-line option is wrong."""


class ProjectChangedOutside(ConfigError):
    """A project file was edited by hand since ridl last wrote it (``ridl project update``
    records changes; ``--accept-edit`` records a hand edit)."""


class ProjectNotFound(RidlError):
    """The named REB project is not in the registry."""


class ScopeError(RidlError):
    """A run asks for something the REB approval does not cover (or the approval has expired)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{message} (change: {field})")


class ReleaseError(RidlError):
    """A release cannot be created, resumed or published as asked."""


class EmptyRelease(ReleaseError):
    """Nothing in the source matches a run's request: the release would be empty (refused
    unless the run asks for an empty release explicitly)."""


def coded_reason(reason: str) -> Reason:
    """``reason`` as a :class:`~ridl.reasons.Reason`, for the errors that carry one.

    Raises:
        ValueError: ``reason`` is not a :class:`~ridl.reasons.Reason` code (a bug in ridl, not a
            property of the input: it must fail loudly in tests).
    """
    try:
        return Reason(reason)
    except ValueError:
        raise ValueError(
            f"{reason!r} is not a ridl reason code; add it to ridl.reasons.Reason and README"
        ) from None


class TransientError(Exception):
    """A failure that may pass if tried again later (DIR busy, network cut, store throttling).

    Sources and stores raise it (or a subclass) for conditions worth a retry with backoff; the
    flow retries batches only for these and for network errors (see ``flows.transient``).
    """


class StudyUndeliverable(RidlError):
    """The archive cannot deliver one study, for a reason that retrying now will not change.

    Raised by a source's ``fetch_study`` when the archive answers about the study itself (the
    study is not found, or the retrieval failed with a status or HTTP code that is not "busy"),
    as opposed to an archive that is down or busy (:class:`ridl.sources.protect.
    ArchiveUnavailable`). The per-study work records the study as failed, with ``reason`` (a
    :class:`~ridl.reasons.Reason` of the ``retrieval`` group) and ``detail`` (a status code,
    never a UID or a name), and the run goes on; ``ridl run --retry-failed`` tries it again.

    Raises:
        ValueError: ``reason`` is not a :class:`~ridl.reasons.Reason` code (a bug in ridl).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = coded_reason(reason), detail
        super().__init__(f"{self.reason}: {detail}" if detail else str(self.reason))

    def __reduce__(self) -> tuple[type[StudyUndeliverable], tuple[str, str]]:
        return type(self), (str(self.reason), self.detail)


class ObjectRejected(Exception):
    """One object cannot be handled: it is quarantined (or excluded) with ``reason``, and the run
    goes on. Every stage that refuses an object raises this (or a subclass), so a worker catches
    one type.

    ``reason`` is a :class:`~ridl.reasons.Reason` (a short code safe to log and count, never a
    value read from the object); ``detail`` says a little more (an exception type, which check),
    also without PHI.

    Raises:
        ValueError: ``reason`` is not a :class:`~ridl.reasons.Reason` code (a bug in ridl, not a
            property of the object: it must fail loudly in tests).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = coded_reason(reason), detail
        super().__init__(f"{self.reason}: {detail}" if detail else str(self.reason))

    def __reduce__(self) -> tuple[type[ObjectRejected], tuple[str, str]]:
        # Rebuilt from (reason, detail), not from the message, when it crosses a process.
        return type(self), (str(self.reason), self.detail)
