"""A synthetic DIR: fake but realistic DICOM for demos and tests, the same for the same seed.

It reproduces what makes a real regional archive hard to de-identify: several sites with their
own Issuer of Patient ID, one Patient ID reused by two sites for different people, one person seen
at several sites and linked only by a health number in Other Patient IDs Sequence, PHI in private
tags, free-text descriptors, nested sequences and pixels, an IOCM rejection note, and files that
are truncated or not DICOM at all. Every value is invented.

Ground floor (``ridl/``): it writes plain files with pydicom and imports nothing of the project,
so the demo (``make demo``) and the tests can build an archive before any other floor exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"

HN_ISSUER = "HN"
PRIVATE_CREATOR = "RIDL SYNTH PHI"
FIRST_DATE = dt.date(2015, 1, 1)
LAST_DATE = dt.date(2024, 12, 31)

GIVEN = [
    "Alice",
    "Bruno",
    "Chloe",
    "Dmitri",
    "Esther",
    "Farid",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Kwame",
    "Lena",
    "Marek",
    "Nadia",
    "Omar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tala",
]
FAMILY = [
    "Tremblay",
    "Gagnon",
    "Roy",
    "Cote",
    "Bouchard",
    "Gauthier",
    "Morin",
    "Lavoie",
    "Fortin",
    "Gagne",
    "Ouellet",
    "Pelletier",
    "Belanger",
    "Levesque",
    "Bergeron",
    "Leblanc",
]
STREETS = ["Rue Sherbrooke", "Boulevard Rene-Levesque", "Avenue du Parc", "Rue Saint-Denis"]


@dataclass
class Person:
    """One invented person: names, sex (``M``/``F``), birth date, optional health number."""

    given: str
    family: str
    sex: str
    birth: dt.date
    health_number: str | None
    address: str
    phone: str


@dataclass
class Registration:
    """One person as known at one site: the patient couplet."""

    person: Person
    issuer: str
    patient_id: str


@dataclass
class SynthReport:
    """What was generated, for tests that need to know where the PHI is.

    ``files`` are the paths of every file written (DICOM or not); ``truncated`` and
    ``not_dicom`` the damaged ones; ``rejected_series`` the Series Instance UIDs an IOCM
    rejection note rejects; ``studies`` counts studies.
    """

    root: Path
    files: list[Path] = field(default_factory=list)
    studies: int = 0
    truncated: list[Path] = field(default_factory=list)
    not_dicom: list[Path] = field(default_factory=list)
    rejected_series: list[str] = field(default_factory=list)
    registrations: list[Registration] = field(default_factory=list)

    def phi_strings(self) -> set[str]:
        """Names, Patient IDs and health numbers that must never appear in an export.

        A set of strings, including each ``FAMILY^GIVEN`` Person Name as DICOM writes it.
        """
        values: set[str] = set()
        for reg in self.registrations:
            values.update({reg.patient_id, reg.person.given, reg.person.family})
            values.add(f"{reg.person.family}^{reg.person.given}")
            if reg.person.health_number:
                values.add(reg.person.health_number)
        return values


class _Uids:
    """Deterministic UIDs: the same seed gives the same archive."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.counter = 0

    def __call__(self) -> str:
        self.counter += 1
        digest = hashlib.sha256(f"ridl-synth-{self.seed}-{self.counter}".encode()).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))


