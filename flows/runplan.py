"""Preparing a run: every check that must pass before any work touches the DIR.

The CLI calls :func:`check_request` before it starts Prefect, so a refused request costs nothing;
the flow calls :func:`prepare_run` again, so a deployment launched without the CLI is held to
the same rules.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.quarantine import quarantine_file
from export.manifest import source_part, source_part_key, write_part
from export.store import ObjectStore, open_store
from flows.work import RunContext
from ridl.catalog import (
    StudyRef,
    catalog_covers,
    catalog_dir_for,
    scope_exclusions,
    select,
    study_refs,
)
from ridl.crossterms import load_terms
from ridl.errors import EmptyRelease, ReleaseError
from ridl.optout import load_optout
from ridl.projects import Project, Scope, load_project
from ridl.pseudonyms import Pseudonymizer, SubjectKey
from ridl.releases import (
    RunRecord,
    check_not_locked,
    freeze_selection,
    load_frozen,
    load_withdrawn,
    release_dir,
    release_is_published,
)
from ridl.secrets import load_secret
from ridl.sources.base import StudySource, open_source
from ridl.sources.protect import ArchiveLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """A checked, frozen run: the workers' context, the selected studies, and whether the
    selection was loaded from an earlier run of the same release (a resume)."""

    ctx: RunContext
    studies: list[StudyRef]
    resumed: bool
    # Set when the source changed since its catalog was built (see catalog_changed).
    catalog_note: str | None = None


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

    The destination is one of them: a release name is bound to the object store it was frozen
    for, so one name never stands for two contents.

    Raises:
        ReleaseError: a parameter differs; the message gives the frozen and the asked value
            (source URL, destination URL, dates, modalities, sites, recipe: never patient data).
    """
    differences = frozen.differences(asked)
    if not differences:
        return
    changed = "; ".join(
        f"{name}: frozen {_shown(old)}, asked {_shown(new)}"
        for name, (old, new) in differences.items()
    )
    hint = "--dest" if "destination" in differences else "--release"
    raise ReleaseError(
        f"release '{asked.release}' of project '{asked.project}' was frozen with other "
        f"parameters ({changed}); rerun it with the frozen ones to resume, or choose a new "
        f"--release" + (" (a release is bound to its destination)" if hint == "--dest" else "")
    )


def _shown(value: object) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


@dataclass(frozen=True)
class OpenedRequest:
    """A request checked by :func:`check_request`, with its source and destination opened and
    the record a frozen release is compared with."""

    project: Project
    scope: Scope
    source: StudySource
    store: ObjectStore
    record: RunRecord


def open_request(
    project_id: str,
    release: str,
    source: str,
    destination: str | None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    modalities: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    limits: ArchiveLimits | None = None,
    create_dest: bool = True,
) -> OpenedRequest:
    """Check the request (:func:`check_request`), then open the source and the destination
    (a folder destination is created, unless ``create_dest`` is False: a dry run writes
    nothing).

    Raises:
        ScopeError: the approval expired or the request is outside the approved scope.
        ConfigError: a bad source or destination setting, secret, recipe or curation setting.
        ReleaseError: a bad release name.
        ConfigError: also a folder destination that is a file, cannot be created or is not
            writable.
    """
    project, scope = check_request(project_id, release, date_from, date_to, modalities, sites)
    src = open_source(source, limits or ArchiveLimits(), project.hn_issuer)
    store = open_store(destination)
    check_writable = getattr(store, "check_writable", None)
    if check_writable is not None:  # a folder store; S3 is checked when opened
        check_writable(create=create_dest)
    record = _record(project, release, src.url, scope, store.url)
    return OpenedRequest(project, scope, src, store, record)


