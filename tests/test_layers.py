"""The four floors stay as they are: the import-linter contracts pass and cover every module."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}


def test_curation_contract_forbids_every_export_module_but_store_and_manifest() -> None:
    """A new export module is forbidden to curation until someone decides otherwise."""
    forbidden = set(_contracts()["curation-uses-store-and-manifest"]["forbidden_modules"])  # type: ignore[arg-type]
    modules = {f"export.{p.stem}" for p in (ROOT / "export").glob("*.py") if p.stem != "__init__"}
    # export.partitions is the manifest's partitioned layout, which export.manifest reads.
    assert forbidden == modules - {"export.store", "export.manifest", "export.partitions"}


def test_floors_are_the_architecture() -> None:
    layers = _contracts()["floors"]["layers"]
    assert layers == ["flows", "curation", "export | deid_recipes", "ridl"]


def test_lint_imports_passes() -> None:
    """The contracts hold on this checkout (imports inside functions count too)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a dev dependency (make test installs it)"
    done = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout
