"""Recipes in the ``deid`` format, compiled once into a plan the engine can apply fast.

The recipe text is parsed by the ``deid`` package itself, so a recipe that works with
``deid.dicom.replace_identifiers`` means the same thing here. Compiling resolves each rule's field
expression against the data dictionary once per tag, so applying a plan costs one dict lookup per
element instead of matching every rule against every element.

Layers. A recipe is one file or several files layered in order (a profile, then its options,
then a site's own file). The meaning is:

* within one file, when several rules match an element, deid's precedence decides
  (KEEP > ADD > REPLACE > JITTER > REMOVE > BLANK), ties going to the first rule, exactly as
  ``deid.dicom.replace_identifiers`` does with that file alone;
* across files, a later file overrides every earlier one for the attributes it names: the
  engine asks the last layer first and takes the first layer that has a rule matching the
  element. So ``ps3.15-retain-long-modified-dates`` turns the dates the basic profile dummies
  into JITTER, and ``ps3.15-clean-descriptors`` turns its REMOVE / dummy into ``func:clean``;
* one exception keeps the option tables honest: a JITTER rule on an attribute whose VR is not
  DA, DT or TM (e.g. Timezone Offset From UTC) cannot shift anything, so it defers to the
  earlier layers' action for that attribute;
* ADD rules of a later layer replace earlier ADDs of the same attribute;
* an element no layer matches gets ``unmatched``: REMOVE (ridl's secure default) or KEEP (deid's).
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
    """One header rule of a recipe file: ``ACTION field [value]``, and the layer it came from.

    ``action`` is one of KEEP, ADD, REPLACE, JITTER, REMOVE, BLANK; ``field`` a keyword, a tag
    (``(0010,0010)`` or ``00100010``), ``ALL`` or ``contains:`` / ``startswith:`` /
    ``endswith:`` and a keyword fragment; ``value`` the rule's value expression (``func:uid``,
    ``var:research_id``, a literal) or None; ``layer`` the index of its file among the layers.
    """

    action: str
    field: str
    value: str | None
    layer: int = 0

    def matches(self, tag: BaseTag, keyword: str) -> bool:
        """Whether this rule's field names the element.

        Args:
            tag: the element's tag.
            keyword: its data dictionary keyword, or ``""`` for a tag not in the dictionary
                (only ``ALL`` and a tag field match it then).

        Returns:
            True when the field is ``ALL``, equals the tag or the keyword, or its
            ``contains:`` / ``startswith:`` / ``endswith:`` fragment matches the keyword
            (case-insensitively).
        """
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


# The layer file stems that stand for a PS3.15 profile or option, with their CID 7050 code
# (DCM scheme) and code meaning, for the De-identification Method Code Sequence.
PS315_CODES: dict[str, tuple[str, str]] = {
    "ps3.15-basic": ("113100", "Basic Application Confidentiality Profile"),
    "ps3.15-clean-graphics": ("113103", "Clean Graphics Option"),
    "ps3.15-clean-structured-content": ("113104", "Clean Structured Content Option"),
    "ps3.15-clean-descriptors": ("113105", "Clean Descriptors Option"),
    "ps3.15-retain-long-modified-dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "ps3.15-retain-patient-chars": ("113108", "Retain Patient Characteristics Option"),
    "ps3.15-retain-device-id": ("113109", "Retain Device Identity Option"),
    "ps3.15-retain-uids": ("113110", "Retain UIDs Option"),
    "ps3.15-retain-safe-private": ("113111", "Retain Safe Private Option"),
    "ps3.15-retain-institution-id": ("113112", "Retain Institution Identity Option"),
}
SAFE_PRIVATE_LAYER = "ps3.15-retain-safe-private"
SAFE_PRIVATE_TABLE = "ps3.15-safe-private.toml"
TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})


@dataclass
class Recipe:
    """A compiled recipe: layered rules, ADD targets, and a per-tag cache of resolved actions."""

    name: str
    sources: tuple[Path, ...]
    rules: list[Rule]
    digest: str
    unmatched: str = "REMOVE"
    safe_private: frozenset[tuple[str, int, int]] = frozenset()
    # The VR Table E.3.10-1 gives a safe private attribute, where it gives one: how a kept
    # element read without a VR (implicit VR, or UN) is read, a sequence's items walked.
    safe_private_vr: dict[tuple[str, int, int], str] = field(default_factory=dict, repr=False)
    _cache: dict[int, Action | None] = field(default_factory=dict, repr=False)

    @property
    def layer_names(self) -> list[str]:
        """The layers' file stems in order, e.g. ``["ridl-safe-public", "ps3.15-basic"]``."""
        return [p.stem for p in self.sources]

    @property
    def codes(self) -> list[tuple[str, str]]:
        """CID 7050 codes of the PS3.15 profile and options among the layers, in order."""
        return [PS315_CODES[n] for n in self.layer_names if n in PS315_CODES]

    @property
    def uses_clean(self) -> bool:
        """True when a rule's value is ``func:clean`` (identifying tokens must be read first)."""
        return any(r.value == "func:clean" for r in self.rules)

    @property
    def adds(self) -> list[Rule]:
        """ADD rules, one per attribute: the last layer's ADD of an attribute wins."""
        chosen: dict[str, Rule] = {}
        for rule in self.rules:
            if rule.action != "ADD":
                continue
            key = str(_resolve_field(rule.field))
            previous = chosen.get(key)
            if previous is None or previous.layer < rule.layer:
                chosen[key] = rule
        return list(chosen.values())

    def action_for(self, tag: BaseTag, vr: str = "") -> Action | None:
        """The action for a public element, by the layering rules of the module docstring.

        Args:
            tag: the element's tag (group even).
            vr: the VR it is handled as; a JITTER rule on a VR other than DA, DT or TM defers
                to the earlier layers. The result is cached per tag: the VR of the first call
                for a tag decides for the later ones.

        Returns:
            The winning rule's action and value expression, or None when no layer has a rule
            (other than ADD) matching the element.
        """
        try:
            return self._cache[tag]
        except KeyError:
            pass
        keyword = keyword_for_tag(tag) if tag in _KNOWN else ""
        per_layer: dict[int, Rule] = {}
        for rule in self.rules:
            if rule.action == "ADD" or not rule.matches(tag, keyword):
                continue
            best = per_layer.get(rule.layer)
            if best is None or PRIORITY[rule.action] > PRIORITY[best.action]:
                per_layer[rule.layer] = rule
        result: Action | None = None
        for layer in sorted(per_layer, reverse=True):
            rule = per_layer[layer]
            if rule.action == "JITTER" and vr and vr not in TEMPORAL_VRS:
                continue  # nothing to shift: the earlier layers decide
            result = Action(rule.action, rule.value)
            break
        self._cache[tag] = result
        return result


