"""A DIR reached over DICOMweb: QIDO-RS to catalog (date range, paged), WADO-RS to retrieve.

Setting: ``dicomweb://host:port/path`` (HTTP) or ``dicomwebs://host:port/path`` (HTTPS), with
options ``page`` (QIDO-RS page size, default 500) and ``timeout`` (seconds, default 60).

QIDO-RS servers rarely return sequences (Orthanc does not return Other Patient IDs Sequence), so
the catalog marks the health number as unknown when it is absent, and the per-study work reads the
subject key from the retrieved headers instead (see
:func:`ridl.sources.hn.subject_from_headers`).

The ``dicomweb`` and ``dicomwebs`` back-ends of :data:`ridl.sources.base.SOURCES`, imported only
when such a source is opened (it imports dicomweb-client). The services are those of PS3.18:
QIDO-RS Search for Studies (with ``limit``/``offset`` paging) and WADO-RS Retrieve Study.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from ridl.errors import ConfigError, RidlError, StudyUndeliverable
from ridl.projects import DEFAULT_HN_ISSUER
from ridl.reasons import Reason
from ridl.sources.base import SourceAddress
from ridl.sources.dimse import clear_folder, dicom_date, settle_hn_known, study_row
from ridl.sources.protect import ArchiveGuard, ArchiveLimits, ArchiveUnavailable
from ridl.studies import StudyRef

log = logging.getLogger(__name__)

OPTIONS = {"page", "timeout"}
STUDY_FIELDS = [
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]
BUSY = {429, 502, 503, 504}
# Retrieval: busy answers (and a request the server timed out, 408) are retried; any other HTTP
# error is the server's answer about the study (a 500 where it cannot convert an object, a 404
# where the study is gone or its UID is held under two patients) and fails it for good.
RETRIEVE_BUSY = BUSY | {408}
# WADO-RS Retrieve Study (PS3.18 8.7.3.5, 10.4.1): every instance as the server holds it, never
# converted (a server that must decompress answers 500 where it cannot, or sends objects larger
# than the archive's own).
AS_STORED = (("application/dicom", "*"),)
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CHUNK = 1 << 20  # bytes read from the HTTP stream at a time
# Series of one study fetched at once (each request holding a slot of the archive's cap).
SERIES_AT_ONCE = 4


def write_multipart(reply: requests.Response, folder: Path) -> list[Path]:
    """Write each part of a ``multipart/related`` WADO-RS answer (PS3.18 8.7.3.5: one Part 10
    file per instance) into ``folder`` as ``NNNNNN.dcm``, as the bytes arrive.

    Nothing is decoded and no part is held whole in memory: each part's body goes to its file
    chunk by chunk (:data:`CHUNK` bytes), keeping back only as many bytes as a boundary
    delimiter could straddle. Returns the paths written, in the order received.

    Raises:
        ArchiveUnavailable: the answer is not multipart/related with a boundary, or ended
            inside a part (the transfer was cut off).
    """
    content_type = reply.headers.get("Content-Type", "")
    boundary = ""
    for item in content_type.split(";")[1:]:
        key, _, value = item.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not content_type.lower().startswith("multipart/related") or not boundary:
        raise ArchiveUnavailable("WADO-RS answer is not multipart/related")
    delimiter = b"\r\n--" + boundary.encode("ascii")
    paths: list[Path] = []
    buffer = bytearray(b"\r\n")  # the first boundary line has no CRLF before it
    out: Any = None  # the open file of the current part, or None between parts
    in_headers = False
    finished = False
    try:
        for chunk in reply.iter_content(chunk_size=CHUNK):
            buffer += chunk
            while True:
                if out is None and not in_headers:
                    at = buffer.find(delimiter)
                    if at < 0:
                        break
                    rest = buffer[at + len(delimiter) :]
                    if len(rest) < 2:
                        break
                    if rest[:2] == b"--":  # the close delimiter: no more parts
                        finished = True
                        buffer.clear()
                        break
                    del buffer[: at + len(delimiter)]
                    in_headers = True
                if in_headers:
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    del buffer[: end + 4]
                    in_headers = False
                    path = folder / f"{len(paths) + 1:06d}.dcm"
                    paths.append(path)
                    out = path.open("wb")
                at = buffer.find(delimiter)
                if at < 0:  # write all but what a delimiter could straddle
                    keep = len(delimiter) - 1
                    if len(buffer) > keep:
                        out.write(buffer[: len(buffer) - keep])
                        del buffer[: len(buffer) - keep]
                    break
                out.write(buffer[:at])
                out.close()
                out = None
                del buffer[:at]
            if finished:
                break
    finally:
        if out is not None:
            out.close()
    if not finished:
        raise ArchiveUnavailable("WADO-RS transfer cut off")
    return paths


class DicomwebSource:
    """QIDO-RS study search and WADO-RS study retrieval, inside the archive's limits.

    Built from a parsed ``dicomweb[s]://host:port/path?page=N&timeout=S`` setting: ``page`` is
    the QIDO-RS page size (studies, default 500), ``timeout`` the HTTP timeout (seconds, default
    60). ``requests_made`` counts HTTP attempts, retries included.

    Raises:
        ConfigError: an unknown option, or ``page``/``timeout`` not numbers, or ``page`` < 1.
    """

    def __init__(
        self, address: SourceAddress, limits: ArchiveLimits, hn_issuer: str = DEFAULT_HN_ISSUER
    ) -> None:
        opts = address.checked_options(OPTIONS)
        try:
            self.page = int(opts.get("page", "500"))
            self.timeout = float(opts.get("timeout", "60"))
        except ValueError:
            raise ConfigError("--source options page and timeout are numbers") from None
        if self.page < 1:
            raise ConfigError("--source option page must be at least 1")
        http = "https" if address.scheme == "dicomwebs" else "http"
        path = address.path.rstrip("/")
        self.base_url = f"{http}://{address.host}:{address.port}{path}"
        query = f"?{urlencode(sorted(opts.items()))}" if opts else ""
        self.url = f"{address.scheme}://{address.host}:{address.port}{path}{query}"
        self.hn_issuer = hn_issuer
        self.guard = ArchiveGuard(limits, f"host:{address.host}")
        self._client: DICOMwebClient | None = None
        self.requests_made = 0

    @classmethod
    def from_address(
        cls, address: SourceAddress, limits: ArchiveLimits, hn_issuer: str
    ) -> DicomwebSource:
        """The source of a parsed ``--source`` setting, inside the archive ``limits``.

        Raises:
            ConfigError: an unknown option or a malformed value (naming ``--source``).
        """
        return cls(address, limits, hn_issuer)

    @property
    def client(self) -> DICOMwebClient:
        """The DICOMweb client, built on first use, with its own HTTP retries off."""
        if self._client is None:
            self._client = DICOMwebClient(self.base_url, timeout=self.timeout)
            # Retries are the guard's job: it backs off within the archive's limits and says
            # when it gives up; the client's own retries would hide a down archive for ~30 s.
            self._client.set_http_retry_params(retry=False)
        return self._client

    def close(self) -> None:
        """Close pooled HTTP connections (a server waits for idle keep-alive ones to end)."""
        if self._client is not None:
            self._client._session.close()
            self._client = None

    def _request(self, what: str, call: Any) -> Any:
        """One HTTP request inside the limits; busy or unreachable servers are retried."""

        def attempt() -> Any:
            self.requests_made += 1
            try:
                return call()
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else 0
                if code in BUSY or code >= 500:
                    raise ArchiveUnavailable(f"HTTP {code}") from None
                # The URL names a study: keep it out of the message.
                raise RidlError(f"the archive refused {what} with HTTP {code}") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise ArchiveUnavailable(type(exc).__name__) from None

        return self.guard.call(attempt, what)

    # --- catalog ----------------------------------------------------------------------------

    def _pages(self, date_from: dt.date, date_to: dt.date) -> Iterator[list[dict[str, Any]]]:
        filters = {"StudyDate": f"{dicom_date(date_from)}-{dicom_date(date_to)}"}
        offset = 0
        previous: list[dict[str, Any]] = []
        while True:
            page: list[dict[str, Any]] = self._request(
                "QIDO-RS",
                lambda o=offset: self.client.search_for_studies(
                    search_filters=filters, fields=STUDY_FIELDS, limit=self.page, offset=o
                ),
            )
            if not page:
                return
            if page == previous:  # a server that ignores offset would loop forever
                raise RidlError("the archive's QIDO-RS ignores offset; paging is not possible")
            previous = page
            yield page
            offset += len(page)

    def build_catalog(self, catalog_dir: Path, date_from: dt.date, date_to: dt.date) -> None:
        """Page through QIDO-RS answers for the window and write the study table.

        The window is inclusive (a StudyDate range); rows repeated across pages are kept once.

        Raises:
            ArchiveUnavailable: the server stayed busy (HTTP 429, 5xx) or unreachable past the
                retries of the archive limits.
            RidlError: the server refused the search (another HTTP error), or ignores
                ``offset`` so paging cannot work.
        """
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str, str]] = set()
        for page in self._pages(date_from, date_to):
            for item in page:
                row = study_row(Dataset.from_json(item), self.hn_issuer)
                key = (row["study_uid"], row["issuer"], row["patient_id"])
                if key not in seen:  # a page boundary shifted by a concurrent store
                    seen.add(key)
                    rows.append(row)
        log.info("QIDO-RS: %d studies", len(rows))
        from ridl.catalog import write_study_rows  # Arrow: only when a catalog is written

        write_study_rows(settle_hn_known(rows), catalog_dir, date_from, date_to)

    # --- retrieval --------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Retrieve several studies (a batch) in this thread holding one slot of the archive's
        request cap for the block (the HTTP connection is kept alive between studies)."""
        with self.guard.session():
            yield

    def fetch_study(self, study: StudyRef, workdir: Path) -> list[Path]:
        """WADO-RS the whole study into ``workdir`` (one Part 10 file per instance), asking
        ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*`` so each
        instance arrives in the transfer syntax the server holds it in.

        The study's series are listed first (QIDO-RS ``/studies/{uid}/series``). A study of
        several series is fetched series by series (PS3.18 10.4, ``/studies/{uid}/series/{uid}``),
        up to :data:`SERIES_AT_ONCE` at once: this thread (holding its session's slot) and
        helper threads, each only while it holds a further slot of the archive's request cap
        that was free (:meth:`ridl.sources.protect.ArchiveGuard.spare_slot`: a helper never
        waits for one), under the same rate limit and allowed hours. A helper whose request is
        refused hands that series back to this thread, which retries it with back-off. A study
        of one series, or whose series the server will not list, is fetched in one request.

        Returns the paths (``NNNNNN.dcm`` in the order received; under ``series-NNNN/`` folders,
        in the listed order of the series, when fetched series by series).

        Raises:
            StudyUndeliverable: the server answered 404 or delivered nothing
                (``study-not-found``: gone since selection, or its UID is held under two
                patients), or failed the retrieval with an HTTP error that is not busy
                (``retrieval-failed``: a 4xx, a 500).
            ArchiveUnavailable: the server stayed busy (HTTP 408, 429, 502, 503, 504) or
                unreachable, or cut the transfer off, past the retries of the archive limits.
        """
        series = self._series_of(study)
        study_path = f"/studies/{study.study_uid}"
        if len(series) <= 1:
            result: list[Path] = self._request(
                "WADO-RS", lambda: self._retrieve(study_path, workdir)
            )
            return result
        clear_folder(workdir)
        folders = {uid: workdir / f"series-{i:04d}" for i, uid in enumerate(series)}
        todo = list(reversed(series))  # popped from the end: the listed order
        done: dict[str, list[Path]] = {}
        failed: list[BaseException] = []
        lock = threading.Lock()

        def take() -> str | None:
            with lock:
                return todo.pop() if todo and not failed else None

        def fetch(uid: str) -> list[Path]:
            return self._retrieve(f"{study_path}/series/{uid}", folders[uid])

        def helper() -> None:
            with self.guard.spare_slot() as held:
                while held and (uid := take()) is not None:
                    self.requests_made += 1
                    try:
                        done[uid] = self.guard.attempt(functools.partial(fetch, uid), "WADO-RS")
                    except ArchiveUnavailable:
                        with lock:
                            todo.append(uid)  # this thread retries it, with back-off
                        return
                    except BaseException as exc:  # noqa: BLE001 - raised by this thread below
                        with lock:
                            failed.append(exc)
                        return

        helpers = [
            threading.Thread(target=helper, name="ridl-wado-series", daemon=True)
            for _ in range(min(SERIES_AT_ONCE, len(series)) - 1)
        ]
        for thread in helpers:
            thread.start()
        try:
            while True:
                while (uid := take()) is not None:
                    done[uid] = self._request("WADO-RS", functools.partial(fetch, uid))
                alive = any(thread.is_alive() for thread in helpers)
                with lock:
                    handed_back = bool(todo) and not failed
                if not alive and not handed_back:
                    break
                for thread in helpers:
                    thread.join(timeout=0.05)
        finally:
            with lock:
                todo.clear()  # a helper still fetching stops after its current series
            for thread in helpers:
                thread.join()
        if failed:
            raise failed[0]
        return [path for uid in series for path in done.get(uid, [])]

    def _series_of(self, study: StudyRef) -> list[str]:
        """The study's Series Instance UIDs (QIDO-RS ``/studies/{uid}/series``, asked as is:
        archives hold UIDs that do not conform, which a client's own checks would refuse), in
        the server's order; [] when the server will not list them (the study is then fetched in
        one request, which says why).

        Raises:
            ArchiveUnavailable: the server stayed busy or unreachable past the retries.
        """

        def search() -> list[dict[str, Any]]:
            try:
                reply = self.client._session.get(
                    f"{self.base_url}/studies/{study.study_uid}/series",
                    params={"includefield": "0020000E"},
                    headers={"Accept": "application/dicom+json"},
                    timeout=self.timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise ArchiveUnavailable(type(exc).__name__) from None
            if reply.status_code in BUSY or reply.status_code >= 500:
                raise ArchiveUnavailable(f"HTTP {reply.status_code}")
            if reply.status_code != 200 or not reply.content:
                return []  # refused or nothing (204): the study-level request answers for it
            try:
                found = reply.json()
            except ValueError:
                return []
            return found if isinstance(found, list) else []

        found: list[dict[str, Any]] = self._request("QIDO-RS", search)
        uids: list[str] = []
        for item in found:
            if not isinstance(item, dict):
                continue
            value = (item.get("0020000E") or {}).get("Value") or []
            if value and str(value[0]) not in uids:
                uids.append(str(value[0]))
        return uids

    def _retrieve(self, path: str, folder: Path) -> list[Path]:
        """One WADO-RS request of ``path`` (under the base URL) written into ``folder``, emptied
        first; see :meth:`fetch_study` for what it raises."""
        clear_folder(folder)
        try:
            reply = self.client._session.get(
                f"{self.base_url}{path}",
                headers={"Accept": ACCEPT_AS_STORED},
                stream=True,
                timeout=self.timeout,
            )
            with reply:
                reply.raise_for_status()
                paths = write_multipart(reply, folder)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in RETRIEVE_BUSY:
                raise ArchiveUnavailable(f"HTTP {code}") from None
            if code == 404:
                # Gone since selection (an IOCM deletion), or its UID is held under two
                # patients and the server will not choose (Orthanc's DICOMweb plugin).
                raise StudyUndeliverable(Reason.STUDY_NOT_FOUND, "WADO-RS HTTP 404") from None
            raise StudyUndeliverable(Reason.RETRIEVAL_FAILED, f"WADO-RS HTTP {code}") from None
        except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError):
            raise ArchiveUnavailable("WADO-RS transfer cut off") from None
        if not paths:
            raise StudyUndeliverable(Reason.STUDY_NOT_FOUND, "WADO-RS delivered nothing")
        return paths

    def release_study(self, study: StudyRef, workdir: Path) -> None:
        """Remove the study's working folder and what was retrieved into it."""
        shutil.rmtree(workdir, ignore_errors=True)
