"""The ``ridl`` command line: what the research office types.

Errors a person can fix are printed as one line, without a traceback, and never with a value
taken from a patient's header. That happens in one place, the root group's error boundary
(``RidlGroup``): any ``RidlError`` raised under any command becomes ``error: <message>`` on
standard error and exit code 2. Commands do not catch ``RidlError`` themselves; they raise one
(``ConfigError``, ``ReleaseError``, ...) for a failure a person can fix. Usage errors keep
click's own message and exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from ridl import __version__, settings
from ridl.audit import EVENTS as AUDIT_EVENTS
from ridl.errors import ConfigError, ReleaseError, RidlError, TransientError
from ridl.sources.protect import (
    DEFAULT_MAX_ASSOCIATIONS,
    DEFAULT_RATE_LIMIT,
    DEFAULT_RETRIES,
    ArchiveLimits,
    seconds_until_allowed,
)

ERROR_EXIT_CODE = 2
"""Exit code of a command stopped by a ``RidlError`` (the same as click's usage errors)."""

err_console = Console(stderr=True)


def report_error(exc: RidlError) -> None:
    """Print ``exc`` as the one line ``error: <message>`` on standard error.

    The message is plain text: brackets in it are printed as they are, never read as markup.
    """
    err_console.print(
        Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False, soft_wrap=True
    )


def report_warning(message: str) -> None:
    """Print ``message`` as the one line ``warning: <message>`` on standard error (plain text)."""
    err_console.print(
        Text.assemble(("warning:", "bold yellow"), " ", message), highlight=False, soft_wrap=True
    )


class RidlGroup(TyperGroup):
    """The root ``ridl`` group, and the CLI's one error boundary.

    Every command, however deep, runs inside the root group's ``invoke``; a ``RidlError`` that
    escapes it is printed by ``report_error`` and ends the process with ``ERROR_EXIT_CODE``. The
    same holds for the console script and for ``typer.testing.CliRunner().invoke(app, ...)``,
    since both run this group.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _whole_short_help(self)

    # ``ctx`` is a click Context of typer's own (vendored) click, which has no public name.
    def invoke(self, ctx: Any) -> Any:
        """Run the command, creating files owner-only (umask 077, see
        ``ridl.settings.owner_only``); a RidlError becomes one ``error:`` line and exit code 2."""
        try:
            with settings.owner_only():  # what ridl writes under RIDL_HOME: 0600 in 0700
                return super().invoke(ctx)
        except RidlError as exc:
            report_error(exc)
            raise typer.Exit(ERROR_EXIT_CODE) from None


def _whole_short_help(group: Any) -> None:
    """Give every command under ``group`` (recursively) its whole first sentence as its short
    help, so the command lists of ``--help`` wrap it instead of cutting it with "..." to fit
    the terminal (click cuts a short help it makes from the docstring, never one it is given).
    """
    for command in getattr(group, "commands", {}).values():
        if not command.short_help and command.help:
            first = command.help.strip().split("\n\n")[0]
            sentence = re.split(r"(?<=\.)\s", " ".join(first.split()), maxsplit=1)[0]
            command.short_help = sentence
        _whole_short_help(command)


JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

HELP_WIDTH = 120
"""Columns ``ridl ... --help`` may use when the terminal is that wide (it wraps, never cuts)."""


class DeidOption(StrEnum):
    """The PS3.15 Annex E options ``--deid-option`` takes (``ridl.projects.DEID_OPTIONS``; a
    test keeps the two the same)."""

    RETAIN_LONG_MODIFIED_DATES = "retain-long-modified-dates"
    RETAIN_PATIENT_CHARS = "retain-patient-chars"
    RETAIN_DEVICE_ID = "retain-device-id"
    RETAIN_INSTITUTION_ID = "retain-institution-id"
    RETAIN_UIDS = "retain-uids"
    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_GRAPHICS = "clean-graphics"


app = typer.Typer(
    cls=RidlGroup,
    help=(
        "Build de-identified research imaging libraries from a regional DIR, for REB-approved "
        "projects. State that may hold PHI stays under RIDL_HOME (default ./.ridl)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain click help: it wraps long values instead of cutting them short ("…") as the rich
    # panels do at 80 columns, shows choices as [a|b], and uses up to 120 columns.
    rich_markup_mode=None,
    context_settings={"max_content_width": HELP_WIDTH},
)
project_app = typer.Typer(
    help="The REB project registry.", no_args_is_help=True, rich_markup_mode=None
)
dir_app = typer.Typer(
    help="DIR sources: synthetic archives and folder indexing.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(project_app, name="project")
app.add_typer(dir_app, name="dir")
optout_app = typer.Typer(
    help="Subjects who withdrew from a project (stored only as keyed hashes).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(optout_app, name="optout")
from curation.cli import labels_app, review_app  # noqa: E402

app.add_typer(review_app, name="review")
app.add_typer(labels_app, name="labels")

console = Console()

DEMO_PROJECT = "demo"


def _date(value: str | None, option: str) -> dt.date | None:
    """``value`` (YYYY-MM-DD) as a date, None when not given.

    Raises:
        ConfigError: ``value`` is not a date written YYYY-MM-DD.
    """
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option} must be a date written YYYY-MM-DD") from None


def _print_version(value: bool) -> None:
    if value:
        console.print(f"ridl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Show the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """The root of ``ridl``: options that apply before any command (``--version``)."""


# --- projects ---------------------------------------------------------------------------------


@project_app.command("create")
def project_create(
    project_id: Annotated[str, typer.Argument(help="Short id, e.g. reb-2026-042.")],
    reb_number: Annotated[str, typer.Option("--reb-number", help="REB approval number.")],
    title: Annotated[str, typer.Option(help="Project title.")],
    pi: Annotated[str, typer.Option("--pi", help="Principal investigator.")],
    approved: Annotated[str, typer.Option(help="Approval date, YYYY-MM-DD.")],
    expires: Annotated[str, typer.Option(help="Expiry date of the approval, YYYY-MM-DD.")],
    date_from: Annotated[
        str, typer.Option("--from", help="Approved study dates from, YYYY-MM-DD.")
    ],
    date_to: Annotated[str, typer.Option("--to", help="Approved study dates to, YYYY-MM-DD.")],
    modality: Annotated[list[str], typer.Option(help="Approved modality (repeat).")],
    site: Annotated[list[str], typer.Option(help="Approved site = Issuer of Patient ID (repeat).")],
    retain: Annotated[
        list[str] | None, typer.Option(help="Data element the REB lets the project keep (repeat).")
    ] = None,
    recipient: Annotated[
        list[str] | None, typer.Option(help="Approved recipient of the data (repeat).")
    ] = None,
    recipe: Annotated[
        str,
        typer.Option(
            help="De-identification recipe: ridl-basic, ps3.15-basic (the PS3.15 profile, with "
            "--deid-option), or a path to a .dicom recipe file."
        ),
    ] = "ridl-basic",
    deid_option: Annotated[
        list[DeidOption] | None,
        typer.Option(
            metavar="OPTION",
            help="PS3.15 option the project uses (repeat; recipe ps3.15-basic; each must also "
            f"be given with --allow-deid-option): {', '.join(DeidOption)}.",
        ),
    ] = None,
    allow_deid_option: Annotated[
        list[DeidOption] | None,
        typer.Option(
            metavar="OPTION",
            help="PS3.15 option the REB approved for this project (repeat; as --deid-option).",
        ),
    ] = None,
    hn_issuer: Annotated[
        str, typer.Option(help="Issuer that marks the health number in Other Patient IDs.")
    ] = "HN",
) -> None:
    """Register an REB-approved project and generate its pseudonym secret (never shown)."""
    from ridl.projects import Project, Scope, create_project

    project = Project(
        id=project_id,
        reb_number=reb_number,
        title=title,
        pi=pi,
        approved=_date(approved, "--approved") or dt.date.today(),
        expires=_date(expires, "--expires") or dt.date.today(),
        scope=Scope(
            date_from=_date(date_from, "--from") or dt.date.min,
            date_to=_date(date_to, "--to") or dt.date.max,
            modalities=tuple(m.upper() for m in modality),
            sites=tuple(site),
            retain=tuple(retain or ()),
            deid_options=tuple(o.value for o in allow_deid_option or ()),
        ),
        recipients=tuple(recipient or ()),
        recipe=recipe,
        hn_issuer=hn_issuer,
        deid_options=tuple(o.value for o in deid_option or ()),
    )
    from deid_recipes import find_recipe

    find_recipe(recipe)
    project.check_deid()
    path = create_project(project)
    console.print(f"project [bold]{project_id}[/] recorded in {path}; pseudonym secret created")


@project_app.command("show")
def project_show(
    project_id: Annotated[str, typer.Argument(help="Project id.")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """Show a project's approval and scope (never its secret)."""
    from ridl.projects import load_project

    project = load_project(project_id)
    if json_out:
        json.dump(project.to_toml(), sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        return
    table = Table(show_header=False)
    for key, value in project.to_toml().items():
        if isinstance(value, dict):
            for sub, val in value.items():
                table.add_row(f"{key}.{sub}", _fmt(val))
        else:
            table.add_row(key, _fmt(value))
    console.print(table)


@project_app.command("update")
def project_update(
    project_id: Annotated[str, typer.Argument(help="Project id.")],
    expires: Annotated[
        str | None,
        typer.Option(help="New expiry date, YYYY-MM-DD (later: a renewal, needs --renewal-date)."),
    ] = None,
    renewal_date: Annotated[
        str | None,
        typer.Option(help="Date the REB renewed the approval, YYYY-MM-DD (for a later --expires)."),
    ] = None,
    date_from: Annotated[
        str | None, typer.Option("--from", help="Approved study dates from, YYYY-MM-DD.")
    ] = None,
    date_to: Annotated[
        str | None, typer.Option("--to", help="Approved study dates to, YYYY-MM-DD.")
    ] = None,
    modality: Annotated[
        list[str] | None, typer.Option(help="Approved modalities, the whole new list (repeat).")
    ] = None,
    site: Annotated[
        list[str] | None, typer.Option(help="Approved sites, the whole new list (repeat).")
    ] = None,
    add_recipient: Annotated[
        list[str] | None, typer.Option(help="Add an approved recipient (repeat; widening).")
    ] = None,
    remove_recipient: Annotated[
        list[str] | None, typer.Option(help="Remove a recipient (repeat).")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="TOML file with the new [labels] table (label schema) to use."),
    ] = None,
    reb_amendment: Annotated[
        str | None,
        typer.Option(
            help="Reference of the REB amendment that allows a widening change (dates outside "
            "the approved window, a modality, site or recipient added)."
        ),
    ] = None,
    accept_edit: Annotated[
        bool,
        typer.Option(
            "--accept-edit",
            help="Record a hand edit of the project file (checked by the same rules).",
        ),
    ] = False,
    note: Annotated[str, typer.Option(help="Why, for the audit log (no patient data).")] = "",
) -> None:
    """Change a project: narrowing is always allowed, widening needs --reb-amendment, a later
    expiry needs --renewal-date; every change is recorded in the audit log."""
    import tomllib
    from dataclasses import replace

    from ridl.projects import Scope, load_project, update_project

    project = load_project(project_id, check_unchanged=not accept_edit)
    scope = project.scope
    scope = Scope(
        _date(date_from, "--from") or scope.date_from,
        _date(date_to, "--to") or scope.date_to,
        tuple(m.upper() for m in modality) if modality else scope.modalities,
        tuple(site) if site else scope.sites,
        scope.retain,
        scope.deid_options,
    )
    recipients = [r for r in project.recipients if r not in (remove_recipient or [])]
    missing = sorted(set(remove_recipient or []) - set(project.recipients))
    if missing:
        raise ConfigError(f"--remove-recipient: {', '.join(missing)} is not a recipient")
    recipients += [r for r in add_recipient or [] if r not in recipients]
    extra = dict(project.extra)
    if labels is not None:
        try:
            section = tomllib.loads(labels.read_text()).get("labels")
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--labels {labels}: {type(exc).__name__}") from None
        from curation.labels import LabelSchema

        LabelSchema.from_project(section)  # a bad schema is refused now
        extra["labels"] = section
    new = replace(
        project,
        expires=_date(expires, "--expires") or project.expires,
        scope=scope,
        recipients=tuple(recipients),
        extra=extra,
    )
    change = update_project(
        new,
        reb_amendment=reb_amendment,
        renewal_date=_date(renewal_date, "--renewal-date"),
        note=note,
        accept_edit=accept_edit,
    )
    for name, (old, value) in change.changes.items():
        console.print(f"{name}: {_fmt(old)} -> {_fmt(value)}", highlight=False, markup=False)
    console.print(f"project [bold]{project_id}[/] updated ({len(change.changes)} changes, audited)")


@project_app.command("list")
def project_list(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """List registered projects with their approval status."""
    from ridl.projects import list_projects

    projects = list_projects()
    today = dt.date.today()
    rows = [
        {
            "id": p.id,
            "reb_number": p.reb_number,
            "title": p.title,
            "expires": p.expires.isoformat(),
            "status": "expired" if p.expires < today else "active",
        }
        for p in projects
    ]
    if json_out:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    table = Table("id", "REB number", "title", "expires", "status")
    for row in rows:
        table.add_row(row["id"], row["reb_number"], row["title"], row["expires"], row["status"])
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


# --- opt-out ----------------------------------------------------------------------------------


@optout_app.command("add")
def optout_add(
    project: Annotated[str, typer.Option(help="REB project id.")],
    hn: Annotated[str | None, typer.Option("--hn", help="Health number of the subject.")] = None,
    issuer: Annotated[str | None, typer.Option(help="Issuer of Patient ID (site).")] = None,
    patient_id: Annotated[
        str | None, typer.Option("--patient-id", help="Patient ID at that issuer.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            help="CSV with a header and columns hn, or issuer and patient_id (keeps values out "
            "of shell history)."
        ),
    ] = None,
) -> None:
    """Record that a subject withdrew; never stores or prints the identifier itself."""
    import csv

    from ridl.optout import add_optout

    entries: list[dict[str, str]] = []
    if hn or patient_id:
        entries.append({"hn": hn or "", "issuer": issuer or "", "patient_id": patient_id or ""})
    if file is not None:
        try:
            with file.open(newline="") as handle:
                entries.extend(csv.DictReader(handle))
        except OSError:
            raise ConfigError(f"cannot read --file {file}") from None
    if not entries:
        raise ConfigError("give --hn, --issuer with --patient-id, or --file")
    added = 0
    for row in entries:
        added += add_optout(
            project,
            health_number=(row.get("hn") or "").strip() or None,
            issuer=(row.get("issuer") or "").strip() or None,
            patient_id=(row.get("patient_id") or "").strip() or None,
        )
    console.print(f"{len(entries)} subject(s) recorded for {project} ({added} new keyed entries)")


@optout_app.command("list")
def optout_list(project: Annotated[str, typer.Option(help="REB project id.")]) -> None:
    """Show a project's opt-out entries: keyed hashes and dates, never identifiers."""
    from ridl.optout import load_optout

    listing = load_optout(project)
    table = Table("keyed entry", "added", title=f"opt-out list of {project}")
    for entry in listing.entries:
        table.add_row(entry.token, entry.added)
    console.print(table)
    console.print(f"{len(listing)} entries")


# --- DIR ----------------------------------------------------------------------------------------


@dir_app.command("synth")
def dir_synth(
    path: Annotated[Path, typer.Argument(help="Folder to write the synthetic DIR into.")],
    patients: Annotated[int, typer.Option(help="Number of people.")] = 20,
    sites: Annotated[int, typer.Option(help="Number of sites (Issuers of Patient ID).")] = 3,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same archive.")] = 0,
    ct_slices: Annotated[int, typer.Option(help="Slices per CT series (scale tests).")] = 4,
) -> None:
    """Write a synthetic DIR (fake patients) for demos and tests, into a new or empty folder."""
    from ridl.synth import synthesize

    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "is not a folder" if not path.is_dir() else "is not empty"
        raise ConfigError(
            f"{path} {what}: a synthetic DIR is written into a new or empty folder (files of "
            "another archive would mix with it); choose another PATH or empty this one"
        )
    try:
        report = synthesize(path, patients=patients, sites=sites, seed=seed, ct_slices=ct_slices)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    console.print(
        f"synthetic DIR in {path}: {report.studies} studies, {len(report.files)} files "
        f"({len(report.truncated)} truncated, {len(report.not_dicom)} not DICOM)"
    )


@dir_app.command("index")
def dir_index(
    source: Annotated[
        str, typer.Argument(help="Source: folder:PATH, dimse://... or dicomweb://...")
    ],
    date_from: Annotated[
        str | None, typer.Option("--from", help="Network sources: study dates from, YYYY-MM-DD.")
    ] = None,
    date_to: Annotated[
        str | None, typer.Option("--to", help="Network sources: study dates to, YYYY-MM-DD.")
    ] = None,
) -> None:
    """(Re)build the study catalog of a source (headers only, never pixel data), then print
    what it holds: studies, instances, the years of the study dates, and studies by site and by
    modality (counts only, never a patient's name or ID)."""
    from ridl.catalog import catalog_dir_for, catalog_summary
    from ridl.sources.base import open_source

    src = open_source(source)
    catalog = catalog_dir_for(src.url)
    src.build_catalog(
        catalog,
        _date(date_from, "--from") or dt.date(1900, 1, 1),
        _date(date_to, "--to") or dt.date.today(),
    )
    found = catalog_summary(catalog)
    console.print(
        f"catalog of {found['studies']} studies ({found['instances']} instances) in {catalog}",
        highlight=False,
    )
    if not found["studies"]:
        console.print(
            "no DICOM study found: check the source (a folder holds DICOM files; a network "
            "source, --from and --to)",
            highlight=False,
        )
        return
    years = (
        "unknown"
        if found["first_year"] is None
        else f"{found['first_year']} to {found['last_year']}"
    )
    console.print(f"study dates: {years}", highlight=False)
    for title, counts in (("sites", found["sites"]), ("modalities", found["modalities"])):
        listed = ", ".join(f"{name} {n}" for name, n in counts.items())
        console.print(f"{title} (studies): {listed}", highlight=False, soft_wrap=True)


# --- runs ---------------------------------------------------------------------------------------


def _quiet_prefect(verbose: bool) -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    settings.configure_prefect_environment()
    if not verbose:
        logging.getLogger("prefect").setLevel(logging.WARNING)


def launch_run(
    project: str,
    release: str,
    source: str,
    destination: str | None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    modalities: list[str] | None = None,
    sites: list[str] | None = None,
    batch_size: int = 200,
    reindex: bool = False,
    verbose: bool = False,
    limits: ArchiveLimits | None = None,
    scale: dict[str, Any] | None = None,
    allow_empty: bool = False,
    dry_run: bool = False,
) -> dict[str, Any] | None:
    """Check the request and select (before Prefect starts), then run the flow with a progress
    bar. Returns the run's summary, or None when the release is already published (a rerun is
    a no-op: one line says so, nothing is gated or written) or for ``dry_run`` (what would be
    selected is printed; nothing is retrieved, frozen or written, and Prefect never starts).

    Raises:
        RidlError: any check that needs no DICOM work (request, source, destination, frozen
            parameters, the release's lock), or an empty selection without ``allow_empty``.
    """
    from export.store import open_store
    from flows.params import validate_params
    from flows.runplan import check_run, prepare_run
    from ridl.releases import release_lock

    scale = {k: v for k, v in (scale or {}).items() if v is not None}
    params = validate_params(
        project=project,
        release=release,
        source=source,
        destination=destination,
        date_from=date_from,
        date_to=date_to,
        modalities=modalities,
        sites=sites,
        batch_size=batch_size,
        **scale,
    )
    from ridl.sources.base import open_source

    limits = limits or ArchiveLimits()
    if source.lower().startswith("dimse"):  # a dry run is refused what its run would be
        workers = params.resolved_workers()
        _check_move_workers(open_source(source, limits), params.resolved_cluster(), workers)
    if dry_run:
        from flows.runplan import preview_run

        print_preview(
            preview_run(
                project, release, source, destination, date_from, date_to, modalities, sites,
                reindex=reindex, limits=limits,
            )
        )  # fmt: skip
        return None
    # Prefect reads its settings when first imported: configure it before anything imports it
    # (nothing starts until the flow is called).
    _quiet_prefect(verbose)
    if params.resolved_cluster():  # (flows.runners imports Prefect: only for a cluster here)
        from flows.runners import require_server_for_cluster

        require_server_for_cluster(params.resolved_cluster())
    # Everything that needs no DICOM work fails here, in one line, before Prefect is even
    # imported (importing it alone takes seconds).
    done = check_run(
        project, release, source, destination, date_from, date_to, modalities, sites, limits
    )
    if done is not None:
        if params.retry_failed:
            # Retrying failed studies would add objects to a release that never changes.
            raise ReleaseError(
                f"release {project}/{release} is already published and cannot be changed, so "
                "its failed studies cannot be retried into it; select them in a new release "
                "(change: --release)"
            )
        console.print(done, highlight=False, soft_wrap=True)
        return None
    from flows.extract import extract_run
    from flows.progress import RunProgress
    from flows.stopping import handle_stops

    store = open_store(destination)
    # The source as frozen (a folder's absolute path), so the line works from any folder.
    source_url = open_source(source, limits).url
    resume = resume_command(
        project, release, source_url, store.url, date_from, date_to, modalities, sites,
        limits=limits, batch_size=batch_size, scale=scale,
    )  # fmt: skip
    _say_when_allowed(source, limits)
    with handle_stops(project, release, resume), release_lock(project, release):
        # Index and select now, so an empty selection is refused in one line before Prefect
        # starts; the flow then resumes the frozen selection.
        plan = prepare_run(
            project, release, source, store.url, date_from, date_to, modalities, sites,
            reindex=reindex, limits=limits, allow_empty=allow_empty,
        )  # fmt: skip
        if plan.catalog_note:
            report_warning(plan.catalog_note)
        console.print(f"[bold]ridl[/] run {project}/{release} -> {store.url}")
        from flows.runners import configured_api_url

        if os.environ.get("PREFECT_API_URL") or configured_api_url():
            console.print("starting Prefect (the flow reports to the server in PREFECT_API_URL)...")
        else:
            console.print(
                "starting Prefect (a local ephemeral API; the first start takes a while)..."
            )
        with RunProgress(project, release, store, console), _stopped_by(resume):
            summary: dict[str, Any] = extract_run(
                project=project,
                release=release,
                source=source,
                destination=store.url,
                date_from=date_from,
                date_to=date_to,
                modalities=modalities,
                sites=sites,
                batch_size=batch_size,
                max_associations=limits.max_associations,
                rate_limit=limits.rate_limit,
                allowed_hours=limits.allowed_hours,
                retries=limits.retries,
                allow_empty=allow_empty,
                **scale,
            )
    return summary


def _check_move_workers(source: Any, cluster: str | None, workers: int) -> None:
    """Refuse local worker processes that would compete for one C-MOVE receiver.

    The archive delivers a C-MOVE to the AE title and port it knows for ``move_aet``: one
    listening socket on this machine, which one worker process holds (its retrieval process).

    Raises:
        ConfigError: retrieval by C-MOVE with more than one local worker process.
    """
    if cluster is None and workers > 1 and getattr(source, "retrieval", None) == "move":
        raise ConfigError(
            f"retrieval=move delivers every study to one receiver (move_port "
            f"{source.move_port} on this machine), which one worker process can hold, and this "
            f"run would start {workers}: give --workers 1, or retrieve by C-GET (retrieval=get "
            "in --source)"
        )


def _say_when_allowed(source: str, limits: ArchiveLimits) -> None:
    """One line when a network DIR may not be asked now (``--allowed-hours``): the run waits
    for the window before its first request, and says until when (local time)."""
    if not source.startswith(("dimse", "dicomweb")):
        return
    now = dt.datetime.now()
    wait = seconds_until_allowed(limits.allowed_hours, now)
    if wait <= 0:
        return
    opens = (now + dt.timedelta(seconds=wait)).strftime("%H:%M")
    hours, minutes = divmod(round(wait / 60), 60)
    console.print(
        f"outside the allowed hours ({limits.allowed_hours}): nothing is asked of the archive "
        f"before {opens} (in {hours} h {minutes:02d} min); the run waits (Ctrl-C stops it)",
        highlight=False,
        soft_wrap=True,
    )


@contextlib.contextmanager
def _stopped_by(resume: str) -> Iterator[None]:
    """Turn a DIR or store that kept failing after every retry (a TransientError or an
    ArchiveUnavailable out of the flow) into one ``error:`` line saying the run can be
    resumed, and how.

    Raises:
        ReleaseError: the run stopped on a transient failure (the message says how to resume).
    """
    from ridl.sources.protect import ArchiveUnavailable

    try:
        yield
    except (TransientError, ArchiveUnavailable) as exc:
        raise ReleaseError(
            f"the run stopped: {exc} (still failing after its retries); what is done is kept, "
            f"resume when the DIR and the store answer again with: {resume}"
        ) from None


def resume_command(
    project: str,
    release: str,
    source: str,
    store_url: str,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    modalities: list[str] | None = None,
    sites: list[str] | None = None,
    *,
    limits: ArchiveLimits | None = None,
    batch_size: int | None = None,
    scale: dict[str, Any] | None = None,
) -> str:
    """The ``ridl run`` command line that resumes a release: the parameters it was frozen with,
    then how the run was told to press on the archive and to scale (``limits``: the archive
    protection options; ``batch_size``; ``scale``: ``workers``, ``cluster``,
    ``retrieval_limit``, ``max_batches_per_flow``, ``audit_sample``, ``retry_failed``), each
    given only when it is not the default, so a resumed run keeps the research office's
    protection of the DIR (its allowed hours above all). Values quoted for a POSIX shell."""
    import shlex

    from flows.params import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_MAX_BATCHES_PER_FLOW,
        DEFAULT_RETRIEVAL_LIMIT,
    )

    words = ["ridl", "run", "--project", project, "--release", release, "--source", source]
    words += ["--dest", store_url]
    if date_from:
        words += ["--from", date_from.isoformat()]
    if date_to:
        words += ["--to", date_to.isoformat()]
    for modality in modalities or []:
        words += ["--modality", modality]
    for site in sites or []:
        words += ["--site", site]
    if limits is not None:
        if limits.max_associations != DEFAULT_MAX_ASSOCIATIONS:
            words += ["--max-associations", str(limits.max_associations)]
        if limits.rate_limit != DEFAULT_RATE_LIMIT:
            words += ["--rate-limit", f"{limits.rate_limit:g}"]
        if limits.allowed_hours:
            words += ["--allowed-hours", limits.allowed_hours]
        if limits.retries != DEFAULT_RETRIES:
            words += ["--retries", str(limits.retries)]
    if batch_size is not None and batch_size != DEFAULT_BATCH_SIZE:
        words += ["--batch-size", str(batch_size)]
    defaults = {
        "retrieval_limit": DEFAULT_RETRIEVAL_LIMIT,
        "max_batches_per_flow": DEFAULT_MAX_BATCHES_PER_FLOW,
    }
    for name, value in (scale or {}).items():
        if value is None or value is False or defaults.get(name) == value:
            continue
        flag = "--" + name.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def print_preview(preview: dict[str, Any]) -> None:
    """Print what a ``--dry-run`` would select: counts, a table of studies and instances by
    modality and year, and what selection leaves out (studies) or cannot read (files)."""
    console.print(
        f"dry run of {preview['project']}/{preview['release']} ({preview['state']}): "
        f"{preview['studies']} studies, {preview['subjects']} subjects, "
        f"{preview['instances']} instances would be selected from {preview['source']}; "
        "nothing retrieved, frozen or written",
        highlight=False,
    )
    table = Table("modalities", "year", "studies", "instances")
    for row in preview["by_modality_year"]:
        table.add_row(row["modalities"], row["year"], str(row["studies"]), str(row["instances"]))
    console.print(table)
    why = {
        "dates": "Study Date outside the requested dates (or missing)",
        "sites": "Issuer of Patient ID not among the requested sites",
        "modalities": "no modality of the request",
    }
    for what, n in preview.get("out_of_scope", {}).items():
        console.print(f"left out: {n} studies of the catalog: {why[what]}", highlight=False)
    for reason, n in preview["excluded"].items():
        console.print(f"excluded: {reason}: {n} studies", highlight=False)
    for modality, n in preview.get("other_modalities", {}).items():
        console.print(
            f"left out when read: the {modality} objects of {n} selected studies "
            "(their modality is not in the request)",
            highlight=False,
        )
    for reason, n in preview["unreadable"].items():
        console.print(f"not readable DICOM: {reason}: {n} files", highlight=False)
    if preview.get("catalog_changed"):
        report_warning(preview["catalog_changed"])
    console.print(
        "decided when each object is read, and counted by the run's summary: dose reports, "
        "IOCM rejections, and objects quarantined or held for review",
        highlight=False,
    )


def print_summary(summary: dict[str, Any], store_url: str) -> None:
    """Print a release summary (counts of studies, instances, bytes, reasons) and its files.

    Every count's line names its unit (studies, subjects, instances, bytes, flow runs): what
    selection excluded is counted in studies (``excluded_studies``), what the work excluded or
    quarantined in instances.
    """
    table = Table(title=f"release {summary['project']}/{summary['release']}", show_header=False)
    table.add_row("studies selected", str(summary["studies_selected"]))
    table.add_row("studies exported", str(summary["studies_exported"]))
    table.add_row("subjects (research IDs) exported", str(summary["subjects"]))
    table.add_row("instances exported", str(summary["instances_exported"]))
    table.add_row("bytes exported", f"{summary['bytes_exported']:,}")
    whole = summary.get("excluded_studies", {})
    for reason, n in summary["excluded"].items():
        studies = min(int(whole.get(reason, 0)), int(n))
        if studies:
            table.add_row(f"studies excluded: {reason}", str(studies))
        if n - studies:
            table.add_row(f"instances excluded: {reason}", str(n - studies))
    for reason, n in summary["quarantined"].items():
        table.add_row(f"instances quarantined: {reason}", str(n))
    for reason, n in summary.get("studies_failed", {}).items():
        table.add_row(f"studies failed: {reason}", str(n))
    if summary.get("verification"):
        table.add_row(
            "verification", "passed: published" if summary["verification"]["passed"] else "failed"
        )
        if summary["verification"].get("without_terms"):
            table.add_row(
                "sampled studies without kept terms (patient ID and health number searched only)",
                str(summary["verification"]["without_terms"]),
            )
    if summary.get("flow_runs", 0) > 1:
        table.add_row("child flow runs", str(summary["flow_runs"]))
    if summary.get("studies_skipped_as_done"):
        table.add_row("studies already done (resumed)", str(summary["studies_skipped_as_done"]))
    console.print(table)
    published = False
    if summary.get("studies_failed"):
        from export.store import open_store
        from flows.runplan import is_published

        published = is_published(summary["project"], summary["release"], open_store(store_url))
    if summary.get("studies_failed") and published:
        console.print(
            "studies the archive could not deliver are recorded (`ridl summary` lists them); the "
            "release is published without them and never changes: select them in a new release "
            "(--release) to try them again"
        )
    elif summary.get("studies_failed"):
        console.print(
            "studies the archive could not deliver are recorded (`ridl summary` lists them); "
            "the release is not published: rerun it with --retry-failed to try them again "
            "(with the same --source: a release is frozen with its source)"
        )
    root = store_url[5:] if store_url.startswith("file:") else store_url.split("?", 1)[0]
    # soft_wrap: a long path stays on one line, so it can be copied
    console.print(f"manifest: {root}/{summary['manifest']}", soft_wrap=True, highlight=False)
    if summary.get("report"):
        console.print(f"report:   {root}/{summary['report']}", soft_wrap=True, highlight=False)
    # summary.json is at the release's top (a large release's "manifest" is its dataset folder)
    console.print(
        f"summary:  {root}/{summary['project']}/{summary['release']}/summary.json",
        soft_wrap=True,
        highlight=False,
    )


@app.command("run")
def run(
    project: Annotated[str, typer.Option(help="REB project id.")],
    release: Annotated[str, typer.Option(help="Release name, e.g. r1 (rerun to resume).")],
    source: Annotated[
        str,
        typer.Option(
            help="DIR source: folder:PATH; dimse://CALLED_AET@host:port?calling=AET (C-GET; "
            "for C-MOVE add &retrieval=move&move_aet=AET&move_port=N); or "
            "dicomweb[s]://host:port/path (see README)."
        ),
    ],
    dest: Annotated[
        str | None, typer.Option(help="Object store: file:PATH (default RIDL_HOME/store).")
    ] = None,
    date_from: Annotated[
        str | None, typer.Option("--from", help="Study dates from, YYYY-MM-DD (default: approved).")
    ] = None,
    date_to: Annotated[
        str | None, typer.Option("--to", help="Study dates to, YYYY-MM-DD (default: approved).")
    ] = None,
    modality: Annotated[
        list[str] | None, typer.Option(help="Modality (repeat; default: approved).")
    ] = None,
    site: Annotated[
        list[str] | None, typer.Option(help="Site (repeat; default: approved).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Studies per Prefect task.")] = 200,
    reindex: Annotated[bool, typer.Option(help="Rebuild the source catalog first.")] = False,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's own logs.")] = False,
    max_associations: Annotated[
        int,
        typer.Option(
            help="Archive protection: most associations/requests open at once (all processes)."
        ),
    ] = DEFAULT_MAX_ASSOCIATIONS,
    rate_limit: Annotated[
        float,
        typer.Option(help="Archive protection: most requests per second per process (0: none)."),
    ] = DEFAULT_RATE_LIMIT,
    allowed_hours: Annotated[
        str | None,
        typer.Option(
            help="Archive protection: only work in this local time window, e.g. 19:00-07:00 "
            "(waits outside it; default: any time)."
        ),
    ] = None,
    retries: Annotated[
        int,
        typer.Option(
            help="Archive protection: retries, with backoff, when the archive refuses or drops "
            "an association."
        ),
    ] = DEFAULT_RETRIES,
    workers: Annotated[
        int | None, typer.Option(help="Local worker processes (default: every core).")
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            envvar="RIDL_DASK_ADDRESS",
            help="Run on this Dask cluster (tcp://host:8786); needs a Prefect server, see README.",
        ),
    ] = None,
    retrieval_limit: Annotated[
        int, typer.Option(help="Studies retrieved from the DIR at once, across all workers.")
    ] = 4,
    max_batches_per_flow: Annotated[
        int, typer.Option(help="Tasks per flow run; larger selections split into child runs.")
    ] = 2000,
    audit_sample: Annotated[
        int | None,
        typer.Option(
            help="Objects the release gate reads back and verifies again "
            "(default: 1,000 or 0.1%, whichever is larger, at most 20,000)."
        ),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Retrieve again the studies an earlier run of this release recorded as failed "
            "(the archive could not deliver them); without it they stay recorded and counted.",
        ),
    ] = False,
    allow_empty: Annotated[
        bool,
        typer.Option(
            help="Publish the release even when it holds no object: no study matches, or every "
            "study failed, was held or was excluded (refused by default: an empty release is "
            "usually a wrong --source, dates, --modality or --site, or an archive that cannot "
            "deliver)."
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show what would be selected (studies, subjects, instances by modality and "
            "year, exclusions and why) without retrieving, freezing or writing anything.",
        ),
    ] = False,
) -> None:
    """Run an approved extraction into a release. Rerunning an unfinished release resumes it;
    rerunning a published one does nothing and says so; one run of a release at a time."""
    from export.store import open_store

    limits = ArchiveLimits(max_associations, rate_limit, allowed_hours, retries)
    summary = launch_run(
        project,
        release,
        source,
        dest,
        _date(date_from, "--from"),
        _date(date_to, "--to"),
        modality,
        site,
        batch_size,
        reindex,
        verbose,
        limits,
        scale={
            "workers": workers,
            "cluster": cluster,
            "retrieval_limit": retrieval_limit,
            "max_batches_per_flow": max_batches_per_flow,
            "audit_sample": audit_sample,
            "retry_failed": retry_failed,
        },
        allow_empty=allow_empty,
        dry_run=dry_run,
    )
    if summary is not None:
        print_summary(summary, open_store(dest).url)


@app.command("demo")
def demo(
    patients: Annotated[int, typer.Option(help="People in the synthetic DIR.")] = 20,
    sites: Annotated[int, typer.Option(help="Sites in the synthetic DIR.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic DIR.")] = 0,
    release: Annotated[str, typer.Option(help="Release name.")] = "r1",
    verbose: Annotated[bool, typer.Option(help="Show Prefect's own logs.")] = False,
) -> None:
    """The whole job on embedded defaults: synthetic DIR, demo project, run, release."""
    from export.store import open_store
    from ridl.projects import Project, Scope, create_project, project_path
    from ridl.synth import synthesize

    home = settings.ridl_home()
    dir_path = home / "demo-dir"
    if not dir_path.exists():
        report = synthesize(dir_path, patients=patients, sites=sites, seed=seed)
        console.print(f"synthetic DIR: {report.studies} studies in {dir_path}")
    if not project_path(DEMO_PROJECT).exists():
        today = dt.date.today()
        create_project(
            Project(
                id=DEMO_PROJECT,
                reb_number="REB-DEMO-0001",
                title="ridl demonstration project",
                pi="Demo PI",
                approved=today - dt.timedelta(days=1),
                expires=today + dt.timedelta(days=365),
                scope=Scope(
                    dt.date(2015, 1, 1),
                    dt.date(2024, 12, 31),
                    ("CT", "CR", "US"),
                    tuple(f"SITE-{chr(ord('A') + i)}" for i in range(sites)),
                ),
                recipients=("Demo Researcher",),
            )
        )
        console.print(f"project '{DEMO_PROJECT}' created")
    summary = launch_run(DEMO_PROJECT, release, f"folder:{dir_path}", None, verbose=verbose)
    if summary is not None:
        print_summary(summary, open_store(None).url)


@app.command("summary")
def show_summary(
    project: Annotated[str, typer.Option(help="REB project id.")],
    release: Annotated[str, typer.Option(help="Release name.")],
    dest: Annotated[
        str | None, typer.Option(help="Object store (default RIDL_HOME/store).")
    ] = None,
    table: Annotated[
        bool,
        typer.Option(
            "--table",
            help="Print the table `ridl run` ends with (each line names its unit) instead of "
            "summary.json.",
        ),
    ] = False,
) -> None:
    """Print a finished release's summary of counts (summary.json, or a table with --table)."""
    from export.manifest import read_summary, release_files
    from export.store import open_store

    store = open_store(dest)
    if not store.exists(release_files(f"{project}/{release}").summary):
        raise ReleaseError(
            f"no summary for {project}/{release} in {store.url}; has the run finished?"
        )
    summary = read_summary(store, f"{project}/{release}")
    if table:
        print_summary(dict(summary), store.url)
        return
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")


# --- releases, access, pull (export/cli.py) ----------------------------------------------------

from export.cli import DestOption as ReleaseDestOption  # noqa: E402
from export.cli import access_app, pull_command, release_app  # noqa: E402
from export.cli import kv_table as release_table  # noqa: E402

app.add_typer(release_app, name="release")


@release_app.command("publish")
def release_publish(
    project: Annotated[str, typer.Option(help="REB project id.")],
    release: Annotated[str, typer.Option(help="Release name.")],
    dest: ReleaseDestOption = None,
    license: Annotated[str | None, typer.Option(help="License text for the release.")] = None,
    allow_empty: Annotated[
        bool,
        typer.Option(help="Publish the release even when it holds no object (refused by default)."),
    ] = False,
) -> None:
    """Sign and publish a finished run's release (the flow does this at its end too).

    As at the end of a run: a release bound to another destination is refused, one that holds
    no object is refused unless --allow-empty, and the PHI gate checks it (and records it as
    published, audited) before it is signed. Publishing a published release changes nothing.
    """
    from export.manifest import read_summary, release_files
    from export.release import publish_release
    from export.store import open_store
    from flows.gate import gate_release
    from flows.runplan import is_published, nothing_to_publish, recipe_sha256
    from ridl.errors import EmptyRelease
    from ridl.projects import load_project
    from ridl.releases import load_frozen

    spec = load_project(project).recipe_spec()
    store = open_store(dest)
    frozen = load_frozen(project, release)
    if frozen is not None and frozen[0].destination and frozen[0].destination != store.url:
        raise ReleaseError(
            f"release {project}/{release} is bound to {frozen[0].destination}; publish it "
            "there (change: --dest)"
        )
    prefix = f"{project}/{release}"
    if not is_published(project, release, store) and store.exists(release_files(prefix).summary):
        summary = read_summary(store, prefix)
        if not summary["instances_exported"] and not allow_empty:
            raise EmptyRelease(nothing_to_publish(project, release, summary))
        gate_release(project, release, store.url)
    result = publish_release(
        store, project, release, recipe_sha256=recipe_sha256(spec), license=license
    )
    console.print(release_table(f"release {project}/{release}", result))


app.add_typer(access_app, name="access")
app.command("pull")(pull_command)
# --- trust: verification gate and audit log ------------------------------------------------

audit_app = typer.Typer(
    help="The tamper-evident audit log.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(audit_app, name="audit")


@project_app.command("change-secret")
def project_change_secret(
    project_id: Annotated[str, typer.Argument(help="Project id.")],
) -> None:
    """Replace a project's pseudonym secret (refused once a release is published)."""
    from ridl.secrets import change_secret

    change_secret(project_id)
    console.print(f"pseudonym secret of project [bold]{project_id}[/] replaced (never shown)")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit log's hash chain: any edited, removed or reordered entry is reported."""
    from ridl.audit import log_path, verify_log

    count, problems = verify_log()
    if problems:
        for problem in problems:
            err_console.print(f"[bold red]broken:[/] {problem}", highlight=False)
        err_console.print(f"{log_path()}: {count} entries, {len(problems)} problems")
        raise typer.Exit(1)
    console.print(f"{log_path()}: {count} entries, chain intact")


@audit_app.command("show")
def audit_show(
    last: Annotated[int, typer.Option(help="Show the last N entries (0 = all).")] = 20,
    event: Annotated[
        str | None,
        typer.Option(
            help="Only entries of this event, one of: " + ", ".join(AUDIT_EVENTS) + ".",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON lines (one entry each) instead of a table.")
    ] = False,
) -> None:
    """Show audit entries (research IDs, counts and keys only; never PHI)."""
    from ridl.audit import read_entries

    if event is not None and event not in AUDIT_EVENTS:
        raise ConfigError(
            f"--event {event!r} is not an audit event; use one of: " + ", ".join(AUDIT_EVENTS)
        )
    entries = [e for e in read_entries() if event is None or e.get("event") == event]
    if last > 0:
        entries = entries[-last:]
    if json_out:
        for e in entries:
            sys.stdout.write(json.dumps(e, sort_keys=True) + "\n")
        return
    table = Table("seq", "time", "event", "who", "fields")
    for e in entries:
        fields = json.dumps(e.get("fields", {}), sort_keys=True)
        table.add_row(
            str(e.get("seq")), str(e.get("time")), str(e.get("event")), str(e.get("who")), fields
        )
    console.print(table)


@app.command("verify")
def verify(
    project: Annotated[str, typer.Option(help="REB project id.")],
    release: Annotated[str, typer.Option(help="Release name.")],
    dest: Annotated[
        str | None, typer.Option(help="Object store (default RIDL_HOME/store).")
    ] = None,
    full: Annotated[
        bool,
        typer.Option(
            help="Auditor's mode: read every source header from the DIR again, search every "
            "stored object and check each against its manifest part's hash, every part's "
            "verification record and the listing, as the sample mode does (slow; loads the DIR)."
        ),
    ] = False,
    sample: Annotated[
        int | None,
        typer.Option(help="Objects to read back (default as the gate: 1,000 or 0.1%)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="With --full: processes that search the stored objects (default: every core, "
            "as `ridl run`, for a release of 5,000 objects or more; one process below that). "
            "The report is the same whatever the number."
        ),
    ] = None,
) -> None:
    """Check a release as its gate does (verification records, listing, a sample read back),
    or with --full search every exported byte against identifiers from its source headers."""
    from export.manifest import read_summary
    from export.store import open_store
    from flows.gate import audit_release, verify_release, verify_workers

    processes = verify_workers(workers) if workers is not None else None  # checked first
    if full and sample is not None:
        raise ConfigError("--sample reads a sample back; --full reads every object: give one")
    if workers is not None and not full:
        raise ConfigError("--workers sets the processes of --full; add --full or drop --workers")
    from ridl.projects import load_project

    load_project(project)  # a project that does not exist is named as such, before the store
    store = open_store(dest)
    url = store.url
    if next(iter(store.list(f"{project}/{release}/")), None) is None:
        raise ReleaseError(
            f"{url} holds nothing of release {project}/{release}; give the release's --dest"
        )
    if full:
        if processes is None:  # every core for a large release, one process for a small one
            try:
                exported: int | None = read_summary(store, f"{project}/{release}")[
                    "instances_exported"
                ]
            except (FileNotFoundError, ValueError, KeyError):
                exported = None
            processes = verify_workers(None, exported)
        report = verify_release(project, release, url, workers=processes)
    else:
        report = audit_release(project, release, url, sample=sample)
    console.print(report.render())
    if not report.passed:
        raise typer.Exit(1)


@app.command("deid")
def deid_folder(
    src: Annotated[Path, typer.Argument(help="A DICOM file or a folder of them.")],
    dst: Annotated[Path, typer.Argument(help="Folder for the de-identified files.")],
    project: Annotated[str, typer.Option(help="REB project whose recipe and keys to use.")],
) -> None:
    """De-identify a folder with a project's recipe and keys, outside any run.

    Each study is curated as a run curates it (IOCM, checks, burned-in text); what a run would
    hold is quarantined under the release 'adhoc' and reviewed with 'ridl review ... --release
    adhoc'. Prints the counts as JSON.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from flows.deid import FolderDeidentifier, check_destination, deidentify_folder, iter_files

    if not src.exists():
        raise ConfigError(f"{src} does not exist: give a DICOM file or folder")
    worker = FolderDeidentifier(project)  # an unknown or expired project fails before any work
    check_destination(dst)
    total = sum(1 for _ in iter_files(src))
    with Progress(
        TextColumn("de-identifying"), BarColumn(), MofNCompleteColumn(), console=err_console
    ) as bar:
        task = bar.add_task("deid", total=total)
        summary = deidentify_folder(
            src, dst, project, on_file=lambda: bar.advance(task), worker=worker
        )
    if summary.held_for_review:
        err_console.print(
            f"{summary.held_for_review} objects held for review (not written; among the "
            f"quarantined): ridl review list --project {project} --release adhoc",
            highlight=False,
            soft_wrap=True,
        )
    json.dump(summary.as_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    app()
