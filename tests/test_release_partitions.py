"""A partitioned release: built streaming, published with per-partition checks, pulled whole,
by cohort, per partition with s5cmd and sha256sum, and resumed after a kill."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from export import partitions as pt
from export.local import LocalStore
from export.manifest import ObjectRow, build_manifest, study_part, write_part
from export.pull import pull
from export.release import publish_release
from export.signing import SignatureError
from export.store import ObjectStore
from ridl.errors import ScopeError
from ridl.projects import Project
from tests.conftest import require_program
from tests.export_support import make_bucket, s3_url
from tests.s3server import MotoServer

MODALITIES = ["CT", "MR", "CR", "US"]


def _fill(store: ObjectStore, project: str, subjects: int = 12) -> list[ObjectRow]:
    """Synthetic studies (two per subject, three objects each) with their objects stored."""
    rows: list[ObjectRow] = []
    for s in range(subjects):
        rid = f"RS-{s:04d}"
        for st in range(2):
            study = f"2.25.{s}{st}"
            modality = MODALITIES[(s + st) % len(MODALITIES)]
            objects: list[ObjectRow] = []
            for i in range(3):
                key = f"{project}/r1/{rid}/{study}/{study}.1/{study}.1.{i}.dcm"
                data = f"object {key}".encode()
                store.put_bytes(key, data)
                objects.append(
                    ObjectRow(
                        key=key,
                        size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                        research_id=rid,
                        study_uid=study,
                        series_uid=f"{study}.1",
                        sop_uid=f"{study}.1.{i}",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        modality=modality,
                        study_date=f"{2015 + s % 6}0101",
                        study_description="",
                    )
                )
            part = study_part(study, f"site{s % 2}", objects, excluded={}, quarantined={})
            write_part(store, f"{project}/r1/parts/{study}.json", part)
            rows += objects
    return rows


@pytest.fixture
def small_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pt.PARTITION_ROWS_ENV, "20")
    monkeypatch.setenv(pt.SMALL_RELEASE_ENV, "0")  # as a large release: no object list


def _publish(store: ObjectStore, project: Project) -> dict[str, Any]:
    build_manifest(store, f"{project.id}/r1", 24, project.id, "r1")
    publish_release(store, project.id, "r1", recipe_sha256="0" * 64)
    return json.loads(store.get_bytes(f"{project.id}/r1/manifest.json"))


def test_partitioned_release_reads_as_one_table_and_pulls_whole_and_by_cohort(
    small_partitions: None, project: Project, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    rows = _fill(store, project.id)
    manifest = _publish(store, project)
    assert "objects" not in manifest and manifest["counts"]["objects"] == len(rows)
    info = manifest["partitions"]
    assert info["buckets"] == 4 and len(info["list"]) == 4
    assert not store.exists(f"{project.id}/r1/manifest.csv")
    root = tmp_path / "store" / project.id / "r1"
    table = ds.dataset(root / "manifest", format="parquet", partitioning="hive").to_table()
    assert sorted(table.column("key").to_pylist()) == sorted(r["key"] for r in rows)
    assert len(set(table.column("bucket").to_pylist())) > 1
    for row in table.to_pylist():  # a subject lies in the bucket of its research ID
        assert row["bucket"] == pt.bucket_of(row["research_id"], 4)

    whole = pull(root / "manifest.json", tmp_path / "whole")
    assert not whole.failed and whole.fetched == whole.files
    for row in rows:
        assert (tmp_path / "whole" / row["key"].split("/", 2)[2]).exists()
    sha256sum = require_program("sha256sum")
    for entry in info["list"]:  # each partition's sums, run from the release folder
        sums = f"partitions/{entry['name']}/SHA256SUMS"
        done = subprocess.run(
            [sha256sum, "-c", "--strict", sums], cwd=tmp_path / "whole", capture_output=True
        )
        assert done.returncode == 0, done.stdout

    ct = pull(
        root / "manifest.json", tmp_path / "ct", where="modality = 'CT' AND study_year >= 2016"
    )
    got = sorted(p.name for p in (tmp_path / "ct").rglob("*.dcm"))
    want = sorted(
        r["key"].rsplit("/", 1)[1]
        for r in rows
        if r["modality"] == "CT" and int(r["study_date"][:4]) >= 2016
    )
    assert got == want and not ct.failed

    one = {rows[0]["research_id"]}
    by_subject = pull(root / "manifest.json", tmp_path / "one", subjects=one, layout="dicom")
    assert by_subject.fetched == 6 + len(manifest["files"]) + 1  # its objects, files, partition
    assert {p.parts[-4] for p in (tmp_path / "one").rglob("*.dcm")} == one

    with pytest.raises(ScopeError):
        pull(root / "manifest.json", tmp_path / "bad", where="nope = 1")


def test_a_tampered_partition_is_refused(
    small_partitions: None, project: Project, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    _fill(store, project.id)
    manifest = _publish(store, project)
    root = tmp_path / "store" / project.id / "r1"
    # The Parquet file of a partition changed in storage: its checksum in the signed index fails.
    entry = max(manifest["partitions"]["list"], key=lambda e: e["rows"])
    parquet = root / "manifest" / entry["name"] / "part-0.parquet"
    original = parquet.read_bytes()
    parquet.write_bytes(original + b"x")
    report = pull(root / "manifest.json", tmp_path / "dest", partitions=[entry["bucket"]])
    assert list(report.failed) == [f"manifest/{entry['name']}/part-0.parquet"]
    assert not list((tmp_path / "dest").rglob("*.dcm"))
    parquet.write_bytes(original)
    # The index changed (a partition's hash replaced): the signature check fails.
    text = (root / "manifest.json").read_text()
    sha = entry["files"][f"manifest/{entry['name']}/part-0.parquet"]["sha256"]
    (root / "manifest.json").write_text(text.replace(sha, hashlib.sha256(b"x").hexdigest()))
    with pytest.raises(SignatureError):
        pull(root / "manifest.json", tmp_path / "dest2")


class _Killed(Exception):
    pass


class _Dying(LocalStore):
    """A store whose process is killed after ``budget`` writes."""

    def __init__(self, root: Path, budget: int) -> None:
        super().__init__(root)
        self.budget = budget

    def put_bytes(self, key: str, data: bytes) -> None:
        if self.budget == 0:
            raise _Killed(key)
        self.budget -= 1
        super().put_bytes(key, data)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_kill_during_the_end_stages_resumes_to_the_same_bytes(
    small_partitions: None, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    now = dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    whole = LocalStore(tmp_path / "a")
    _fill(whole, project.id)
    build_manifest(whole, f"{project.id}/r1", 24, project.id, "r1")
    publish_release(whole, project.id, "r1", recipe_sha256="0" * 64, now=now)

    killed = LocalStore(tmp_path / "b")
    _fill(killed, project.id)
    for budget in (3, 6):  # killed in the manifest build, then in publication's partitions
        dying = _Dying(tmp_path / "b", budget)
        with pytest.raises(_Killed):
            build_manifest(dying, f"{project.id}/r1", 24, project.id, "r1")
            publish_release(dying, project.id, "r1", recipe_sha256="0" * 64, now=now)
    build_manifest(killed, f"{project.id}/r1", 24, project.id, "r1")
    publish_release(killed, project.id, "r1", recipe_sha256="0" * 64, now=now)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a.keys() == b.keys()
    index = f"{project.id}/r1/manifest.json"  # differs only in where the store is
    signed = {index, f"{project.id}/r1/manifest.json.sig"}
    assert {k for k in a if a[k] != b[k]} - signed == set()
    ja, jb = json.loads(a[index]), json.loads(b[index])
    assert ja.pop("storage") != jb.pop("storage") and ja == jb


def test_s5cmd_fetches_one_partition_that_checks(
    small_partitions: None, s3_env: MotoServer, project: Project, tmp_path: Path
) -> None:
    store = make_bucket(s3_url(s3_env.url))
    rows = _fill(store, project.id)
    manifest = _publish(store, project)
    entry = max(manifest["partitions"]["list"], key=lambda e: e["rows"])
    prefix = f"{project.id}/r1"
    folder = tmp_path / "s5cmd"
    folder.mkdir()
    commands = f"partitions/{entry['name']}/s5cmd-commands.txt"
    (folder / "commands.txt").write_bytes(store.get_bytes(f"{prefix}/{commands}"))
    s5cmd = require_program("s5cmd")
    done = subprocess.run(
        [s5cmd, "--endpoint-url", s3_env.url, "run", "commands.txt"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    sha256sum = require_program("sha256sum")
    done = subprocess.run(
        [sha256sum, "-c", "--strict", f"partitions/{entry['name']}/SHA256SUMS"],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    mine = {
        r["key"].split("/", 2)[2]
        for r in rows
        if pt.bucket_of(r["research_id"], 4) == entry["bucket"]
    }
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*.dcm")} == mine


def test_where_queries_parse_to_the_rows_asked_for() -> None:
    import pyarrow as pa

    table = pa.table(
        {c: pa.array([], pa.int64() if c == "size" else pa.string()) for c in pt.COLUMNS}
    )
    for text in (
        "modality = 'CT' AND study_year >= 2018",
        "modality IN ('CT', 'MR') OR NOT study_year BETWEEN 2000 AND 2010",
        "study_date IS NOT NULL and size > 10",
    ):
        pt.select_rows(table, pt.parse_where(text), 0)
    for bad in ("modality = ", "modality == 'CT'", "x = 1", "modality = 'CT' extra"):
        with pytest.raises(ScopeError):
            pt.parse_where(bad)


def test_parts_read_ahead_build_the_same_bytes_and_a_vanished_part_is_named(
    small_partitions: None, project: Project, tmp_path: Path
) -> None:
    """The parts pass with reads in flight (as on S3) keeps the store's order: same digest,
    same partitions, same counts as one read at a time; a part gone when read is an error."""
    from export.store import ObjectInfo, read_in_order

    serial, ahead = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    ahead.read_ahead = 4  # type: ignore[misc]
    for store in (serial, ahead):
        _fill(store, project.id)
        build_manifest(store, f"{project.id}/r1", 24, project.id, "r1")
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b and any(k.endswith("bucket=000.json") for k in a)

    listing = list(ahead.list(f"{project.id}/r1/parts/"))
    got = [info.key for info, _ in read_in_order(ahead, listing, read_ahead=3)]
    assert got == [info.key for info in listing]
    gone = [*listing[:5], ObjectInfo(f"{project.id}/r1/parts/gone.json", 1), *listing[5:]]
    with pytest.raises(FileNotFoundError):
        for _ in read_in_order(ahead, gone, read_ahead=3):
            pass


def test_the_run_summary_names_files_that_exist_for_a_large_release(
    small_partitions: None, project: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lines after a run's table point at the manifest and summary.json as stored (a large
    release's manifest is its dataset folder; its summary.json is at the release's top)."""
    from flows.cli import print_summary

    store = LocalStore(tmp_path / "lib")
    _fill(store, project.id)
    summary = build_manifest(store, f"{project.id}/r1", 24, project.id, "r1")
    print_summary(dict(summary), store.url)
    lines = capsys.readouterr().out.splitlines()
    paths = {
        line.split(":", 1)[0]: Path(line.split(":", 1)[1].strip())
        for line in lines
        if line.startswith(("manifest:", "summary:"))
    }
    assert paths["manifest"].is_dir() and any(paths["manifest"].glob("bucket=*/part-0.parquet"))
    assert paths["summary"].is_file(), paths["summary"]


