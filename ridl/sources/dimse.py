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

import contextlib
import datetime as dt
import io
import itertools
import logging
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    HEVCMP51,
    HTJ2K,
    JPEG2000,
    MPEG2MPML,
    MPEG4HP41,
    MPEG4HP42STEREO,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import (
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    _config,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext, build_context, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ridl.errors import ConfigError, RidlError, StudyUndeliverable
from ridl.projects import DEFAULT_HN_ISSUER
from ridl.reasons import Reason
from ridl.sources.base import SourceAddress
from ridl.sources.hn import health_number
from ridl.sources.protect import ArchiveGuard, ArchiveLimits, ArchiveUnavailable
from ridl.studies import StudyRef

log = logging.getLogger(__name__)

# pynetdicom's "standard" event handlers log every PDU and DIMSE message, C-FIND identifiers
# (patient names, IDs) included, at DEBUG/INFO: nothing a source value may reach, and ~7 % of a
# C-GET's CPU per instance (benchmarks/retrieval.py). ridl reports retrieval itself; its errors
# and warnings (association refused, aborted) are still logged by pynetdicom.
_config.LOG_HANDLER_LEVEL = "none"
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

OPTIONS = {"calling", "retrieval", "move_aet", "move_port", "move_bind", "find_limit", "timeout"}
# Every transfer syntax an archive may hold an object in: ridl stores the bytes as received and
# decodes (or quarantines) later, so the archive never has to convert anything. The first two
# (uncompressed little endian) share one presentation context; every other has its own.
UNCOMPRESSED: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
TRANSFER_SYNTAXES: list[str | UID] = [
    *UNCOMPRESSED,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
    MPEG2MPML,
    MPEG4HP41,
    MPEG4HP42STEREO,
    HEVCMP51,
]
# PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255, so at most 128 per
# association; one is the C-GET model's own.
MAX_CONTEXTS = 128
PENDING = {0xFF00, 0xFF01}
CAPPED = {0xFE00, 0xA700}  # Orthanc ends a LimitFindResults-capped answer with Cancel
MINUTES_PER_DAY = 24 * 60
# The largest P-DATA-TF PDU ridl accepts (PS3.8 9.3.1): large, so that a slice arrives in few
# PDUs (each costs pynetdicom a fixed ~0.2 ms of CPU), and not 0 ("unlimited"), which
# DCMTK-based archives (Orthanc) read as "use 16 KiB".
MAX_PDU = 4 * 1024 * 1024


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


def storage_sop_classes() -> list[str]:
    """Every storage SOP class in pydicom's UID dictionary, retired ones included (sorted).

    The C-GET fallback when the archive's C-FIND does not return SOP Classes in Study
    (0008,0062): a broad list, split over several associations (:func:`get_context_groups`).
    """
    from pydicom._uid_dict import UID_dictionary

    return sorted(
        uid
        for uid, (name, kind, *_) in UID_dictionary.items()
        if kind == "SOP Class" and "Storage" in name and "Commitment" not in name
    )


def get_context_groups(
    sop_classes: list[str],
) -> list[tuple[list[PresentationContext], list[SCP_SCU_RoleSelectionNegotiation]]]:
    """C-GET presentation contexts for ``sop_classes``, one per transfer syntax, in groups that
    fit one association each.

    Each SOP class gets one context for uncompressed little endian (explicit, implicit) and
    one for every other syntax of :data:`TRANSFER_SYNTAXES`, so the archive sends each object
    in the syntax it holds it in, unconverted (an archive picks one syntax per context, PS3.8
    9.3.2.2). A group holds at most :data:`MAX_CONTEXTS` - 1 contexts (the C-GET model needs
    one) and never splits a SOP class; with it come the SCP/SCU role selection items
    (PS3.7 D.3.3.4) that let the archive act as storage SCU for the C-GET's sub-operations.

    Returns:
        A list of (storage contexts, role selection items), one per association.
    """
    syntaxes: list[list[str | UID]] = [UNCOMPRESSED] + [
        [ts] for ts in TRANSFER_SYNTAXES if ts not in UNCOMPRESSED
    ]
    per_class = len(syntaxes)
    classes_per_group = max(1, (MAX_CONTEXTS - 1) // per_class)
    unique = list(dict.fromkeys(str(uid) for uid in sop_classes if str(uid)))
    groups = []
    for start in range(0, len(unique), classes_per_group):
        chosen = unique[start : start + classes_per_group]
        contexts = [build_context(uid, list(ts)) for uid in chosen for ts in syntaxes]
        roles = [build_role(uid, scp_role=True) for uid in chosen]
        groups.append((contexts, roles))
    return groups


def _no_delay(event: Any) -> None:
    """EVT_CONN_OPEN handler: switch Nagle's algorithm off on ridl's side of an association,
    and read each PDU with one buffer.

    A C-GET/C-MOVE is a stop-and-wait exchange (C-STORE-RQ, then its C-STORE-RSP); with Nagle on,
    a small response can wait for the peer's delayed ACK. The archive's side is the archive's
    setting (Orthanc: ``TCP_NODELAY=1``). pynetdicom's socket reads a PDU 4 KiB at a time into a
    growing bytearray; this association's socket reads it into one buffer of the PDU's size.
    """
    wrapper: Any = getattr(event.assoc.dul, "socket", None)
    raw = getattr(wrapper, "socket", None)
    if wrapper is None or raw is None:
        return
    with contextlib.suppress(OSError):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def recv(nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        done = 0
        while done < nr_bytes:
            got = raw.recv_into(view[done:], nr_bytes - done)
            if not got:  # the peer closed the connection: what arrived (the DUL checks it)
                return buffer[:done]
            done += got
        return buffer

    wrapper.recv = recv


NO_DELAY = (evt.EVT_CONN_OPEN, _no_delay)


def new_ae(aet: str, timeout: float | None = None) -> AE:
    """An AE for ridl's side of an association: as an acceptor (the C-MOVE receiver) it takes
    PDUs of up to :data:`MAX_PDU` bytes (a requestor passes ``max_pdu`` to ``associate``);
    ``timeout`` seconds for ACSE, DIMSE and the network (None: pynetdicom's defaults)."""
    ae = AE(ae_title=aet)
    ae.maximum_pdu_size = MAX_PDU
    if timeout is not None:
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _ui(tag: int, value: str) -> bytes:
    """One explicit VR little endian UI element of group 0002 (value padded to even length)."""
    data = value.encode("ascii")
    if len(data) % 2:
        data += b"\0"
    return struct.pack("<HH2sH", 0x0002, tag, b"UI", len(data)) + data


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """The preamble, ``DICM`` prefix and File Meta Information (PS3.10 7.1) of a received object.

    The same elements pynetdicom's ``Event.file_meta`` writes (version, media storage SOP class
    and instance, transfer syntax, implementation class UID and version name), encoded
    directly: no dataset is built per instance. Returns the bytes (128 + 4 + group length).
    """
    name = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    if len(name) % 2:
        name += b" "
    body = b"".join(
        (
            struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _ui(0x0002, sop_class),
            _ui(0x0003, sop_instance),
            _ui(0x0010, transfer_syntax),
            _ui(0x0012, PYNETDICOM_IMPLEMENTATION_UID),
            struct.pack("<HH2sH", 0x0002, 0x0013, b"SH", len(name)) + name,
        )
    )
    length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + length + body


class _StudyWriter:
    """Writes the instances of one study, as received (no decode), into its working folder.

    ``received`` counts the instances written (what a reused association delivered to this
    study).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._n = itertools.count(1)
        self.received = 0

    def write(self, event: Any) -> int:
        """EVT_C_STORE handler: the File Meta Information, then the data set bytes as sent."""
        request = event.request
        header = part10_header(
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
        )
        path = self.folder / f"{next(self._n):06d}.dcm"
        with path.open("wb") as out:
            out.write(header)
            out.write(request.DataSet.getbuffer())
        self.received += 1
        return 0x0000


def _study_uid_of(event: Any) -> str:
    """The Study Instance UID (0020,000D) of a received data set, reading no further than it
    (a C-STORE's data set is in the context's transfer syntax; deflated ones are read whole)."""
    syntax = event.context.transfer_syntax
    if syntax.is_deflated:
        return str(getattr(event.dataset, "StudyInstanceUID", ""))
    stream = io.BytesIO(event.request.DataSet.getbuffer())
    ds = read_dataset(
        stream,
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=lambda tag, vr, length: tag > 0x0020000D,
    )
    return str(getattr(ds, "StudyInstanceUID", ""))


class MoveReceiver:
    """ridl's own storage SCP for C-MOVE; routes each instance to its study's working folder.

    It listens on ``bind``:``port`` under AE title ``aet`` and accepts every storage SOP class
    (PS3.4 Annex B), retired and private ones included, in the transfer syntax the archive
    proposes first (pynetdicom's unrestricted storage service: the instance is written as
    received, so ridl can store any syntax); an instance of a study nobody expects is refused
    with status 0xC000. The unrestricted setting is pynetdicom's, process-wide; ridl runs no
    other DICOM acceptor.

    Raises:
        ConfigError: the port cannot be listened on (taken, or not allowed).
    """

    def __init__(self, aet: str, bind: str, port: int) -> None:
        self.routes: dict[str, _StudyWriter] = {}
        self.lock = threading.Lock()
        # An archive fails a whole C-MOVE when the destination refuses one SOP class (a retired
        # Ultrasound Image Storage, a vendor's private class): accept them all.
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        ae = new_ae(aet)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), TRANSFER_SYNTAXES)
        try:
            self.server = ae.start_server(
                (bind, port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._on_store), NO_DELAY],
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for C-MOVE on port {port} ({exc.strerror}); "
                "choose another move_port in --source"
            ) from None

    def _on_store(self, event: Any) -> int:
        uid = _study_uid_of(event)
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


def stop_move_receivers() -> None:
    """Stop this process's C-MOVE storage SCPs and let their ports go (a process that is done
    retrieving in its own threads, so that a retrieval process may listen there instead)."""
    with _RECEIVERS_LOCK:
        receivers = list(_RECEIVERS.values())
        _RECEIVERS.clear()
    for receiver in receivers:
        if receiver.server is not None:
            receiver.server.shutdown()


class _Router:
    """A reused C-GET association's C-STORE handler: writes into the current study's writer."""

    def __init__(self) -> None:
        self.writer: _StudyWriter | None = None

    def write(self, event: Any) -> int:
        writer = self.writer
        if writer is None:
            return 0xC000  # nothing asked for (cannot happen on a C-GET association)
        return writer.write(event)


@dataclass
class _Held:
    """The association a retrieval session keeps open between studies: for C-GET, the storage
    classes its contexts cover and the router its C-STORE handler writes through."""

    assoc: Association
    classes: frozenset[str] = frozenset()
    router: _Router = field(default_factory=_Router)


class DimseSource:
    """Study-level C-FIND by date window; C-GET or C-MOVE of a study into its working folder.

    Built from a parsed ``dimse://CALLED_AET@host:port?...`` setting (options in the module
    docstring); ``timeout`` is in seconds; ``url`` is the setting rebuilt with sorted options.

    Raises:
        ConfigError: an unknown option, no called AE, ``retrieval`` other than get/move, a
            non-numeric ``move_port``/``find_limit``/``timeout``, move without ``move_port``, or
            an AE title not 1 to 16 characters (PS3.5 6.2, AE value representation).
    """

    # Retrievals are CPU work in pynetdicom: a worker runs them in a process of its own
    # (flows.retrieval), beside its de-identification instead of under the same interpreter lock.
    retrieves_in_process = True

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
        # Associations ridl opened to the archive (any service): what a reused association saves.
        self.associations_opened = 0
        self._get_aes: dict[tuple[str, ...], AE] = {}
        # A retrieval session's association, per thread (see :meth:`session`).
        self._local = threading.local()

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
            ae = new_ae(self.calling_aet, self.timeout)
            ae.requested_contexts = contexts
        self.associations_opened += 1
        assoc = ae.associate(
            self.host,
            self.port,
            ae_title=self.called_aet,
            ext_neg=ext_neg,
            evt_handlers=[*(handlers or []), NO_DELAY],
            max_pdu=MAX_PDU,
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
        from ridl.catalog import write_study_rows  # Arrow: only when a catalog is written

        write_study_rows(settle_hn_known(rows), catalog_dir, date_from, date_to)

    # --- retrieval --------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Retrieve several studies (a batch) over one association, in this thread.

        Holds one slot of the archive's association cap (:meth:`ArchiveGuard.session`) for the
        block; C-GET and C-MOVE inside it reuse one association from study to study (C-GET
        also asks each study's SOP Classes in Study on it), opening a new one only when a
        study needs storage classes the open one does not cover, or the archive dropped it.
        The association is released when the block ends, and while a failed request backs off.
        """
        with self.guard.session(on_release=self._drop_held):
            self._local.active = True
            try:
                yield
            finally:
                self._local.active = False

    def _drop_held(self) -> None:
        held: _Held | None = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None and held.assoc.is_established:
            held.assoc.release()

    def _held(self) -> _Held | None:
        """This thread's session association, if it is still up (else forgotten)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and not held.assoc.is_established:
            self._drop_held()
            return None
        return held

    def _in_session(self) -> bool:
        return bool(getattr(self._local, "active", False))

    def fetch_study(self, study: StudyRef, workdir: Path) -> list[Path]:
        """Retrieve the study's instances, as the archive holds them, into ``workdir``.

        C-GET first asks the study's SOP Classes in Study (0008,0062) with a study-level
        C-FIND, then proposes a presentation context per transfer syntax for each
        (:func:`get_context_groups`); C-MOVE sends to ridl's own storage SCP, which accepts
        every storage class in any syntax (:class:`MoveReceiver`). Either way no object is
        converted on the way.

        Returns the paths of the files received (``NNNNNN.dcm``, sorted); a warning status
        (0xB000, some sub-operations failed) is logged and what arrived is returned.

        Raises:
            StudyUndeliverable: the archive does not have the study (``study-not-found``: no
                C-FIND match, or nothing delivered), or failed its retrieval with a failure
                status (``retrieval-failed``: 0xA7xx, 0xA9xx, 0xAAxx, 0xCxxx, PS3.4 C.4.2.1.5
                for C-MOVE, C.4.3.1.4 for C-GET): an answer about the study, not a busy
                archive, so it is not retried here.
            ConfigError: the C-MOVE receiver's port cannot be listened on, or the archive does
                not know the move destination AE (status 0xA801).
            ArchiveUnavailable: associations kept being rejected, aborted or timed out, or the
                retrieval was cancelled (0xFE00), past the retries of the archive limits.
        """
        what = "C-GET" if self.retrieval == "get" else "C-MOVE"

        def request() -> list[Path]:
            clear_folder(workdir)
            if self.retrieval == "get":
                self._c_get(study.study_uid, workdir)
            else:
                self._c_move(study.study_uid, workdir)
            files = sorted(workdir.glob("*.dcm"))
            if not files:  # a success that delivered nothing: the archive has no such study
                raise StudyUndeliverable(Reason.STUDY_NOT_FOUND, f"{what} delivered nothing")
            return files

        return self.guard.call(request, what)

    def release_study(self, study: StudyRef, workdir: Path) -> None:
        """Remove the study's working folder and what was retrieved into it."""
        shutil.rmtree(workdir, ignore_errors=True)

    def _retrieve_identifier(self, study_uid: str) -> Dataset:
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = study_uid
        return ident

    def _study_sop_classes(self, study_uid: str) -> list[str] | None:
        """The study's SOP Classes in Study (0008,0062) from a study-level C-FIND (PS3.4
        C.6.2.1.2): None when the archive has no such study, an empty list when it does not
        return the attribute. Runs inside the caller's guarded request (no second slot)."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        query.SOPClassesInStudy = ""
        held = self._held() if self._in_session() and self.retrieval == "get" else None
        if held is not None:
            assoc = held.assoc
        else:
            assoc = self._associate([build_context(StudyRootQueryRetrieveInformationModelFind)])
        matches: list[Dataset] = []
        try:
            model = StudyRootQueryRetrieveInformationModelFind
            for status, ident in assoc.send_c_find(query, model):
                if not status:
                    raise ArchiveUnavailable("C-FIND answer cut off (association dropped)")
                code = int(status.Status)
                if code in PENDING and ident is not None:
                    matches.append(ident)
                elif code not in PENDING and code != 0x0000:
                    return []  # the archive would not say: fall back to a broad list
        finally:
            if held is None and assoc.is_established:
                assoc.release()
        if not matches:
            return None
        classes: list[str] = []
        for ident in matches:
            value = getattr(ident, "SOPClassesInStudy", None)
            if value:
                classes += [value] if isinstance(value, str) else [str(v) for v in value]
        return classes

    def _get_ae(self, contexts: list[PresentationContext], find: bool = False) -> AE:
        """A C-GET AE requesting the model and ``contexts`` (built once per set of classes),
        and the C-FIND model too when ``find`` (a session's association asks SOP Classes in
        Study on it)."""
        key = (str(find), *sorted({str(cx.abstract_syntax) for cx in contexts}))
        if key not in self._get_aes:
            ae = new_ae(self.calling_aet, self.timeout)
            models = [StudyRootQueryRetrieveInformationModelGet]
            if find:
                models.append(StudyRootQueryRetrieveInformationModelFind)
            ae.requested_contexts = [*(build_context(m) for m in models), *contexts]
            self._get_aes[key] = ae
        return self._get_aes[key]

    def _c_get(self, study_uid: str, workdir: Path) -> None:
        classes = self._study_sop_classes(study_uid)
        if classes is None:
            raise StudyUndeliverable(Reason.STUDY_NOT_FOUND, "no C-FIND match")
        if self._in_session() and classes and self._c_get_held(study_uid, classes, workdir):
            return
        groups = get_context_groups(classes or storage_sop_classes())
        writer = _StudyWriter(workdir)
        finals: list[Dataset] = []
        for contexts, roles in groups:
            handlers = [(evt.EVT_C_STORE, writer.write)]
            assoc = self._associate(self._get_ae(contexts), roles, handlers)
            try:
                responses = assoc.send_c_get(
                    self._retrieve_identifier(study_uid), StudyRootQueryRetrieveInformationModelGet
                )
                finals.append(self._final_status(responses, "C-GET"))
            finally:
                if assoc.is_established:
                    assoc.release()
        delivered = len(list(workdir.glob("*.dcm")))
        if len(groups) == 1 or delivered == 0:
            self._judge(finals[0], "C-GET", study_uid)
            return
        # Several associations: each C-GET fails the instances of the other groups' classes;
        # what counts is whether every instance arrived through one of them.
        expected = max(_suboperations(final) for final in finals)
        if delivered < expected:
            log.warning("C-GET: %d instances of a study were not delivered", expected - delivered)

    def _c_get_held(self, study_uid: str, classes: list[str], workdir: Path) -> bool:
        """C-GET the study over the session's association, opened (or widened) for its
        classes; False when its classes need more than one association (then the caller
        uses one per group, as outside a session)."""
        held = self._held()
        wanted = frozenset(str(uid) for uid in classes)
        if held is None or not wanted <= held.classes:
            union = wanted | (held.classes if held is not None else frozenset())
            groups = get_context_groups(sorted(union))
            if len(groups) > 1:  # keep what is open for the next study; this one alone
                union = wanted
                groups = get_context_groups(sorted(union))
                if len(groups) > 1:
                    return False
            self._drop_held()
            contexts, roles = groups[0]
            router = _Router()
            assoc = self._associate(
                self._get_ae(contexts, find=True), roles, [(evt.EVT_C_STORE, router.write)]
            )
            held = _Held(assoc, union, router)
            self._local.held = held
        writer = _StudyWriter(workdir)
        held.router.writer = writer
        try:
            responses = held.assoc.send_c_get(
                self._retrieve_identifier(study_uid), StudyRootQueryRetrieveInformationModelGet
            )
            final = self._final_status(responses, "C-GET")
        finally:
            held.router.writer = None
        self._judge(final, "C-GET", study_uid)
        return True

    def _c_move(self, study_uid: str, workdir: Path) -> None:
        receiver = move_receiver(self.move_aet, self.move_bind, self.move_port)
        receiver.expect(study_uid, workdir)
        try:
            held = self._held() if self._in_session() else None
            if held is not None:
                assoc = held.assoc
            else:
                assoc = self._associate([build_context(StudyRootQueryRetrieveInformationModelMove)])
                if self._in_session():
                    self._local.held = _Held(assoc)
            try:
                responses = assoc.send_c_move(
                    self._retrieve_identifier(study_uid),
                    self.move_aet,
                    StudyRootQueryRetrieveInformationModelMove,
                )
                final = self._final_status(responses, "C-MOVE")
            finally:
                if not self._in_session() and assoc.is_established:
                    assoc.release()
        finally:
            receiver.done(study_uid)
        self._judge(final, "C-MOVE", study_uid)

    def _final_status(self, responses: Any, what: str) -> Dataset:
        final = None
        for status, _ in responses:
            if not status:
                raise ArchiveUnavailable(f"{what} cut off (association dropped or timed out)")
            final = status
        if final is None:
            raise ArchiveUnavailable(f"{what} got no answer")
        return final

    def _judge(self, final: Dataset, what: str, study_uid: str) -> None:
        """Success, a warning, or why not: PS3.4 C.4.2.1.5 (C-MOVE) and C.4.3.1.4 (C-GET).

        Cancel (0xFE00) is the one failure worth a retry by the guard (someone cancelled it).
        Every failure status (Refused: out of resources 0xA7xx, identifier does not match SOP
        class 0xA9xx, 0xAAxx, unable to process 0xCxxx) is the archive's answer about this
        study: the same request fails again (DCMTK-based archives answer 0xA702 or 0xC000 when
        a sub-operation fails for good, and for a study they do not have), so the study is
        recorded as failed and the run goes on; ``--retry-failed`` asks again later.
        """
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
        if code == 0xFE00:
            raise ArchiveUnavailable(f"{what} cancelled (status 0xFE00)")
        # Unknown study or a real failure? Orthanc answers 0xC000 for both: ask C-FIND.
        if self._study_sop_classes(study_uid) is None:
            raise StudyUndeliverable(Reason.STUDY_NOT_FOUND, f"{what} status 0x{code:04X}")
        raise StudyUndeliverable(Reason.RETRIEVAL_FAILED, f"{what} status 0x{code:04X}")


def _suboperations(final: Dataset) -> int:
    """Instances a C-GET's final response accounts for (completed, failed and warning)."""
    return sum(
        int(getattr(final, name, 0) or 0)
        for name in (
            "NumberOfCompletedSuboperations",
            "NumberOfFailedSuboperations",
            "NumberOfWarningSuboperations",
        )
    )
