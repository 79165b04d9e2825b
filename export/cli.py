"""Commands for releases, access grants and the researcher's pull (registered in flows.cli;
``release publish``, which needs the recipe's digest, is defined there).

Commands raise a ``RidlError`` for a failure a person can fix; the root group in ``flows.cli``
prints it as one line and exits 2 (commands catch no ``RidlError`` themselves).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ridl.errors import ReleaseError

release_app = typer.Typer(
    help="Published releases: sign, publish, show.", no_args_is_help=True, rich_markup_mode=None
)
access_app = typer.Typer(
    help="Access grants for approved researchers.", no_args_is_help=True, rich_markup_mode=None
)

console = Console()
err_console = Console(stderr=True)

DestOption = Annotated[
    str | None,
    typer.Option(help="Object store: file:PATH or s3://BUCKET/PREFIX?endpoint_url=...&region=..."),
]


def kv_table(title: str, values: dict[str, Any]) -> Table:
    """A two-column rich table of ``values`` (names and their values as text)."""
    table = Table(title=title, show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # a fingerprint is never cut short
    for key, value in values.items():
        table.add_row(key, str(value))
    return table


@release_app.command("show")
def release_show(
    project: Annotated[str, typer.Option(help="REB project id.")],
    release: Annotated[str, typer.Option(help="Release name.")],
    dest: DestOption = None,
) -> None:
    """Print a published release's manifest header (without the object list)."""
    from export.release import show_release

    header = show_release(dest, project, release)
    json.dump(header, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def release_states(project: str) -> list[dict[str, Any]]:
    """The project's releases on premises, sorted by name, each a dict: ``release``, ``state``
    (running: a live run holds its lock; published: its on-premises marker, or its signed
    manifest in its store; frozen: selected, not yet published),
    ``studies_selected`` (rows of the frozen selection), ``subjects`` and ``withdrawn`` (of
    its subjects, how many withdrew since), ``store``, ``published_at`` (ISO 8601 or None).

    Raises:
        ConfigError: the project's secret is missing or wrong.
        ProjectNotFound: no such project.
    """
    from ridl.catalog import study_refs
    from ridl.projects import load_project
    from ridl.pseudonyms import Pseudonymizer, SubjectKey
    from ridl.releases import (
        frozen_releases,
        load_frozen,
        load_withdrawn,
        lock_holder,
        published_releases,
    )
    from ridl.secrets import load_secret

    load_project(project)
    published = published_releases(project)
    withdrawn = load_withdrawn(project)
    keys = Pseudonymizer(load_secret(project))
    rows = []
    for release in sorted(set(frozen_releases(project)) | set(published)):
        frozen = load_frozen(project, release)
        subjects: set[str] = set()
        record = None
        if frozen is not None:
            record, selection = frozen
            subjects = {
                keys.research_id(SubjectKey(s.health_number, s.issuer, s.patient_id))
                for s in study_refs(selection)
            }
        marker = published.get(release)
        if marker is None and record is not None and record.destination:
            marker = _published_in_store(record.destination, project, release)
        if marker is not None:
            state = "published"
        elif lock_holder(project, release) is not None:
            state = "running"
        else:
            state = "frozen"
        rows.append(
            {
                "release": release,
                "state": state,
                "studies_selected": 0 if frozen is None else len(frozen[1]),
                "subjects": len(subjects),
                "withdrawn": len(subjects & withdrawn),
                "store": (marker or {}).get("store") or (record.destination if record else ""),
                "published_at": (marker or {}).get("published_at"),
            }
        )
    return rows


def _published_in_store(store_url: str, project: str, release: str) -> dict[str, Any] | None:
    """The release's signed manifest header when it is published in its store (``ridl release
    publish`` writes no on-premises marker), else None; a store out of reach counts as not."""
    from export.release import read_published
    from export.store import open_store

    try:
        manifest = read_published(open_store(store_url), f"{project}/{release}")
    except Exception:  # noqa: BLE001 - a store out of reach: the on-premises state stands
        return None
    if manifest is None:
        return None
    return {"store": store_url, "published_at": manifest.get("published_at")}


@release_app.command("list")
def release_list(
    project: Annotated[str, typer.Option(help="REB project id.")],
    as_json: JsonOption = False,
) -> None:
    """List a project's releases with their state (frozen, running, published) and counts of
    studies, subjects and subjects withdrawn since."""
    rows = release_states(project)
    if as_json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    table = Table("release", "state", "studies", "subjects", "withdrawn", "published", "store")
    for row in rows:
        table.add_row(
            row["release"], row["state"], str(row["studies_selected"]), str(row["subjects"]),
            str(row["withdrawn"]), str(row["published_at"] or ""), str(row["store"]),
        )  # fmt: skip
    console.print(table)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("frozen", "running", "published")}
    console.print(", ".join(f"{n} {state}" for state, n in counts.items()) + " (releases)")