def test_where_refuses_huge_numbers_deep_nesting_and_wrong_types_before_any_fetch(
    small_partitions: None, project: Project, tmp_path: Path
) -> None:
    """A number outside 64 bits, thousands of nested parentheses and a value of the other
    type are each one ScopeError from the parser, worded for a user; a pull refused so leaves
    no --dest behind."""
    with pytest.raises(ScopeError, match="out of range"):
        pt.parse_where("size > 99999999999999999999999")
    with pytest.raises(ScopeError, match="out of range"):
        pt.parse_where("size IN (1, -99999999999999999999999)")
    for deep in ("(" * 3000 + "size > 1" + ")" * 3000, "NOT " * 3000 + "size > 1"):
        with pytest.raises(ScopeError, match="deep"):
            pt.parse_where(deep)
    pt.parse_where("(" * 50 + "size > 1" + ")" * 50)  # reasonable nesting still reads
    for bad, words in (
        ("study_year >= 'abc'", "study_year is a number column"),
        ("size > 'big'", "size is a number column"),
        ("modality = 5", "modality is a text column"),
        ("bucket IN (1, 'x')", "bucket is a number column"),
        ("modality BETWEEN 1 AND 2", "modality is a text column"),
    ):
        with pytest.raises(ScopeError, match=words) as caught:
            pt.parse_where(bad)
        assert "kernel" not in str(caught.value)
    store = LocalStore(tmp_path / "store")
    _fill(store, project.id)
    _publish(store, project)
    root = tmp_path / "store" / project.id / "r1"
    for bad in ("study_year >= 'abc'", "size > 99999999999999999999999"):
        with pytest.raises(ScopeError):
            pull(root / "manifest.json", tmp_path / "typed", where=bad)
        assert not (tmp_path / "typed").exists()


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, list(args))


