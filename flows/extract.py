"""The extraction run as Prefect flows: select, then per study retrieve, de-identify, curate,
upload; then publish the release.

Stages, each a plain function or task below so it reads (and merges) one step at a time:

1. ``select_stage``   check the request, index, select and freeze the studies (once per release);
2. ``clean_stage``    remove what a killed run left: half-written objects, working folders;
3. ``plan_slices``    split a very large selection into several child flow runs (one per year of
                      study dates, chunked further if a year is still too big);
4. ``extract_slice``  a child flow: batches of studies as Prefect tasks on the run's task runner
                      (every local core, or a Dask cluster); a task returns counts, never bytes;
5. ``publish``        manifest, summary, run log and the release report; then the release
                      gate (every study verified in the stream, every object listed, a random
                      sample read back and verified again: ``flows.gate``), and only if it
                      passes, signing and publishing; Prefect artifacts and the audit log.

Prefect costs about 10 ms and 45 KB of flow memory per task run, so a task handles hundreds of
studies, and a flow run holds at most ``max_batches_per_flow`` of them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import time
from collections import Counter
from typing import Any, TypedDict

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from export.local import LocalStore
from export.manifest import ReleaseSummary, build_manifest
from export.release import publish_release, read_published
from export.store import open_store
from flows.gate import gate_release
from flows.params import DEFAULT_BATCH_SIZE, ExtractParams, validate_params
from flows.prefect_console import quiet_user_errors
from flows.runners import (
    api_shared_with_workers,
    make_task_runner,
    require_server_for_cluster,
    run_batch,
)
from flows.runplan import (
    RunPlan,
    already_published_message,
    is_published,
    nothing_to_publish,
    prepare_run,
    recipe_sha256,
    run_fields,
)
from flows.stopping import deferred, stop_on_termination
from flows.transient import retry_if_transient
from flows.work import BatchTally, RunContext
from ridl import audit, settings
from ridl.errors import EmptyRelease, ReleaseError
from ridl.releases import release_lock
from ridl.sources.protect import (
    DEFAULT_MAX_ASSOCIATIONS,
    DEFAULT_RATE_LIMIT,
    DEFAULT_RETRIES,
)
from ridl.studies import StudyRef

# A user error reaches the console once, as ridl's own error line (flows.prefect_console).
quiet_user_errors()

__all__ = ["DEFAULT_BATCH_SIZE", "extract_run", "extract_slice", "plan_slices", "batches"]


# --- tasks --------------------------------------------------------------------------------------


@task(
    name="process-studies",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    tags=["ridl-batch"],
)
def process_studies(ctx: RunContext, studies: list[StudyRef], retrieval_limit: int) -> BatchTally:
    """De-identify and upload one batch of studies; returns counts and part locations only."""
    return run_batch(ctx, studies, retrieval_limit)


@task(name="publish-manifest", cache_policy=NO_CACHE, persist_result=False)
def publish_manifest(ctx: RunContext, selected: int) -> ReleaseSummary:
    """Build the release's manifest tables and summary from its parts (``selected`` studies)."""
    store = open_store(ctx.store_url)
    return build_manifest(store, ctx.prefix, selected, ctx.project, ctx.release)


@task(name="verify-release", cache_policy=NO_CACHE, persist_result=False)
def verify_release_task(ctx: RunContext, sample: int | None = None) -> dict[str, Any]:
    """The PHI gate: every study verified in the stream, a sample read back and verified again;
    raises VerificationFailed (release left unpublished, what was found removed) otherwise."""
    try:
        report = gate_release(ctx.project, ctx.release, ctx.store_url, sample=sample)
    except Exception as exc:
        audit.record(
            "run.ended", project=ctx.project, release=ctx.release, status=type(exc).__name__
        )
        raise
    return {
        "passed": report.passed,
        "studies": report.parts_checked,
        "objects": report.objects_listed,
        "audited": report.objects_checked,
        "without_terms": report.studies_without_terms,
        "seconds": round(report.seconds_dictionary + report.seconds_search, 3),
        "ocr": report.ocr,
    }


@task(name="release-report", cache_policy=NO_CACHE, persist_result=False)
def publish_report(ctx: RunContext, studies: list[StudyRef]) -> str:
    """The HTML report; original study years are mapped here, on premises, then only counted."""
    from export.report import write_report
    from flows.work import worker_for

    worker = worker_for(ctx)
    years = {worker.study_key(s): s.study_date[:4] or "unknown" for s in studies}
    return write_report(open_store(ctx.store_url), ctx.prefix, years)


