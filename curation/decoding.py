"""Pixel decoding a broken or forged frame cannot crash or fool: what ridl lets pydicom decode.

GDCM's JPEG codecs (IJG libjpeg inside) turn a decoder warning, such as a stray byte before a
marker, into a C++ exception thrown through C code: ``std::terminate`` ends the whole Python
process (exit status 134) with no quarantine, no summary, and on a run every other study of the
worker lost. pydicom's other decoders (Pillow, pylibjpeg-openjpeg, its RLE) raise Python
exceptions on bad data. :func:`install_decoders` therefore takes pydicom's ``gdcm`` plugin out
of every decoder and adds ``gdcm-child`` after the others: the same GDCM call
(``pydicom.pixels.decoders.gdcm._decode_frame``) made by a child Python process, one frame at a
time, over a pipe. When the child dies or runs past :data:`FRAME_TIMEOUT`, the frame raises
:class:`DecoderCrashed` (a ``RuntimeError``, as pydicom's decoders raise) and the caller
quarantines the object (``pixel-decode-failed``); the next frame gets a new child.

So JPEG Baseline and Extended frames go to Pillow first (GDCM only if it fails); JPEG 2000 to
GDCM's child first (faster than pylibjpeg-openjpeg in-process, which follows); JPEG Lossless
(Process 14) and JPEG-LS, which only GDCM decodes here, always go through the child. RLE
Lossless is decoded by :func:`decode_rle_frame`, which refuses segments longer than the header's
image (pydicom's decoder keeps their first Rows x Columns bytes). Before any decode,
:func:`frames_mismatch` checks that the frames hold the image the header describes. Transfer
syntaxes per PS3.5 Section 10 and Annex A.

Cost (``benchmarks/decoding.py``): one child start per worker process (~0.5 s, importing pydicom
and GDCM) and, per frame, the frame's bytes in and the decoded samples out through a pipe,
beside the decode itself; the frame check reads markers and headers only.

Curation floor (``curation/``): :mod:`curation.pixels` calls :func:`install_decoders` when it is
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

from ridl.codestream import codestream_end, jp2_codestream

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
    """Whether a plug-in of this module decodes transfer syntax ``uid`` (pydicom's plugin test):
    RLE Lossless always, GDCM's syntaxes when GDCM is installed."""
    return uid == _RLE_TS or uid in _gdcm_dependencies()


def _gdcm_dependencies() -> dict[str, tuple[str, ...]]:
    from pydicom.pixels.decoders import gdcm as gdcm_plugin

    if not gdcm_plugin.HAVE_GDCM:
        return {}
    return {str(k): v for k, v in gdcm_plugin.DECODER_DEPENDENCIES.items()}


_installed = False
_install_lock = threading.Lock()


def install_decoders() -> None:
    """Put ridl's decoders in pydicom's registry: GDCM only through a child process, after the
    other plug-ins of each syntax (``gdcm-child``), and RLE Lossless by :func:`decode_rle_frame`
    (``ridl-rle``) instead of pydicom's own.

    Idempotent and safe to call from any thread; changes pydicom's process-wide decoder
    registry. A transfer syntax GDCM does not decode, or a machine without GDCM, keeps its
    plug-ins.
    """
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        from pydicom.pixels import get_decoder

        gdcm = _gdcm_dependencies()
        DECODER_DEPENDENCIES.update(gdcm)
        DECODER_DEPENDENCIES[_RLE_TS] = ()
        for uid in gdcm:
            decoder = get_decoder(uid)
            if "gdcm" in decoder.available_plugins:
                decoder.remove_plugin("gdcm")
            if PLUGIN in decoder.available_plugins:
                continue
            # JPEG 2000: GDCM first (in its child: 0.47 s against openjpeg's 0.68 s in-process
            # for a 2,000 x 2,500 lossless radiograph, benchmarks/decoding.py), then pydicom's
            # others, re-added in their order; JPEG: Pillow (in-process, faster) before GDCM.
            after: list[str] = [
                p for p in ("pylibjpeg", "pillow") if p in decoder.available_plugins
            ]
            if uid not in _J2K_FIRST:
                after = []
            for label in after:
                decoder.remove_plugin(label)
            decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))
            for label in after:
                decoder.add_plugin(label, (f"pydicom.pixels.decoders.{label}", "_decode_frame"))
        rle = get_decoder(_RLE_TS)
        if RLE_PLUGIN not in rle.available_plugins:
            for label in rle.available_plugins:
                rle.remove_plugin(label)
            rle.add_plugin(RLE_PLUGIN, (__name__, "decode_rle_frame"))
        _installed = True


