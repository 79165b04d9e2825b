"""A real Orthanc (Debian package) as the DIR, for tests and benchmarks.

:class:`Orthanc` writes a configuration (free loopback HTTP and DICOM ports, its own storage
folder, the AEs ridl uses, the DICOMweb plugin), starts ``/usr/sbin/Orthanc``, waits until its REST
API answers, loads DICOM files over REST and stops it after. The ``orthanc`` fixture is
session-scoped: one server holds the synthetic DIR for every test that needs it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

ORTHANC_AET = "ORTHANC"
RIDL_AET = "RIDL"
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_fixed_port() -> int:
    """A free port below the kernel's ephemeral range, for a listener that starts late.

    A port taken with :func:`free_port` can be handed to some outgoing connection's local end
    before the listener binds it (the ephemeral range serves both); a port below that range, as
    a site would configure for its C-MOVE receiver, cannot.
    """
    low, _ = _ephemeral_range()
    for port in random.Random().sample(range(20000, max(20001, low)), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin of package orthanc-dicomweb, wherever this Debian put it."""
    for path in PLUGIN_CANDIDATES:
        if Path(path).exists():
            return path
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return None
    for line in listing.splitlines():
        if line.endswith(".so") and "DicomWeb" in line:
            return line
    return None


class Orthanc:
    """One Orthanc process with its own configuration and storage under ``folder``."""

    def __init__(
        self,
        program: str,
        folder: Path,
        *,
        limit_find_results: int = 0,
        extra_modalities: dict[str, Any] | None = None,
        nagle: bool = False,
        max_pdu: int = 131072,
    ) -> None:
        self.program = program
        self.folder = folder
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.move_port = free_fixed_port()  # where ridl's own storage SCP listens for C-MOVE
        self.limit_find_results = limit_find_results
        self.extra_modalities = extra_modalities or {}
        # DCMTK (Orthanc's DICOM layer) keeps Nagle's algorithm on unless TCP_NODELAY=1: then
        # every C-STORE of a C-GET/C-MOVE waits ~40 ms for a delayed ACK (10x slower).
        self.nagle = nagle
        # The largest PDU Orthanc sends or accepts (4096 to 131072; Orthanc's default 16384):
        # every PDU costs a Python-side reader (pynetdicom) a fixed ~0.2 ms, so a 512 KiB CT slice
        # in 16 KiB PDUs costs ~7 ms of CPU, in 128 KiB PDUs ~1 ms. A site's DIR setting.
        self.max_pdu = max_pdu
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def dimse_url(self, retrieval: str = "get", calling: str = RIDL_AET, **extra: Any) -> str:
        query = f"calling={calling}&retrieval={retrieval}"
        if retrieval == "move":
            query += f"&move_aet={RIDL_AET}&move_port={self.move_port}"
        for key, value in extra.items():
            query += f"&{key}={value}"
        return f"dimse://{ORTHANC_AET}@127.0.0.1:{self.dicom_port}?{query}"

    def dicomweb_url(self) -> str:
        return f"dicomweb://127.0.0.1:{self.http_port}/dicom-web"

    def config(self) -> dict[str, Any]:
        plugin = dicomweb_plugin()
        modalities: dict[str, Any] = {
            "ridl": {"AET": RIDL_AET, "Host": "127.0.0.1", "Port": self.move_port},
        }
        modalities.update(self.extra_modalities)
        cfg: dict[str, Any] = {
            "Name": "ridl-test-dir",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            # Only known AEs may associate: an unknown calling AE is refused, as a DIR does.
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": modalities,
            "StorageAccessOnFind": "Always",
            "LimitFindResults": self.limit_find_results,
            "LimitFindInstances": 0,
            "StorageCompression": False,
            "OverwriteInstances": False,
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 8,
            "DicomThreadsCount": 4,
            "MaximumPduLength": self.max_pdu,
            "Plugins": [plugin] if plugin else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
        }
        return cfg

    def start(self, timeout: float = 60.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = (self.folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [self.program, f"--logdir={self.folder}", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "0" if self.nagle else "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.folder}/orthanc.log")
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer /system in time")

    def problems(self) -> list[str]:
        """The error lines of Orthanc's log (``E...``) and its DICOM warnings, for a failing
        test's message (synthetic data only)."""
        lines: list[str] = []
        for log in sorted(self.folder.glob("Orthanc.log.*")):
            for line in log.read_text(errors="replace").splitlines():
                if "MIME" in line:
                    continue  # DICOMweb's Accept negotiation, on every QIDO-RS request
                if line.startswith("E") or (line.startswith("W") and "Dicom" in line):
                    lines.append(line[:300])
        return lines[-20:]

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def upload(self, paths: Iterable[Path]) -> tuple[int, int]:
        """POST each file to /instances; returns (stored, refused). Non-DICOM is refused."""
        stored = refused = 0
        with requests.Session() as http:
            for path in paths:
                reply = http.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30)
                if reply.ok:
                    stored += 1
                else:
                    refused += 1
        return stored, refused

    def upload_bytes(self, data: bytes) -> dict[str, Any]:
        reply = requests.post(f"{self.url}/instances", data=data, timeout=30)
        reply.raise_for_status()
        result: dict[str, Any] = reply.json()
        return result

    def delete(self, resource: str) -> None:
        requests.delete(f"{self.url}{resource}", timeout=30).raise_for_status()

    def add_modality(self, name: str, aet: str, port: int) -> None:
        body = {"AET": aet, "Host": "127.0.0.1", "Port": port}
        requests.put(f"{self.url}/modalities/{name}", json=body, timeout=10).raise_for_status()

    def remove_modality(self, name: str) -> None:
        requests.delete(f"{self.url}/modalities/{name}", timeout=10)

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def require_orthanc() -> str:
    """Orthanc's program path, or skip (fail under CI=true) when it or its plugin is missing."""
    from tests.conftest import require_program

    program = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None
    )
    if program is None:
        program = require_program("Orthanc")
    if dicomweb_plugin() is None:
        reason = "the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return program


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """The files Orthanc can store: everything but the synthetic DIR's non-DICOM note."""
    return [p for p in paths if p.read_bytes()[128:132] == b"DICM"]


