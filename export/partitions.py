"""The partitioned manifest: a release of any size as a Parquet dataset of bounded partitions.

A release of 10^8 objects cannot be described by one file a researcher opens, nor built by a
process that holds every row. The manifest is therefore a hive-style Parquet dataset under the
release prefix, one partition per *bucket* of the research ID::

    manifest/bucket=007/part-0.parquet        the rows of one bucket (MANIFEST_COLUMNS, by key)
    partitions/bucket=007/SHA256SUMS          its objects and its Parquet file (run from the
                                              release folder: paths are relative to it)
    partitions/bucket=007/s5cmd-commands.txt  ``cp`` lines for exactly that partition
    manifest-build/bucket=007.json            counts of the partition (the summary and the
                                              report add these up; internal)

The bucket of a research ID is the first 32 bits of its SHA-256 modulo the number of buckets,
a power of two chosen from the release's object count so a partition holds at most
:func:`partition_rows` rows (default 500,000; ``RIDL_MANIFEST_PARTITION_ROWS``). A subject, and
so each of their studies, lies in exactly one partition: counts of subjects and studies add up
over partitions, and a cohort given by research IDs needs only their buckets. The dataset reads
as one table with pyarrow.dataset, pandas, Polars or DuckDB
(``read_parquet('manifest/**/*.parquet', hive_partitioning=true)``).

Building is streaming: the parts are read once, each row appended to one of :data:`SHARDS`
local spill files (by the same hash), and each partition is then written from its shards alone,
so memory is bounded by one partition, never by the release. A partition is written whole
(Parquet first, its counts last) and skipped on a rerun when its counts record the same parts
digest: a build killed half-way resumes to the same bytes.

Cohort queries (``ridl pull --where``, ``ridl access grant --where``) are parsed here by
:func:`parse_where` into a pyarrow expression: a small SQL subset evaluated locally on each
partition, so no query engine is needed on either side.

Engines floor (``export/``): used by :mod:`export.manifest` (build), :mod:`export.release`
(publication), :mod:`export.report`, :mod:`export.access` and :mod:`export.pull`.
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from export.store import ObjectStore
from ridl.errors import ScopeError

PARTITION_ROWS_ENV = "RIDL_MANIFEST_PARTITION_ROWS"
SMALL_RELEASE_ENV = "RIDL_SMALL_RELEASE_OBJECTS"
DEFAULT_PARTITION_ROWS = 500_000
DEFAULT_SMALL_RELEASE = 100_000
SHARDS = 4096  # spill files; the number of buckets divides it (both are powers of two)
DATASET = "manifest"
CHECKS = "partitions"
BUILD = "manifest-build"
PART_FILE = "part-0.parquet"
SUMS = "SHA256SUMS"
COMMANDS = "s5cmd-commands.txt"
ROW_GROUP = 100_000
COLUMNS = [
    "key",
    "size",
    "sha256",
    "research_id",
    "study_uid",
    "series_uid",
    "sop_uid",
    "sop_class_uid",
    "modality",
    "study_date",
]
SCHEMA = pa.schema(
    [(c, pa.int64() if c == "size" else pa.string()) for c in COLUMNS]
)  # the manifest's columns (MANIFEST_COLUMNS of export.manifest)
_SPILL_COLUMNS = [*COLUMNS, "site"]
_FLUSH_ROWS = 50_000
_ROW_VALUES = operator.itemgetter(*COLUMNS)
_LINE = "\t".join(["%s"] * len(COLUMNS))


def partition_rows() -> int:
    """Most rows a partition holds: ``RIDL_MANIFEST_PARTITION_ROWS`` or 500,000 (at least 1).

    Raises:
        ScopeError: the setting is not a positive integer.
    """
    raw = os.environ.get(PARTITION_ROWS_ENV, "")
    if not raw:
        return DEFAULT_PARTITION_ROWS
    if not raw.isdigit() or int(raw) < 1:
        raise ScopeError(PARTITION_ROWS_ENV, "give a positive number of rows per partition")
    return int(raw)


def small_release_limit() -> int:
    """Objects up to which a release also keeps today's single files (manifest.csv,
    manifest.parquet, whole-release SHA256SUMS and s5cmd commands, the object list in
    manifest.json): ``RIDL_SMALL_RELEASE_OBJECTS`` or 100,000.

    Raises:
        ScopeError: the setting is not a non-negative integer.
    """
    raw = os.environ.get(SMALL_RELEASE_ENV, "")
    if not raw:
        return DEFAULT_SMALL_RELEASE
    if not raw.isdigit():
        raise ScopeError(SMALL_RELEASE_ENV, "give a number of objects (0: always partitioned)")
    return int(raw)


def bucket_count(objects: int, rows: int | None = None) -> int:
    """Buckets for ``objects`` rows: the least power of two giving at most ``rows`` a bucket
    (default :func:`partition_rows`), at least 1 and at most :data:`SHARDS`."""
    rows = rows or partition_rows()
    count = 1
    while count < SHARDS and count * rows < objects:
        count *= 2
    return count


def research_hash(research_id: str) -> int:
    """The first 32 bits of the research ID's SHA-256, as an unsigned integer."""
    return int.from_bytes(hashlib.sha256(research_id.encode()).digest()[:4], "big")


