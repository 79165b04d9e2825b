"""A progress bar for a run, fed by what the run has already written.

It watches the frozen selection (how many studies and instances) and the manifest parts in the
object store (which studies are done), so it works whatever runs the studies: local processes or
a Dask cluster on other machines. Each part is read once; the rate and the time left come from
what this run has done, not from studies an earlier run finished.
"""

from __future__ import annotations

import threading
from types import TracebackType

import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from export.manifest import is_source_part, parse_part, part_instances
from export.store import ObjectStore
from ridl.releases import release_dir


class PartTally:
    """Studies and instances done so far, from the parts in the store; reads each part once."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.seen: set[str] = set()
        self.studies = 0
        self.instances = 0

    def refresh(self) -> None:
        """Count the manifest parts written since the last call (each part is read once)."""
        for info in self.store.list(f"{self.prefix}/parts/"):
            if info.key in self.seen or not info.key.endswith(".json"):
                continue
            self.seen.add(info.key)
            if is_source_part(info.key):
                continue  # files of the source that belong to no study
            try:
                part = parse_part(self.store.get_bytes(info.key))
            except (OSError, ValueError):
                self.seen.discard(info.key)  # being replaced: read it next time
                continue
            self.studies += 1
            self.instances += part_instances(part)


def selection_totals(project: str, release: str) -> tuple[int, int] | None:
    """(studies, instances) of the frozen selection, once the run has frozen it."""
    path = release_dir(project, release) / "selection.parquet"
    if not path.exists():
        return None
    table = pq.read_table(path, columns=["n_instances"])
    return table.num_rows, int(sum(v or 0 for v in table.column("n_instances").to_pylist()))


class RunProgress:
    """Two bars (studies, instances) with rate and time left, refreshed from a thread."""

    def __init__(
        self,
        project: str,
        release: str,
        store: ObjectStore,
        console: Console,
        interval: float = 0.5,
    ) -> None:
        self.project = project
        self.release = release
        self.tally = PartTally(store, f"{project}/{release}")
        self.interval = interval
        self._stop = threading.Event()
        self._baseline: tuple[int, int] | None = None
        self._progress = Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._studies = self._progress.add_task("studies", total=None, rate="")
        self._instances = self._progress.add_task("instances", total=None, rate="")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()
        self._tick()

    def _tick(self) -> None:
        totals = selection_totals(self.project, self.release)
        if totals is None:
            return
        self.tally.refresh()
        if self._baseline is None:
            # What earlier runs finished: shown as done, but not counted in this run's rate.
            self._baseline = (self.tally.studies, self.tally.instances)
            self._progress.update(self._studies, total=totals[0], completed=self.tally.studies)
            self._progress.update(
                self._instances, total=max(totals[1], 1), completed=self.tally.instances
            )
            self._progress.reset(self._studies, total=totals[0], completed=self.tally.studies)
            self._progress.reset(
                self._instances, total=max(totals[1], 1), completed=self.tally.instances
            )
        for task_id, done, total in (
            (self._studies, self.tally.studies, totals[0]),
            (self._instances, self.tally.instances, max(totals[1], self.tally.instances, 1)),
        ):
            self._progress.update(task_id, total=total, completed=done, rate=self._rate(task_id))

    def _rate(self, task_id: TaskID) -> str:
        speed = self._progress.tasks[task_id].speed
        return f"{speed:.1f}/s" if speed else ""

    def __enter__(self) -> RunProgress:
        self._progress.start()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._progress.stop()
