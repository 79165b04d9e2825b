"""The identifiers each study was verified against, kept on premises for the release gate
(``ridl.releases.write_study_terms``): one SQLite database per process, owner-only, a row a
study written in one transaction, read back by study key."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from export.identifiers import IdentifierDictionary
from ridl.errors import ReleaseError
from ridl.releases import (
    read_studies_terms,
    read_study_terms,
    study_terms_path,
    terms_folder,
    write_study_terms,
)

ROOT = Path(__file__).resolve().parent.parent


def _record(name: str = "Doe^Jane", research_id: str = "R1") -> dict[str, Any]:
    dictionary = IdentifierDictionary()
    dictionary.add(name, "name")
    return {"site": "S", "research_id": research_id, **dictionary.to_record()}


def test_kept_terms_read_back_owner_only(ridl_home: Path) -> None:
    """What is kept reads back whole, by study key; the database, its write-ahead log and its
    folder are owner-only whatever the umask; a study kept again replaces its terms."""
    record = _record()
    old = os.umask(0o022)
    try:
        write_study_terms("p", "r1", "1.2.3", record)
        write_study_terms("p", "r1", "1.2.4", _record("Roe^John", "R2"))
    finally:
        os.umask(old)
    assert read_study_terms("p", "r1", "1.2.3") == record
    assert read_study_terms("p", "r1", "1.2.9") is None
    folder = terms_folder("p", "r1")
    assert folder.stat().st_mode & 0o777 == 0o700
    files = sorted(folder.iterdir())
    assert [f.name for f in files if f.suffix == ".sqlite"] == [
        f"{os.uname().nodename}-{os.getpid()}.sqlite"
    ]
    for file in files:  # the database, and its -wal and -shm files while it is open
        assert file.stat().st_mode & 0o777 == 0o600, file.name
    redone = _record("Doe^Janet")
    write_study_terms("p", "r1", "1.2.3", redone)
    kept = read_studies_terms("p", "r1", ["1.2.3", "1.2.4", "1.2.9"])
    assert kept.records == {"1.2.3": redone, "1.2.4": _record("Roe^John", "R2")}
    assert kept.unreadable == []


_WRITER = """
import sys
sys.path.insert(0, {root!r})
from ridl.releases import write_study_terms
record = {record!r}
print("ready", flush=True)
i = 0
while True:
    write_study_terms("p", "r1", f"1.2.{{i % 50}}", {{**record, "n": i}})
    i += 1
