"""Labeling lists: worklists exported to radiologists, and the labels they hand back.

A project defines its label schema in its TOML::

    [labels]
    viewer = "https://ohif.example.org/viewer?StudyInstanceUIDs={study_uid}"
    [[labels.fields]]
    name = "finding"
    type = "choice"            # text | int | float | bool | choice
    values = ["normal", "abnormal"]
    required = true

A worklist row carries only de-identified values (research IDs, the de-identified Study Instance
UID, shifted dates), so a list can be mailed to a resident. A worklist is CSV or an Excel
workbook (XLSX, Office Open XML, ECMA-376) whose sheet is named after the release, with a frozen
header row, a dropdown (data validation list) on every choice and yes/no field, and clickable
viewer links. Imported rows are validated one by one; good rows are stored with the release as
``labels.parquet`` in the object store (with assignee, source and time) and the next manifest
lists that file. A row identical to a stored label is skipped (a file imported twice), a changed
value for a study the person already labeled is a correction (refused unless asked for, then
audited), and refused rows are written back to a *rejected* file of the input's format with a
``reason`` column, for the office to send back.

Curation floor (``curation/``): it reads the release's manifest parts (:mod:`export.manifest`)
and writes to the object store (:mod:`export.store`), the only export modules curation uses.
Assignments (who was given which study) stay on premises under ``RIDL_HOME/labels``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from export.manifest import read_parts
from export.store import ObjectStore
from ridl import settings
from ridl.errors import ConfigError, ReleaseError
from ridl.releases import load_withdrawn

FIELD_TYPES = ("text", "int", "float", "bool", "choice")
BASE_COLUMNS = [
    "project",
    "release",
    "assignee",
    "research_study_id",
    "research_id",
    "modality",
    "description",
    "study_date",
    "viewer_link",
]
STORED_META = ["research_study_id", "study_uid", "assignee", "source", "labeled_at"]
REASON_COLUMN = "reason"  # the column a rejected-rows file adds to its input's columns
WORKLIST_FORMATS = ("csv", "xlsx")
# Excel's sheet-name rules: at most 31 characters, none of []:*?/\, no leading or trailing
# apostrophe, not empty and not "History" (reserved).
SHEET_NAME_MAX = 31
SHEET_NAME_FORBIDDEN = frozenset("[]:*?/\\")
CHOICES_SHEET = "choices"  # the hidden sheet that holds the dropdowns' values
TRUE_WORDS = {"1", "true", "yes", "y"}
FALSE_WORDS = {"0", "false", "no", "n"}


@dataclass(frozen=True)
class LabelField:
    """One label field of the schema: its name, type (text, int, float, bool, choice), the
    allowed values of a choice, and whether a labeled row must fill it."""

    name: str
    type: str = "text"
    values: tuple[str, ...] = ()
    required: bool = False

    def parse(self, raw: Any) -> Any:
        """The typed value, or raise ValueError with a message that names the field.

        Text is stripped; bool accepts 1/true/yes/y and 0/false/no/n (any case).

        Raises:
            ValueError: the text is not of the field's type or not one of its values.
        """
        text = "" if raw is None else str(raw).strip()
        if self.type == "text":
            return text
        if self.type == "int":
            try:
                return int(float(text)) if float(text).is_integer() else int(text)
            except ValueError:
                raise ValueError(f"{self.name}: {text!r} is not a whole number") from None
        if self.type == "float":
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{self.name}: {text!r} is not a number") from None
        if self.type == "bool":
            if text.lower() in TRUE_WORDS:
                return True
            if text.lower() in FALSE_WORDS:
                return False
            raise ValueError(f"{self.name}: {text!r} is not yes/no")
        if text not in self.values:
            raise ValueError(f"{self.name}: {text!r} is not one of {', '.join(self.values)}")
        return text


@dataclass(frozen=True)
class LabelSchema:
    """A project's label fields (``[[labels.fields]]``) and its viewer link template
    (``viewer``, with ``{study_uid}`` and ``{research_id}``; "" for none)."""

    fields: tuple[LabelField, ...]
    viewer: str = ""

    @property
    def names(self) -> list[str]:
        """The field names, in schema order."""
        return [f.name for f in self.fields]

    @classmethod
    def from_project(cls, section: Mapping[str, Any] | None) -> LabelSchema:
        """The schema of a project's ``[labels]`` TOML table.

        Raises:
            ConfigError: no fields, a field name missing or reserved (a worklist or stored
                column, or ``reason``), an unknown type, or a choice without values.
        """
        if not section or not section.get("fields"):
            raise ConfigError(
                "the project has no label schema: add [[labels.fields]] (name, type, values, "
                "required) to its TOML"
            )
        fields = []
        for i, raw in enumerate(section["fields"]):
            name = str(raw.get("name", "")).strip()
            kind = str(raw.get("type", "text"))
            if not name or name in BASE_COLUMNS or name in STORED_META or name == REASON_COLUMN:
                raise ConfigError(f"labels.fields[{i}].name is missing or reserved")
            if kind not in FIELD_TYPES:
                raise ConfigError(f"labels.fields[{i}].type must be one of {FIELD_TYPES}")
            values = tuple(str(v) for v in raw.get("values", []))
            if kind == "choice" and not values:
                raise ConfigError(f"labels.fields[{i}] is a choice without values")
            fields.append(LabelField(name, kind, values, bool(raw.get("required", False))))
        return cls(tuple(fields), str(section.get("viewer", "")))


def schema_for(project: str) -> LabelSchema:
    """The label schema of a project, from its file.

    Raises:
        ConfigError: the project file or its ``[labels]`` table is invalid.
        ProjectNotFound: no such project.
    """
    from ridl.projects import load_project

    return LabelSchema.from_project(load_project(project).extra.get("labels"))


def research_study_id(research_id: str, study_uid: str) -> str:
    """A short, stable study ID for people: the subject's research ID and a digest of the UID.

    ``<research_id>-`` and 8 upper-case hex digits of the SHA-256 of the (de-identified) Study
    Instance UID.
    """
    return f"{research_id}-{hashlib.sha256(study_uid.encode()).hexdigest()[:8].upper()}"


def release_studies(
    store: ObjectStore, project: str, release: str, *, include_withdrawn: bool = False
) -> pd.DataFrame:
    """The curated studies of a release, one row each, from its manifest parts.

    Studies of subjects withdrawn from the project (``ridl release withdraw``) are left out,
    for old and new releases alike, unless ``include_withdrawn``.

    Columns: ``research_study_id``, ``research_id``, ``study_uid`` (de-identified),
    ``description``, ``study_date`` (shifted), ``keys`` (list of object keys) and ``modality``
    (modalities joined with ``/``); sorted by ``research_study_id``.

    Raises:
        ReleaseError: the release has no exported studies in the store.
    """
    rows: dict[str, dict[str, Any]] = {}
    for part in read_parts(store, f"{project}/{release}"):
        for obj in part.get("objects", []):
            uid = obj["study_uid"]
            row = rows.setdefault(
                uid,
                {
                    "research_study_id": research_study_id(obj["research_id"], uid),
                    "research_id": obj["research_id"],
                    "study_uid": uid,
                    "modalities": set(),
                    "description": obj.get("study_description", ""),
                    "study_date": obj.get("study_date", ""),
                    "keys": [],
                },
            )
            row["modalities"].add(obj["modality"])
            row["keys"].append(obj["key"])
    if not rows:
        raise ReleaseError(
            f"release {project}/{release} has no exported studies in {store.url}; run it first"
        )
    frame = pd.DataFrame(list(rows.values()))
    if not include_withdrawn:
        frame = frame[~frame["research_id"].isin(sorted(load_withdrawn(project)))]
    frame["modality"] = frame["modalities"].apply(lambda m: "/".join(sorted(m)))
    return frame.drop(columns=["modalities"]).sort_values("research_study_id", ignore_index=True)


def _labels_dir(project: str, release: str) -> Path:
    return settings.private_dir(settings.ridl_home() / "labels" / project / release)


def _assignments(project: str, release: str) -> pd.DataFrame:
    path = _labels_dir(project, release) / "assignments.csv"
    if not path.exists():
        return pd.DataFrame(columns=["research_study_id", "assignee", "assigned_at"])
    return pd.read_csv(path, dtype=str)


def export_worklist(
    store: ObjectStore,
    project: str,
    release: str,
    assignee: str,
    out: Path,
    *,
    count: int | None = None,
    fmt: str = "csv",
    overlap: bool = False,
) -> tuple[Path, int]:
    """Write a worklist of studies nobody has been given yet (or, with overlap, not this person).

    ``count`` caps the number of rows; ``fmt`` is ``csv`` or ``xlsx``. The sheet has the base
    columns and one empty column per label field; the assignment is recorded on premises. An
    XLSX worklist is laid out by :func:`write_sheet` (sheet named after the release, frozen
    header, dropdowns, viewer links as hyperlinks). Returns ``out`` and the number of studies
    written.

    Raises:
        ConfigError: another format, an empty assignee, or an invalid project or schema.
        ProjectNotFound: no such project.
        ReleaseError: the release has no exported studies in the store.
    """
    if fmt not in WORKLIST_FORMATS:
        raise ConfigError(f"--format must be csv or xlsx, not {fmt!r}")
    if not assignee.strip():
        raise ConfigError("--assignee must name the person who labels")
    schema = schema_for(project)
    studies = release_studies(store, project, release)
    taken = _assignments(project, release)
    if overlap:
        busy = set(taken.loc[taken["assignee"] == assignee, "research_study_id"])
    else:
        busy = set(taken["research_study_id"])
    todo = studies[~studies["research_study_id"].isin(busy)]
    if count is not None:
        todo = todo.head(count)
    sheet = pd.DataFrame(
        {
            "project": project,
            "release": release,
            "assignee": assignee,
            "research_study_id": todo["research_study_id"],
            "research_id": todo["research_id"],
            "modality": todo["modality"],
            "description": todo["description"],
            "study_date": todo["study_date"],
            "viewer_link": [
                schema.viewer.format(study_uid=u, research_id=r) if schema.viewer else ""
                for u, r in zip(todo["study_uid"], todo["research_id"], strict=True)
            ],
        }
    )
    for name in schema.names:
        sheet[name] = ""
    write_sheet(sheet, out, schema, title=release, fmt=fmt)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    new = pd.DataFrame(
        {"research_study_id": sheet["research_study_id"], "assignee": assignee, "assigned_at": now}
    )
    assignments = _labels_dir(project, release) / "assignments.csv"
    pd.concat([taken, new], ignore_index=True).to_csv(assignments, index=False)
    settings.private_file(assignments)
    return out, len(sheet)


# --- worklist files --------------------------------------------------------------------------


def sheet_title(release: str) -> str:
    """The name of a worklist's sheet: the release name within Excel's sheet-name rules.

    Excel (ECMA-376 Part 1, 18.2.20 ``sheet``; Excel's own limits) allows at most 31 characters
    and none of ``[ ] : * ? / \\``; each forbidden character becomes ``_``, the name is cut to
    31 characters, apostrophes at either end are dropped, and an empty result or the reserved
    name ``History`` becomes ``worklist`` (resp. ``History_``).
    """
    name = "".join("_" if c in SHEET_NAME_FORBIDDEN else c for c in release)
    name = name[:SHEET_NAME_MAX].strip("'")
    if not name:
        return "worklist"
    if name.lower() == "history":
        return f"{name}_"
    return name


def dropdown_values(fld: LabelField) -> tuple[str, ...]:
    """The values a worklist's dropdown offers for a field: a choice's values, ``yes``/``no`` for
    a bool, none (no dropdown) for text and numbers."""
    if fld.type == "choice":
        return fld.values
    if fld.type == "bool":
        return ("yes", "no")
    return ()


def write_sheet(
    frame: pd.DataFrame, out: Path, schema: LabelSchema, *, title: str, fmt: str | None = None
) -> Path:
    """Write a worklist-shaped table (one row per study, columns as given) as CSV or XLSX.

    ``fmt`` defaults to the suffix of ``out`` (``.xlsx``, else CSV). Every cell is written as
    text. An XLSX workbook has one visible sheet named :func:`sheet_title` of ``title`` with a
    frozen header row and an auto-filter; every column named after a choice or bool field gets
    a dropdown (a data validation list, ECMA-376 Part 1, 18.3.1.32 ``dataValidation``) of
    :func:`dropdown_values`, kept on a hidden ``choices`` sheet so values may hold commas; a
    ``viewer_link`` column's URLs are hyperlinks. Returns ``out``.

    Raises:
        ConfigError: ``fmt`` is neither csv nor xlsx.
    """
    fmt = fmt or ("xlsx" if out.suffix.lower() == ".xlsx" else "csv")
    if fmt not in WORKLIST_FORMATS:
        raise ConfigError(f"--format must be csv or xlsx, not {fmt!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = frame.astype(object).where(frame.notna(), "").astype(str)
    if fmt == "csv":
        text.to_csv(out, index=False)
        return out
    _write_xlsx(text, out, schema, sheet_title(title))
    return out


def _write_xlsx(frame: pd.DataFrame, out: Path, schema: LabelSchema, title: str) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter, quote_sheetname
    from openpyxl.worksheet.datavalidation import DataValidation

    book = Workbook()
    sheet = book.active
    assert sheet is not None  # a new workbook has one sheet
    sheet.title = title
    columns = [str(c) for c in frame.columns]
    sheet.append(columns)
    for row in frame.itertuples(index=False):
        sheet.append(list(row))
    last = len(frame) + 1
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    sheet.freeze_panes = "A2"
    if columns:
        sheet.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{last}"
    for i, name in enumerate(columns, start=1):
        width = max([len(name), *(len(v) for v in frame[name].head(200))], default=8)
        sheet.column_dimensions[get_column_letter(i)].width = min(max(width + 2, 10), 60)
    if "viewer_link" in columns:
        col = columns.index("viewer_link") + 1
        for r in range(2, last + 1):
            cell = sheet.cell(row=r, column=col)
            if cell.value:
                cell.hyperlink = str(cell.value)
                cell.style = "Hyperlink"
    lists = book.create_sheet(CHOICES_SHEET)
    lists.sheet_state = "hidden"
    fields = {f.name: f for f in schema.fields}
    slot = 0
    for i, name in enumerate(columns, start=1):
        values = dropdown_values(fields[name]) if name in fields else ()
        if not values:
            continue
        slot += 1
        letter = get_column_letter(slot)
        lists.cell(row=1, column=slot, value=name)
        for r, value in enumerate(values, start=2):
            lists.cell(row=r, column=slot, value=value)
        source = f"{quote_sheetname(CHOICES_SHEET)}!${letter}$2:${letter}${len(values) + 1}"
        check = DataValidation(
            type="list",
            formula1=source,
            allow_blank=True,
            showErrorMessage=True,
            errorTitle=name,
            error=f"{name}: choose one of the listed values",
        )
        target = get_column_letter(i)
        check.add(f"{target}2:{target}{max(last, 2)}")
        sheet.add_data_validation(check)
    book.save(out)


# --- import ----------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did, in rows of the input.

    ``stored``: new label rows stored; ``corrected``: stored rows replaced by a correction;
    ``already_stored``: rows identical to a label already stored (skipped, as when a file is
    imported twice); ``unlabeled``: rows with every label field empty (skipped); ``errors``:
    (line number, problems) pairs of the rows refused, without the rows' values beyond IDs;
    ``rejected_file``: where the refused rows were written (None when none was refused or the
    rows came from code).
    """

    stored: int = 0
    unlabeled: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    already_stored: int = 0
    corrected: int = 0
    rejected_file: Path | None = None


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of a worklist file (``.xlsx``: its first sheet; else CSV)."""
    if not path.exists():
        raise ConfigError(f"no file {path}")
    if path.suffix.lower() == ".xlsx":
        frame = pd.read_excel(path, sheet_name=0, dtype=str, engine="openpyxl").fillna("")
        rows = [{str(k): str(v) for k, v in row.items()} for row in frame.to_dict("records")]
        return [str(c) for c in frame.columns], rows
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [{str(k): (v or "") for k, v in row.items()} for row in reader]
        return list(reader.fieldnames or []), rows


def read_worklist(path: Path) -> list[dict[str, str]]:
    """The rows of a returned worklist (``.xlsx``: its first sheet, else CSV) as {column: text}
    dicts.

    Raises:
        ConfigError: the file does not exist.
    """
    return _read_table(path)[1]


def rejected_path(path: Path) -> Path:
    """Where the refused rows of an imported file go by default: next to it, as
    ``<name>-rejected<suffix>`` (same format)."""
    return path.with_name(f"{path.stem}-rejected{path.suffix}")


def import_labels(
    store: ObjectStore,
    path: Path,
    *,
    project: str | None = None,
    release: str | None = None,
    correct: bool = False,
    rejected: Path | None = None,
) -> tuple[str, str, ImportReport]:
    """Validate every row of a returned worklist; store the good ones; report the bad by line.

    ``project`` and ``release`` default to the file's own (single-valued) columns. Rows already
    stored unchanged are skipped; ``correct`` lets changed values replace stored ones (see
    :func:`store_label_rows`). Refused rows are written, with the input's columns and a
    ``reason`` column, to ``rejected`` (default :func:`rejected_path`; XLSX when its suffix is
    ``.xlsx``, else CSV) so the office can send them back; the file is written only when a row
    was refused. Returns (project, release, :class:`ImportReport`); line numbers count the
    header as line 1.

    Raises:
        ConfigError: the file does not exist, its project or release column does not hold
            exactly one value (and none was given), or the project or schema is invalid.
        ProjectNotFound: no such project.
        ReleaseError: the release has no exported studies in the store.
    """
    columns, rows = _read_table(path)
    project = project or _one(rows, "project", path)
    release = release or _one(rows, "release", path)
    numbered = [(i + 2, row) for i, row in enumerate(rows)]  # line 1 is the header
    report = store_label_rows(store, project, release, numbered, source="import", correct=correct)
    if report.errors:
        target = rejected or rejected_path(path)
        why = dict(report.errors)
        refused = [dict(row, **{REASON_COLUMN: why[line]}) for line, row in numbered if line in why]
        header = [c for c in columns if c != REASON_COLUMN] + [REASON_COLUMN]
        frame = pd.DataFrame(refused).reindex(columns=header)
        report.rejected_file = write_sheet(frame, target, schema_for(project), title=release)
    return project, release, report


def _one(rows: list[dict[str, str]], column: str, path: Path) -> str:
    values = {r.get(column, "").strip() for r in rows} - {""}
    if len(values) != 1:
        raise ConfigError(f"{path}: column {column!r} must hold one value (use --{column})")
    return values.pop()


def labels_key(project: str, release: str) -> str:
    """The store key of a release's labels: ``<project>/<release>/labels.parquet``."""
    return f"{project}/{release}/labels.parquet"


def read_labels(store: ObjectStore, project: str, release: str) -> pd.DataFrame:
    """The release's stored labels, one row per (assignee, study); empty when there are none.

    Columns: ``research_study_id``, ``study_uid``, ``assignee``, ``source``, ``labeled_at``
    (ISO 8601 UTC) and one per label field (as strings).
    """
    key = labels_key(project, release)
    if not store.exists(key):
        return pd.DataFrame(columns=STORED_META)
    return pq.read_table(io.BytesIO(store.get_bytes(key))).to_pandas()


def store_label_rows(
    store: ObjectStore,
    project: str,
    release: str,
    rows: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    source: str,
    default_assignee: str = "",
    correct: bool = False,
) -> ImportReport:
    """Validate ``(line, row)`` pairs against the schema and the release; store the good ones.

    A row with every label field empty is counted as unlabeled; a row is refused for an unknown
    study, an empty assignee (after ``default_assignee``), a bad or missing required value, a
    study of a withdrawn subject, or a study the same input labels twice for one assignee. A row
    identical (label values) to the label its assignee already stored for the study is skipped
    and counted in ``already_stored``; one with other values is a correction: refused unless
    ``correct``, then it replaces the stored row (new values, source and time) and is counted in
    ``corrected``. ``source`` is recorded with each row (``import``, ``hook:<name>``). Each call
    is audited (``labels.imported``: counts stored, corrected, already stored, refused and
    unlabeled, and the assignees); corrections are also audited (``labels.corrected``: for each
    research study ID, the changed fields with old and new values; a free-text field's values
    are left out, as it may hold anything a reader typed).

    Raises:
        ConfigError: the project file or schema is invalid.
        ProjectNotFound: no such project.
        ReleaseError: the release has no exported studies in the store.
    """
    schema = schema_for(project)
    studies = release_studies(store, project, release, include_withdrawn=True)
    by_id = dict(zip(studies["research_study_id"], studies["study_uid"], strict=True))
    withdrawn = load_withdrawn(project)
    gone = set(studies.loc[studies["research_id"].isin(sorted(withdrawn)), "research_study_id"])
    existing = read_labels(store, project, release).reset_index(drop=True)
    stored_at = {
        (str(a), str(r)): i
        for i, (a, r) in enumerate(
            zip(existing["assignee"], existing["research_study_id"], strict=True)
        )
    }
    report = ImportReport()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    good: list[dict[str, Any]] = []
    replaced: dict[int, dict[str, Any]] = {}
    changes: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for line, row in rows:
        values = {name: row.get(name) for name in schema.names}
        if all(v is None or str(v).strip() == "" for v in values.values()):
            report.unlabeled += 1
            continue
        study = str(row.get("research_study_id", "")).strip()
        assignee = str(row.get("assignee", "") or default_assignee).strip()
        problems = []
        if study not in by_id:
            problems.append(f"unknown study {study!r} in release {release}")
        elif study in gone:
            problems.append(f"study {study}: the subject withdrew from the project")
        if not assignee:
            problems.append("assignee is empty")
        typed: dict[str, Any] = {}
        for fld in schema.fields:
            raw = values[fld.name]
            if raw is None or str(raw).strip() == "":
                if fld.required:
                    problems.append(f"{fld.name}: required field is empty")
                typed[fld.name] = None
                continue
            try:
                typed[fld.name] = fld.parse(raw)
            except ValueError as exc:
                problems.append(str(exc))
        key = (assignee, study)
        text = {k: (None if v is None else str(v)) for k, v in typed.items()}
        if not problems and key in seen:
            problems.append(
                f"study {study} is already labeled by {assignee} in an earlier row of this input"
            )
        diff: list[str] = []
        if not problems and key in stored_at:
            old = existing.iloc[stored_at[key]]
            diff = [n for n in schema.names if _stored_text(old.get(n)) != text[n]]
            if diff and not correct:
                problems.append(
                    f"study {study} is already labeled by {assignee} with other values "
                    f"({', '.join(diff)}); give --correct to replace them"
                )
        if problems:
            report.errors.append((line, "; ".join(problems)))
            continue
        seen.add(key)
        if key in stored_at and not diff:
            report.already_stored += 1
            continue
        stored = {
            "research_study_id": study,
            "study_uid": by_id[study],
            "assignee": assignee,
            "source": source,
            "labeled_at": now,
            **text,
        }
        if key in stored_at:
            old = existing.iloc[stored_at[key]]
            replaced[stored_at[key]] = stored
            kinds = {f.name: f.type for f in schema.fields}
            for name in diff:
                change: dict[str, Any] = {"research_study_id": study, "field": name}
                if kinds[name] == "text":
                    change["text_changed"] = True
                else:
                    change.update(old=_stored_text(old.get(name)), new=text[name])
                changes.append(change)
        else:
            good.append(stored)
    if good or replaced:
        columns = STORED_META + [n for n in schema.names]
        kept = existing.drop(index=list(replaced)) if replaced else existing
        frame = pd.concat(
            [kept, pd.DataFrame(list(replaced.values()) + good, columns=columns)],
            ignore_index=True,
        )
        frame = frame.reindex(columns=columns)
        table = pa.Table.from_pandas(frame.astype("string"), preserve_index=False)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        store.put_bytes(labels_key(project, release), sink.getvalue())
    report.stored = len(good)
    report.corrected = len(replaced)
    from ridl import audit

    audit.record(
        "labels.imported",
        project=project,
        release=release,
        source=source,
        stored=report.stored,
        corrected=report.corrected,
        already_stored=report.already_stored,
        refused=len(report.errors),
        unlabeled=report.unlabeled,
        assignees=sorted({str(row["assignee"]) for row in [*good, *replaced.values()]}),
    )
    if changes:
        audit.record(
            "labels.corrected", project=project, release=release, source=source, changes=changes
        )
    return report


def _stored_text(value: Any) -> str | None:
    """A stored label cell as text; None for a missing value (NA, None, a column not stored)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value)


def label_rows_from(items: Iterable[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    """Number rows that come from code (hooks): their 'line' is their position, from 1."""
    return [(i + 1, row) for i, row in enumerate(items)]