def test_a_cohort_that_selects_nothing_or_unknown_subjects_is_said(
    small_partitions: None, project: Project, tmp_path: Path
) -> None:
    """A cohort of no object is a notice and the summary counts the cohort's objects and files;
    research IDs not in the release are counted, and when none is, the pull stops before any
    object with DEST as it was."""
    store = LocalStore(tmp_path / "store")
    rows = _fill(store, project.id)
    _publish(store, project)
    manifest = str(tmp_path / "store" / project.id / "r1" / "manifest.json")

    report = pull(Path(manifest), tmp_path / "none", where="study_year BETWEEN 2018 AND 2016")
    assert report.selected == 0 and not report.failed
    result = _cli("pull", manifest, "--dest", str(tmp_path / "none2"), "--where", "bucket = 99")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "the query selected no object" in flat and "objects the cohort selects │ 0" in flat
    assert "files in the cohort" in flat and "files in release" not in flat

    ct = _cli("pull", manifest, "--dest", str(tmp_path / "ct"), "--where", "modality = 'CT'")
    want = sum(r["modality"] == "CT" for r in rows)
    assert f"objects the cohort selects │ {want}" in " ".join(ct.output.split())
    assert "selected no object" not in ct.output

    listed = tmp_path / "some.csv"
    listed.write_text(f"research_id\n{rows[0]['research_id']}\nRS-NOPE000000\n")
    some = pull(Path(manifest), tmp_path / "some", subjects=pt.read_subjects(listed))
    assert (some.subjects_listed, some.subjects_missing) == (2, 1)
    assert some.subjects_missing_examples == ["RS-NOPE000000"] and some.selected == 6
    result = _cli("pull", manifest, "--dest", str(tmp_path / "some2"), "--subjects", str(listed))
    assert result.exit_code == 0 and "1 of the 2 research IDs" in " ".join(result.output.split())

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("RS-NOPE000000\n rs-nope1 \n")
    result = _cli("pull", manifest, "--dest", str(tmp_path / "nobody"), "--subjects", str(unknown))
    assert result.exit_code != 0 and "none of the 2 research IDs" in result.output
    assert not (tmp_path / "nobody").exists(), "DEST as it was found"
    assert "Traceback" not in result.output