_J2K_FIRST = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")  # JPEG 2000 (Lossless)
RLE_PLUGIN = "ridl-rle"
RLE_EXTRA_ROWS = "an RLE segment holds more rows than the header"


def decode_rle_frame(src: bytes, runner: Any) -> bytearray:
    """pydicom plugin: decode one RLE Lossless frame (PS3.5 Annex G), as pydicom's own RLE
    decoder does, refusing a segment that decodes to a whole row or more beyond Rows x Columns.

    pydicom warns of such a segment and keeps its first Rows x Columns bytes, so a frame of 512
    rows under a header of 256 decoded to its upper half and the lower half went unscreened.
    Returns the frame as planar configuration 1 (each sample's plane in turn, little-endian
    bytes), the option set on ``runner`` as pydicom's decoder sets it.

    Raises:
        ValueError: the segment count is not samples x bytes per sample, a segment decodes
            short, or :data:`RLE_EXTRA_ROWS` (the message, which
            :func:`curation.pixels.decoded_pixels` turns into ``pixel-header-mismatch``).
        NotImplementedError: Bits Allocated is not a multiple of 8.
    """
    rows, columns = int(runner.rows), int(runner.columns)
    samples, bits = int(runner.samples_per_pixel), int(runner.bits_allocated)
    if bits % 8:
        raise NotImplementedError(f"RLE with {bits} bits allocated")
    per_sample, pixels = bits // 8, rows * columns
    count = int.from_bytes(src[:4], "little")
    if len(src) < 64 or count != samples * per_sample:
        raise ValueError(f"{count} RLE segments, header {samples * per_sample}")
    bounds = [int.from_bytes(src[4 + 4 * i : 8 + 4 * i], "little") for i in range(count)]
    bounds.append(len(src))
    most_significant_first = runner.get_option("rle_segment_order", ">") == ">"
    frame = bytearray(pixels * samples * per_sample)
    stride = per_sample * pixels
    for sample in range(samples):
        for j in range(per_sample):
            ii = sample * per_sample + j
            segment = _packbits(src[bounds[ii] : bounds[ii + 1]])
            if len(segment) < pixels:
                raise ValueError(f"an RLE segment decodes to {len(segment)} of {pixels} bytes")
            if len(segment) >= pixels + columns:
                raise ValueError(RLE_EXTRA_ROWS)
            byte = per_sample - 1 - j if most_significant_first else j
            start = sample * stride + byte
            frame[start : start + stride : per_sample] = segment[:pixels]
    runner.set_option("planar_configuration", 1)
    return frame


def _packbits(segment: bytes) -> bytearray:
    """A PackBits segment decoded (PS3.5 G.3.1): a header byte n below 128 copies the next
    n + 1 bytes, above 128 repeats the next byte 257 - n times, 128 is nothing. A run cut by
    the segment's end gives what is there."""
    out = bytearray()
    extend = out.extend
    at = 0
    try:
        while True:  # ends at the segment's end (IndexError): one test a run, not two
            header = segment[at]
            if header < 128:
                extend(segment[at + 1 : at + header + 2])
                at += header + 2
            elif header > 128:
                extend(segment[at + 1 : at + 2] * (257 - header))
                at += 2
            else:
                at += 1
    except IndexError:
        return out


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


# JPEG start-of-frame markers (ISO/IEC 10918-1 B.1.1.3: SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS
# SOF55 (14495-1 C.2.2): each is followed by its length, P, Y, X and Nf.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_RLE_TS = "1.2.840.10008.1.2.5"
_JP2 = b"\x00\x00\x00\x0cjP  "  # the JP2 signature box (15444-1 I.5.1)


