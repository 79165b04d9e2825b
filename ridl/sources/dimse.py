"""A DIR reached over DICOM networking (DIMSE): C-FIND to catalog, C-GET or C-MOVE to retrieve.

Setting: ``dimse://CALLED_AET@host:port?calling=RIDL`` with options

- ``retrieval=get`` (default; the images come back on ridl's own association) or ``move`` (the
  archive opens an association to a storage SCP that ridl runs itself, on ``move_port``, under
  ``move_aet``; the archive must know that AE, e.g. Orthanc's ``DicomModalities``);
- ``move_aet``, ``move_port``, ``move_bind`` (listen address, default ``0.0.0.0``);
- ``find_limit``: the archive's cap on C-FIND answers, when it is known (Orthanc's
  ``LimitFindResults``); a capped answer is also recognised by its status, either way the date
  window is split in halves until no window is capped;
- ``timeout``: seconds to wait on the network (default 60).

Every association goes through the source's :class:`~ridl.sources.protect.ArchiveGuard`.

The ``dimse`` back-end of :data:`ridl.sources.base.SOURCES`, imported only when such a source is
opened (it imports pynetdicom). The services are those of PS3.4 Annex C, Study Root
Query/Retrieve Information Model (C.6.2): C-FIND (C.4.1), C-MOVE (C.4.2) and C-GET (C.4.3),
with their status codes. :func:`study_row` and :func:`settle_hn_known` also serve the
``dicomweb`` back-end, whose QIDO-RS answers carry the same attributes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import shutil
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, StoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ridl.catalog import StudyRef, write_study_rows
from ridl.errors import ConfigError, RidlError
from ridl.projects import DEFAULT_HN_ISSUER
from ridl.sources.base import SourceAddress
from ridl.sources.hn import health_number
from ridl.sources.protect import ArchiveGuard, ArchiveLimits, ArchiveUnavailable

log = logging.getLogger(__name__)

OPTIONS = {"calling", "retrieval", "move_aet", "move_port", "move_bind", "find_limit", "timeout"}
TRANSFER_SYNTAXES: list[str | UID] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
PENDING = {0xFF00, 0xFF01}
CAPPED = {0xFE00, 0xA700}  # Orthanc ends a LimitFindResults-capped answer with Cancel
MINUTES_PER_DAY = 24 * 60


def hhmm(minute: int) -> str:
    """A minute of the day (0-1439) as ``HHMM``, for a C-FIND Study Time range."""
    return f"{minute // 60:02d}{minute % 60:02d}"


def dicom_date(value: dt.date) -> str:
    """A date as DICOM's DA value ``YYYYMMDD`` (PS3.5 6.2), for query ranges."""
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def study_row(ident: Dataset, hn_issuer: str) -> dict[str, Any]:
    """One catalog row from a study-level C-FIND (or QIDO-RS) answer.

    A dict with the columns of :data:`ridl.catalog.STUDY_SCHEMA`; ``hn_known`` is whether the
    answer carried Other Patient IDs Sequence (0010,1002); ``locations`` is empty.
    """
    mods = getattr(ident, "ModalitiesInStudy", None)
    modalities = [] if mods is None else ([mods] if isinstance(mods, str) else list(mods))
    return {
        "study_uid": str(getattr(ident, "StudyInstanceUID", "")),
        "study_date": str(getattr(ident, "StudyDate", "")),
        "issuer": str(getattr(ident, "IssuerOfPatientID", "") or ""),
        "patient_id": str(getattr(ident, "PatientID", "") or ""),
        "health_number": health_number(ident, hn_issuer),
        "hn_known": "OtherPatientIDsSequence" in ident,
        "description": str(getattr(ident, "StudyDescription", "") or ""),
        "modalities": sorted({str(m).upper() for m in modalities if str(m)}),
        "n_series": int(getattr(ident, "NumberOfStudyRelatedSeries", 0) or 0),
        "n_instances": int(getattr(ident, "NumberOfStudyRelatedInstances", 0) or 0),
        "locations": [],
    }