def catalog_changed(src: StudySource, catalog: Path) -> str | None:
    """A warning when a folder source changed since its catalog was built (studies added or
    removed since are not selected until ``--reindex``), else None. Only a folder can tell
    cheaply (:meth:`ridl.sources.folder.FolderSource.changed_since`); a network DIR is indexed
    for the run's window when its catalog does not cover it.
    """
    changed_since = getattr(src, "changed_since", None)
    studies = catalog / "studies.parquet"
    if changed_since is None or not studies.exists():
        return None
    built = studies.stat().st_mtime_ns
    n = int(changed_since(built))
    if not n:
        return None
    when = dt.datetime.fromtimestamp(built / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"the source folder changed since it was indexed ({when}; {n} folder(s) modified "
        "since): studies added or removed since are not seen; rerun with --reindex to see them"
    )


def nothing_to_publish(project: str, release: str, manifest: Mapping[str, Any]) -> str:
    """The message of a release that exported no object: where its studies went, in counts by
    reason (never an identifier), and the two ways on."""
    said = []
    failed = manifest.get("studies_failed", {})
    if failed:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(failed.items()))
        said.append(f"{sum(failed.values())} studies failed ({reasons})")
    for what, counts in (
        ("quarantined", manifest["quarantined"]),
        ("excluded", manifest["excluded"]),
    ):
        if counts:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
            said.append(f"{what}: {reasons}")
    where = "; ".join(said) or "nothing was selected"
    return (
        f"release {project}/{release} holds no object, so it is left unpublished ({where}); "
        "rerun with --retry-failed once the archive can deliver the failed studies, or publish "
        "it empty with --allow-empty"
    )


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
) -> str | None:
    """Every check of a run that needs no DICOM work, for the CLI to run before Prefect starts.

    The request (approval, scope, recipe, secret, curation settings), the source setting (and a
    folder source's existence), the destination (opened and checked), and, for a release frozen
    earlier, that the same parameters (destination included) are asked for and that no other
    process is running it.

    Returns None when the run is to go ahead, or a one-line message when there is nothing to do
    (the release is already published: a published release never changes, so a rerun is a no-op).

    Raises:
        ScopeError: the approval expired or the request is outside the approved scope.
        ConfigError: a bad source or destination setting, secret, recipe or curation setting.
        ReleaseError: a bad release name, a frozen release asked for with other parameters or
            another destination, or a release another live process is running (its lock).
    """
    asked = open_request(
        project_id, release, source, destination, date_from, date_to, modalities, sites, limits
    )
    frozen = load_frozen(asked.project.id, release)
    if frozen is None:
        return None
    if is_published(asked.project.id, release, asked.store):
        # A published release never changes: the rerun is a no-op, even when the project's
        # scope changed since and the parameters the command leaves to it now differ. Only
        # what the command asks for itself is compared.
        given = {
            "source": True,
            "destination": destination is not None,
            "date_from": date_from is not None,
            "date_to": date_to is not None,
            "modalities": bool(modalities),
            "sites": bool(sites),
            "recipe": False,
        }
        asked_here = {k for k, v in given.items() if v}
        if not set(frozen[0].differences(asked.record)) & asked_here:
            return already_published_message(
                asked.project.id, release, frozen[0].destination or asked.store.url
            )
    check_same_request(frozen[0], asked.record)
    if is_published(asked.project.id, release, asked.store):
        return already_published_message(asked.project.id, release, asked.store.url)
    check_not_locked(asked.project.id, release)
    return None


def is_published(project_id: str, release: str, store: ObjectStore) -> bool:
    """Whether the release is published: its on-premises marker (written by the gate) or its
    signed manifest in ``store`` (written by ``ridl release publish``)."""
    if release_is_published(project_id, release):
        return True
    from export.release import read_published

    return read_published(store, f"{project_id}/{release}") is not None


def already_published_message(project_id: str, release: str, store_url: str) -> str:
    """The one line a rerun of a published release prints (it changes nothing)."""
    return (
        f"release {project_id}/{release} is already published in {store_url}; nothing to do "
        "(a published release never changes: choose a new --release for new data)"
    )


