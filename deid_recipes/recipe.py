"""Recipes in the ``deid`` format, compiled once into a plan the engine can apply fast.

The recipe text is parsed by the ``deid`` package itself, so a recipe that works with
``deid.dicom.replace_identifiers`` means the same thing here. Compiling resolves each rule's field
expression against the data dictionary once per tag, so applying a plan costs one dict lookup per
element instead of matching every rule against every element.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import dictionary_keyword, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag, Tag

from ridl.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"
SITE_RECIPES_ENV = "RIDL_RECIPES_PATH"

# deid's precedence when several rules match one element (highest first).
PRIORITY = {"KEEP": 5, "ADD": 4, "REPLACE": 3, "JITTER": 2, "REMOVE": 1, "BLANK": 0}
HEADER_ACTIONS = set(PRIORITY)


@dataclass(frozen=True)
class Action:
    """What to do with one element: the winning rule's action and its value expression."""

    name: str
    value: str | None = None


@dataclass(frozen=True)
class Rule:
    action: str
    field: str
    value: str | None

    def matches(self, tag: BaseTag, keyword: str) -> bool:
        expr = self.field
        low = keyword.lower()
        if expr.upper() == "ALL":
            return True
        for prefix in ("contains:", "startswith:", "endswith:"):
            if expr.startswith(prefix):
                needle = expr[len(prefix) :].lower()
                if not keyword:
                    return False
                if prefix == "contains:":
                    return needle in low
                if prefix == "startswith:":
                    return low.startswith(needle)
                return low.endswith(needle)
        parsed = _parse_tag(expr)
        if parsed is not None:
            return parsed == tag
        return expr == keyword


def _parse_tag(expr: str) -> BaseTag | None:
    text = expr.strip().strip("()").replace(",", "").replace(" ", "")
    if len(text) == 8:
        try:
            return Tag(int(text, 16))
        except ValueError:
            return None
    return None


@dataclass
class Recipe:
    """A compiled recipe: ordered rules, ADD targets, and a per-tag cache of resolved actions."""

    name: str
    sources: tuple[Path, ...]
    rules: list[Rule]
    digest: str
    unmatched: str = "REMOVE"
    _cache: dict[int, Action | None] = field(default_factory=dict, repr=False)

    @property
    def adds(self) -> list[Rule]:
        return [r for r in self.rules if r.action == "ADD"]

    def action_for(self, tag: BaseTag) -> Action | None:
        """The action for a public element, or None when no rule matches it."""
        try:
            return self._cache[tag]
        except KeyError:
            pass
        keyword = keyword_for_tag(tag) if tag in _KNOWN else ""
        best: Rule | None = None
        for rule in self.rules:
            if rule.action == "ADD":
                continue
            if rule.matches(tag, keyword) and (
                best is None or PRIORITY[rule.action] > PRIORITY[best.action]
            ):
                best = rule
        result = Action(best.action, best.value) if best else None
        self._cache[tag] = result
        return result


class _KnownTags:
    """Membership test for tags in pydicom's dictionary (keyword lookups raise otherwise)."""

    def __contains__(self, tag: object) -> bool:
        try:
            return bool(dictionary_keyword(tag))  # type: ignore[arg-type]
        except KeyError:
            return False


_KNOWN = _KnownTags()


def recipe_search_path() -> list[Path]:
    """Site recipe folders (``RIDL_RECIPES_PATH``, colon-separated) first, then the shipped ones."""
    extra = [Path(p) for p in os.environ.get(SITE_RECIPES_ENV, "").split(os.pathsep) if p]
    return [*extra, RECIPES_DIR]


def find_recipe(name: str) -> Path:
    candidate = Path(name)
    if candidate.suffix == ".dicom" and candidate.exists():
        return candidate
    for folder in recipe_search_path():
        path = folder / f"{name}.dicom"
        if path.exists():
            return path
    known = sorted({p.stem for f in recipe_search_path() if f.exists() for p in f.glob("*.dicom")})
    raise ConfigError(f"no recipe named '{name}'; known recipes: {', '.join(known)}")


def parse_recipe_file(path: Path) -> list[Rule]:
    """Parse one recipe file with the deid package's own parser."""
    from deid.config import DeidRecipe

    # deid logs every parsed line at debug level through its own logger; keep it quiet.
    logging.getLogger("deid").setLevel(logging.WARNING)
    try:
        from deid.logger import bot

        bot.level = 0
    except ImportError:  # pragma: no cover - depends on deid internals
        pass
    try:
        parsed = DeidRecipe(str(path), base=False)
    except SystemExit:
        raise ConfigError(f"recipe {path} could not be parsed by deid") from None
    rules = []
    for entry in parsed.deid.get("header", []) if parsed.deid else []:
        action = str(entry["action"]).upper()
        if action not in HEADER_ACTIONS:
            continue
        rules.append(Rule(action, str(entry["field"]), entry.get("value")))
    return rules


def load_recipe(names: str | list[str], unmatched: str = "REMOVE") -> Recipe:
    """Load and compile one recipe, or several layered in order (later files add rules).

    ``unmatched`` is what happens to a public element no rule mentions: REMOVE is ridl's secure
    default (only what a recipe keeps or transforms survives); KEEP matches the deid package.
    """
    if unmatched not in ("REMOVE", "KEEP"):
        raise ConfigError("unmatched must be REMOVE or KEEP")
    layers = [names] if isinstance(names, str) else list(names)
    paths = tuple(find_recipe(n) for n in layers)
    rules: list[Rule] = []
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.read_bytes())
        rules.extend(parse_recipe_file(path))
    sha.update(unmatched.encode())
    for rule in rules:
        if (
            rule.action == "ADD"
            and tag_for_keyword(rule.field) is None
            and not _parse_tag(rule.field)
        ):
            raise ConfigError(f"recipe ADD names an unknown attribute {rule.field!r}")
    return Recipe(
        name="+".join(layers),
        sources=paths,
        rules=rules,
        digest=sha.hexdigest(),
        unmatched=unmatched,
    )
