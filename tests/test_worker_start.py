"""How a run's local workers start: forked from a server that imported the flow's modules once
(flows.runners.PreloadedProcessPool), not each spawned to import Prefect and ridl again."""

from __future__ import annotations

import os
import sys

from prefect import flow, task

from flows.runners import WORKER_PRELOAD, make_task_runner


@task
def _how_started() -> tuple[int, int, bool]:
    # This module imports flows.runners, not flows.extract: a spawned worker that unpickled
    # this task has not imported the flow's module; a forked one had it from its server.
    return os.getpid(), os.getppid(), all(name in sys.modules for name in WORKER_PRELOAD)


def test_local_workers_are_forked_from_a_server_holding_the_flows_modules() -> None:

    @flow(name="worker-start-probe", task_runner=make_task_runner(2, 1, None))
    def probe() -> list[tuple[int, int, bool]]:
        futures = [_how_started.submit() for _ in range(4)]
        return [future.result() for future in futures]

    answers = probe()
    workers = {pid for pid, _, _ in answers}
    parents = {ppid for _, ppid, _ in answers}
    assert len(answers) == 4 and 1 <= len(workers) <= 2
    assert os.getpid() not in workers
    # Each worker's parent is the fork server, not this (the flow's) process.
    assert parents != {os.getpid()} and len(parents) == 1
    assert all(preloaded for _, _, preloaded in answers), "the flow's modules came preloaded"