def _record(
    project: Project, release: str, source_url: str, scope: Scope, store_url: str
) -> RunRecord:
    return RunRecord(
        project=project.id,
        release=release,
        source=source_url,
        date_from=scope.date_from.isoformat(),
        date_to=scope.date_to.isoformat(),
        modalities=sorted(scope.modalities),
        sites=sorted(scope.sites),
        recipe=project.recipe_spec(),
        destination=store_url,
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
    allow_empty: bool = False,
) -> RunPlan:
    """Check the request, then index, select and freeze (or load the frozen selection).

    Selection leaves out opted-out subjects and subjects withdrawn from the project
    (``ridl release withdraw``), each counted under its reason. A selection with no study is
    refused unless ``allow_empty``: nothing is frozen or written then.

    Raises:
        ScopeError: the approval expired or the request is outside the approved scope.
        ConfigError: a bad source or destination setting, secret, recipe or curation setting.
        ReleaseError: a frozen release asked for with other parameters or destination.
        EmptyRelease: nothing in the source matches the request (and not ``allow_empty``).
    """
    limits = limits or ArchiveLimits()
    asked = open_request(
        project_id, release, source, destination, date_from, date_to, modalities, sites, limits
    )
    project, scope, src, store_url, record = (
        asked.project, asked.scope, asked.source, asked.store.url, asked.record
    )  # fmt: skip
    ctx = RunContext(
        project=project.id,
        release=release,
        source_url=src.url,
        store_url=store_url,
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
    note = None
    if reindex or not catalog_covers(catalog, scope.date_from, scope.date_to):
        src.build_catalog(catalog, scope.date_from, scope.date_to)
    else:
        note = catalog_changed(src, catalog)
        if note:
            log.warning(note)
    chosen = select(catalog, scope, load_optout(project.id), withdrawn=_withdrawn_test(project.id))
    if chosen.studies.empty and not allow_empty:
        raise EmptyRelease(_empty_message(project, release, src.url, scope, chosen.excluded))
    _quarantine_unindexed(ctx, catalog, chosen.excluded)
    freeze_selection(record, chosen.studies)
    return RunPlan(ctx, study_refs(chosen.studies), resumed=False, catalog_note=note)


def preview_run(
    project_id: str,
    release: str,
    source: str,
    destination: str | None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    modalities: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
    reindex: bool = False,
    limits: ArchiveLimits | None = None,
) -> dict[str, Any]:
    """What a run would select, without retrieving, freezing or writing anything (``--dry-run``).

    The same checks as :func:`check_run`, then the source's catalog (built from headers only
    when it does not cover the dates, or with ``reindex``) and the same selection as
    :func:`prepare_run`; a release frozen earlier shows its frozen selection. Returns a dict:
    ``project``, ``release``, ``source``, ``destination``, ``state`` (new, frozen or
    published), ``studies``, ``subjects``, ``instances``, ``by_modality_year`` (a list of
    {modalities ("CT" or "CT+SR": a study's modalities together), year, studies, instances}),
    ``excluded`` ({reason: studies}), ``unreadable`` ({reason: files}), ``out_of_scope``
    (studies of the catalog outside the request: {"dates" | "sites" | "modalities": studies},
    see :func:`ridl.catalog.scope_exclusions`; empty for a frozen release) and
    ``other_modalities`` ({modality outside the request: selected studies holding it}; the run
    leaves those objects out as ``modality-not-approved``) and ``catalog_changed`` (the
    :func:`catalog_changed` warning, or None).

    Raises:
        ScopeError: the approval expired or the request is outside the approved scope.
        ConfigError: a bad source or destination setting, secret, recipe or curation setting.
        ReleaseError: a frozen release asked for with other parameters or destination.
    """

    import pyarrow.parquet as pq

    asked = open_request(
        project_id,
        release,
        source,
        destination,
        date_from,
        date_to,
        modalities,
        sites,
        limits,
        create_dest=False,
    )
    project, scope, src, store, record = (
        asked.project, asked.scope, asked.source, asked.store, asked.record
    )  # fmt: skip
    frozen = load_frozen(project.id, release)
    excluded: dict[str, int] = {}
    unreadable: dict[str, int] = {}
    out_of_scope: dict[str, int] = {}
    note = None
    if frozen is not None:
        check_same_request(frozen[0], record)
        selection = frozen[1]
        state = "published" if is_published(project.id, release, store) else "frozen"
    else:
        catalog = catalog_dir_for(src.url)
        if reindex or not catalog_covers(catalog, scope.date_from, scope.date_to):
            src.build_catalog(catalog, scope.date_from, scope.date_to)
        else:
            note = catalog_changed(src, catalog)
        chosen = select(
            catalog, scope, load_optout(project.id), withdrawn=_withdrawn_test(project.id)
        )
        selection, excluded, state = chosen.studies, dict(chosen.excluded), "new"
        out_of_scope = scope_exclusions(catalog, scope)
        bad = Path(catalog) / "unreadable.parquet"
        if bad.exists():
            for row in pq.read_table(bad, columns=["reason"]).to_pylist():
                unreadable[row["reason"]] = unreadable.get(row["reason"], 0) + 1
    keys = Pseudonymizer(load_secret(project.id))
    refs = study_refs(selection)
    subjects = {keys.research_id(SubjectKey(s.health_number, s.issuer, s.patient_id)) for s in refs}
    groups: dict[tuple[str, str], list[int]] = {}
    other_modalities: dict[str, int] = {}  # not in scope, met in selected studies: studies
    for mods in selection.get("modalities", []):
        for modality in sorted({str(m) for m in mods} - set(scope.modalities)):
            other_modalities[modality] = other_modalities.get(modality, 0) + 1
    for mods, date, n in zip(
        selection.get("modalities", []), selection.get("study_date", []),
        selection.get("n_instances", []), strict=True,
    ):  # fmt: skip
        key = ("+".join(sorted(str(m) for m in mods)), str(date)[:4])
        counts = groups.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += int(n)
    return {
        "project": project.id,
        "release": release,
        "source": src.url,
        "destination": store.url,
        "state": state,
        "studies": len(refs),
        "subjects": len(subjects),
        "instances": sum(c[1] for c in groups.values()),
        "by_modality_year": [
            {"modalities": m, "year": y, "studies": c[0], "instances": c[1]}
            for (m, y), c in sorted(groups.items())
        ],
        "excluded": dict(sorted(excluded.items())),
        "unreadable": dict(sorted(unreadable.items())),
        "out_of_scope": out_of_scope,
        "other_modalities": dict(sorted(other_modalities.items())),
        "catalog_changed": note,
    }


def _withdrawn_test(project_id: str) -> Callable[[str | None, str, str], bool] | None:
    """Whether a catalog row's subject (health number, issuer, patient ID) withdrew: their
    research ID is in the project's withdrawals. None when nobody withdrew."""
    withdrawn = load_withdrawn(project_id)
    if not withdrawn:
        return None
    keys = Pseudonymizer(load_secret(project_id))

    def test(health_number: str | None, issuer: str, patient_id: str) -> bool:
        return keys.research_id(SubjectKey(health_number, issuer, patient_id)) in withdrawn

    return test


def _empty_message(
    project: Project, release: str, source_url: str, scope: Scope, excluded: dict[str, int]
) -> str:
    """Why a selection is empty and what to check (counts and settings, no patient data)."""
    left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(excluded.items()))
    return (
        f"release '{release}' of project '{project.id}' would be empty: no study of {source_url} "
        f"matches dates {scope.date_from.isoformat()}..{scope.date_to.isoformat()}, modalities "
        f"{','.join(sorted(scope.modalities))}, sites {','.join(sorted(scope.sites))}"
        + (f" (left out: {left_out})" if left_out else "")
        + "; check that --source holds DICOM (reindex it with --reindex) and the --from/--to, "
        "--modality and --site options, or pass --allow-empty to publish an empty release"
    )


def _quarantine_unindexed(
    ctx: RunContext, catalog: object, excluded: dict[str, int] | None = None
) -> None:
    """Files of the source that are not readable DICOM at all belong to no study: keep them.

    The same source-level part records what selection removed (duplicates, opt-outs), as counts.
    """

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