def settle_hn_known(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An archive that returned Other Patient IDs Sequence for any study supports it, so a study
    without it has no health number; one that never did may just leave it out (then the per-study
    work reads the headers).

    Sets ``hn_known`` on every row (list of :func:`study_row` dicts) in place and returns it.
    """
    if any(row["hn_known"] for row in rows):
        for row in rows:
            row["hn_known"] = True
    return rows


def study_query(date_range: str, time_range: str | None = None) -> Dataset:
    """A study-level C-FIND identifier: what selection needs, including the patient couplet.

    ``date_range`` is a DA range (``YYYYMMDD`` or ``YYYYMMDD-YYYYMMDD``), ``time_range`` a TM
    range (``HHMMSS-HHMMSS``) or None for the whole day; the other keys are empty, i.e. asked
    to be returned (universal matching, PS3.4 C.2.2.2.3).
    """
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    q.StudyDate = date_range
    q.StudyTime = time_range or ""
    q.PatientID = ""
    q.IssuerOfPatientID = ""
    q.OtherPatientIDsSequence = []  # the health number, if the archive returns it
    q.ModalitiesInStudy = ""
    q.StudyDescription = ""
    q.NumberOfStudyRelatedSeries = ""
    q.NumberOfStudyRelatedInstances = ""
    return q


def clear_folder(folder: Path) -> None:
    """Empty a study's working folder before a (re)try, so a dropped transfer leaves nothing.

    The folder is removed and made again (with its parents).
    """
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


class _StudyWriter:
    """Writes the instances of one study, as received (no decode), into its working folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._n = itertools.count(1)

    def write(self, event: Any) -> int:
        path = self.folder / f"{next(self._n):06d}.dcm"
        path.write_bytes(event.encoded_dataset())
        return 0x0000


class MoveReceiver:
    """ridl's own storage SCP for C-MOVE; routes each instance to its study's working folder.

    It listens on ``bind``:``port`` under AE title ``aet`` (all storage SOP classes of
    PS3.4 Annex B, the transfer syntaxes of :data:`TRANSFER_SYNTAXES`); an instance of a study
    nobody expects is refused with status 0xC000.

    Raises:
        ConfigError: the port cannot be listened on (taken, or not allowed).
    """

    def __init__(self, aet: str, bind: str, port: int) -> None:
        self.routes: dict[str, _StudyWriter] = {}
        self.lock = threading.Lock()
        ae = AE(ae_title=aet)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), TRANSFER_SYNTAXES)
        try:
            self.server = ae.start_server(
                (bind, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for C-MOVE on port {port} ({exc.strerror}); "
                "choose another move_port in --source"
            ) from None

    def _on_store(self, event: Any) -> int:
        uid = str(getattr(event.dataset, "StudyInstanceUID", ""))
        with self.lock:
            writer = self.routes.get(uid)
        if writer is None:
            return 0xC000  # not a study ridl asked for
        return writer.write(event)

    def expect(self, study_uid: str, folder: Path) -> None:
        """Route the instances of ``study_uid`` that arrive from now on into ``folder``."""
        with self.lock:
            self.routes[study_uid] = _StudyWriter(folder)

    def done(self, study_uid: str) -> None:
        """Stop routing ``study_uid`` (later instances of it are refused)."""
        with self.lock:
            self.routes.pop(study_uid, None)


_RECEIVERS: dict[tuple[str, str, int], MoveReceiver] = {}
_RECEIVERS_LOCK = threading.Lock()


def move_receiver(aet: str, bind: str, port: int) -> MoveReceiver:
    """One storage SCP per (AE, address) per process, started on first use.

    Raises:
        ConfigError: the port cannot be listened on (see :class:`MoveReceiver`).
    """
    with _RECEIVERS_LOCK:
        key = (aet, bind, port)
        if key not in _RECEIVERS:
            _RECEIVERS[key] = MoveReceiver(aet, bind, port)
        return _RECEIVERS[key]


class DimseSource:
    """Study-level C-FIND by date window; C-GET or C-MOVE of a study into its working folder.

    Built from a parsed ``dimse://CALLED_AET@host:port?...`` setting (options in the module
    docstring); ``timeout`` is in seconds; ``url`` is the setting rebuilt with sorted options.

    Raises:
        ConfigError: an unknown option, no called AE, ``retrieval`` other than get/move, a
            non-numeric ``move_port``/``find_limit``/``timeout``, move without ``move_port``, or
            an AE title not 1 to 16 characters (PS3.5 6.2, AE value representation).
    """

    def __init__(
        self, address: SourceAddress, limits: ArchiveLimits, hn_issuer: str = DEFAULT_HN_ISSUER
    ) -> None:
        opts = address.checked_options(OPTIONS)
        if not address.user:
            raise ConfigError("--source must name the archive's AE: dimse://CALLED_AET@host:port")
        self.called_aet = address.user
        self.host = address.host
        self.port = address.port
        self.calling_aet = opts.get("calling", "RIDL")
        self.retrieval = opts.get("retrieval", "get").lower()
        if self.retrieval not in {"get", "move"}:
            raise ConfigError("--source option retrieval must be 'get' or 'move'")
        self.move_aet = opts.get("move_aet", self.calling_aet)
        self.move_bind = opts.get("move_bind", "0.0.0.0")
        try:
            self.move_port = int(opts.get("move_port", "0"))
            self.find_limit = int(opts.get("find_limit", "0"))
            self.timeout = float(opts.get("timeout", "60"))
        except ValueError:
            raise ConfigError("--source options move_port, find_limit, timeout: numbers") from None
        if self.retrieval == "move" and not self.move_port:
            raise ConfigError(
                "--source retrieval=move needs move_port (and the archive must know move_aet)"
            )
        for aet in (self.called_aet, self.calling_aet, self.move_aet):
            if not 0 < len(aet) <= 16:
                raise ConfigError("AE titles in --source are 1 to 16 characters")
        self.hn_issuer = hn_issuer
        self.limits = limits
        self.url = f"dimse://{self.called_aet}@{self.host}:{self.port}?" + urlencode(
            sorted(opts.items())
        )
        self.guard = ArchiveGuard(limits, f"host:{self.host}")
        self.windows_queried = 0
        self._get_setup: tuple[AE, list[Any]] | None = None

    # --- associations -----------------------------------------------------------------------

    @classmethod
    def from_address(
        cls, address: SourceAddress, limits: ArchiveLimits, hn_issuer: str
    ) -> DimseSource:
        """The source of a parsed ``--source`` setting, inside the archive ``limits``.

        Raises:
            ConfigError: an unknown option or a malformed value (naming ``--source``).
        """
        return cls(address, limits, hn_issuer)

    def _associate(
        self,
        contexts: list[PresentationContext] | AE,
        ext_neg: list[Any] | None = None,
        handlers: list[Any] | None = None,
    ) -> Association:
        if isinstance(contexts, AE):
            ae = contexts
        else:
            ae = AE(ae_title=self.calling_aet)
            ae.requested_contexts = contexts
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        assoc = ae.associate(
            self.host,
            self.port,
            ae_title=self.called_aet,
            ext_neg=ext_neg,
            evt_handlers=handlers,
        )
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise ArchiveUnavailable(
                f"association rejected (does the archive know calling AE '{self.calling_aet}' "
                f"and called AE '{self.called_aet}'?)"
            )
        # Some archives drop an unknown AE's request instead of rejecting it: name both anyway.
        raise ArchiveUnavailable(
            f"association aborted or not answered (calling AE '{self.calling_aet}', "
            f"called AE '{self.called_aet}')"
        )

    # --- catalog ----------------------------------------------------------------------------

    def _find(self, date_range: str, time_range: str | None) -> tuple[list[Dataset], bool]:
        def request() -> tuple[list[Dataset], bool]:
            ctx = build_context(StudyRootQueryRetrieveInformationModelFind)
            assoc = self._associate([ctx])
            found: list[Dataset] = []
            capped = False
            try:
                query = study_query(date_range, time_range)
                model = StudyRootQueryRetrieveInformationModelFind
                for status, ident in assoc.send_c_find(query, model):
                    if not status:
                        raise ArchiveUnavailable("C-FIND answer cut off (association dropped)")
                    code = int(status.Status)
                    if code in PENDING:
                        if ident is not None:
                            found.append(ident)
                    elif code in CAPPED:
                        capped = True
                    elif code != 0x0000:
                        raise RidlError(f"the archive failed C-FIND with status 0x{code:04X}")
            finally:
                if assoc.is_established:
                    assoc.release()
            if self.find_limit and len(found) >= self.find_limit:
                capped = True
            return found, capped

        self.windows_queried += 1
        return self.guard.call(request, "C-FIND")

    def build_catalog(self, catalog_dir: Path, date_from: dt.date, date_to: dt.date) -> None:
        """C-FIND every study of the window, splitting windows the archive caps.

        A capped window is split in halves by days, then (within one day) by minutes of Study
        Time; the study table (one row per C-FIND answer) goes to ``catalog_dir`` with the
        window, which is inclusive.

        Raises:
            ConfigError: more studies than the archive's cap share one minute of one day.
            ArchiveUnavailable: associations kept being rejected, aborted or cut off, past the
                retries of the archive limits.
            RidlError: the archive failed C-FIND with a status other than pending, success or
                cancel (PS3.4 C.4.1.1.4).
        """
        rows: list[dict[str, Any]] = []
        # (first day, last day, first minute, last minute): minutes split only a single day.
        pending: list[tuple[dt.date, dt.date, int, int]] = [
            (date_from, date_to, 0, MINUTES_PER_DAY - 1)
        ]
        while pending:
            first, last, m0, m1 = pending.pop()
            whole_day = m0 == 0 and m1 == MINUTES_PER_DAY - 1
            date_range = (
                dicom_date(first) if first == last else f"{dicom_date(first)}-{dicom_date(last)}"
            )
            time_range = None if whole_day else f"{hhmm(m0)}00-{hhmm(m1)}59"
            found, capped = self._find(date_range, time_range)
            if not capped:
                rows.extend(study_row(ident, self.hn_issuer) for ident in found)
                continue
            if first < last:
                middle = first + (last - first) // 2
                pending += [(middle + dt.timedelta(days=1), last, m0, m1), (first, middle, m0, m1)]
            elif m0 < m1:
                mid = (m0 + m1) // 2
                pending += [(first, last, mid + 1, m1), (first, last, m0, mid)]
            else:
                raise ConfigError(
                    "the archive caps C-FIND answers and more studies than the cap share one "
                    "minute of one day; ask the archive to raise its limit"
                )
        log.info("C-FIND: %d studies in %d windows", len(rows), self.windows_queried)
        write_study_rows(settle_hn_known(rows), catalog_dir, date_from, date_to)

    # --- retrieval --------------------------------------------------------------------------

    def fetch_study(self, study: StudyRef, workdir: Path) -> list[Path]:
        """Retrieve the study's instances, as sent by the archive, into ``workdir``.

        Returns the paths of the files received (``NNNNNN.dcm``, sorted); a warning status
        (0xB000, some sub-operations failed) is logged and what arrived is returned.

        Raises:
            ConfigError: the C-MOVE receiver's port cannot be listened on, or the archive does
                not know the move destination AE (status 0xA801).
            ArchiveUnavailable: associations kept failing, or the retrieval failed with an
                out-of-resources (0xA7xx), cancel (0xFE00) or unable-to-process (0xCxxx)
                status, past the retries of the archive limits.
            RidlError: the archive refused the retrieval with any other status (PS3.4 C.4.2.1.5
                for C-MOVE, C.4.3.1.4 for C-GET).
        """
        what = "C-GET" if self.retrieval == "get" else "C-MOVE"

        def request() -> list[Path]:
            clear_folder(workdir)
            if self.retrieval == "get":
                self._c_get(study.study_uid, workdir)
            else:
                self._c_move(study.study_uid, workdir)
            return sorted(workdir.glob("*.dcm"))

        return self.guard.call(request, what)

    def release_study(self, study: StudyRef, workdir: Path) -> None:
        """Remove the study's working folder and what was retrieved into it."""
        shutil.rmtree(workdir, ignore_errors=True)

    def _retrieve_identifier(self, study_uid: str) -> Dataset:
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = study_uid
        return ident

    def _get_ae(self) -> tuple[AE, list[Any]]:
        """The C-GET AE and its role negotiation, built once (120 storage contexts are slow to
        build per study)."""
        if self._get_setup is None:
            storage = [str(c.abstract_syntax) for c in StoragePresentationContexts[:127]]
            ae = AE(ae_title=self.calling_aet)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for uid in storage:
                ae.add_requested_context(uid, TRANSFER_SYNTAXES)
            roles = [build_role(uid, scp_role=True) for uid in storage]
            self._get_setup = (ae, roles)
        return self._get_setup

    def _c_get(self, study_uid: str, workdir: Path) -> None:
        ae, roles = self._get_ae()
        writer = _StudyWriter(workdir)
        assoc = self._associate(ae, roles, [(evt.EVT_C_STORE, writer.write)])
        try:
            responses = assoc.send_c_get(
                self._retrieve_identifier(study_uid), StudyRootQueryRetrieveInformationModelGet
            )
            self._check_retrieve(responses, "C-GET")
        finally:
            if assoc.is_established:
                assoc.release()

    def _c_move(self, study_uid: str, workdir: Path) -> None:
        receiver = move_receiver(self.move_aet, self.move_bind, self.move_port)
        receiver.expect(study_uid, workdir)
        try:
            assoc = self._associate([build_context(StudyRootQueryRetrieveInformationModelMove)])
            try:
                responses = assoc.send_c_move(
                    self._retrieve_identifier(study_uid),
                    self.move_aet,
                    StudyRootQueryRetrieveInformationModelMove,
                )
                self._check_retrieve(responses, "C-MOVE")
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            receiver.done(study_uid)

    def _check_retrieve(self, responses: Any, what: str) -> None:
        final = None
        for status, _ in responses:
            if not status:
                raise ArchiveUnavailable(f"{what} cut off (association dropped or timed out)")
            final = status
        if final is None:
            raise ArchiveUnavailable(f"{what} got no answer")
        code = int(final.Status)
        failed = int(getattr(final, "NumberOfFailedSuboperations", 0) or 0)
        if code == 0x0000:
            return
        if code == 0xB000:  # some instances could not be sent (e.g. a SOP class not offered)
            log.warning("%s: %d instances of a study were not delivered", what, failed)
            return
        if code == 0xA801:
            raise ConfigError(
                f"the archive does not know the C-MOVE destination AE '{self.move_aet}'; "
                "add it (with move_port) to the archive's known modalities"
            )
        if 0xA700 <= code <= 0xA7FF or code == 0xFE00 or 0xC000 <= code <= 0xCFFF:
            raise ArchiveUnavailable(f"{what} failed with status 0x{code:04X}")
        raise RidlError(f"the archive refused {what} with status 0x{code:04X}")
