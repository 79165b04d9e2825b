"""Review sheets and decisions, kept on premises under ``RIDL_HOME/review/<project>/<release>``.

Every at-risk object leaves a record (reason, detected text boxes, what happened to it) and a
small thumbnail with the boxes drawn, named by the SHA-256 of the source object (the same name
quarantine uses; never a source path or a header value). ``ridl review sheet`` builds an HTML page
of them; a reviewer approves or rejects objects in ``decisions.csv`` (or with ``ridl review
decide``), and the next run of the same release honours the decisions.

The thumbnails show burned-in text, which is PHI: the folder is created 0700 and nothing here is
ever uploaded, printed or logged; the detected text itself is never kept, only its boxes.

Curation floor (``curation/``): :mod:`curation.pipeline` writes records and reads decisions;
``ridl review`` (:mod:`curation.cli`) builds the sheet and records decisions.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from ridl import settings
from ridl.errors import ConfigError

Decision = Literal["approve", "reject"]
DECISIONS = ("approve", "reject")
DECISION_COLUMNS = ["object", "decision", "reviewer", "decided_at", "note"]
THUMB_SIZE = 320


def review_dir(project: str, release: str) -> Path:
    """The release's review folder, ``RIDL_HOME/review/<project>/<release>`` (not created)."""
    return settings.ridl_home() / "review" / project / release


def _private_dir(path: Path) -> Path:
    return settings.private_dir(path)  # review material shows pixels: 0700, files 0600


@dataclass
class ReviewRecord:
    """What the reviewer needs to decide about one object; no header value, no detected text.

    ``object`` is the SHA-256 of the source object; ``reason`` a reason code; ``triage`` the
    codes of the filters that put it at risk; ``boxes`` :meth:`curation.ocr.TextBox.as_dict`
    rows; ``thumbnail`` a path relative to the review folder; ``recorded_at`` ISO 8601 UTC.
    """

    object: str
    study_key: str
    status: str  # "quarantined" or "exported"
    reason: str
    modality: str = ""
    triage: list[str] = field(default_factory=list)
    cleaned: bool = False
    boxes: list[dict[str, Any]] = field(default_factory=list)
    thumbnail: str = ""
    recorded_at: str = ""


def record_object(
    project: str,
    release: str,
    record: ReviewRecord,
    frame: np.ndarray | None = None,
) -> ReviewRecord:
    """Write the record and its thumbnail (boxes drawn) for the sheet.

    ``frame`` is an 8-bit frame (see :func:`curation.pixels.frames_for_ocr`), or None for no
    thumbnail. The record is updated (``thumbnail``, ``recorded_at``) and returned.
    """
    folder = _private_dir(review_dir(project, release))
    thumbs = _private_dir(folder / "thumbs")
    if frame is not None:
        name = f"{record.object}.png"
        (thumbs / name).write_bytes(thumbnail_png(frame, record.boxes))
        settings.private_file(thumbs / name)
        record.thumbnail = f"thumbs/{name}"
    record.recorded_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    objects = _private_dir(folder / "objects")
    tmp = objects / f".{record.object}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True))
    settings.private_file(tmp).replace(objects / f"{record.object}.json")
    return record


