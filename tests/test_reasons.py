"""Reason codes: README's list and the enum agree, and an unknown code fails loudly."""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from pathlib import Path

import pytest

from curation.pixels import CleaningError
from deid_recipes.engine import DeidError
from ridl.errors import ObjectRejected
from ridl.reasons import CHECK_FAILED_PREFIX, GROUPS, Reason, check_failed, markdown

README = Path(__file__).resolve().parents[1] / "README.md"
LINE = re.compile(r"^- `([^`]+)` — (.+)$")
TITLE = re.compile(r"^\*\*(.+)\*\*$")


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Reason codes\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def readme_codes() -> dict[str, tuple[str, str]]:
    """code -> (group title, meaning), as README lists them."""
    found: dict[str, tuple[str, str]] = {}
    title = ""
    for line in readme_section().splitlines():
        if m := TITLE.match(line):
            title = m.group(1)
        elif m := LINE.match(line):
            assert m.group(1) not in found, f"README lists {m.group(1)!r} twice"
            found[m.group(1)] = (title, m.group(2))
    return found


def test_every_member_is_in_the_readme() -> None:
    missing = sorted(r.value for r in set(Reason) - set(readme_codes()))
    assert not missing, f"README's Reason codes section lacks {missing}; see ridl.reasons.markdown"


def test_every_readme_code_is_a_member() -> None:
    extra = sorted(set(readme_codes()) - {r.value for r in Reason})
    assert not extra, f"README lists codes that are not ridl.reasons.Reason members: {extra}"


def test_readme_group_and_meaning_are_the_enums() -> None:
    listed = readme_codes()
    for reason in Reason:
        assert listed[reason] == (GROUPS[reason.group], reason.meaning), reason
    assert markdown() in readme_section()


def test_every_member_has_a_group_and_a_one_line_meaning() -> None:
    for reason in Reason:
        assert reason.group in GROUPS, reason
        assert reason.meaning and "\n" not in reason.meaning, reason
        assert reason.name == reason.value.upper().replace("-", "_")


def test_check_failed_is_a_family_the_readme_names() -> None:
    assert check_failed("explodes") == "check-failed-explodes"
    assert "`check-failed-<check>`" in readme_section()
    assert not any(r.startswith(CHECK_FAILED_PREFIX) for r in Reason)


def test_object_rejected_refuses_an_unknown_code() -> None:
    with pytest.raises(ValueError, match="not a ridl reason code"):
        ObjectRejected("no-such-reason")
    with pytest.raises(ValueError):
        CleaningError("pixels-felt-odd")
    with pytest.raises(ValueError):
        DeidError("no-such-reason")


def test_rejections_carry_members() -> None:
    rej = ObjectRejected("truncated", "pixel data header")
    assert rej.reason is Reason.TRUNCATED
    assert str(rej) == "truncated: pixel data header"
    assert DeidError("unknown-vr").reason is Reason.DEID_UNKNOWN_VR
    assert DeidError(Reason.DEID_UNKNOWN_VR).reason is Reason.DEID_UNKNOWN_VR
    again = pickle.loads(pickle.dumps(DeidError("unknown-vr", "(0009,0010)")))
    assert (type(again), again.reason, again.detail) == (
        DeidError,
        Reason.DEID_UNKNOWN_VR,
        "(0009,0010)",
    )


def test_counts_keyed_by_members_read_as_the_plain_codes() -> None:
    members: Counter[str] = Counter()
    plain: Counter[str] = Counter()
    for code in ("write-failed", "not-dicom", "burned-in-text", "not-dicom"):
        members[Reason(code)] += 1
        plain[code] += 1
    members["not-dicom"] += 1  # a plain code read back from a part adds to the member's count
    plain["not-dicom"] += 1
    assert json.dumps(dict(sorted(members.items()))) == json.dumps(dict(sorted(plain.items())))
    assert json.dumps(members, sort_keys=True) == json.dumps(plain, sort_keys=True)
    assert [str(k) for k in sorted(members)] == sorted(plain)
    assert f"{Reason.NOT_DICOM}" == "not-dicom"
