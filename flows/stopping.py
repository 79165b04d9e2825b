"""Stopping a run: SIGTERM or Ctrl-C ends ``ridl run`` promptly and leaves it resumable.

Why a hard stop: a run's work is done by worker processes (the local process pool) under
Prefect, and unwinding politely waits for every batch in flight to finish (minutes on a large
study), while a dead worker can keep the pool waiting for good. Nothing a run writes needs that
wait: objects and parts are written to a temporary name and renamed (whole or absent), the
selection is frozen once, and a rerun of the release resumes from what is done. So on the first
SIGTERM or SIGINT the run kills its worker processes (and any other child, e.g. Prefect's
ephemeral API server), lets go of the release's lock, prints one line naming the command that
resumes it, and exits with 128 + the signal number.

The one step that is never cut short is publishing (signing and writing the release's manifest
files): a signal that arrives during :func:`deferred` is acted on when the block ends, so a
release is either published whole or not at all.

Prefect replaces the SIGTERM handler while a flow runs with one that raises
``TerminationSignal`` in the main thread; :func:`stop_on_termination` turns that exception into
the same hard stop where the flow waits for its batches, and otherwise Prefect re-sends the
signal to the handler installed here once it has unwound.

Application floor (``flows/``): the CLI installs the handlers around a run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import NoReturn

import psutil

from ridl.releases import lock_holder, lock_path

# What to say and release when a stop comes (set by :func:`handle_stops`, one run per process).
_resume_line: str | None = None
_release: tuple[str, str] | None = None
_deferring = 0
_pending: int | None = None


def kill_children(grace: float = 2.0) -> None:
    """Terminate every descendant process of this one, then kill what is left after ``grace``
    seconds (a worker stuck in a system call, or one that ignores SIGTERM)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=grace)


def stop_now(signum: int) -> NoReturn:
    """Stop the run: kill the workers, release the lock if this process holds it, print how to
    resume (one line on standard error), and exit with ``128 + signum`` (143 for SIGTERM)."""
    kill_children()
    if _release is not None:
        project, release = _release
        with contextlib.suppress(Exception):
            holder = lock_holder(project, release)
            if holder is not None and holder.get("pid") == os.getpid():
                lock_path(project, release).unlink()
    name = signal.Signals(signum).name
    what = f" of {_release[0]}/{_release[1]}" if _release else ""
    message = f"stopped: the run{what} was interrupted by {name} before publishing; nothing "
    message += "was published and what is done is kept"
    if _resume_line:
        message += f"; to resume: {_resume_line}"
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    os._exit(128 + signum)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _deferring:
        _pending = signum  # publishing: act when it is done
        return
    stop_now(signum)


@contextlib.contextmanager
def handle_stops(project: str, release: str, resume_line: str) -> Iterator[None]:
    """Stop the run on SIGTERM or SIGINT while the block runs (see the module docstring).

    ``resume_line`` is the command that resumes the run, printed on a stop. Only in the main
    thread (signal handlers cannot be set elsewhere); the previous handlers come back after.
    """
    global _resume_line, _release
    _resume_line, _release = resume_line, (project, release)
    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _resume_line, _release = None, None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold off a stop while the block runs (publishing); a signal that came meanwhile stops
    the run when the block ends. Prefect's own SIGTERM handler is set aside for the block."""
    global _deferring, _pending
    previous = None
    with contextlib.suppress(ValueError):
        previous = signal.signal(signal.SIGTERM, _handler)
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if _pending is not None and not _deferring:
            signum, _pending = _pending, None
            if _release is not None:
                stop_now(signum)
            os.kill(os.getpid(), signum)  # no run handlers (a deployment): Prefect's turn


@contextlib.contextmanager
def stop_on_termination() -> Iterator[None]:
    """Inside a flow: turn Prefect's ``TerminationSignal`` (SIGTERM) or a ``KeyboardInterrupt``
    into :func:`stop_now` when a run's handlers are installed, instead of unwinding through
    the task runner (which waits for every batch in flight)."""
    try:
        yield
    except KeyboardInterrupt:
        if _release is None:
            raise
        stop_now(signal.SIGINT)
    except BaseException as exc:
        number = getattr(exc, "signal", None)
        if _release is None or type(exc).__name__ != "TerminationSignal" or number is None:
            raise
        stop_now(int(number))
