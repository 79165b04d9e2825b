"""Labeling hooks: code that proposes labels for curated studies (model pre-labels, report NLP).

A hook is registered in the entry-point group ``ridl.labeling_hooks`` by any installed package::

    [project.entry-points."ridl.labeling_hooks"]
    my-prelabels = "my_package.hooks:prelabel"

and is called as ``hook(studies, schema)`` with the release's :class:`CuratedStudy` list and the
project's :class:`~curation.labels.LabelSchema`; it returns label rows (mappings with
``research_study_id`` and label fields, optionally ``assignee``). Its rows pass the same validation
as imported worklists and are stored with ``source = "hook:<name>"``.

Curation floor (``curation/``): built on :mod:`curation.labels`; ``ridl labels hooks`` runs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from curation.labels import (
    ImportReport,
    LabelSchema,
    label_rows_from,
    release_studies,
    schema_for,
    store_label_rows,
)
from export.store import ObjectStore
from ridl.errors import ConfigError

ENTRY_POINT_GROUP = "ridl.labeling_hooks"


@dataclass(frozen=True)
class CuratedStudy:
    """One exported study as a hook sees it: de-identified values and its object keys.

    ``study_date`` is shifted (``YYYYMMDD``); ``modality`` joins the study's modalities with
    ``/``; ``keys`` are object keys in the store at ``store_url``.
    """

    research_study_id: str
    research_id: str
    study_uid: str
    modality: str
    description: str
    study_date: str
    keys: tuple[str, ...]
    store_url: str


def available_hooks() -> dict[str, Any]:
    """Every installed hook of ``ridl.labeling_hooks``: {name: entry point} (not loaded)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def curated_studies(store: ObjectStore, project: str, release: str) -> list[CuratedStudy]:
    """The release's exported studies as hooks see them (see
    :func:`curation.labels.release_studies`).

    Raises:
        ReleaseError: the release has no exported studies in the store.
    """
    frame = release_studies(store, project, release)
    return [
        CuratedStudy(
            str(r["research_study_id"]),
            str(r["research_id"]),
            str(r["study_uid"]),
            str(r["modality"]),
            str(r["description"]),
            str(r["study_date"]),
            tuple(r["keys"]),
            store.url,
        )
        for r in frame.to_dict("records")
    ]


def run_hooks(
    store: ObjectStore, project: str, release: str, names: Iterable[str] | None = None
) -> dict[str, ImportReport]:
    """Run the named hooks (all installed ones by default) and store their valid rows.

    Returns {hook name: :class:`~curation.labels.ImportReport`}; line numbers are positions
    in the hook's answer, from 1.

    Raises:
        ConfigError: a named hook is not installed, or the project or its schema is invalid.
        ProjectNotFound: no such project.
        ReleaseError: the release has no exported studies in the store.
    """
    registry = available_hooks()
    wanted = list(names) if names else sorted(registry)
    missing = [n for n in wanted if n not in registry]
    if missing:
        raise ConfigError(
            f"labeling hook(s) {', '.join(missing)} are not installed "
            f"(installed: {', '.join(sorted(registry)) or 'none'})"
        )
    schema: LabelSchema = schema_for(project)
    studies = curated_studies(store, project, release)
    reports: dict[str, ImportReport] = {}
    for name in wanted:
        hook = registry[name].load()
        rows: list[Mapping[str, Any]] = list(hook(studies, schema) or [])
        reports[name] = store_label_rows(
            store,
            project,
            release,
            label_rows_from(rows),
            source=f"hook:{name}",
            default_assignee=f"hook:{name}",
        )
    return reports