def frames_mismatch(ds: Any) -> str | None:
    """Why the encapsulated frames of ``ds`` do not hold the image its header describes, or None.

    Decoders follow the codestream and pydicom then cuts or pads to the header's size, so a frame
    of 512 rows under a header of 256 decodes to the first 256 and the rest (burned-in text, a
    second image) would go unscreened into the release; a JPEG 2000 SIZ of 40,000 x 40,000 under
    a 128 x 128 header would have its decoder allocate gigabytes first. Checked, per PS3.5 A.4
    and 8.2: the frames (Basic or Extended Offset Table, else pydicom's reading of the
    fragments) are as many as Number of Frames; each JPEG or JPEG-LS frame's SOF (ISO/IEC
    10918-1 B.2.2, 14495-1 C.2.2) and each JPEG 2000 frame's SIZ (15444-1 A.5.1) gives Rows,
    Columns and Samples per Pixel and ends where its codestream ends (00 or FF padding aside:
    :func:`ridl.codestream.codestream_end`, so no second codestream rides in a frame's
    fragments); each RLE frame (PS3.5 G) has one segment per sample byte, in
    order (that none decodes to a whole row more than Rows x Columns is checked while decoding,
    :func:`decode_rle_frame`). Native pixel data and other
    codecs: None. The detail names counts and sizes only (never a value of the header).

    Raises:
        Nothing: a frame that cannot be read is a mismatch, and said so.
    """
    from pydicom.encaps import generate_fragments, generate_frames
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

    ts = str(ds.file_meta.TransferSyntaxUID)
    jpeg = ts in JPEGTransferSyntaxes or ts in JPEGLSTransferSyntaxes
    j2k = ts in JPEG2000TransferSyntaxes  # HTJ2K too
    if not (jpeg or j2k or ts == _RLE_TS) or "PixelData" not in ds:
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return "incomplete image pixel description"
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        frames = list(
            generate_frames(ds.PixelData, number_of_frames=count, extended_offsets=offsets)
        )
        fragments = sum(len(f) for f in list(generate_fragments(ds.PixelData))[1:])
    except Exception as exc:
        return f"frames cannot be told apart ({type(exc).__name__})"
    if len(frames) != count:
        return f"{len(frames)} frames, header {count}"
    if sum(len(frame) for frame in frames) != fragments:
        return "fragments outside every frame (an offset table skips them)"
    want = (rows, columns, samples)
    for number, frame in enumerate(frames, 1):
        if ts == _RLE_TS:
            found = _rle_mismatch(frame, samples * ((bits + 7) // 8))
            if found:
                return f"frame {number}: {found}"
            continue
        if j2k and frame.startswith(_JP2):  # not for DICOM (PS3.5 A.4.4), yet written
            inner = jp2_codestream(frame)
            if inner is None:
                return f"frame {number}: a JP2 file without exactly one codestream box"
            frame = inner
        info = _jpeg_size(frame) if jpeg else _j2k_size(frame)
        if info is None:
            return f"frame {number}: no {'SOF' if jpeg else 'SIZ'} segment"
        end = codestream_end(frame)
        rest = frame[end:] if end is not None else frame
        if end is None or (len(rest) > 1 and rest.strip(b"\0\xff")):  # padding (PS3.5 A.4)
            return f"frame {number}: bytes after its codestream (a second image?)"
        size, precision = info[:3], info[3]
        if size != want:
            return "frame {}: codestream {} x {} x {}, header {} x {} x {}".format(
                number, *size, *want
            )
        if precision > bits:
            return f"frame {number}: codestream {precision}-bit samples, header {bits} allocated"
    return None


def _jpeg_size(frame: bytes) -> tuple[int, int, int, int] | None:
    """Y, X, Nf and P of the first SOF of a JPEG or JPEG-LS codestream (ISO/IEC 10918-1 B.2.2,
    14495-1 C.2.2), walked as decoders walk it, or None."""
    if not frame.startswith(b"\xff\xd8"):
        return None
    p, n = 2, len(frame)
    while p + 4 <= n:
        if frame[p] != 0xFF:  # a stray byte where a marker should be: decoders skip it
            p = frame.find(b"\xff", p)
            if p < 0:
                return None
            continue
        marker = frame[p + 1]
        if marker == 0xFF:  # fill byte
            p += 1
            continue
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:  # no length: TEM, RSTn (B.1.1.3)
            p += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any SOF
            return None
        if marker in _JPEG_SOF:
            if p + 10 > n:
                return None
            y = int.from_bytes(frame[p + 5 : p + 7], "big")
            x = int.from_bytes(frame[p + 7 : p + 9], "big")
            return y, x, frame[p + 9], frame[p + 4]
        p += 2 + int.from_bytes(frame[p + 2 : p + 4], "big")
    return None


def _j2k_size(frame: bytes) -> tuple[int, int, int, int] | None:
    """Ysiz - YOsiz, Xsiz - XOsiz, Csiz and the largest component precision (Ssiz) of a bare
    JPEG 2000 codestream, from the SIZ that must follow SOC (15444-1 A.5.1), or None."""
    if not frame.startswith(b"\xff\x4f\xff\x51") or len(frame) < 42:
        return None
    q = 2  # the SIZ marker
    x, y, xo, yo = (int.from_bytes(frame[q + i : q + i + 4], "big") for i in (6, 10, 14, 18))
    components = int.from_bytes(frame[q + 38 : q + 40], "big")
    ssiz = frame[q + 40 : q + 40 + 3 * components : 3]
    precision = max(((b & 0x7F) + 1 for b in ssiz), default=0)
    return y - yo, x - xo, components, precision


def _rle_mismatch(frame: bytes, segments: int) -> str | None:
    """Why an RLE frame's header (PS3.5 G.3: 16 little-endian longs, the segment count first)
    does not describe ``segments`` segments in order, or None. Segment lengths are checked while
    decoding (:func:`decode_rle_frame`): only decoding tells them."""
    if len(frame) < 64:
        return "no RLE header"
    header = [int.from_bytes(frame[i : i + 4], "little") for i in range(0, 64, 4)]
    if header[0] != segments:
        return f"{header[0]} RLE segments, header {segments}"
    bounds = [*header[1 : 1 + segments], len(frame)]
    if any(not 64 <= a <= b for a, b in zip(bounds, bounds[1:], strict=False)):
        return "RLE segment offsets out of order"
    return None


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


_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"


def _decode_jpeg_12bit(src: bytes, runner: Any) -> bytes:
    """One JPEG Extended (Process 4) frame of 12-bit samples decoded by GDCM, in the child.

    pydicom's GDCM plug-in refuses 12-bit JPEG Extended and Pillow reads 8 bits, so these frames
    (older CT and CR archives hold many) had no decoder and their objects were quarantined when
    curation had to read them. GDCM decodes them (its 8-bit libjpeg rejects the precision, a
    line on the child's stderr, which is dropped, and its 12-bit one reads the frame); the
    result is checked against dcmtk's IJG 12-bit decoder (``dcmdjpeg``) and pydicom's reference
    arrays in ``tests/test_decoding.py``. Returns the frame's samples, 16 bits each (PS3.5
    8.2.1: Bits Allocated 16, Bits Stored 12), as pydicom's plug-ins return them.

    Raises:
        NotImplementedError: Bits Allocated is not 16.
        RuntimeError: GDCM gave no samples of the expected size.
    """
    import gdcm

    if runner.bits_allocated != 16:
        raise NotImplementedError("12-bit JPEG Extended needs Bits Allocated 16")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(_JPEG_EXTENDED)))
    image.SetPixelFormat(
        gdcm.PixelFormat(runner.samples_per_pixel, 16, 12, 11, runner.pixel_representation)
    )
    frame = image.GetBuffer().encode("utf-8", "surrogateescape")
    expected = runner.rows * runner.columns * runner.samples_per_pixel * 2
    if len(frame) != expected:
        raise RuntimeError(f"GDCM gave {len(frame)} bytes for a frame of {expected}")
    return bytes(frame)


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
            if tsyntax == _JPEG_EXTENDED and runner.bits_stored == 12:
                frame = _decode_jpeg_12bit(src, runner)
            else:
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
