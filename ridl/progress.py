"""A progress bar for a run, fed by what the run has already written.

It watches the frozen selection (how many studies) and the manifest parts in the object store
(how many are done), so it works whatever runs the studies: threads, processes or a cluster.
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
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from export.store import ObjectStore
from ridl.catalog import release_dir


class RunProgress:
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
        self.store = store
        self.interval = interval
        self._stop = threading.Event()
        self._progress = Progress(
            TextColumn("[bold]studies"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int | None:
        path = release_dir(self.project, self.release) / "selection.parquet"
        if not path.exists():
            return None
        return int(pq.ParquetFile(path).metadata.num_rows)

    def _done(self) -> int:
        prefix = f"{self.project}/{self.release}/parts/"
        return sum(1 for info in self.store.list(prefix) if not info.key.endswith("_source.json"))

    def _run(self) -> None:
        task = self._progress.add_task("run", total=None, rate="")
        while not self._stop.wait(self.interval):
            self._tick(task)
        self._tick(task)

    def _tick(self, task: object) -> None:
        total = self._total()
        done = self._done()
        t = self._progress.tasks[0]
        rate = f"{t.speed:.1f}/s" if t.speed else ""
        self._progress.update(task, total=total, completed=done, rate=rate)  # type: ignore[arg-type]

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
