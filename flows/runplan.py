"""Preparing a run: every check that must pass before any work touches the DIR.

The CLI calls :func:`check_request` before it starts Prefect, so a refused request costs nothing;
the flow calls :func:`prepare_run` again, so a deployment launched without the CLI is held to
the same rules.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from curation.quarantine import quarantine_file
from export.manifest import source_part, source_part_key, write_part
from export.store import open_store
from flows.work import RunContext
from ridl.catalog import StudyRef, catalog_covers, catalog_dir_for, select, study_refs
from ridl.crossterms import load_terms
from ridl.errors import ReleaseError
from ridl.optout import load_optout
from ridl.projects import Project, Scope, load_project
from ridl.releases import RunRecord, freeze_selection, load_frozen, release_dir
from ridl.secrets import load_secret
from ridl.sources.base import open_source
from ridl.sources.protect import ArchiveLimits


@dataclass(frozen=True)
class RunPlan:
    """A checked, frozen run: the workers' context, the selected studies, and whether the
    selection was loaded from an earlier run of the same release (a resume)."""

    ctx: RunContext
    studies: list[StudyRef]
    resumed: bool


def recipe_sha256(spec: str | list[str]) -> str:
    """Hex SHA-256 of the compiled recipe (every layer), so an auditor can tell recipes apart.

    Raises:
        ConfigError: the recipe or one of its options is unknown.
    """
    from deid_recipes import load_recipe

    return str(load_recipe(spec).digest)


def run_fields(ctx: RunContext, batch_size: int, studies: int) -> dict[str, Any]:
    """What the audit entry ``run.started`` records: parameters, recipe hash, counts (no PHI)."""
    return {
        "project": ctx.project,
        "release": ctx.release,
        "source": ctx.source_url,
        "store": ctx.store_url,
        "recipe": ctx.recipe,
        "recipe_sha256": recipe_sha256(ctx.recipe),
        "retain": list(ctx.retain),
        "modalities": list(ctx.modalities),
        "batch_size": batch_size,
        "studies_selected": studies,
    }


def check_same_request(frozen: RunRecord, asked: RunRecord) -> None:
    """Refuse a rerun of a frozen release that asks for other parameters, naming each one.

    Raises:
        ReleaseError: a parameter differs; the message gives the frozen and the asked value
            (source URL, dates, modalities, sites, recipe: never patient data).
    """
    if frozen.same_request(asked):
        return
    old, new = asdict(frozen), asdict(asked)
    changed = "; ".join(
        f"{name}: frozen {_shown(old[name])}, asked {_shown(new[name])}"
        for name in old
        if old[name] != new[name]
    )
    raise ReleaseError(
        f"release '{asked.release}' of project '{asked.project}' was frozen with other "
        f"parameters ({changed}); rerun it with the frozen ones to resume, or choose a new "
        "--release"
    )


def _shown(value: object) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def check_run(
    project_id: str,
    release: str,
    source: str,
    destination: str | None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    modalities: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    limits: ArchiveLimits | None = None,
) -> None:
    """Every check of a run that needs no DICOM work, for the CLI to run before Prefect starts.

    The request (approval, scope, recipe, secret, curation settings), the source setting (and a
    folder source's existence), the destination (opened and checked), and, for a release frozen
    earlier, that the same parameters are asked for.

    Raises:
        ScopeError: the approval expired or the request is outside the approved scope.
        ConfigError: a bad source or destination setting, secret, recipe or curation setting.
        ReleaseError: a bad release name, or a frozen release asked for with other parameters.
    """
    project, scope = check_request(project_id, release, date_from, date_to, modalities, sites)
    src = open_source(source, limits or ArchiveLimits(), project.hn_issuer)
    open_store(destination)
    frozen = load_frozen(project.id, release)
    if frozen is not None:
        check_same_request(frozen[0], _record(project, release, src.url, scope))


def _record(project: Project, release: str, source_url: str, scope: Scope) -> RunRecord:
    return RunRecord(
        project=project.id,
        release=release,
        source=source_url,
        date_from=scope.date_from.isoformat(),
        date_to=scope.date_to.isoformat(),
        modalities=sorted(scope.modalities),
        sites=sorted(scope.sites),
        recipe=project.recipe_spec(),
    )


def check_request(
    project_id: str,
    release: str,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    modalities: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    today: dt.date | None = None,
) -> tuple[Project, Scope]:
    """Refuse an expired approval or an out-of-scope request, naming the field to change."""
    project = load_project(project_id)
    project.check_active(today)
    scope = project.resolve_request(date_from, date_to, modalities, sites)
    release_dir(project_id, release)  # validates the release name
    load_secret(project_id)  # a missing or unsafe secret fails now, not in a worker
    from deid_recipes import load_recipe

    load_recipe(project.recipe_spec())  # a disallowed option or broken recipe fails now
    from curation.pipeline import check_settings

    check_settings(project.extra.get("curation"))  # unknown checks, bad filter files
    return project, scope


def prepare_run(
    project_id: str,
    release: str,
    source: str,
    destination: str,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    modalities: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    reindex: bool = False,
    limits: ArchiveLimits | None = None,
) -> RunPlan:
    """Check the request, then index, select and freeze (or load the frozen selection)."""
    project, scope = check_request(project_id, release, date_from, date_to, modalities, sites)
    limits = limits or ArchiveLimits()
    src = open_source(source, limits, project.hn_issuer)
    record = _record(project, release, src.url, scope)
    ctx = RunContext(
        project=project.id,
        release=release,
        source_url=src.url,
        store_url=open_store(destination).url,
        recipe=project.recipe_spec(),
        retain=project.scope.retain,
        modalities=scope.modalities,
        hn_issuer=project.hn_issuer,
        limits=limits,
        optout_tokens=tuple(sorted(load_optout(project.id).tokens)),
        curation=json.dumps(project.extra.get("curation") or {}, sort_keys=True, default=str),
        cross_terms=load_terms(project.id),
    )
    frozen = load_frozen(project.id, release)
    if frozen is not None:
        old, selection = frozen
        check_same_request(old, record)
        return RunPlan(ctx, study_refs(selection), resumed=True)

    catalog = catalog_dir_for(src.url)
    if reindex or not catalog_covers(catalog, scope.date_from, scope.date_to):
        src.build_catalog(catalog, scope.date_from, scope.date_to)
    chosen = select(catalog, scope, load_optout(project.id))
    _quarantine_unindexed(ctx, catalog, chosen.excluded)
    freeze_selection(record, chosen.studies)
    return RunPlan(ctx, study_refs(chosen.studies), resumed=False)


def _quarantine_unindexed(
    ctx: RunContext, catalog: object, excluded: dict[str, int] | None = None
) -> None:
    """Files of the source that are not readable DICOM at all belong to no study: keep them.

    The same source-level part records what selection removed (duplicates, opt-outs), as counts.
    """
    from pathlib import Path

    import pyarrow.parquet as pq

    path = Path(str(catalog)) / "unreadable.parquet"
    if not path.exists():
        if excluded:
            store = open_store(ctx.store_url)
            write_part(store, source_part_key(ctx.prefix), source_part(excluded))
        return
    src = open_source(ctx.source_url)
    root = getattr(src, "root", None)
    counts: dict[str, int] = {}
    for row in pq.read_table(path).to_pylist():
        if root is not None:
            quarantine_file(
                ctx.project,
                ctx.release,
                Path(root) / row["path"],
                row["reason"],
                source=ctx.source_url,
                location=row["path"],
            )
        counts[row["reason"]] = counts.get(row["reason"], 0) + 1
    part = source_part(excluded, counts)
    write_part(open_store(ctx.store_url), source_part_key(ctx.prefix), part)