def test_subjects_files_that_cannot_be_read_are_one_error_line(tmp_path: Path) -> None:
    """A --subjects file that is missing, a folder or not UTF-8 is a ScopeError naming it and
    what to change, never a Python exception's name."""
    (tmp_path / "utf16.csv").write_bytes(b"\xff\xfe\x00R\x00S")
    for path, words in (
        (tmp_path / "nonexist.csv", "does not exist"),
        (tmp_path, "is a folder"),
        (tmp_path / "utf16.csv", "UTF-8"),
    ):
        with pytest.raises(ScopeError, match=words) as caught:
            pt.read_subjects(path)
        assert "Error" not in str(caught.value) and "--subjects" in str(caught.value)
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbfresearch_id\r\nRS-0001\r\n")
    assert pt.read_subjects(tmp_path / "excel.csv") == {"RS-0001"}


def test_a_partition_missing_from_storage_fails_alone_and_bars_are_one_pair(
    small_partitions: None, project: Project, tmp_path: Path
) -> None:
    """A partition's Parquet gone from the store is that partition failing (named, no server
    path), the other partitions are pulled and the CLI exits 1; progress is one files bar and
    one bytes bar for the whole pull."""
    import io

    from rich.console import Console

    store = LocalStore(tmp_path / "store")
    rows = _fill(store, project.id)
    _publish(store, project)
    root = tmp_path / "store" / project.id / "r1"
    gone = root / "manifest" / "bucket=000" / "part-0.parquet"
    gone.unlink()
    lost = {r["key"] for r in rows if pt.bucket_of(r["research_id"], 4) == 0}
    assert lost and len(lost) < len(rows)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=False, width=120)
    report = pull(root / "manifest.json", tmp_path / "most", where="size > 0", console=console)
    assert list(report.failed) == ["manifest/bucket=000/part-0.parquet"]
    message = report.failed["manifest/bucket=000/part-0.parquet"]
    assert message.startswith("partition bucket=000: its manifest file is not in storage")
    assert str(tmp_path) not in message
    assert report.selected == len(rows) - len(lost)
    got = {p.name for p in (tmp_path / "most").rglob("*.dcm")}
    assert got == {r["key"].rsplit("/", 1)[1] for r in rows if r["key"] not in lost}
    bars = [line.split()[0] for line in screen.getvalue().splitlines() if line.strip()]
    assert bars.count("files") == 1 and bars.count("bytes") == 1, screen.getvalue()
    result = _cli("pull", str(root / "manifest.json"), "--dest", str(tmp_path / "cli"))
    assert result.exit_code == 1 and "partition bucket=000" in result.output
    assert "FileNotFoundError" not in result.output and str(tmp_path) not in result.output
    # The only partition asked for cannot be read: that is said, not "check the query".
    alone = _cli(
        "pull", str(root / "manifest.json"), "--dest", str(tmp_path / "p0"), "--partition", "0"
    )
    assert alone.exit_code == 1 and "could not be read" in alone.output, alone.output
    assert "check the query" not in alone.output


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("1 = modality", "expected a column name"),
        ("modality LIKE 'C%'", "expected an operator"),
        ("modality =", "found the end of the query"),
        ("(modality = 'CT'", "expected ')'"),
    ],
)
def test_where_syntax_errors_say_what_was_expected_in_plain_words(query: str, said: str) -> None:
    with pytest.raises(ScopeError) as caught:
        pt.parse_where(query)
    message = str(caught.value)
    assert said in message and "expected word" not in message and "expected op" not in message
