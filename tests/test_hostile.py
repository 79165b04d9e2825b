"""Hostile input: every file pydicom and deid-data ship goes through the per-study work, fuzzed
objects go through reading and de-identification, and object keys refuse escapes."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files

from export.local import LocalStore
from export.store import check_key
from flows.work import RunContext, Worker, process_batch, process_study
from ridl.catalog import catalog_dir_for, study_refs
from ridl.sources.folder import FolderSource
from ridl.studies import StudyRef
from tests.conftest import make_project

ALL_MODALITIES = tuple(
    [
        "CT",
        "CR",
        "DX",
        "MR",
        "US",
        "NM",
        "PT",
        "RF",
        "XA",
        "MG",
        "OT",
        "SC",
        "SR",
        "KO",
        "PR",
        "RTIMAGE",
        "RTDOSE",
        "RTSTRUCT",
        "RTPLAN",
        "SEG",
        "ES",
        "DOC",
        "OP",
        "XC",
        "IO",
        "PX",
        "BI",
        "ECG",
        "HD",
        "AU",
    ]
)


def _hostile_files() -> list[Path]:
    """pydicom's local test files (those present without network) and deid-data's DICOM."""
    import deid_data

    files = [Path(f) for f in get_testdata_files() if Path(f).is_file()]
    root = Path(deid_data.__file__).parent / "data"
    files += sorted(p for p in root.rglob("*.dcm"))
    return files


# This test is about the read + de-identification path, so the project keeps only the
# integrity checks: quality policies (localizers, series consistency, header-only images...)
# would hold most of pydicom's odd files back before the engine ever saw them.
HOSTILE_CURATION = {
    "checks": ["integrity", "decodable", "duplicate-sop-instance"],
    "non_image": "keep",
    "screen_captures": "keep",
    "localizers": "keep",
}


def _run_folder(folder: Path, tmp_path: Path) -> tuple[RunContext, Counter[str], LocalStore, int]:
    project = make_project("hostile", curation=HOSTILE_CURATION)
    source = FolderSource(folder)
    catalog = catalog_dir_for(source.url)
    import datetime as dt

    source.build_catalog(catalog, dt.date.min, dt.date.max)
    studies = study_refs(pq.read_table(catalog / "studies.parquet").to_pandas())
    unindexed = pq.read_table(catalog / "unreadable.parquet").to_pylist()
    ctx = RunContext(
        project=project.id,
        release="hostile",
        source_url=source.url,
        store_url=f"file:{tmp_path / 'store'}",
        recipe=project.recipe,
        retain=(),
        modalities=ALL_MODALITIES,
        hn_issuer="HN",
        curation=json.dumps(HOSTILE_CURATION),
    )
    counts = process_batch(ctx, studies)
    outcome: Counter[str] = Counter()
    outcome["exported"] = counts.exported
    for reason, n in counts.quarantined.items():
        outcome[f"quarantined:{reason}"] += n
    for reason, n in counts.excluded.items():
        outcome[f"excluded:{reason}"] += n
    for row in unindexed:
        outcome[f"quarantined:{row['reason']}"] += 1
    return ctx, outcome, LocalStore(tmp_path / "store"), len(studies)


@pytest.fixture
def ocr_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real OCR (curation.ocr.read_lines), run once per distinct input in a test that runs
    the same objects twice: the second run gets the first run's lines for the same frames."""
    import hashlib

    import curation.ocr

    real = curation.ocr.read_lines
    seen: dict[tuple[Any, ...], Any] = {}

    def once(frames: Any, **options: Any) -> Any:
        frames = list(frames)
        key = (
            tuple(sorted(options.items())),
            *((f.shape, str(f.dtype), hashlib.sha256(f.tobytes()).digest()) for f in frames),
        )
        if key not in seen:
            seen[key] = real(frames, **options)
        return list(seen[key])

    monkeypatch.setattr(curation.ocr, "read_lines", once)


