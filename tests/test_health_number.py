"""The health number read from headers (ridl.sources.hn): the same answer however it is read."""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset

from ridl.sources.hn import health_number


def _header(hn: str, issuer: str = "HN-ON", charset: str | None = None) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientID = "MRN1"
    item = Dataset()
    item.PatientID = hn
    item.IssuerOfPatientID = issuer
    other = Dataset()
    other.PatientID = "X-1"
    other.IssuerOfPatientID = "ELSEWHERE"
    ds.OtherPatientIDsSequence = [other, item]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _is_raw(ds: Dataset) -> bool:
    return isinstance(ds.get_item(0x00101002), RawDataElement)


def test_a_sequence_read_before_is_not_parsed_again_and_answers_the_same() -> None:
    data = _header("9876543210")
    first, second = dcmread(io.BytesIO(data)), dcmread(io.BytesIO(data))
    assert health_number(first, "HN-ON") == "9876543210"
    assert _is_raw(second)
    assert health_number(second, "HN-ON") == "9876543210"
    assert _is_raw(second), "the same bytes: answered without parsing the sequence"
    # What the answer depends on is part of what is remembered.
    assert health_number(second, "ELSEWHERE") == "X-1"
    assert health_number(second, "NOWHERE") is None
    other = dcmread(io.BytesIO(_header("1111111111")))
    assert health_number(other, "HN-ON") == "1111111111"
    latin = dcmread(io.BytesIO(_header("ÉLÉ-42", charset="ISO_IR 100")))
    assert health_number(latin, "HN-ON") == "ÉLÉ-42"
    # A parsed sequence and an object that is not a Dataset are read as they are.
    parsed = dcmread(io.BytesIO(data))
    parsed.OtherPatientIDsSequence[1].PatientID = "CHANGED"
    assert health_number(parsed, "HN-ON") == "CHANGED"

    class Identifier:
        OtherPatientIDsSequence = [parsed.OtherPatientIDsSequence[1]]

    assert health_number(Identifier(), "HN-ON") == "CHANGED"
