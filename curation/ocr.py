"""Text detection in pixels, with a model that ships inside an installed package.

``rapidocr-onnxruntime`` carries its ONNX detection and recognition models in its wheel, so
nothing is downloaded at run time (a research office's machine usually has no internet). It runs
on the CPU through onnxruntime; where ``onnxruntime-gpu`` is installed, ``RIDL_OCR_GPU=1`` lets
it use the GPU.

Reading is done in two steps, so that screening every radiograph stays affordable: the detector
looks for text on the frame reduced to at most :data:`DET_MAX_SIDE` pixels on its long side, and
the recognizer reads only inside the boxes found, cropped from the frame at full resolution
(:func:`read_lines`). A frame without text costs one detection at reduced size.

Only boxes, scores and the number of characters are kept in records: the text read from a
patient's image is PHI. :func:`read_lines` and :func:`ocr_text` hand it to the caller in memory
(the PHI verification searches it); it is never logged, stored or shown.

Curation floor (``curation/``): :mod:`curation.pipeline` calls :func:`read_lines` and
:func:`counts_as_text`; the PHI gate (``flows.gate``) finds :func:`ocr_text` here and passes it
to :class:`export.phi_scan.Verifier`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ridl.errors import ConfigError

DET_SHORT_SIDE = 320
# Detection sees a frame reduced to at most this many pixels on its long side (a multiple of
# 32, as the detector needs): a 2,000 x 2,500 radiograph is searched at 768 x 960, where a
# name drawn 24 px high is still about 10 px high. Recognition reads at full resolution.
DET_MAX_SIDE = 960
# Lines the recognizer reads with less confidence than this are dropped (RapidOCR's default).
READ_FLOOR = 0.5
# Laterality and view markers a project may keep (``[curation] keep_markers``): burned into
# radiographs by the modality, they say which side or view, never whose.
MARKERS = frozenset(
    {"L", "R", "LT", "RT", "LEFT", "RIGHT", "BIL", "BILAT", "AP", "PA", "LAT", "LLAT", "RLAT"}
)
_PUNCTUATION = re.compile(r"[\s.:,;()\[\]'\"_-]+")
_lock = threading.Lock()
_engine: Any = None


@dataclass(frozen=True)
class TextBox:
    """One detected line of text: its bounding box on the frame, confidence and length.

    Coordinates are pixels of the frame (``x0, y0`` top left, ``x1, y1`` bottom right);
    ``score`` is the recognizer's confidence (0-1, 3 decimals); ``chars`` the number of
    characters read; ``frame`` the index among the frames given.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    score: float
    chars: int
    frame: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The box as a JSON-ready dict (as review records keep it)."""
        return asdict(self)


@dataclass(frozen=True)
class TextLine:
    """One line read in a frame: where (full-resolution pixels), what, and how sure.

    ``text`` is what the recognizer read: PHI, for in-memory searching only (never logged,
    stored or shown); :meth:`box` is what may be kept.
    """

    frame: int
    x0: int
    y0: int
    x1: int
    y1: int
    text: str
    score: float

    def box(self) -> TextBox:
        """The line without its text: a :class:`TextBox` a review record may keep."""
        return TextBox(
            self.x0, self.y0, self.x1, self.y1, round(self.score, 3), len(self.text), self.frame
        )


def engine() -> Any:
    """The shared detector (loaded once per process; the models are in the installed wheel).

    Frames smaller than 320 px on their short side are scaled up to it for detection;
    ``RIDL_OCR_GPU=1`` asks for CUDA.

    Raises:
        ConfigError: rapidocr-onnxruntime is not installed.
    """
    global _engine
    with _lock:
        if _engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError:
                raise ConfigError(
                    "text detection needs rapidocr-onnxruntime; install ridl's dependencies "
                    "or set curation.ocr = false in the project file"
                ) from None
            gpu = os.environ.get("RIDL_OCR_GPU") == "1"
            # Small images are scaled up to 320 px on their short side rather than
            # RapidOCR's default 736: burned-in text is drawn large relative to small
            # frames, and the detector's cost grows with the area it scans.
            kwargs: dict[str, Any] = {"det_limit_side_len": DET_SHORT_SIDE}
            if gpu:
                kwargs.update(det_use_cuda=True, cls_use_cuda=True, rec_use_cuda=True)
            _engine = RapidOCR(**kwargs)
    return _engine


def _bgr(frame: np.ndarray) -> np.ndarray:
    import cv2

    if frame.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(frame[..., :3])


def read_lines(
    frames: Iterable[np.ndarray], *, max_side: int = DET_MAX_SIDE, floor: float = READ_FLOOR
) -> list[TextLine]:
    """Every line of text read in ``frames``: detection reduced, recognition in the boxes.

    ``frames`` are 8-bit images (H x W or H x W x 3, see
    :func:`curation.pixels.frames_for_ocr`). Each is reduced (area averaging) to at most
    ``max_side`` pixels on its long side for the detector; the boxes it finds are mapped back
    to the frame and read there at full resolution. Lines read with a confidence below
    ``floor`` (0-1) are dropped. The text returned is PHI: keep it in memory only.

    Raises:
        ConfigError: the OCR engine is not installed (see :func:`engine`).
    """
    ocr = engine()
    lines: list[TextLine] = []
    for index, frame in enumerate(frames):
        full = _bgr(frame)
        height, width = full.shape[:2]
        if not height or not width:
            continue
        for x0, y0, tile in _tiles(full):
            for line in _read_tile(ocr, tile, index, max_side, floor):
                lines.append(
                    TextLine(
                        index, line.x0 + x0, line.y0 + y0, line.x1 + x0, line.y1 + y0,
                        line.text, line.score,
                    )
                )  # fmt: skip
    return lines


STRIP_ASPECT = 8
"""A frame longer than this many times its width (or the other way) is read in tiles."""


def _tiles(full: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(x0, y0, tile)`` of a frame: the frame itself, or for a strip (long side over
    :data:`STRIP_ASPECT` times the short one) tiles of that aspect, each overlapping the next by
    half, so a line of text up to half a tile long lies whole in one of them (a longer one is
    read in parts, each still text). A 40,000 x 40 strip read whole was scaled to 30,000 x 30
    for the detector, which took 20 GB."""
    height, width = full.shape[:2]
    short, long = min(height, width), max(height, width)
    if long <= STRIP_ASPECT * short:
        yield 0, 0, full
        return
    size = STRIP_ASPECT * short
    step = size // 2
    for start in range(0, long - step, step):
        if width > height:
            yield start, 0, full[:, start : start + size]
        else:
            yield 0, start, full[start : start + size]


