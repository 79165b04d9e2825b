"""Helpers for the export tests: a published release in an S3 (or local) store, without Prefect."""

from __future__ import annotations

import uuid
from typing import Any

from export.manifest import build_manifest
from export.release import publish_release
from export.s3 import S3Store, parse_s3_url
from export.store import ObjectStore, open_store
from flows.runplan import prepare_run, recipe_sha256
from flows.work import process_batch


def s3_url(endpoint: str, bucket: str | None = None, prefix: str = "library") -> str:
    bucket = bucket or f"ridl-{uuid.uuid4().hex[:12]}"
    return f"s3://{bucket}/{prefix}?endpoint_url={endpoint}&region=us-east-1"


def make_bucket(url: str) -> ObjectStore:
    """Create the store's bucket, then open it the way ridl does."""
    S3Store(parse_s3_url(url)).ensure_bucket()
    return open_store(url)


def run_and_publish(
    project: str, release: str, source: str, store_url: str, reindex: bool = False
) -> dict[str, Any]:
    """What the flow does, in-process: work every study, write the manifest, publish."""
    plan = prepare_run(project, release, source, store_url, reindex=reindex)
    process_batch(plan.ctx, plan.studies)
    store = open_store(store_url)
    build_manifest(store, plan.ctx.prefix, len(plan.studies), project, release)
    return publish_release(store, project, release, recipe_sha256=recipe_sha256(plan.ctx.recipe))
