"""The study catalog and selection from it, as :class:`ridl.studies.StudyRef` rows.

The catalog is what the DIR holds, at study level, as Parquet (on-premises: it carries the patient
couplet). Selecting applies the REB scope, the opt-out list and de-duplication to it. Freezing the
selection into the release's own record (so a resumed run works on exactly the same studies
however the DIR has changed since) belongs to :mod:`ridl.releases`.

Ground floor (``ridl/``): the sources (``ridl.sources``) write catalogs through
:func:`write_study_rows` / :func:`write_study_table`; ``flows`` selects and hands
:class:`StudyRef` rows to the per-study work.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ridl import settings
from ridl.errors import ReleaseError
from ridl.optout import OptOutList
from ridl.projects import Scope
from ridl.reasons import Reason
from ridl.studies import StudyRef


def catalog_dir_for(source_url: str) -> Path:
    """Each source gets its own catalog folder, named by a hash of its URL (not created).

    The name is the first 16 hex digits of the URL's SHA-256, under ``RIDL_HOME/catalogs``.
    """
    digest = hashlib.sha256(source_url.encode()).hexdigest()[:16]
    return settings.catalogs_dir() / digest


STUDY_SCHEMA = pa.schema(
    [
        ("study_uid", pa.string()),
        ("study_date", pa.string()),
        ("issuer", pa.string()),
        ("patient_id", pa.string()),
        ("health_number", pa.string()),
        ("hn_known", pa.bool_()),
        ("description", pa.string()),
        ("modalities", pa.list_(pa.string())),
        ("n_series", pa.int64()),
        ("n_instances", pa.int64()),
        ("locations", pa.list_(pa.string())),
    ]
)
# Small row groups sorted by date: a date-window selection reads only the groups it needs.
ROW_GROUP_SIZE = 65_536
WINDOW_FILE = "window.json"


def write_study_rows(
    rows: list[dict[str, Any]] | pa.Table,
    catalog_dir: Path,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> None:
    """Write the study table (same columns for every source) and the date window it covers.

    ``rows`` is a list of dicts or an Arrow table with the columns of :data:`STUDY_SCHEMA` (one
    row per study); it is sorted by study date and written to ``studies.parquet`` in
    ``catalog_dir`` (created), with the window in ``window.json``. A window of None means
    "everything the source holds" (a folder is indexed whole).
    """
    settings.private_dir(catalog_dir)  # the catalog holds PHI: 0700, files 0600
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=STUDY_SCHEMA)
    table = table.select(STUDY_SCHEMA.names).cast(STUDY_SCHEMA)
    if table.num_rows:
        table = table.sort_by([("study_date", "ascending"), ("study_uid", "ascending")])
    tmp = catalog_dir / "studies.parquet.tmp"
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE)
    settings.private_file(tmp).replace(catalog_dir / "studies.parquet")
    window = {
        "date_from": date_from.isoformat() if date_from else None,
        "date_to": date_to.isoformat() if date_to else None,
    }
    (catalog_dir / WINDOW_FILE).write_text(json.dumps(window))
    settings.private_file(catalog_dir / WINDOW_FILE)


def catalog_covers(catalog_dir: Path, date_from: dt.date, date_to: dt.date) -> bool:
    """Whether an existing catalog was built for a window that holds [date_from, date_to].

    False when ``catalog_dir`` holds no ``studies.parquet``; True for a catalog without a recorded
    window (an older catalog of a whole folder). Both dates are inclusive.
    """
    if not (catalog_dir / "studies.parquet").exists():
        return False
    path = catalog_dir / WINDOW_FILE
    if not path.exists():
        return True  # an older catalog of a whole folder
    window = json.loads(path.read_text())
    low = window.get("date_from")
    high = window.get("date_to")
    return (low is None or dt.date.fromisoformat(low) <= date_from) and (
        high is None or dt.date.fromisoformat(high) >= date_to
    )


def write_study_table(instances: pa.Table, catalog_dir: Path) -> None:
    """Aggregate an instance table into the study table selection works on.

    ``instances`` has one row per instance with ``study_uid``, ``series_uid``, ``sop_uid``,
    ``study_date``, ``issuer``, ``patient_id``, ``health_number``, ``description``, ``modality``
    and ``path``; the result (one row per study, see :func:`write_study_rows`) goes to
    ``catalog_dir``.
    """
    frame = instances.to_pandas()
    if frame.empty:
        write_study_rows([], catalog_dir)
        return
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
    studies["hn_known"] = True
    studies["n_series"] = studies["n_series"].astype("int64")
    studies["n_instances"] = studies["n_instances"].astype("int64")
    write_study_rows(pa.Table.from_pandas(studies, preserve_index=False), catalog_dir)


def catalog_summary(catalog_dir: Path) -> dict[str, Any]:
    """What a catalog holds, in counts only (no patient name, ID or full date).

    Returns ``studies`` and ``instances`` (ints), ``first_year`` and ``last_year`` (of the study
    dates; None when no study has a readable date), ``sites`` {Issuer of Patient ID: studies}
    and ``modalities`` {modality: studies holding it} (a study with CT and SR counts under
    both), each sorted by name.

    Raises:
        FileNotFoundError: ``catalog_dir`` holds no ``studies.parquet``.
    """
    table = pq.read_table(
        catalog_dir / "studies.parquet",
        columns=["study_date", "issuer", "modalities", "n_instances"],
    )
    years = sorted(
        int(d[:4]) for d in table.column("study_date").to_pylist() if d and d[:4].isdigit()
    )
    sites: dict[str, int] = {}
    for issuer in table.column("issuer").to_pylist():
        sites[issuer or "(none)"] = sites.get(issuer or "(none)", 0) + 1
    modalities: dict[str, int] = {}
    for kinds in table.column("modalities").to_pylist():
        for kind in set(kinds or []):
            modalities[kind] = modalities.get(kind, 0) + 1
    return {
        "studies": table.num_rows,
        "instances": int(pc.sum(table.column("n_instances")).as_py() or 0),
        "first_year": years[0] if years else None,
        "last_year": years[-1] if years else None,
        "sites": dict(sorted(sites.items())),
        "modalities": dict(sorted(modalities.items())),
    }


@dataclass
class Selection:
    """The chosen studies and what selection removed (counts only, no identifiers).

    ``studies`` has one row per study (catalog columns, sorted by Study Instance UID);
    ``excluded`` is {reason: number of studies} (``duplicate-study``, ``opted-out``,
    ``withdrawn``).
    """

    studies: pd.DataFrame
    excluded: dict[str, int]


def select_studies(
    catalog_dir: Path, scope: Scope, optout: OptOutList | None = None
) -> pd.DataFrame:
    """Studies in scope, without opted-out subjects and duplicate Study Instance UIDs.

    The frame of :func:`select` (one row per study), without its exclusion counts.

    Raises:
        ReleaseError: ``catalog_dir`` holds no study catalog (the source was never indexed).
    """
    return select(catalog_dir, scope, optout).studies


def select(
    catalog_dir: Path,
    scope: Scope,
    optout: OptOutList | None = None,
    withdrawn: Callable[[str | None, str, str], bool] | None = None,
) -> Selection:
    """Apply the REB scope, the opt-out list, withdrawals and study de-duplication to the catalog.

    ``withdrawn`` tells whether a subject (health number or None, Issuer of Patient ID, Patient
    ID) withdrew from the project (``ridl release withdraw``); their studies are left out and
    counted under ``withdrawn``, as opted-out subjects are under ``opted-out``.

    The date and site filters are pushed down to the Parquet scan and the modality overlap is
    computed batch by batch, so only rows in scope are ever held in memory, however large the
    catalog (a million studies select in a few hundred MB; see benchmarks/selection.py).

    Scope dates are inclusive and compared with the catalog's DICOM ``YYYYMMDD`` dates; sites
    are Issuers of Patient ID; a study is kept when any of its modalities is in scope.

    Raises:
        ReleaseError: ``catalog_dir`` holds no study catalog (the source was never indexed).
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
    wanted = pa.array(sorted(scope.modalities), pa.string())
    kept: list[pa.Table] = []
    for batch in dataset.to_batches(filter=expr):
        if batch.num_rows == 0:
            continue
        mods = batch.column("modalities")
        flat_hit = pc.is_in(pc.list_flatten(mods), value_set=wanted)
        parents = pc.filter(pc.list_parent_indices(mods), flat_hit)
        rows = pc.unique(parents)
        if len(rows):
            kept.append(pa.Table.from_batches([batch]).take(rows))
    schema = dataset.schema
    table = pa.concat_tables(kept) if kept else schema.empty_table()
    frame = table.to_pandas()
    if "hn_known" not in frame.columns:
        frame["hn_known"] = True
    excluded: dict[str, int] = {}
    frame, n_dup = drop_duplicate_studies(frame)
    if n_dup:
        excluded[Reason.DUPLICATE_STUDY] = n_dup
    if optout is not None:
        optout.refresh()
    if optout is not None and len(optout) and not frame.empty:
        out = pd.Series(
            [
                optout.contains(hn, issuer, pid)
                for hn, issuer, pid in zip(
                    frame["health_number"], frame["issuer"], frame["patient_id"], strict=True
                )
            ],
            index=frame.index,
            dtype=bool,
        )
        if out.any():
            excluded[Reason.OPTED_OUT] = int(out.sum())
            frame = frame[~out]
    if withdrawn is not None and not frame.empty:
        gone = pd.Series(
            [
                withdrawn(hn if isinstance(hn, str) and hn else None, str(issuer), str(pid))
                for hn, issuer, pid in zip(
                    frame["health_number"], frame["issuer"], frame["patient_id"], strict=True
                )
            ],
            index=frame.index,
            dtype=bool,
        )
        if gone.any():
            excluded[Reason.WITHDRAWN] = int(gone.sum())
            frame = frame[~gone]
    return Selection(frame.sort_values("study_uid").reset_index(drop=True), excluded)


def scope_exclusions(catalog_dir: Path, scope: Scope) -> dict[str, int]:
    """Studies of the catalog that a selection under ``scope`` leaves out before any other
    rule, by the first filter each fails, in :func:`select`'s order: ``dates`` (Study Date
    outside ``scope.date_from..date_to``, or missing), ``sites`` (Issuer of Patient ID not in
    ``scope.sites``), ``modalities`` (none of its modalities in ``scope.modalities``). Counts of
    studies (zeros left out); the catalog is read batch by batch, three columns.

    A network source's catalog only holds the dates it was indexed for, so studies outside
    those are not counted.

    Raises:
        ReleaseError: ``catalog_dir`` holds no study catalog (the source was never indexed).
    """
    path = catalog_dir / "studies.parquet"
    if not path.exists():
        raise ReleaseError(f"no study catalog at {catalog_dir}; index the source first")
    low, high = scope.date_from.strftime("%Y%m%d"), scope.date_to.strftime("%Y%m%d")
    sites = pa.array(sorted(scope.sites), pa.string())
    wanted = pa.array(sorted(scope.modalities), pa.string())
    counts = {"dates": 0, "sites": 0, "modalities": 0}
    dataset = ds.dataset(path, format="parquet")
    for batch in dataset.to_batches(columns=["study_date", "issuer", "modalities"]):
        if batch.num_rows == 0:
            continue
        date = batch.column("study_date")
        dated = pc.fill_null(
            pc.and_(pc.greater_equal(date, low), pc.less_equal(date, high)), False
        ).to_numpy(zero_copy_only=False)
        sited = pc.fill_null(pc.is_in(batch.column("issuer"), value_set=sites), False)
        sited = sited.to_numpy(zero_copy_only=False)
        mods = batch.column("modalities")
        hit = pc.is_in(pc.list_flatten(mods), value_set=wanted)
        rows = pc.unique(pc.filter(pc.list_parent_indices(mods), hit)).to_numpy()
        approved = np.zeros(batch.num_rows, dtype=bool)
        approved[rows] = True
        counts["dates"] += int((~dated).sum())
        counts["sites"] += int((dated & ~sited).sum())
        counts["modalities"] += int((dated & sited & ~approved).sum())
    return {k: v for k, v in counts.items() if v}


def drop_duplicate_studies(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one row per Study Instance UID (the same study sent by two feeds).

    The row kept is the most useful one, chosen the same way every time: a known health number
    first, then the most instances, then issuer and Patient ID order.

    Returns the frame without duplicates and the number of rows dropped.
    """
    if frame.empty or not frame["study_uid"].duplicated().any():
        return frame, 0
    ranked = frame.assign(
        _has_hn=frame["health_number"].fillna("").astype(str).str.len() > 0,
    ).sort_values(
        ["study_uid", "_has_hn", "n_instances", "issuer", "patient_id"],
        ascending=[True, False, False, True, True],
    )
    unique = ranked.drop_duplicates("study_uid", keep="first").drop(columns="_has_hn")
    return unique, len(frame) - len(unique)


def study_refs(selection: pd.DataFrame) -> list[StudyRef]:
    """One :class:`StudyRef` per row of a selection frame (catalog columns), in row order.

    An empty or missing health number becomes None; ``hn_known`` defaults to True for catalogs
    written before the column existed.
    """
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
                hn_known=bool(row.get("hn_known", True)),
            )
        )
    return refs