@pytest.fixture(scope="session")
def orthanc(synth_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:  # type: ignore[no-untyped-def]
    """The session's synthetic DIR, loaded into a running Orthanc."""
    program = require_orthanc()
    server = Orthanc(program, tmp_path_factory.mktemp("orthanc"))
    with server:
        server.upload(dicom_files(synth_dir.files))
        yield server


# storescu's option proposing a file's transfer syntax (dcmtk 3.6; with ``-R`` only the files'
# SOP classes are proposed, the uncompressed syntaxes after the chosen one).
STORESCU_SYNTAX = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def storescu_by_syntax(server: Orthanc, groups: dict[str, list[Path]]) -> dict[str, str]:
    """Send files to the archive with dcmtk's ``storescu``, one association per transfer syntax
    (``groups``: transfer syntax UID, or "" for a file without File Meta, to its files), each
    proposed in its own syntax so the archive stores it as it is (``--no-halt``: a refused
    file does not stop the others).

    Returns the last line storescu printed for each syntax whose run reported a failure (its
    exit status or an error line), for the caller to record why a file is missing.
    """
    from tests.conftest import require_program

    program = require_program("storescu")
    failures: dict[str, str] = {}
    for syntax, paths in sorted(groups.items()):
        option = STORESCU_SYNTAX.get(syntax, "-x=")  # no File Meta: the uncompressed syntaxes
        done = subprocess.run(
            [program, "-aet", RIDL_AET, "-aec", ORTHANC_AET, "-R", "--no-halt", option]
            + ["127.0.0.1", str(server.dicom_port)]
            + [str(p) for p in paths],
            capture_output=True,
            text=True,
            check=False,
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith(("E:", "F:"))]
        if done.returncode or errors:
            failures[syntax] = (errors or [f"exit status {done.returncode}"])[-1][:200]
    return failures
