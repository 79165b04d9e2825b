"""Pixel decoding that one broken frame cannot crash: GDCM decodes in a child process.

GDCM's JPEG codecs (IJG libjpeg inside) turn a decoder warning, such as a stray byte before a
marker, into a C++ exception thrown through C code: ``std::terminate`` ends the whole Python
process (exit status 134) with no quarantine, no summary, and on a run every other study of the
worker lost. pydicom's other decoders (Pillow, pylibjpeg-openjpeg, its own RLE) raise Python
exceptions on bad data. :func:`isolate_gdcm` therefore takes pydicom's ``gdcm`` plugin out of
every decoder and adds ``gdcm-child`` after the others: the same GDCM call
(``pydicom.pixels.decoders.gdcm._decode_frame``) made by a child Python process, one frame at a
time, over a pipe. When the child dies or runs past :data:`FRAME_TIMEOUT`, the frame raises
:class:`DecoderCrashed` (a ``RuntimeError``, as pydicom's decoders raise) and the caller
quarantines the object (``pixel-decode-failed`` or ``check-failed-curation``); the next frame
gets a new child.

So JPEG Baseline and Extended frames go to Pillow first and JPEG 2000 to pylibjpeg-openjpeg
(GDCM only if those fail); JPEG Lossless (Process 14) and JPEG-LS, which only GDCM decodes here,
always go through the child. Transfer syntaxes per PS3.5 Section 10 and Annex A.

Cost: one child start per worker process (~0.3 s, importing pydicom and GDCM) and, per frame,
the frame's bytes in and the decoded samples out through a pipe (about 10 ms for a 2,000 x 2,500
16-bit radiograph), beside the decode itself.

Curation floor (``curation/``): :mod:`curation.pixels` calls :func:`isolate_gdcm` when it is
imported, before any decode; this module is also the child's program
(``python -m curation.decoding``).
"""

from __future__ import annotations

import atexit
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO

# pydicom's plugin protocol: a decoding plugin module has is_available(uid) and
# DECODER_DEPENDENCIES; the label below names this module's frame decoder.
PLUGIN = "gdcm-child"
DECODER_DEPENDENCIES: dict[str, tuple[str, ...]] = {}

FRAME_TIMEOUT = 120.0
"""Seconds one frame may take in the child before it is killed (a hostile frame can loop)."""

_HEADER = struct.Struct("<Q")
_CRASH = re.compile(
    r"GDCM decoder (?:process ended \((?:signal|exit status) -?\d+\)|gave no frame in \d+ s)"
)


class DecoderCrashed(RuntimeError):
    """The child decoding a frame died (signal or exit status) or ran past the timeout."""


def failure_detail(exc: BaseException) -> str:
    """A quarantine detail for a failed decode: the exception's type name, and when the GDCM
    child ended or hung, that sentence too (``RuntimeError; GDCM decoder process ended (signal
    6)``). Decoder messages are not copied otherwise: a quarantine detail carries no free text."""
    crash = _CRASH.search(str(exc))
    return f"{type(exc).__name__}; {crash.group(0)}" if crash else type(exc).__name__


def is_available(uid: str) -> bool:
    """Whether GDCM is installed and decodes transfer syntax ``uid`` (pydicom's plugin test)."""
    return uid in _gdcm_dependencies()


def _gdcm_dependencies() -> dict[str, tuple[str, ...]]:
    from pydicom.pixels.decoders import gdcm as gdcm_plugin

    if not gdcm_plugin.HAVE_GDCM:
        return {}
    return {str(k): v for k, v in gdcm_plugin.DECODER_DEPENDENCIES.items()}


_isolated = False
_isolate_lock = threading.Lock()


