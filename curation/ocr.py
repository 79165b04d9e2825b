"""Text detection in pixels, with a model that ships inside an installed package.

``rapidocr-onnxruntime`` carries its ONNX detection and recognition models in its wheel, so
nothing is downloaded at run time (a research office's machine usually has no internet). It runs
on the CPU through onnxruntime; where ``onnxruntime-gpu`` is installed, ``RIDL_OCR_GPU=1`` lets
it use the GPU.

Only boxes, scores and the number of characters are kept: the text read from a patient's image is
PHI and never leaves this module (not logged, not stored, not shown).

Curation floor (``curation/``): :mod:`curation.pipeline` calls :func:`detect_text`; the PHI gate
(``flows.gate``) finds :func:`ocr_text` here and passes it to :class:`export.phi_scan.Verifier`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ridl.errors import ConfigError

DET_SHORT_SIDE = 320
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


def engine() -> Any:
    """The shared detector (loaded once per process; the models are in the installed wheel).

    Images are scaled to 320 px on their short side for detection; ``RIDL_OCR_GPU=1`` asks for
    CUDA.

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
                kwargs.update(det_use_cuda=True, rec_use_cuda=True)
            _engine = RapidOCR(**kwargs)
    return _engine


def _read_lines(
    frames: Iterable[np.ndarray], min_score: float, min_chars: int
) -> Iterable[tuple[int, Any, str, float]]:
    """(frame index, box, text, score) of every line read well enough to count."""
    ocr = engine()
    for index, frame in enumerate(frames):
        image = frame if frame.ndim == 3 else np.ascontiguousarray(frame)
        result, _ = ocr(image)
        for box, text, score in result or []:
            if float(score) >= min_score and len(str(text).strip()) >= min_chars:
                yield index, box, str(text).strip(), float(score)


def detect_text(
    frames: Iterable[np.ndarray],
    *,
    min_score: float = 0.6,
    min_chars: int = 2,
    texts: list[str] | None = None,
) -> list[TextBox]:
    """Lines of text found in ``frames`` with at least ``min_chars`` characters read.

    Single characters (laterality markers such as L and R) are not PHI and are left out.
    ``frames`` are 8-bit images (H x W or H x W x 3, see
    :func:`curation.pixels.frames_for_ocr`); ``min_score`` is the confidence (0-1) a line needs.
    When ``texts`` is given, the text of each line is appended to it (PHI: the caller keeps it
    in memory for the stream verification, ``flows.work``, and never logs or stores it).

    Raises:
        ConfigError: the OCR engine is not installed (see :func:`engine`).
    """
    found: list[TextBox] = []
    for index, box, text, score in _read_lines(frames, min_score, min_chars):
        if texts is not None:
            texts.append(text)
        xs = [float(p[0]) for p in box]
        ys = [float(p[1]) for p in box]
        found.append(
            TextBox(
                int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys)),
                round(score, 3), len(text), index,
            )
        )  # fmt: skip
    return found


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
    return [text for _, _, text, _ in _read_lines(frames, min_score, min_chars)]
