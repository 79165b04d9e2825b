"""``ridl review ...`` and ``ridl labels ...``: the curation commands (mounted by flows.cli).

Nothing here prints a header value or detected text: review output names objects by the SHA-256
of their bytes and studies by their de-identified keys. A ``RidlError`` raised here is printed
as one line with exit code 2 by the root group's error boundary in ``flows.cli``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

review_app = typer.Typer(
    help="Review sheets of quarantined and at-risk objects (on premises).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
labels_app = typer.Typer(
    help="Labeling lists: export worklists, import labels, run labeling hooks.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True)


ProjectOpt = Annotated[str, typer.Option(help="REB project id.")]
ReleaseOpt = Annotated[str, typer.Option(help="Release name.")]
DestOpt = Annotated[
    str | None, typer.Option(help="Object store of the release (default RIDL_HOME/store).")
]


@review_app.command("sheet")
def review_sheet(project: ProjectOpt, release: ReleaseOpt) -> None:
    """Write the HTML review sheet of a release (stays under RIDL_HOME)."""
    from curation.review import list_records, write_sheet

    path = write_sheet(project, release)
    console.print(f"review sheet of {len(list_records(project, release))} at-risk objects: {path}")


@review_app.command("list")
def review_list(project: ProjectOpt, release: ReleaseOpt) -> None:
    """List quarantined and at-risk objects with their reason and decision."""
    from curation.review import decisions_path, held_by_checks, list_records, read_decisions

    path = decisions_path(project, release)
    decided = read_decisions(path) if path.exists() else {}
    table = Table("object", "status", "reason", "text boxes", "decision")
    for r in list_records(project, release) + held_by_checks(project, release):
        table.add_row(
            r.object[:16], r.status, r.reason, str(len(r.boxes)), decided.get(r.object, "")
        )
    console.print(table)


@review_app.command("decide")
def review_decide(
    project: ProjectOpt,
    release: ReleaseOpt,
    object_id: Annotated[str, typer.Argument(help="Object (SHA-256 shown on the sheet).")],
    decision: Annotated[
        Literal["approve", "reject"],
        typer.Argument(
            help="approve (release the object) or reject (keep it out).", case_sensitive=False
        ),
    ],
    reviewer: Annotated[str, typer.Option(help="Who decides.")],
    note: Annotated[str, typer.Option(help="Why (no patient information).")] = "",
) -> None:
    """Record a decision; the next run of the release honours it."""
    from curation.review import decide

    decide(project, release, object_id, decision.lower(), reviewer, note)
    console.print(f"{decision} recorded; rerun the release to apply it")


@labels_app.command("export")
def labels_export(
    project: ProjectOpt,
    release: ReleaseOpt,
    assignee: Annotated[str, typer.Option(help="Who will label this list.")],
    count: Annotated[
        int | None, typer.Option(help="At most this many studies (1 or more).", min=1)
    ] = None,
    fmt: Annotated[
        Literal["csv", "xlsx"],
        typer.Option("--format", help="File format of the worklist.", case_sensitive=False),
    ] = "csv",
    out: Annotated[Path | None, typer.Option(help="Output file.")] = None,
    overlap: Annotated[
        bool, typer.Option(help="Allow studies already given to someone else.")
    ] = False,
    dest: DestOpt = None,
) -> None:
    """Write a worklist of studies not yet given to anyone (one column per label field)."""
    from curation.labels import export_worklist
    from export.store import open_store

    target = out or Path(f"worklist-{project}-{release}-{assignee}.{fmt}")
    path, n = export_worklist(
        open_store(dest),
        project,
        release,
        assignee,
        target,
        count=count,
        fmt=fmt,
        overlap=overlap,
    )
    console.print(f"worklist of {n} studies for {assignee}: {path}")


@labels_app.command("import")
def labels_import(
    file: Annotated[Path, typer.Argument(help="A returned worklist (csv or xlsx).")],
    project: Annotated[str | None, typer.Option(help="Project (default: from the file).")] = None,
    release: Annotated[str | None, typer.Option(help="Release (default: from the file).")] = None,
    correct: Annotated[
        bool,
        typer.Option(
            help="Let changed values replace a study's stored label (same assignee); each "
            "correction is recorded in the audit log. Without it such rows are rejected."
        ),
    ] = False,
    rejected: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the rejected rows (the file's columns plus 'reason'; .xlsx "
            "or .csv). Default: FILE's name with '-rejected', next to it."
        ),
    ] = None,
    dest: DestOpt = None,
) -> None:
    """Validate every row; store the good ones with the release; report bad rows by line.

    Rows already stored unchanged are skipped (importing a file twice is harmless). Rejected
    rows go to a file of the same format, with a 'reason' column, to send back for fixing.
    """
    from curation.labels import import_labels
    from export.store import open_store

    proj, rel, report = import_labels(
        open_store(dest), file, project=project, release=release, correct=correct,
        rejected=rejected,
    )  # fmt: skip
    for line, problem in report.errors:
        err_console.print(escape(f"{file.name} line {line}: {problem}"), highlight=False)
    console.print(
        f"{proj}/{rel}: {report.stored} label rows stored, {report.unlabeled} rows not "
        f"labeled, {len(report.errors)} rows rejected, {report.already_stored} rows already "
        f"stored (skipped), {report.corrected} rows corrected",
        highlight=False,
    )
    if report.rejected_file is not None:
        console.print(
            escape(f"rejected rows, with their reason, to send back: {report.rejected_file}"),
            highlight=False,
            soft_wrap=True,  # a path is copied from here: never broken across lines
        )
    if report.errors:
        raise typer.Exit(1)


@labels_app.command("hooks")
def labels_hooks(
    project: ProjectOpt,
    release: ReleaseOpt,
    hook: Annotated[
        list[str] | None, typer.Option(help="Hook to run (repeat; default all).")
    ] = None,
    dest: DestOpt = None,
) -> None:
    """Run labeling hooks (entry points ridl.labeling_hooks) and store their valid rows."""
    from curation.hooks import run_hooks
    from export.store import open_store

    reports = run_hooks(open_store(dest), project, release, hook)
    failed = False
    for name, report in reports.items():
        for line, problem in report.errors:
            err_console.print(escape(f"hook {name} row {line}: {problem}"), highlight=False)
        failed |= bool(report.errors)
        console.print(f"hook {name}: {report.stored} rows stored, {len(report.errors)} rejected")
    if failed:
        raise typer.Exit(1)