"""


def test_a_killed_writer_leaves_terms_whole_or_absent(ridl_home: Path) -> None:
    """A process killed while it keeps terms leaves each study's terms whole or absent, never
    fewer (the gate then falls back for that study); another process's later terms for the
    same study replace them."""
    record = _record()
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(root=str(ROOT), record=record)],
        stdout=subprocess.PIPE,
        env={**os.environ, "RIDL_HOME": str(ridl_home)},
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        time.sleep(0.5)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    kept = read_studies_terms("p", "r1", [f"1.2.{i}" for i in range(50)])
    assert kept.records and not kept.unreadable, "the writer kept nothing before it was killed"
    for study, found in kept.records.items():
        assert {k: v for k, v in found.items() if k != "n"} == record, study
    # This process keeps one study again, later: its terms are the ones read.
    write_study_terms("p", "r1", "1.2.0", _record("Doe^Janet"))
    assert read_study_terms("p", "r1", "1.2.0") == _record("Doe^Janet")


def test_terms_of_a_release_made_before_the_databases_still_read(ridl_home: Path) -> None:
    """A release whose studies were kept one JSON file a study (earlier versions of ridl): the
    gate reads those; a file cut short reads as absent, never as fewer terms."""
    record = _record()
    path = study_terms_path("p", "r0", "1.2.3")
    path.parent.mkdir(parents=True)
    path.write_text(__import__("json").dumps(record), encoding="utf-8")
    assert read_study_terms("p", "r0", "1.2.3") == record
    data = path.read_bytes()
    for cut in range(1, len(data), 7):
        path.write_bytes(data[:cut])
        assert read_study_terms("p", "r0", "1.2.3") is None, cut


def test_terms_kept_again_after_the_release_folder_was_removed(ridl_home: Path) -> None:
    """A release's folder removed while the process runs (the release made again under the
    same name): the next study kept makes a new database there, readable."""
    write_study_terms("p", "r1", "1.2.3", _record())
    shutil.rmtree(terms_folder("p", "r1").parent)
    write_study_terms("p", "r1", "1.2.4", _record("Roe^John", "R2"))
    assert read_studies_terms("p", "r1", ["1.2.3", "1.2.4"]).records == {
        "1.2.4": _record("Roe^John", "R2")
    }


def test_a_terms_database_that_cannot_be_read_is_named_never_skipped(ridl_home: Path) -> None:
    """A damaged database, or a row that is not JSON, may hide a study's terms: it is named as
    unreadable (the gate then blocks) and a single study's read refuses; an empty file, or a
    database with no terms table, holds no terms and is no problem."""
    import sqlite3

    write_study_terms("p", "r1", "1.2.3", _record())
    folder = terms_folder("p", "r1")
    (folder / "empty.sqlite").touch()
    sqlite3.connect(folder / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
    assert read_studies_terms("p", "r1", ["1.2.3"]).unreadable == []
    foreign = sqlite3.connect(folder / "zz.sqlite", isolation_level=None)
    foreign.execute("CREATE TABLE study_terms (study TEXT, written INTEGER, record TEXT)")
    foreign.execute("INSERT INTO study_terms VALUES ('1.2.3', ?, '{\"cut')", (time.time_ns(),))
    foreign.close()
    kept = read_studies_terms("p", "r1", ["1.2.3"])
    assert kept.unreadable == [("zz.sqlite", "a study's row is not a JSON object")]
    assert kept.records == {}
    (folder / "zz.sqlite").write_bytes(b"no database here" * 64)
    kept = read_studies_terms("p", "r1", ["1.2.3"])
    assert [name for name, _why in kept.unreadable] == ["zz.sqlite"]
    assert kept.records == {"1.2.3": _record()}
    with pytest.raises(ReleaseError, match="zz.sqlite"):
        read_study_terms("p", "r1", "1.2.3")


def test_a_damaged_file_at_the_process_name_is_left_and_another_kept(
    ridl_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new process with the host and pid of an earlier one whose database is damaged keeps
    its terms in a database of its own beside it (the damaged one stays, for the gate to
    name)."""
    monkeypatch.setattr(os, "getpid", lambda: 424242)
    folder = terms_folder("p", "r1")
    folder.mkdir(parents=True)
    damaged = folder / f"{os.uname().nodename}-424242.sqlite"
    damaged.write_bytes(b"no database here" * 64)
    write_study_terms("p", "r1", "1.2.3", _record())
    assert damaged.read_bytes() == b"no database here" * 64
    kept = read_studies_terms("p", "r1", ["1.2.3"])
    assert kept.records == {"1.2.3": _record()}
    assert [name for name, _why in kept.unreadable] == [damaged.name]


def test_a_terms_folder_that_cannot_be_listed_is_named_never_read_as_empty(
    ridl_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Path.glob`` reads a folder it is not allowed to list as empty, which would make every
    study's terms absent (the gate falling back to patient ID and health number): a folder
    that cannot be listed is named as unreadable instead. (The tests run as root, whom no
    folder mode stops: the refusal is the system's own error, raised for that folder.)"""
    write_study_terms("p", "r1", "1.2.3", _record())
    folder = terms_folder("p", "r1")
    listdir = os.listdir

    def refused(path: Any = ".") -> list[str]:
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refused)
    kept = read_studies_terms("p", "r1", ["1.2.3"])
    assert kept.unreadable == [("terms", "Permission denied")]
    with pytest.raises(ReleaseError, match="Permission denied"):
        read_study_terms("p", "r1", "1.2.3")


def test_terms_in_any_script_and_a_lone_surrogate_read_back(ridl_home: Path) -> None:
    """Terms are kept as they are (Latin, Han, Hangul, combining accents) and read back equal;
    a value orjson refuses (a lone surrogate) is kept escaped, not lost nor a crash."""
    record = {
        **_record("Côté^Hélène"),
        "extra": ["山田^太郎", "김^구", "e\u0301", "Ołowska"],
    }
    write_study_terms("p", "r1", "1.2.3", record)
    odd = {**_record("Roe^John", "R2"), "extra": ["x\udc80y"]}
    write_study_terms("p", "r1", "1.2.4", odd)
    kept = read_studies_terms("p", "r1", ["1.2.3", "1.2.4"])
    assert kept.records == {"1.2.3": record, "1.2.4": odd}
    assert kept.unreadable == []
