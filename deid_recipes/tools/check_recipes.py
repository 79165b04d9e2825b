"""Check the shipped de-identification recipes before anyone relies on them.

Why: the PS3.15 recipes are hundreds of hand-maintained data lines. A misspelt keyword does not
fail anywhere: deid parses it, and the engine then never matches it, so the attribute silently
falls through to the default action. This script catches that class of mistake early:

* every ``*.dicom`` recipe must parse with ``deid.config.DeidRecipe(path, base=False)``;
* every FIELD must be a keyword in pydicom's data dictionary (``tag_for_keyword``), a keyword of
  pydicom's repeating-group dictionary (Overlay Data, the Curve attributes), or a ``(gggg,eeee)``
  tag;
* no attribute may be named twice in one file (a second line would be dead or would fight the
  first);
* ``ps3.15-safe-private.toml`` must be well formed.

It prints, per file, how many attributes each action covers. Exit status 0 means all passed.

Usage: ``.venv/bin/python deid_recipes/tools/check_recipes.py [RECIPES_DIR]``
"""

from __future__ import annotations

import logging
import re
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import repeater_has_keyword, tag_for_keyword

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "recipes"
TAG_FIELD = re.compile(r"^\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)$")
HEX_GROUP = re.compile(r"^0x[0-9A-F]{4}$")
HEX_BYTE = re.compile(r"^0x[0-9A-F]{2}$")
ACTIONS = ("KEEP", "ADD", "REPLACE", "JITTER", "REMOVE", "BLANK")
SAFE_PRIVATE = "ps3.15-safe-private.toml"


@dataclass
class FileReport:
    """What the checks found in one file."""

    path: Path
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


def field_identity(name: str) -> tuple[str, str] | None:
    """Return (kind, normalised identity) for a recipe FIELD, or None if it is not valid.

    Keywords and tags normalise to the same ``gggg,eeee`` text, so a keyword and its tag written
    in the same file count as a duplicate.
    """
    match = TAG_FIELD.match(name)
    if match:
        return "tag", f"{match.group(1).upper()},{match.group(2).upper()}"
    tag = tag_for_keyword(name)
    if tag is not None:
        return "keyword", f"{tag >> 16:04X},{tag & 0xFFFF:04X}"
    if repeater_has_keyword(name):
        return "repeater", name
    return None


def parse_with_deid(path: Path) -> list[dict[str, str]]:
    """Parse a recipe with deid itself and return its %header entries."""
    from deid.config import DeidRecipe

    logging.getLogger("deid").setLevel(logging.WARNING)
    try:  # deid prints every parsed line through its own logger unless told not to
        from deid.logger import bot

        bot.level = 0
    except ImportError:  # pragma: no cover - depends on deid internals
        pass
    recipe = DeidRecipe(str(path), base=False)
    if recipe.deid is None:
        return []
    if recipe.deid.get("format") != "dicom":
        raise ValueError("FORMAT is not dicom")
    header = recipe.deid.get("header", [])
    return [dict(entry) for entry in header]


def check_recipe(path: Path) -> FileReport:
    """Run every recipe check on one ``.dicom`` file."""
    report = FileReport(path)
    try:
        entries = parse_with_deid(path)
    except (SystemExit, Exception) as exc:  # deid calls sys.exit on a malformed recipe
        report.errors.append(f"deid could not parse it: {exc!r}")
        return report
    seen: dict[str, str] = {}
    for entry in entries:
        action = str(entry.get("action", "")).upper()
        name = str(entry.get("field", ""))
        if action not in ACTIONS:
            report.errors.append(f"unknown action {action!r} for {name!r}")
            continue
        report.counts[action] += 1
        identity = field_identity(name)
        if identity is None:
            report.errors.append(f"{action} {name}: not a pydicom keyword or a (gggg,eeee) tag")
            continue
        kind, key = identity
        if kind == "tag":
            tag = int(key.replace(",", ""), 16)
            keyword = _keyword_or_empty(tag)
            if keyword:
                report.notes.append(f"{name} has a keyword, {keyword}; prefer it")
        if key in seen:
            report.errors.append(f"{name} named twice ({seen[key]} and {action})")
        else:
            seen[key] = action
    return report


def _keyword_or_empty(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    try:
        return keyword_for_tag(tag)
    except KeyError:
        return ""


def check_safe_private(path: Path) -> FileReport:
    """Check the Table E.3.10-1 data file: shape of each entry and no repeated entry."""
    report = FileReport(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        report.errors.append(f"cannot read it as TOML: {exc}")
        return report
    entries = data.get("attribute")
    if not isinstance(entries, list) or not entries:
        report.errors.append("no [[attribute]] entries")
        return report
    seen: set[tuple[str, str, str]] = set()
    for number, entry in enumerate(entries, start=1):
        where = f"entry {number}"
        creator = entry.get("private_creator")
        group = entry.get("group")
        element = entry.get("element")
        if not isinstance(creator, str) or not creator.strip():
            report.errors.append(f"{where}: private_creator missing or empty")
            continue
        if not isinstance(group, str) or not HEX_GROUP.match(group) or int(group, 16) % 2 == 0:
            report.errors.append(f"{where}: group {group!r} is not an odd 0xGGGG group")
            continue
        if not isinstance(element, str) or not HEX_BYTE.match(element):
            report.errors.append(f"{where}: element {element!r} is not a 0xEE byte")
            continue
        for key in ("description", "vm"):
            if not isinstance(entry.get(key), str):
                report.errors.append(f"{where}: {key} missing")
        if "vr" in entry and not re.fullmatch(r"[A-Z]{2}(/[A-Z]{2})*", str(entry["vr"])):
            report.errors.append(f"{where}: vr {entry['vr']!r} is not a VR")
        identity = (creator, group, element)
        if identity in seen:
            report.errors.append(f"{where}: {identity} listed twice")
        seen.add(identity)
        report.counts["entries"] += 1
    return report


def main(argv: list[str]) -> int:
    """Check every recipe file of a folder (default: the shipped recipes); 0 when all pass."""
    folder = Path(argv[1]) if len(argv) > 1 else DEFAULT_DIR
    recipes = sorted(folder.glob("*.dicom"))
    if not recipes:
        print(f"no *.dicom recipes in {folder}")
        return 1
    reports = [check_recipe(path) for path in recipes]
    safe_private = folder / SAFE_PRIVATE
    if safe_private.exists():
        reports.append(check_safe_private(safe_private))
    failed = False
    for report in reports:
        status = "FAIL" if report.errors else "ok"
        total = sum(report.counts.values())
        counts = ", ".join(f"{action} {n}" for action, n in sorted(report.counts.items()))
        print(f"{status:4} {report.path.name}: {total} ({counts or 'no action lines'})")
        for note in report.notes:
            print(f"     note: {note}")
        for error in report.errors:
            print(f"     error: {error}")
        failed = failed or bool(report.errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