def test_every_shipped_test_file_is_exported_or_quarantined_the_same_both_ways(
    tmp_path: Path, ocr_once: None
) -> None:
    """Each file is exported, quarantined or excluded once, valid and verified clean; the fast
    path (the run's default) and the dataset path give the same objects, parts and counts."""
    files = _hostile_files()
    assert len(files) > 150, "pydicom's and deid-data's test files are installed"
    folder = tmp_path / "dir"
    for i, path in enumerate(files):
        dest = folder / f"{i:04d}_{path.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    ctx, outcome, store, n_studies = _run_folder(folder, tmp_path)
    accounted = sum(outcome.values())
    print(f"\nhostile input: {len(files)} files, {n_studies} studies")
    for name, n in sorted(outcome.items()):
        print(f"  {name}: {n}")
    assert accounted == len(files), "every file is exported, quarantined or excluded, once"
    assert outcome["exported"] > 50
    # Excluded objects are only duplicates of an exported SOP Instance UID or unapproved kinds.
    assert {k for k in outcome if k.startswith("excluded:")} <= {
        "excluded:duplicate-sop-instance",
        "excluded:modality-not-approved",
        "excluded:iocm-rejection-note",
        "excluded:iocm-rejected",
    }
    names = set()
    for info in store.list(ctx.prefix + "/"):
        if not info.key.endswith(".dcm"):
            continue
        ds = dcmread(io.BytesIO(store.get_bytes(info.key)))  # valid DICOM: it reads back
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.get("PatientID", "RS-")).startswith("RS-")  # absent in some sources
        assert ds.file_meta.TransferSyntaxUID
        assert not any(elem.tag.is_private for elem in ds.iterall())
        names.add(str(ds.get("PatientName", "")))
    # The gate finds no source identifier in any exported byte.
    from flows.gate import IdentifierDictionary, Verifier

    dictionary = IdentifierDictionary()
    for path in folder.iterdir():
        try:
            dictionary.add_header(dcmread(path, stop_before_pixels=True, force=True))
        except Exception:
            continue
    verifier = Verifier(dictionary)
    hits = []
    for info in store.list(ctx.prefix + "/"):
        hits += verifier.check_bytes(info.key, store.get_bytes(info.key)).hits
    print(f"  dictionary terms: {len(dictionary)}, verification hits: {len(hits)}")
    assert hits == [], [str(h) for h in hits[:10]]

    # The same selection through the dataset path: hand-offs, refusals and quarantines agree.
    assert ctx.fast_path
    studies = study_refs(
        pq.read_table(catalog_dir_for(ctx.source_url) / "studies.parquet").to_pandas()
    )
    process_batch(
        dataclasses.replace(ctx, store_url=f"file:{tmp_path / 'off'}", fast_path=False), studies
    )
    on, off = _store_bytes(tmp_path / "store"), _store_bytes(tmp_path / "off")
    assert sum(key.endswith(".dcm") for key in on) > 50
    assert sorted(on) == sorted(off)
    differing = [key for key in on if on[key] != off[key]]
    assert differing == [], f"{len(differing)} objects differ, e.g. {differing[:3]}"


def _store_bytes(root: Path) -> dict[str, bytes]:
    store = LocalStore(root)
    return {info.key: store.get_bytes(info.key) for info in store.list("")}


# --- fuzzing the read + de-identify path --------------------------------------------------------

SEED = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def seed_bytes() -> bytes:
    return SEED.read_bytes()


def _process_one(tmp_path: Path, data: bytes, tag: str) -> tuple[int, Counter[str], list[bytes]]:
    folder = tmp_path / "fuzz-dir"
    folder.mkdir(exist_ok=True)
    (folder / "obj.dcm").write_bytes(data)
    store_root = tmp_path / "fuzz-store"
    shutil.rmtree(store_root, ignore_errors=True)
    ctx = RunContext(
        project="fuzz",
        release="f1",
        source_url=f"folder:{folder}",
        store_url=f"file:{store_root}",
        recipe="ridl-basic",
        retain=(),
        modalities=ALL_MODALITIES,
        hn_issuer="HN",
    )
    worker = Worker(ctx)
    ref = StudyRef(f"1.2.3.{tag}", "SITE", "PID", None, "20200101", ("obj.dcm",))
    outcome = process_study(worker, ref)
    written = [p.read_bytes() for p in store_root.rglob("*.dcm")]
    return outcome.exported, outcome.quarantined + outcome.excluded, written


