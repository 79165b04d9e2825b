"""The extraction run as a Prefect flow: select, then per study retrieve, de-identify, curate,
upload; then publish the release.

Study work is batched: one Prefect task handles a batch of studies and returns counts, never
image bytes, so the flow stays light at millions of studies (Prefect pays per task run).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flows import configure_prefect_environment

configure_prefect_environment()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from export.manifest import build_manifest  # noqa: E402
from export.release import publish_release  # noqa: E402
from export.store import LocalStore, open_store  # noqa: E402
from export.verify import gate_release  # noqa: E402
from ridl import audit  # noqa: E402
from ridl.runplan import prepare_run  # noqa: E402
from ridl.sources.base import StudyRef  # noqa: E402
from ridl.sources.protect import (  # noqa: E402
    DEFAULT_MAX_ASSOCIATIONS,
    DEFAULT_RATE_LIMIT,
    DEFAULT_RETRIES,
    ArchiveLimits,
)
from ridl.work import BatchCounts, RunContext, process_batch  # noqa: E402

DEFAULT_BATCH_SIZE = 200


@task(name="process-studies", cache_policy=NO_CACHE, persist_result=False, retries=0)
def process_studies(ctx: RunContext, studies: list[StudyRef]) -> dict[str, Any]:
    """De-identify and upload one batch of studies; returns counts only."""
    return process_batch(ctx, studies).as_dict()


@task(name="publish-manifest", cache_policy=NO_CACHE, persist_result=False)
def publish_manifest(ctx: RunContext, selected: int) -> dict[str, Any]:
    store = open_store(ctx.store_url)
    return build_manifest(store, ctx.prefix, selected, ctx.project, ctx.release)


@task(name="verify-release", cache_policy=NO_CACHE, persist_result=False)
def verify_release_task(ctx: RunContext) -> dict[str, Any]:
    """The PHI gate: raises VerificationFailed (release left unpublished) on any hit."""
    try:
        report = gate_release(ctx.project, ctx.release, ctx.store_url)
    except Exception as exc:
        audit.record(
            "run.ended", project=ctx.project, release=ctx.release, status=type(exc).__name__
        )
        raise
    return {"passed": report.passed, "objects": report.objects_checked, "ocr": report.ocr}


def batches(items: list[StudyRef], size: int) -> list[list[StudyRef]]:
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    return [items[i : i + size] for i in range(0, len(items), size)]


@flow(name="ridl-extract", log_prints=False, persist_result=False)
def extract_run(
    project: str,
    release: str,
    source: str,
    destination: str | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    modalities: list[str] | None = None,
    sites: list[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reindex: bool = False,
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS,
    rate_limit: float = DEFAULT_RATE_LIMIT,
    allowed_hours: str | None = None,
    retries: int = DEFAULT_RETRIES,
) -> dict[str, Any]:
    """Run one REB-approved extraction into a release; safe to rerun (it resumes).

    The last four parameters protect a network DIR (see ridl.sources.protect).
    """
    logger = get_run_logger()
    limits = ArchiveLimits(max_associations, rate_limit, allowed_hours, retries)
    plan = prepare_run(
        project,
        release,
        source,
        destination or "",
        date_from,
        date_to,
        modalities,
        sites,
        reindex=reindex,
        limits=limits,
    )
    audit.record("run.started", **audit.run_fields(plan.ctx, batch_size, len(plan.studies)))
    store = open_store(plan.ctx.store_url)
    if isinstance(store, LocalStore):
        store.clean_partial_writes(plan.ctx.prefix)
    logger.info(
        "release %s/%s: %d studies selected (%s)",
        project,
        release,
        len(plan.studies),
        "resumed" if plan.resumed else "new",
    )
    futures = [process_studies.submit(plan.ctx, b) for b in batches(plan.studies, batch_size)]
    totals = BatchCounts()
    for future in futures:
        counts = future.result()
        totals.studies += counts["studies"]
        totals.skipped += counts["skipped"]
        totals.exported += counts["exported"]
        totals.bytes += counts["bytes"]
        totals.excluded.update(counts["excluded"])
        totals.quarantined.update(counts["quarantined"])
    summary = publish_manifest(plan.ctx, len(plan.studies))
    summary["verification"] = verify_release_task(plan.ctx)  # no publishing without a clean pass
    summary["publication"] = publish_release(plan.ctx.store_url, project, release)
    summary["studies_skipped_as_done"] = totals.skipped
    audit.record("run.ended", **audit.run_end_fields(summary))
    _artifacts(summary)
    return summary


def _artifacts(summary: dict[str, Any]) -> None:
    """Counts for the research office in the Prefect UI; research IDs and counts only."""
    rows = [{"stage": "selected", "reason": "", "count": summary["studies_selected"]}]
    rows.append({"stage": "exported", "reason": "", "count": summary["instances_exported"]})
    for reason, n in summary["excluded"].items():
        rows.append({"stage": "excluded", "reason": reason, "count": n})
    for reason, n in summary["quarantined"].items():
        rows.append({"stage": "quarantined", "reason": reason, "count": n})
    create_table_artifact(key="ridl-counts", table=rows, description="Counts by stage and reason")
    create_markdown_artifact(
        key="ridl-summary",
        markdown=(
            f"# Release {summary['project']}/{summary['release']}\n\n"
            f"- studies selected: {summary['studies_selected']}\n"
            f"- instances exported: {summary['instances_exported']}\n"
            f"- subjects: {summary['subjects']}\n"
            f"- manifest: `{summary['manifest']}`\n"
        ),
    )