def _resolve_field(expr: str) -> int | str:
    tag = tag_for_keyword(expr)
    if tag is not None:
        return int(tag)
    parsed = _parse_tag(expr)
    return int(parsed) if parsed is not None else expr


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
    """The file of one recipe layer.

    Args:
        name: a recipe name (``ps3.15-basic``), looked up as ``<name>.dicom`` in each folder of
            :func:`recipe_search_path` in order, or a path to an existing ``.dicom`` file.

    Returns:
        The recipe file's path.

    Raises:
        ConfigError: no recipe has that name (the message lists the known ones).
    """
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
    """Parse one recipe file with the deid package's own parser.

    Args:
        path: a recipe file in the deid format.

    Returns:
        Its header rules in file order, all with layer 0 (FORMAT, filter and pixel sections
        and unknown actions are left out).

    Raises:
        ConfigError: deid cannot parse the file.
    """
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


def load_safe_private(path: Path) -> frozenset[tuple[str, int, int]]:
    """The safe private attributes of PS3.15 Table E.3.10-1, as a TOML table lists them.

    Args:
        path: a TOML file of ``[[attribute]]`` entries with ``private_creator``, ``group`` and
            ``element`` (hex strings; ``element`` is the low byte of the element number, the
            high byte being the block the creator reserved).

    Returns:
        ``(private creator, group, element byte)`` triples, e.g.
        ``("Philips PET Private Group", 0x7053, 0x00)``.
    """
    import tomllib

    data = tomllib.loads(path.read_text())
    out = set()
    for entry in data.get("attribute", []):
        out.add(
            (
                str(entry["private_creator"]).strip(),
                int(str(entry["group"]), 16),
                int(str(entry["element"]), 16),
            )
        )
    return frozenset(out)