def _check_outcome(exported: int, other: Counter[str], written: list[bytes]) -> None:
    assert exported + sum(other.values()) == 1, "the object is exported, quarantined or excluded"
    assert len(written) == exported
    for data in written:  # never partially de-identified: it reads back and is pseudonymized
        ds = dcmread(io.BytesIO(data))
        assert ds.PatientIdentityRemoved == "YES"
        assert b"CompressedSamples" not in data  # CT_small's patient name
        assert not any(elem.tag.is_private for elem in ds.iterall())


@pytest.fixture(scope="module")
def fuzz_project(tmp_path_factory: pytest.TempPathFactory) -> None:
    return None


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzzed_bytes_never_crash_nor_leak(
    data: st.DataObject,
    seed_bytes: bytes,
    tmp_path: Path,
) -> None:
    from ridl.secrets import secret_path

    if not secret_path("fuzz").exists():
        make_project("fuzz")
    buf = bytearray(seed_bytes)
    kind = data.draw(st.sampled_from(["truncate", "flip", "length", "insert"]))
    if kind == "truncate":
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            pos = data.draw(st.integers(132, len(buf) - 1))
            buf[pos] = data.draw(st.integers(0, 255))
    elif kind == "length":
        # Overwrite a 4-byte window (often an element length) with a huge or odd value.
        pos = data.draw(st.integers(132, len(buf) - 4))
        value = data.draw(st.sampled_from([0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 1, 3]))
        buf[pos : pos + 4] = value.to_bytes(4, "little")
    else:
        pos = data.draw(st.integers(132, len(buf)))
        buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=64))
    exported, other, written = _process_one(tmp_path, bytes(buf), "1")
    _check_outcome(exported, other, written)


def test_bytes_that_are_no_vr_quarantine_the_object(tmp_path: Path) -> None:
    """Found by fuzzing: Content Time's VR bytes 'TM' damaged to 'T\\0' were written back as they
    came (kept and shifted-as-written TM), an object no reader can parse."""
    make_project("fuzz")
    data = bytearray(Path(SEED).read_bytes())
    at = data.find(b"\x08\x00\x33\x00TM")  # (0008,0033) Content Time, explicit VR
    assert at > 0
    data[at + 5] = 0
    exported, other, written = _process_one(tmp_path, bytes(data), "no-vr")
    _check_outcome(exported, other, written)
    assert (exported, dict(other)) == (0, {"deid-unknown-vr": 1})


@pytest.mark.parametrize("depth", [5, 40, 200])
def test_deep_sequences_are_exported_or_quarantined(tmp_path: Path, depth: int) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    make_project("fuzz")
    ds = dcmread(SEED)
    node = ds
    for _ in range(depth):
        child = Dataset()
        child.CodeMeaning = "CompressedSamples^CT1"
        node.ContentSequence = Sequence([child])
        node = child
    buffer = io.BytesIO()
    ds.save_as(buffer)
    exported, other, written = _process_one(tmp_path, buffer.getvalue(), str(depth))
    _check_outcome(exported, other, written)


# --- object keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a/./b",
        "a//b",
        "a/b/",
        "a\\..\\b",
        "..",
        ".",
        "a/..",
        "C:/x",
        "a/b\x00c",
        "a/\nb",
        " a",
        "~/x",
        "a/%2e%2e/b",
        "a/b?c",
        "a/..\u2215b",
    ],
)
def test_unsafe_keys_are_refused(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        check_key(key)
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")
    assert not any((tmp_path).rglob("passwd"))


@given(st.text(min_size=1, max_size=40))
@settings(max_examples=300, deadline=None)
def test_any_accepted_key_stays_under_the_root(key: str) -> None:
    import posixpath

    try:
        check_key(key)
    except ValueError:
        return
    root = "/store/root"
    resolved = posixpath.normpath(posixpath.join(root, key))
    assert resolved.startswith(root + "/"), key
    assert "\\" not in key and "\x00" not in key
