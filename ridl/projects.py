"""The REB project registry: what the Research Ethics Board approved, and nothing more.

A project is a TOML file under ``RIDL_HOME/projects``. Every run is checked against it before any
work starts, so an expired approval or a request outside the approved scope never touches the DIR.

Ground floor (``ridl/``): the project names its de-identification recipe layers by name only
(``deid_recipes`` loads them); creating a project creates its secret (:mod:`ridl.secrets`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ridl import settings
from ridl.errors import ConfigError, ProjectChangedOutside, ProjectNotFound, ScopeError
from ridl.secrets import create_secret

# The Issuer of Patient ID of the health number's item, unless a project says otherwise.
DEFAULT_HN_ISSUER = "HN"

PROJECT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
DEFAULT_RECIPE = "ridl-basic"
PS315_PROFILE = "ps3.15-basic"
SAFE_PUBLIC_LAYER = "ridl-safe-public"
# PS3.15 Annex E options a project may choose (each is a recipe layer ps3.15-<option>).
DEID_OPTIONS = (
    "retain-long-modified-dates",
    "retain-patient-chars",
    "retain-device-id",
    "retain-institution-id",
    "retain-uids",
    "retain-safe-private",
    "clean-descriptors",
    "clean-structured-content",
    "clean-graphics",
)


@dataclass(frozen=True)
class Scope:
    """The approved scope: which studies may be selected and which data elements may be kept.

    Dates are inclusive; ``modalities`` are DICOM Modality (0008,0060) codes; ``sites`` are
    Issuers of Patient ID (0010,0021); ``retain`` names data elements the REB lets the project
    keep; ``deid_options`` are the PS3.15 Annex E options (Table E.1-1's option columns) the REB
    allows.

    Raises:
        ConfigError: ``date_from`` is after ``date_to``, or modalities or sites are empty.
    """

    date_from: dt.date
    date_to: dt.date
    modalities: tuple[str, ...]
    sites: tuple[str, ...]
    retain: tuple[str, ...] = ()
    deid_options: tuple[str, ...] = ()  # the PS3.15 options the REB allows this project

    def __post_init__(self) -> None:
        if self.date_from > self.date_to:
            raise ConfigError("scope.date_from is after scope.date_to")
        if not self.modalities:
            raise ConfigError("scope.modalities is empty: list the approved modalities")
        if not self.sites:
            raise ConfigError("scope.sites is empty: list the approved Issuers of Patient ID")


@dataclass(frozen=True)
class Project:
    """One REB-approved project, as recorded by the research office.

    ``approved`` and ``expires`` bound the approval (inclusive); ``recipe`` is a recipe name
    (``ridl-basic``, or ``ps3.15-basic`` with ``deid_options`` layered on it); ``hn_issuer`` is
    the Issuer of Patient ID under which a health number is carried in Other Patient IDs
    Sequence (0010,1002); ``extra`` keeps unknown TOML keys so a rewrite does not lose them.
    """

    id: str
    reb_number: str
    title: str
    pi: str
    approved: dt.date
    expires: dt.date
    scope: Scope
    recipients: tuple[str, ...] = ()
    recipe: str = DEFAULT_RECIPE
    hn_issuer: str = DEFAULT_HN_ISSUER
    deid_options: tuple[str, ...] = ()  # PS3.15 options chosen (layered on ps3.15-basic)
    site_recipes: tuple[str, ...] = ()  # a site's own recipe files, layered last
    extra: dict[str, Any] = field(default_factory=dict)

    def check_deid(self) -> None:
        """Refuse a de-identification option the approved scope does not allow, before work.

        Options only exist for the PS3.15 profile; every chosen option must be a known one and
        be listed in ``scope.deid_options``.

        Raises:
            ScopeError: options with a recipe other than ``ps3.15-basic``, an unknown option, or
                one the approved scope does not list (field ``deid_options``).
        """
        if self.deid_options and self.recipe != PS315_PROFILE:
            raise ScopeError(
                "deid_options",
                f"options apply to the '{PS315_PROFILE}' profile only; project '{self.id}' "
                f"uses '{self.recipe}': set recipe = \"{PS315_PROFILE}\" or remove deid_options",
            )
        for option in self.deid_options:
            if option not in DEID_OPTIONS:
                raise ScopeError(
                    "deid_options",
                    f"unknown de-identification option '{option}' "
                    f"(known: {', '.join(DEID_OPTIONS)})",
                )
            if option not in self.scope.deid_options:
                raise ScopeError(
                    "deid_options",
                    f"de-identification option '{option}' is not allowed by the approved scope "
                    f"of project '{self.id}' (allowed: "
                    f"{', '.join(self.scope.deid_options) or 'none'}); remove it from "
                    "deid_options or have the REB approve it in scope.deid_options",
                )

    def recipe_layers(self) -> list[str]:
        """The recipe files, bottom first: safe-public list, profile, options, site files.

        A list of recipe names; options follow the order of :data:`DEID_OPTIONS`, each as the
        layer ``ps3.15-<option>``. ``ridl-basic`` and ``ps3.15-basic`` both sit on the
        ``ridl-safe-public`` list, so the technical attributes their objects' IODs require
        (PS3.3) survive either way; another recipe is taken as it is.
        """
        if self.recipe == PS315_PROFILE:
            layers = [SAFE_PUBLIC_LAYER, PS315_PROFILE]
            layers += [f"ps3.15-{o}" for o in DEID_OPTIONS if o in self.deid_options]
        elif self.recipe == DEFAULT_RECIPE:
            layers = [SAFE_PUBLIC_LAYER, DEFAULT_RECIPE]
        else:
            layers = [self.recipe]
        return layers + list(self.site_recipes)

    def recipe_spec(self) -> str:
        """The layers joined with ``+``, as a run context and ``load_recipe`` take them.

        Raises:
            ScopeError: a chosen de-identification option is not allowed (see
                :meth:`check_deid`).
        """
        self.check_deid()
        return "+".join(self.recipe_layers())

    def check_active(self, today: dt.date | None = None) -> None:
        """Refuse work on an approval that has expired or has not started.

        ``today`` defaults to the local date; both bounds are inclusive.

        Raises:
            ScopeError: ``today`` is after ``expires`` (field ``expires``) or before
                ``approved`` (field ``approved``).
        """
        today = today or dt.date.today()
        if today > self.expires:
            raise ScopeError(
                "expires",
                f"REB approval {self.reb_number} of project '{self.id}' expired on "
                f"{self.expires.isoformat()}; renew it with the REB and update the project",
            )
        if today < self.approved:
            raise ScopeError(
                "approved",
                f"REB approval {self.reb_number} of project '{self.id}' starts on "
                f"{self.approved.isoformat()}",
            )

    def resolve_request(
        self,
        date_from: dt.date | None = None,
        date_to: dt.date | None = None,
        modalities: Sequence[str] | None = None,
        sites: Sequence[str] | None = None,
    ) -> Scope:
        """The scope of one run: what was asked, checked against what was approved.

        Anything left out defaults to the whole approved scope. Anything outside it is refused,
        naming the option to change, before any work is done. Modalities are upper-cased.

        Raises:
            ScopeError: dates outside the approved window or in the wrong order (field
                ``--from`` / ``--to``), a modality (``--modality``) or site (``--site``) that is
                not approved.
        """
        approved = self.scope
        start = date_from or approved.date_from
        end = date_to or approved.date_to
        if start < approved.date_from:
            raise ScopeError(
                "--from",
                f"study dates from {start.isoformat()} are outside the approved scope, "
                f"which starts on {approved.date_from.isoformat()}",
            )
        if end > approved.date_to:
            raise ScopeError(
                "--to",
                f"study dates to {end.isoformat()} are outside the approved scope, "
                f"which ends on {approved.date_to.isoformat()}",
            )
        if start > end:
            raise ScopeError("--from", "the start date is after the end date")
        mods = tuple(m.upper() for m in (modalities or approved.modalities))
        outside = sorted(set(mods) - set(approved.modalities))
        if outside:
            raise ScopeError(
                "--modality",
                f"modalities {', '.join(outside)} are not approved "
                f"(approved: {', '.join(approved.modalities)})",
            )
        chosen_sites = tuple(sites or approved.sites)
        outside = sorted(set(chosen_sites) - set(approved.sites))
        if outside:
            raise ScopeError(
                "--site",
                f"sites {', '.join(outside)} are not approved "
                f"(approved: {', '.join(approved.sites)})",
            )
        return Scope(start, end, mods, chosen_sites, approved.retain, approved.deid_options)

    def to_toml(self) -> dict[str, Any]:
        """The project as a TOML-ready dict (dates as ``datetime.date``, tuples as lists)."""
        data: dict[str, Any] = {
            "id": self.id,
            "reb_number": self.reb_number,
            "title": self.title,
            "pi": self.pi,
            "approved": self.approved,
            "expires": self.expires,
            "recipients": list(self.recipients),
            "recipe": self.recipe,
            "hn_issuer": self.hn_issuer,
            "deid_options": list(self.deid_options),
            "site_recipes": list(self.site_recipes),
            "scope": {
                "date_from": self.scope.date_from,
                "date_to": self.scope.date_to,
                "modalities": list(self.scope.modalities),
                "sites": list(self.scope.sites),
                "retain": list(self.scope.retain),
                "deid_options": list(self.scope.deid_options),
            },
        }
        data.update(self.extra)
        return data

    @classmethod
    def from_toml(cls, data: dict[str, Any], source: str = "project file") -> Project:
        """Build a project from a parsed TOML dict; ``source`` names the file in messages.

        Dates may be TOML dates or ISO ``YYYY-MM-DD`` strings; unknown keys go to ``extra``.

        Raises:
            ConfigError: a required field is missing, a date is not ``YYYY-MM-DD``, or the
                scope is invalid (see :class:`Scope`).
        """
        known = {
            "id",
            "reb_number",
            "title",
            "pi",
            "approved",
            "expires",
            "recipients",
            "recipe",
            "hn_issuer",
            "deid_options",
            "site_recipes",
            "scope",
        }
        try:
            scope = data["scope"]
            return cls(
                id=str(data["id"]),
                reb_number=str(data["reb_number"]),
                title=str(data["title"]),
                pi=str(data["pi"]),
                approved=_as_date(data["approved"], "approved"),
                expires=_as_date(data["expires"], "expires"),
                scope=Scope(
                    date_from=_as_date(scope["date_from"], "scope.date_from"),
                    date_to=_as_date(scope["date_to"], "scope.date_to"),
                    modalities=tuple(str(m).upper() for m in scope["modalities"]),
                    sites=tuple(str(s) for s in scope["sites"]),
                    retain=tuple(str(r) for r in scope.get("retain", [])),
                    deid_options=tuple(str(o) for o in scope.get("deid_options", [])),
                ),
                recipients=tuple(str(r) for r in data.get("recipients", [])),
                recipe=str(data.get("recipe", DEFAULT_RECIPE)),
                hn_issuer=str(data.get("hn_issuer", DEFAULT_HN_ISSUER)),
                deid_options=tuple(str(o) for o in data.get("deid_options", [])),
                site_recipes=tuple(str(r) for r in data.get("site_recipes", [])),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except KeyError as exc:
            raise ConfigError(f"{source} is missing the field {exc.args[0]!r}") from None


def _as_date(value: object, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be a date written YYYY-MM-DD") from None


def project_path(project_id: str) -> Path:
    """The project's file, ``RIDL_HOME/projects/<project>.toml`` (the id is not checked)."""
    return settings.projects_dir() / f"{project_id}.toml"


def validate_id(project_id: str) -> None:
    """Check a project id: 2-63 characters of lower-case letters, digits and '-'.

    Raises:
        ConfigError: the id does not match :data:`PROJECT_ID`.
    """
    if not PROJECT_ID.match(project_id):
        raise ConfigError(
            "project id must be 2-63 characters of lower-case letters, digits and '-', "
            "starting with a letter or digit"
        )


def recorded_path(project_id: str) -> Path:
    """The copy of the project file as ridl last wrote it (``<project>.toml.recorded``, 0600).

    A load compares the project file with it, so a hand edit is noticed; ``ridl project update
    --accept-edit`` compares the two to tell what changed.
    """
    return settings.projects_dir() / f"{project_id}.toml.recorded"


def _write_project_file(project: Project) -> tuple[Path, str]:
    """Write the project file and its recorded copy atomically; (path, SHA-256 of the bytes)."""
    path = project_path(project.id)
    settings.private_dir(path.parent)
    data = tomli_w.dumps(project.to_toml()).encode()
    for target in (recorded_path(project.id), path):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        settings.private_file(tmp)
        tmp.replace(target)
    return path, hashlib.sha256(data).hexdigest()


def create_project(project: Project, *, overwrite: bool = False) -> Path:
    """Record a project and generate its pseudonym secret (mode 0600, never shown).

    Returns the path of the project file; the creation (or change) is audited with the SHA-256
    of the file as written (``file_sha256``).

    Raises:
        ConfigError: the id is invalid, ``expires`` is before ``approved``, the project exists
            and ``overwrite`` is False, or the secrets provider failed (see
            :func:`ridl.secrets.create_secret`).
    """
    validate_id(project.id)
    if project.expires < project.approved:
        raise ConfigError("expires is before approved")
    path = project_path(project.id)
    existed = path.exists()
    if existed and not overwrite:
        raise ConfigError(f"project '{project.id}' already exists; choose another id")
    path, digest = _write_project_file(project)
    create_secret(project.id)
    from ridl import audit

    audit.record(
        "project.changed" if existed else "project.created",
        project=project.id,
        reb_number=project.reb_number,
        expires=project.expires.isoformat(),
        modalities=list(project.scope.modalities),
        sites=list(project.scope.sites),
        retain=list(project.scope.retain),
        recipe=project.recipe,
        file_sha256=digest,
    )
    return path


# --- changes after creation: `ridl project update` ----------------------------------------------

# Fields whose change widens what the REB approved (needs an amendment reference).
_IDENTITY_FIELDS = ("reb_number", "title", "pi", "approved", "hn_issuer")


@dataclass(frozen=True)
class ProjectChange:
    """What an update changes: ``changes`` {field: (old, new)} as plain JSON values, and
    ``widening`` (the fields among them that go beyond the recorded approval, each with why)."""

    changes: dict[str, tuple[Any, Any]]
    widening: list[str]


def _plain(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def compare_projects(old: Project, new: Project) -> ProjectChange:
    """The changes from ``old`` to ``new`` and which of them widen the approval.

    Narrowing is always allowed: a later ``date_from``, an earlier ``date_to``, fewer
    modalities, sites, retained elements, allowed PS3.15 options or recipients, an earlier
    expiry. Widening needs an REB amendment: dates outside the old window, a modality, site,
    retained element, allowed option or recipient added, and any change of the REB number,
    title, PI, approval date or health-number issuer. Extending ``expires`` is a renewal (it
    needs the renewal's approval date, see :func:`update_project`), listed as ``expires``.
    Label schema, curation settings and the chosen options within the allowed ones change freely.
    """
    before = {k: _plain(v) for k, v in old.to_toml().items()}
    after = {k: _plain(v) for k, v in new.to_toml().items()}
    changes: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(before) | set(after)):
        if key == "scope":
            continue
        if before.get(key) != after.get(key):
            changes[key] = (before.get(key), after.get(key))
    for key in sorted(set(before["scope"]) | set(after["scope"])):
        if before["scope"].get(key) != after["scope"].get(key):
            changes[f"scope.{key}"] = (before["scope"].get(key), after["scope"].get(key))
    widening: list[str] = []
    if new.scope.date_from < old.scope.date_from or new.scope.date_to > old.scope.date_to:
        widening.append("scope dates (outside the approved window)")
    for name in ("modalities", "sites", "retain", "deid_options"):
        added = sorted(set(getattr(new.scope, name)) - set(getattr(old.scope, name)))
        if added:
            widening.append(f"scope.{name} (adds {', '.join(added)})")
    added = sorted(set(new.recipients) - set(old.recipients))
    if added:
        widening.append(f"recipients (adds {len(added)})")
    for name in _IDENTITY_FIELDS:
        if getattr(new, name) != getattr(old, name):
            widening.append(name)
    return ProjectChange(changes, widening)


def update_project(
    new: Project,
    *,
    reb_amendment: str | None = None,
    renewal_date: dt.date | None = None,
    note: str = "",
    accept_edit: bool = False,
) -> ProjectChange:
    """Record a change of a project: checked against the recorded one, written, audited.

    ``new`` is the whole project as it is to be; the recorded one (as ridl last wrote it) is
    the baseline. ``reb_amendment`` (the REB's reference) allows widening changes (see
    :func:`compare_projects`); ``renewal_date`` (the date the REB renewed the approval) allows
    a later ``expires``. ``accept_edit`` records a hand edit of the project file (``new`` is
    the file as edited) under the same rules. The audit entry ``project.updated`` holds every
    changed field with its old and new value, the amendment, renewal date, note and the new
    file's SHA-256. Returns the :class:`ProjectChange`.

    Raises:
        ConfigError: ``expires`` before ``approved``, or nothing changes (the recipe options
            are checked where they are used, see :meth:`Project.check_deid`).
        ProjectNotFound: no such project.
        ScopeError: a widening change without ``reb_amendment`` (field ``--reb-amendment``),
            or a later expiry without ``renewal_date`` (field ``--renewal-date``).
    """
    old = _load_recorded(new.id)
    if new.expires < new.approved:
        raise ConfigError("expires is before approved")
    change = compare_projects(old, new)
    if not change.changes and not accept_edit:
        raise ConfigError(f"nothing to change in project '{new.id}': give an option to update")
    if change.widening and not reb_amendment:
        raise ScopeError(
            "--reb-amendment",
            f"the change of project '{new.id}' widens its approval "
            f"({'; '.join(change.widening)}); give the REB amendment's reference with "
            "--reb-amendment REF, or narrow the change",
        )
    if new.expires > old.expires and renewal_date is None:
        raise ScopeError(
            "--renewal-date",
            f"expires moves from {old.expires.isoformat()} to {new.expires.isoformat()}: give "
            "the date the REB renewed the approval with --renewal-date YYYY-MM-DD",
        )
    _, digest = _write_project_file(new)
    from ridl import audit

    audit.record(
        "project.updated",
        project=new.id,
        changes={k: {"old": o, "new": n} for k, (o, n) in change.changes.items()},
        widening=change.widening,
        reb_amendment=reb_amendment,
        renewal_date=renewal_date.isoformat() if renewal_date else None,
        note=note,
        hand_edit=accept_edit,
        file_sha256=digest,
    )
    return change


def _load_recorded(project_id: str) -> Project:
    """The project as ridl last wrote it (the file itself for a project recorded before
    ridl kept a copy)."""
    validate_id(project_id)
    path = recorded_path(project_id)
    if not path.exists():
        return load_project(project_id, check_unchanged=False)
    data = tomllib.loads(path.read_text())
    return Project.from_toml(data, source=str(path))


def check_file_unchanged(project_id: str) -> None:
    """Refuse a project file that was changed outside ridl since ridl last wrote it.

    Compares the file's bytes with the copy ridl recorded at its last write (see
    :func:`recorded_path`); a project with no recorded copy (created before ridl kept one) is
    not checked until its next change.

    Raises:
        ProjectChangedOutside: the file differs from the recorded copy.
    """
    path = project_path(project_id)
    recorded = recorded_path(project_id)
    if not recorded.exists() or not path.exists():
        return
    if path.read_bytes() == recorded.read_bytes():
        return
    raise ProjectChangedOutside(
        f"project file {path} was changed outside ridl since its last recorded change; "
        f"change a project with `ridl project update {project_id}`, or record this edit with "
        f"`ridl project update {project_id} --accept-edit` (widening the approval needs "
        "--reb-amendment REF), or restore the file"
    )


def load_project(project_id: str, *, check_unchanged: bool = True) -> Project:
    """The project recorded under ``project_id``.

    ``check_unchanged`` (default) refuses a file edited outside ridl (see
    :func:`check_file_unchanged`); ``ridl project update --accept-edit`` reads it without.

    Raises:
        ConfigError: the id is invalid, or the file is not valid TOML or not a valid project.
        ProjectNotFound: no project file has that id.
        ProjectChangedOutside: the file was changed outside ridl (and ``check_unchanged``).
    """
    validate_id(project_id)
    path = project_path(project_id)
    if not path.exists():
        raise ProjectNotFound(
            f"no project '{project_id}' in {settings.projects_dir()}; "
            "create it with `ridl project create` or set RIDL_HOME"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    if check_unchanged:
        check_file_unchanged(project_id)
    return Project.from_toml(data, source=str(path))


def list_projects() -> list[Project]:
    """Every project of the registry, sorted by id (empty when there is no registry).

    Raises:
        ConfigError: a project file is invalid (see :func:`load_project`).
    """
    folder = settings.projects_dir()
    if not folder.exists():
        return []
    return [load_project(p.stem) for p in sorted(folder.glob("*.toml"))]