@release_app.command("withdraw")
def release_withdraw(
    project: Annotated[str, typer.Option(help="REB project id.")],
    research_id: Annotated[
        str, typer.Option(help="The subject's research ID (RS-..., any letter case).")
    ],
) -> None:
    """Record that a subject withdrew: the next run leaves them out at selection, and the next
    publish retracts their objects from earlier releases."""
    from ridl.projects import load_project
    from ridl.releases import record_withdrawal

    load_project(project)
    wanted = research_id.strip().upper()
    if wanted not in research_ids_of(project):
        raise ReleaseError(
            f"research ID {wanted} is in no release of project '{project}'; check it against "
            "the release's manifest (ridl release show / manifest.csv)"
        )
    added = record_withdrawal(project, wanted)
    state = "recorded" if added else "was already recorded"
    console.print(f"withdrawal of {wanted} {state}; it applies at the next run and publish")


def research_ids_of(project: str) -> set[str]:
    """Every research ID of the project's releases: from each frozen selection on premises
    (derived with the project's secret) and from each published manifest ridl can read.

    Raises:
        ConfigError: the project's secret is missing or wrong.
    """
    from export.release import read_published
    from export.store import open_store
    from ridl.catalog import study_refs
    from ridl.pseudonyms import Pseudonymizer, SubjectKey
    from ridl.releases import frozen_releases, load_frozen, published_releases
    from ridl.secrets import load_secret

    found: set[str] = set()
    keys: Pseudonymizer | None = None
    for release in frozen_releases(project):
        frozen = load_frozen(project, release)
        if frozen is None:
            continue
        keys = keys or Pseudonymizer(load_secret(project))
        for study in study_refs(frozen[1]):
            found.add(
                keys.research_id(SubjectKey(study.health_number, study.issuer, study.patient_id))
            )
    for release, marker in published_releases(project).items():
        try:
            manifest = read_published(open_store(marker.get("store")), f"{project}/{release}")
        except Exception:  # noqa: BLE001 - a store out of reach: the selections still count
            continue
        for obj in (manifest or {}).get("objects", []):
            found.add(str(obj["research_id"]))
    return found


@access_app.command("grant")
def access_grant(
    project: Annotated[str, typer.Option(help="REB project id.")],
    release: Annotated[str, typer.Option(help="Published release name.")],
    researcher: Annotated[str, typer.Option(help="Approved recipient, as in the project.")],
    days: Annotated[int, typer.Option(help="How long the grant lasts (presigned: 7 at most).")],
    presign: Annotated[
        bool, typer.Option(help="Write a presigned manifest instead of an IAM policy.")
    ] = False,
    dest: DestOption = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the document here (default: standard output).")
    ] = None,
    principal: Annotated[
        str | None,
        typer.Option(
            help="The researcher's IAM ARN: write a bucket policy for that principal instead of "
            "an identity policy (SeaweedFS enforces the expiry only in bucket policies)."
        ),
    ] = None,
    partition: Annotated[
        list[int] | None,
        typer.Option(
            help="Presign only this partition of the manifest (bucket number); repeat for "
            "more. A large release is presigned by partition or cohort, never whole."
        ),
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(
            help="Presign only the cohort this query selects (as for `ridl pull --where`)."
        ),
    ] = None,
) -> None:
    """Grant one approved researcher read access to one release (IAM policy or presigned)."""
    from export.access import grant_access

    document = grant_access(
        dest,
        project,
        release,
        researcher,
        days,
        presign=presign,
        principal=principal,
        partitions=partition,
        where=where,
    )
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        if presign:
            out.chmod(0o600)  # the URLs are bearer tokens until they expire
        what = "presigned manifest" if presign else "bucket policy" if principal else "IAM policy"
        console.print(f"{what} for {researcher} written to {out}")