# --- plain stage functions ----------------------------------------------------------------------


class Slice(BaseModel):
    """One child flow run's share of the selection: a year of study dates, or a chunk of it."""

    label: str
    year: str | None = None
    start: int = 0
    stop: int | None = None

    def pick(self, studies: list[StudyRef]) -> list[StudyRef]:
        """This slice's studies out of the whole selection (same order)."""
        chosen = studies if self.year is None else [s for s in studies if _year(s) == self.year]
        return chosen[self.start : self.stop]


def _year(study: StudyRef) -> str:
    return study.study_date[:4] or "unknown"


def batches(items: list[StudyRef], size: int) -> list[list[StudyRef]]:
    """``items`` cut into lists of at most ``size`` studies, in order.

    Raises:
        ValueError: ``size`` is below 1 (parameters are validated before, so a bug).
    """
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    return [items[i : i + size] for i in range(0, len(items), size)]


def plan_slices(studies: list[StudyRef], batch_size: int, max_batches_per_flow: int) -> list[Slice]:
    """One slice if the run fits one flow; else one per year, chunked to fit."""
    per_flow = batch_size * max_batches_per_flow
    if len(studies) <= per_flow:
        return [Slice(label="all")]
    by_year = Counter(_year(s) for s in studies)
    slices: list[Slice] = []
    for year in sorted(by_year):
        n = by_year[year]
        chunks = range(0, n, per_flow)
        for i, start in enumerate(chunks):
            label = year if len(chunks) == 1 else f"{year}-{i + 1}"
            slices.append(Slice(label=label, year=year, start=start, stop=start + per_flow))
    return slices


def select_stage(params: ExtractParams) -> RunPlan:
    """Check the request against the REB approval, then select and freeze (or resume)."""
    return prepare_run(
        params.project,
        params.release,
        params.source,
        params.destination or "",
        params.date_from,
        params.date_to,
        params.modalities,
        params.sites,
        reindex=params.reindex,
        limits=params.archive_limits(),
    )


