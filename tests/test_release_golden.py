"""A release's bytes do not change by accident: the golden-release test.

Builds two small releases from a synthetic DIR with pinned secrets, signing key and publication
time (``tests/golden_release.py`` says how, and which time stamps are masked or left out) and
compares the SHA-256 of every object in the store with ``tests/data/golden-release.json``. That
file was made with the code before the "four floors" restructuring (commit 95b7fff), so this test
also proves the restructuring changed no released byte.

When a change is meant to alter released bytes, regenerate the file (see
``tests/golden_release.py``) and say in the commit which bytes changed and why.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.golden_release import GOLDEN, release_digests


def test_a_release_is_byte_identical_to_the_golden_one(tmp_path: Path) -> None:
    expected: dict[str, str] = json.loads(GOLDEN.read_text())
    actual = release_digests(tmp_path / "golden")
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    assert not (missing or extra or changed), (
        f"release bytes differ from {GOLDEN.name}: changed {changed}, missing {missing}, "
        f"new {extra}; if that is intended, regenerate it (see tests/golden_release.py)"
    )
    assert any(k.endswith(".dcm") for k in actual) and len(actual) > 50