def bucket_of(research_id: str, buckets: int) -> int:
    """The partition (0 .. buckets-1) that holds a research ID's rows."""
    return research_hash(research_id) % buckets


def bucket_name(bucket: int, buckets: int) -> str:
    """``bucket=NNN``: zero-padded to at least three digits, so names sort as numbers."""
    return f"bucket={bucket:0{max(3, len(str(buckets - 1)))}d}"


@dataclass(frozen=True)
class PartitionKeys:
    """Paths of one partition's files, relative to the release prefix."""

    name: str
    parquet: str
    sums: str
    commands: str
    build: str


def partition_keys(bucket: int, buckets: int) -> PartitionKeys:
    """The relative paths of partition ``bucket`` of ``buckets`` (see the module doc)."""
    name = bucket_name(bucket, buckets)
    return PartitionKeys(
        name=name,
        parquet=f"{DATASET}/{name}/{PART_FILE}",
        sums=f"{CHECKS}/{name}/{SUMS}",
        commands=f"{CHECKS}/{name}/{COMMANDS}",
        build=f"{BUILD}/{name}.json",
    )


class PartitionStats(TypedDict):
    """Counts of one partition (``manifest-build/bucket=NNN.json``), what the summary and the
    report add up: rows, bytes, subjects, studies, instances by modality, studies and instances
    by (shifted) study year and modality (``"YYYY|MOD"``), subjects by number of sites; with the
    parts digest and bucket count it was built under, the Parquet file's SHA-256 and size."""

    bucket: int
    buckets: int
    parts_digest: str
    rows: int
    bytes: int
    subjects: int
    studies: int
    by_modality: dict[str, int]
    instances_by_year: dict[str, int]
    studies_by_year: dict[str, int]
    sites_per_subject: dict[str, int]
    sha256: str
    size: int


# --- building ----------------------------------------------------------------------------------


class Spill:
    """Rows appended to local shard files by research-ID hash, buffered a few thousand at a
    time, so memory stays flat whatever the number of rows."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self._buffer: dict[int, list[str]] = defaultdict(list)
        self._buffered = 0
        self._hashes: dict[str, int] = {}
        self.rows = 0

    def add(self, row: dict[str, Any], site: str) -> None:
        """Buffer one manifest row (an :class:`export.manifest.ObjectRow`; a missing column is
        spilled empty) with its site token."""
        self.add_rows([row], site)

    def add_rows(self, rows: Iterable[Mapping[str, Any]], site: str) -> None:
        """Buffer the rows of one manifest part (usually one research ID) with its site token.

        One hash per research ID and one formatting per row: the build's inner loop at 10^8
        rows.
        """
        rows = list(rows)
        if not rows:
            return
        line = _LINE + "\t" + site.replace("%", "%%")
        try:
            lines = [line % _ROW_VALUES(row) for row in rows]
        except KeyError:  # a part written before a column existed: that column spills empty
            lines = [line % tuple(row.get(c, "") for c in COLUMNS) for row in rows]
        first = rows[0]["research_id"]
        if all(row["research_id"] == first for row in rows):
            self._buffer[self._hash(str(first)) % SHARDS].extend(lines)
        else:
            for row, text in zip(rows, lines, strict=True):
                self._buffer[self._hash(str(row["research_id"])) % SHARDS].append(text)
        self._buffered += len(lines)
        self.rows += len(lines)
        if self._buffered >= _FLUSH_ROWS:
            self.flush()

    def _hash(self, research_id: str) -> int:
        h = self._hashes.get(research_id)
        if h is None:
            if len(self._hashes) > 100_000:
                self._hashes.clear()
            h = self._hashes[research_id] = research_hash(research_id)
        return h

    def flush(self) -> None:
        """Append the buffered rows to their shard files."""
        for shard, lines in self._buffer.items():
            with open(self.folder / f"{shard:04d}.tsv", "a") as handle:
                handle.write("\n".join(lines) + "\n")
        self._buffer.clear()
        self._buffered = 0

    def table(self, bucket: int, buckets: int) -> pa.Table:
        """The rows of one bucket (its shards), with ``site``, sorted by key."""
        self.flush()
        tables = []
        for shard in range(bucket, SHARDS, buckets):
            path = self.folder / f"{shard:04d}.tsv"
            if path.exists():
                tables.append(_read_tsv(path))
        if not tables:
            empty = SCHEMA.append(pa.field("site", pa.string()))
            return empty.empty_table()
        table = pa.concat_tables(tables)
        return table.sort_by("key")

    def close(self) -> None:
        """Remove the spill files."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_tsv(path: Path) -> pa.Table:
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=_SPILL_COLUMNS, use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={c: (pa.int64() if c == "size" else pa.string()) for c in _SPILL_COLUMNS},
            strings_can_be_null=False,
        ),
    )


