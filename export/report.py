"""The release report: one HTML page of counts and plots, kept with the release.

It is safe to publish: it holds counts only — no research ID, no site name, no date of any one
study. Studies and instances are counted by the year of their *original* study date (aggregated
on premises before anything is written) and by modality; exclusions and quarantines by reason;
subjects by the number of sites their studies came from, which shows the health-number linkage
at work (sites are compared through keyed tokens in the manifest parts, never by name); and the
throughput of each run. Plots are drawn with matplotlib and embedded as inline SVG, so the page is
one self-contained file.

Engines floor (``export/``): it reads what the release already holds in the object store (the
summary, the manifest and its parts via :mod:`export.manifest`, the run logs under ``runs/``)
and writes ``report.html`` next to them; the flow that builds a release calls
:func:`write_report`.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from export import partitions as pt
from export.manifest import ManifestPart, ReleaseSummary, read_summary
from export.store import ObjectStore

REPORT_NAME = "report.html"


def report_key(prefix: str) -> str:
    """The report's key: ``<prefix>/report.html`` (``prefix`` is ``<project>/<release>``)."""
    return f"{prefix}/{REPORT_NAME}"


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    # Text stays text in the SVG: smaller, searchable, readable by screen readers. Figures are
    # drawn without pyplot, so importing this module sets no backend and no global rcParams.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _subplots(figsize: tuple[float, float]) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _bar_by(frame: pd.DataFrame, value: str, title: str, ylabel: str) -> str:
    """Stacked bars: rows are years, columns modalities."""
    fig, ax = _subplots((7, 3.2))
    if frame.empty:
        ax.text(0.5, 0.5, "nothing exported", ha="center", va="center")
    else:
        frame.plot(kind="bar", stacked=True, ax=ax, width=0.8)
        ax.legend(title="modality", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel("year of study (original date)")
    ax.set_ylabel(ylabel)
    return _svg(fig)


def _barh(counts: Mapping[str, int], title: str, color: str) -> str:
    fig, ax = _subplots((7, 0.5 + 0.35 * max(len(counts), 1)))
    if counts:
        names = sorted(counts, key=lambda k: counts[k])
        ax.barh(names, [counts[n] for n in names], color=color)
        for i, name in enumerate(names):
            ax.text(counts[name], i, f" {counts[name]}", va="center", fontsize=8)
    else:
        ax.text(0.5, 0.5, "none", ha="center", va="center")
        ax.set_yticks([])
    ax.set_title(title)
    ax.set_xlabel("instances")
    return _svg(fig)


def _sites_plot(distribution: Mapping[int, int]) -> str:
    fig, ax = _subplots((5, 3))
    keys = sorted(distribution)
    ax.bar([str(k) for k in keys], [distribution[k] for k in keys], color="#4c72b0")
    ax.set_title("subjects by number of sites")
    ax.set_xlabel("sites a subject's studies came from")
    ax.set_ylabel("subjects")
    return _svg(fig)


def _throughput_plot(runs: list[dict[str, Any]]) -> str:
    fig, ax = _subplots((7, 3.2))
    drawn = False
    for i, run in enumerate(runs):
        start = run["started_at"]
        batches = [b for b in run.get("batches", []) if b.get("instances", 0) > 0]
        if not batches:
            continue
        minutes = [(b["finished_at"] - start) / 60 for b in batches]
        total = 0
        cumulative = []
        for b in batches:
            total += b["instances"]
            cumulative.append(total)
        ax.step(minutes, cumulative, where="post", label=f"run {i + 1}")
        drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run log", ha="center", va="center")
    ax.set_title("throughput: instances processed over each run")
    ax.set_xlabel("minutes since the run started")
    ax.set_ylabel("instances (cumulative)")
    return _svg(fig)


def read_runs(store: ObjectStore, prefix: str) -> list[dict[str, Any]]:
    """The release's run logs (``<prefix>/runs/*.json``), oldest first.

    Each is a dict with ``started_at`` (epoch seconds), ``work_seconds``, ``peak_rss_mib`` and
    ``batches`` (each with ``instances`` and ``finished_at``, epoch seconds), as the flow writes
    them.
    """
    runs = []
    for info in store.list(f"{prefix}/runs/"):
        if info.key.endswith(".json"):
            runs.append(json.loads(store.get_bytes(info.key)))
    return sorted(runs, key=lambda r: r["started_at"])


def subjects_by_site_count(manifest: pd.DataFrame, parts: list[ManifestPart]) -> dict[int, int]:
    """How many subjects have studies from 1, 2, ... sites (keyed site tokens, never names).

    ``manifest`` has one row per object (``research_id``, ``study_uid``...); ``parts`` are the
    manifest parts (``study`` and its keyed ``site`` token). Returns {number of sites: number
    of subjects}, sorted by number of sites; studies without a site token are not counted.
    """
    site_of = {p["study"]: p["site"] for p in parts if p.get("study") and p.get("site")}
    sites: dict[str, set[str]] = defaultdict(set)
    for research_id, study_uid in manifest[["research_id", "study_uid"]].drop_duplicates().values:
        token = site_of.get(str(study_uid))
        if token:
            sites[str(research_id)].add(token)
    return dict(sorted(Counter(len(s) for s in sites.values()).items()))


def render_report(
    summary: ReleaseSummary,
    manifest: pd.DataFrame,
    parts: list[ManifestPart],
    runs: list[dict[str, Any]],
    study_years: Mapping[str, str] | None = None,
) -> str:
    """The report as one HTML page (counts and inline SVG plots only).

    ``summary`` is the release summary (counts; ``excluded`` and ``quarantined`` as
    {reason: instances}, except the selection's exclusions, which ``excluded`` adds in studies
    and ``excluded_studies`` holds; ``studies_failed`` as {reason: studies}, ``bytes_exported`` in
    bytes); ``manifest`` one row per object; ``parts`` the manifest parts; ``runs`` as
    :func:`read_runs` gives them; ``study_years`` {study UID: original year}, computed on
    premises, else the exported (shifted) dates' years
    are used. Throughput is instances per second of workers' own time; memory in MiB.
    """
    frame = manifest.copy()
    if study_years:
        frame["year"] = frame["study_uid"].map(study_years).fillna("unknown")
    else:  # no on-premises years given: fall back to the (shifted) exported dates
        frame["year"] = frame["study_date"].astype(str).str[:4].replace("", "unknown")
    instances = frame.pivot_table(
        index="year", columns="modality", values="key", aggfunc="count", fill_value=0
    )
    studies = frame.drop_duplicates("study_uid").pivot_table(
        index="year", columns="modality", values="key", aggfunc="count", fill_value=0
    )
    distribution = subjects_by_site_count(manifest, parts)
    return _render(summary, instances, studies, distribution, runs)


def _render(
    summary: ReleaseSummary,
    instances: pd.DataFrame,
    studies: pd.DataFrame,
    distribution: Mapping[int, int],
    runs: list[dict[str, Any]],
) -> str:
    # Selection excludes whole studies; the work excludes instances: report each in its unit.
    whole = dict(summary.get("excluded_studies", {}))
    excluded = {
        reason: n - min(whole.get(reason, 0), n)
        for reason, n in dict(summary.get("excluded", {})).items()
        if n - min(whole.get(reason, 0), n)
    }
    quarantined = dict(summary.get("quarantined", {}))
    total_work = sum(r.get("work_seconds", 0.0) for r in runs)
    total_fresh = sum(sum(b.get("instances", 0) for b in r.get("batches", [])) for r in runs)
    rate = f"{total_fresh / total_work:.1f}" if total_work else "n/a"
    peak = max((r.get("peak_rss_mib", 0.0) for r in runs), default=0.0)

    def row(name: str, value: object) -> str:
        return f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"

    rows = "".join(
        [
            row("studies selected", summary.get("studies_selected", "")),
            row("studies exported", summary.get("studies_exported", "")),
            row("subjects", summary.get("subjects", "")),
            row("instances exported", summary.get("instances_exported", "")),
            row("bytes exported", f"{summary.get('bytes_exported', 0):,}"),
            row("studies excluded at selection", sum(whole.values())),
            row("instances excluded", sum(excluded.values())),
            row("instances quarantined (kept on premises)", sum(quarantined.values())),
            *[
                row(f"studies the archive could not deliver: {reason}", n)
                for reason, n in dict(summary.get("studies_failed", {})).items()
            ],
            row("runs (a resumed release has several)", len(runs)),
            row("instances/s per worker (ridl's own work)", rate),
            row("peak memory of a worker (MiB)", f"{peak:.0f}"),
        ]
    )
    title = f"Release {summary.get('project', '')}/{summary.get('release', '')}"
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        ("Studies per year and modality", _bar_by(studies, "studies", "studies", "studies")),
        (
            "Instances per year and modality",
            _bar_by(instances, "instances", "instances", "instances"),
        ),
        ("Exclusions by reason", _barh(excluded, "excluded instances", "#dd8452")),
        ("Quarantines by reason", _barh(quarantined, "quarantined instances", "#c44e52")),
        ("Subjects by number of sites", _sites_plot(distribution)),
        ("Throughput", _throughput_plot(runs)),
    ]
    by_year = pd.DataFrame(
        {"studies": studies.sum(axis=1), "instances": instances.sum(axis=1)}
    ).fillna(0)
    year_rows = "".join(
        f"<tr><th>{html.escape(str(year))}</th><td>{int(r.studies)}</td>"
        f"<td>{int(r.instances)}</td></tr>"
        for year, r in by_year.iterrows()
    )
    year_table = (
        "<table><tr><th>year</th><th>studies</th><th>instances</th></tr>" + year_rows + "</table>"
    )
    body = "".join(
        f'<section><h2>{html.escape(name)}</h2><div class="plot">{svg}</div></section>'
        for name, svg in sections
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.3em .6em;"
        "text-align:left}section{margin-top:2em}.plot svg{max-width:100%;height:auto}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Generated {generated}. Counts only: this page "
        "names no subject, site or study.</p>"
        f"<table>{rows}</table>{body}"
        f"<section><h2>Counts by year</h2>{year_table}</section></body></html>\n"
    )


