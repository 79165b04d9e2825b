"""What Prefect may print on ridl's console: a user error is told once, by ridl, in one line.

A check inside a flow that fails for a reason the user can act on (the PHI gate, a release
that cannot be published, an archive that keeps failing) raises a :class:`ridl.errors.RidlError`
or a :class:`ridl.errors.TransientError`. Prefect's engine logs each such failure itself, at
ERROR with a traceback, once for the task and once more for the flow, before ridl's own
``error:`` line says the same. :class:`UserErrorFilter` keeps those records off the console
handlers only: Prefect's API handler still stores them in the flow run's logs, and an exception
of any other kind (a defect) is still printed with its traceback.

The filter also keeps pynetdicom's own records off the console unless the run is verbose
(``PREFECT_LOGGING_LEVEL`` DEBUG or INFO, as ``ridl run --verbose`` sets it): pynetdicom logs a
refused or dropped association at ERROR, but ridl retries it (``ridl.sources.protect``) and,
once the retries are spent, names it in its own error line or counts the study as failed.

:func:`quiet_user_errors` attaches the filter to the console handlers Prefect configured on the
root logger. ``flows.extract`` calls it when imported, so it holds in the process that starts
the flow and in every worker process (local or Dask) that imports the tasks.
"""

from __future__ import annotations

import logging
import os

from ridl.errors import RidlError, TransientError

# The loggers Prefect's engines write run records to (prefect/logging/logging.yml).
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
USER_ERRORS: tuple[type[BaseException], ...] = (RidlError, TransientError)


def _user_error_names() -> set[str]:
    """The class names of every user error (the classes and all their subclasses, now)."""
    names: set[str] = set()
    todo: list[type[BaseException]] = list(USER_ERRORS)
    while todo:
        cls = todo.pop()
        if cls.__name__ not in names:
            names.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return names


def _verbose() -> bool:
    return os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING").upper() in {"DEBUG", "INFO"}


def is_user_error(record: logging.LogRecord) -> bool:
    """Whether a log record is Prefect's report of a user error: a flow or task run record
    carrying a :data:`USER_ERRORS` exception, or an ERROR record of a run whose message names
    one (``Finished in state Failed('Task run encountered an exception VerificationFailed: ...')``).
    """
    if record.name not in RUN_LOGGERS:
        return False
    if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
        return True
    if record.levelno < logging.ERROR:
        return False
    message = record.getMessage()
    return any(f"{name}:" in message or f"{name}(" in message for name in _user_error_names())


def is_dicom_network_noise(record: logging.LogRecord) -> bool:
    """Whether a record is pynetdicom's own, below CRITICAL, in a run that is not verbose."""
    return (
        (record.name == "pynetdicom" or record.name.startswith("pynetdicom."))
        and record.levelno < logging.CRITICAL
        and not _verbose()
    )


class UserErrorFilter(logging.Filter):
    """A handler filter that drops Prefect's records of user errors (:func:`is_user_error`)
    and pynetdicom's records of what ridl retries and reports itself
    (:func:`is_dicom_network_noise`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record the console should not show (the handler skips it)."""
        return not (is_user_error(record) or is_dicom_network_noise(record))


def quiet_user_errors() -> None:
    """Attach one :class:`UserErrorFilter` to each console (stream) handler of the root logger.

    Idempotent; handlers that write elsewhere (Prefect's API handler) are left alone.
    """
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.StreamHandler):
            continue
        if not any(isinstance(f, UserErrorFilter) for f in handler.filters):
            handler.addFilter(UserErrorFilter())