def synthesize(
    root: Path,
    patients: int = 20,
    sites: int = 3,
    seed: int = 0,
    ct_slices: int = 4,
    ct_size: int = 64,
) -> SynthReport:
    """Write a synthetic DIR under ``root`` and say what is in it.

    ``ct_slices`` sets the slices per CT series: raise it to make an archive of many instances
    (benchmarks) without more people; ``ct_size`` sets their rows and columns (512 for slices
    of a real CT's size). ``patients`` people are registered at ``sites`` issuers
    ``SITE-A``, ``SITE-B``... (some at two, linked by health number), with 1 to 3 studies per
    registration.

    Raises:
        ValueError: ``ct_slices`` < 1, ``patients`` < 2 or ``sites`` < 2.
    """
    if ct_slices < 1:
        raise ValueError("ct_slices must be at least 1")
    if patients < 2:
        raise ValueError("patients must be at least 2 (two sites share a Patient ID)")
    if sites < 2:
        raise ValueError("sites must be at least 2")
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    uids = _Uids(seed)
    root.mkdir(parents=True, exist_ok=True)
    report = SynthReport(root=root)
    issuers = [f"SITE-{chr(ord('A') + i)}" for i in range(sites)]

    people = [_person(rng, i) for i in range(patients)]
    registrations: list[Registration] = []
    for i, person in enumerate(people):
        home = issuers[i % sites]
        registrations.append(Registration(person, home, f"MRN{rng.randrange(10**6):06d}"))
        # Some people are also seen at a second site, linked only by the health number.
        if person.health_number and rng.random() < 0.4:
            other = issuers[(i + 1) % sites]
            registrations.append(Registration(person, other, f"MRN{rng.randrange(10**6):06d}"))
    # The same Patient ID used at two sites for two different people.
    registrations[1].patient_id = registrations[0].patient_id
    if registrations[1].issuer == registrations[0].issuer:
        registrations[1].issuer = issuers[1]
    report.registrations = registrations

    kinds = ["CT", "CR", "US", "CT", "CR"]
    study_no = 0
    for reg in registrations:
        for _ in range(rng.randint(1, 3)):
            kind = kinds[study_no % len(kinds)]
            date = FIRST_DATE + dt.timedelta(days=rng.randrange((LAST_DATE - FIRST_DATE).days))
            files = _study(
                root, reg, kind, date, study_no, rng, nrng, uids, report, ct_slices, ct_size
            )
            report.files.extend(files)
            report.studies += 1
            study_no += 1

    _damage(root, report, uids)
    return report


def _person(rng: random.Random, index: int) -> Person:
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(365 * 75))
    # One in five has no health number (visitors from out of province): the couplet is the key.
    hn = None if index % 5 == 4 else f"{rng.randrange(10**9, 10**10)}"
    return Person(
        given=GIVEN[index % len(GIVEN)],
        family=FAMILY[(index * 7 + 3) % len(FAMILY)],
        sex=rng.choice(["F", "M"]),
        birth=birth,
        health_number=hn,
        address=f"{rng.randint(10, 9999)} {rng.choice(STREETS)}, Montreal",
        phone=f"514-555-{rng.randrange(10**4):04d}",
    )