def isolate_gdcm() -> None:
    """Make every pydicom decoder use GDCM only through a child process, after its other plugins.

    Idempotent and safe to call from any thread; changes pydicom's process-wide decoder
    registry. A transfer syntax GDCM does not decode, or a machine without GDCM, is left as it is.
    """
    global _isolated
    if _isolated:
        return
    with _isolate_lock:
        if _isolated:
            return
        from pydicom.pixels import get_decoder

        DECODER_DEPENDENCIES.update(_gdcm_dependencies())
        for uid in DECODER_DEPENDENCIES:
            decoder = get_decoder(uid)
            if "gdcm" in decoder.available_plugins:
                decoder.remove_plugin("gdcm")
            if PLUGIN not in decoder.available_plugins:
                decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))
        _isolated = True


def decode_frame(src: bytes, runner: Any) -> bytes:
    """pydicom plugin: decode one encapsulated frame ``src`` with GDCM in a child process.

    ``runner`` is pydicom's ``DecodeRunner``; the options GDCM's plugin changes (bits allocated,
    planar configuration, photometric interpretation) are copied back to it. Returns the frame's
    decoded bytes, as ``pydicom.pixels.decoders.gdcm._decode_frame`` does.

    Raises:
        DecoderCrashed: the child died or ran past :data:`FRAME_TIMEOUT` seconds.
        Exception: what GDCM's plugin raised for this frame (re-raised as its type name and
            message; a GDCM message names no patient).
    """
    request = (bytes(src), str(runner.transfer_syntax), dict(runner.options))
    child = _take_child()
    try:
        status, payload, options = child.ask(request)
    except DecoderCrashed:
        child.kill()
        raise
    _give_back(child)
    if status == "ok":
        for name, value in options.items():
            runner.set_option(name, value)
        return bytes(payload)
    error_type, message = payload
    raise RuntimeError(f"{error_type}: {message}")


class _Child:
    """A ``python -m curation.decoding`` process: length-prefixed pickles in and out."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        # stderr is dropped: libjpeg's warnings and GDCM's last words are not ours to print.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "curation.decoding"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def ask(self, request: tuple[bytes, str, dict[str, Any]]) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        body = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.process.stdin.write(_HEADER.pack(len(body)) + body)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise DecoderCrashed(self._ended()) from None
        deadline = time.monotonic() + FRAME_TIMEOUT
        head = self._read(_HEADER.size, deadline)
        return pickle.loads(self._read(_HEADER.unpack(head)[0], deadline))

    def _read(self, size: int, deadline: float) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        chunks: list[bytes] = []
        left = size
        while left:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise DecoderCrashed(f"GDCM decoder gave no frame in {FRAME_TIMEOUT:.0f} s")
            chunk = os.read(fd, min(left, 1 << 22))
            if not chunk:
                raise DecoderCrashed(self._ended())
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _ended(self) -> str:
        code = self.process.wait(timeout=10)
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        return f"GDCM decoder process ended ({how})"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


_idle: list[_Child] = []
_idle_lock = threading.Lock()


def _take_child() -> _Child:
    with _idle_lock:
        while _idle:
            child = _idle.pop()
            if child.alive():
                return child
            child.kill()
    return _Child()


def _give_back(child: _Child) -> None:
    with _idle_lock:
        _idle.append(child)


@atexit.register
def _close_children() -> None:
    with _idle_lock:
        for child in _idle:
            child.kill()
        _idle.clear()


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child's loop: decode each request until the parent closes the pipe."""
    from pydicom.pixels.decoders import gdcm as gdcm_plugin
    from pydicom.pixels.decoders.base import DecodeRunner
    from pydicom.uid import UID

    while head := stdin.read(_HEADER.size):
        src, tsyntax, options = pickle.loads(stdin.read(_HEADER.unpack(head)[0]))
        runner = DecodeRunner(UID(tsyntax))
        runner.set_options(**options)
        try:
            frame = gdcm_plugin._decode_frame(src, runner)
            changed = {k: v for k, v in runner.options.items() if options.get(k) != v}
            reply: Any = ("ok", frame, changed)
        except Exception as exc:  # reported to the parent, which raises it there
            reply = ("error", (type(exc).__name__, str(exc)[:300]), {})
        body = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_HEADER.pack(len(body)) + body)
        stdout.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
