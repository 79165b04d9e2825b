"""Retrieval in a process of its own: a worker's DIMSE retrievals run beside its work, not in it.

A DIMSE retrieval is CPU work in Python (pynetdicom decodes every C-STORE request and encodes
every response), so a prefetch thread in the worker's process competes with the study being
worked on for one interpreter lock: a thread overlaps the network waits, not that work. A
:class:`RetrievalProcess` moves the source's ``session()`` and ``fetch_study()`` into a child
Python process (``python -m flows.retrieval``), one per worker, started on first use and kept
for the worker's life; :class:`flows.work.Prefetcher` drives it exactly as it drives the source
in a thread. The child opens the same source (``open_source`` of the run's ``--source``, limits
and health-number issuer), so every archive protection holds as before: the association cap is
shared through ``RIDL_HOME/locks``, the rate limit and allowed hours apply in the child, retries
and back-off run there. The retrieved files go to the working folder the worker made
(owner-only), and the child answers with their paths or the error, never with a value read
from an object.

The protocol is pickled frames over the child's standard input and output (the child's own
prints and logs go to its standard error): first ``(source_url, limits, hn_issuer)``, then
commands ``("open",)``, ``("fetch", StudyRef, workdir)``, ``("close",)``, each answered with
``("ok", result)`` or ``("error", exception)``. The child ends when its input closes (the
worker ended or closed it), so a killed worker leaves no retrieval behind (after the request
in flight, if any); it runs in a process group of its own, so Ctrl-C at the terminal reaches
the run, whose stop ends it with the run's other descendants (:mod:`flows.stopping`), and never
prints a traceback from it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ridl.errors import TransientError
from ridl.sources.protect import ArchiveLimits
from ridl.studies import StudyRef


class RetrievalProcessEnded(TransientError):
    """The retrieval process ended or answered nothing (killed, out of memory): the batch may
    be retried (:mod:`flows.transient`), and a new process is started for it."""


class RetrievalProcess:
    """A worker's retrievals, in a child process: ``session()`` and ``fetch_study()`` as the
    source's own (:class:`ridl.sources.base.StudySource`), run there.

    One session at a time: a second caller's ``session()`` waits for the first to end (a worker
    runs one batch at a time; see :func:`retrieval_process`). The child is started on first
    use. A child that ended (killed, out of memory) is reported once, by the command that finds
    it gone (:class:`RetrievalProcessEnded`, transient: the batch is retried), and the next
    command starts another.

    Raises:
        RetrievalProcessEnded: the child ended, or could not be started.
    """

    def __init__(self, source_url: str, limits: ArchiveLimits, hn_issuer: str) -> None:
        self.config = (source_url, limits, hn_issuer)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one command at a time on the pipes
        self._session = threading.Lock()  # one session at a time in the child
        # No atexit hook: when the worker ends or drops this object (its run is over), the
        # pipes close with it and the child, reading end of input, exits by itself.

    def _child(self) -> subprocess.Popen[bytes]:
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc
            raise self._gone()  # killed between commands
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flows.retrieval"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_child_env(),
                # A group of its own: Ctrl-C at the terminal goes to the run's group, whose stop
                # ends this process (flows.stopping kills every descendant) or closes its input.
                process_group=0,
            )
        except OSError as exc:
            raise RetrievalProcessEnded(f"the retrieval process could not start ({exc})") from None
        assert proc.stdin is not None
        pickle.dump(self.config, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.flush()
        self._proc = proc
        return proc

    def _ask(self, *command: object) -> Any:
        with self._lock:
            proc = self._child()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                pickle.dump(command, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                proc.stdin.flush()
                status, result = pickle.load(proc.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):
                raise self._gone() from None  # died in the middle of the command
        if status == "error":
            raise result
        return result

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The source's session (one association slot, one association), held in the child.

        Raises:
            RetrievalProcessEnded: the child ended.
            ArchiveUnavailable: as the source's session.
        """
        with self._session:
            self._ask("open")
            try:
                yield
            finally:
                if self._proc is not None and self._proc.poll() is None:
                    self._ask("close")

    def fetch_study(self, study: StudyRef, workdir: Path) -> list[Path]:
        """The source's ``fetch_study``, run in the child: the paths of the files it wrote into
        ``workdir`` (which the caller made).

        Raises:
            RetrievalProcessEnded: the child ended.
            StudyUndeliverable, ArchiveUnavailable, ConfigError: as the source's.
        """
        return [Path(p) for p in self._ask("fetch", study, str(workdir))]

    def close(self) -> None:
        """End the child (its input is closed; it exits), if one runs."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._end(proc)

    def _gone(self) -> RetrievalProcessEnded:
        """Forget the child that ended (said once: the next command starts another)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._end(proc)
        status = None if proc is None else proc.returncode
        return RetrievalProcessEnded(f"the retrieval process ended (exit status {status})")

    @staticmethod
    def _end(proc: subprocess.Popen[bytes]) -> None:
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# This process's retrieval processes, one per source setting: shared by the runs a long-lived
# worker (a Dask worker) takes one after another, so that a C-MOVE receiver's port, which the
# retrieval process holds while it lives, is held once.
_PROCESSES: dict[tuple[str, ArchiveLimits, str], RetrievalProcess] = {}
_PROCESSES_LOCK = threading.Lock()


