"""`ridl ... --help` gives every option's format and allowed values, and cuts nothing short at
80 columns (issue 15, "what users expected")."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from flows.cli import DeidOption, app
from ridl.projects import DEID_OPTIONS

runner = CliRunner()


def _help(*command: str, columns: int = 80) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def _option_line(text: str, option: str) -> str:
    """The help of ``option``: its line and the indented lines that follow, joined."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(option + " "))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if line.strip().startswith("-") and not line.startswith(" " * 10):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


def test_choices_are_shown_as_choices_and_enforced() -> None:
    assert "--format <csv|xlsx>" in _help("labels", "export")
    assert "decision <approve|reject>" in _help("review", "decide")
    joined = re.sub(r"\s+", "", _help("project", "create"))  # wrapped at hyphens, never cut
    for option in DEID_OPTIONS:
        assert option in joined
    refused = runner.invoke(app, ["labels", "export", "--project", "p", "--release", "r",
                                  "--assignee", "a", "--format", "pdf"])  # fmt: skip
    assert refused.exit_code == 2 and "'pdf' is not one of 'csv', 'xlsx'" in refused.output


def test_deid_options_match_the_projects_list() -> None:
    assert tuple(DeidOption) == DEID_OPTIONS


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (("project", "create"), "--from"),
        (("project", "create"), "--to"),
        (("project", "create"), "--approved"),
        (("project", "create"), "--expires"),
        (("project", "update"), "--from"),
        (("project", "update"), "--expires"),
        (("run",), "--from"),
        (("run",), "--to"),
        (("dir", "index"), "--from"),
        (("dir", "index"), "--to"),
    ],
)
def test_dates_give_their_format(command: tuple[str, ...], option: str) -> None:
    assert "YYYY-MM-DD" in _option_line(_help(*command), option)


@pytest.mark.parametrize(
    "command", [("pull",), ("run",), ("project", "create"), ("access", "grant"), ("deid",)]
)
def test_help_cuts_nothing_short_at_80_columns(command: tuple[str, ...]) -> None:
    text = _help(*command)
    assert "…" not in text, "nothing is cut short with an ellipsis"
    assert max(len(line) for line in text.splitlines()) <= 80 or re.search(r"--\S+ \S{40,}", text)
    if command == ("pull",):
        # A long value is wrapped, never cut: the whole template is there, line breaks aside.
        joined = re.sub(r"\s+", "", text)
        assert "'{research_id}/{study_uid}/{series_uid}/{sop_uid}.dcm'" in joined
        assert "AWS_ENDPOINT_URL_S3orAWS_ENDPOINT_URL" in joined


GROUPS = ["", "project", "optout", "dir", "release", "access", "audit", "labels", "review"]


@pytest.mark.parametrize("group", [tuple(g.split()) for g in GROUPS])
def test_command_lists_give_each_command_its_whole_first_sentence(group: tuple[str, ...]) -> None:
    text = _help(*group)
    listed = text.split("Commands:", 1)[1]
    assert "..." not in listed, "a command's short help is wrapped, never cut with '...'"