def spill_folder(store: ObjectStore, prefix: str) -> Path:
    """A local folder for the spill of one release build (under the system temp folder)."""
    tag = hashlib.sha256(f"{store.url}|{prefix}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"ridl-manifest-{tag}"


def parquet_bytes(table: pa.Table) -> bytes:
    """A manifest table as Parquet bytes (row groups of :data:`ROW_GROUP` rows)."""
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, SCHEMA) as writer:
        writer.write_table(table.select(COLUMNS).cast(SCHEMA), row_group_size=ROW_GROUP)
    return sink.getvalue()


def partition_stats(
    table: pa.Table, bucket: int, buckets: int, digest: str, data: bytes
) -> PartitionStats:
    """Counts of one partition's rows (``table`` with ``site``; see :class:`PartitionStats`)."""
    year = pc.utf8_slice_codeunits(table.column("study_date"), 0, 4)
    year = pc.if_else(pc.equal(year, ""), "unknown", year)
    cells = pa.table({"year": year, "modality": table.column("modality")})
    by_year = _counted(cells.group_by(["year", "modality"]).aggregate([([], "count_all")]))
    first = pa.table(
        {"study": table.column("study_uid"), "year": year, "modality": table.column("modality")}
    )  # a study's year and modality: those of its first row by key
    per_study = first.group_by("study", use_threads=False).aggregate(
        [("year", "first"), ("modality", "first")]
    )
    studies_by_year = _counted(
        pa.table(
            {"year": per_study.column("year_first"), "modality": per_study.column("modality_first")}
        )
        .group_by(["year", "modality"])
        .aggregate([([], "count_all")])
    )
    sites = table.column("site") if "site" in table.column_names else None
    sites_count: Counter[str] = Counter()
    if sites is not None:
        named = pa.table({"rid": table.column("research_id"), "site": sites}).filter(
            pc.not_equal(sites, "")
        )
        per_subject = named.group_by("rid").aggregate([("site", "count_distinct")])
        sites_count.update(str(n) for n in per_subject.column("site_count_distinct").to_pylist())
    modalities = pc.value_counts(table.column("modality")).to_pylist()
    return PartitionStats(
        bucket=bucket,
        buckets=buckets,
        parts_digest=digest,
        rows=table.num_rows,
        bytes=int(pc.sum(table.column("size")).as_py() or 0),
        subjects=int(pc.count_distinct(table.column("research_id")).as_py()),
        studies=per_study.num_rows,
        by_modality=dict(sorted((m["values"], m["counts"]) for m in modalities)),
        instances_by_year=by_year,
        studies_by_year=studies_by_year,
        sites_per_subject=dict(sorted(sites_count.items(), key=lambda kv: int(kv[0]))),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def _counted(groups: pa.Table) -> dict[str, int]:
    """``{"YYYY|MOD": n}`` from a (year, modality, count_all) grouping, sorted by cell."""
    cells = zip(
        groups.column("year").to_pylist(),
        groups.column("modality").to_pylist(),
        groups.column("count_all").to_pylist(),
        strict=True,
    )
    return dict(sorted((f"{y}|{m}", int(n)) for y, m, n in cells))


def read_stats(store: ObjectStore, prefix: str, bucket: int, buckets: int) -> PartitionStats | None:
    """A partition's counts as the build wrote them, or None when it has none."""
    key = f"{prefix}/{partition_keys(bucket, buckets).build}"
    if not store.exists(key):
        return None
    return cast(PartitionStats, json.loads(store.get_bytes(key)))


def write_partitions(
    store: ObjectStore, prefix: str, spill: Spill, buckets: int, digest: str
) -> list[PartitionStats]:
    """Write each partition's Parquet file and counts from ``spill``; skip finished ones.

    A partition whose counts record ``digest`` and ``buckets`` and whose Parquet file is there
    is kept as it is (a resumed build); others are written Parquet first, counts last. Files of
    an earlier build with another number of buckets are removed. Returns the counts by bucket.
    """
    keep = {f"{prefix}/{partition_keys(b, buckets).parquet}" for b in range(buckets)}
    keep |= {f"{prefix}/{partition_keys(b, buckets).build}" for b in range(buckets)}
    for folder in (DATASET, BUILD, CHECKS):
        for info in store.list(f"{prefix}/{folder}/"):
            if info.key not in keep:
                store.delete(info.key)
    out: list[PartitionStats] = []
    for bucket in range(buckets):
        keys = partition_keys(bucket, buckets)
        stats = read_stats(store, prefix, bucket, buckets)
        if (
            stats is not None
            and stats["parts_digest"] == digest
            and stats["buckets"] == buckets
            and store.exists(f"{prefix}/{keys.parquet}")
        ):
            out.append(stats)
            continue
        table = spill.table(bucket, buckets)
        data = parquet_bytes(table)
        store.put_bytes(f"{prefix}/{keys.parquet}", data)
        stats = partition_stats(table, bucket, buckets, digest, data)
        del table
        store.put_bytes(f"{prefix}/{keys.build}", json.dumps(stats, sort_keys=True).encode())
        out.append(stats)
    return out


def dataset_buckets(store: ObjectStore, prefix: str) -> int:
    """The number of buckets of the release's built dataset (0 when there is none)."""
    for info in store.list(f"{prefix}/{BUILD}/"):
        if info.key.endswith(".json"):
            return int(json.loads(store.get_bytes(info.key))["buckets"])
    return 0


def read_partition(store: ObjectStore, prefix: str, bucket: int, buckets: int) -> pa.Table:
    """One partition's rows (:data:`COLUMNS`, sorted by key).

    Raises:
        FileNotFoundError: the partition is not in the store.
    """
    data = store.get_bytes(f"{prefix}/{partition_keys(bucket, buckets).parquet}")
    return pq.read_table(io.BytesIO(data))


def iter_partitions(store: ObjectStore, prefix: str) -> Iterator[tuple[int, int, pa.Table]]:
    """(bucket, buckets, rows) for each partition of the built dataset, in bucket order."""
    buckets = dataset_buckets(store, prefix)
    for bucket in range(buckets):
        yield bucket, buckets, read_partition(store, prefix, bucket, buckets)


# --- cohort queries ----------------------------------------------------------------------------

QUERY_COLUMNS = [*COLUMNS, "study_year", "bucket"]
_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>'(?:[^']|'')*')|(?P<op><=|>=|<>|!=|=|<|>|\(|\)|,)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_KEYWORDS = {"AND", "OR", "NOT", "IN", "IS", "NULL", "BETWEEN"}
_KIND_WORDS = {  # what the parser wanted, in a user's words
    "word": "a column name or keyword",
    "op": "an operator (= != <> < <= > >=) or a parenthesis",
    "num": "a number",
    "str": "a 'quoted' text",
}
NUMBER_COLUMNS = frozenset({"size", "study_year", "bucket"})  # int64; the others are text
MAX_NESTING = 100  # parentheses and NOTs inside one another
_INT64 = (-(2**63), 2**63 - 1)
_EXAMPLES = {"size": "size > 1000000", "study_year": "study_year >= 2018", "bucket": "bucket = 3"}