def clean_stage(ctx: RunContext) -> dict[str, int]:
    """Remove what a killed run left behind on this machine (partial writes, work folders, the
    retrieval slots of runs whose process is gone); objects themselves are atomic."""
    removed = {"partial_objects": 0, "work_folders": 0}
    store = open_store(ctx.store_url)
    if isinstance(store, LocalStore):
        removed["partial_objects"] = store.clean_partial_writes(ctx.prefix)
    work = settings.work_dir() / ctx.project / ctx.release
    if work.exists():
        removed["work_folders"] = sum(1 for _ in work.iterdir())
        shutil.rmtree(work, ignore_errors=True)
    # The retrieval slots of runs whose process is gone (flows.runners.make_task_runner).
    for slots in (settings.work_dir() / "locks").glob("retrieval-*"):
        pid = slots.name.removeprefix("retrieval-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(slots, ignore_errors=True)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def withdraw_stage(ctx: RunContext) -> int:
    """Leave out the subjects who withdrew while the run went on, before the end stages count.

    Selection left out everyone who withdrew before the release was frozen; a withdrawal
    recorded since (:func:`ridl.releases.withdrawn_since_frozen`) has found the subject's
    studies worked already. Each such study part is rewritten first without their objects,
    counted under ``withdrawn`` in its ``excluded`` (instances), then the objects are deleted,
    so manifest, summary, report and the gate all see the release as it will be published.
    A kill in between leaves objects in no part, which the gate removes. Returns the number of
    instances left out. No pass over the parts when nobody withdrew since the freeze.
    """
    from export.manifest import is_source_part, parse_part, write_part
    from ridl.reasons import Reason
    from ridl.releases import withdrawn_since_frozen

    withdrawn = withdrawn_since_frozen(ctx.project, ctx.release)
    if not withdrawn:
        return 0
    store = open_store(ctx.store_url)
    removed = 0
    for info in store.list(f"{ctx.prefix}/parts/"):
        if not info.key.endswith(".json") or is_source_part(info.key):
            continue
        part = parse_part(store.get_bytes(info.key))
        leaving = [o for o in part["objects"] if o["research_id"] in withdrawn]
        if not leaving:
            continue
        part["objects"] = [o for o in part["objects"] if o["research_id"] not in withdrawn]
        excluded = dict(part["excluded"])
        excluded[Reason.WITHDRAWN] = excluded.get(Reason.WITHDRAWN, 0) + len(leaving)
        part["excluded"] = excluded
        write_part(store, info.key, part)
        for row in leaving:
            store.delete(row["key"])
        removed += len(leaving)
    return removed


class TimelineEntry(TypedDict):
    """One batch in the run log: when it finished (POSIX time, seconds), studies it worked
    itself, ``instances`` it met in them, and studies it found done by an earlier run."""

    finished_at: float
    studies: int
    instances: int
    skipped: int


class SliceTotals(TypedDict):
    """What a child flow run returns (:meth:`Totals.as_dict`): its batches' tallies added up.

    Counts as in :class:`~flows.work.BatchTally`; ``work_seconds`` summed over batches (seconds),
    ``peak_rss_mib`` the highest of any worker (MiB), ``timeline`` one entry per batch,
    ``failed`` studies the archive could not deliver, by reason code.
    """

    studies: int
    skipped: int
    exported: int
    instances: int
    bytes: int
    work_seconds: float
    peak_rss_mib: float
    excluded: dict[str, int]
    quarantined: dict[str, int]
    timeline: list[TimelineEntry]
    failed: dict[str, int]


class RunSummary(ReleaseSummary):
    """What :func:`extract_run` returns: the release's summary (``summary.json``) and how this
    run went: studies an earlier run had done, child flow runs, what the clean stage removed,
    the store keys of the run log and the report, the PHI gate's verdict and the publication.
    """

    studies_skipped_as_done: int
    flow_runs: int
    cleaned: dict[str, int]
    run_log: str
    report: str
    verification: dict[str, Any]
    publication: dict[str, Any]


class Totals:
    """Counts of a run, added up from batch results as they arrive (never kept per batch)."""

    def __init__(self) -> None:
        self.studies = 0
        self.skipped = 0
        self.exported = 0
        self.instances = 0
        self.bytes = 0
        self.work_seconds = 0.0
        self.peak_rss_mib = 0.0
        self.excluded: Counter[str] = Counter()
        self.quarantined: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.timeline: list[TimelineEntry] = []

    def _count(self, counts: BatchTally | SliceTotals) -> None:
        self.studies += counts["studies"]
        self.skipped += counts["skipped"]
        self.exported += counts["exported"]
        self.instances += counts["instances"]
        self.bytes += counts["bytes"]
        self.work_seconds += counts.get("work_seconds", 0.0)
        self.peak_rss_mib = max(self.peak_rss_mib, counts.get("peak_rss_mib", 0.0))
        self.excluded.update(counts["excluded"])
        self.quarantined.update(counts["quarantined"])
        self.failed.update(counts.get("failed", {}))

    def add(self, tally: BatchTally) -> None:
        """Add one batch task's result; a batch timed by ``run_batch`` joins the timeline."""
        self._count(tally)
        if "finished_at" in tally:
            self.timeline.append(
                TimelineEntry(
                    finished_at=tally["finished_at"],
                    studies=tally["studies"] - tally["skipped"],
                    instances=tally["fresh_instances"],
                    skipped=tally["skipped"],
                )
            )

    def add_slice(self, totals: SliceTotals) -> None:
        """Add a child flow run's totals, its batches' timeline included."""
        self._count(totals)
        self.timeline.extend(totals["timeline"])

    def as_dict(self) -> SliceTotals:
        """The totals as a child flow run returns them."""
        return SliceTotals(
            studies=self.studies,
            skipped=self.skipped,
            exported=self.exported,
            instances=self.instances,
            bytes=self.bytes,
            work_seconds=self.work_seconds,
            peak_rss_mib=self.peak_rss_mib,
            excluded=dict(self.excluded),
            quarantined=dict(self.quarantined),
            timeline=self.timeline,
            failed=dict(self.failed),
        )


def refuse_retry_when_published(ctx: RunContext, retry_failed: bool) -> None:
    """A published release never changes: retrying its failed studies would add objects to it.

    Raises:
        ReleaseError: ``retry_failed`` is asked for a release that is already published (before
            any study is touched).
    """
    if retry_failed and read_published(open_store(ctx.store_url), ctx.prefix) is not None:
        raise ReleaseError(
            f"release {ctx.prefix} is already published and cannot be changed, so its failed "
            "studies cannot be retried into it; select them in a new release (change: --release)"
        )


def write_run_log(ctx: RunContext, started: float, totals: Totals, slices: int) -> str:
    """Keep this run's throughput with the release (counts and times only) for the report."""
    store = open_store(ctx.store_url)
    stamp = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"{ctx.prefix}/runs/{stamp}.json"
    record = {
        "started_at": started,
        "finished_at": time.time(),
        "slices": slices,
        "studies": totals.studies,
        "studies_skipped_as_done": totals.skipped,
        "instances": totals.instances,
        "work_seconds": totals.work_seconds,
        "peak_rss_mib": totals.peak_rss_mib,
        "batches": sorted(totals.timeline, key=lambda r: r["finished_at"]),
    }
    store.put_bytes(key, json.dumps(record, sort_keys=True).encode())
    return key


# --- flows --------------------------------------------------------------------------------------


@flow(name="ridl-extract-slice", log_prints=False, persist_result=False)
def extract_slice(params: ExtractParams, part: Slice) -> SliceTotals:
    """A child flow run: one slice of the frozen selection, in batched tasks."""
    logger = get_run_logger()
    plan = select_stage(params)  # the frozen selection: same studies in every child
    studies = part.pick(plan.studies)
    ctx = dataclasses.replace(plan.ctx, retry_failed=params.retry_failed)
    submit = process_studies.with_options(retries=params.task_retries)
    totals = Totals()
    # A SIGTERM or Ctrl-C stops here at once, workers killed, instead of waiting for every
    # batch in flight (flows.stopping).
    with stop_on_termination():
        futures = [
            submit.submit(ctx, batch, params.retrieval_limit)
            for batch in batches(studies, params.batch_size)
        ]
        while futures:  # add up and let go of each result: no per-batch results are kept
            totals.add(futures.pop(0).result())
    logger.info("slice %s: %d studies, %d instances", part.label, totals.studies, totals.instances)
    return totals.as_dict()


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
    workers: int | None = None,
    cluster: str | None = None,
    retrieval_limit: int = 4,
    max_batches_per_flow: int = 2000,
    task_retries: int = 3,
    reindex: bool = False,
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS,
    rate_limit: float = DEFAULT_RATE_LIMIT,
    allowed_hours: str | None = None,
    retries: int = DEFAULT_RETRIES,
    audit_sample: int | None = None,
    retry_failed: bool = False,
    allow_empty: bool = False,
) -> RunSummary:
    """Run one REB-approved extraction into a release; safe to rerun (it resumes).

    A run holds the release's lock (``ridl.releases.release_lock``) from selection to publishing.

    Raises:
        ReleaseError: another process runs the release, the release is already published (a
            published release never changes), or it was frozen with other parameters.
        EmptyRelease: nothing in the source matches the request, or the release holds no
            object (every study failed, was held or was excluded) and ``allow_empty`` is not
            set: it is left unpublished, to rerun with ``retry_failed`` or ``allow_empty``.

    ``max_associations`` to ``retries`` protect a network DIR (see ridl.sources.protect);
    ``audit_sample`` is how many objects the gate reads back (None: flows.gate.sample_size);
    ``retry_failed`` retrieves again the studies an earlier run recorded as failed (the
    archive could not deliver them); without it their failed-study parts stand.
    """
    logger = get_run_logger()
    started = time.time()
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
        workers=workers,
        cluster=cluster,
        retrieval_limit=retrieval_limit,
        max_batches_per_flow=max_batches_per_flow,
        task_retries=task_retries,
        reindex=reindex,
        max_associations=max_associations,
        rate_limit=rate_limit,
        allowed_hours=allowed_hours,
        retries=retries,
        audit_sample=audit_sample,
        retry_failed=retry_failed,
        allow_empty=allow_empty,
    )
    address = params.resolved_cluster()
    require_server_for_cluster(address)
    # One run of a release at a time (the lock, RIDL_HOME/releases/<project>/<release>/run.lock),
    # and a published release is never worked again: a rerun changes nothing.
    with release_lock(project, release):
        if is_published(project, release, open_store(destination)):
            raise ReleaseError(already_published_message(project, release, destination or ""))
        plan = select_stage(params)
        params = params.model_copy(update={"destination": plan.ctx.store_url, "reindex": False})
        refuse_retry_when_published(plan.ctx, params.retry_failed)
        audit.record("run.started", **run_fields(plan.ctx, batch_size, len(plan.studies)))
        cleaned = clean_stage(plan.ctx)
        logger.info(
            "release %s/%s: %d studies selected (%s) on %s",
            project,
            release,
            len(plan.studies),
            "resumed" if plan.resumed else "new",
            f"Dask cluster {address}"
            if address
            else f"{params.resolved_workers()} local processes",
        )
        slices = plan_slices(plan.studies, params.batch_size, params.max_batches_per_flow)
        totals = Totals()
        with api_shared_with_workers():
            for part in slices:
                runner = make_task_runner(
                    params.resolved_workers(), params.retrieval_limit, address
                )
                child = extract_slice.with_options(
                    name=f"ridl-extract-slice-{part.label}", task_runner=runner
                )
                totals.add_slice(child(params, part))
        withdraw_stage(plan.ctx)  # withdrawals recorded while the run went on
        manifest = publish_manifest(plan.ctx, len(plan.studies))
        if not manifest["instances_exported"] and not params.allow_empty:
            audit.record("run.ended", project=project, release=release, status="EmptyRelease")
            raise EmptyRelease(nothing_to_publish(project, release, manifest))
        run_log = write_run_log(plan.ctx, started, totals, len(slices))
        report = publish_report(plan.ctx, plan.studies)
        verification = verify_release_task(plan.ctx, params.audit_sample)  # no clean pass: no
        with deferred():  # publishing is never cut short by a stop (flows.stopping)
            publication = publish_release(
                plan.ctx.store_url, project, release, recipe_sha256=recipe_sha256(plan.ctx.recipe)
            )
        summary = RunSummary(
            **manifest,
            studies_skipped_as_done=totals.skipped,
            flow_runs=len(slices),
            cleaned=cleaned,
            run_log=run_log,
            report=report,
            verification=verification,
            publication=publication,
        )
        audit.record("run.ended", **audit.run_end_fields(summary))
        _artifacts(summary, totals)
        return summary


