"""Where batches run: every local core, or an existing Dask cluster, chosen by one setting.

De-identification is CPU-bound Python, so batches run in processes, never threads: locally in
Prefect's ``ProcessPoolTaskRunner`` (one process per core), or on a Dask cluster through
prefect-dask's ``DaskTaskRunner`` (workers started with one thread each). Either way a worker
reads from the DIR and writes to the object store itself: no shared disk, and a task returns
counts, never image bytes.

Retrieval from the DIR is limited separately from CPU work: ``retrieval_limit`` studies are
fetched at once across the whole run (slots of file locks shared by the local pool, which a killed
process lets go of by dying; a ``distributed.Semaphore`` held by the Dask scheduler), however many
CPU workers there are.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from flows.work import BatchTally, RunContext, process_batch, worker_for
from ridl import settings
from ridl.errors import ConfigError
from ridl.studies import StudyRef

RETRIEVAL_SEMAPHORE = "ridl-dir-retrieval"

# Set in each local pool process by its initializer: the run-wide retrieval slots.
_local_slots: FileSlots | None = None


class FileSlots:
    """A semaphore across the processes of one machine: ``n`` lock files, one held per slot.

    Picklable (it is only a folder and a number), and a process killed while holding a slot
    releases it with its file descriptors, so a SIGKILL never leaks a slot.
    """

    def __init__(self, folder: Path, n: int) -> None:
        self.folder = folder
        self.n = n

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot while the ``with`` block runs; waits (backing off to 0.1 s) for one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        delay = 0.002
        while True:
            for i in range(self.n):
                fd = os.open(self.folder / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    yield
                finally:
                    os.close(fd)  # closing releases the lock
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _init_local_worker(slots: FileSlots) -> None:
    global _local_slots
    _local_slots = slots
    # Ctrl-C at the terminal reaches every process of the run's group: the run itself acts on it
    # (flows.stopping kills its workers and prints the resume line); a worker interrupted in the
    # middle of a batch would only print a KeyboardInterrupt traceback first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_task_runner(workers: int, retrieval_limit: int, cluster: str | None) -> TaskRunner[Any]:
    """The task runner of a run: a Dask cluster when an address is given, else a process pool."""
    if cluster:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=cluster)
    slots = FileSlots(settings.work_dir() / "locks" / f"retrieval-{os.getpid()}", retrieval_limit)
    return PreloadedProcessPool(
        max_workers=workers, initializer=_init_local_worker, initargs=(slots,)
    )


# What a worker needs before its first batch: the flow's module (its tasks are unpickled from
# it), which imports Prefect, pydicom and the per-study work.
WORKER_PRELOAD = ("flows.extract",)


class PreloadedProcessPool(ProcessPoolTaskRunner):
    """Prefect's process pool, each worker forked from a server process that imported the
    flow's modules once (``multiprocessing``'s ``forkserver`` start method with
    :data:`WORKER_PRELOAD`), instead of spawned to import them itself.

    Importing Prefect and the flow's modules takes about 4 s of CPU a process on the development
    VM: with spawn, every worker of every run paid it (a 16-worker run, about a minute of CPU
    before its first batch); here it is paid once a run (once a process, for a process that
    runs several flows: its server is kept and reused). The workers are the same otherwise:
    fresh processes (no thread, lock or connection of the flow's process is inherited: the
    server never starts one), the same initializer, tasks and messages as Prefect's.
    """

    def __enter__(self) -> PreloadedProcessPool:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(WORKER_PRELOAD))
        # Prefect's runner asks ``multiprocessing.get_context("spawn")`` for its pool and queue:
        # it is answered with the forkserver context for the time of its start only.
        from prefect import task_runners

        real = task_runners.multiprocessing
        task_runners.multiprocessing = _ContextOnly(context)  # type: ignore[assignment]
        try:
            super().__enter__()
        finally:
            task_runners.multiprocessing = real
        return self


class _ContextOnly:
    """A stand-in for the ``multiprocessing`` module whose ``get_context`` gives one context."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> Any:
        return self._context

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def configured_api_url() -> str | None:
    """The Prefect server configured for this process, or None under the ephemeral API."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def require_server_for_cluster(address: str | None) -> None:
    """Dask workers report to the Prefect API themselves: refuse a cluster without a server."""
    if address and not (os.environ.get("PREFECT_API_URL") or configured_api_url()):
        raise ConfigError(
            "a Dask cluster needs a Prefect server its workers can reach: set PREFECT_API_URL "
            "(see README, 'Running on a Dask cluster')"
        )


@contextlib.contextmanager
def api_shared_with_workers() -> Iterator[None]:
    """Point local worker processes at this run's Prefect API while the block runs.

    Under the ephemeral API each pool process would otherwise start a temporary server of its
    own (seconds each, and task runs recorded in another database). The URL is set only for the
    block and removed after it, since the ephemeral server stops with the flow.
    """
    if os.environ.get("PREFECT_API_URL") or configured_api_url():
        yield
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    if not url.startswith("http"):
        yield
        return
    os.environ["PREFECT_API_URL"] = url
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


@contextlib.contextmanager
def _hold(acquire: Callable[[], Any], release: Callable[[], Any]) -> Iterator[None]:
    acquire()
    try:
        yield
    finally:
        release()


def _retrieval_slot_factory(
    ctx: RunContext, retrieval_limit: int
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A context manager factory holding one DIR retrieval slot, for this worker's kind."""
    if _local_slots is not None:
        return _local_slots.slot
    try:
        from distributed import Semaphore, get_worker

        get_worker()
    except (ImportError, ValueError):
        return contextlib.nullcontext
    name = f"{RETRIEVAL_SEMAPHORE}-{ctx.project}-{ctx.release}"
    dask_sem = Semaphore(max_leases=retrieval_limit, name=name)
    return lambda: _hold(dask_sem.acquire, dask_sem.release)


def run_batch(ctx: RunContext, studies: list[StudyRef], retrieval_limit: int) -> BatchTally:
    """Process one batch in this worker process; counts, timing and peak memory, no bytes.

    Returns the batch's :class:`~flows.work.BatchTally` with every timing field set.

    Raises:
        TransientError: the DIR or the store failed in a way worth retrying the batch for.
        ConfigError: the run context is wrong (secret, recipe, store or source setting).
    """
    slot = _retrieval_slot_factory(ctx, retrieval_limit)
    started = time.time()
    t0 = time.perf_counter()
    tally = process_batch(ctx, studies, slot).as_dict()
    tally["work_seconds"] = time.perf_counter() - t0
    tally["started_at"] = started
    tally["finished_at"] = time.time()
    tally["parts"] = [worker_for(ctx).part_key(study) for study in studies]
    # ru_maxrss is in KiB on Linux: the high-water mark of this worker process.
    tally["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return tally
