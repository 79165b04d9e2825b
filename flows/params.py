"""Validated parameters of an extraction run.

A deployment can be launched with ``prefect deployment run ... --param batch_size=0`` by anyone
with access to the Prefect UI, so the flow checks its parameters itself (pydantic) and refuses
bad ones before any work, with a message that names the parameter to change.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ridl.errors import ConfigError
from ridl.sources.protect import (
    DEFAULT_MAX_ASSOCIATIONS,
    DEFAULT_RATE_LIMIT,
    DEFAULT_RETRIES,
    ArchiveLimits,
)

DEFAULT_BATCH_SIZE = 200
# Prefect pays ~10 ms and ~45 KB of flow memory per task run and slows past a few thousand task
# runs in one flow: a selection needing more batches than this is split into several flow runs.
DEFAULT_MAX_BATCHES_PER_FLOW = 2000
DEFAULT_RETRIEVAL_LIMIT = 4
DASK_ADDRESS_ENV = "RIDL_DASK_ADDRESS"
_CLUSTER = re.compile(r"^(tcp|tls|ucx|inproc)://[A-Za-z0-9._\-\[\]:]+(:\d+)?(/.*)?$")


class ExtractParams(BaseModel):
    """Everything an extraction run is launched with; checked before any work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(min_length=1)
    release: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9._\-]*$")
    source: str = Field(min_length=1)
    destination: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    modalities: list[str] | None = None
    sites: list[str] | None = None
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=100_000)
    workers: int | None = Field(default=None, ge=1, le=4096)
    cluster: str | None = None
    retrieval_limit: int = Field(default=DEFAULT_RETRIEVAL_LIMIT, ge=1, le=1024)
    max_batches_per_flow: int = Field(default=DEFAULT_MAX_BATCHES_PER_FLOW, ge=1, le=100_000)
    # Retries of a batch task after a transient error (flows/transient.py), with backoff.
    task_retries: int = Field(default=3, ge=0, le=20)
    reindex: bool = False
    # Protection of a network DIR (ridl.sources.protect): checked again by ArchiveLimits.
    max_associations: int = Field(default=DEFAULT_MAX_ASSOCIATIONS, ge=1, le=1024)
    rate_limit: float = Field(default=DEFAULT_RATE_LIMIT, ge=0)
    allowed_hours: str | None = None
    retries: int = Field(default=DEFAULT_RETRIES, ge=0, le=100)
    # Objects the release gate reads back and verifies again (flows.gate.sample_size); None:
    # 1,000 or 0.1 %, whichever is larger, at most 20,000.
    audit_sample: int | None = Field(default=None, ge=0, le=10_000_000)
    # Retrieve again the studies an earlier run of the release recorded as failed.
    retry_failed: bool = False
    # Publish a release that holds no object (nothing matched; every study failed, was held
    # or excluded); without it such a release is left unpublished with one error line.
    allow_empty: bool = False

    @field_validator("cluster")
    @classmethod
    def _cluster_address(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not _CLUSTER.match(value):
            raise ValueError("must be a Dask scheduler address such as tcp://host:8786")
        return value

    @field_validator("modalities")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return [m.upper() for m in value] if value else value

    @model_validator(mode="after")
    def _dates_in_order(self) -> ExtractParams:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from is after date_to (CLI: --from is after --to)")
        return self

    def resolved_cluster(self) -> str | None:
        """The Dask scheduler to use: the parameter, else ``RIDL_DASK_ADDRESS``, else none."""
        return self.cluster or os.environ.get(DASK_ADDRESS_ENV) or None

    def archive_limits(self) -> ArchiveLimits:
        """What the DIR source may ask of the archive: associations, rate, hours, retries."""
        return ArchiveLimits(
            self.max_associations, self.rate_limit, self.allowed_hours, self.retries
        )

    def resolved_workers(self) -> int:
        """Local worker processes: the parameter, else every core."""
        return self.workers or os.cpu_count() or 1


def validate_params(**values: Any) -> ExtractParams:
    """Build :class:`ExtractParams` or raise ConfigError naming each bad parameter."""
    try:
        params = ExtractParams(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "parameters"
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"parameter '{name}': {message}")
        raise ConfigError("; ".join(problems)) from None
    env_cluster = os.environ.get(DASK_ADDRESS_ENV)
    if params.cluster is None and env_cluster and not _CLUSTER.match(env_cluster):
        raise ConfigError(
            f"{DASK_ADDRESS_ENV} must be a Dask scheduler address such as tcp://host:8786"
        )
    return params