def _read_tile(
    ocr: Any, full: np.ndarray, index: int, max_side: int, floor: float
) -> list[TextLine]:
    """:func:`read_lines` of one frame or tile (coordinates within it)."""
    import cv2

    lines: list[TextLine] = []
    height, width = full.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if min(height, width) * scale < ocr.min_side_len:  # a strip: as RapidOCR, scale it up
        scale = ocr.min_side_len / min(height, width)
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        method = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        small = cv2.resize(full, size, interpolation=method)
    else:
        small = full
    small, record = ocr.maybe_add_letterbox(small, {})
    found, _ = ocr.text_det(small)
    if found is None or len(found) == 0:
        return lines
    boxes = np.asarray(found, dtype=np.float32).reshape(-1, 4, 2)
    boxes[:, :, 1] -= record["padding_1"]["top"]
    boxes /= scale
    boxes[:, :, 0] = boxes[:, :, 0].clip(0, width - 1)
    boxes[:, :, 1] = boxes[:, :, 1].clip(0, height - 1)
    boxes = np.stack([b for b in boxes if _area(b) >= 1.0]) if len(boxes) else boxes
    if not len(boxes):
        return lines
    crops = ocr.get_crop_img_list(full, list(boxes))
    if ocr.use_cls:
        crops, _, _ = ocr.text_cls(crops)
    read, _ = ocr.text_rec(crops)
    for box, result in zip(boxes, read, strict=True):
        text, score = str(result[0]).strip(), float(result[1])
        if not text or score < floor:
            continue
        xs, ys = box[:, 0], box[:, 1]
        lines.append(
            TextLine(
                index, int(xs.min()), int(ys.min()), int(np.ceil(xs.max())),
                int(np.ceil(ys.max())), text, score,
            )
        )  # fmt: skip
    return lines


def _area(box: np.ndarray) -> float:
    return float((box[:, 0].max() - box[:, 0].min()) * (box[:, 1].max() - box[:, 1].min()))


def is_marker(text: str) -> bool:
    """True for one character or a laterality / view marker (:data:`MARKERS`), read loosely.

    Case, spaces and punctuation are ignored (``"R."`` and ``"Lt"`` are markers).
    """
    core = _PUNCTUATION.sub("", text).upper()
    return len(core) <= 1 or core in MARKERS


def counts_as_text(
    line: TextLine, *, min_score: float = 0.6, min_chars: int = 2, keep_markers: bool = False
) -> bool:
    """Whether a line read counts as burned-in text (to quarantine or redact).

    A line counts when it was read with at least ``min_score`` confidence (0-1) and has at
    least ``min_chars`` characters; with ``keep_markers`` single characters and laterality or
    view markers (:func:`is_marker`) never count.
    """
    if line.score < min_score or len(line.text) < min_chars:
        return False
    return not (keep_markers and is_marker(line.text))


def detect_text(
    frames: Iterable[np.ndarray],
    *,
    min_score: float = 0.6,
    min_chars: int = 2,
    keep_markers: bool = False,
) -> list[TextBox]:
    """Lines of text found in ``frames`` that count as text (:func:`counts_as_text`).

    Single characters (laterality markers such as L and R) are left out by the default
    ``min_chars``; ``keep_markers`` also leaves out RT, LT, AP, PA and the other
    :data:`MARKERS`. ``frames`` are 8-bit images (H x W or H x W x 3, see
    :func:`curation.pixels.frames_for_ocr`); ``min_score`` is the confidence (0-1) a line needs.

    Raises:
        ConfigError: the OCR engine is not installed (see :func:`engine`).
    """
    return [
        line.box()
        for line in read_lines(frames)
        if counts_as_text(line, min_score=min_score, min_chars=min_chars, keep_markers=keep_markers)
    ]


def ocr_text(ds: Any, *, min_score: float = 0.5, min_chars: int = 2) -> list[str]:
    """The text read in a dataset's pixels, for the PHI verification gate only.

    The gate searches it in memory for identifiers and reports where, never what: callers must
    not log, store or show the strings this returns. ``ds`` is a whole dataset (pixels
    decoded here, up to 3 frames); returns one string per line read.

    Raises:
        ConfigError: the OCR engine is not installed (see :func:`engine`).
    """
    from curation.pixels import frames_for_ocr

    frames = frames_for_ocr(ds)
    return [
        line.text for line in read_lines(frames, floor=min_score) if len(line.text) >= min_chars
    ]
