"""Protecting the clinical archive from a research extraction.

A DIR serves patient care first. Every request ridl makes to it goes through an
:class:`ArchiveGuard`, which holds it to four limits:

- a cap on concurrent associations / HTTP requests, shared by every process on this machine
  (slot files locked with ``flock`` under ``RIDL_HOME/locks``), so more workers never means more
  load on the archive than the cap;
- an optional rate limit (requests per second, per process);
- an optional allowed time window (``19:00-07:00``): outside it, requests wait until it opens;
- retries with exponential backoff when the archive refuses or drops an association, or answers
  "busy" over HTTP, before the error is reported.

Ground floor (``ridl/sources/``): the network back-ends (``dimse``, ``dicomweb``) wrap every
request in a guard; :class:`ArchiveLimits` comes from the command line through ``flows``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TypeVar

from ridl import settings
from ridl.errors import ConfigError, RidlError

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_MAX_ASSOCIATIONS = 2
DEFAULT_RATE_LIMIT = 10.0
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF_S = 2.0
MAX_BACKOFF_S = 300.0


class ArchiveUnavailable(RidlError):
    """The archive refused, dropped or timed out a request: worth retrying later.

    Raised by a request inside :meth:`ArchiveGuard.call` to ask for a retry; raised out of it
    (with the attempt count) once the retries are spent.
    """


@dataclass(frozen=True)
class ArchiveLimits:
    """How hard ridl may press on the archive; small and hashable so it travels to workers.

    ``max_associations``: concurrent associations / HTTP requests on this machine;
    ``rate_limit``: requests per second per process (0: none); ``allowed_hours``: a local-time
    window ``HH:MM-HH:MM`` (None: any time); ``retries``: further attempts after a refusal;
    ``backoff_s``: first back-off in seconds, doubled per failure up to 300 s.

    Raises:
        ConfigError: a value out of range (naming its command-line option), or a malformed
            window (see :func:`parse_window`).
    """

    max_associations: int = DEFAULT_MAX_ASSOCIATIONS
    rate_limit: float = DEFAULT_RATE_LIMIT  # requests per second per process; 0 = no limit
    allowed_hours: str | None = None  # "HH:MM-HH:MM", local time; None = any time
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S

    def __post_init__(self) -> None:
        if self.max_associations < 1:
            raise ConfigError("--max-associations must be at least 1")
        if self.rate_limit < 0:
            raise ConfigError("--rate-limit must be 0 (no limit) or a positive number")
        if self.retries < 0:
            raise ConfigError("--retries must be 0 or more")
        if self.backoff_s < 0:
            raise ConfigError("--backoff must be 0 or more seconds")
        if self.allowed_hours is not None:
            parse_window(self.allowed_hours)


def parse_window(text: str) -> tuple[dt.time, dt.time]:
    """``"19:00-07:00"`` -> (19:00, 07:00); a window may wrap past midnight.

    Returns (start, end) as ``datetime.time``; the end is exclusive.

    Raises:
        ConfigError: the text is not ``HH:MM-HH:MM``, or start and end are the same.
    """
    try:
        start, end = (dt.time.fromisoformat(part.strip()) for part in text.split("-", 1))
    except ValueError:
        raise ConfigError(
            f"--allowed-hours '{text}' is not a window like 19:00-07:00 (HH:MM-HH:MM)"
        ) from None
    if start == end:
        raise ConfigError("--allowed-hours start and end are the same; leave it unset instead")
    return start, end


def seconds_until_allowed(window: str | None, now: dt.datetime) -> float:
    """0 when ``now`` is inside the window, else the seconds until it opens.

    ``window`` is ``HH:MM-HH:MM`` or None (always open); the result is in seconds (float).

    Raises:
        ConfigError: the window is malformed (see :func:`parse_window`).
    """
    if window is None:
        return 0.0
    start, end = parse_window(window)
    t = now.time()
    inside = start <= t < end if start < end else (t >= start or t < end)
    if inside:
        return 0.0
    opens = dt.datetime.combine(now.date(), start, tzinfo=now.tzinfo)
    if opens <= now:
        opens += dt.timedelta(days=1)
    return (opens - now).total_seconds()


class ArchiveGuard:
    """Applies :class:`ArchiveLimits` to every request made to one archive.

    ``archive`` names the archive (``host:<name>``); its hash names the slot-file folder
    ``RIDL_HOME/locks/<hash>`` that every process on this machine shares. ``clock`` and ``sleep``
    (seconds) are there for tests. ``attempts`` and ``refusals`` count requests and refusals.
    """

    def __init__(
        self,
        limits: ArchiveLimits,
        archive: str,
        *,
        clock: Callable[[], dt.datetime] = dt.datetime.now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.sleep = sleep
        digest = hashlib.sha256(archive.encode()).hexdigest()[:16]
        self.lock_dir = settings.ridl_home() / "locks" / digest
        self._rate_lock = threading.Lock()
        # This thread's session slot (a locked slot file) and what closes the session's
        # association when the slot is let go.
        self._local = threading.local()
        self._next_at = 0.0
        self.attempts = 0
        self.refusals = 0

    def wait_for_window(self) -> None:
        """Sleep (in steps of at most ten minutes) until the allowed window is open.

        Raises:
            ConfigError: the window is malformed (see :func:`parse_window`).
        """
        said = False
        while True:
            wait = seconds_until_allowed(self.limits.allowed_hours, self.clock())
            if wait <= 0:
                return
            if not said:
                log.warning(
                    "outside the allowed hours (%s): waiting %.0f min before asking the archive",
                    self.limits.allowed_hours,
                    wait / 60,
                )
                said = True
            self.sleep(min(wait, 600.0))

    def _throttle(self) -> None:
        if self.limits.rate_limit <= 0:
            return
        interval = 1.0 / self.limits.rate_limit
        with self._rate_lock:
            now = time.monotonic()
            start = max(now, self._next_at)
            self._next_at = start + interval
        if start > now:
            self.sleep(start - now)

    def _acquire(self) -> IO[bytes]:
        """Lock one of the ``max_associations`` slot files (polling 10 to 250 ms apart)."""
        delay = 0.01
        while True:
            handle = self._try_acquire()
            if handle is not None:
                return handle
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _try_acquire(self) -> IO[bytes] | None:
        """Lock a free one of the ``max_associations`` slot files now, or None (no waiting)."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.limits.max_associations):
            candidate = open(self.lock_dir / f"slot-{i}.lock", "ab")  # noqa: SIM115
            try:
                fcntl.flock(candidate.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                candidate.close()
                continue
            return candidate
        return None

    @staticmethod
    def _release(handle: IO[bytes]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of ``max_associations`` slots shared by all processes on this machine.

        A context manager; it polls (10 to 250 ms apart) until a slot file can be locked. Inside
        this thread's :meth:`session` it is the session's slot (no second one is taken).
        """
        if getattr(self._local, "held", None) is not None:
            yield
            return
        handle = self._acquire()
        try:
            yield
        finally:
            self._release(handle)

    @contextmanager
    def session(self, on_release: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold one slot across several requests of this thread (one association reused for
        the studies of a batch): :meth:`call` inside it takes no slot of its own.

        The slot is let go while a failed request backs off, and ``on_release`` (closing what
        the session kept open, e.g. the association) runs before that and at the end, so an
        association never stays open without its slot. Sessions do not nest.
        """
        if getattr(self._local, "held", None) is not None:
            raise RuntimeError("ArchiveGuard sessions do not nest")
        self._local.on_release = on_release
        self._local.held = self._acquire()
        try:
            yield
        finally:
            held = self._local.held
            self._local.held = None
            self._local.on_release = None
            try:
                if on_release is not None:
                    on_release()
            finally:
                if held is not None:
                    self._release(held)

    @contextmanager
    def spare_slot(self) -> Iterator[bool]:
        """A further slot for this thread (not in a session) if one is free now: yields True
        while holding it, or False at once when every slot is taken (it never waits, so a
        thread helping a session's work cannot hold up another process's session). Requests
        of this thread inside it go through :meth:`attempt`.
        """
        if getattr(self._local, "held", None) is not None:
            raise RuntimeError("a spare slot is for a thread without a session")
        handle = self._try_acquire()
        if handle is None:
            yield False
            return
        self._local.held = handle
        try:
            yield True
        finally:
            self._local.held = None
            self._release(handle)

    def attempt(self, request: Callable[[], T], what: str) -> T:
        """Run ``request`` once, inside the limits, in this thread's slot (:meth:`session` or
        :meth:`spare_slot`): inside the allowed hours, after the rate limit's wait, never
        retried. For a helper thread that hands a refused request back to the session's thread
        (whose :meth:`call` retries and backs off) instead of waiting for a slot again.

        Raises:
            ArchiveUnavailable: outside the allowed hours, or ``request`` raised it.
            RuntimeError: this thread holds no slot.
            ConfigError: the allowed window is malformed.

        Anything else ``request`` raises passes through.
        """
        if getattr(self._local, "held", None) is None:
            raise RuntimeError("ArchiveGuard.attempt needs this thread's slot")
        if seconds_until_allowed(self.limits.allowed_hours, self.clock()) > 0:
            raise ArchiveUnavailable(f"{what}: outside the allowed hours")
        self._throttle()
        self.attempts += 1
        try:
            return request()
        except ArchiveUnavailable:
            self.refusals += 1
            raise

    def _back_off(self, seconds: float) -> None:
        """Sleep ``seconds`` outside any slot (a session's slot is let go and taken again)."""
        held = getattr(self._local, "held", None)
        if held is None:
            self.sleep(seconds)
            return
        on_release = self._local.on_release
        if on_release is not None:
            on_release()
        self._release(held)
        self._local.held = None
        try:
            self.sleep(seconds)
        finally:
            self._local.held = self._acquire()

    def call(self, request: Callable[[], T], what: str) -> T:
        """Run ``request`` inside the limits, retrying on :class:`ArchiveUnavailable`.

        ``what`` names the request in the error message (never a patient value). Returns what
        ``request`` returns. Between failures it sleeps ``backoff_s * 2**(n-1)`` seconds (at
        most 300), outside the slot (a :meth:`session`'s slot too). Every attempt waits for
        the allowed window and the rate limit, in a session or not.

        Raises:
            ArchiveUnavailable: ``request`` raised it more than ``retries`` times in a row.
            ConfigError: the allowed window is malformed.

        Anything else ``request`` raises passes through at once, without a retry.
        """
        failures = 0
        while True:
            self.wait_for_window()
            with self.slot():
                self._throttle()
                self.attempts += 1
                try:
                    return request()
                except ArchiveUnavailable as exc:
                    self.refusals += 1
                    failures += 1
                    if failures > self.limits.retries:
                        raise ArchiveUnavailable(
                            f"{what}: the archive refused or dropped {failures} attempts in a "
                            f"row ({exc}); check that --source names the archive's host, port "
                            "and AE title and that it is running, then try later, or lower "
                            "--max-associations/--rate-limit"
                        ) from exc
            # Back off outside the slot, so other workers are not held up by this one.
            self._back_off(min(self.limits.backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S))
