"""The study catalog and the frozen selection of a release.

The catalog is what the DIR holds, at study level, as Parquet (on-premises: it carries the patient
couplet). Selecting applies the REB scope to it; freezing writes the chosen studies to the
release's own record, so the release can be rebuilt and audited, and a resumed run works on
exactly the same studies however the DIR has changed since.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ridl import settings
from ridl.errors import ReleaseError
from ridl.projects import Scope
from ridl.sources.base import StudyRef

RELEASE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def catalog_dir_for(source_url: str) -> Path:
    """Each source gets its own catalog folder, named by a hash of its URL."""
    digest = hashlib.sha256(source_url.encode()).hexdigest()[:16]
    return settings.catalogs_dir() / digest


def write_study_table(instances: pa.Table, catalog_dir: Path) -> None:
    """Aggregate an instance table into the study table selection works on."""
    frame = instances.to_pandas()
    if frame.empty:
        studies = pd.DataFrame(
            columns=[
                "study_uid",
                "study_date",
                "issuer",
                "patient_id",
                "health_number",
                "description",
                "modalities",
                "n_series",
                "n_instances",
                "locations",
            ]
        )
    else:
        grouped = frame.groupby("study_uid", sort=True)
        studies = grouped.agg(
            study_date=("study_date", "first"),
            issuer=("issuer", "first"),
            patient_id=("patient_id", "first"),
            health_number=("health_number", "first"),
            description=("description", "first"),
            modalities=("modality", lambda s: sorted(set(s))),
            n_series=("series_uid", "nunique"),
            n_instances=("sop_uid", "count"),
            locations=("path", lambda s: sorted(s)),
        ).reset_index()
    table = pa.Table.from_pandas(studies, preserve_index=False)
    pq.write_table(table, catalog_dir / "studies.parquet")


def select_studies(catalog_dir: Path, scope: Scope) -> pd.DataFrame:
    """Studies in scope: date window and sites filtered by pyarrow, modalities by overlap.

    The date and site filters are pushed down to the Parquet scan, so only matching rows are
    loaded, however large the catalog is.
    """
    path = catalog_dir / "studies.parquet"
    if not path.exists():
        raise ReleaseError(f"no study catalog at {catalog_dir}; index the source first")
    dataset = ds.dataset(path, format="parquet")
    expr = (
        (pc.field("study_date") >= scope.date_from.strftime("%Y%m%d"))
        & (pc.field("study_date") <= scope.date_to.strftime("%Y%m%d"))
        & pc.field("issuer").isin(list(scope.sites))
    )
    table = dataset.to_table(filter=expr)
    frame = table.to_pandas()
    wanted = set(scope.modalities)
    if not frame.empty:
        keep = frame["modalities"].apply(lambda mods: bool(wanted.intersection(mods)))
        frame = frame[keep]
    return frame.sort_values("study_uid").reset_index(drop=True)


@dataclass(frozen=True)
class RunRecord:
    """The parameters a release was frozen with; a resumed run must ask for the same."""

    project: str
    release: str
    source: str
    date_from: str
    date_to: str
    modalities: list[str]
    sites: list[str]
    recipe: str

    def same_request(self, other: RunRecord) -> bool:
        return asdict(self) == asdict(other)


def release_dir(project: str, release: str) -> Path:
    if not release or not set(release) <= RELEASE_NAME_CHARS or release.startswith("."):
        raise ReleaseError("release names use letters, digits, '.', '_' and '-' only")
    return settings.releases_dir() / project / release


def freeze_selection(record: RunRecord, selection: pd.DataFrame) -> Path:
    """Write the selection and its parameters for the release, once."""
    folder = release_dir(record.project, record.release)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(selection, preserve_index=False)
    tmp = folder / "selection.parquet.tmp"
    pq.write_table(table, tmp)
    (folder / "run.json").write_text(json.dumps(asdict(record), indent=2, sort_keys=True))
    tmp.replace(folder / "selection.parquet")
    from ridl import audit

    digest = hashlib.sha256((folder / "selection.parquet").read_bytes()).hexdigest()
    audit.record(
        "selection.frozen",
        project=record.project,
        release=record.release,
        studies=len(selection),
        selection_sha256=digest,
        date_from=record.date_from,
        date_to=record.date_to,
        modalities=record.modalities,
        sites=record.sites,
    )
    return folder / "selection.parquet"


def load_frozen(project: str, release: str) -> tuple[RunRecord, pd.DataFrame] | None:
    folder = release_dir(project, release)
    sel = folder / "selection.parquet"
    if not sel.exists():
        return None
    record = RunRecord(**json.loads((folder / "run.json").read_text()))
    return record, pq.read_table(sel).to_pandas()


def study_refs(selection: pd.DataFrame) -> list[StudyRef]:
    refs = []
    for row in selection.to_dict("records"):
        hn = row["health_number"]
        locations: Any = row["locations"]
        refs.append(
            StudyRef(
                study_uid=str(row["study_uid"]),
                issuer=str(row["issuer"]),
                patient_id=str(row["patient_id"]),
                health_number=hn if isinstance(hn, str) and hn else None,
                study_date=str(row["study_date"]),
                locations=tuple(str(x) for x in locations),
            )
        )
    return refs


def date_str(value: dt.date) -> str:
    return value.isoformat()


def as_jsonable(record: RunRecord) -> dict[str, Any]:
    return asdict(record)