def _pivot(counts: Mapping[tuple[str, str], int]) -> pd.DataFrame:
    """{(year, modality): n} as the frame pivot_table gives: years by modalities, 0 filled."""
    if not counts:
        return pd.DataFrame()
    series = pd.Series(dict(counts), dtype="int64")
    series.index = series.index.set_names(["year", "modality"])
    return series.unstack("modality", fill_value=0).sort_index().sort_index(axis=1)


def streamed_counts(
    store: ObjectStore, prefix: str, study_years: Mapping[str, str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, int]]:
    """(instances, studies, subjects by number of sites) of a release, one partition at a time.

    ``instances`` and ``studies`` are frames of years by modalities (counts);
    ``study_years`` as for :func:`render_report` (else the partitions' counts by shifted year
    are used as they are, without reading a row). The distribution adds up the partitions'
    counts (a subject lies in one partition). Memory: one partition.
    """
    instances: Counter[tuple[str, str]] = Counter()
    studies: Counter[tuple[str, str]] = Counter()
    sites: Counter[int] = Counter()
    buckets = pt.dataset_buckets(store, prefix)
    for bucket in range(buckets):
        stats = pt.read_stats(store, prefix, bucket, buckets)
        if stats is None:
            raise FileNotFoundError(f"{prefix}/{pt.partition_keys(bucket, buckets).build}")
        for site_count, subjects in stats["sites_per_subject"].items():
            sites[int(site_count)] += subjects
        if not study_years:
            for key, n in stats["instances_by_year"].items():
                year, modality = key.split("|", 1)
                instances[(year, modality)] += n
            for key, n in stats["studies_by_year"].items():
                year, modality = key.split("|", 1)
                studies[(year, modality)] += n
            continue
        table = pt.read_partition(store, prefix, bucket, buckets)
        cells = table.group_by(["study_uid", "modality"]).aggregate([([], "count_all")])
        firsts = table.group_by("study_uid", use_threads=False).aggregate([("modality", "first")])
        del table  # Python touches a row per study (and modality), never per object
        for study, modality, n in zip(
            *(cells.column(c).to_pylist() for c in ("study_uid", "modality", "count_all")),
            strict=True,
        ):
            instances[(study_years.get(study) or "unknown", modality)] += n
        for study, modality in zip(
            *(firsts.column(c).to_pylist() for c in ("study_uid", "modality_first")), strict=True
        ):  # a study counts under the modality of its first object by key
            studies[(study_years.get(study) or "unknown", modality)] += 1
    return _pivot(instances), _pivot(studies), dict(sorted(sites.items()))


def write_report(
    store: ObjectStore, prefix: str, study_years: Mapping[str, str] | None = None
) -> str:
    """Render the report from the release's files in ``store`` and keep it there.

    Counts are added up partition by partition (:func:`streamed_counts`), so memory does not
    grow with the release's objects; ``study_years`` itself is a mapping of every study (about
    150 bytes a study, held by the flow beside the selection it already holds), looked up once
    per study, never per object.

    ``prefix`` is ``<project>/<release>``; ``study_years`` as for :func:`render_report`.
    Returns the key the page was written to (:func:`report_key`).

    Raises:
        FileNotFoundError: the release summary is not in the store yet.
    """
    summary = read_summary(store, prefix)
    instances, studies, distribution = streamed_counts(store, prefix, study_years)
    page = _render(summary, instances, studies, distribution, read_runs(store, prefix))
    key = report_key(prefix)
    store.put_bytes(key, page.encode())
    return key