@access_app.command("list")
def access_list(
    project: Annotated[str, typer.Option(help="REB project id.")],
    as_json: JsonOption = False,
) -> None:
    """List the access grants recorded for a project (researcher, release, kind, what each
    covers, expiry)."""
    from export.access import list_grants
    from ridl.projects import load_project

    load_project(project)
    grants = list_grants(project)
    if as_json:
        json.dump(grants, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    table = Table("release", "researcher", "kind", "covers", "granted", "expires", "active")
    for g in grants:
        table.add_row(
            g["release"], g["researcher"], g["kind"], _covers(g.get("scope")), g["granted_at"],
            g["expires_at"], "yes" if g["active"] else "expired",
        )  # fmt: skip
    console.print(table)


def _covers(scope: dict[str, Any] | None) -> str:
    """A grant's scope in a few words: the whole release, or a cohort's partitions, query
    and object count (grants recorded before scopes were, say so)."""
    if not scope:
        return "(not recorded)"
    if scope.get("release") == "whole":
        return "whole release"
    parts = []
    if scope.get("partitions") is not None:
        parts.append("partitions " + ",".join(str(b) for b in scope["partitions"]))
    if scope.get("where"):
        parts.append(f"where {scope['where']}")
    parts.append(f"{scope.get('objects', 0):,} objects")
    return "; ".join(parts)


def pull_command(
    manifest: Annotated[Path, typer.Argument(help="Presigned manifest or manifest.json.")],
    dest: Annotated[Path, typer.Option(help="Folder to put the release in.")],
    layout: Annotated[
        str,
        typer.Option(
            help="Folder layout: release, dicom, flat, or a template such as "
            "'{research_id}/{study_uid}/{series_uid}/{sop_uid}.dcm'."
        ),
    ] = "release",
    workers: Annotated[int, typer.Option(help="Parallel downloads.")] = 8,
    public_key: Annotated[
        Path | None, typer.Option(help="The research office's public key (PEM).")
    ] = None,
    signature: Annotated[
        Path | None, typer.Option(help="Signature file (default: MANIFEST.sig).")
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            help="Your S3 endpoint, when reading with your own AWS credentials (default: "
            "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else the one in the manifest). "
            "Credentials, profile and region come from the usual AWS environment."
        ),
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(
            help="Pull a cohort: a query on the manifest's columns, e.g. \"modality = 'CT' AND "
            'study_year >= 2018" (= != < <= > >=, IN, BETWEEN, IS NULL, AND, OR, NOT; '
            "study_year is the year of the de-identified study date)."
        ),
    ] = None,
    subjects: Annotated[
        Path | None,
        typer.Option(
            help="Pull the subjects listed in this CSV file (a research_id column, else the "
            "first column); only their partitions are fetched."
        ),
    ] = None,
    partition: Annotated[
        list[int] | None,
        typer.Option(help="Pull only this partition (bucket number); repeat for more."),
    ] = None,
    delete_retracted: Annotated[
        bool,
        typer.Option(
            help="Delete the files in DEST that the research office retracted since you pulled "
            "them (a subject withdrew, an instance was rejected), and the folders they leave "
            "empty. Without it they are listed, not touched."
        ),
    ] = False,
) -> None:
    """Fetch a release (or a cohort of it) into DEST: signature checked, every file verified,
    resumable.

    The signature is checked with --public-key, else with the key shipped with the manifest
    (release-signing.pub beside manifest.json, or inside a presigned manifest): its fingerprint
    is printed first; compare it with the release notes. DEST holds one release: pulling another
    release into it is refused."""
    from export.partitions import read_subjects
    from export.pull import pull

    try:
        key = public_key.read_text() if public_key else None
        cohort = read_subjects(subjects) if subjects is not None else None
        report = pull(
            manifest,
            dest,
            layout=layout,
            workers=workers,
            public_key=key,
            signature_path=signature,
            console=err_console,
            endpoint_url=endpoint_url,
            where=where,
            subjects=cohort,
            partitions=partition,
            delete_retracted=delete_retracted,
        )
    except OSError as exc:
        raise ReleaseError(f"{type(exc).__name__}: {exc}") from exc
    rate = report.bytes_fetched / report.seconds / 1e6 if report.seconds else 0.0
    cohort_counts: dict[str, object] = {}
    if report.selected is not None:
        cohort_counts["objects the cohort selects"] = report.selected
    if report.subjects_listed:
        cohort_counts["research IDs in --subjects not in the release"] = (
            f"{report.subjects_missing} of {report.subjects_listed}"
        )
    console.print(
        kv_table(
            f"pull {report.project}/{report.release}",
            {
                "signing key": report.fingerprint,
                **cohort_counts,
                ("files in the cohort" if report.selected is not None else "files in release"): (
                    report.files
                ),
                "fetched and verified": report.fetched,
                "already there, verified": report.skipped_verified,
                "retracted since publication (not fetched)": report.retracted,
                "bytes fetched": f"{report.bytes_fetched:,}",
                "retried after a checksum mismatch": report.retried,
                "failed": len(report.failed),
                "time": f"{report.seconds:.1f} s ({rate:.1f} MB/s)",
                "finished": dt.datetime.now().isoformat(timespec="seconds"),
            },
        )
    )
    print_retracted_on_disk(report.retracted_on_disk, report.retracted_deleted, dest)
    if report.subjects_missing:
        examples = ", ".join(report.subjects_missing_examples)
        more = ", ..." if report.subjects_missing > len(report.subjects_missing_examples) else ""
        err_console.print(
            f"notice: {report.subjects_missing} of the {report.subjects_listed} research IDs in "
            f"--subjects are not in this release ({examples}{more}); check the file",
            highlight=False,
            soft_wrap=True,
        )
    unread = sum(1 for reason in report.failed.values() if reason.startswith("partition "))
    if report.selected == 0 and not unread:
        err_console.print(
            "notice: the query selected no object (--where, --subjects, --partition): nothing "
            "of the cohort was pulled; check the query",
            highlight=False,
            soft_wrap=True,
        )
    elif report.selected is not None and unread:
        err_console.print(
            f"notice: {unread} partition(s) could not be read (below): the cohort's count "
            "covers only the partitions read, and their objects were not pulled",
            highlight=False,
            soft_wrap=True,
        )
    for reason in sorted(report.failed.values()):
        err_console.print(f"[red]failed:[/] {reason}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


def print_retracted_on_disk(on_disk: dict[str, str], deleted: list[str], dest: Path) -> None:
    """Name each retracted file an earlier pull left in ``dest`` (paths relative to it, research
    IDs and UIDs only) with its reason, and say whether it was deleted or how to delete it."""
    if not on_disk:
        return
    kept = sorted(set(on_disk) - set(deleted))
    if deleted:
        console.print(
            f"deleted {len(deleted)} files retracted since publication (and the folders they "
            f"left empty) from {dest}:",
            highlight=False,
        )
        for path in sorted(deleted):
            console.print(f"  {path}  ({on_disk[path]})", highlight=False, soft_wrap=True)
    if kept:
        console.print(
            f"{len(kept)} files in {dest} were retracted since publication (a subject withdrew "
            "or an instance was rejected); stop using them and delete them, or run the same "
            "command with --delete-retracted:",
            highlight=False,
        )
        for path in kept:
            console.print(f"  {path}  ({on_disk[path]})", highlight=False, soft_wrap=True)