def load_safe_private_vrs(path: Path) -> dict[tuple[str, int, int], str]:
    """The VR of each safe private attribute that PS3.15 Table E.3.10-1 gives one for.

    Args:
        path: the TOML table :func:`load_safe_private` reads.

    Returns:
        ``{(private creator, group, element byte): VR}``; entries without a VR, or with a
        choice such as ``"OW/OB"``, are left out.
    """
    import tomllib

    data = tomllib.loads(path.read_text())
    out: dict[tuple[str, int, int], str] = {}
    for entry in data.get("attribute", []):
        vr = str(entry.get("vr", "")).strip()
        if len(vr) == 2:
            key = (
                str(entry["private_creator"]).strip(),
                int(str(entry["group"]), 16),
                int(str(entry["element"]), 16),
            )
            out[key] = vr
    return out


def split_layers(names: str | list[str]) -> list[str]:
    """``"a+b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (a run context carries the joined form)."""
    if isinstance(names, str):
        return [n for n in names.split("+") if n]
    return list(names)


def load_recipe(names: str | list[str], unmatched: str = "REMOVE") -> Recipe:
    """Load and compile one recipe, or several layered in order (see the module docstring).

    Args:
        names: a recipe name, a ``+``-joined list of names, or a list (see :func:`find_recipe`).
        unmatched: what happens to a public element no rule mentions: REMOVE is ridl's secure
            default (only what a recipe keeps or transforms survives); KEEP matches the deid
            package.

    Returns:
        The compiled recipe; its ``digest`` (SHA-256, hex) covers every layer file, the
        ``unmatched`` choice and the safe private table when that option is a layer.

    Raises:
        ConfigError: ``unmatched`` is neither REMOVE nor KEEP, no name is given, a name has no
            recipe, deid cannot parse a file, or an ADD names an unknown attribute.
    """
    if unmatched not in ("REMOVE", "KEEP"):
        raise ConfigError("unmatched must be REMOVE or KEEP")
    layers = split_layers(names)
    if not layers:
        raise ConfigError("no recipe named: give at least one recipe")
    paths = tuple(find_recipe(n) for n in layers)
    rules: list[Rule] = []
    sha = hashlib.sha256()
    for index, path in enumerate(paths):
        sha.update(path.read_bytes())
        rules.extend(Rule(r.action, r.field, r.value, layer=index) for r in parse_recipe_file(path))
    sha.update(unmatched.encode())
    for rule in rules:
        if (
            rule.action == "ADD"
            and tag_for_keyword(rule.field) is None
            and not _parse_tag(rule.field)
        ):
            raise ConfigError(f"recipe ADD names an unknown attribute {rule.field!r}")
    safe: frozenset[tuple[str, int, int]] = frozenset()
    safe_vr: dict[tuple[str, int, int], str] = {}
    for path in paths:
        if path.stem == SAFE_PRIVATE_LAYER:
            table = path.parent / SAFE_PRIVATE_TABLE
            if not table.exists():
                table = RECIPES_DIR / SAFE_PRIVATE_TABLE
            sha.update(table.read_bytes())
            safe = load_safe_private(table)
            safe_vr = load_safe_private_vrs(table)
    return Recipe(
        name="+".join(layers),
        sources=paths,
        rules=rules,
        digest=sha.hexdigest(),
        unmatched=unmatched,
        safe_private=safe,
        safe_private_vr=safe_vr,
    )