def _artifacts(summary: RunSummary, totals: Totals) -> None:
    """Counts for the research office in the Prefect UI; counts only, no identifiers."""
    rows = [
        {"stage": "selected", "reason": "studies", "count": summary["studies_selected"]},
        {"stage": "done earlier", "reason": "studies", "count": summary["studies_skipped_as_done"]},
        {"stage": "exported", "reason": "studies", "count": summary["studies_exported"]},
        {"stage": "exported", "reason": "instances", "count": summary["instances_exported"]},
    ]
    whole = summary.get("excluded_studies", {})
    for reason, n in summary["excluded"].items():
        studies = min(whole.get(reason, 0), n)
        if studies:
            rows.append({"stage": "excluded (studies)", "reason": reason, "count": studies})
        if n - studies:
            rows.append({"stage": "excluded (instances)", "reason": reason, "count": n - studies})
    for reason, n in summary["quarantined"].items():
        rows.append({"stage": "quarantined (instances)", "reason": reason, "count": n})
    for reason, n in summary.get("studies_failed", {}).items():
        rows.append({"stage": "failed (studies)", "reason": reason, "count": n})
    create_table_artifact(key="ridl-counts", table=rows, description="Counts by stage and reason")
    rate = totals.instances / totals.work_seconds if totals.work_seconds else 0.0
    create_markdown_artifact(
        key="ridl-summary",
        markdown=(
            f"# Release {summary['project']}/{summary['release']}\n\n"
            f"| | |\n|---|---|\n"
            f"| studies selected | {summary['studies_selected']} |\n"
            f"| studies exported | {summary['studies_exported']} |\n"
            f"| studies done by an earlier run | {summary['studies_skipped_as_done']} |\n"
            f"| subjects | {summary['subjects']} |\n"
            f"| instances exported | {summary['instances_exported']} |\n"
            f"| excluded | {sum(summary['excluded'].values())} |\n"
            f"| quarantined | {sum(summary['quarantined'].values())} |\n"
            f"| studies the archive could not deliver "
            f"| {sum(summary.get('studies_failed', {}).values())} |\n"
            f"| child flow runs | {summary['flow_runs']} |\n"
            f"| instances/s per worker | {rate:.1f} |\n"
            f"| peak worker memory | {totals.peak_rss_mib:.0f} MiB |\n\n"
            f"Manifest: `{summary['manifest']}`; report: `{summary['report']}`.\n"
        ),
    )
