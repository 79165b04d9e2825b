"""Which failures of a batch are worth a retry.

A batch fails as a whole only for reasons outside one object (bad objects are quarantined and
the run goes on): the DIR or the object store is unreachable, busy or throttling. Those pass with
time, so the batch is retried with exponential backoff. Anything else (a bug, a bad setting, a
missing secret) fails the same way every time: retrying would only hide it and load the DIR.
"""

from __future__ import annotations

import errno
from typing import Any

from ridl.errors import TransientError

TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
    errno.EAGAIN,
    errno.EBUSY,
}
# Library exceptions recognised by name, so ridl need not import every client library here.
TRANSIENT_NAMES = {
    "EndpointConnectionError",  # botocore
    "ConnectTimeoutError",  # botocore / urllib3
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ProtocolError",  # urllib3
    "RemoteDisconnected",  # http.client
    "ServiceUnavailable",
    "SlowDown",
}
TRANSIENT_S3_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "503"}


def is_transient(exc: BaseException | None) -> bool:
    """True for failures that may pass if the batch is tried again later."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TransientError | ConnectionError | TimeoutError):
            return True
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        if type(exc).__name__ in TRANSIENT_NAMES:
            return True
        response: Any = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            if code in TRANSIENT_S3_CODES:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_if_transient(task: object, task_run: object, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed batch only for a transient cause."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return is_transient(data)
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # noqa: BLE001 - the state's own exception, examined only
        return is_transient(exc)
    return False