def thumbnail_png(frame: np.ndarray, boxes: Iterable[dict[str, Any]]) -> bytes:
    """PNG bytes of an 8-bit frame, scaled to at most 320 px on its long side, with the boxes
    of frame 0 drawn in red."""
    image = Image.fromarray(frame).convert("RGB")
    scale = min(1.0, THUMB_SIZE / max(image.size))
    draw = ImageDraw.Draw(image)
    for box in boxes:
        if int(box.get("frame", 0)) != 0:
            continue
        draw.rectangle(
            [box["x0"], box["y0"], box["x1"], box["y1"]],
            outline=(255, 0, 0),
            width=max(1, int(2 / scale)),
        )
    if scale < 1.0:
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def list_records(project: str, release: str) -> list[ReviewRecord]:
    """The release's review records, sorted by object (empty when there are none)."""
    folder = review_dir(project, release) / "objects"
    if not folder.exists():
        return []
    return [ReviewRecord(**json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


def held_by_checks(project: str, release: str) -> list[ReviewRecord]:
    """Quarantined objects that have no review record of their own (held by a check)."""
    from curation.quarantine import list_quarantine

    have = {r.object for r in list_records(project, release)}
    return [
        ReviewRecord(q.sha256, q.study_key or "", "quarantined", q.reason)
        for q in list_quarantine(project, release)
        if q.sha256 not in have
    ]


def held_path(project: str, release: str, study_key: str) -> Path:
    """Where the review IDs a study's work held for a reviewer are kept, on premises:
    ``RIDL_HOME/review/<project>/<release>/held/<study key>.json`` (``study_key`` is the
    de-identified Study Instance UID)."""
    return review_dir(project, release) / "held" / f"{study_key}.json"


def write_held(project: str, release: str, study_key: str, object_ids: Iterable[str]) -> None:
    """Keep the review IDs (SHA-256 of source objects) a study holds for a reviewer, on premises.

    They link a research subject to original files, so they never go into a published part;
    the next run of the release reads them (:func:`read_held`) to redo a study a reviewer has
    decided about. An empty list removes the record.
    """
    path = held_path(project, release, study_key)
    ids = sorted(set(object_ids))
    if not ids:
        path.unlink(missing_ok=True)
        return
    folder = _private_dir(path.parent)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(ids))
    tmp.replace(path)


def read_held(project: str, release: str, study_key: str) -> list[str]:
    """The review IDs :func:`write_held` kept for a study (empty when none, or unreadable)."""
    try:
        ids = json.loads(held_path(project, release, study_key).read_text())
    except (OSError, ValueError):
        return []
    return [str(i) for i in ids] if isinstance(ids, list) else []


# --- decisions ----------------------------------------------------------------------------------


def decisions_path(project: str, release: str) -> Path:
    """The release's ``decisions.csv`` in its review folder."""
    return review_dir(project, release) / "decisions.csv"


class Decisions:
    """The decisions file, re-read whenever it changes (a long-lived worker sees new ones)."""

    def __init__(self, project: str, release: str) -> None:
        self.path = decisions_path(project, release)
        self._stamp: tuple[float, int] | None = None
        self._data: dict[str, str] = {}

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._data = None, {}
            return
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            self._data = read_decisions(self.path)
            self._stamp = stamp

    def get(self, object_id: str) -> str | None:
        """``approve``, ``reject`` or None (undecided) for an object's SHA-256.

        Raises:
            ConfigError: the file has a bad decision (see :func:`read_decisions`).
        """
        self._refresh()
        return self._data.get(object_id)

    def decided_any(self, object_ids: Iterable[str]) -> bool:
        """Whether any of the objects has a decision.

        Raises:
            ConfigError: the file has a bad decision (see :func:`read_decisions`).
        """
        self._refresh()
        return any(o in self._data for o in object_ids)


def read_decisions(path: Path) -> dict[str, str]:
    """``object -> approve|reject``; the last line for an object wins. Bad lines fail loudly.

    Lines without an object are skipped; line numbers in messages count the header as 1.

    Raises:
        ConfigError: a line's decision is neither approve nor reject.
    """
    decisions: dict[str, str] = {}
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            obj = (row.get("object") or "").strip()
            decision = (row.get("decision") or "").strip().lower()
            if not obj:
                continue
            if decision not in DECISIONS:
                raise ConfigError(
                    f"{path} line {line}: decision must be approve or reject (got {decision!r})"
                )
            decisions[obj] = decision
    return decisions


def decide(
    project: str, release: str, object_id: str, decision: str, reviewer: str, note: str = ""
) -> None:
    """Append one decision to the release's decisions file.

    ``object_id`` is the SHA-256 named on the sheet; the time is recorded in ISO 8601 UTC. The
    decision is audited (``review.decided``: object, decision, reviewer; the note stays in the
    decisions file, since it is free text).

    Raises:
        ConfigError: the decision is neither approve nor reject, or no object of the release
            has that ID.
    """
    if decision not in DECISIONS:
        raise ConfigError("decision must be approve or reject")
    known = {r.object for r in list_records(project, release) + held_by_checks(project, release)}
    if object_id not in known:
        raise ConfigError(f"no object {object_id} to review in {project}/{release}")
    path = decisions_path(project, release)
    _private_dir(path.parent)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        settings.private_file(path)
        writer = csv.DictWriter(handle, fieldnames=DECISION_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(
            {
                "object": object_id,
                "decision": decision,
                "reviewer": reviewer,
                "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "note": note,
            }
        )
    from ridl import audit

    audit.record(
        "review.decided",
        project=project,
        release=release,
        object=object_id,
        decision=decision,
        reviewer=reviewer,
    )


# --- the sheet ----------------------------------------------------------------------------------


def write_sheet(project: str, release: str) -> Path:
    """Write ``index.html``: one card per at-risk object, quarantined first.

    Returns the page's path in the review folder (on premises only: thumbnails may show PHI).

    Raises:
        ConfigError: the decisions file has a bad decision.
    """
    folder = _private_dir(review_dir(project, release))
    records = list_records(project, release) + held_by_checks(project, release)
    decided = (
        read_decisions(decisions_path(project, release))
        if decisions_path(project, release).exists()
        else {}
    )
    records.sort(key=lambda r: (r.status != "quarantined", r.study_key, r.object))
    cards = []
    for r in records:
        esc = html.escape
        img = f'<img src="{esc(r.thumbnail)}" alt="thumbnail">' if r.thumbnail else "(no image)"
        cards.append(
            f'<div class="card {esc(r.status)}"><div>{img}</div>'
            f"<p><b>{esc(r.status)}</b>: {esc(r.reason)}<br>"
            f"modality {esc(r.modality)}; {len(r.boxes)} text box(es); "
            f"{'known regions blanked' if r.cleaned else 'no known region'}<br>"
            f"decision: <b>{esc(decided.get(r.object, 'pending'))}</b><br>"
            f"<code>{esc(r.object)}</code><br>study {esc(r.study_key[:24])}</p></div>"
        )
    pending = sum(1 for r in records if r.status == "quarantined" and r.object not in decided)
    title = f"ridl review {html.escape(project)}/{html.escape(release)}"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.card {{ display: inline-block; vertical-align: top; width: 340px; margin: 6px; padding: 6px;
        border: 1px solid #999; }}
.quarantined {{ background: #fee; }} .exported {{ background: #efe; }}
img {{ max-width: 330px; }} code {{ font-size: 70%; word-break: break-all; }}
</style></head><body>
<h1>Review: {html.escape(project)} / {html.escape(release)}</h1>
<p>ON PREMISES ONLY: thumbnails may show burned-in patient information. {len(records)} at-risk
objects, {pending} quarantined awaiting a decision. Record decisions in
<code>decisions.csv</code> (columns {", ".join(DECISION_COLUMNS)}) or with
<code>ridl review decide</code>; the next run of this release honours them.</p>
{"".join(cards)}
</body></html>
"""
    path = folder / "index.html"
    path.write_text(page)
    return settings.private_file(path)
