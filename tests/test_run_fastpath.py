"""A run exports the same bytes with the byte-level fast path as with the dataset path.

``RunContext.fast_path`` switches it; the same frozen selection of the synthetic DIR is run
both ways into two stores, and every exported object, every manifest part and every quarantine
count must be equal, while the fast path must really have served most objects (and the dataset
path the ones curation blanked).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import flows.work
from export.local import LocalStore
from flows.runplan import prepare_run
from flows.work import BatchCounts, process_batch
from ridl.synth import SynthReport
from tests.conftest import make_project

RECIPES = [
    "ridl-basic",
    "ridl-safe-public+ps3.15-basic+ps3.15-clean-descriptors+ps3.15-retain-long-modified-dates",
]


def _store_bytes(root: Path) -> dict[str, bytes]:
    store = LocalStore(root)
    return {info.key: store.get_bytes(info.key) for info in store.list("")}


@pytest.mark.parametrize("recipe", RECIPES)
def test_fast_path_run_exports_the_dataset_paths_bytes(
    recipe: str, synth_dir: SynthReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project("fast-run", recipe=recipe)
    plan = prepare_run(project.id, "r1", f"folder:{synth_dir.root}", f"file:{tmp_path / 'plan'}")
    served: list[str] = []

    def counting(real: Any) -> Any:
        def count(*args: Any) -> Any:
            done = real(*args)
            served.append("fast" if done is not None else "handed-off")
            return done

        return count

    # The run hands the fast path the bytes it read (deidentify_bytes); the file-reading entry
    # serves objects of a study too big to hold in memory.
    for name in ("deidentify_bytes", "deidentify_to_bytes"):
        monkeypatch.setattr(flows.work, name, counting(getattr(flows.work, name)))
    results: dict[bool, tuple[BatchCounts, dict[str, bytes]]] = {}
    for fast in (False, True):
        root = tmp_path / ("on" if fast else "off")
        ctx = dataclasses.replace(plan.ctx, store_url=f"file:{root}", fast_path=fast)
        counts = process_batch(ctx, plan.studies)
        results[fast] = (counts, _store_bytes(root))
        if not fast:
            assert served == [], "fast_path=False never calls the fast path"

    (slow_counts, slow), (fast_counts, fast_objects) = results[False], results[True]
    assert slow_counts.as_dict() == fast_counts.as_dict()
    assert slow_counts.exported > 50
    assert slow_counts.quarantined.get("truncated", 0) >= 1, "truncated objects still quarantined"
    assert sorted(slow) == sorted(fast_objects)
    differing = [key for key in slow if slow[key] != fast_objects[key]]
    assert differing == [], f"{len(differing)} objects differ, e.g. {differing[:3]}"
    # Manifest parts are in the stores too, so they were compared above; the fast path served
    # most objects and the dataset path the rest (curation-blanked pixels, hand-offs).
    assert served.count("fast") > slow_counts.exported // 2
    assert served.count("fast") < slow_counts.exported