def with_query_columns(table: pa.Table, bucket: int | None = None) -> pa.Table:
    """The table with ``study_year`` (int, from the de-identified study date; null when
    there is none) and, when ``bucket`` is given, ``bucket`` appended."""
    dates = table.column("study_date")
    year_text = pc.utf8_slice_codeunits(dates, 0, 4)
    valid = pc.match_substring_regex(year_text, r"^\d{4}$")
    years = pc.if_else(valid, year_text, pa.scalar(None, pa.string())).cast(pa.int64())
    table = table.append_column("study_year", years)
    if bucket is not None:
        table = table.append_column("bucket", pa.array([bucket] * table.num_rows, pa.int64()))
    return table


def parse_where(text: str) -> pc.Expression:
    """A cohort query as a pyarrow expression over :data:`QUERY_COLUMNS`.

    The SQL subset: comparisons (``= != <> < <= > >=``) of a column with a number or a
    'quoted string', ``col [NOT] IN (v, ...)``, ``col BETWEEN a AND b``, ``col IS [NOT] NULL``,
    joined with AND, OR, NOT and parentheses (at most :data:`MAX_NESTING` deep); keywords in
    any case. Example: ``modality = 'CT' AND study_year >= 2018``. Numbers are 64-bit integers
    (or decimals); ``size``, ``study_year`` and ``bucket`` are numbers, the other columns text,
    and each value is checked against its column's type here (:func:`check_where`), before
    anything is fetched.

    Raises:
        ScopeError: the text is not in that subset, names an unknown column, nests too deep,
            gives a number outside 64 bits, or compares a column with a value of the other
            type (``--where``).
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ScopeError("--where", f"cannot read the query at character {pos + 1}")
        kind = str(match.lastgroup)
        value = match.group(kind)
        if kind == "word" and value.upper() in _KEYWORDS:
            kind, value = "kw", value.upper()
        tokens.append((kind, value))
        pos = match.end()
    parser = _Parser(tokens)
    expr = parser.disjunction()
    if parser.i != len(tokens):
        raise ScopeError("--where", f"unexpected {tokens[parser.i][1]!r} in the query")
    check_where(expr)
    return expr


def check_where(expr: pc.Expression) -> None:
    """Check a cohort query against the query columns' types by running it on an empty table
    (:data:`SCHEMA` with ``study_year`` and ``bucket``): nothing is read or fetched.

    Raises:
        ScopeError: the query does not fit the columns' types (``--where``).
    """
    try:
        with_query_columns(SCHEMA.empty_table(), 0).filter(expr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise ScopeError(
            "--where",
            "the query compares a column with a value of the other type; size, study_year and "
            "bucket are numbers, the other columns text ('quoted')",
        ) from None


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        tok = self.peek()
        if tok[0] != kind or (value is not None and tok[1] != value):
            want = repr(value) if value else _KIND_WORDS.get(kind, kind)
            found = repr(tok[1]) if tok[1] else "the end of the query"
            raise ScopeError("--where", f"expected {want} but found {found}")
        self.i += 1
        return tok[1]

    def disjunction(self) -> pc.Expression:
        expr = self.conjunction()
        while self.peek() == ("kw", "OR"):
            self.i += 1
            expr = expr | self.conjunction()
        return expr

    def conjunction(self) -> pc.Expression:
        expr = self.negation()
        while self.peek() == ("kw", "AND"):
            self.i += 1
            expr = expr & self.negation()
        return expr

    def negation(self) -> pc.Expression:
        if self.peek() in (("kw", "NOT"), ("op", "(")):
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise ScopeError(
                    "--where",
                    f"the query nests parentheses or NOT more than {MAX_NESTING} deep; "
                    "write it with fewer levels",
                )
            try:
                if self.peek() == ("kw", "NOT"):
                    self.i += 1
                    return ~self.negation()
                self.i += 1
                expr = self.disjunction()
                self.take("op", ")")
                return expr
            finally:
                self.depth -= 1
        return self.comparison()

    def literal(self, column: str = "") -> Any:
        kind, value = self.peek()
        if kind == "num":
            self.i += 1
            number = float(value) if "." in value else int(value)
            if isinstance(number, int) and not _INT64[0] <= number <= _INT64[1]:
                raise ScopeError(
                    "--where",
                    f"the number {value} is out of range (numbers go from {_INT64[0]:,} to "
                    f"{_INT64[1]:,})",
                )
            if column and column not in NUMBER_COLUMNS:
                raise ScopeError(
                    "--where",
                    f"{column} is a text column but the query compares it with the number "
                    f"{value}; quote the value: {column} = '{value}'",
                )
            return number
        if kind == "str":
            self.i += 1
            text = value[1:-1].replace("''", "'")
            if column in NUMBER_COLUMNS:
                raise ScopeError(
                    "--where",
                    f"{column} is a number column but the query compares it with the text "
                    f"{value}; give a number without quotes, e.g. {_EXAMPLES[column]}",
                )
            return text
        found = repr(value) if value else "the end of the query"
        raise ScopeError("--where", f"expected a number or a 'quoted' text but found {found}")

    def comparison(self) -> pc.Expression:
        name = self.take("word")
        if name not in QUERY_COLUMNS:
            raise ScopeError(
                "--where", f"unknown column {name!r}; columns: {', '.join(QUERY_COLUMNS)}"
            )
        field = pc.field(name)
        kind, value = self.peek()
        if kind == "kw" and value == "IS":
            self.i += 1
            negated = self.peek() == ("kw", "NOT")
            self.i += int(negated)
            self.take("kw", "NULL")
            return ~field.is_null() if negated else field.is_null()
        negated = (kind, value) == ("kw", "NOT")
        if negated:
            self.i += 1
            kind, value = self.peek()
        if kind == "kw" and value == "IN":
            self.i += 1
            self.take("op", "(")
            values = [self.literal(name)]
            while self.peek() == ("op", ","):
                self.i += 1
                values.append(self.literal(name))
            self.take("op", ")")
            expr = field.isin(values)
            return ~expr if negated else expr
        if kind == "kw" and value == "BETWEEN":
            self.i += 1
            low = self.literal(name)
            self.take("kw", "AND")
            high = self.literal(name)
            expr = (field >= low) & (field <= high)
            return ~expr if negated else expr
        if negated:
            raise ScopeError("--where", "NOT goes before IN or BETWEEN, or before a comparison")
        op = self.take("op")
        right = self.literal(name)
        ops = {
            "=": field == right,
            "!=": field != right,
            "<>": field != right,
            "<": field < right,
            "<=": field <= right,
            ">": field > right,
            ">=": field >= right,
        }
        if op not in ops:
            raise ScopeError("--where", f"unknown comparison {op!r}")
        return ops[op]


def select_rows(table: pa.Table, where: pc.Expression | None, bucket: int) -> pa.Table:
    """The rows of one partition that a cohort query selects (all when ``where`` is None),
    :data:`COLUMNS` only.

    Raises:
        ScopeError: the query compares a column with a value of the wrong type (``--where``).
    """
    if where is None:
        return table
    try:
        selected = with_query_columns(table, bucket).filter(where)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ScopeError("--where", f"the query does not fit the columns' types: {exc}") from None
    return selected.select(COLUMNS)


def read_subjects(path: Path) -> set[str]:
    """Research IDs from a CSV file: its ``research_id`` column, else its first column.

    Raises:
        ScopeError: the file does not exist, is a folder, cannot be read, is not UTF-8 text,
            or lists no research ID (``--subjects``).
    """
    import csv

    found: set[str] = set()
    if not path.exists():
        raise ScopeError("--subjects", f"{path} does not exist; give a CSV file that exists")
    if path.is_dir():
        raise ScopeError("--subjects", f"{path} is a folder; give a CSV file of research IDs")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            column = header.index("research_id") if "research_id" in header else 0
            if "research_id" not in header and header and header[0].strip():
                found.add(header[0].strip())
            for row in reader:
                if len(row) > column and row[column].strip():
                    found.add(row[column].strip())
    except UnicodeDecodeError:
        raise ScopeError(
            "--subjects",
            f"{path} is not UTF-8 text; save it as a UTF-8 text CSV (one research ID a line, "
            "or a research_id column)",
        ) from None
    except OSError as exc:
        raise ScopeError(
            "--subjects",
            f"cannot read {path} ({exc.strerror or 'read error'}); give a readable CSV file",
        ) from None
    if not found:
        raise ScopeError("--subjects", f"{path.name} lists no research ID")
    return found


def subject_buckets(research_ids: Iterable[str], buckets: int) -> dict[int, set[str]]:
    """{bucket: research IDs} for a cohort given by research IDs."""
    out: dict[int, set[str]] = defaultdict(set)
    for rid in research_ids:
        out[bucket_of(rid, buckets)].add(rid)
    return dict(out)