def _base(reg: Registration, date: dt.date, study_uid: str, accession: str, uids: _Uids) -> Dataset:
    p = reg.person
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"{p.family}^{p.given}"
    ds.PatientID = reg.patient_id
    ds.IssuerOfPatientID = reg.issuer
    if p.health_number:
        item = Dataset()
        item.PatientID = p.health_number
        item.IssuerOfPatientID = HN_ISSUER
        item.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = Sequence([item])
    ds.PatientBirthDate = p.birth.strftime("%Y%m%d")
    ds.PatientSex = p.sex
    ds.PatientAddress = p.address
    ds.PatientTelephoneNumbers = p.phone
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = date.strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyID = accession[-4:]
    ds.ReferringPhysicianName = "Welby^Marcus"
    ds.InstitutionName = f"Hopital {reg.issuer}"
    ds.StationName = f"{reg.issuer}-ST01"
    ds.Manufacturer = "RIDL Synthetic"
    # PHI in a nested sequence, three levels deep.
    code = Dataset()
    code.CodeValue = "RPID1"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = f"Requested for {p.given} {p.family}"
    req = Dataset()
    req.RequestedProcedureID = accession
    req.RequestedProcedureDescription = f"Imaging for {p.family}, {reg.patient_id}"
    req.ScheduledProcedureStepID = accession + "1"
    req.RequestedProcedureCodeSequence = Sequence([code])
    ds.RequestAttributesSequence = Sequence([req])
    # PHI in a private block.
    block = ds.private_block(0x0029, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", f"{p.family}^{p.given}")
    block.add_new(0x11, "LO", reg.patient_id)
    block.add_new(0x12, "LO", p.health_number or "none")
    return ds


def _finish(ds: Dataset, sop_class: str, sop_uid: str) -> Dataset:
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = UID(sop_uid)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1420.1")
    ds.file_meta = meta
    return ds


def _image(ds: Dataset, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PhotometricInterpretation = photometric
    if photometric == "RGB":
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        ds.SamplesPerPixel = 1
        ds.BitsAllocated = 16
        ds.BitsStored = 12 if pixels.dtype == np.uint16 else 16
        ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = pixels.tobytes()


def _text_pixels(lines: list[str], shape: tuple[int, int], rgb: bool) -> np.ndarray:
    image = Image.new("RGB" if rgb else "L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((4, 2 + 12 * i), line, fill=(255, 255, 255) if rgb else 255)
    return np.asarray(image, dtype=np.uint8)


def _study(
    root: Path,
    reg: Registration,
    kind: str,
    date: dt.date,
    study_no: int,
    rng: random.Random,
    nrng: np.random.Generator,
    uids: _Uids,
    report: SynthReport,
    ct_slices: int = 4,
    ct_size: int = 64,
) -> list[Path]:
    study_uid = uids()
    accession = f"ACC{rng.randrange(10**7):07d}"
    folder = root / reg.issuer / accession
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    p = reg.person

    def save(ds: Dataset, name: str) -> None:
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        written.append(path)

    def series(modality: str, description: str, number: int) -> tuple[str, Dataset]:
        ds = _base(reg, date, study_uid, accession, uids)
        ds.Modality = modality
        ds.SeriesInstanceUID = uids()
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.StudyDescription = f"{kind} exam, follow-up for {p.family}"
        return ds.SeriesInstanceUID, ds

    if kind == "CT":
        series_uid, template = series("CT", "AXIAL 5mm", 1)
        slices: list[tuple[str, str]] = []
        for n in range(1, ct_slices + 1):
            ds = _base(reg, date, study_uid, accession, uids)
            ds.update(template)
            ds.Modality = "CT"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.InstanceNumber = n
            ds.ImagePositionPatient = [0.0, 0.0, 5.0 * n]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing = [0.7, 0.7]
            ds.SliceThickness = 5.0
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.ImageComments = f"Scanned by tech; pt {reg.patient_id}"
            _image(ds, nrng.integers(0, 2000, size=(ct_size, ct_size), dtype=np.int16))
            sop = uids()
            save(_finish(ds, CT_IMAGE, sop), f"ct_{n:03d}.dcm")
            slices.append((CT_IMAGE, sop))
        # A CT study also has a dose screen (secondary capture with burned-in PHI) and a report.
        _, dose = series("CT", "Dose Report", 999)
        dose.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
        dose.BurnedInAnnotation = "YES"
        dose.ConversionType = "WSD"
        text = _text_pixels(
            ["DOSE REPORT", f"{p.family}^{p.given}", f"ID {reg.patient_id}", "DLP 512 mGy*cm"],
            (64, 128),
            rgb=False,
        )
        _image(dose, text.astype(np.uint16))
        save(_finish(dose, SC_IMAGE, uids()), "dose.dcm")
        _, sr = series("SR", "Report", 900)
        sr.ValueType = "CONTAINER"
        sr.ContinuityOfContent = "SEPARATE"
        sr.CompletionFlag = "COMPLETE"
        sr.VerificationFlag = "UNVERIFIED"
        concept = Dataset()
        concept.CodeValue = "18748-4"
        concept.CodingSchemeDesignator = "LN"
        concept.CodeMeaning = "Diagnostic Imaging Report"
        sr.ConceptNameCodeSequence = Sequence([concept])
        finding = Dataset()
        finding.RelationshipType = "CONTAINS"
        finding.ValueType = "TEXT"
        name = Dataset()
        name.CodeValue = "121071"
        name.CodingSchemeDesignator = "DCM"
        name.CodeMeaning = "Finding"
        finding.ConceptNameCodeSequence = Sequence([name])
        finding.TextValue = (
            f"No acute findings. Patient {p.given} {p.family}, HN {p.health_number}."
        )
        sr.ContentSequence = Sequence([finding])
        save(_finish(sr, BASIC_TEXT_SR, uids()), "report.dcm")
        if not report.rejected_series:
            save(
                _rejection_note(reg, date, study_uid, accession, series_uid, slices, uids),
                "kos.dcm",
            )
            report.rejected_series.append(series_uid)
    elif kind == "CR":
        _, ds = series("CR", "CHEST PA", 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.InstanceNumber = 1
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        _image(ds, nrng.integers(0, 4095, size=(128, 128), dtype=np.uint16))
        save(_finish(ds, CR_IMAGE, uids()), "cr_001.dcm")
    else:
        _, ds = series("US", "ABDOMEN", 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
        ds.InstanceNumber = 1
        ds.BurnedInAnnotation = "YES"
        rows, cols = 96, 160
        banner = _text_pixels(
            [f"{p.family}^{p.given} {reg.patient_id}", date.strftime("%Y-%m-%d")],
            (rows, cols),
            rgb=True,
        )
        body = nrng.integers(0, 120, size=(rows, cols, 3), dtype=np.uint8)
        pixels = np.where(banner > 0, banner, body)
        pixels[:28] = np.maximum(pixels[:28], banner[:28])
        region = Dataset()
        region.RegionSpatialFormat = 1
        region.RegionDataType = 1
        region.RegionFlags = 0
        region.RegionLocationMinX0 = 0
        region.RegionLocationMinY0 = 28
        region.RegionLocationMaxX1 = cols - 1
        region.RegionLocationMaxY1 = rows - 1
        ds.SequenceOfUltrasoundRegions = Sequence([region])
        _image(ds, np.ascontiguousarray(pixels.astype(np.uint8)), photometric="RGB")
        save(_finish(ds, US_IMAGE, uids()), "us_001.dcm")
    return written


def _rejection_note(
    reg: Registration,
    date: dt.date,
    study_uid: str,
    accession: str,
    series_uid: str,
    slices: list[tuple[str, str]],
    uids: _Uids,
) -> Dataset:
    """An IHE IOCM rejection note (KOS titled 113001) for one series, as a PACS would send."""
    ds = _base(reg, date, study_uid, accession, uids)
    ds.Modality = "KO"
    ds.SeriesInstanceUID = uids()
    ds.SeriesNumber = 800
    ds.SeriesDescription = "Rejection note"
    ds.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue = "113001"
    title.CodingSchemeDesignator = "DCM"
    title.CodeMeaning = "Rejected for Quality Reasons"
    ds.ConceptNameCodeSequence = Sequence([title])
    refs = []
    for sop_class, sop in slices:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop
        refs.append(ref)
    ser = Dataset()
    ser.SeriesInstanceUID = series_uid
    ser.ReferencedSOPSequence = Sequence(refs)
    evidence = Dataset()
    evidence.StudyInstanceUID = study_uid
    evidence.ReferencedSeriesSequence = Sequence([ser])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    return _finish(ds, KEY_OBJECT_SELECTION, uids())


def _damage(root: Path, report: SynthReport, uids: _Uids) -> None:
    """One truncated DICOM file and one file that is not DICOM, as real feeds deliver."""
    victim = next(p for p in report.files if p.name.startswith("cr_"))
    ds = dcmread(victim)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(uids())
    ds.InstanceNumber = 2
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    truncated = victim.with_name("cr_002.dcm")
    # Keep the header, cut the pixel data short: the header indexes, the object cannot be read.
    truncated.write_bytes(data[: len(data) - len(data) // 3])
    report.truncated.append(truncated)
    report.files.append(truncated)
    junk = victim.parent / "scan_notes.dcm"
    junk.write_bytes(b"Scanned requisition, see paper chart.\n" * 20)
    report.not_dicom.append(junk)
    report.files.append(junk)