def retrieval_process(source_url: str, limits: ArchiveLimits, hn_issuer: str) -> RetrievalProcess:
    """This process's :class:`RetrievalProcess` for a source setting (made on first use; its
    child starts on its first command)."""
    key = (source_url, limits, hn_issuer)
    with _PROCESSES_LOCK:
        found = _PROCESSES.get(key)
        if found is None:
            found = _PROCESSES[key] = RetrievalProcess(source_url, limits, hn_issuer)
        return found


def close_all() -> None:
    """End every retrieval process this process started (their sources' ports are let go)."""
    with _PROCESSES_LOCK:
        processes = list(_PROCESSES.values())
        _PROCESSES.clear()
    for process in processes:
        process.close()


def _child_env() -> dict[str, str]:
    """The worker's environment, with this checkout importable (``-m flows.retrieval``)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it crosses a process as itself, else a RuntimeError naming only its type (an
    exception's message is never trusted to be free of values read from an object)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"retrieval failed in the retrieval process ({type(exc).__name__})")
    return exc


def serve(commands: IO[bytes], answers: IO[bytes]) -> None:
    """The child's loop: read the source's settings, then answer commands until input ends."""
    from ridl.sources.base import open_source

    source_url, limits, hn_issuer = pickle.load(commands)
    source = open_source(source_url, limits, hn_issuer)
    session: contextlib.ExitStack | None = None
    while True:
        try:
            command = pickle.load(commands)
        except EOFError:
            break
        answer: tuple[str, object]
        try:
            if command[0] == "open":
                session = contextlib.ExitStack()
                session.enter_context(source.session())  # type: ignore[attr-defined]
                answer = ("ok", None)
            elif command[0] == "close":
                stack, session = session, None
                if stack is not None:
                    stack.close()
                answer = ("ok", None)
            elif command[0] == "fetch":
                files = source.fetch_study(command[1], Path(command[2]))
                answer = ("ok", [str(p) for p in files])
            else:
                answer = ("error", RuntimeError("unknown retrieval command"))
        except Exception as exc:
            answer = ("error", _portable(exc))
        try:
            pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
            answers.flush()
        except (BrokenPipeError, OSError):
            break  # the worker is gone: nobody to answer
    if session is not None:
        session.close()


def main() -> None:
    """``python -m flows.retrieval``: serve a worker over standard input and output."""
    # An interrupt is the run's to act on (it stops this process or closes its input).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    commands = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to standard error, never into the answers
    serve(commands, answers)


if __name__ == "__main__":
    main()
