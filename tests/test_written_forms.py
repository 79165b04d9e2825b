"""Names written run together and identifiers written apart (ridl.written_forms, rule R15).

A header holds ``Tremblay^Josee`` and ``MRN00123``; the text typed beside it writes
``TremblayJosee``, ``jtremblay`` and ``MRN 00123``. De-identification removes those forms from
free text, and the stream's verification searches them, so an object that still holds one
(in an attribute the project retains) is stopped before the store.

The forms are few on purpose: a fresh-user check of the first version found that an initial
joined to a family name makes clinical words (a technologist ``Pine^Sarah`` made ``SPINE``, and
``Lair^F...`` made ``FLAIR``, hits in every other study of the project); the last test keeps
such words.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
from pydicom import dcmread

from curation.quarantine import list_quarantine
from export.local import LocalStore
from flows.runplan import prepare_run
from flows.work import process_batch
from ridl.written_forms import joined_name_forms, split_identifier_forms
from tests.conftest import make_project

from .deid_run_support import ct, deid_cli, project, run_folder, save

RUN_TOGETHER = ("TremblayJosee", "JoseeTremblay", "JOSEETREMBLAY", "MRN 00123", "MRN-00123")
KEPT = ("thorax", "tech", "ref")


@pytest.mark.parametrize(
    ("name", "forms"),
    [
        ("Tremblay^Josee", ["TremblayJosee", "JoseeTremblay"]),
        ("Saint-Pierre^Marie Ève", ["SaintPierreMarieÈve", "MarieÈveSaintPierre",
                                    "MarieSaintPierre", "SaintPierreMarie", "SaintPierre",
                                    "MarieÈve"]),
        ("ÉTHIER^JOSÉE", ["ÉTHIERJOSÉE", "ÉthierJosée", "JOSÉEÉTHIER", "JoséeÉthier"]),
        ("Tremblay^Jose\u0301e", ["TremblayJosée", "JoséeTremblay"]),  # NFD: one form, NFC
        ("Tremblay\u2013Roy, Jr^Josee (Jo)", ["TremblayRoyJosee", "JoseeTremblayRoy",
                                                "TremblayJosee", "JoseeTremblay",
                                                "TremblayRoy"]),
        ("O'Connor^Mary", ["OConnorMary", "MaryOConnor", "OConnor"]),  # an apostrophe
        ("De La Cruz^Maria", ["DeLaCruzMaria", "MariaDeLaCruz", "DeLaCruz"]),  # particles
        ("Gagnon, Luc", ["GagnonLuc", "LucGagnon"]),
        ("Luc Gagnon", ["LucGagnon"]),
        ("Li^Wei", []),  # a word of 2 letters is joined only as a particle
        ("Or^Don", []),  # ...else "DONOR"
        ("De Lay^Thomas", ["DeLayThomas", "ThomasDeLay"]),  # "DELAY": clinical vocabulary
        ("Ten^Don", ["DonTen"]),  # "TENDON" too
        ("Hunt^S", []),  # no initials: S + HUNT, S + PINE, F + LAIR are words
        ("^Josee", []),
        ("山田^太郎", []),  # searched without spaces already
        ("Tremblay^Josee=トレンブレー^ジョゼ", ["TremblayJosee", "JoseeTremblay"]),
    ],
)  # fmt: skip
def test_a_names_run_together_forms(name: str, forms: list[str]) -> None:
    assert [form for form, _ in joined_name_forms(name)] == forms


@pytest.mark.parametrize(
    ("value", "forms"),
    [
        ("MRN00123", ["MRN 00123", "MRN-00123", "MRN_00123", "MRN#00123", "MRN:00123",
                      "MRN: 00123"]),
        ("ACC# 778899", ["ACC778899", "ACC 778899", "ACC-778899", "ACC_778899", "ACC#778899",
                         "ACC:778899", "ACC: 778899"]),
        ("MRN0123", []),  # 4 digits: "MRN 0123" would be too common a number apart
        ("1234567", []),  # digits only: nothing to split
        ("AB12CD345", []),
    ],
)  # fmt: skip
def test_an_identifiers_split_forms(value: str, forms: list[str]) -> None:
    assert split_identifier_forms(value) == forms


def _inputs(src: Path) -> Path:
    save(ct(1, SeriesDescription="CT thorax TremblayJosee"), src / "1.dcm")
    save(ct(2, ImageComments="tech JoseeTremblay, ref MRN 00123 / MRN-00123"), src / "2.dcm")
    save(ct(3, ImageComments="JOSEETREMBLAY thorax"), src / "3.dcm")
    return src


def _assert_cleaned(data: bytes) -> None:
    ds = dcmread(io.BytesIO(data))
    text = " ".join(str(ds.get(k, "")) for k in ("SeriesDescription", "ImageComments"))
    for form in RUN_TOGETHER:
        assert form.lower() not in text.lower(), form
        assert form.encode() not in data, form
    assert b"00123" not in data
    assert any(word in text for word in KEPT), text


def test_names_run_together_and_identifiers_apart_are_cleaned_from_text(tmp_path: Path) -> None:
    project_id = project("forms-a", options=("clean-descriptors",))
    src = _inputs(tmp_path / "src")
    # In a run (both byte paths); run_folder fails if the stream's verification held any.
    stored = run_folder(src, tmp_path, project_id)
    assert sorted(stored) == [1, 2, 3]
    for data in stored.values():
        _assert_cleaned(data)
    # And one object at a time, from the CLI.
    written = deid_cli(src, tmp_path / "out", project_id)
    for path in written.values():
        _assert_cleaned(path.read_bytes())


def test_a_retained_description_holding_a_name_run_together_is_stopped_before_the_store(
    tmp_path: Path,
) -> None:
    keeps = make_project(
        "forms-keeps-descriptions", modalities=("CT",), retain=("SeriesDescription",)
    )
    src = tmp_path / "src"
    save(ct(1, SeriesDescription="CT thorax TremblayJosee"), src / "1.dcm")
    save(ct(2, SeriesDescription="CT thorax JOSEETREMBLAY"), src / "2.dcm")
    save(ct(3, SeriesDescription="CT thorax MRN 00123"), src / "3.dcm")
    save(ct(4, SeriesDescription="CT thorax MRN#00123"), src / "4.dcm")
    save(ct(5, SeriesDescription="CT thorax"), src / "5.dcm")
    plan = prepare_run(keeps.id, "r1", f"folder:{src}", f"file:{tmp_path / 'plan'}")
    root = tmp_path / "store"
    ctx = dataclasses.replace(plan.ctx, store_url=f"file:{root}")
    counts = process_batch(ctx, plan.studies)
    held = [r for r in list_quarantine(keeps.id, "r1") if r.reason == "verification-hit"]
    details = sorted(r.detail for r in held)
    assert len(held) == 4, details
    assert sum(" holds a name" in d for d in details) == 2, details
    assert sum(" holds an identifier" in d for d in details) == 2, details
    for detail in details:
        for form in ("Tremblay", "Josee", "00123"):
            assert form.lower() not in detail.lower(), detail
    stored = [i.key for i in LocalStore(root).list("") if i.key.endswith(".dcm")]
    assert len(stored) == 1, (stored, counts.as_dict())
    data = LocalStore(root).get_bytes(stored[0])
    assert b"thorax" in data and b"remblay" not in data


def test_words_an_initial_or_a_short_name_and_a_staff_name_would_make_are_kept_in_other_studies(
    tmp_path: Path,
) -> None:
    project_id = project("forms-words", options=("clean-descriptors",))
    src = tmp_path / "src"
    # Study A names its technologists; study B (another patient) is an ordinary spine MR.
    save(ct(1, OperatorsName="Pine^Sarah", PerformingPhysicianName="Or^Don"), src / "a1.dcm")
    save(ct(2, OperatorsName="Lair^Francois", ReferringPhysicianName="Hunt^S"), src / "a2.dcm")
    save(ct(3, OperatorsName="De Lay^Thomas", PhysiciansOfRecord="La Mina^Paul"), src / "a3.dcm")
    other = "1.2.826.0.1.3680043.8.498.2"
    descriptions = ("L-SPINE SAG", "AX T2 FLAIR", "VP SHUNT check", "SAG T2 SPACE",
                    "LIVING DONOR KIDNEY", "DELAY 5 MIN", "LAMINA FX L3")  # fmt: skip
    for n, text in enumerate(descriptions, start=4):
        save(
            ct(
                n,
                PatientName="Lowe^Robert",
                PatientID="MRN44556",
                AccessionNumber="ACC445566",
                StudyInstanceUID=other,
                SeriesInstanceUID=f"{other}.2",
                SOPInstanceUID=f"{other}.3.{n}",
                FrameOfReferenceUID=f"{other}.4",
                SeriesDescription=text,
                OperatorsName="Earl^Yves",
            ),
            src / f"b{n}.dcm",
        )
    # Nothing held by the stream (run_folder fails on any quarantine), the words kept.
    stored = run_folder(src, tmp_path, project_id)
    kept = {n: str(dcmread(io.BytesIO(stored[n])).SeriesDescription) for n in range(4, 11)}
    for n, text in enumerate(descriptions, start=4):
        assert kept[n] == text, (kept[n], text)


def test_a_name_without_its_apostrophe_or_accents_is_cleaned_as_verification_searches_it(
    tmp_path: Path,
) -> None:
    """From a fresh-user check: ``OConnor`` for ``O'Connor`` went out in cleaned text, found by
    neither engine; ``JOSEE`` for ``Josée``, which verification searches (R7), was left by
    ``func:clean``, so the object was quarantined instead of cleaned."""
    project_id = project("forms-marks", options=("clean-descriptors",))
    src = tmp_path / "src"
    name = "O'Connor^Josée"
    texts = ("CT OConnor thorax", "JoseeOConnor thorax", "JOSEE thorax", "Josée O'Connor thorax")
    for n, text in enumerate(texts, start=1):
        save(ct(n, PatientName=name, SeriesDescription=text), src / f"{n}.dcm")
    stored = run_folder(src, tmp_path, project_id)  # fails on any quarantine
    for data in stored.values():
        description = str(dcmread(io.BytesIO(data)).SeriesDescription)
        assert "thorax" in description
        for form in ("oconnor", "josee", "josée", "connor"):
            assert form not in description.lower(), description
