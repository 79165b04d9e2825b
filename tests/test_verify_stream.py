"""Verification in the stream and the gate that does not grow with the release.

Each object is verified before it is stored; staff names learned in one study are searched in
the others; the gate re-reads only a sample, catches what bypassed the stream, and retrieves
nothing from the DIR.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset

from curation.quarantine import list_quarantine
from export.identifiers import (
    RULES_VERSION,
    TIER_TERMS,
    CrossStudyDictionary,
    ElementMemo,
    IdentifierDictionary,
)
from export.local import LocalStore
from export.manifest import build_manifest, read_part, write_part
from export.phi_scan import Verifier, pixel_data_start, written_pixel_start
from flows.gate import VerificationFailed, audit_release, gate_release, sample_size
from flows.runplan import prepare_run
from flows.work import process_batch, worker_for
from ridl.crossterms import MAX_TERMS_PER_SITE, load_terms, record_terms, site_file
from ridl.dicomfile import to_bytes
from ridl.projects import Project
from ridl.releases import read_study_terms, release_is_published
from ridl.synth import SynthReport
from tests.conftest import make_project

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _retaining_project(project_id: str) -> Project:
    return make_project(project_id, modalities=("CT",), retain=("StudyDescription",))


def _ct_studies(synth: SynthReport) -> dict[str, list[Path]]:
    """CT studies of the synthetic DIR: {Study Instance UID: files}, one study per patient."""
    studies: dict[str, list[Path]] = {}
    patients: dict[str, str] = {}
    for path in synth.files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if ds.get("Modality") != "CT":
            continue
        uid, pid = str(ds.StudyInstanceUID), str(ds.PatientID)
        if patients.setdefault(pid, uid) == uid:
            studies.setdefault(uid, []).append(path)
    return studies


def test_a_staff_name_learned_in_one_study_is_caught_in_another(
    synth_dir: SynthReport, tmp_path: Path
) -> None:
    project = _retaining_project("staff")
    studies = _ct_studies(synth_dir)
    (uid_a, files_a), (uid_b, files_b) = list(studies.items())[:2]
    root = tmp_path / "dir"
    root.mkdir()
    # Study A names its referring physician in its headers; study B names someone else there,
    # but a retained description mentions A's physician, as free text does.
    for i, path in enumerate(files_a + files_b):
        ds = dcmread(path)
        if str(ds.StudyInstanceUID) == uid_a:
            ds.StudyDescription = "CT exam"
        else:
            ds.ReferringPhysicianName = "Other^Doctor"
            ds.StudyDescription = "CT exam, seen by Dr Welby"
        ds.save_as(root / f"{i}.dcm")
    source = f"folder:{root}"

    def run(release: str, order: list[str]) -> dict[str, tuple[int, int]]:
        """{study UID: (objects exported, objects held as verification-hit)}."""
        worker_for.cache_clear()
        plan = prepare_run(project.id, release, source, f"file:{tmp_path / 'store'}")
        by_uid = {s.study_uid: s for s in plan.studies}
        done: dict[str, tuple[int, int]] = {}
        for uid in order:
            counts = process_batch(plan.ctx, [by_uid[uid]])
            done[uid] = (counts.exported, counts.quarantined.get("verification-hit", 0))
        return done

    # Alone, study B is not caught: nothing in its own headers names Welby.
    exported, held = run("r1", [uid_b])[uid_b]
    assert exported > 0 and held == 0
    # The worker learns Welby from A and grows its own copy: B, next, is caught.
    assert run("r2", [uid_a, uid_b])[uid_b] == (0, exported)
    # A later run starts with what earlier runs learned (carried in its run context).
    worker_for.cache_clear()
    plan = prepare_run(project.id, "r3", source, f"file:{tmp_path / 'store'}")
    assert ("staff", "Welby^Marcus") in plan.ctx.cross_terms
    assert run("r3", [uid_b])[uid_b] == (0, exported)
    held = [r for r in list_quarantine(project.id, "r3") if r.reason == "verification-hit"]
    assert held and all("StudyDescription holds a staff" in r.detail for r in held)
    assert "Welby" not in json.dumps([r.detail for r in held])
    # The terms file is on premises only, owner-only.
    path = site_file(project.id, synth_dir.registrations[0].issuer)
    files = list(path.parent.glob("*.jsonl"))
    assert files and all(f.stat().st_mode & 0o077 == 0 for f in files)


def test_objects_verified_in_windows_are_each_stored_or_held_on_their_own_verdict(
    synth_dir: SynthReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stream verifies a study's de-identified objects a window at a time before storing
    # them: here windows of 3 over 7 objects (two full, one partial), the fourth leaking its
    # subject's name. Only that one is held; every other is stored with its own bytes' hash.
    import flows.work

    monkeypatch.setattr(flows.work, "VERIFY_WINDOW", 3)
    project = _retaining_project("windows")
    uid, files = next(iter(_ct_studies(synth_dir).items()))
    root = tmp_path / "dir"
    root.mkdir()
    first = next(ds for ds in map(dcmread, files) if ds.SOPClassUID == CT_IMAGE_STORAGE)
    family = str(first.PatientName).split("^")[0]
    for i in range(7):  # one series of 7 slices, 2 mm apart
        ds = first.copy()
        ds.SOPInstanceUID = f"{first.SeriesInstanceUID}.{i + 1}"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * i]
        ds.StudyDescription = f"CT follow-up for {family}" if i == 3 else "CT follow-up"
        ds.save_as(root / f"{i}.dcm")
    plan = prepare_run(project.id, "r1", f"folder:{root}", f"file:{tmp_path / 'store'}")
    assert [s.study_uid for s in plan.studies] == [uid]
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.exported == 6
    assert counts.quarantined == {"verification-hit": 1}
    store = LocalStore(tmp_path / "store")
    part = read_part(store, worker_for(plan.ctx).part_key(plan.studies[0]))
    assert part is not None
    assert part["verification"]["objects"] == 7 and part["verification"]["hits"] == 1
    stored = [i.key for i in store.list(f"{plan.ctx.prefix}/") if i.key.endswith(".dcm")]
    assert sorted(stored) == sorted(row["key"] for row in part["objects"])
    for row in part["objects"]:
        data = store.get_bytes(row["key"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["size"]
        assert family.encode() not in data
    held = [r for r in list_quarantine(project.id, "r1") if r.reason == "verification-hit"]
    assert len(held) == 1 and "StudyDescription holds a name" in held[0].detail


def test_a_resumed_release_verifies_again_the_studies_verified_under_other_rules(
    synth_dir: SynthReport, tmp_path: Path
) -> None:
    # A part whose verification record the gate would not count (older dictionary rules) is
    # worked again by the next run, in one go: its objects verified under the current rules,
    # and what the old part listed that the new one does not (an object the old rules let
    # through) deleted from the store. The gate then passes.
    project = _retaining_project("rules")
    uid, files = next(iter(_ct_studies(synth_dir).items()))
    root = tmp_path / "dir"
    root.mkdir()
    for i, path in enumerate(files):
        ds = dcmread(path)
        ds.StudyDescription = "CT exam"  # retained; the synthetic one names the patient
        ds.save_as(root / f"{i}.dcm")
    plan = prepare_run(project.id, "r1", f"folder:{root}", f"file:{tmp_path / 'store'}")
    first = process_batch(plan.ctx, plan.studies)
    store = LocalStore(tmp_path / "store")
    key = worker_for(plan.ctx).part_key(plan.studies[0])
    part = read_part(store, key)
    assert part is not None and first.exported == len(part["objects"]) > 0
    # As an older release would have it: rules 7, and one more object those rules passed.
    stale = dict(part["objects"][0], key=part["objects"][0]["key"].replace(".dcm", "-old.dcm"))
    store.put_bytes(stale["key"], store.get_bytes(part["objects"][0]["key"]))
    part["objects"].append(stale)  # type: ignore[arg-type]
    part["verification"]["rules"] = "ridl-identifiers/7"
    write_part(store, key, part)
    again = process_batch(plan.ctx, plan.studies)
    assert again.skipped == 0 and again.exported == first.exported
    redone = read_part(store, key)
    assert redone is not None and redone["verification"]["rules"] == RULES_VERSION
    assert stale["key"] not in {row["key"] for row in redone["objects"]}
    assert not store.exists(stale["key"])
    assert all(store.exists(row["key"]) for row in redone["objects"])
    assert process_batch(plan.ctx, plan.studies).skipped == 1  # current now: done
    build_manifest(store, plan.ctx.prefix, 1, project.id, "r1")
    assert gate_release(project.id, "r1", store.url).passed


def test_a_vendor_name_used_as_an_institution_in_one_study_is_no_hit_in_anothers_manufacturer(
    synth_dir: SynthReport, tmp_path: Path
) -> None:
    # R6 across studies, whatever the order: study A's institution is named after a vendor
    # ("TOSHIBA"), study B's Manufacturer is that vendor's ("TOSHIBA_MEC"). Neither the stream,
    # with A learned first, nor the gate, with every term known, may hold B for it.
    project = _retaining_project("vendor")
    studies = _ct_studies(synth_dir)
    (uid_a, files_a), (uid_b, files_b) = list(studies.items())[:2]
    root = tmp_path / "dir"
    root.mkdir()
    for i, path in enumerate(files_a + files_b):
        ds = dcmread(path)
        ds.StudyDescription = "CT exam"
        if str(ds.StudyInstanceUID) == uid_a:
            ds.InstitutionName = "TOSHIBA"
            ds.Manufacturer = "ACME"
        else:
            ds.Manufacturer = "TOSHIBA_MEC"
        ds.save_as(root / f"{i}.dcm")
    worker_for.cache_clear()
    store_root = tmp_path / "store"
    plan = prepare_run(project.id, "r1", f"folder:{root}", f"file:{store_root}")
    by_uid = {s.study_uid: s for s in plan.studies}
    for uid in (uid_a, uid_b):
        counts = process_batch(plan.ctx, [by_uid[uid]])
        assert counts.exported > 0 and not counts.quarantined, (
            uid == uid_b,
            [r.detail for r in list_quarantine(project.id, "r1")],
        )
    store = LocalStore(store_root)
    build_manifest(store, plan.ctx.prefix, len(plan.studies), project.id, "r1")
    report = audit_release(project.id, "r1", store.url, sample=10_000, seed=1)
    assert report.passed, [(h.key, h.path, h.kind) for h in report.hits]


def test_a_patient_named_after_ridls_own_method_text_is_not_held(
    synth_dir: SynthReport, project: Project, tmp_path: Path
) -> None:
    """R14: "Basic" (De-identification Method names the recipe's layer, ``ridl-basic``; a
    PS3.15 recipe's Code Meaning is "Basic Application Confidentiality Profile"), written by
    ridl into every object, does not match a patient of that name. ("Ridl", also there, is in
    the synthetic Manufacturer too.)"""
    studies = _ct_studies(synth_dir)
    uid, files = next(iter(studies.items()))
    root = tmp_path / "dir"
    root.mkdir()
    for i, path in enumerate(files):
        ds = dcmread(path)
        ds.PatientName = "Basic^Confidentiality^Application"
        ds.StudyDescription = "CT exam"
        ds.save_as(root / f"{i}.dcm")
    worker_for.cache_clear()
    plan = prepare_run(project.id, "r1", f"folder:{root}", f"file:{tmp_path / 'store'}")
    counts = process_batch(plan.ctx, plan.studies)
    assert counts.exported > 0 and not counts.quarantined, [
        r.detail for r in list_quarantine(project.id, "r1")
    ]
    written = next((tmp_path / "store").rglob("*.dcm"))
    out = dcmread(written)
    assert "basic" in str(out.DeidentificationMethod).lower(), "the recipe's layer name"


def test_cross_study_terms_are_bounded_least_recently_seen_first(ridl_home: Path) -> None:
    record_terms("p", "SITE-A", [("staff", f"Name{i:05d}^X") for i in range(MAX_TERMS_PER_SITE)])
    record_terms("p", "SITE-A", [("staff", "Name00000^X"), ("place", "Hopital Neuf")])
    terms = load_terms("p")
    assert len(terms) == MAX_TERMS_PER_SITE
    assert ("staff", "Name00001^X") not in terms, "the least recently seen is evicted"
    assert terms[-2:] == (("staff", "Name00000^X"), ("place", "Hopital Neuf"))


def _found(dictionaries: list[IdentifierDictionary], text: str) -> set[str]:
    """The kinds of the terms of ``dictionaries`` found in ``text`` (a retained description)."""
    verifier = Verifier(dictionaries[0], also=dictionaries[1:])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.StudyDescription = text
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return {hit.kind for hit in verifier.check_bytes("k.dcm", buf.getvalue()).hits}


def test_cross_study_terms_grow_in_tiers_and_are_all_searched() -> None:
    known = [("staff", f"Known{i:04d}^Person") for i in range(300)]
    cross = CrossStudyDictionary(pairs=known)
    big = cross.dictionaries[-1]
    compiled = big.automaton(())
    # A name learned in a study goes into the smallest tier: the big automaton is not rebuilt.
    cross.add_shared("staff", "Welby^Marcus")
    assert big.automaton(()) is compiled
    assert "Welby" in cross.dictionaries[0].terms and "Welby" not in big.terms
    # Enough names fold the smallest tier into the next; every term is still searched.
    learned = [f"Learned{i:04d}^Doctor" for i in range(TIER_TERMS[0])]
    for name in learned:
        cross.add_shared("staff", name)
    assert len(cross.dictionaries[0]) <= TIER_TERMS[0] < len(cross.dictionaries[1])
    assert cross.pairs == len(known) + 1 + len(learned)
    assert big.automaton(()) is compiled, "the last tier is folded into only past its share"
    empty = IdentifierDictionary()
    for text in ("seen by Dr Welby", f"seen by {learned[-1]}", "seen by Known0042^Person"):
        assert _found([empty, *cross.dictionaries], text) == {"staff"}, text
    assert _found([empty, *cross.dictionaries], "seen by Dr Nobody") == set()
    # The record's counts are the tiers' together, kept until a tier changes.
    assert cross.kinds() == {"staff": len(cross)}
    # Equipment names reach every tier (R6). A vendor's names that are none of the terms keep
    # the compiled automata; a learned place equal to a model, or inside one, is dropped.
    cross.add_shared("place", "Aquilion Suite")
    cross.add_shared("place", "Radiology East")
    assert _found([empty, *cross.dictionaries], "room Aquilion Suite") == {"institution-or-station"}
    compiled = [d.automaton(()) for d in cross.dictionaries]
    cross.add_equipment({"acme scanner 9", "acme"})
    assert all(d.automaton(()) is a for d, a in zip(cross.dictionaries, compiled, strict=True))
    cross.add_equipment({"aquilion suite", "radiology east wing console"})
    assert all("aquilion suite" in d.equipment for d in cross.dictionaries)
    assert _found([empty, *cross.dictionaries], "room Aquilion Suite") == set()
    assert _found([empty, *cross.dictionaries], "Radiology East") == set()
    assert _found([empty, *cross.dictionaries], "seen by Dr Welby") == {"staff"}


def _build(project_id: str, source: str, store_root: Path) -> tuple[LocalStore, str]:
    plan = prepare_run(project_id, "r1", source, f"file:{store_root}")
    process_batch(plan.ctx, plan.studies)
    store = LocalStore(store_root)
    build_manifest(store, plan.ctx.prefix, len(plan.studies), project_id, "r1")
    return store, plan.ctx.prefix


def test_every_part_records_its_verification(synth_dir, project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, prefix = _build(project.id, f"folder:{synth_dir.root}", tmp_path / "store")
    parts = [
        read_part(store, i.key) for i in store.list(f"{prefix}/parts/") if "_source" not in i.key
    ]
    assert parts
    for part in parts:
        assert part is not None
        record = part["verification"]
        assert record["passed"] and record["objects"] == len(part["objects"])
        assert record["rules"] and len(record["recipe"]) == 64
        assert {"name", "identifier"} <= set(record["terms"])
        assert read_study_terms(project.id, "r1", str(part["study"])) is not None


def test_the_sample_audit_catches_an_object_written_around_the_stream(
    synth_dir,
    project,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    store, prefix = _build(project.id, f"folder:{synth_dir.root}", tmp_path / "store")
    first = next(i.key for i in store.list(prefix + "/") if i.key.endswith(".dcm"))
    research_id = first.split("/")[2]
    # Written straight into the store: a copy of the source object, never de-identified.
    source = next(p for p in synth_dir.files if p.read_bytes()[128:132] == b"DICM")
    bypass = f"{prefix}/{research_id}/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    store.put_bytes(bypass, source.read_bytes())
    with pytest.raises(VerificationFailed) as failed:
        gate_release(project.id, "r1", store.url)
    report = failed.value.report
    assert (bypass, "(not in any manifest part)") in [(h.key, h.path) for h in report.hits]
    assert not store.exists(bypass), "the object is removed"
    assert store.exists(first), "verified objects stay for the rerun"
    assert not store.exists(f"{prefix}/summary.json") and not release_is_published(project.id, "r1")


def test_a_part_without_a_current_verification_record_blocks(
    synth_dir,
    project,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    store, prefix = _build(project.id, f"folder:{synth_dir.root}", tmp_path / "store")
    key = next(i.key for i in store.list(f"{prefix}/parts/") if "_source" not in i.key)
    part = json.loads(store.get_bytes(key))
    part["verification"]["rules"] = "older-rules"
    store.put_bytes(key, json.dumps(part).encode())
    report = audit_release(project.id, "r1", store.url, sample=0)
    assert [(h.key, h.kind) for h in report.hits] == [(key, "unverified-study")]


def test_a_terms_database_the_gate_cannot_read_blocks(
    synth_dir,
    project,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The gate re-derives the sampled studies' identifiers from the kept terms: a database of
    them it cannot read (here damaged) may hold a study's names, so the sample cannot be shown
    clean: blocked, nothing removed, nothing published (it passed before it was damaged)."""
    from ridl.releases import close_terms_databases, terms_folder

    store, prefix = _build(project.id, f"folder:{synth_dir.root}", tmp_path / "store")
    assert audit_release(project.id, "r1", store.url, sample=10_000, seed=1).passed
    close_terms_databases()  # as the run's workers do when they end
    (database,) = terms_folder(project.id, "r1").glob("*.sqlite")
    with database.open("r+b") as damaged:
        damaged.write(b"this is no SQLite file")
    stored = sorted(i.key for i in store.list(prefix + "/"))
    with pytest.raises(VerificationFailed) as failed:
        gate_release(project.id, "r1", store.url)
    hits = failed.value.report.hits
    assert [(h.key, h.kind) for h in hits] == [(str(database), "terms-unreadable")]
    assert not release_is_published(project.id, "r1")
    assert all(store.exists(k) for k in stored if k.endswith(".dcm")), "nothing removed"


def _dated_header(study_date: str, acquisition_date: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.PatientName = "Doe^Jane"
    ds.StudyDate, ds.AcquisitionDate = study_date, acquisition_date
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return dcmread(io.BytesIO(buffer.getvalue()), force=True)  # raw elements, as a worker reads


def test_date_coincidences_survive_the_element_memo_and_the_kept_record() -> None:
    # A worker's dictionaries share remembered elements; the second study replays them, and the
    # gate rebuilds a sampled study's dictionary from its kept record: each keeps R5's rule that
    # a subject's date equal to another of its dates moved by its shift is a coincidence.
    memo = ElementMemo()
    for research_id in ("RID-A", "RID-B"):  # the second reads the same elements from the memo
        dictionary = IdentifierDictionary(memo=memo)
        dictionary.add_header(_dated_header("20200101", "20200111"), research_id, 10)
        dictionary.automaton()
        term = dictionary.terms["20200111"]
        assert term.date and term.owners == {research_id} and term.coincident == {research_id}
        assert dictionary.terms["20200101"].coincident == set()
    rebuilt = IdentifierDictionary()
    rebuilt.merge_record(json.loads(json.dumps(dictionary.to_record())))
    term = rebuilt.terms["20200111"]
    assert term.date and term.owners == {"RID-B"} and term.coincident == {"RID-B"}


def test_date_coincidences_across_two_studies_of_one_subject_survive_a_merge() -> None:
    # The gate merges the kept records of every sampled study: study A's date moved by the
    # subject's shift can equal an original date of the subject's study B. R5 calls that a
    # coincidence in the subject's date attributes, as the stream (which saw A alone) did.
    study_a, study_b = IdentifierDictionary(), IdentifierDictionary()
    study_a.add_header(_dated_header("20200101", "20200101"), "RID-A", 10)  # moved: 20200111
    study_b.add_header(_dated_header("20200111", "20200111"), "RID-A", 10)
    merged = IdentifierDictionary()
    for study in (study_a, study_b):
        merged.merge_record(json.loads(json.dumps(study.to_record())))
    merged.automaton()
    term = merged.terms["20200111"]
    assert term.owners == {"RID-A"} and term.coincident == {"RID-A"}


def test_the_raw_prefilter_finds_a_date_held_in_a_dt_value() -> None:
    # The stream searches a fast-path object's header bytes raw first; a DT value holds the
    # date followed by its time (R3's exception), which that first look must not miss.
    source = _dated_header("20200101", "20200111")
    source.AcquisitionDateTime = "20200105093000"
    dictionary = IdentifierDictionary()
    dictionary.add_header(source, "RID-A", 10)
    out = Dataset()
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    out.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    out.SOPInstanceUID = "2.25.1"
    out.PatientID = "RID-A"
    out.AcquisitionDateTime = "20200105093000"  # the original value, left unshifted
    out.Rows = out.Columns = 2
    out.BitsAllocated, out.BitsStored, out.HighBit = 8, 8, 7
    out.SamplesPerPixel, out.PixelRepresentation = 1, 0
    out.PhotometricInterpretation = "MONOCHROME2"
    out.PixelData = b"\0\0\0\0"
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    checked = Verifier(dictionary).check_bytes("k.dcm", data, text_end=pixel_data_start(data))
    assert [(h.path, h.kind) for h in checked.hits] == [("AcquisitionDateTime", "encounter-date")]


def test_an_object_written_element_by_element_is_searched_as_the_fast_paths_are() -> None:
    # Pixel Data last: searched raw up to it (R10), a name in its header still found.
    source = _dated_header("20200101", "20200111")
    dictionary = IdentifierDictionary()
    dictionary.add_header(source, "RID-A", 10)
    out = _dated_header("20200101", "20200111")
    del out.StudyDate, out.AcquisitionDate
    out.SOPClassUID, out.SOPInstanceUID, out.PatientID = "1.2.840.10008.5.1.4.1.1.7", "2.25.1", "X"
    out.Rows = out.Columns = 4
    out.BitsAllocated, out.BitsStored, out.HighBit = 8, 8, 7
    out.SamplesPerPixel, out.PixelRepresentation = 1, 0
    out.PhotometricInterpretation = "MONOCHROME2"
    out.add_new(0x7FE00010, "OB", b"doe^jane" + bytes(8))  # samples spelling it: no hit (R10)
    data = to_bytes(out)
    start = written_pixel_start(out, data)
    assert start is not None and data[start : start + 4] == b"\xe0\x7f\x10\x00"
    assert start == pixel_data_start(data)
    checked = Verifier(dictionary).check_bytes("k.dcm", data, text_end=start)
    assert [(h.path, h.kind) for h in checked.hits] == [("PatientName", "name")]
    del out.PatientName
    data = to_bytes(out)
    clean = Verifier(dictionary).check_bytes("k.dcm", data, text_end=written_pixel_start(out, data))
    assert not clean.hits
    # An element after the pixel data: no offset, the object is read whole and the name found.
    out.add_new(0x7FE10010, "LO", "ACME 1.0")
    out.add_new(0x7FE11001, "LO", "Doe^Jane")
    data = to_bytes(out)
    assert written_pixel_start(out, data) is None
    assert written_pixel_start(Dataset(), b"") is None
    checked = Verifier(dictionary).check_bytes("k.dcm", data, text_end=None)
    assert [h.kind for h in checked.hits] == ["name"]


def test_objects_whose_pixels_curation_changed_are_searched_without_a_parse(
    synth_dir,
    project,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    import flows.work

    written: list[int] = []
    parsed: list[str] = []
    to_bytes, check_dicom = flows.work.to_bytes, Verifier._check_dicom
    monkeypatch.setattr(flows.work, "to_bytes", lambda ds: written.append(1) or to_bytes(ds))
    monkeypatch.setattr(
        Verifier,
        "_check_dicom",
        lambda self, key, *a, **k: parsed.append(key) or check_dicom(self, key, *a, **k),
    )
    store, prefix = _build(project.id, f"folder:{synth_dir.root}", tmp_path / "store")
    assert written, "the synthetic DIR has objects whose pixels curation cleaned"
    assert not parsed, "each was searched on its header bytes, the fast path's way"
    assert any(i.key.endswith(".dcm") for i in store.list(prefix + "/"))


def test_sample_size_default_and_bounds() -> None:
    assert sample_size(500) == 500
    assert sample_size(7_681) == 1_000
    assert sample_size(5_000_000) == 5_000
    assert sample_size(400_000_000) == 20_000
    assert sample_size(10_000, 50) == 50


_RUN = """
import sys
from flows.runplan import prepare_run
from flows.work import process_batch
plan = prepare_run(sys.argv[1], "r1", sys.argv[2], sys.argv[3])
for study in plan.studies:
    process_batch(plan.ctx, [study])
print("done", flush=True)
"""


def test_a_killed_run_leaves_only_verified_objects(
    synth_dir,
    project,
    ridl_home: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    store_root = tmp_path / "store"
    env = {**os.environ, "RIDL_HOME": str(ridl_home), "PYTHONPATH": os.getcwd()}
    args = [sys.executable, "-c", _RUN, project.id, f"folder:{synth_dir.root}"]
    proc = subprocess.Popen([*args, f"file:{store_root}"], env=env, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(store_root.rglob("*.dcm"))) >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    objects = list(store_root.rglob("*.dcm"))
    assert objects, "the run was killed after it stored some objects"
    # Every object that is readable was verified against its study's identifiers first: the
    # terms it was verified against were kept before it was stored, and it holds none of them.
    from export.identifiers import IdentifierDictionary

    for path in objects:
        data = path.read_bytes()
        study = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        record = read_study_terms(project.id, "r1", study)
        assert record is not None, "terms are kept before any object of the study is stored"
        dictionary = IdentifierDictionary()
        dictionary.merge_record(record)
        assert Verifier(dictionary).check_bytes(path.name, data).hits == []
    shutil.rmtree(store_root, ignore_errors=True)


def _retrieval_metrics(url: str) -> dict[str, str]:
    """Orthanc's Prometheus metrics of retrievals (C-GET, C-MOVE, C-FIND, REST incl. WADO):
    {metric: timestamp of its last update}; a request of that kind changes its timestamp."""
    text = requests.get(f"{url}/tools/metrics-prometheus", timeout=10).text
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and any(k in parts[0] for k in ("get_scp", "move_scp", "find_scp")):
            found[parts[0]] = parts[2]
    return found


def test_the_gate_of_a_dimse_release_retrieves_nothing_from_the_dir(
    synth_dir,
    orthanc,
    project,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from ridl.sources.protect import ArchiveLimits

    limits = ArchiveLimits(rate_limit=0, backoff_s=0.01)
    plan = prepare_run(
        project.id, "r1", orthanc.dimse_url("get"), f"file:{tmp_path / 's'}", limits=limits
    )
    before_run = _retrieval_metrics(orthanc.url)
    process_batch(plan.ctx, plan.studies)
    store = LocalStore(tmp_path / "s")
    build_manifest(store, plan.ctx.prefix, len(plan.studies), project.id, "r1")
    before_gate = _retrieval_metrics(orthanc.url)
    assert before_gate != before_run, "the probe sees the run's C-GET retrievals"
    report = gate_release(project.id, "r1", store.url)
    assert report.passed, report.render()
    assert report.objects_checked > 0 and report.studies_without_terms == 0
    assert _retrieval_metrics(orthanc.url) == before_gate, "no C-GET, C-MOVE, C-FIND or WADO"
