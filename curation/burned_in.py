"""Header triage for burned-in text, with the ``deid`` recipe ``%filter`` semantics.

The filters are deid's own default filters (``deid.dicom``: vendor whitelists, graylists with
known text regions, the CTP blacklist) layered with ridl's triage filter
(``curation/filters/ridl-triage.dicom``: Burned In Annotation, ultrasound, secondary capture,
ImageType SECONDARY/SCREEN/SAVE, scanned documents, and the ultrasound regions to keep) and any
filter files the project lists (``[curation] filters``). deid evaluates them
(``deid.dicom.pixels.detect.has_burned_pixels``); this module reads its answer:

- a match in a ``graylist`` or ``blacklist`` group puts the object at risk: it is cleaned where
  regions are known and then read by the text detector;
- a match in a ``whitelist`` group alone, or no match, leaves it as it is.

Curation floor (``curation/``): :mod:`curation.pipeline` triages each header here, then
:mod:`curation.pixels` blanks the regions and :mod:`curation.ocr` reads what is left. The
filters follow Burned In Annotation (0028,0301) and Image Type (0008,0008) of PS3.3 C.7.6.1,
and the ultrasound regions of PS3.3 C.8.5.5 (Sequence of Ultrasound Regions).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileDataset

from ridl.errors import ConfigError
from ridl.reasons import Reason

RIDL_FILTER = Path(__file__).parent / "filters" / "ridl-triage.dicom"
RISK_GROUPS = ("graylist", "blacklist")
CACHE_SIZE = 4096


@dataclass(frozen=True)
class TriageResult:
    """deid's answer for one header, read as ridl needs it.

    ``groups`` are the filter groups that matched (sorted); ``labels`` the group of each match,
    in order; ``results`` deid's raw answer. Coordinates are pixel rectangles
    ``xmin,ymin,xmax,ymax`` (or lists of them) as deid gives them.
    """

    at_risk: bool
    groups: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    # deid's coordinate sets, in recipe order: (mask value, coordinate or list of them);
    # mask 0 blanks the region, 1 keeps it.
    coordinates: tuple[tuple[int, Any], ...] = ()
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def has_regions(self) -> bool:
        """True when a matched graylist or blacklist filter gives regions to blank or keep."""
        return bool(self.coordinates)

    @property
    def reason(self) -> str:
        """A short code for counts: which kind of list put the object at risk."""
        if "blacklist" in self.groups:
            return Reason.BURNED_IN_RISK_BLACKLIST
        if "graylist" in self.groups:
            return Reason.BURNED_IN_RISK_GRAYLIST
        return ""


class Triage:
    """Compiled filters: built once per worker, applied to every header.

    ``extra_filters`` are paths of the project's deid filter files, layered after deid's
    defaults and ridl's triage filter (``deid_defaults=False`` leaves deid's out). Answers are
    cached per distinct value of the fields the filters read (up to 4,096).

    Raises:
        ConfigError: a filter file does not exist, or the filters define no ``%filter``
            section.
    """

    def __init__(self, extra_filters: Sequence[str] = (), *, deid_defaults: bool = True) -> None:
        from deid.config import DeidRecipe

        for path in extra_filters:
            if not Path(path).is_file():
                raise ConfigError(
                    f"curation filter file {path} does not exist; fix curation.filters "
                    "in the project file"
                )
        quiet_deid()
        # deid's own recipe merge replaces a filter group by the last file's, so the groups
        # are concatenated here: deid's defaults, then ridl's, then the project's.
        self.recipe = DeidRecipe(None) if deid_defaults else DeidRecipe(str(RIDL_FILTER))
        self.recipe.deid = dict(self.recipe.deid)
        merged: dict[str, list[Any]] = {
            k: list(v) for k, v in (self.recipe.deid.get("filter") or {}).items()
        }
        layers = [str(RIDL_FILTER), *extra_filters] if deid_defaults else list(extra_filters)
        for path in layers:
            for group, items in (DeidRecipe(path).deid.get("filter") or {}).items():
                merged.setdefault(group, []).extend(items)
        self.recipe.deid["filter"] = merged
        # Only LABELs whose coordinates are read from the header are changed by deid.
        self._from_items = {
            group: {
                i
                for i, item in enumerate(items)
                if any("from:" in str(c[1]) for c in item.get("coordinates", []))
            }
            for group, items in merged.items()
        }
        # Every field a filter reads (criteria and "from:" coordinates): the cache key.
        fields: set[str] = set()
        for items in merged.values():
            for item in items:
                for group in item.get("filters", []):
                    fields.update(str(f) for f in group.get("field", []))
                for _, coordinate in item.get("coordinates", []):
                    if str(coordinate).startswith("from:"):
                        fields.add(str(coordinate)[5:])
        self._fields = tuple(sorted(fields))
        self._cache: dict[tuple[str, ...], TriageResult] = {}
        if not self.recipe.get_filters():
            raise ConfigError("the curation filters define no %filter section")

    def __call__(self, header: Dataset) -> TriageResult:
        """deid's answer for ``header``; headers alike in every field a filter reads share it.

        The slices of a series usually agree on every such field, so deid evaluates its filters
        about once per series instead of once per object.
        """
        key = self._key(header)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._evaluate(header)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def _key(self, header: Dataset) -> tuple[str, ...]:
        values = []
        for name in self._fields:
            try:
                elem = header.get(int(name, 0) if name.startswith("0x") else name)
                values.append("\x00" if elem is None else str(elem))
            except Exception:  # a malformed element (bad VR, bad value) must not stop a run
                values.append("\x01")
        return tuple(values)

    def _evaluate(self, header: Dataset) -> TriageResult:
        from deid.dicom.pixels.detect import has_burned_pixels

        # deid writes the coordinates it reads from a header ("from:Field") back into the
        # recipe's filter list; evaluate on a private copy so one object's regions never
        # leak into the next object's answer.
        recipe = copy.copy(self.recipe)
        recipe.deid = dict(self.recipe.deid)
        recipe.deid["filter"] = {
            group: [
                copy.deepcopy(item) if i in self._from_items[group] else item
                for i, item in enumerate(items)
            ]
            for group, items in self.recipe.deid["filter"].items()
        }
        if not isinstance(header, FileDataset):  # deid reads anything else as a path
            header = FileDataset("", header, file_meta=getattr(header, "file_meta", None))
        answer = has_burned_pixels(header, force=True, deid=recipe)
        results: list[dict[str, Any]] = list(answer.get("results", []))
        groups = tuple(sorted({str(r["group"]) for r in results}))
        at_risk = any(g in RISK_GROUPS for g in groups)
        coords: list[tuple[int, Any]] = []
        labels: list[str] = []
        for r in results:
            labels.append(str(r["group"]))
            if r["group"] == "whitelist":
                continue
            for mask_value, value in r.get("coordinates", []):
                if value in ([], ""):
                    continue
                coords.append((int(mask_value), value))
        return TriageResult(at_risk, groups, tuple(labels), tuple(coords), results)


def quiet_deid() -> None:
    """deid prints progress through its own logger; keep file names and values out of logs.

    Importing ``deid.dicom.pixels.clean`` raises deid's verbosity, so this runs after it too.
    """
    # deid's pixel module imports a pydicom module that pydicom 3 logs as deprecated: keep that
    # notice (about a third-party import, nothing a user can act on) off the run's console.
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.ERROR)
    try:
        import deid.dicom.pixels.clean  # noqa: F401
        from deid.logger import bot

        bot.level = -3  # deid's ERROR
    except Exception:  # pragma: no cover - older deid
        logging.getLogger("deid").setLevel(logging.ERROR)
    finally:
        pydicom_log.setLevel(level)
